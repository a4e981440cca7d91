"""The agent's on-disk spool, and the :class:`Sender` that drains it into Kafka.

Every sealed envelope waits in the spool until Kafka confirms it.

One SQLite table, in insertion order (``id`` is AUTOINCREMENT, so ids never repeat,
even after the table was emptied)::

    spool(id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT, key BLOB, value BLOB,
          created_ms INTEGER)

Bounded: past ``max_rows`` the oldest entries are deleted first and counted in
:attr:`Spool.dropped`. WAL with ``synchronous=NORMAL``: an agent crash loses nothing;
a power cut may lose the last moments (the seq state file is fsynced separately).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

log = logging.getLogger("sparklem.agent")
KAFKA_LOG = logging.getLogger("sparklem.agent.librdkafka")

MAX_IN_FLIGHT = 1000  # spool entries handed to the producer at a time
MAX_RETRY_BACKOFF_S = 30.0
DEFAULT_STALL_TIMEOUT_S = 60.0  # in-flight entries and no delivery: replace the producer
# Set by the sender whatever the bundle says: they carry its ordering guarantee.
OWN_PRODUCER_PROPERTIES = {
    "enable.idempotence": "true",
    "acks": "all",
    "message.timeout.ms": "0",
    "delivery.timeout.ms": "0",
}
# Delivery errors that no retry can fix: the entry is dropped (and logged).
UNSENDABLE = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_RECORD,
}
BROKER_DOWN = {KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE}
QUIET_ERRORS = {KafkaError._TRANSPORT}  # one connection dropped: librdkafka reconnects

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    created_ms INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class Entry:
    id: int
    topic: str
    key: bytes
    value: bytes
    created_ms: int


class Spool:
    """A bounded FIFO of Kafka records in SQLite."""

    def __init__(self, path: Path, max_rows: int = 100_000) -> None:
        if max_rows < 1:
            raise ValueError("max_rows must be at least 1")
        self.path = path
        self.max_rows = max_rows
        self.dropped = 0  # entries dropped because the spool was full, since open
        try:
            self._db = self._open(path)
        except sqlite3.DatabaseError as exc:  # not a database, or corrupt beyond use
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            path.rename(aside)
            log.error("spool %s is unusable (%s); moved to %s, starting empty", path, exc, aside)
            self._db = self._open(path)
        (self._count,) = self._db.execute("SELECT COUNT(*) FROM spool").fetchone()
        self._trim()

    @staticmethod
    def _open(path: Path) -> sqlite3.Connection:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None)  # autocommit; BEGIN where needed
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"unknown spool schema version {version}")
            db.execute(SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        return db

    def __len__(self) -> int:
        return self._count

    def put(self, topic: str, key: bytes, value: bytes) -> int:
        """Append one record; drops the oldest when full. Returns the new entry's id."""
        cursor = self._db.execute(
            "INSERT INTO spool (topic, key, value, created_ms) VALUES (?, ?, ?, ?)",
            (topic, key, value, int(time.time() * 1000)),
        )
        self._count += 1
        self._trim()
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def pending(self, after: int = 0, limit: int = 500) -> list[Entry]:
        """Up to ``limit`` entries with an id above ``after``, oldest first."""
        rows = self._db.execute(
            "SELECT id, topic, key, value, created_ms FROM spool WHERE id > ? ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [Entry(i, t, bytes(k), bytes(v), c) for i, t, k, v, c in rows]

    def delete(self, ids: Iterable[int]) -> None:
        """Forget delivered entries (ids already gone are ignored)."""
        ids = list(ids)
        if not ids:
            return
        self._db.execute("BEGIN")
        try:
            deleted = 0
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ",".join("?" * len(chunk))
                deleted += self._db.execute(
                    f"DELETE FROM spool WHERE id IN ({marks})", chunk
                ).rowcount
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._count -= deleted

    def _trim(self) -> None:
        excess = self._count - self.max_rows
        if excess <= 0:
            return
        deleted = self._db.execute(
            "DELETE FROM spool WHERE id IN (SELECT id FROM spool ORDER BY id LIMIT ?)", (excess,)
        ).rowcount
        self._count -= deleted
        self.dropped += deleted

    def close(self) -> None:
        self._db.close()


# --- draining into Kafka -------------------------------------------------------------


class Sender:
    """Spool -> idempotent producer -> delete on delivery, in spool order.

    librdkafka never times a message out here (``message.timeout.ms`` 0): a local
    timeout is the one way an idempotent producer leaves a gap in a partition, and a
    resend after a gap would arrive behind newer messages. Instead, when the producer
    fails (a fatal error, a refused delivery) or makes no progress for ``stall_s`` (a
    broker that lost its state keeps refusing the producer id), it is purged and
    replaced, and a fresh one resends from the oldest entry left. What the old one had
    persisted unconfirmed arrives twice; the processor drops the copy by ``seq``.
    """

    def __init__(
        self,
        spool: Spool,
        kafka: dict[str, Any],
        stall_s: float = DEFAULT_STALL_TIMEOUT_S,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.spool = spool
        self.stall_s = stall_s
        self.max_in_flight = max_in_flight
        kafka = dict(kafka)
        ignored = {
            k: kafka.pop(k)
            for k, v in OWN_PRODUCER_PROPERTIES.items()
            if k in kafka and str(kafka[k]).lower() != v
        }
        if ignored:
            log.warning("Kafka properties the agent sets itself, ignored: %s", ignored)
        kafka.pop("delivery.timeout.ms", None)  # an alias of message.timeout.ms
        self.conf = {
            **kafka,
            "enable.idempotence": True,
            "acks": "all",
            "message.timeout.ms": 0,
            "error_cb": self._on_error,
            "logger": KAFKA_LOG,
        }
        self.generation = 0  # which producer a delivery report comes from
        self.producer = self._new_producer()
        self.in_flight: set[int] = set()
        self.delivered: list[int] = []
        self.cursor = 0  # highest spool id given to the current producer
        self.progress_at = time.monotonic()  # last delivery, or when waiting began
        self.reset_reason = ""  # set: replace the producer at retry_at
        self.failures_in_row = 0
        self.retry_at = 0.0
        self.broker_down = False
        self.sent = 0

    def _new_producer(self) -> Producer:
        try:
            return Producer(self.conf)
        except KafkaException as exc:
            raise ValueError(f"invalid Kafka properties in the bundle: {exc}") from None

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.spool.put(topic, key, value)

    @property
    def busy(self) -> bool:
        return bool(self.in_flight) or (not self.reset_reason and len(self.spool) > 0)

    def pump(self, wait_s: float = 0.0) -> None:
        """Serve delivery reports (waiting up to ``wait_s`` for one), then produce more."""
        self._poll(wait_s if self.in_flight else 0)
        self._settle()
        now = time.monotonic()
        if self.in_flight and now - self.progress_at > self.stall_s:
            self._reset(f"no delivery for {self.stall_s:g} s")
        if self.reset_reason:
            if now < self.retry_at:
                return
            self._replace_producer()
        room = self.max_in_flight - len(self.in_flight)
        if room <= 0:
            return
        if not self.in_flight:
            self.progress_at = now
        for entry in self.spool.pending(after=self.cursor, limit=room):
            report = functools.partial(self._on_delivery, self.generation, entry.id)
            try:
                self.producer.produce(entry.topic, entry.value, entry.key, on_delivery=report)
            except BufferError:
                break
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() in UNSENDABLE:
                    log.error("dropping spool entry %d: %s", entry.id, error.str())
                    self.delivered.append(entry.id)
                    self.cursor = entry.id
                    continue
                self._reset(error.str())
                break
            self.in_flight.add(entry.id)
            self.cursor = entry.id
        self._poll(0)

    def flush(self, timeout_s: float) -> None:
        if self.in_flight and not self.reset_reason:
            try:
                self.producer.flush(timeout_s)
            except KafkaException as exc:
                self._reset(exc.args[0].str())
        self._settle()

    def _poll(self, timeout_s: float) -> None:
        try:
            self.producer.poll(timeout_s)
        except KafkaException as exc:  # a fatal producer error (e.g. unknown producer id)
            self._reset(exc.args[0].str())

    def _settle(self) -> None:
        if self.delivered:
            self.spool.delete(self.delivered)
            self.delivered = []

    def _on_delivery(
        self, generation: int, entry_id: int, err: KafkaError | None, _msg: Message
    ) -> None:
        if err is None:
            self.delivered.append(entry_id)  # even from a replaced producer: it is stored
            self.sent += 1
            if generation == self.generation:
                self.in_flight.discard(entry_id)
                self.progress_at = time.monotonic()
                if self.broker_down or self.failures_in_row:
                    log.info("Kafka delivery works again; %d in the spool", len(self.spool))
                    self.broker_down, self.failures_in_row = False, 0
            return
        if generation != self.generation:
            return  # purged with its producer; the entry is resent by the new one
        self.in_flight.discard(entry_id)
        if err.code() in UNSENDABLE:
            log.error("dropping spool entry %d, Kafka refuses it: %s", entry_id, err.str())
            self.delivered.append(entry_id)
            return
        self._reset(err.str())

    def _reset(self, reason: str) -> None:
        """Stop using this producer; :meth:`pump` replaces it after a backoff."""
        if self.reset_reason:
            return
        self.reset_reason = reason
        self.failures_in_row += 1
        backoff = min(2.0 ** (self.failures_in_row - 1), MAX_RETRY_BACKOFF_S)
        self.retry_at = time.monotonic() + backoff
        log.log(
            logging.WARNING if self.failures_in_row == 1 else logging.DEBUG,
            "Kafka delivery failed (%s); %d entries wait in the spool, new producer in %.0f s",
            reason,
            len(self.spool),
            backoff,
        )

    def _replace_producer(self) -> None:
        old = self.producer
        self.generation += 1
        with contextlib.suppress(KafkaException, RuntimeError):
            old.purge(in_queue=True, in_flight=True, blocking=False)
            old.poll(0)  # its reports now go nowhere: the generation moved on
        self.producer = self._new_producer()
        self.in_flight.clear()
        self.reset_reason, self.cursor = "", 0

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in BROKER_DOWN:
            if not self.broker_down:
                self.broker_down = True
                log.warning("Kafka broker unreachable (%s); readings are spooled", err.str())
        elif err.fatal():
            self._reset(err.str())
        elif err.code() in QUIET_ERRORS:
            log.debug("Kafka: %s", err.str())
        else:
            log.warning("Kafka error: %s", err.str())


class _OncePerMinute(logging.Filter):
    """librdkafka repeats a connection failure at every retry: keep one line a minute."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key, now = str(record.msg)[:60], time.monotonic()
        if now - self._last.get(key, -1e9) < 60:
            return False
        self._last[key] = now
        return True


KAFKA_LOG.addFilter(_OncePerMinute())
