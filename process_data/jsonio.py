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
from typing import Any

_encode_str = json.encoder.encode_basestring_ascii  # the C encoder that json.dumps uses


def encode_str(text: str) -> str:
    """``json.dumps(text)`` for a string, without the generic dispatch."""
    return _encode_str(text)


def indent_json(obj: Any, depth: int) -> str:
    """``obj`` as ``json.dumps(obj, indent=2)`` would print it ``depth`` levels deep.

    The first line is not indented (it follows a key or a list indent); the following lines
    are indented for ``depth``. Python's own encoder falls back to pure Python when indenting;
    here only the containers are walked in Python and every scalar goes to the C encoder.
    """
    if isinstance(obj, str):
        return _encode_str(obj)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        pad = "\n" + "  " * (depth + 1)
        items = (_encode_str(k) + ": " + indent_json(v, depth + 1) for k, v in obj.items())
        return "{" + pad + ("," + pad).join(items) + "\n" + "  " * depth + "}"
    if isinstance(obj, list):
        return encode_list_items([indent_json(v, depth + 1) for v in obj], depth)
    return json.dumps(obj)


def encode_list_items(items: list[str], depth: int) -> str:
    """A list whose items are already encoded at ``depth + 1``, as ``indent=2`` prints it."""
    if not items:
        return "[]"
    pad = "\n" + "  " * (depth + 1)
    return "[" + pad + ("," + pad).join(items) + "\n" + "  " * depth + "]"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


class AtomicFile:
    """A file written under ``<name>.partial`` and renamed into place on :meth:`commit`.

    Closing without committing (an exception, a kill) leaves the final path untouched. Text is
    buffered here rather than in a file object, so that whole files written by other
    processes can be appended with a kernel-side copy (:meth:`append_file`).
    """

    _FLUSH_AT = 1 << 20

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = partial_path(self.path)
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._buf: list[bytes] = []
        self._size = 0

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        self._buf.append(data)
        self._size += len(data)
        if self._size >= self._FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        view = memoryview(b"".join(self._buf))
        while view:
            view = view[os.write(self.fd, view) :]
        self._buf, self._size = [], 0

    def append_file(self, path: str | os.PathLike[str], skip: int = 0) -> None:
        """Append the bytes of ``path`` after its first ``skip`` bytes."""
        self.flush()
        with open(path, "rb") as src:
            remaining = os.fstat(src.fileno()).st_size - skip
            offset = skip
            while remaining > 0:
                try:
                    done = os.copy_file_range(src.fileno(), self.fd, remaining, offset)
                except (AttributeError, OSError):  # not Linux, or not supported here
                    src.seek(offset)
                    self.write(src.read(remaining).decode("utf-8"))
                    self.flush()
                    return
                if done == 0:
                    raise OSError(f"{path}: unexpected end while appending")
                offset += done
                remaining -= done

    def commit(self) -> None:
        self.flush()
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = -1
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.tmp.unlink(missing_ok=True)


_ARRAY_FIRST, _ARRAY_NEXT = "[\n  ", ",\n  "


class JsonArrayWriter:
    """Writes a JSON array record by record, byte-identical to ``json.dump(list, f, indent=2)``.

    Records are passed already encoded at depth 1 (see :func:`indent_json`), which lets the
    callers cache the encoding of the parts that repeat between records.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.file = AtomicFile(path)
        self.count = 0

    def write_encoded(self, item: str) -> None:
        self.file.write((_ARRAY_FIRST if self.count == 0 else _ARRAY_NEXT) + item)
        self.count += 1

    def write(self, obj: Any) -> None:
        self.write_encoded(indent_json(obj, 1))

    def append_shard(self, shard: ShardWriter) -> None:
        """Append the records a :class:`ShardWriter` wrote (in another process)."""
        if shard.count:
            skip = 0
            if self.count == 0:  # the shard starts with ",\n  "; the array with "[\n  "
                self.file.write(_ARRAY_FIRST)
                skip = len(_ARRAY_NEXT)
            self.file.append_file(shard.path, skip)
            self.count += shard.count

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

    def append_shard(self, shard: ShardWriter) -> None:
        if shard.count:
            self.file.append_file(shard.path)
            self.count += shard.count

    def commit(self) -> None:
        self.file.commit()

    def discard(self) -> None:
        self.file.discard()


class ShardWriter:
    """A run of encoded records written by a worker, to be appended to a writer in order.

    Array records are written with their leading separator, lines with their newline, so that
    a shard is a byte range of the final file.
    """

    def __init__(self, path: str | os.PathLike[str], jsonl: bool):
        self.path = Path(path)
        self.jsonl = jsonl
        self.count = 0
        self._fh = open(self.path, "w", encoding="utf-8", buffering=1 << 20)  # noqa: SIM115

    def write_encoded(self, item: str) -> None:
        self._fh.write(item + "\n" if self.jsonl else _ARRAY_NEXT + item)
        self.count += 1

    def close(self) -> None:
        self._fh.close()

    def __getstate__(self) -> dict:  # sent back to the parent: the path and the count
        return {"path": self.path, "jsonl": self.jsonl, "count": self.count, "_fh": None}


def write_json_atomic(path: str | os.PathLike[str], obj: Any, indent: int = 2) -> None:
    """Write a small JSON document atomically."""
    out = AtomicFile(path)
    out.write(json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
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
