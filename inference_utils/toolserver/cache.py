"""The answer cache: one SQLite database (WAL), keyed on the API and the canonical JSON of the
arguments, so that key order and whitespace do not matter.

Every answer is committed before the server returns it. In WAL mode with ``synchronous=NORMAL``
a commit is in the write-ahead log when ``commit()`` returns, so a killed server (SIGKILL)
loses nothing it answered; only a power failure can lose the last commits. Several processes
may share the file: SQLite serializes their writes, and ``INSERT OR IGNORE`` keeps the first
answer to a call, which every later call then gets.

StableToolBench keeps its cache as ``<category>/<tool>_for_<category>/<api>.json`` files whose
keys are Python ``str()`` of the argument dict. :func:`import_stb_cache` reads them with
:func:`ast.literal_eval` (a literal parser: it builds values, never runs code) and reports the
keys it cannot turn into a JSON object; :func:`export_stb_cache` writes the layout back, with
the keys in the order the arguments were first written, so an import round-trips.
"""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference_utils.sqlite_store import SQLiteStore
from process_data.protocol import api_name_of, category_name_of, file_name_part, standardize

from .tools import ApiKey

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    category TEXT NOT NULL,
    tool TEXT NOT NULL,
    api TEXT NOT NULL,
    arguments TEXT NOT NULL,  -- canonical JSON: sorted keys, no spaces
    original TEXT NOT NULL,   -- the same arguments in the order first seen (for STB's str() keys)
    answer TEXT NOT NULL,     -- the {"error": ..., "response": ...} object, as JSON
    source TEXT NOT NULL,     -- cache import, upstream, llm or offline
    created REAL NOT NULL,
    UNIQUE (category, tool, api, arguments)
)
"""  # rowid orders the entries: examples oldest first, and an export in import order


def canonical(arguments: dict) -> str:
    """The cache key of an argument object: ``{"b":1, "a":2}`` and ``{ "a": 2, "b": 1 }`` agree."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Entry:
    key: ApiKey
    arguments: dict
    answer: dict
    source: str


class AnswerCache(SQLiteStore):
    """Thread-safe access to the cache database. ``get`` never waits for a lock (it raises
    ``sqlite3.OperationalError`` where it would), so the server may call it on its event loop,
    and calls ``get(..., wait=True)`` off the loop when it raises; every other call may wait
    for another process's lock, and the server runs them in worker threads."""

    def __init__(self, path: str | Path, timeout: float = 30.0):
        super().__init__(path, SCHEMA, timeout)

    def get(self, key: ApiKey, arguments: str, wait: bool = False) -> dict | None:
        """The cached answer to ``arguments`` (a :func:`canonical` string), or None. Without
        ``wait`` it raises ``sqlite3.OperationalError`` rather than wait for a lock."""
        db, lock = (self._db, self._lock) if wait else (self._reader, self._read_lock)
        with lock:
            row = db.execute(
                "SELECT answer FROM answers WHERE category=? AND tool=? AND api=? AND arguments=?",
                (key.category, key.tool, key.api, arguments),
            ).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: ApiKey, arguments: dict, answer: dict, source: str) -> dict:
        """Store ``answer`` unless the call has one already; return the stored answer."""
        return self.put_many([Entry(key, arguments, answer, source)])[0][0]

    def put_many(self, entries: list[Entry]) -> list[tuple[dict, bool]]:
        """Store several answers in one transaction; for each, the stored answer and whether
        it is this entry's (False: the call had an answer already, which stays)."""
        now, out = time.time(), []
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in entries:
                    names = (e.key.category, e.key.tool, e.key.api, canonical(e.arguments))
                    inserted = self._db.execute(
                        "INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            *names,
                            json.dumps(e.arguments, ensure_ascii=False),
                            json.dumps(e.answer, ensure_ascii=False),
                            e.source,
                            now,
                        ),
                    ).rowcount
                    if inserted:
                        out.append((e.answer, True))
                        continue
                    row = self._db.execute(
                        "SELECT answer FROM answers "
                        "WHERE category=? AND tool=? AND api=? AND arguments=?",
                        names,
                    ).fetchone()
                    out.append((json.loads(row[0]), False))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def examples(self, key: ApiKey, limit: int = 5) -> list[tuple[dict, dict]]:
        """Up to ``limit`` cached ``(arguments, answer)`` pairs of one API, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT original, answer FROM answers WHERE category=? AND tool=? AND api=? "
                "ORDER BY rowid LIMIT ?",
                (key.category, key.tool, key.api, limit),
            ).fetchall()
        return [(json.loads(args), json.loads(answer)) for args, answer in rows]

    def counts(self) -> dict[str, int]:
        """Entries per source."""
        with self._lock:
            rows = self._db.execute("SELECT source, COUNT(*) FROM answers GROUP BY source")
            return dict(rows.fetchall())

    def keys(self) -> list[ApiKey]:
        """The APIs that have cached answers."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT category, tool, api FROM answers")
            return [ApiKey(*row) for row in rows.fetchall()]

    def entries(self) -> Iterator[Entry]:
        """Every entry, grouped by API."""
        with self._lock:
            rows = self._db.execute(
                "SELECT category, tool, api, original, answer, source FROM answers "
                "ORDER BY category, tool, api, rowid"
            ).fetchall()
        for category, tool, api, original, answer, source in rows:
            yield Entry(
                ApiKey(category, tool, api), json.loads(original), json.loads(answer), source
            )

    def integrity(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA integrity_check").fetchone()[0]


# -- StableToolBench's cache folders ----------------------------------------------------------


@dataclass
class ImportReport:
    """Every key of every file is imported, a duplicate of a cached call, or rejected."""

    files: int = 0
    keys: int = 0
    imported: int = 0
    duplicates: int = 0
    rejects: list[dict] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.files} files, {self.keys} keys: {self.imported} imported, "
            f"{self.duplicates} already cached, {len(self.rejects)} rejected"
        )


