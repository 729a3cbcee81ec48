"""Writing results in input order: directly, or through shards written by worker processes.

With several workers, each converts a batch of records and writes the encoded records to
shard files; the parent appends the shards to the final files in batch order with a
kernel-side copy. Only counts, rejects and a few strings cross the process boundary, so the
parent is never the bottleneck.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from process_data.jsonio import JsonArrayWriter, JsonlWriter, ShardWriter, encode_str
from process_data.toolbench.pipeline import Options, Result
from process_data.toolbench.roles import StaleInput


def resolve(stale: StaleInput, sample: Any) -> str:
    """An encoded sample; a compat give-up ``(head, tail, step)`` gets α-UMi's stale prompt."""
    if isinstance(sample, tuple):
        head, tail, step = sample
        return head + encode_str(stale.input_for(step)) + tail
    return sample


class Outputs:
    """The writers of one run, in the parent (final files) or in a worker (shards).

    ``stale_known=False`` is for workers: until a trajectory of the batch has set α-UMi's
    backbone prompt variable, backbone samples are kept aside (``inline``) for the parent,
    which knows the value left by the earlier batches.
    """

    def __init__(
        self,
        writers: dict[str, Any],
        stale_known: bool = True,
        paths: dict[str, Path] | None = None,
    ):
        self.writers = writers
        self.paths = paths or {}
        self.stale = StaleInput()
        self.stale_known = stale_known
        self.inline: list[Any] = []

    @classmethod
    def to_files(cls, paths: dict[str, Path], fmt: str, roles: Sequence[str]) -> Outputs:
        writers = {
            name: JsonlWriter(path) if (name in roles and fmt == "chat") else JsonArrayWriter(path)
            for name, path in paths.items()
        }
        return cls(writers, paths=paths)

    def streams(self) -> dict[str, bool]:
        """Output name → whether it is JSON lines (what a worker's shards must look like)."""
        return {name: isinstance(w, JsonlWriter) for name, w in self.writers.items()}

    def write(self, result: Result) -> None:
        for stage in ("stage1", "stage2"):
            text = getattr(result, stage)
            if text is not None and stage in self.writers:
                self.writers[stage].write_encoded(text)
        for role, samples in result.roles.items():
            for sample in samples:
                if role == "backbone" and not self.stale_known:
                    self.inline.append(sample)
                else:
                    self.writers[role].write_encoded(resolve(self.stale, sample))
            if role == "backbone" and result.last_input is not None:
                self.stale.value = result.last_input
                self.stale_known = True

    def add_batch(self, batch: BatchResult) -> None:
        """Append a worker's batch: its kept-aside backbone samples, then its shards."""
        for sample in batch.inline:
            self.writers["backbone"].write_encoded(resolve(self.stale, sample))
        for name, shard in batch.shards.items():
            self.writers[name].append_shard(shard)
            os.unlink(shard.path)
        if batch.last_input is not None:
            self.stale.value = batch.last_input

    def commit(self) -> None:
        for writer in self.writers.values():
            writer.commit()

    def discard(self) -> None:
        for writer in self.writers.values():
            writer.discard()


@dataclass
class Batch:
    """A run of consecutive input records for one worker task."""

    index: int
    items: list
    func: Callable[[Any, Options], Result]
    shard_dir: str
    streams: dict[str, bool]


@dataclass
class BatchResult:
    results: list[Result]  # without their encoded records, which are in the shards
    shards: dict[str, ShardWriter]
    inline: list
    last_input: str | None


def process_batch(batch: Batch, opts: Options) -> BatchResult:
    """Worker side: convert a batch and write its encoded records to shard files."""
    shards = {
        name: ShardWriter(Path(batch.shard_dir) / f"{batch.index:08d}.{name}", jsonl)
        for name, jsonl in batch.streams.items()
    }
    outputs = Outputs(dict(shards), stale_known=False)
    results = []
    for item in batch.items:
        result = batch.func(item, opts)
        outputs.write(result)
        results.append(result.without_records())
    for shard in shards.values():
        shard.close()
    last = outputs.stale.value if outputs.stale_known else None
    return BatchResult(results, shards, outputs.inline, last)


def make_batches(
    func: Callable[[Any, Options], Result],
    items: Iterable[Any],
    shard_dir: str,
    streams: dict[str, bool],
    size: int = 16,
) -> Iterator[Batch]:
    iterator = iter(items)
    for index in itertools.count():
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield Batch(index, chunk, func, shard_dir, streams)
