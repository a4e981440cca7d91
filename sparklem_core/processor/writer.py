"""Storing consumed records: one transaction per batch, record by record when refused.

The step between the pipeline (records → :class:`~sparklem_core.db.store.Batch`) and
the Kafka offset commit, without Kafka: the consumer loop, the fuzz tests and the
benchmarks all store through :class:`BatchWriter`.

What can happen to a batch:

* it commits: its marks are adopted and its offsets may be committed to Kafka;
* another processor moved a mark first (:class:`~sparklem_core.db.store.Conflict`): the
  batch is processed again from fresh marks;
* the database is unavailable (:mod:`~sparklem_core.db.errors` says so): nothing is
  stored and :class:`Unavailable` asks the caller to retry the same records later;
* the database refuses the data: the batch is stored record by record, and a record
  whose own rows are refused becomes an ``invalid_payload`` rejection.

Whatever the records hold, the result is rows or rejections, or :class:`Unavailable`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import SQLAlchemyError

from sparklem_core.db.batch import Batch
from sparklem_core.db.errors import Verdict, classify, first_line
from sparklem_core.db.store import Conflict, Store
from sparklem_core.processor.pipeline import Pipeline, Record, Stats

log = logging.getLogger(__name__)

TopicId = Callable[[str, bool], "str | None"]
MAX_CONFLICTS = 10


class Unavailable(Exception):
    """The database cannot store the batch now; retry the same records later."""


class Interrupted(Exception):
    """A stop was requested while storing record by record; the rest were not stored."""


class BatchWriter:
    def __init__(
        self,
        pipeline: Pipeline,
        store: Store,
        stopping: Callable[[], bool] = lambda: False,
        committed: Callable[[float], None] = lambda _seconds: None,
    ) -> None:
        """``stopping()`` is asked between records when a batch is stored one by one;
        ``committed(seconds)`` is told how long each transaction that committed took."""
        self.pipeline = pipeline
        self.store = store
        self.stopping = stopping
        self.committed = committed

    def write(
        self, records: Sequence[Record], topic_id: TopicId = lambda _t, _f: None
    ) -> tuple[Batch, Stats]:
        """Store ``records``; returns what was committed.

        Raises :class:`Unavailable` (nothing stored) or :class:`Interrupted`.
        """
        for _ in range(MAX_CONFLICTS):
            batch, stats = self._process(records, topic_id)
            try:
                try:
                    started = time.perf_counter()
                    self.store.commit(batch)
                    self.committed(time.perf_counter() - started)
                except Conflict:
                    raise
                except Exception as exc:
                    if self._verdict(exc) is Verdict.TRANSIENT:
                        raise Unavailable(first_line(exc)) from exc
                    if len(records) > 1:
                        log.warning(
                            "database refused a batch (%s); storing it record by record",
                            first_line(exc),
                        )
                        return self._write_each(records, topic_id)
                    batch, stats = self._refuse(records[0], batch, exc)
            except Conflict as exc:
                log.info("another processor moved a mark first (%s); reloading", exc)
                self.pipeline.forget_state()
                continue
            self.pipeline.committed(batch)
            return batch, stats
        self.pipeline.forget_state()
        raise Unavailable(f"{MAX_CONFLICTS} optimistic conflicts in a row")

    def _process(self, records: Sequence[Record], topic_id: TopicId) -> tuple[Batch, Stats]:
        try:
            return self.pipeline.process(records, topic_id)
        except SQLAlchemyError as exc:  # loading marks: no record's data is involved
            raise Unavailable(first_line(exc)) from exc

    def _write_each(self, records: Sequence[Record], topic_id: TopicId) -> tuple[Batch, Stats]:
        total, stats = Batch(), Stats()
        for record in records:
            if self.stopping():
                # What was stored is committed with its offsets: the rest comes again.
                raise Interrupted(f"{len(records) - stats.consumed} records not stored")
            batch, one = self.write([record], topic_id)
            total.merge(batch)
            stats.add(one)
        return total, stats

    def _refuse(self, record: Record, batch: Batch, exc: BaseException) -> tuple[Batch, Stats]:
        """Commit ``record`` as a rejection in place of the rows the database refused."""
        reason = first_line(exc)
        log.warning(
            "%s[%d]@%d: the database refused its rows (%s); stored as invalid_payload",
            record.topic,
            record.partition,
            record.offset,
            reason,
        )
        refused, stats = self.pipeline.refuse(record, batch, refused_rows(reason))
        commit_refusal(self.store, refused)
        return refused, stats

    def _verdict(self, exc: BaseException) -> Verdict:
        verdict = classify(exc, self.store.probe)
        log.debug("database error classified %s: %r", verdict.value, exc)
        return verdict


def refused_rows(reason: str) -> str:
    """The detail of a record whose rows the database refused."""
    return f"database refused its rows: {reason}"


def commit_refusal(store: Store, refused: Batch) -> None:
    """Commit a batch that holds rejections instead of refused rows."""
    try:
        store.commit(refused)
    except Conflict:
        raise
    except Exception as again:
        # A rejection row holds only checked, escaped values: the database itself fails.
        raise Unavailable(first_line(again)) from again