def parse_stb_key(text: str) -> dict:
    """The argument dict of a StableToolBench cache key (Python ``str()`` of a dict).

    Raises ValueError when the text is not a literal dict whose values JSON can hold.
    """
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError) as exc:
        raise ValueError(f"not a Python literal: {type(exc).__name__}: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError(f"a literal {type(value).__name__}, not a dict")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not representable as JSON: {exc}") from None
    return value


def _stb_tool(folder: str, category: str) -> str:
    return standardize(folder.removesuffix(f"_for_{category}"))


def import_stb_cache(cache: AnswerCache, root: str | Path, batch: int = 2000) -> ImportReport:
    """Import ``root/<category>/<tool>_for_<category>/<api>.json`` into ``cache``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: not a folder (expected StableToolBench's tool_response_cache)"
        )
    report, pending = ImportReport(), []

    def flush() -> None:
        new = sum(inserted for _, inserted in cache.put_many(pending))
        report.imported += new
        report.duplicates += len(pending) - new
        pending.clear()

    for file in sorted(root.glob("*/*/*.json")):
        category = category_name_of(file.parent.parent.name)
        key = ApiKey(category, _stb_tool(file.parent.name, category), api_name_of(file.stem))
        try:
            with open(file, encoding="utf-8") as fh:
                records = json.load(fh)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            report.rejects.append({"file": str(file), "key": None, "reason": f"unreadable: {exc}"})
            continue
        report.files += 1
        if not isinstance(records, dict):
            report.rejects.append({"file": str(file), "key": None, "reason": "not a JSON object"})
            continue
        for text, answer in records.items():
            report.keys += 1
            try:
                arguments = parse_stb_key(text)
                if not isinstance(answer, dict):
                    raise ValueError(f"the answer is a {type(answer).__name__}, not an object")
            except ValueError as exc:
                report.rejects.append({"file": str(file), "key": text, "reason": str(exc)})
                continue
            pending.append(Entry(key, arguments, answer, "stb_cache"))
            if len(pending) >= batch:
                flush()
    if pending:
        flush()
    return report


def stb_file(root: Path, key: ApiKey) -> Path:
    """Where StableToolBench keeps ``key``'s answers under ``root``; ValueError for a
    category, tool or API name that would name a path outside ``root``."""
    category = file_name_part(key.category, "category")
    tool = file_name_part(f"{file_name_part(key.tool, 'tool')}_for_{category}", "tool folder")
    return root / category / tool / file_name_part(f"{key.api}.json", "API file")


def export_stb_cache(cache: AnswerCache, root: str | Path) -> int:
    """Write every cached answer in StableToolBench's layout; return the number of answers.
    Every entry's names are checked before anything is written: an entry whose category,
    tool or API cannot name a file inside ``root`` (``..``, a separator) raises ValueError
    naming it, and nothing is exported."""
    root = Path(root)
    for key in cache.keys():
        try:
            stb_file(root, key)
        except ValueError as exc:
            raise ValueError(f"{cache.path}: the answers of {key}: {exc}") from None
    count, group, current = 0, {}, None

    def write(key: ApiKey, records: dict[str, Any]) -> None:
        path = stb_file(root, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=4)

    for entry in cache.entries():
        if entry.key != current:
            if current is not None:
                write(current, group)
            current, group = entry.key, {}
        group[str(entry.arguments)] = entry.answer
        count += 1
    if current is not None:
        write(current, group)
    return count
