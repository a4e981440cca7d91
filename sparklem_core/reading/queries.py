"""The reads the API answers, over any plugin table, on SQLite, PostgreSQL and MariaDB.

Every value from a request is bound as a parameter; a column name is used only once it
is found among the table's declared series, values or time columns. Times read back
without a zone (SQLite, MariaDB) are UTC, as written.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    Float,
    Integer,
    Numeric,
    String,
    and_,
    cast,
    delete,
    func,
    literal_column,
    or_,
    select,
)

from sparklem_core.db.plugin_tables import PluginTable
from sparklem_core.db.read_tables import rfc3339
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import AgentRegistry
from sparklem_core.fleet.state import STATES, inventory
from sparklem_core.reading.catalog import ReadError
from sparklem_core.reading.timeparse import parse_time
from sparklem_core.settings.config import Config

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_POINTS = 50_000  # an aggregate answer larger than this is refused: narrow it
MAX_VALUE_CHARS = 255  # a filter value longer than any key column holds
AGGREGATES = ("avg", "min", "max", "sum", "count")
BUCKETS = {"1m": 60, "1h": 3600, "1d": 86400}
AGENT = "agent_id"
INT64 = 2**63


@dataclass(frozen=True)
class Filters:
    """What selects rows: agents, values of series keys, a time range [start, end)."""

    agents: tuple[str, ...] = ()
    series: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    start: datetime | None = None
    end: datetime | None = None

    @property
    def ranged(self) -> bool:
        return self.start is not None or self.end is not None


@dataclass(frozen=True)
class Page:
    """One page of rows, newest first, and the cursor of the next (None: the last page)."""

    items: list[dict[str, Any]]
    next: str | None


def iso_or_none(value: datetime | None) -> str | None:
    """A time read back from the database as RFC 3339 UTC (naive means UTC, as written)."""
    return None if value is None else rfc3339(value)


def parse_limit(text: str | None) -> int:
    """``limit``: a whole number, clamped to [1, MAX_LIMIT]; default DEFAULT_LIMIT."""
    if text is None:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise ReadError("limit", f"limit must be a whole number (1 to {MAX_LIMIT})")
    return max(1, min(MAX_LIMIT, int(text)))


def parse_filters(
    table: PluginTable,
    agents: Sequence[str],
    series: Mapping[str, Sequence[str]],
    start: str | None,
    end: str | None,
) -> Filters:
    """Typed filters from request text; :class:`ReadError` naming the parameter."""
    if agents and AGENT not in table.table.c:
        raise ReadError("agent", f"table {table.name} has no agent_id column to filter on")
    for agent in agents:
        _check_text("agent", agent)
    typed: dict[str, tuple[Any, ...]] = {}
    for name, values in series.items():
        if name not in table.series or name == AGENT:
            keys = ", ".join(table.series_keys) or "none"
            raise ReadError(name, f"unknown parameter {name[:64]!r} (series keys: {keys})")
        typed[name] = tuple(coerce(table, name, v) for v in values)
    return Filters(
        tuple(agents),
        typed,
        None if start is None else _time("from", start),
        None if end is None else _time("to", end),
    )


def coerce(table: PluginTable, name: str, text: str) -> Any:
    """``text`` as a value of column ``name``: the type the database compares it as."""
    column_type = table.table.c[name].type
    if isinstance(column_type, Integer):
        body = text[1:] if text.startswith("-") else text
        digits = body.isascii() and body.isdigit() and len(body) <= 19
        if not digits or not -INT64 <= int(text) < INT64:
            raise ReadError(name, f"{name} must be a whole number")
        return int(text)
    if isinstance(column_type, Float | Numeric):
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise ReadError(name, f"{name} must be a finite number")
        return number
    if isinstance(column_type, String):
        return _check_text(name, text)
    raise ReadError(name, f"{name} cannot be filtered on")


def _check_text(name: str, text: str) -> str:
    if len(text) > MAX_VALUE_CHARS or "\0" in text:
        raise ReadError(name, f"{name} must be at most {MAX_VALUE_CHARS} characters, no NUL")
    return text


def _time(name: str, text: str) -> datetime:
    try:
        return parse_time(text, name)
    except ValueError as exc:
        raise ReadError(name, str(exc)) from None


def _where(table: PluginTable, f: Filters) -> list[ColumnElement[bool]]:
    c = table.table.c
    clauses: list[ColumnElement[bool]] = []
    if f.agents:
        clauses.append(c[AGENT].in_(f.agents))
    for name, values in f.series.items():
        clauses.append(c[name].in_(values))
    if f.start is not None:
        clauses.append(c[table.time] >= f.start)
    if f.end is not None:
        clauses.append(c[table.time] < f.end)
    return clauses


def reading(table: PluginTable, row: Mapping[str, Any]) -> dict[str, Any]:
    """A row as the API shows it: agent, series keys, values, time."""
    return {
        "agent_id": row.get(AGENT),
        "series": {k: row[k] for k in table.series_keys},
        "values": {k: _number(row[k]) for k in table.values},
        "time": iso_or_none(row[table.time]),
    }


# --- latest -------------------------------------------------------------------------------

LATEST = "sparklem_latest"


def latest(store: Store, table: PluginTable, f: Filters, now: datetime) -> list[str]:
    """The newest reading of each series (per agent) from the latest-value table, as the
    JSON text of each item (``agent_id``, ``series``, ``values``, ``time``, ``age_s``).

    A primary-key lookup (table, agents): never a scan of the history, whatever its size.
    The stored row is the item without ``agent_id`` and ``age_s``
    (:mod:`sparklem_core.db.read_tables`): it is checked and spliced, not rebuilt.
    A row that is not JSON or does not fit (another version of the plugin, tampering) is
    skipped; one in the column form written before (``{"sensor": ..., "celsius": ...,
    "measured_at": ...}``) is answered in the same shape.
    """
    t = store.metadata.tables[LATEST]
    where = [t.c.table_name == table.name]
    if f.agents:
        where.append(t.c.agent_id.in_(f.agents))
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(t.c.agent_id, t.c.row).where(*where).order_by(t.c.agent_id, t.c.series)
        ).all()
    keys = table.series_keys
    tails: dict[str, str] = {}  # a batch's readings share their time: its age made once
    agent, head = None, ""
    found: list[str] = []
    for agent_id, text in rows:  # 20,000 series in tens of ms: kept lean
        try:
            # Decoded to check it, then dropped: 20,000 items kept as objects would cost
            # more to build and wake the garbage collector.
            row = orjson.loads(text)
            if not _is_item(row, text):
                row = _item_from_columns(row, keys, table.values, table.time)
                text = orjson.dumps(row).decode()
            if f.series and any(
                row["series"].get(k, _MISSING) not in v for k, v in f.series.items()
            ):
                continue
            stamp = row["time"]
            tail = tails.get(stamp)
            if tail is None:
                age = round((now - datetime.fromisoformat(stamp)).total_seconds(), 3)
                tail = tails[stamp] = ',"age_s":' + orjson.dumps(age).decode() + "}"
            if agent_id != agent:  # rows come by agent: its JSON made once
                head = '{"agent_id":' + orjson.dumps(agent_id).decode() + ","
                agent = agent_id
        except (ValueError, KeyError, TypeError, AttributeError, orjson.JSONEncodeError):
            continue
        found.append(head + text[1:-1] + tail)
    return found


_ITEM_KEYS = {"series", "values", "time"}
_MISSING = object()


def _is_item(row: Any, text: str) -> bool:
    """Whether ``row`` (``text`` decoded) is a stored item, whose text can be spliced."""
    return (
        type(row) is dict
        and row.keys() == _ITEM_KEYS
        and type(row["series"]) is dict
        and type(row["values"]) is dict
        and text[0] == "{"  # no whitespace around it: it is cut at its braces
        and text[-1] == "}"
    )


def _item_from_columns(
    row: dict[str, Any], keys: tuple[str, ...], values: tuple[str, ...], when: str
) -> dict[str, Any]:
    """A row stored by columns (before items were) as an item; KeyError, TypeError."""
    return {"series": {k: row[k] for k in keys}, "values": {k: row[k] for k in values},
            "time": row[when]}  # fmt: skip


# --- history ------------------------------------------------------------------------------


def _order_keys(table: PluginTable) -> list[str]:
    """Time, then the primary key (or the series keys): a total order for keyset paging."""
    tiebreak = [c.name for c in table.table.primary_key.columns] or list(table.series)
    return [table.time, *(k for k in tiebreak if k != table.time)]


def history(engine: Engine, table: PluginTable, f: Filters, limit: int, cursor: str | None) -> Page:
    """Rows in the range, newest first, ``limit`` at a time."""
    keys = _order_keys(table)
    c = table.table.c
    statement = select(table.table).where(*_where(table, f))
    if cursor is not None:
        after = _decode_cursor(table, keys, cursor)
        statement = statement.where(_before(table, keys, after))
    statement = statement.order_by(*(c[k].desc() for k in keys)).limit(limit + 1)
    with engine.connect() as conn:
        rows = conn.execute(statement).mappings().all()
    more = len(rows) > limit
    rows = rows[:limit]
    items = [reading(table, row) for row in rows]
    last = rows[-1] if more else None
    return Page(items, None if last is None else _encode_cursor([last[k] for k in keys]))


def _before(table: PluginTable, keys: list[str], values: list[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in (keys DESC) order."""
    c = table.table.c
    clause = c[keys[-1]] < values[-1]
    for key, value in zip(reversed(keys[:-1]), reversed(values[:-1]), strict=True):
        clause = or_(c[key] < value, and_(c[key] == value, clause))
    return clause


