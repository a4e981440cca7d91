"""One process at a time creates or upgrades the schema.

Processors, ``init`` and the other commands may all start at once on a fresh database
(``docker compose --scale processor=3``, ``run --workers N``). :func:`schema_lock`
gives the one doing the upgrade a database-wide lock, held until its transaction ends:

* PostgreSQL: a transaction-level advisory lock (``pg_advisory_xact_lock``); the DDL is
  transactional, so the whole upgrade commits or rolls back at once, then the lock goes.
* MySQL / MariaDB: ``GET_LOCK`` on a name derived from the database, released at the end
  (DDL commits implicitly there, so the lock, not the transaction, does the work).
* SQLite: the write lock, which the engine's ``BEGIN IMMEDIATE`` takes for the whole
  transaction.
* Any other database: no lock (logged at DEBUG).

The wait is bounded: :class:`SchemaLockTimeout` after ``timeout_s``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import RootTransaction
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

#: How long a process waits for another one's upgrade before giving up.
SCHEMA_LOCK_TIMEOUT_S = 300.0
#: A wait longer than this is logged, so a process that waits does not look hung.
WAIT_NOTICE_S = 1.0

_LOCK_NAME = "sparklem-schema"
#: pg_advisory_xact_lock takes a signed 64-bit key: the first 8 bytes of SHA-256 of the name.
PG_LOCK_KEY = int.from_bytes(hashlib.sha256(_LOCK_NAME.encode()).digest()[:8], "big", signed=True)
_PG_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock_timeout expiry
# Per database, as PostgreSQL's advisory locks are; MD5 keeps it under the 64-character limit.
_MYSQL_LOCK_NAME = f"CONCAT('{_LOCK_NAME}:', MD5(DATABASE()))"


class SchemaLockTimeout(RuntimeError):
    """Another process held the schema lock for longer than the wait allowed."""


def _timed_out(timeout_s: float) -> SchemaLockTimeout:
    return SchemaLockTimeout(
        f"gave up after {timeout_s:g}s waiting for another process upgrading the database "
        "schema; let it finish (or stop it) and start again"
    )


@contextmanager
def schema_lock(
    engine: Engine, *, timeout_s: float = SCHEMA_LOCK_TIMEOUT_S
) -> Iterator[Connection]:
    """A dedicated connection, in a transaction that holds the schema lock until it ends.

    Commits when the block exits normally, rolls back on an exception. On SQLite the
    engine must come from :func:`sparklem_core.db.engines.make_engine` (``BEGIN IMMEDIATE``).
    """
    with engine.connect() as conn:
        with _notice_if_slow():
            trans = _begin_locked(conn, timeout_s)
        try:
            with trans:
                yield conn
        finally:
            # MySQL's lock is the session's, not the transaction's: released only once the
            # transaction has ended, or the next holder's snapshot may predate its commit
            # (REPEATABLE READ) and write the same rows again.
            if _is_mysql(conn) and not conn.invalidated:
                conn.execute(text(f"SELECT RELEASE_LOCK({_MYSQL_LOCK_NAME})"))
                conn.rollback()  # the statement above began one


def _is_mysql(conn: Connection) -> bool:
    return conn.dialect.name in ("mysql", "mariadb")


def _begin_locked(conn: Connection, timeout_s: float) -> RootTransaction:
    """Begin the transaction and take the lock in it; returns the transaction."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return _begin_sqlite(conn, timeout_s)
    trans = conn.begin()
    try:
        if dialect == "postgresql":
            _lock_postgresql(conn, timeout_s)
        elif _is_mysql(conn):
            got = conn.execute(
                text(f"SELECT GET_LOCK({_MYSQL_LOCK_NAME}, :timeout)"),
                {"timeout": max(1, round(timeout_s))},
            ).scalar()
            if got != 1:  # 0: timed out; NULL: an error (no database selected, killed)
                raise _timed_out(timeout_s)
        else:
            log.debug("no schema lock on %s: concurrent upgrades are not serialized", dialect)
    except BaseException:
        trans.rollback()
        raise
    return trans


def _lock_postgresql(conn: Connection, timeout_s: float) -> None:
    conn.execute(text(f"SET LOCAL lock_timeout = '{int(timeout_s * 1000)}ms'"))
    try:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE:
            raise _timed_out(timeout_s) from None
        raise
    # The migration's own DDL waits as long as it needs, as without the lock.
    conn.execute(text("SET LOCAL lock_timeout TO DEFAULT"))


def _begin_sqlite(conn: Connection, timeout_s: float) -> RootTransaction:
    # The engine's BEGIN IMMEDIATE waits up to busy_timeout: stretch it for this one begin.
    raw = conn.connection.driver_connection
    assert raw is not None
    (usual_ms,) = raw.execute("PRAGMA busy_timeout").fetchone()
    raw.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    try:
        return conn.begin()
    except OperationalError as exc:
        if "locked" in str(exc.orig):
            raise _timed_out(timeout_s) from None
        raise
    finally:
        raw.execute(f"PRAGMA busy_timeout={int(usual_ms)}")


@contextmanager
def _notice_if_slow() -> Iterator[None]:
    timer = threading.Timer(
        WAIT_NOTICE_S, log.info, ("waiting for another process upgrading the database schema",)
    )
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
