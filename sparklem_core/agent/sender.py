"""The sender: hands spooled envelopes to a Kafka producer and deletes them once delivered."""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from sparklem_core.agent.spool import Spool
from sparklem_core.settings.logs import OncePerMinute
from sparklem_core.wire.bundle import DEFAULT_STALL_TIMEOUT_S

log = logging.getLogger("sparklem.agent")
KAFKA_LOG = logging.getLogger("sparklem.agent.librdkafka")
KAFKA_LOG.addFilter(OncePerMinute())


MAX_IN_FLIGHT = 1000  # spool entries handed to the producer at a time
MAX_RETRY_BACKOFF_S = 30.0


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
