"""Streaming JSON readers and writers.

α-UMi writes its files with ``json.dump(records, f, indent=2)``. The writers here produce the
same bytes one record at a time, so that memory stays bounded and a killed run never leaves a
half-written file under the final name: output goes to a ``.partial`` file that is renamed into
place only when complete.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

_encode_str = json.encoder.encode_basestring_ascii  # the C encoder that json.dumps uses


def encode_str(text: str) -> str:
    """``json.dumps(text)`` for a string, without the generic dispatch."""
    return _encode_str(text)


def indent_json(obj: Any, depth: int) -> str:
    """``obj`` as ``json.dumps(obj, indent=2)`` would print it ``depth`` levels deep.

    The first line is not indented (it follows a key or a list indent); the following lines
    are shifted by ``2 * depth`` spaces. JSON strings cannot hold raw newlines, so shifting
    every newline is exact.
    """
    text = json.dumps(obj, indent=2)
    if depth:
        text = text.replace("\n", "\n" + "  " * depth)
    return text


def encode_list_items(items: list[str], depth: int) -> str:
    """A list whose items are already encoded at ``depth + 1``, as ``indent=2`` prints it."""
    if not items:
        return "[]"
    pad = "\n" + "  " * (depth + 1)
    return "[" + pad + ("," + pad).join(items) + "\n" + "  " * depth + "]"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class AtomicFile:
    """A text file written under ``<name>.partial`` and renamed into place on :meth:`commit`.

    Closing without committing (an exception, a kill) leaves the final path untouched.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = partial_path(self.path)
        self.fh: IO[str] = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, text: str) -> None:
        self.fh.write(text)

    def commit(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if not self.fh.closed:
            self.fh.close()
        self.tmp.unlink(missing_ok=True)


class JsonArrayWriter:
    """Writes a JSON array record by record, byte-identical to ``json.dump(list, f, indent=2)``.

    Records are passed already encoded at depth 1 (see :func:`indent_json`), which lets the
    callers cache the encoding of the parts that repeat between records.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.file = AtomicFile(path)
        self.count = 0

    def write_encoded(self, item: str) -> None:
        self.file.write(("[\n  " if self.count == 0 else ",\n  ") + item)
        self.count += 1

    def write(self, obj: Any) -> None:
        self.write_encoded(indent_json(obj, 1))

    def commit(self) -> None:
        self.file.write("\n]" if self.count else "[]")
        self.file.commit()

    def discard(self) -> None:
        self.file.discard()


class JsonlWriter:
    """Writes one JSON document per line (for the chat format and the rejects report)."""

    def __init__(self, path: str | os.PathLike[str]):
        self.file = AtomicFile(path)
        self.count = 0

    def write_encoded(self, line: str) -> None:
        self.file.write(line + "\n")
        self.count += 1

    def write(self, obj: Any) -> None:
        self.write_encoded(json.dumps(obj, ensure_ascii=False))

    def commit(self) -> None:
        self.file.commit()

    def discard(self) -> None:
        self.file.discard()


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write a small JSON document atomically."""
    out = AtomicFile(path)
    out.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
    out.commit()


class JsonArrayError(ValueError):
    """The input is not a readable JSON array; ``index`` is the record being read."""

    def __init__(self, path: str, index: int, reason: str):
        super().__init__(f"{path}: record {index}: {reason}")
        self.path, self.index, self.reason = path, index, reason


def iter_json_array(path: str | os.PathLike[str]) -> Iterator[Any]:
    """Yield the items of a top-level JSON array without loading the whole file.

    Raises :class:`JsonArrayError` naming the file and the record where reading failed.
    """
    import ijson

    index = 0
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).lstrip()
            if not head.startswith(b"["):
                raise JsonArrayError(str(path), 0, "expected a JSON array of records")
            fh.seek(0)
            for item in ijson.items(fh, "item", use_float=True):
                yield item
                index += 1
    except (ijson.JSONError, UnicodeDecodeError) as exc:
        raise JsonArrayError(str(path), index, f"unreadable JSON ({exc})") from exc
