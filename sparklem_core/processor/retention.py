"""Retention: deleting rows older than ``retention:`` allows, a little at a time.

What "older" means, per kind of table:

* ``rejected_messages`` and ``rejected_records``: by ``received_at``, when the processor
  stored the row (arrival), on its index; the feed (``sparklem_feed``) likewise by
  ``committed_at``, keyed by ``commit_seq``.
* ``sparklem_redriven``: by ``redriven_at``, when redrive stored the message, on its index.
  Its key is not an integer id: batches are ranges of that time instead.
* A plugin table: by its declared time column (when the reading was measured), and only
  once the row has also been *stored* longer than the retention. Plugin tables have no
  arrival column, so arrival is known from their integer id: each pass records the
  table's highest id (``sparklem_arrival_marks``, at most one mark per 1/100 of the
  retention), and a row is old enough only if its id is at or below the newest mark
  recorded at least the retention ago. A spooled backlog measured 40 days ago that arrives
  today with ``30d`` is therefore kept 30 more days, not deleted on arrival. Rows stored
  before retention was first set for a table count as arriving at the first pass.

The pruner deletes an id range per transaction, found by keyset on the primary key up to
the newest old row (found on the time index for the rejection tables, from the marks for
plugin tables). A table's batches start at 100 rows and double while a batch takes under
half of ``prune_batch_s``, up to ``prune_batch_rows``; one that takes longer cuts the next
in proportion (a row of the quarantine may hold a whole 1 MiB record, a reading some 50
bytes: no one count suits both). Between batches it rests so that
it takes at most ``prune_busy_fraction`` of the database's time: it rests
``1/fraction - 1`` times as long as it held the batch's transaction open (never counting
its wait to begin it). On SQLite each batch is the only time it holds the writer lock, and
it takes its turn at that lock with the process's other writers (``Store.write``): a
never-idle ingestion loop in the same process cannot starve it, nor does it get more.
Among processors sharing a database one prunes at a time: it holds a lease
(``sparklem_leases``), renewed in every batch's own transaction, and taken over once it
expires. Each batch commits whole or not at all, so a pass stopped by SIGTERM or a crash
leaves no partial state; the next pass carries on.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    Table,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from sparklem_core.db.store import Store
from sparklem_core.settings.config import ConfigError, ProcessorSettings, format_duration

log = logging.getLogger(__name__)

#: The core tables that may be bounded, all pruned by arrival: (time column, key column),
#: the key rising with arrival (keyset batches walk it; None: batches are time ranges).
ARRIVAL_TABLES: dict[str, tuple[str, str | None]] = {
    "rejected_messages": ("received_at", "id"),
    "rejected_records": ("received_at", "id"),
    "sparklem_feed": ("committed_at", "commit_seq"),  # a commit's parts go together
    "sparklem_redriven": ("redriven_at", None),
}
LEASE_NAME = "prune"
#: Arrival marks are this fine a fraction of the retention.
MARKS_PER_RETENTION = 100
#: A table's first batch: how long its rows take to delete is not known before.
FIRST_BATCH_ROWS = 100


@dataclass(frozen=True)
class Target:
    """One bounded table and how its old rows are found."""

    table: Table
    keep: timedelta
    time: str  # the time column compared with the cutoff
    by_arrival: bool  # time is the arrival time itself (else arrival comes from the id marks)
    key: str | None = "id"  # the integer column that rises with arrival; None: none

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def id(self) -> Column[Any]:
        return self.table.c[self.key]

    @property
    def has_id(self) -> bool:
        """Whether a key rises with arrival (batches are its ranges, else time ranges)."""
        return self.key is not None


@dataclass(frozen=True)
class TablePruned:
    """What a pass did (or, dry, would do) to one table."""

    table: str
    keep: timedelta
    rows: int  # deleted, or that would be
    waiting: bool = False  # a plugin table with no arrival mark old enough yet
    finished: bool = True  # False: stopped (or the lease lost) before the table was done
    batches: int = 0  # transactions that deleted them


class BatchSize:
    """Rows in a table's next batch: doubled while batches take under half of
    ``target_s``, cut in proportion to the overrun when one takes longer; 1 to ``most``."""

    def __init__(self, most: int, target_s: float) -> None:
        self.most = most
        self.target_s = target_s
        self.rows = min(FIRST_BATCH_ROWS, most)

    def took(self, held_s: float) -> None:
        """Size the next batch after one that held its transaction ``held_s`` seconds."""
        if held_s > self.target_s:
            self.rows = max(1, int(self.rows * self.target_s / held_s))
        elif held_s < self.target_s / 2:
            self.rows = min(self.most, self.rows * 2)


@dataclass(frozen=True)
class PassReport:
    """One pass over every bounded table; ``ran`` is False when another pruner held the lease."""

    ran: bool
    tables: tuple[TablePruned, ...] = ()


class LeaseLost(Exception):
    """Another pruner took the lease over (ours expired): stop at once."""


def targets(store: Store, retention: Mapping[str, timedelta]) -> list[Target]:
    """The bounded tables, checked; :class:`ConfigError` naming ``retention.TABLE``.

    Run after the plugins registered their tables (a plugin table is known only then).
    """
    found: list[Target] = []
    for name, keep in sorted(retention.items()):
        declared = store.plugin_tables.get(name)
        if name in ARRIVAL_TABLES:
            time_column, key = ARRIVAL_TABLES[name]
            found.append(Target(store.metadata.tables[name], keep, time_column, True, key))
        elif declared is not None:
            key = list(declared.table.primary_key.columns)
            if len(key) != 1 or not isinstance(key[0].type, Integer):
                raise ConfigError(
                    f"retention.{name}: plugin {declared.owner}'s table has no integer id "
                    "primary key, which pruning needs to tell late arrivals; remove the key"
                )
            found.append(Target(declared.table, keep, declared.time, False, key[0].name))
        else:
            choices = ", ".join([*ARRIVAL_TABLES, *sorted(store.plugin_tables)])
            raise ConfigError(
                f"retention.{name}: no such core or plugin table can be pruned "
                f"(these can: {choices}); remove or rename the key"
            )
    redriven = retention.get("sparklem_redriven")
    for quarantine in ("rejected_messages", "rejected_records"):
        kept = retention.get(quarantine)  # None: forever
        if redriven is not None and (kept is None or kept > redriven):
            log.warning(
                "retention.sparklem_redriven (%s) is shorter than retention.%s (%s): a "
                "quarantined copy of a message redriven that long ago would be stored again "
                "by the next redrive; make it at least as long, or 0",
                format_duration(redriven),
                quarantine,
                "forever" if kept is None else format_duration(kept),
            )
    return found


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time stored here is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Pruner:
    """Deletes what ``retention`` no longer keeps, in small batches, one pruner at a time."""

    def __init__(
        self,
        store: Store,
        targets: list[Target],
        settings: ProcessorSettings,
        stop: threading.Event | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``clock`` gives the current UTC time (tests make days pass with it)."""
        self.clock = clock
        self.store = store
        self.targets = targets
        self.settings = settings
        self.stop = stop or threading.Event()
        self.holder = f"{socket.gethostname()[:150]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.deleted = 0  # rows this pruner has deleted so far, all passes (for progress)
        self._leases = store.metadata.tables["sparklem_leases"]
        self._marks = store.metadata.tables["sparklem_arrival_marks"]

    # --- one pass --------------------------------------------------------------------

    def run_pass(self, *, dry_run: bool = False) -> PassReport:
        """Prune every bounded table once; dry: count what would go and change nothing."""
        if dry_run:
            return PassReport(True, tuple(self._count(t) for t in self.targets))
        if not self._take_lease():
            log.debug("another pruner holds the lease: skipping this pass")
            return PassReport(False)
        done: list[TablePruned] = []
        try:
            for target in self.targets:
                result = self._prune(target)
                done.append(result)
                if not result.finished:
                    break
        except LeaseLost:
            log.warning("the pruner's lease was taken over by another processor; stopping")
        finally:
            self._release_lease()
        return PassReport(True, tuple(done))

    def _cutoff(self, target: Target) -> datetime:
        return self.clock() - target.keep

    def _old(self, target: Target, cutoff: datetime, max_id: int | None) -> list[Any]:
        """The WHERE clause of the rows ``target`` no longer keeps."""
        where = [target.table.c[target.time] < cutoff]
        if max_id is not None:
            where.append(target.id <= max_id)
        return where

    def _count(self, target: Target) -> TablePruned:
        cutoff = self._cutoff(target)
        with self.store.read_engine.connect() as conn:
            max_id = None if target.by_arrival else self._arrived_by(conn, target, cutoff)
            if not target.by_arrival and max_id is None:
                return TablePruned(target.name, target.keep, 0, waiting=True)
            rows = conn.execute(
                select(func.count()).select_from(target.table)
                .where(*self._old(target, cutoff, max_id))
            ).scalar_one()  # fmt: skip
        return TablePruned(target.name, target.keep, int(rows))

    def _prune(self, target: Target) -> TablePruned:
        cutoff = self._cutoff(target)
        if not target.has_id:
            return self._prune_by_time(target, cutoff)
        with self.store.write() as conn:
            self._renew(conn)
            if target.by_arrival:
                max_id = self._newest_old(conn, target, cutoff)
            else:
                max_id = self._mark(conn, target, cutoff)
        if max_id is None:
            return TablePruned(target.name, target.keep, 0, waiting=not target.by_arrival)
        # Keyset on the id, up to max_id: each batch deletes an id range, found by one
        # short index walk; deleted rows are behind the key, never scanned again.
        after: int | None = None

        def id_range(conn: Connection, rows: int) -> tuple[int, bool]:
            nonlocal after
            span = [] if after is None else [target.id > after]
            where = [*self._old(target, cutoff, max_id), *span]
            bound = conn.execute(
                select(target.id).where(*where).order_by(target.id).offset(rows - 1).limit(1)
            ).scalar()
            if bound is not None:
                # The batch's range alone (bound <= max_id): given max_id too, SQLite
                # may end its rowid scan there, walking every old row in each batch.
                where = [*self._old(target, cutoff, None), *span, target.id <= bound]
            gone = conn.execute(delete(target.table).where(*where)).rowcount
            after = bound
            return gone, bound is None  # None: that was the last, short batch

        return self._in_batches(target, id_range)

    def _prune_by_time(self, target: Target, cutoff: datetime) -> TablePruned:
        """Prune a table without an integer id (arrival tables only): each batch deletes
        the rows up to the time of the N-th oldest, N the batch's size, found on the time
        index (rows of one time, rare at microseconds, go in one batch)."""
        time_column = target.table.c[target.time]

        def time_range(conn: Connection, rows: int) -> tuple[int, bool]:
            bound = conn.execute(
                select(time_column).where(time_column < cutoff)
                .order_by(time_column).offset(rows - 1).limit(1)
            ).scalar()  # fmt: skip
            # bound < cutoff: the one upper end, or SQLite may scan up to the cutoff.
            where = [time_column < cutoff] if bound is None else [time_column <= bound]
            gone = conn.execute(delete(target.table).where(*where)).rowcount
            return gone, bound is None  # None: that was the last, short batch

        return self._in_batches(target, time_range)

    def _in_batches(
        self, target: Target, delete_batch: Callable[[Connection, int], tuple[int, bool]]
    ) -> TablePruned:
        """``delete_batch(conn, rows)`` in a transaction of its own, sized and rested, until
        it says it was the last ((rows deleted, last)) or the pruner is stopped."""
        size = BatchSize(self.settings.prune_batch_rows, self.settings.prune_batch_s)
        deleted = batches = 0
        while True:
            if self.stop.is_set():
                return TablePruned(
                    target.name, target.keep, deleted, finished=False, batches=batches
                )
            with self.store.write(checkpoint=True) as conn:
                # Timed from BEGIN on: the rest is proportional to the time the pruner
                # kept the database (or SQLite's writer lock), not to its wait for it.
                started = time.monotonic()
                self._renew(conn)
                gone, last = delete_batch(conn, size.rows)
            deleted += gone
            batches += 1
            self.deleted += gone
            if last:
                break
            held = time.monotonic() - started
            size.took(held)
            self._rest(held)
        if deleted:
            log.info("pruned %d rows from %s (older than %s)", deleted, target.name, target.keep)
        return TablePruned(target.name, target.keep, deleted, batches=batches)

    @staticmethod
    def _newest_old(conn: Connection, target: Target, cutoff: datetime) -> int | None:
        """The id of the newest row that arrived before ``cutoff``, on the time index.

        Ids follow arrival closely, not exactly (processors commit concurrently): a row
        stored slightly out of order is left to the next pass.
        """
        time_column = target.table.c[target.time]
        return conn.execute(
            select(target.id).where(time_column < cutoff)
            .order_by(time_column.desc(), target.id.desc()).limit(1)
        ).scalar()  # fmt: skip

    def _rest(self, held_s: float) -> None:
        """Leave the database (SQLite: the writer lock too) to ingestion for a while, in
        proportion to ``held_s``, the time the batch's transaction was open."""
        fraction = self.settings.prune_busy_fraction
        self.stop.wait(held_s * (1 / fraction - 1))

    # --- arrival marks -----------------------------------------------------------------

    def _mark(self, conn: Connection, target: Target, cutoff: datetime) -> int | None:
        """Record the table's highest id now (if the last mark is old enough); return the
        newest mark made at or before ``cutoff`` (None: none yet), forgetting older ones."""
        m = self._marks.c
        now = self.clock()
        newest = conn.execute(
            select(func.max(m.marked_at)).where(m.table_name == target.name)
        ).scalar_one()
        step = max(target.keep / MARKS_PER_RETENTION, timedelta(seconds=1))
        if newest is None or _utc(newest) <= now - step:
            top = conn.execute(select(func.max(target.id))).scalar_one()
            conn.execute(
                insert(self._marks).values(table_name=target.name, marked_at=now, max_id=top or 0)
            )
        bound = self._arrived_by(conn, target, cutoff, with_time=True)
        if bound is None:
            return None
        max_id, marked_at = bound
        conn.execute(
            delete(self._marks).where(m.table_name == target.name, m.marked_at < marked_at)
        )
        return int(max_id)

    def _arrived_by(
        self, conn: Connection, target: Target, cutoff: datetime, *, with_time: bool = False
    ) -> Any:
        """The newest mark at or before ``cutoff``: its id (with its time if asked), or None."""
        m = self._marks.c
        row = conn.execute(
            select(m.max_id, m.marked_at)
            .where(m.table_name == target.name, m.marked_at <= cutoff)
            .order_by(m.marked_at.desc())
            .limit(1)
        ).first()
        if row is None:
            return None
        return (row.max_id, row.marked_at) if with_time else int(row.max_id)

    # --- the lease -------------------------------------------------------------------

    def _take_lease(self) -> bool:
        try:
            with self.store.write() as conn:
                if self._renew(conn, strict=False):
                    return True
                exists = conn.execute(
                    select(self._leases.c.name).where(self._leases.c.name == LEASE_NAME)
                ).first()
                if exists:
                    return False
                conn.execute(insert(self._leases).values(
                    name=LEASE_NAME, holder=self.holder, expires_at=self._expiry()
                ))  # fmt: skip
                return True
        except IntegrityError:  # another pruner inserted it first
            return False

    def _expiry(self) -> datetime:
        return self.clock() + timedelta(seconds=self.settings.prune_lease_s)

    def _renew(self, conn: Connection, *, strict: bool = True) -> bool:
        """Extend our lease, or take an expired one; :class:`LeaseLost` if ``strict`` and not."""
        c = self._leases.c
        now = self.clock()
        taken = conn.execute(
            update(self._leases)
            .where(c.name == LEASE_NAME, or_(c.holder == self.holder, c.expires_at < now))
            .values(holder=self.holder, expires_at=self._expiry())
        ).rowcount
        if strict and taken != 1:
            raise LeaseLost
        return taken == 1

    def _release_lease(self) -> None:
        c = self._leases.c
        try:
            with self.store.write() as conn:
                conn.execute(
                    update(self._leases)
                    .where(c.name == LEASE_NAME, c.holder == self.holder)
                    .values(expires_at=self.clock() - timedelta(seconds=1))
                )
        except Exception:  # the database went away: the lease expires by itself
            log.debug("could not release the pruner's lease", exc_info=True)


class BackgroundPruner(threading.Thread):
    """A pass every ``prune_interval_s`` on its own connection, until ``stop`` is set."""

    def __init__(self, pruner: Pruner) -> None:
        super().__init__(name="sparklem-pruner", daemon=True)
        self.pruner = pruner

    def run(self) -> None:
        interval = self.pruner.settings.prune_interval_s
        while not self.pruner.stop.wait(interval):
            try:
                self.pruner.run_pass()
            except Exception as exc:  # the database is down: the next pass tries again
                log.warning("pruning failed, retrying in %.0f s: %s", interval, exc)
