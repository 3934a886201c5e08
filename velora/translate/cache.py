"""The translation cache: a SQLite file of (backend identity, source text) -> translation, so that a re-run (or
`eval` after `convert`, or a server restart) translates nothing twice.

Default: `$VELORA_CACHE_DIR/translations.sqlite3`, else `$XDG_CACHE_HOME/velora/...`, else
`~/.cache/velora/...`; `--translation_cache PATH` moves it, `--translation_cache off` turns it off. Bounded: texts
over MAX_CACHED_CHARS are translated but not kept, and beyond MAX_ENTRIES the entries stored longest ago make room.
Several processes may share the file (SQLite's locking, write-ahead log)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Iterable, Sequence

from velora.errors import VeloraError

CACHE_NAME = "translations.sqlite3"
MAX_CACHED_CHARS = 10_000  # of a source text or its translation (velora's own limit on one text)
MAX_ENTRIES = 1_000_000  # ~ a few hundred MB at most
LOOKUP_CHUNK = 500  # texts per SELECT (SQLite's limit on bound parameters is 32,766)
MARK_TABLE = "velora_translation_cache"  # a file without it was not written by velora: never touched
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {MARK_TABLE} (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS translations (
    backend TEXT NOT NULL, source TEXT NOT NULL, target TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (backend, source));
"""


def default_cache_path() -> Path:
    if os.environ.get("VELORA_CACHE_DIR"):
        return Path(os.environ["VELORA_CACHE_DIR"]) / CACHE_NAME
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "velora" / CACHE_NAME


class TranslationCache:
    """Thread-safe (one connection behind a lock: the server translates from several threads)."""

    def __init__(self, path: str | os.PathLike | None = None, max_entries: int = MAX_ENTRIES):
        self.path = Path(path) if path is not None else default_cache_path()
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        flag = "--translation_cache"
        if self.path.is_dir():
            raise VeloraError(f"{flag} {self.path}: is a directory; give a file name (or 'off')")
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if existed and MARK_TABLE not in tables:
                db.close()
                raise VeloraError(f"{flag} {self.path}: exists and is not a velora translation cache; "
                                  "choose another file (velora does not write into files it did not create)")
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(SCHEMA)
            if not db.execute(f"SELECT 1 FROM {MARK_TABLE}").fetchone():
                db.execute(f"INSERT INTO {MARK_TABLE} (version) VALUES (1)")
        except sqlite3.DatabaseError as e:  # not a database, read-only, locked for 30 s...
            raise VeloraError(f"{flag} {self.path}: cannot use it as a translation cache ({e}); choose another "
                              "file or pass --translation_cache off") from None
        except OSError as e:
            raise VeloraError(f"{flag} {self.path}: cannot create it ({e.strerror})") from None
        return db

    def get(self, backend: str, sources: Sequence[str]) -> dict[str, str]:
        """{source: translation} for the `sources` this backend has translated before."""
        found: dict[str, str] = {}
        unique = list(dict.fromkeys(sources))
        with self._lock:
            for start in range(0, len(unique), LOOKUP_CHUNK):
                chunk = unique[start:start + LOOKUP_CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(
                    f"SELECT source, target FROM translations WHERE backend = ? AND source IN ({marks})",
                    [backend, *chunk]).fetchall())
        return found

    def put(self, backend: str, pairs: Iterable[tuple[str, str]]) -> int:
        """Store (source, translation) pairs within the size bounds; returns how many were stored."""
        now = time.time()
        rows = [(backend, s, t, now) for s, t in pairs if len(s) <= MAX_CACHED_CHARS and len(t) <= MAX_CACHED_CHARS]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("INSERT OR REPLACE INTO translations VALUES (?, ?, ?, ?)", rows)
                over = self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0] - self.max_entries
                if over > 0:
                    self._db.execute("DELETE FROM translations WHERE rowid IN "
                                     "(SELECT rowid FROM translations ORDER BY rowid LIMIT ?)", (over,))
                self._db.execute("COMMIT")
            except sqlite3.DatabaseError as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise VeloraError(f"--translation_cache {self.path}: cannot write to it ({e})") from None
        return len(rows)

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM translations").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
