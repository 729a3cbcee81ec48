"""A server in a child process that says why it died.

A server that crashes (a native library built for another CPU dies with SIGILL on its first
matrix product) otherwise shows up only as ``Connection refused`` in whoever called it. This
module starts a server with its output in a log, waits until it answers, and turns its death
into one line naming the exit status or signal and the likely cause, plus the end of its log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from process_data.exits import describe_exit


def log_tail(path: Path, lines: int = 20) -> str:
    """The last ``lines`` lines of a log file ('' if there is none)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ServerDied(RuntimeError):
    """The server process ended when it should have been serving."""


class ServerProcess:
    """``cmd`` as a child process with stdout and stderr in ``log``; ``start()`` waits until
    ``ready_url`` answers 200. ``death()`` is ``None`` while the server runs or after ``stop()``
    or ``kill()``, and otherwise says how it died, with the end of its log."""

    def __init__(
        self, name: str, cmd: list[str], ready_url: str, log: Path, **popen: object
    ) -> None:
        self.name, self.cmd, self.ready_url, self.log = name, cmd, ready_url, Path(log)
        self.popen = popen
        self.proc: subprocess.Popen | None = None
        self.expected_end = False

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} was not started"
        return self.proc.pid

    def start(self, timeout: float = 120) -> ServerProcess:
        """Start the process and wait for it to answer; raise ``ServerDied`` (with its log's
        end) if it ends first, or ``TimeoutError`` if it does not answer within ``timeout``."""
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                self.cmd, stdout=out, stderr=subprocess.STDOUT, **self.popen
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.ready_url, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if (message := self.death()) is not None:
                raise ServerDied(message)
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(
                    f"{self.name} did not answer {self.ready_url} within {timeout:g} s; "
                    f"the end of its log ({self.log}):\n{log_tail(self.log)}"
                )
            time.sleep(0.1)

    def death(self) -> str | None:
        """How the server died, with the end of its log; ``None`` if it runs or was stopped."""
        if self.proc is None or self.expected_end or self.proc.poll() is None:
            return None
        return (
            f"{self.name} (pid {self.proc.pid}) {describe_exit(self.proc.returncode)}; "
            f"the end of its log ({self.log}):\n{log_tail(self.log)}"
        )

    def check_alive(self) -> None:
        """Raise ``ServerDied`` if the server has died."""
        if (message := self.death()) is not None:
            raise ServerDied(message)

    def stop(self, grace: float = 20) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        self.expected_end = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """SIGKILL at once (its process group too, when started in a session of its own)."""
        self.expected_end = True
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.popen.get("start_new_session"):
            os.killpg(self.proc.pid, signal.SIGKILL)
        else:
            self.proc.kill()
        self.proc.wait()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
