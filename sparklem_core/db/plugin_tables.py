"""Plugin tables: what a plugin declares of each, and bringing the database to it.

A plugin registers each table with its time column, series keys and value columns
(:func:`declare` checks them). At every start (``init``, ``run``) :func:`upgrade`
compares the plugin tables in the database with their declarations, with Alembic's
autogenerate, and applies what is safe: a new table, a new column that may be NULL (or
has a server default), a new or changed index. Anything that could lose data or fail
on existing rows (a retyped column, a nullability change, a new NOT NULL column without
default, a NOT NULL column no longer declared) is refused before anything is applied,
with :class:`PluginTableRefused` naming the table, the column and what to do.

A column or index in the database that the declaration no longer has is left in place
(a warning): a processor running an older version of the plugin, during a rolling
upgrade or after a rollback, must still start, and nothing is ever dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Column, Connection, DateTime, Index, Table, insert, select, update

from sparklem_core.plugin_api import text_problem

log = logging.getLogger(__name__)
#: The core table :func:`record` writes: each plugin table's owner and declaration.
RECORDED_TABLE = "sparklem_plugin_tables"
MAX_UNIT_CHARS = 16


class PluginTableRefused(RuntimeError):
    """A plugin table's declaration differs from the database in a way not applied safely."""


@dataclass(frozen=True)
class PluginTable:
    """A table a plugin registered, with what retention and the read API need of it."""

    owner: str  # the plugin's name
    table: Table
    time: str  # the DateTime column a row is measured at
    series: tuple[str, ...]  # the columns naming one series (agent_id, sensor, ...)
    values: tuple[str, ...]  # the measured columns
    # A value column's unit ("°C", "%", "B"); a column not in it has none.
    units: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def series_keys(self) -> tuple[str, ...]:
        """The series columns other than ``agent_id`` (which the read side keys apart)."""
        return tuple(c for c in self.series if c != "agent_id")

    def document(self) -> dict[str, Any]:
        """The declaration as JSON: what the read API lists and :func:`record` stores."""
        return {
            "table": self.name,
            "time": self.time,
            "series": list(self.series),
            "values": list(self.values),
            "units": dict(self.units),
        }


@dataclass(frozen=True)
class TableChange:
    """One change :func:`upgrade` applied to a plugin table."""

    table: str
    done: str  # "created table", "added column x", "added index ix_y"

    def __str__(self) -> str:
        if self.done == "created table":
            return f"created table {self.table}"
        return f"upgraded table {self.table}: {self.done}"


def declare(
    owner: str,
    table: Table,
    *,
    time: str | None = None,
    series: Sequence[str] = (),
    values: Sequence[str] = (),
    units: Mapping[str, str] | None = None,
) -> PluginTable:
    """Check a registration's declaration against its table; ``ValueError``, one line."""
    where = f"table {table.name!r}"
    if time is None:
        raise ValueError(f"{where}: name its time column: register({table.name!r}, ..., time=...)")
    series_t = _names(series, "series", where)
    values_t = _names(values, "values", where)
    for name in (time, *series_t, *values_t):
        if not isinstance(name, str) or name not in table.c:
            raise ValueError(f"{where}: {name!r} is not one of its columns")
    column = table.c[time]
    if not isinstance(column.type, DateTime) or not column.type.timezone:
        raise ValueError(f"{where}: time column {time!r} must be a DateTime(timezone=True)")
    if column.nullable:
        raise ValueError(f"{where}: time column {time!r} must be nullable=False")
    named = [time, *series_t, *values_t]
    twice = next((n for n in named if named.count(n) > 1), None)
    if twice is not None:
        raise ValueError(f"{where}: column {twice!r} is declared twice among time, series, values")
    return PluginTable(owner, table, time, series_t, values_t, check_units(units, values_t, where))


