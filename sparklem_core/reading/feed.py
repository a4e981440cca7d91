"""The feed of stored readings and rejections, in commit order, for ``serve`` and ``tail``.

The processor writes each batch's events to ``sparklem_feed`` under a ``commit_seq`` that
rises in commit order (:mod:`sparklem_core.db.read_tables`). An event's id is
``COMMITSEQ-PART-N``: its batch, the part of that batch, its index in the part. A reader
keeps the id of the last event it saw and asks for what follows; each call reads in a
fresh transaction, so it sees every batch committed before it, and none is committed
later with a lower ``commit_seq``.

Rows are read as hostile: a part or an event that is not what the processor writes is
skipped (logged), never raised to the caller.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, and_, or_, select

from sparklem_core.db.read_tables import REJECTION_COLUMNS, rfc3339
from sparklem_core.db.schema import core_metadata

log = logging.getLogger(__name__)

_TABLES = core_metadata().tables
_FEED = _TABLES["sparklem_feed"]
KINDS = ("reading", "rejection")
#: The id before every event: ``read_after(START)`` reads the feed from its start.
START = "0-0-0"
_MAX_SEQ = 2**63 - 1  # a BIGINT
_MAX_PART = 2**31 - 1  # an INTEGER
_ID_RE = re.compile(r"(0|[1-9][0-9]{0,18})-(0|[1-9][0-9]{0,9})-(0|[1-9][0-9]{0,9})", re.ASCII)
_ROWS_PER_QUERY = 8  # parts fetched per query while filling a read (each up to 1000 events)


@dataclass(frozen=True)
class FeedEvent:
    """One stored reading or rejection.

    ``at`` is when the reading was measured, or when the rejected record was received.
    ``data`` holds the rest of the stored event: ``{"row": {...}, "time": column}`` for a
    reading (its declared series, values and time columns in that order, times RFC 3339,
    and the time column's name); for a rejection
    ``reason``, ``detail``, ``topic``, ``partition``, ``offset``, ``received_at``.
    Every string in it came from an agent or an attacker: escape it before display.
    """

    id: str
    kind: str  # "reading" | "rejection"
    plugin: str | None
    table: str | None
    agent_id: str | None
    at: datetime
    data: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The event as one JSON object (``at`` RFC 3339)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "plugin": self.plugin,
            "table": self.table,
            "agent_id": self.agent_id,
            "at": rfc3339(self.at),
            "data": self.data,
        }


@dataclass(frozen=True)
class EventFilter:
    """Which events a reader wants (``/stream``'s client, ``tail``); empty: every one."""

    plugins: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()

    def __call__(self, event: FeedEvent) -> bool:
        return (
            (not self.plugins or event.plugin in self.plugins)
            and (not self.agents or event.agent_id in self.agents)
            and (not self.kinds or event.kind in self.kinds)
        )


def format_event_id(commit_seq: int, part: int, index: int) -> str:
    """``COMMITSEQ-PART-N``."""
    return f"{commit_seq}-{part}-{index}"


def parse_event_id(event_id: object) -> tuple[int, int, int]:
    """(commit_seq, part, index) of an id; ``ValueError`` (one line) for anything else."""
    if not isinstance(event_id, str) or len(event_id) > 40:
        raise ValueError("an event id is COMMITSEQ-PART-N, three decimal numbers such as 12-0-3")
    match = _ID_RE.fullmatch(event_id)
    if match is None:
        raise ValueError(
            f"{event_id!r} is not an event id: COMMITSEQ-PART-N, three decimal numbers "
            "such as 12-0-3"
        )
    seq, part, index = (int(g) for g in match.groups())
    if seq > _MAX_SEQ or part > _MAX_PART or index > _MAX_PART:
        raise ValueError(f"{event_id!r} is not an event id: a number is out of range")
    return seq, part, index


class FeedReader:
    """Reads the feed on ``engine``; safe to share between threads (each call is its own
    transaction)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def head(self) -> str:
        """The id of the newest event, or ``START`` when the feed is empty."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(_FEED.c.commit_seq, _FEED.c.part, _FEED.c.events)
                .order_by(_FEED.c.commit_seq.desc(), _FEED.c.part.desc())
                .limit(1)
            ).first()
        if row is None:
            return START
        events = _events(row.events, row.commit_seq, row.part)
        return format_event_id(row.commit_seq, row.part, max(len(events) - 1, 0))

    def read_after(self, event_id: str, limit: int = 1000) -> list[FeedEvent]:
        """Up to ``limit`` events strictly after ``event_id``, in commit order.

        ``ValueError`` (one line) if ``event_id`` is not an id or ``limit`` not positive.
        """
        seq, part, index = parse_event_id(event_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer, not {limit!r}")
        found: list[FeedEvent] = []
        c = _FEED.c
        with self.engine.connect() as conn:  # one transaction: one consistent snapshot
            while len(found) < limit:
                rows = conn.execute(
                    select(c.commit_seq, c.part, c.committed_at, c.events)
                    .where(or_(c.commit_seq > seq, and_(c.commit_seq == seq, c.part >= part)))
                    .order_by(c.commit_seq, c.part)
                    .limit(_ROWS_PER_QUERY)
                ).all()
                for row in rows:
                    events = _events(row.events, row.commit_seq, row.part)
                    start = index + 1 if (row.commit_seq, row.part) == (seq, part) else 0
                    for i in range(start, len(events)):
                        event = _event(row.commit_seq, row.part, i, events[i], row.committed_at)
                        if event is not None:
                            found.append(event)
                            if len(found) == limit:
                                return found
                if len(rows) < _ROWS_PER_QUERY:
                    break
                last = rows[-1]
                seq, part, index = last.commit_seq, last.part + 1, -1
        return found


@dataclass(frozen=True)
class _Group:
    """A stored group, checked once for all its rows (read_tables.Group)."""

    kind: str | None  # None: not a group the processor writes, its rows are skipped
    plugin: str | None
    table: str | None
    time: str | None
    columns: tuple[str, ...]
    rows: list[Any]
    agents: list[Any] | None


def _events(text: Any, seq: int, part: int) -> list[tuple[_Group, int]]:
    """A part's events as (group, row index), in order; [] (logged) if the row does not
    hold a JSON array. A group's rows count as events even where the group is not valid
    (then each is skipped when read), so that ids do not depend on what is skipped."""
    try:
        groups = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        groups = None
    if not isinstance(groups, list):
        log.warning("sparklem_feed %d part %d is not a JSON array: skipped", seq, part)
        return []
    events: list[tuple[_Group, int]] = []
    for raw in groups:
        group = _group(raw)
        events.extend((group, i) for i in range(len(group.rows)))
    return events


_NOT_A_GROUP = _Group(None, None, None, None, (), [], None)


def _group(raw: Any) -> _Group:
    if not isinstance(raw, dict) or not isinstance(rows := raw.get("rows"), list):
        return _NOT_A_GROUP
    columns = raw.get("columns")
    kind = raw.get("kind")
    if (
        kind not in KINDS
        or not isinstance(columns, list)
        or not all(isinstance(c, str) for c in columns)
        or len(set(columns)) != len(columns)
    ):
        return _Group(None, None, None, None, (), rows, None)
    agents = raw.get("agents")
    return _Group(
        kind,
        _text(raw.get("plugin")),
        _text(raw.get("table")) if kind == "reading" else None,
        _text(raw.get("time")),
        tuple(columns),
        rows,
        agents if isinstance(agents, list) and len(agents) == len(rows) else None,
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _event(
    seq: int, part: int, index: int, stored: tuple[_Group, int], committed_at: datetime
) -> FeedEvent | None:
    """The event as stored, checked; None (logged) if it is not an event."""
    event_id = format_event_id(seq, part, index)
    group, i = stored
    values = group.rows[i]
    if group.kind is None or not isinstance(values, list) or len(values) != len(group.columns):
        log.warning("feed event %s is not a reading or rejection: skipped", event_id)
        return None
    row = dict(zip(group.columns, values, strict=True))
    if group.kind == "reading":
        agent_id = group.agents[i] if group.agents is not None else row.get("agent_id")
        data: dict[str, Any] = {"row": row, "time": group.time}
        at = _time(row.get(group.time) if group.time is not None else None, committed_at)
        plugin = group.plugin
    else:
        data = {k: row.get(k) for k in REJECTION_COLUMNS[2:]}
        at = _time(row.get("received_at"), committed_at)
        plugin, agent_id = _text(row.get("plugin")), row.get("agent_id")
    return FeedEvent(
        id=event_id,
        kind=group.kind,
        plugin=plugin,
        table=group.table,
        agent_id=_text(agent_id),
        at=at,
        data=data,
    )


def _time(text: Any, fallback: datetime) -> datetime:
    if isinstance(text, str) and len(text) <= 40:
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            value = None
        if value is not None and value.tzinfo is not None:
            return value.astimezone(UTC)
    return fallback if fallback.tzinfo else fallback.replace(tzinfo=UTC)
