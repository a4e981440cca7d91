"""The agent's on-disk spool; :mod:`sparklem_core.agent.sender` drains it into Kafka.

Every sealed envelope waits in the spool until Kafka confirms it.

One SQLite table, in insertion order (``id`` is AUTOINCREMENT, so ids never repeat,
even after the table was emptied)::

    spool(id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT, key BLOB, value BLOB,
          created_ms INTEGER)

Bounded: past ``max_rows`` the oldest entries are deleted first and counted in
:attr:`Spool.dropped`. WAL with ``synchronous=NORMAL``: an agent crash loses nothing;
a power cut may lose the last moments (the seq state file is fsynced separately).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("sparklem.agent")
SCHEMA_VERSION = 1


SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    created_ms INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class Entry:
    id: int
    topic: str
    key: bytes
    value: bytes
    created_ms: int


class Spool:
    """A bounded FIFO of Kafka records in SQLite."""

    def __init__(self, path: Path, max_rows: int = 100_000) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.path = path
        self.max_rows = max_rows
        self.dropped = 0  # entries dropped because the spool was full, since open
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:  # not a database, or corrupt beyond use
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.rename(aside)
            log.error("spool %s is unusable (%s); moved to %s, starting empty", path, exc, aside)
            self._db = self._open(path)
        (self._count,) = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()
        self._trim()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)  # autocommit; BEGIN where needed
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"unknown spool schema version {version}")
            db.execute(SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def __len__(self) -> int:
        return self._count

    def put(self, topic: str, key: bytes, value: bytes) -> int:
        """Append one record; drops the oldest when full. Returns the new entry's id."""
        cursor = self._db.execute(
            "INSERT INTO spool (topic, key, value, created_ms) VALUES (?, ?, ?, ?)",
            (topic, key, value, int(time.time() * 1000)),
        )
        self._count += 1
        self._trim()
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def pending(self, after: int = 0, limit: int = 500) -> list[Entry]:
        """Up to ``limit`` entries with an id above ``after``, oldest first."""
        rows = self._db.execute(
            "SELECT id, topic, key, value, created_ms FROM spool WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [Entry(i, t, bytes(k), bytes(v), c) for i, t, k, v, c in rows]

    def delete(self, ids: Iterable[int]) -> None:
        """Forget delivered entries (ids already gone are ignored)."""
        ids = list(ids)
        if not ids:
            return
        self._db.execute("BEGIN")
        try:
            deleted = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                deleted += self._db.execute(
                    f"DELETE FROM spool WHERE id IN ({marks})", chunk
                ).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._count -= deleted

    def _trim(self) -> None:
        excess = self._count - self.max_rows
        if excess <= 0:
            return
        deleted = self._db.execute(
            "DELETE FROM spool WHERE id IN (SELECT id FROM spool ORDER BY id LIMIT ?)", (excess,)
        ).rowcount
        self._count -= deleted
        self.dropped += deleted

    def close(self) -> None:
        self._db.close()
