"""Redrive: quarantined records through today's pipeline, after a fix.

After a plugin fix, a settings change or the enrollment of an agent that was unknown,
each quarantined record (a ``rejected_records`` row and its ``rejected_messages`` rows)
is judged again by :meth:`~sparklem_core.processor.pipeline.Pipeline.judge`, every
check included (signature, revocation, server key, plugin, text), and stored by
:meth:`~sparklem_core.db.store.Store.commit`, one transaction per record (or per
group of records, each atomic):

* stored: its rows are written and its quarantine rows deleted; ``sparklem_redriven``
  keeps one row per (agent, plugin, seq, part), which makes redrive idempotent even
  below the stream's mark, where the consumer's seq rule would call it a duplicate;
* still refused: its rejection rows are replaced by today's (reason and detail), with
  the time the record was first received;
* a refused reading of a stored message (``invalid_reading``) is redriven alone: the
  message is cut down to that reading, and only if its plugin makes no row of the
  message without it (else its siblings would be stored twice);
* bytes cut when quarantined (never authenticated, over ``rejected_raw_max_bytes``) are
  skipped and named.

Another redrive or a processor committing at the same time makes a transaction fail
with :class:`~sparklem_core.db.store.Conflict`; the record is then judged again
from what the database holds, as :class:`~sparklem_core.processor.writer.BatchWriter`
does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, select, true

from sparklem_core import wire
from sparklem_core.db.batch import (
    WHOLE_MESSAGE,
    Batch,
    Redriven,
    Rejection,
    StreamKey,
    StreamMark,
)
from sparklem_core.db.errors import Verdict, classify, first_line
from sparklem_core.db.store import Conflict, Store
from sparklem_core.plugin_api import Message
from sparklem_core.processor.pipeline import Narrow, Pipeline, Record, Stats
from sparklem_core.processor.writer import (
    MAX_CONFLICTS,
    Unavailable,
    commit_refusal,
    refused_rows,
)

log = logging.getLogger(__name__)

Key = tuple[str, str, int, str]  # sparklem_redriven's: agent_id, plugin, seq, part
PAGE = 200  # rejected_messages rows read per query
GROUP = 50  # records per transaction; one by one when a group cannot commit


@dataclass(frozen=True)
class Selection:
    """Which quarantined records to redrive; empty fields select everything."""

    reasons: tuple[str, ...] = ()
    plugin: str | None = None
    agent: str | None = None
    since: datetime | None = None  # received at or after


@dataclass
class Summary:
    """What a redrive did (or, dry, would do)."""

    records: int = 0  # quarantined records judged
    stored: int = 0  # messages and single readings stored
    rows: int = 0
    already: int = 0  # stored by an earlier redrive: only left the quarantine
    rejected: Counter[str] = field(default_factory=Counter)  # still refused, by new reason
    cut: list[str] = field(default_factory=list)  # topic[partition]@offset, not redrivable
    no_bytes: int = 0  # rejections without a rejected_records row (from before 0002)

    def line(self) -> str:
        rejected = ", ".join(f"{r}={n}" for r, n in sorted(self.rejected.items())) or "none"
        return (
            f"{self.records} records: stored={self.stored} (rows={self.rows}) "
            f"already_redriven={self.already} still_rejected={sum(self.rejected.values())} "
            f"({rejected}) truncated={len(self.cut)} without_bytes={self.no_bytes}"
        )


@dataclass(frozen=True)
class _Rejection:
    id: int
    reason: str
    raw: str | None
    seq: int | None
    sent_at: datetime | None


@dataclass(frozen=True)
class _Quarantined:
    """One rejected record and its rejections that the selection takes up."""

    record_id: int
    record: Record
    received_at: datetime
    cut: bool  # its bytes are not all there
    selected: tuple[_Rejection, ...]
    total: int  # its rejections, selected or not
    readings: bool  # its message was stored: what it holds are refused readings

    @property
    def name(self) -> str:
        return f"{self.record.topic}[{self.record.partition}]@{self.record.offset}"


class Redrive:
    """Quarantined records judged by ``pipeline`` (today's plugins, settings and agents)
    and written with ``store``, the processor's own."""

    def __init__(
        self,
        pipeline: Pipeline,
        store: Store,
        progress: Callable[[Summary], None] = lambda _s: None,
        progress_every: int = 1000,
        progress_s: float = 10.0,
    ) -> None:
        """``progress(summary)`` is called every ``progress_every`` records or seconds."""
        self.pipeline = pipeline
        self.store = store
        self.progress = progress
        self.progress_every = progress_every
        self.progress_s = progress_s

    def run(self, selection: Selection = Selection(), *, dry_run: bool = False) -> Summary:
        """Redrive every selected record quarantined before now; :class:`Unavailable`
        if the database fails (what was committed stays: run it again to go on)."""
        summary = Summary()
        claimed: set[Key] = set()  # stored in this run
        group: list[_Judged] = []
        next_line = time.monotonic() + self.progress_s
        for done, position in enumerate(self._positions(selection), 1):
            judged = self._take(position, selection, summary, claimed)
            if judged is not None:
                group.append(judged)
                claimed.update(batch_keys(judged.batch))  # until the group commits: tentative
            if len(group) >= GROUP:
                self._store(group, selection, summary, claimed, dry_run)
                group = []
            if done % self.progress_every == 0 or time.monotonic() >= next_line:
                self.progress(summary)
                next_line = time.monotonic() + self.progress_s
        self._store(group, selection, summary, claimed, dry_run)
        return summary

    # --- reading the quarantine ----------------------------------------------------

    def _where(self, selection: Selection) -> list[ColumnElement[bool]]:
        c = self.store.rejected.c
        where = []
        if selection.reasons:
            where.append(c.reason.in_(selection.reasons))
        if selection.plugin is not None:
            where.append(c.plugin == selection.plugin)
        if selection.agent is not None:
            where.append(c.agent_id == selection.agent)
        if selection.since is not None:
            where.append(c.received_at >= selection.since)
        return where

    def _positions(self, selection: Selection) -> Iterator[tuple[Any, ...]]:
        """Each selected record once, as (topic, partition, offset, received_at).

        Only rows there when the run began: those redrive writes come later.
        """
        c = self.store.rejected.c
        with self.store.engine.connect() as conn:
            last = conn.execute(select(c.id).order_by(c.id.desc()).limit(1)).scalar()
        if last is None:
            return
        # A record's rows are written together, so their ids follow each other: the last
        # page is all the memory needed to yield each record once.
        seen: set[tuple[Any, ...]] = set()
        after = -1
        while True:
            query = (
                select(c.id, c.topic, c.partition, c.offset, c.received_at)
                .where(c.id > after, c.id <= last, *self._where(selection))
                .order_by(c.id)
                .limit(PAGE)
            )
            with self.store.engine.connect() as conn:
                page = conn.execute(query).all()
            if not page:
                return
            after = page[-1][0]
            keys = [tuple(position) for _id, *position in page]
            for key in dict.fromkeys(keys):
                if key not in seen:
                    yield key
            seen = set(keys)

    def _load(
        self, conn: Connection, position: tuple[Any, ...], selection: Selection
    ) -> _Quarantined | list[_Rejection]:
        """The record at ``position`` with its rejections, or its rejections alone."""
        topic, partition, offset, received_at = position
        m, r = self.store.rejected.c, self.store.records.c
        at = [m.topic == topic, m.partition == partition, m.offset == offset]
        rows = conn.execute(
            select(m.id, m.reason, m.raw, m.seq, m.sent_at)
            .add_columns(and_(true(), *self._where(selection)).label("chosen"))
            .where(*at, m.received_at == received_at)
            .order_by(m.id)
        ).all()
        found = conn.execute(
            select(r.id, r.value, r.size, r.truncated)
            .where(r.topic == topic, r.partition == partition, r.offset == offset)
            .where(r.received_at == received_at)
            .order_by(r.id)
            .limit(1)
        ).first()
        selected = tuple(_Rejection(*row[:5]) for row in rows if row.chosen)
        if found is None:
            return list(selected)
        record_id, value, size, truncated = found
        whole = isinstance(value, bytes) and not truncated and size == len(value)
        return _Quarantined(
            record_id,
            Record(topic, partition, offset, value if whole else None),
            _utc(received_at),
            not whole,
            selected,
            len(rows),
            any(row.reason == wire.INVALID_READING for row in rows),
        )

    # --- one record ----------------------------------------------------------------

    def _take(
        self,
        position: tuple[Any, ...],
        selection: Selection,
        summary: Summary,
        claimed: set[Key],
    ) -> _Judged | None:
        """The record at ``position`` judged, or None when there is nothing to write."""
        with self.store.engine.connect() as conn:  # one for every read of the record
            return self._judged(conn, position, selection, summary, claimed)

    def _judged(
        self,
        conn: Connection,
        position: tuple[Any, ...],
        selection: Selection,
        summary: Summary,
        claimed: set[Key],
    ) -> _Judged | None:
        """:meth:`_take`, on ``conn``: skipped records are counted in ``summary``."""
        unit = self._load(conn, position, selection)
        if isinstance(unit, list):
            summary.no_bytes += len(unit)
            return None
        if not unit.selected:
            return None  # taken up by another redrive meanwhile
        if unit.cut:
            summary.records += 1
            summary.cut.append(unit.name)
            return None
        released = (
            tuple(r for r in unit.selected if r.reason == wire.INVALID_READING)
            if unit.readings
            else unit.selected
        )
        if not released:
            return None  # nothing of it this redrive can take up
        batch, outcome = self._judge(unit, released, _Known(self.store, conn, claimed))
        return _Judged(position, unit, released, batch, outcome)

    def _store(
        self,
        group: list[_Judged],
        selection: Selection,
        summary: Summary,
        claimed: set[Key],
        dry_run: bool,
    ) -> None:
        """Commit ``group`` in one transaction; else each record in its own, judged again."""
        if not group:
            return
        try:
            if not dry_run:
                self.store.commit(_merged([judged.batch for judged in group]))
        except Exception as exc:
            if not isinstance(exc, Conflict) and _transient(exc, self.store):
                raise Unavailable(first_line(exc)) from exc
            for judged in group:
                claimed.difference_update(batch_keys(judged.batch))
            for judged in group:
                self._one(judged.position, selection, summary, claimed)
            return
        for judged in group:
            judged.count(summary)

    def _one(
        self,
        position: tuple[Any, ...],
        selection: Selection,
        summary: Summary,
        claimed: set[Key],
    ) -> None:
        """One record in its own transaction, judged again after each conflict."""
        for _ in range(MAX_CONFLICTS):
            judged = self._take(position, selection, summary, claimed)
            if judged is None:
                return
            try:
                judged = self._commit(judged)
            except Conflict as exc:
                log.info(
                    "%s: changed by another process (%s); judging it again", judged.unit.name, exc
                )
                continue
            judged.count(summary)
            claimed.update(batch_keys(judged.batch))
            return
        raise Unavailable(f"{MAX_CONFLICTS} conflicts in a row on one record")

    def _judge(
        self,
        unit: _Quarantined,
        released: tuple[_Rejection, ...],
        known: _Known,
    ) -> tuple[Batch, Stats]:
        """Today's verdict on ``unit``: what to write in place of ``released``."""
        batch, outcome = Batch(), Stats(Counter([unit.record.topic]))
        envelope = self.pipeline.envelope(unit.record)
        if unit.readings:
            for rejection, part in zip(released, _parts(released), strict=True):
                narrow = _narrow_to(self.pipeline, rejection.raw, part.occurrence)
                before = len(batch.rejected)
                self._judge_part(unit, envelope, batch, outcome, known, part.key, narrow)
                batch.rejected[before:] = [
                    _still_a_reading(r, rejection) for r in batch.rejected[before:]
                ]
        else:
            self._judge_part(unit, envelope, batch, outcome, known, WHOLE_MESSAGE, None)
        _finish(batch, unit, released)
        for activity in batch.agents.values():  # its rejections were counted when made
            activity.rejections, activity.last_rejection, activity.last_rejection_at = 0, None, None
        return batch, outcome

    def _judge_part(
        self,
        unit: _Quarantined,
        envelope: wire.Envelope | wire.Rejected,
        batch: Batch,
        outcome: Stats,
        known: _Known,
        part: str,
        narrow: Narrow | None,
    ) -> None:
        read: list[tuple[Key, wire.Plaintext]] = []

        def admit(env: wire.Envelope, plain: wire.Plaintext) -> bool:
            key = (env.agent, env.plugin, plain.seq, part)
            read.append((key, plain))
            return not known.stored(key)

        stored, rows = outcome.stored, outcome.rows
        self.pipeline.judge(unit.record, envelope, batch, outcome, unit.received_at, admit, narrow)
        if outcome.stored == stored:
            return
        if part != WHOLE_MESSAGE and outcome.rows == rows:  # the reading refused again
            outcome.stored_by_plugin[read[0][0][1]] -= 1  # key: (agent, plugin, seq, part)
            return
        (key, plain), record = read[0], unit.record
        batch.redriven.append(
            Redriven(*key, record.topic, record.partition, record.offset, datetime.now(UTC))
        )
        stream = StreamKey(key[0], key[1])
        mark = known.mark(stream)
        if mark is None or plain.seq > mark:  # the consumer must call a resend a duplicate
            batch.streams[stream] = StreamMark(mark, plain.seq)

    def _commit(self, judged: _Judged) -> _Judged:
        """Write ``judged``; if the database refuses its rows, quarantine the record (or
        its readings) with that reason instead. Returns what was written."""
        try:
            self.store.commit(judged.batch)
            return judged
        except Conflict:
            raise
        except Exception as exc:
            if _transient(exc, self.store):
                raise Unavailable(first_line(exc)) from exc
            reason = first_line(exc)
        unit = judged.unit
        log.warning("%s: the database refused its rows (%s)", unit.name, reason)
        refused, outcome = self.pipeline.refuse(unit.record, judged.batch, refused_rows(reason))
        batch = Batch(rejected=refused.rejected)
        if unit.readings:
            (template,) = refused.rejected
            batch.rejected = [_still_a_reading(template, r) for r in judged.released]
        _finish(batch, unit, judged.released)
        commit_refusal(self.store, batch)
        return replace(judged, batch=batch, outcome=outcome)


def _finish(batch: Batch, unit: _Quarantined, released: tuple[_Rejection, ...]) -> None:
    """``batch`` takes ``released`` out of the quarantine, and the record when nothing of
    it stays; what stays keeps the time it was received."""
    batch.rejected = [replace(r, received_at=unit.received_at) for r in batch.rejected]
    batch.records.clear()  # the record's row stays as it is, or goes
    batch.released_messages = [r.id for r in released]
    if not batch.rejected and unit.total == len(released):
        batch.released_records = [unit.record_id]


@dataclass(frozen=True)
class _Known:
    """What is stored already: by this run (``claimed``), or in the database."""

    store: Store
    conn: Connection
    claimed: set[Key]

    def stored(self, key: Key) -> bool:
        if key in self.claimed:
            return True
        t = self.store.redriven.c
        agent, plugin, seq, part = key
        query = select(t.seq).where(
            t.agent_id == agent, t.plugin == plugin, t.seq == seq, t.part == part
        )
        return self.conn.execute(query).first() is not None

    def mark(self, stream: StreamKey) -> int | None:
        """The stream's highest stored ``seq``, None if it has none."""
        t = self.store.streams.c
        query = select(t.last_seq).where(t.agent_id == stream.agent_id, t.plugin == stream.plugin)
        return self.conn.execute(query).scalar()


@dataclass(frozen=True)
class _Judged:
    """A record and what redrive makes of it, before it is committed."""

    position: tuple[Any, ...]
    unit: _Quarantined
    released: tuple[_Rejection, ...]  # its rejections this redrive takes up
    batch: Batch
    outcome: Stats

    def count(self, summary: Summary) -> None:
        summary.records += 1
        summary.stored += self.outcome.stored
        summary.rows += self.outcome.rows
        summary.already += self.outcome.duplicates
        summary.rejected.update(self.outcome.rejected)


def _merged(batches: list[Batch]) -> Batch:
    """Several records' batches as one transaction's."""
    total = Batch()
    for batch in batches:
        total.merge(batch)
    return total


def _transient(exc: BaseException, store: Store) -> bool:
    return classify(exc, store.probe) is Verdict.TRANSIENT


def _still_a_reading(row: Rejection, rejection: _Rejection) -> Rejection:
    """Keep a refused reading a reading, whatever refuses it now: its message was stored,
    and only the reading as sent (``raw``) can be redriven later, alone."""
    detail = row.detail
    if row.reason != wire.INVALID_READING:
        detail = f"{row.reason}: {row.detail}"[:1000]
    return replace(
        row,
        reason=wire.INVALID_READING,
        detail=detail,
        raw=rejection.raw,
        seq=rejection.seq if row.seq is None else row.seq,
        sent_at=rejection.sent_at if row.sent_at is None else row.sent_at,
    )


def batch_keys(batch: Batch) -> list[Key]:
    """The (agent, plugin, seq, part) keys a batch marks as redriven."""
    return [(r.agent_id, r.plugin, r.seq, r.part) for r in batch.redriven]


# --- a single refused reading ------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    key: str  # sparklem_redriven.part
    occurrence: int  # among equal readings refused in the same message


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _parts(refused: list[_Rejection]) -> list[_Part]:
    """Each refused reading's key: a digest of the reading as sent and its occurrence."""
    parts, seen = [], Counter[str]()
    for rejection in refused:
        raw = rejection.raw or ""
        occurrence = seen[raw]
        seen[raw] += 1
        digest = hashlib.sha256(f"{occurrence}:{raw}".encode("utf-8", "replace")).hexdigest()
        parts.append(_Part(digest, occurrence))
    return parts


def _narrow_to(pipeline: Pipeline, raw: str | None, occurrence: int) -> Narrow:
    """The message cut down to one refused reading, or Rejected saying why it cannot be."""

    def narrow(message: Message) -> Message:
        try:
            reading = _canonical(json.loads(raw or ""))
        except (ValueError, RecursionError):
            raise _alone("its reading was cut or is not JSON in rejected_messages.raw") from None
        found = _prune(message.data, reading, occurrence)
        if found is None:
            raise _alone("the reading is not an item of a list in its message")
        with_it, without = found
        info = pipeline.plugins[message.plugin]
        settings = pipeline.plugin_settings[message.plugin]
        try:
            others = pipeline.host.process(info, replace(message, data=without), settings)
        except ValueError:  # the message without its reading is no payload: nothing else
            others = None
        if others is not None and any(others.rows.values()):
            raise _alone("its plugin makes rows of this message without this reading")
        return replace(message, data=with_it)

    return narrow


def _alone(why: str) -> wire.Rejected:
    return wire.Rejected(wire.INVALID_READING, f"cannot be redriven alone: {why}")


def _prune(data: dict[str, Any], reading: str, occurrence: int) -> tuple[Any, Any] | None:
    """``data`` with every list emptied but the one holding the reading, which holds it
    alone; and the same without it. None if the reading is no list item of ``data``."""
    count = 0

    def walk(value: Any) -> tuple[Any, Any] | None:
        """(with the reading, without it) if found below ``value``, else None."""
        nonlocal count
        if isinstance(value, dict):
            for name, member in value.items():
                found = walk(member)
                if found is not None:
                    kept = {k: _emptied(v) for k, v in value.items() if k != name}
                    return {**kept, name: found[0]}, {**kept, name: found[1]}
        elif isinstance(value, list):
            for item in value:
                if _canonical(item) == reading:
                    if count == occurrence:
                        return [item], []
                    count += 1
                found = walk(item)
                if found is not None:
                    return [found[0]], [found[1]]
        return None

    return walk(data)


def _emptied(value: Any) -> Any:
    """``value`` with every list in it empty: lists hold readings, which are siblings."""
    if isinstance(value, list):
        return []
    if isinstance(value, dict):
        return {k: _emptied(v) for k, v in value.items()}
    return value


def _utc(value: datetime) -> datetime:
    """SQLite and MariaDB hand stored times back without their zone: UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
