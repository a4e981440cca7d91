"""Engines with the settings the exactly-once guarantee needs on SQLite."""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event
from tenacity import retry, retry_if_exception, stop_after_delay, wait_random


def make_engine(url: str, *, reader: bool = False) -> Engine:
    """An engine with the settings the exactly-once guarantee needs on SQLite.

    ``reader``: a reading process's (``serve``): on SQLite its transactions begin
    DEFERRED, a snapshot that never holds the write lock, so reads do not hold up the
    processors' commits (a write, serve's DELETE, takes the lock at its statement).
    """
    engine = create_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, "BEGIN" if reader else "BEGIN IMMEDIATE")
    return engine


def _configure_sqlite(engine: Engine, begin: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        _use_wal(cursor)
        # A committed batch must survive a power cut, or Kafka offsets run ahead of data.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # A writer takes the write lock up front: no deadlock-prone upgrade from a read lock.
        conn.exec_driver_sql(begin)


def _locked(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)


# Switching a new file to WAL needs every other connection out of the way, and SQLite
# answers "database is locked" at once, busy timeout or not: processes or threads that
# open a fresh database together (init beside run) take turns here.
@retry(
    retry=retry_if_exception(_locked),
    stop=stop_after_delay(30),
    wait=wait_random(0.005, 0.05),
    reraise=True,
)
def _use_wal(cursor: sqlite3.Cursor) -> None:
    cursor.execute("PRAGMA journal_mode=WAL")
