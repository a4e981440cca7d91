"""What a database error means: wait for the database, or refuse the data.

Exception classes do not say it (psycopg reports "index row too large" as an
``OperationalError``, PyMySQL turns error numbers it does not list into one too), so the
error is judged by its code: the SQLSTATE on PostgreSQL, the error number on
MySQL/MariaDB, the result code on SQLite. An error no code explains is judged by a probe
on a fresh connection: a database that answers refused the data; one that does not is
unavailable.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    NoSuchModuleError,
    StatementError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout


class DatabaseUnusable(Exception):
    """A database URL that no retry can make work: the user must change something."""


# The driver each dialect's extra installs, and the URL scheme that selects it.
_EXTRAS = {
    "postgresql": ("postgres", "postgresql+psycopg://"),
    "mysql": ("mysql", "mysql+pymysql://"),
    "mariadb": ("mysql", "mariadb+pymysql://"),
}


def check_database_url(url: str) -> None:
    """Refuse, before any retry loop, a URL whose driver is missing or SQLite file cannot be.

    Raises DatabaseUnusable with a one-line message saying what to do.
    """
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, NoSuchModuleError, ValueError):
        raise DatabaseUnusable(
            f"{url.partition(':')[0]!r} is not a database URL SQLAlchemy knows "
            "(examples: sqlite:///db.sqlite3, postgresql+psycopg://user@host/db)"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError as exc:
        module = getattr(exc, "name", None) or parsed.get_driver_name()
        extra, scheme = _EXTRAS.get(parsed.get_backend_name(), (None, ""))
        if extra and parsed.drivername == scheme.removesuffix("://"):
            fix = f"pip install 'sparklem[{extra}]'"
        elif extra:
            fix = f"use {scheme}... and pip install 'sparklem[{extra}]'"
        else:
            fix = f"pip install the package that provides {module!r}"
        raise DatabaseUnusable(f"database driver {module!r} is not installed: {fix}") from None
    if parsed.get_backend_name() == "sqlite":
        _check_sqlite_path(parsed.database)


def _check_sqlite_path(database: str | None) -> None:
    """The file must be writable, or its directory must exist and be writable.

    SQLite says only "unable to open database file", which the processor would otherwise
    wait on forever; WAL also needs to create files beside the database.
    """
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = Path(database).expanduser()
    directory = path.parent
    hint = "create it, or set database.url (SPARKLEM_DATABASE_URL)"
    if not directory.is_dir():
        raise DatabaseUnusable(
            f"cannot create SQLite database {path}: directory {directory} does not exist: {hint}"
        )
    if path.is_dir():
        raise DatabaseUnusable(f"SQLite database {path} is a directory: set database.url")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise DatabaseUnusable(
            f"cannot write SQLite database {path}: directory {directory} is not writable"
        )
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise DatabaseUnusable(f"cannot write SQLite database {path}: the file is not writable")


class Verdict(enum.Enum):
    TRANSIENT = "transient"  # the database (or its operator) must recover: retry later
    DATA = "data"  # these values are refused: store the batch record by record


# SQLSTATE classes (PostgreSQL appendix A). Class 42 (a missing table, no privilege) is
# the operator's to fix, never a record's: waiting is right, quarantining would lose.
_SQLSTATE_TRANSIENT = {"08", "25", "40", "42", "53", "55", "57", "58", "XX"}
_SQLSTATE_DATA = {"22", "23", "54"}  # data exception, constraint, program limit (row size)

# MySQL/MariaDB error numbers.
_MYSQL_TRANSIENT = {
    1021,  # disk full
    1037,  # out of memory
    1040,  # too many connections
    1053,  # server shutdown in progress
    1054,  # unknown column (schema drift)
    1114,  # table is full
    1146,  # table does not exist (schema drift: the operator's to fix)
    1205,  # lock wait timeout
    1213,  # deadlock
    1290,  # read-only server
    1927,  # connection killed
    2002,  # cannot connect (socket)
    2003,  # cannot connect (TCP)
    2006,  # server has gone away
    2013,  # lost connection during query
    2014,  # commands out of sync
    2055,  # lost connection (system error)
    4031,  # disconnected by the server (idle timeout)
}
_MYSQL_DATA = {
    1048,  # column cannot be null
    1062,  # duplicate entry
    1071,  # key too long
    1118,  # row size too large
    1264,  # out of range value
    1265,  # data truncated
    1292,  # incorrect datetime value
    1300,  # invalid character string
    1366,  # incorrect string value (encoding)
    1406,  # data too long for column
    1452,  # foreign key
    3140,  # invalid JSON text
    4025,  # CHECK constraint failed
}

# SQLite primary result codes. SQLITE_ERROR (1) is what a missing table or column gives.
_SQLITE_TRANSIENT = {1, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 26}
_SQLITE_DATA = {18, 19, 20, 25}  # TOOBIG, CONSTRAINT, MISMATCH, RANGE


def classify(exc: BaseException, probe: Callable[[], bool]) -> Verdict:
    """Whether ``exc``, raised while writing a batch, is the database's problem or the data's.

    ``probe()`` answers whether the database takes a query on a fresh connection; it is
    called only for errors that carry no code this module knows.
    """
    if isinstance(exc, DisconnectionError | PoolTimeout):
        return Verdict.TRANSIENT
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return Verdict.TRANSIENT
    original = exc.orig if isinstance(exc, StatementError) and exc.orig is not None else exc
    verdict = _by_code(original)
    if verdict is not None:
        return verdict
    return Verdict.DATA if probe() else Verdict.TRANSIENT


def _by_code(error: BaseException) -> Verdict | None:
    # MySQL drivers also carry an SQLSTATE, but a coarse one (HY000 for most errors):
    # the error number is what says it.
    if type(error).__module__.startswith(("pymysql", "MySQLdb")) and error.args:
        number = error.args[0]
        if number in _MYSQL_TRANSIENT:
            return Verdict.TRANSIENT
        if number in _MYSQL_DATA:
            return Verdict.DATA
        return None
    sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    if isinstance(sqlstate, str) and len(sqlstate) == 5:
        if sqlstate[:2] in _SQLSTATE_TRANSIENT:
            return Verdict.TRANSIENT
        if sqlstate[:2] in _SQLSTATE_DATA:
            return Verdict.DATA
        return None
    sqlite_code = getattr(error, "sqlite_errorcode", None)
    if isinstance(sqlite_code, int):
        primary = sqlite_code & 0xFF
        if primary in _SQLITE_TRANSIENT:
            return Verdict.TRANSIENT
        if primary in _SQLITE_DATA:
            return Verdict.DATA
    return None


def first_line(exc: BaseException) -> str:
    """The first line of a database error's message, for a log or a rejection detail."""
    text = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
    return text.splitlines()[0][:300]
