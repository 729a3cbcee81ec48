"""The SQLite file behind the caches that must survive a crash (the tool server's answers, the
judges' verdicts), in WAL mode with ``synchronous=NORMAL``, so a commit is in the write-ahead
log when it returns and a SIGKILL loses nothing already stored. Several processes may share
the file; SQLite serializes their writes and waits up to ``timeout`` seconds for a lock.

Two connections, each shared by threads and serialized by its own lock: writes (and lookups
that may wait) go through ``_db``; ``_reader`` is for lookups that must never wait, and
raises ``sqlite3.OperationalError`` at once instead of waiting for a lock. In WAL mode a
reader does not wait for a writer, so while a write here waits for another process's lock,
lookups through ``_reader`` still answer; only a rare checkpoint or recovery makes one
busy."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Self


class SQLiteStore:
    """Opens (creating its folder and ``schema``, one ``CREATE ... IF NOT EXISTS`` statement)
    and closes the database; subclasses run their queries under ``self._lock``."""

    def __init__(self, path: str | Path, schema: str, timeout: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, timeout=timeout, isolation_level=None, check_same_thread=False
        )
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(schema)
        self._reader = sqlite3.connect(
            self.path, timeout=0, isolation_level=None, check_same_thread=False
        )
        self._read_lock = threading.Lock()

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
        with self._lock:
            self._db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
