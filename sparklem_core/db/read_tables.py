"""The read side's writes, in each batch's transaction: ``sparklem_latest`` and the feed.

``sparklem_latest`` gets one upsert per series per batch (the batch's newest reading of
it), which replaces the stored one only if it was measured at the same time or later: a
late spooled reading never hides a newer one. Its ``row`` is the API's latest item
without ``agent_id`` and ``age_s``, ``{"series": {...}, "values": {...}, "time": "...Z"}``,
so that a read of every series splices texts instead of building objects
(:func:`sparklem_core.reading.queries.latest`). The feed gets the batch's stored readings
and rejections by columns (:class:`Group`), as JSON parts under one ``commit_seq``,
taken from ``sparklem_feed_head`` last in the transaction: its row lock, held until the
commit, serializes the commits that write the feed, so a later commit always has a higher
``commit_seq`` and a reader polling ``commit_seq > cursor`` never skips one
(:mod:`sparklem_core.reading.feed`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, MetaData, Table, case, insert, select, update

from sparklem_core.db.batch import Batch, Rejection
from sparklem_core.db.inventory import cached_upsert
from sparklem_core.db.plugin_tables import PluginTable
from sparklem_core.db.row_insert import RowInsert

#: Events per ``sparklem_feed`` row (what one reader poll parses at most per row).
PART_EVENTS = 1000
#: sparklem_latest.series (schema.SERIES_CHARS) as the digest form takes it.
_DIGEST_PREFIX = "#sha256:"


def rfc3339(value: datetime) -> str:
    """``2026-11-30T04:00:00.123456Z``; a naive time is UTC, as the database hands it back."""
    return as_utc(value).isoformat()[:-6] + "Z"  # without its "+00:00"


def as_utc(value: datetime) -> datetime:
    """In UTC: SQLite and MariaDB store and compare the wall time, without its zone."""
    if value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def series_key(values: list[Any], limit: int) -> str:
    """``sparklem_latest.series``: the JSON array of a row's series values other than
    agent_id (``["cpu_thermal"]``, ``["gpu", 0]``), or beyond ``limit`` characters
    ``#sha256:`` and the array's digest (the values are in ``row`` either way)."""
    try:
        text = _SERIES_ENCODER.encode(values)
    except ValueError:  # a non-finite float
        text = _SERIES_ENCODER.encode(_finite(values))
    if len(text) <= limit:
        return text
    return _DIGEST_PREFIX + hashlib.sha256(text.encode()).hexdigest()


@functools.lru_cache(maxsize=4096)
def _series_key(values: tuple[Any, ...], limit: int) -> str:
    """series_key, remembered: a fleet's series (sensor names, units) are few."""
    return series_key(list(values), limit)


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


# Made once: json.dumps with options builds an encoder at every call, and so does
# JSONEncoder.encode (about 10 µs, for each of a batch's hundreds of latest rows).
_ENCODER = json.JSONEncoder(default=_jsonable, allow_nan=False, separators=(",", ":"))
_SERIES_ENCODER = json.JSONEncoder(default=_jsonable, allow_nan=False, ensure_ascii=False)
_C_ENCODER = getattr(json.encoder, "c_make_encoder", None)
if _C_ENCODER is not None:  # CPython: without circular checks (nothing stored refers to itself)
    _encode = functools.partial(
        lambda chunks, value: "".join(chunks(value, 0)),
        _C_ENCODER(None, _jsonable, json.encoder.encode_basestring_ascii,  # type: ignore[attr-defined]
                   None, ":", ",", False, False, False),
    )  # fmt: skip
else:
    _encode = _ENCODER.encode


_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME  # times through _jsonable: RFC 3339, "Z"


