"""What MySQL and MariaDB need to hold what SQLite and PostgreSQL hold, for every table.

Applied when DDL is compiled for those dialects, so the core tables, the migrations and
every plugin's tables get them without a line of plugin code:

- ``DateTime`` is ``DATETIME(6)``: plain ``DATETIME`` cuts the microseconds off.
- ``Float`` is ``DOUBLE``: ``FLOAT`` is single precision there (7 digits, at most 3.4e38),
  where the other databases store a Python float whole.
- ``Text`` is ``MEDIUMTEXT`` (16 MiB): ``TEXT`` holds 64 KiB, less than a rejected
  record's text may take in 4-byte characters.
- Tables are ``utf8mb4`` with the binary collation (:data:`TABLE_OPTIONS`): the default
  ``utf8mb4_general_ci`` compares case-insensitively, so ``Jetson-01`` and ``jetson-01``
  would be one agent and share one ``seq`` mark.

One limit stays the server's: ``max_allowed_packet`` must hold the largest statement, a
rejected record's bytes escaped (:func:`packet_problem` says when it may not).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import DateTime, Float, Text
from sqlalchemy.ext.compiler import compiles

DIALECTS = ("mysql", "mariadb")
TABLE_OPTIONS = {"mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _datetime(type_: DateTime, compiler: Any, **kw: Any) -> str:
    return "DATETIME(6)"


def _float(type_: Float, compiler: Any, **kw: Any) -> str:
    if type(type_) is not Float or type_.precision is not None:  # asked for: kept
        return compiler.visit_float(type_, **kw)
    return "DOUBLE"


def _text(type_: Text, compiler: Any, **kw: Any) -> str:
    if type(type_) is not Text:  # UnicodeText, MEDIUMTEXT... keep what they say
        return compiler.visit_text(type_, **kw)
    return "MEDIUMTEXT"


def max_packet_bytes(conn: Any) -> int | None:
    """The server's ``max_allowed_packet``; None on other databases."""
    if conn.dialect.name not in DIALECTS:
        return None
    return int(conn.exec_driver_sql("SELECT @@max_allowed_packet").scalar())


def packet_problem(max_packet: int | None, max_message_bytes: int) -> str | None:
    """Why a record of ``max_message_bytes`` may not fit one statement, or None.

    PyMySQL sends bytes escaped, up to twice their size, and the row's other columns
    (its text, in up to 4 bytes a character) come in the same statement.
    """
    needed = 2 * max_message_bytes + 4 * 65536
    if max_packet is None or max_packet >= needed:
        return None
    return (
        f"the database's max_allowed_packet ({max_packet} bytes) is smaller than a rejected "
        f"record of processor.max_message_bytes ({max_message_bytes}) may need ({needed}): "
        "raise max_allowed_packet on the server or lower max_message_bytes"
    )


for _dialect in DIALECTS:
    compiles(DateTime, _dialect)(_datetime)
    compiles(Float, _dialect)(_float)
    compiles(Text, _dialect)(_text)
