"""The fleet inventory's writes: one additive upsert per agent (and agent and plugin) per batch.

Every update adds to or takes the later of what is stored (``messages = messages + n``,
``last_seen`` the later time), so two processors updating one agent at once never lose
an update: the database serializes the two upserts on the row, and either order gives
the same result. SQLite and PostgreSQL run it as ``INSERT .. ON CONFLICT DO UPDATE``,
MySQL and MariaDB as ``INSERT .. ON DUPLICATE KEY UPDATE`` (whose assignments see the
columns already assigned: the reason is therefore set before its time). Rows are written
in key order, so two transactions lock them in one order and cannot deadlock on them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import MetaData, Table, and_, case, or_
from sqlalchemy.dialects import mysql, postgresql, sqlite

from sparklem_core.db.batch import AgentActivity

_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def upsert_agents(conn: Any, metadata: MetaData, agents: Mapping[str, AgentActivity]) -> None:
    """Add a batch's activity to ``sparklem_agents`` and ``sparklem_agent_plugins``."""
    agent_rows = [
        {
            "agent_id": agent_id,
            "first_seen": a.first_at,
            "last_seen": a.last_at,
            "messages": a.messages,
            "rejections": a.rejections,
            "last_rejection_reason": a.last_rejection,
            "last_rejection_at": a.last_rejection_at,
        }
        for agent_id, a in sorted(agents.items())
    ]
    plugin_rows = [
        {"agent_id": agent_id, "plugin": plugin, "last_message_at": p.last_at,
         "messages": p.messages}
        for agent_id, a in sorted(agents.items())
        for plugin, p in sorted(a.plugins.items())
    ]  # fmt: skip
    dialect = conn.dialect.name
    conn.execute(
        cached_upsert(dialect, metadata.tables["sparklem_agents"], _agent_updates), agent_rows
    )
    if plugin_rows:
        table = metadata.tables["sparklem_agent_plugins"]
        conn.execute(cached_upsert(dialect, table, _plugin_updates), plugin_rows)


@functools.lru_cache(maxsize=64)
def cached_upsert(dialect: str, table: Table, updates: Callable[[Any, Any], Any]) -> Any:
    """Built once per table: building the statement costs more than running it."""
    return upsert_statement(dialect, table, updates)


def _later(old: Any, new: Any) -> Any:
    return case((new > old, new), else_=old)


def _agent_updates(old: Any, new: Any) -> list[tuple[str, Any]]:
    newer_rejection = and_(
        new.last_rejection_at.is_not(None),
        or_(old.last_rejection_at.is_(None), new.last_rejection_at >= old.last_rejection_at),
    )
    return [
        ("first_seen", case((new.first_seen < old.first_seen, new.first_seen),
                            else_=old.first_seen)),
        ("last_seen", _later(old.last_seen, new.last_seen)),
        ("messages", old.messages + new.messages),
        ("rejections", old.rejections + new.rejections),
        # before last_rejection_at, which it compares with (MySQL assigns in order)
        ("last_rejection_reason", case((newer_rejection, new.last_rejection_reason),
                                       else_=old.last_rejection_reason)),
        ("last_rejection_at", case((or_(old.last_rejection_at.is_(None),
                                        new.last_rejection_at > old.last_rejection_at),
                                    new.last_rejection_at), else_=old.last_rejection_at)),
    ]  # fmt: skip


def _plugin_updates(old: Any, new: Any) -> list[tuple[str, Any]]:
    return [
        ("last_message_at", _later(old.last_message_at, new.last_message_at)),
        ("messages", old.messages + new.messages),
    ]


def upsert_statement(dialect: str, table: Table, updates: Callable[[Any, Any], Any]) -> Any:
    """An INSERT of ``table``'s rows that, on a key already there, applies ``updates(old,
    new)``: the stored row's columns and the inserted row's."""
    if dialect in ("mysql", "mariadb"):
        statement = mysql.insert(table)
        return statement.on_duplicate_key_update(updates(table.c, statement.inserted))
    statement = _INSERTS[dialect](table)
    return statement.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_=dict(updates(table.c, statement.excluded)),
    )
