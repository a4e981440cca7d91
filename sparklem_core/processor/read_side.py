"""The read side's writes, in each batch's transaction: ``sparklem_latest`` and the feed.

``sparklem_latest`` gets one upsert per series per batch (the batch's newest reading of
it), which replaces the stored one only if it was measured at the same time or later: a
late spooled reading never hides a newer one. The feed gets the batch's stored readings
and rejections as JSON parts under one ``commit_seq``, taken from ``sparklem_feed_head``
last in the transaction: its row lock, held until the commit, serializes the commits
that write the feed, so a later commit always has a higher ``commit_seq`` and a reader
polling ``commit_seq > cursor`` never skips one (:mod:`sparklem_core.reading.feed`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, MetaData, Table, case, insert, select, update

from sparklem_core.processor.agent_inventory import cached_upsert
from sparklem_core.processor.batch import Batch, Rejection
from sparklem_core.processor.plugin_tables import PluginTable

#: Events per ``sparklem_feed`` row (what one reader poll parses at most per row).
PART_EVENTS = 1000
#: sparklem_latest.series (store.SERIES_CHARS) as the digest form takes it.
_DIGEST_PREFIX = "#sha256:"


def rfc3339(value: datetime) -> str:
    """``2026-11-30T04:00:00.123456Z``; a naive time is UTC, as the database hands it back."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def series_key(values: list[Any], limit: int) -> str:
    """``sparklem_latest.series``: the JSON array of a row's series values other than
    agent_id (``["cpu_thermal"]``, ``["gpu", 0]``), or beyond ``limit`` characters
    ``#sha256:`` and the array's digest (the values are in ``row`` either way)."""
    text = json.dumps(values, ensure_ascii=False, default=_jsonable)
    if len(text) <= limit:
        return text
    return _DIGEST_PREFIX + hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    """What json.dumps cannot write itself, as JSON: times RFC 3339, decimals as numbers."""
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value) if value.is_finite() else None
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def dumps(value: Any) -> str:
    """JSON text of what the read side stores; NaN and infinities become null."""
    try:
        return json.dumps(value, default=_jsonable, allow_nan=False)
    except ValueError:  # a non-finite float: rare, so only then walked
        return json.dumps(_finite(value), default=_jsonable, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def write(
    conn: Connection,
    metadata: MetaData,
    plugin_tables: Mapping[str, PluginTable],
    batch: Batch,
    now: datetime,
) -> None:
    """Upsert the batch's latest readings, then append its feed parts (last: see above)."""
    events: list[dict[str, Any]] = []
    latest: dict[tuple[str, str, str], tuple[datetime, dict[str, Any]]] = {}
    limit = metadata.tables["sparklem_latest"].c.series.type.length
    for name, rows in batch.rows.items():
        declared = plugin_tables.get(name)
        if declared is None or not rows:
            continue
        _readings(declared, rows, events, latest, limit)
    events.extend(_rejection(r) for r in batch.rejected)
    if latest:
        _upsert_latest(conn, metadata.tables["sparklem_latest"], latest, now)
    if events:
        _append_feed(conn, metadata, events, now)


def _readings(
    declared: PluginTable,
    rows: list[dict[str, Any]],
    events: list[dict[str, Any]],
    latest: dict[tuple[str, str, str], tuple[datetime, dict[str, Any]]],
    limit: int,
) -> None:
    """One feed event per row; the newest row per series into ``latest``."""
    name, plugin, when = declared.name, declared.owner, declared.time
    columns = (*declared.series, *declared.values, when)
    others = [c for c in declared.series if c != "agent_id"]
    keys: dict[tuple[Any, ...], str] = {}  # a batch repeats its series: dumped once each
    for row in rows:
        agent_id = row.get("agent_id")
        shown = {c: row.get(c) for c in columns}
        events.append(
            {"kind": "reading", "plugin": plugin, "table": name, "agent_id": agent_id,
             "time": when, "row": shown}
        )  # fmt: skip
        values = tuple(row.get(c) for c in others)
        try:
            series = keys[values]
        except KeyError:
            series = keys[values] = series_key(list(values), limit)
        except TypeError:  # an unhashable value: not memoized
            series = series_key(list(values), limit)
        measured = row[when]
        if measured.tzinfo is None:
            measured = measured.replace(tzinfo=UTC)
        key = (name, "" if agent_id is None else str(agent_id), series)
        held = latest.get(key)
        if held is None or measured >= held[0]:  # later in the batch wins a tie
            latest[key] = (measured, shown)


def _rejection(r: Rejection) -> dict[str, Any]:
    return {
        "kind": "rejection",
        "plugin": r.plugin,
        "agent_id": r.agent_id,
        "reason": r.reason,
        "detail": r.detail,
        "topic": r.topic,
        "partition": r.partition,
        "offset": r.offset,
        "received_at": r.received_at,
    }


def _newer_wins(old: Any, new: Any) -> list[tuple[str, Any]]:
    newer = new.measured_at >= old.measured_at
    return [  # measured_at last: MySQL's later assignments see the earlier ones
        ("stored_at", case((newer, new.stored_at), else_=old.stored_at)),
        ("row", case((newer, new.row), else_=old.row)),
        ("measured_at", case((newer, new.measured_at), else_=old.measured_at)),
    ]


def _upsert_latest(
    conn: Connection,
    table: Table,
    latest: dict[tuple[str, str, str], tuple[datetime, dict[str, Any]]],
    now: datetime,
) -> None:
    # In key order: two processors lock shared series in one order, never deadlocking.
    rows = [
        {"table_name": name, "agent_id": agent_id, "series": series, "measured_at": measured,
         "stored_at": now, "row": dumps(shown)}
        for (name, agent_id, series), (measured, shown) in sorted(latest.items(),
                                                                  key=lambda kv: kv[0])
    ]  # fmt: skip
    conn.execute(cached_upsert(conn.dialect.name, table, _newer_wins), rows)


def _append_feed(
    conn: Connection, metadata: MetaData, events: list[dict[str, Any]], now: datetime
) -> None:
    head = metadata.tables["sparklem_feed_head"]
    statement = update(head).where(head.c.id == 1).values(commit_seq=head.c.commit_seq + 1)
    if conn.dialect.update_returning:
        seq = conn.execute(statement.returning(head.c.commit_seq)).scalar()
    else:  # MariaDB: the row is ours until the commit, so reading it back is exact
        conn.execute(statement)
        seq = conn.execute(select(head.c.commit_seq).where(head.c.id == 1)).scalar()
    if seq is None:  # the head row is gone (the migration writes it): start it again
        seq = 1
        conn.execute(insert(head).values(id=1, commit_seq=seq))
    parts = [
        {"commit_seq": seq, "part": i // PART_EVENTS, "committed_at": now,
         "events": dumps(events[i : i + PART_EVENTS])}
        for i in range(0, len(events), PART_EVENTS)
    ]  # fmt: skip
    conn.execute(insert(metadata.tables["sparklem_feed"]), parts)
