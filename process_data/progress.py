"""Progress of long work (processing trajectories, inference, agent runs, judging): a tqdm bar
on a terminal; in a log (stderr sent to a file, a batch job) a plain line at most once a
minute, so that a run of hours shows it is alive without filling its log with carriage
returns."""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL = 60.0  # seconds between two lines in a log


class _Lines:
    """A stream for tqdm that writes each refresh of the bar as a line of its own."""

    def __init__(self, stream: TextIO):
        self._stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").rstrip()  # tqdm writes "\r<bar>", and "\n" when it closes
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def progress(
    total: int | None,
    unit: str,
    desc: str | None = None,
    initial: int = 0,
    stream: TextIO | None = None,
) -> tqdm:
    """A progress bar on ``stream`` (default stderr); use it as a context manager."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(total=total, unit=unit, desc=desc, initial=initial, file=stream)
    return tqdm(
        total=total,
        unit=unit,
        desc=desc,
        initial=initial,
        file=_Lines(stream),
        mininterval=LOG_INTERVAL,
        miniters=1,  # fixed: tqdm's monitor thread then adds no refresh of its own
        ascii=True,
        ncols=100,
    )