def check_units(units: object, values: Sequence[str], where: str) -> dict[str, str]:
    """``units`` as a dict if each is a short text for one of ``values``; ``ValueError``."""
    if units is None:
        return {}
    if not isinstance(units, Mapping):
        raise ValueError(f"{where}: units must be a dict of value column to unit, not {units!r}")
    for column, unit in units.items():
        if column not in values:
            raise ValueError(f"{where}: unit for {column!r}, which is not one of its values")
        if not isinstance(unit, str) or len(unit) > MAX_UNIT_CHARS:
            raise ValueError(
                f"{where}: unit of {column!r} must be a string of at most {MAX_UNIT_CHARS} "
                f"characters, not {unit!r:.40}"
            )
        problem = text_problem(unit)
        if problem is not None:
            raise ValueError(f"{where}: unit of {column!r} {problem}")
    return dict(units)


def record(conn: Connection, recorded: Table, tables: Iterable[PluginTable], now: datetime) -> None:
    """Write each table's owner and declaration into ``recorded`` (sparklem_plugin_tables)
    where they differ from the stored ones, on ``conn``, after :func:`upgrade`.

    Readers (``serve``) learn every plugin's tables from it without loading the plugin.
    A table no longer registered keeps its row: its rows are still stored and readable.
    """
    c = recorded.c
    stored = {
        name: (plugin, text)
        for name, plugin, text in conn.execute(select(c.table_name, c.plugin, c.declaration))
    }
    for table in tables:
        entry = (table.owner, json.dumps(table.document(), sort_keys=True))
        if stored.get(table.name) == entry:
            continue
        row = {"plugin": entry[0], "declaration": entry[1], "recorded_at": now}
        if table.name in stored:
            conn.execute(update(recorded).where(c.table_name == table.name).values(row))
        else:
            conn.execute(insert(recorded).values(table_name=table.name, **row))


def _names(names: Sequence[str], what: str, where: str) -> tuple[str, ...]:
    # A string is a sequence too: series="sensor" would be read as s, e, n, ...
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise ValueError(f"{where}: {what} must be a tuple of column names, not {names!r}")
    return tuple(names)


def upgrade(conn: Connection, tables: Iterable[PluginTable]) -> list[TableChange]:
    """Bring ``tables`` in the database to their declarations, on ``conn``; what was done.

    Run under the schema lock (:meth:`sparklem_core.db.store.Store.create_schema`): the
    comparison and the changes see no other process's. Raises :class:`PluginTableRefused`
    before changing anything when a difference is not safe to apply.
    """
    from alembic.autogenerate import produce_migrations
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    declared = {t.name: t for t in tables}
    if not declared:
        return []
    metadata = next(iter(declared.values())).table.metadata

    def ours(name: str | None, type_: str) -> bool:
        return type_ != "table" or name in declared

    context = MigrationContext.configure(
        connection=conn,
        opts={
            "include_name": lambda name, type_, _parents: ours(name, type_),
            "include_object": lambda _obj, name, type_, _reflected, _other: ours(name, type_),
            "compare_type": True,
            "compare_server_default": False,  # rendered differently by each database
        },
    )
    script = produce_migrations(context, metadata)
    assert script.upgrade_ops is not None
    plan = _plan(script.upgrade_ops.ops, declared)
    operations = Operations(context)
    changes: list[TableChange] = []
    for step in plan:
        step.apply(conn, operations)
        change = TableChange(step.table, step.done)
        log.info("%s (plugin %s)", change, declared[step.table].owner)
        changes.append(change)
    return changes


@dataclass(frozen=True)
class _Step:
    table: str
    done: str
    create: Table | Index | None = None  # created with its dialect options
    add_column: Column[Any] | None = None
    drop_index: str | None = None

    def apply(self, conn: Connection, operations: Any) -> None:
        if self.drop_index is not None:
            operations.drop_index(self.drop_index, table_name=self.table)
        if self.add_column is not None:
            operations.add_column(self.table, self.add_column)
        if self.create is not None:
            self.create.create(conn)