def dumps(value: Any) -> str:
    """JSON text of what the read side stores; NaN and infinities become null."""
    try:  # orjson writes NaN and infinities as null itself, 5-10 times faster
        return orjson.dumps(value, default=_jsonable, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a lone surrogate
        pass
    try:
        return _encode(value)
    except ValueError:  # a non-finite float: rare, so only then walked
        return _encode(_finite(value))


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
    groups: list[Group] = []
    latest: dict[tuple[str, str, str], tuple[datetime, str]] = {}
    limit = metadata.tables["sparklem_latest"].c.series.type.length
    for name, rows in batch.rows.items():
        declared = plugin_tables.get(name)
        if declared is None or not rows:
            continue
        groups.append(_readings(declared, rows, latest, limit))
    if batch.rejected:
        groups.append(_rejections(batch.rejected))
    if latest:
        _upsert_latest(conn, metadata.tables["sparklem_latest"], latest, now)
    if groups:
        _append_feed(conn, metadata, groups, now)


@dataclass(frozen=True)
class Group:
    """One table's readings (or the batch's rejections) in a feed part, by columns.

    ``head`` is the group's JSON object without its rows: ``kind``, ``columns`` and for
    readings ``plugin``, ``table``, ``time``. ``agents`` is each row's agent id when
    ``agent_id`` is not one of the columns (a table whose series do not name it).
    """

    head: dict[str, Any]
    rows: list[tuple[Any, ...]]
    agents: list[Any] | None = None

    def part(self, start: int, stop: int) -> dict[str, Any]:
        """The group's JSON object with rows ``start:stop``."""
        part = {**self.head, "rows": self.rows[start:stop]}
        if self.agents is not None:
            part["agents"] = self.agents[start:stop]
        return part


REJECTION_COLUMNS = ("plugin", "agent_id", "reason", "detail", "topic", "partition", "offset",
                     "received_at")  # fmt: skip


def _readings(
    declared: PluginTable,
    rows: list[dict[str, Any]],
    latest: dict[tuple[str, str, str], tuple[datetime, str]],
    limit: int,
) -> Group:
    """The rows as a feed group (times as RFC 3339 text, each distinct time formatted once);
    the newest row per series into ``latest``."""
    name, when = declared.name, declared.time
    columns = (*declared.series, *declared.values, when)
    get = operator.itemgetter(*columns) if len(columns) > 1 else lambda r: (r[when],)
    try:
        table = list(map(get, rows))
    except KeyError:  # a nullable column the plugin left out
        table = [tuple(row.get(c) for c in columns) for row in rows]
    by_column = list(zip(*table, strict=True))
    times = by_column[-1]
    aware = {i: as_utc(t) for i, t in {id(t): t for t in times}.items()}
    time_texts = {i: rfc3339(t) for i, t in aware.items()}
    stored = list(zip(*by_column[:-1], map(time_texts.__getitem__, map(id, times)), strict=True))
    if "agent_id" in declared.series:
        agents = by_column[columns.index("agent_id")]
        group = Group(_reading_head(declared, columns), stored)
    else:
        agents = tuple(row.get("agent_id") for row in rows)
        group = Group(_reading_head(declared, columns), stored, list(agents))
    # The newest row of each series, the later one on a tie: the last of each in a stable
    # sort by time.
    measured = list(map(aware.__getitem__, map(id, times)))
    keys = declared.series_keys
    others = [by_column[columns.index(c)] for c in keys]
    series: list[Any] = list(zip(agents, *others, strict=True))  # (agent, other values)
    order = sorted(range(len(rows)), key=measured.__getitem__)
    try:
        newest = dict(zip(map(series.__getitem__, order), order, strict=True))
    except TypeError:  # an unhashable value (the database took it): keyed by its JSON
        newest = {dumps(series[i]): i for i in order}
    first_value = len(declared.series)
    for i in newest.values():
        agent_id, *values = series[i]
        try:
            series_text = _series_key(tuple(values), limit)
        except TypeError:  # unhashable
            series_text = series_key(values, limit)
        key = (name, "" if agent_id is None else str(agent_id), series_text)
        held = latest.get(key)
        if held is None or measured[i] >= held[0]:
            item = {"series": dict(zip(keys, values, strict=True)),
                    "values": dict(zip(declared.values, stored[i][first_value:-1], strict=True)),
                    "time": stored[i][-1]}  # fmt: skip
            latest[key] = (measured[i], dumps(item))
    return group


def _reading_head(declared: PluginTable, columns: tuple[str, ...]) -> dict[str, Any]:
    return {"kind": "reading", "plugin": declared.owner, "table": declared.name,
            "time": declared.time, "columns": columns}  # fmt: skip


def _rejections(rejected: list[Rejection]) -> Group:
    rows = [
        (r.plugin, r.agent_id, r.reason, r.detail, r.topic, r.partition, r.offset,
         r.received_at)
        for r in rejected
    ]  # fmt: skip
    return Group({"kind": "rejection", "columns": REJECTION_COLUMNS}, rows)


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
    latest: dict[tuple[str, str, str], tuple[datetime, str]],
    now: datetime,
) -> None:
    # In key order: two processors lock shared series in one order, never deadlocking.
    rows = [
        {"table_name": name, "agent_id": agent_id, "series": series, "measured_at": measured,
         "stored_at": now, "row": text}
        for (name, agent_id, series), (measured, text) in sorted(latest.items(),
                                                                 key=lambda kv: kv[0])
    ]  # fmt: skip
    _latest_upsert(table, conn.dialect).execute(conn, rows)


_LATEST_COLUMNS = ("table_name", "agent_id", "series", "measured_at", "stored_at", "row")


@functools.lru_cache(maxsize=16)
def _latest_upsert(table: Table, dialect: Any) -> Any:
    """Prepared once: SQLAlchemy's own executemany costs more than the upsert itself."""
    statement = cached_upsert(dialect.name, table, _newer_wins)
    return RowInsert(table, _LATEST_COLUMNS, dialect, statement)


def _append_feed(conn: Connection, metadata: MetaData, groups: list[Group], now: datetime) -> None:
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
        {"commit_seq": seq, "part": i, "committed_at": now, "events": dumps(groups)}
        for i, groups in enumerate(_parts(groups))
    ]
    conn.execute(insert(metadata.tables["sparklem_feed"]), parts)


def _parts(groups: list[Group]) -> list[list[dict[str, Any]]]:
    """The groups cut into parts of at most PART_EVENTS rows, in order: a part's event N
    is its Nth row, counting the rows of its groups one group after the other."""
    parts: list[list[dict[str, Any]]] = [[]]
    room = PART_EVENTS
    for group in groups:
        start = 0
        while start < len(group.rows):
            if room == 0:
                parts.append([])
                room = PART_EVENTS
            stop = min(start + room, len(group.rows))
            parts[-1].append(group.part(start, stop))
            room -= stop - start
            start = stop
    return parts
