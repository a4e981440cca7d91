"""Bulk INSERTs prepared once per table: one ``executemany`` per batch, or ``COPY``."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Date, DateTime, Table, Time, insert
from sqlalchemy.exc import CompileError, DBAPIError, StatementError

_TEMPORAL = (Date, DateTime, Time)


class RowInsert:
    """An INSERT of given columns, prepared once, run as one bulk driver call per batch.

    ``conn.execute(insert(table), rows)`` stores the same but redoes per batch, in
    Python, work that only depends on the table: compiling, and for every row and column
    looking up the type's bind processor. Here the processors are looked up once, and a
    date or time object that several rows share (a batch's ``received_at``, a message's
    ``measured_at``) is converted once per batch. The driver gets the values SQLAlchemy
    would give it: one ``executemany``, or on PostgreSQL with psycopg one ``COPY``, which
    the server takes 2-3 times faster than row-by-row INSERTs.
    """

    def __init__(
        self, table: Table, columns: tuple[str, ...], dialect: Any, statement: Any = None
    ) -> None:
        """``statement``: an INSERT of ``table`` to run instead of the plain one (an upsert;
        never sent as a COPY)."""
        unknown = set(columns) - set(table.c.keys())
        if unknown:  # what insert(table) says of them
            raise CompileError(f"Unconsumed column names: {', '.join(sorted(unknown))}")
        compiled = (insert(table) if statement is None else statement).compile(
            dialect=dialect, column_keys=list(columns), for_executemany=True
        )
        self.sql = compiled.string
        self.positional = compiled.positional
        self.names = compiled.positiontup if compiled.positional else list(compiled.binds)
        self.order = [compiled.binds[name].key for name in self.names]  # column per parameter
        self.processors: dict[str, tuple[Any, bool]] = {}
        for key in self.order:
            column_type = table.c[key].type
            processor = column_type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                # Date and time conversions are slow and a batch repeats their values.
                self.processors[key] = (processor, isinstance(column_type, _TEMPORAL))
        self.copy_sql: str | None = None
        if statement is None and dialect.name == "postgresql" and dialect.driver == "psycopg":
            quote = dialect.identifier_preparer.quote
            names = ", ".join(quote(table.c[key].name) for key in self.order)
            self.copy_sql = (
                f"COPY {dialect.identifier_preparer.format_table(table)} ({names}) FROM STDIN"
            )

    def execute(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        try:
            values = self._values(rows)
        except Exception as exc:  # a value the column's type cannot take
            raise StatementError(str(exc), self.sql, None, exc) from None
        if self.copy_sql is not None:
            self._copy(conn, values)
            return
        try:
            if self.positional:
                conn.exec_driver_sql(self.sql, values)
            else:
                named = [dict(zip(self.names, v, strict=True)) for v in values]
                conn.exec_driver_sql(self.sql, named)
        except (TypeError, ValueError) as exc:  # PyMySQL refuses a value itself, unwrapped
            raise StatementError(str(exc), self.sql, None, exc) from None

    def _values(self, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        """Each row's driver values, in parameter order."""
        columns: list[list[Any]] = []
        for key in self.order:
            values = [row[key] for row in rows]
            if key in self.processors:
                processor, memoize = self.processors[key]
                if memoize:  # by identity: equal datetimes in other time zones differ here
                    unique = {id(v): v for v in values if v is not None}
                    memo = {i: processor(v) for i, v in unique.items()}
                    values = [None if v is None else memo[id(v)] for v in values]
                else:
                    values = [None if v is None else processor(v) for v in values]
            columns.append(values)
        return list(zip(*columns, strict=True))

    def _copy(self, conn: Any, values: list[tuple[Any, ...]]) -> None:
        """COPY the rows in; driver errors are raised as SQLAlchemy's, as execute() does."""
        dialect, dbapi_connection = conn.dialect, conn.connection.dbapi_connection
        cursor = dbapi_connection.cursor()
        try:
            with cursor.copy(self.copy_sql) as copy:
                for row in values:
                    copy.write_row(row)
        except dialect.loaded_dbapi.Error as exc:
            invalidated = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if invalidated:
                conn.invalidate(exc)
            raise DBAPIError.instance(
                self.copy_sql, None, exc, dialect.loaded_dbapi.Error,
                connection_invalidated=invalidated, dialect=dialect,
            ) from exc  # fmt: skip
        finally:
            cursor.close()