def _plan(ops: Sequence[Any], declared: dict[str, PluginTable]) -> list[_Step]:
    """The steps that bring the database to ``declared``; refuses if any change is unsafe."""
    from alembic.operations import ops as alembic_ops

    created = sorted(op.table_name for op in ops if isinstance(op, alembic_ops.CreateTableOp))
    steps = [_Step(name, "created table", create=declared[name].table) for name in created]
    refused: list[str] = []
    for group in ops:
        if group.table_name in created:
            continue  # created whole, indexes included
        plugin_table = declared[group.table_name]
        where = f"plugin {plugin_table.owner}, table {plugin_table.name}"
        members = group.ops if isinstance(group, alembic_ops.ModifyTableOps) else [group]
        for op in members:
            outcome = _judge(op, plugin_table.table, where, members)
            if isinstance(outcome, str):
                refused.append(f"{where}: {outcome}")
            elif outcome is not None:
                steps.append(outcome)
    if refused:
        raise PluginTableRefused("; ".join(refused))
    # An index declared anew under its old name is dropped before it is created again.
    return sorted(steps, key=lambda step: step.drop_index is None)


def _judge(op: Any, table: Table, where: str, siblings: Sequence[Any]) -> _Step | str | None:
    """The step for one difference; or why it is refused; or None when it is left as it is."""
    from alembic.operations import ops as alembic_ops

    if isinstance(op, alembic_ops.AddColumnOp):
        column = table.c[op.column.name]
        if column.primary_key or not (column.nullable or column.server_default):
            return (
                f"new column {column.name} is NOT NULL without a server default, which the "
                "rows already stored cannot have: declare it nullable=True or give it a "
                "server_default"
            )
        return _Step(table.name, f"added column {column.name}", add_column=_bare_copy(column))
    if isinstance(op, alembic_ops.CreateIndexOp):
        index = next(i for i in table.indexes if i.name == op.index_name)
        if index.unique:
            return (
                f"new unique index {index.name} may not hold on the rows already stored: "
                "create it by hand once they are unique"
            )
        return _Step(table.name, f"added index {index.name}", create=index)
    if isinstance(op, alembic_ops.DropIndexOp):
        recreated = any(
            isinstance(s, alembic_ops.CreateIndexOp) and s.index_name == op.index_name
            for s in siblings
        )
        if recreated:  # the same name on other columns: no data in an index
            return _Step(table.name, f"dropped old index {op.index_name}", drop_index=op.index_name)
        log.warning("%s: index %s is no longer declared; left in place", where, op.index_name)
        return None
    if isinstance(op, alembic_ops.DropColumnOp):
        stored = op.to_column()
        if stored.nullable or stored.server_default is not None:
            log.warning(
                "%s: column %s is no longer declared; left in place, new rows leave it empty",
                where,
                op.column_name,
            )
            return None
        return (
            f"column {op.column_name} (NOT NULL in the database) is no longer declared, so no "
            "row could be stored: declare it again, or drop it by hand after saving its data"
        )
    if isinstance(op, alembic_ops.AlterColumnOp):
        return _altered(op)
    if isinstance(op, alembic_ops.CreateTableCommentOp | alembic_ops.DropTableCommentOp):
        return None  # documentation only
    kind = op.to_diff_tuple()[0] if hasattr(op, "to_diff_tuple") else type(op).__name__
    return (
        f"change {kind} is not applied automatically: apply it by hand, or declare the table "
        "as the database has it"
    )


def _bare_copy(column: Column[Any]) -> Column[Any]:
    """The column alone: its index, if any, is created as an index of its own."""
    default = column.server_default
    return Column(
        column.name,
        column.type,
        nullable=column.nullable,
        server_default=getattr(default, "arg", None),
    )


def _altered(op: Any) -> str | None:
    """Why an Alembic ``alter_column`` is refused; None for a comment (documentation only)."""
    where = f"column {op.column_name}"
    if op.modify_type is not None:
        return (
            f"{where} is {op.existing_type} in the database but declared {op.modify_type}: a "
            "type is not changed automatically (data could be lost); declare it as stored, "
            "or add a new column"
        )
    if op.modify_nullable is not None:
        now = "nullable" if op.existing_nullable else "NOT NULL"
        wanted = "nullable" if op.modify_nullable else "NOT NULL"
        return (
            f"{where} is {now} in the database but declared {wanted}: not changed "
            f"automatically; declare it {now}, or alter it by hand"
        )
    if op.modify_comment is not False:
        return None
    return (
        f"{where} differs from its declaration in a way not applied automatically: alter it by hand"
    )