def _encode_cursor(values: list[Any]) -> str:
    plain = [iso_or_none(v) if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(json.dumps(plain).encode()).decode().rstrip("=")


def _decode_cursor(table: PluginTable, keys: list[str], cursor: str) -> list[Any]:
    bad = ReadError("cursor", "cursor is not one this API gave: pass the 'next' value unchanged")
    if len(cursor) > 2048:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise bad from None
    if not isinstance(values, list) or len(values) != len(keys):
        raise bad
    typed = []
    for key, value in zip(keys, values, strict=True):
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise bad
        try:
            typed.append(
                parse_time(str(value)) if key == table.time else coerce(table, key, str(value))
            )
        except (ValueError, ReadError):
            raise bad from None
    return typed


# --- aggregates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    t: datetime | None  # the bucket's start; None without buckets
    value: float | int | None
    count: int


@dataclass(frozen=True)
class Group:
    key: dict[str, Any]
    points: list[Point]


def check_aggregate(
    table: PluginTable, field_name: str | None, agg: str | None, bucket: str | None,
    group_by: Sequence[str],
) -> None:  # fmt: skip
    """:class:`ReadError` naming the first parameter the table's declaration does not allow."""
    if not field_name:
        raise ReadError("field", f"name a field: one of {', '.join(table.values)}")
    if field_name not in table.values:
        raise ReadError(
            "field", f"no field {field_name[:64]!r} in {table.name} ({', '.join(table.values)})"
        )
    if agg not in AGGREGATES:
        raise ReadError("agg", f"agg must be one of {', '.join(AGGREGATES)}")
    if agg != "count" and not isinstance(table.table.c[field_name].type, Integer | Float | Numeric):
        raise ReadError("field", f"{field_name} is not a number: only agg=count applies")
    if bucket is not None and bucket not in BUCKETS:
        raise ReadError("bucket", f"bucket must be one of {', '.join(BUCKETS)}")
    for name in group_by:
        if name not in table.series:
            raise ReadError(
                "group_by", f"group_by {name[:64]!r} is not a series key of {table.name} "
                f"({', '.join(table.series)})"
            )  # fmt: skip


def epoch_seconds(engine: Engine, column: Any) -> ColumnElement[int]:
    """Whole seconds since the epoch of a stored UTC time, the same on every database."""
    name = engine.dialect.name
    if name == "sqlite":
        return cast(func.strftime(literal_column("'%s'"), column), Integer)
    if name == "postgresql":
        return cast(func.floor(func.extract("epoch", column)), BigInteger)
    if name in ("mysql", "mariadb"):  # no session time zone involved, unlike UNIX_TIMESTAMP
        return func.timestampdiff(
            literal_column("SECOND"), literal_column("'1970-01-01 00:00:00'"), column
        )
    raise ReadError("bucket", f"buckets are not supported on {name}")


def aggregate(
    engine: Engine,
    table: PluginTable,
    f: Filters,
    field_name: str | None,
    agg: str | None,
    bucket: str | None,
    group_by: Sequence[str],
) -> list[Group]:
    """``agg`` of ``field_name`` per group (and per bucket), groups and points in order."""
    check_aggregate(table, field_name, agg, bucket, group_by)
    c = table.table.c
    group_by = list(dict.fromkeys(group_by))
    value_column = c[field_name]
    measure = func.count(value_column) if agg == "count" else getattr(func, agg)(value_column)
    columns: list[Any] = [c[k] for k in group_by]
    if bucket is not None:
        # Floor division by the width, also right before 1970: identical on all three.
        width = literal_column(str(BUCKETS[bucket]))
        seconds = epoch_seconds(engine, c[table.time])
        columns.append((seconds - ((seconds % width) + width) % width).label("bucket"))
    statement = (
        select(*columns, measure.label("value"), func.count(value_column).label("n"))
        .where(*_where(table, f))
        .group_by(*columns)
        .order_by(*columns)
        .limit(MAX_POINTS + 1)
    )
    with engine.connect() as conn:
        rows = conn.execute(statement).all()
    if len(rows) > MAX_POINTS:
        raise ReadError(
            "bucket" if bucket else "group_by",
            f"more than {MAX_POINTS} points: narrow from/to, filter, or use a wider bucket",
        )
    groups: dict[tuple[Any, ...], list[Point]] = {}
    for row in rows:
        key = tuple(row[: len(group_by)])
        t = None
        if bucket is not None:
            t = datetime.fromtimestamp(int(row[len(group_by)]), UTC)
        groups.setdefault(key, []).append(Point(t, _number(row.value), int(row.n)))
    return [Group(dict(zip(group_by, key, strict=True)), points) for key, points in groups.items()]


def _number(value: Any) -> Any:
    """A Decimal (PostgreSQL's and MariaDB's sums and averages) as an int or a float."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


# --- rejections ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RejectionFilters:
    reasons: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    plugins: tuple[str, ...] = ()
    start: datetime | None = None
    end: datetime | None = None


def parse_rejection_filters(
    reasons: Sequence[str], agents: Sequence[str], plugins: Sequence[str],
    start: str | None, end: str | None,
) -> RejectionFilters:  # fmt: skip
    """Typed rejection filters; :class:`ReadError` naming the parameter."""
    for name, values in (("reason", reasons), ("agent", agents), ("plugin", plugins)):
        for value in values:
            _check_text(name, value)
    return RejectionFilters(
        tuple(reasons), tuple(agents), tuple(plugins),
        None if start is None else _time("from", start),
        None if end is None else _time("to", end),
    )  # fmt: skip


@dataclass(frozen=True)
class Rejections:
    counts: dict[str, int]
    page: Page


def rejections(store: Store, f: RejectionFilters, limit: int, cursor: str | None) -> Rejections:
    """Rejected messages newest first (by id), and how many per reason under the filters."""
    t = store.rejected
    where: list[ColumnElement[bool]] = []
    for column, values in ((t.c.reason, f.reasons), (t.c.agent_id, f.agents),
                           (t.c.plugin, f.plugins)):  # fmt: skip
        if values:
            where.append(column.in_(values))
    if f.start is not None:
        where.append(t.c.received_at >= f.start)
    if f.end is not None:
        where.append(t.c.received_at < f.end)
    page_where = list(where)
    if cursor is not None:
        if not (cursor.isascii() and cursor.isdigit()) or not int(cursor[:20]) < INT64:
            raise ReadError("cursor", "cursor is not one this API gave: pass 'next' unchanged")
        page_where.append(t.c.id < int(cursor))
    listed = [t.c[k] for k in ("id", "topic", "partition", "offset", "agent_id", "plugin",
                                "reason", "detail", "received_at")]  # fmt: skip
    with store.engine.connect() as conn:
        counts = dict(conn.execute(
            select(t.c.reason, func.count()).where(*where).group_by(t.c.reason)
        ).all())  # fmt: skip
        rows = conn.execute(
            select(*listed).where(*page_where).order_by(t.c.id.desc()).limit(limit + 1)
        ).mappings().all()  # fmt: skip
    more = len(rows) > limit
    items = [{**row, "received_at": iso_or_none(row["received_at"])} for row in rows[:limit]]
    return Rejections(
        {reason: int(n) for reason, n in sorted(counts.items())},
        Page(items, str(rows[limit - 1]["id"]) if more else None),
    )


# --- agents -------------------------------------------------------------------------------


def agents(
    config: Config, store: Store, now: datetime, *, states: Sequence[str] = (),
    silent: bool = False, ids: Sequence[str] = (), limit: int | None = None,
    after: str | None = None, registry: AgentRegistry | None = None,
) -> Page:  # fmt: skip
    """The fleet as ``sparklem agents --json`` shows it (the same documents), filtered, by
    agent id: after ``after`` (a page's ``next``), ``limit`` at most (None: all);
    FleetError if unreadable. ``registry``: a long-lived reader's (fleet.state.open_registry)."""
    for state in states:
        if state not in STATES:
            raise ReadError("state", f"state must be one of {', '.join(STATES)}")
    for agent in ids:
        _check_text("agent", agent)
    if after is not None:
        _check_text("cursor", after)
    wanted = set(ids)
    listed: list[dict[str, Any]] = []
    for status in inventory(config, now, store, registry):  # by agent id: the keyset's order
        if after is not None and status.agent_id <= after:
            continue
        if states and status.state not in states or silent and not status.silent:
            continue
        if wanted and status.agent_id not in wanted:
            continue
        if limit is not None and len(listed) == limit:
            return Page(listed, listed[-1]["agent_id"])
        listed.append(status.document(now))
    return Page(listed, None)


# --- deletion -----------------------------------------------------------------------------


def delete_agent_data(
    store: Store, agent_id: str, plugin_tables: Iterable[PluginTable]
) -> dict[str, int]:
    """Remove one agent's rows from ``plugin_tables`` (and its latest values), at once."""
    _check_text("agent_id", agent_id)
    tables = [t.table for t in plugin_tables if AGENT in t.table.c]
    tables.append(store.metadata.tables[LATEST])
    deleted = {}
    with store.engine.begin() as conn:
        for table in tables:
            result = conn.execute(delete(table).where(table.c[AGENT] == agent_id))
            deleted[table.name] = int(result.rowcount)
    return deleted
