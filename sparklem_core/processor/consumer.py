"""The long-running consumer loop: Kafka batch → pipeline → one transaction → offsets.

Offsets are committed to Kafka only after the batch's transaction has committed;
the database also records every partition's next offset in that same transaction,
so a crash at any instant neither loses a record nor stores one twice.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import (
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_never,
    wait_exponential_jitter,
)

from sparklem_core.db.batch import Batch, PartitionKey
from sparklem_core.db.mysql_types import max_packet_bytes, packet_problem
from sparklem_core.db.store import Store
from sparklem_core.fleet.state import count_by_state
from sparklem_core.processor.metrics import AgentStates, LagTracker, Metrics, Snapshot
from sparklem_core.processor.metrics_server import Check
from sparklem_core.processor.pipeline import Pipeline, Record, Stats
from sparklem_core.processor.retention import BackgroundPruner, Pruner, Target
from sparklem_core.processor.writer import BatchWriter, Interrupted, Unavailable
from sparklem_core.settings.config import Config, mask_url
from sparklem_core.settings.logs import OncePerMinute

log = logging.getLogger(__name__)

# librdkafka properties shared by every client kind (safe to hand to the admin client).
_CLIENT_PREFIXES = ("bootstrap.", "security.", "sasl.", "ssl.", "client.", "socket.", "broker.")
# Errors that pass when the database comes back, while the schema is prepared at start
# (batches are judged by sparklem_core.db.errors instead).
TRANSIENT_DB_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)
# How often a processor that never held a partition says it still waits for the group.
WAITING_LOG_EVERY_S = 10
# The consumer's properties unless kafka.* in the config sets them.
CONSUMER_DEFAULTS: dict[str, Any] = {
    "auto.offset.reset": "earliest",  # a new group starts at the oldest reading
    # Bound the prefetch queue (librdkafka's default is 64 MiB per consumer): a
    # backlog of millions of records must not become resident memory.
    "queued.max.messages.kbytes": 16384,
    # librdkafka's 45 s makes each JoinGroup on Tansu 0.6 last half of it (22.5 s), longer
    # than a stop waits for its rebalance (half of shutdown_timeout_s): the stopped processor
    # then stays the group's leader and a restarted one waits for it. 6 s: Tansu answers a
    # join in 3 s, a departed member is evicted in 6 s, and it is the least an Apache Kafka
    # broker accepts by default (group.min.session.timeout.ms). Heartbeats: a third of it.
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 2000,
}
# A subscription pattern that no topic matches (a name has at least one character).
_NO_TOPIC = "^$"
_BROKER_DOWN = {KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT, KafkaError._RESOLVE}
# How often high watermarks are read and an idle database is probed, for lag and /readyz.
WATCH_EVERY_S = 2.0


# librdkafka's own log lines, instead of raw lines on stderr.
KAFKA_LOG = logging.getLogger("sparklem.librdkafka")
KAFKA_LOG.addFilter(OncePerMinute())


class Stopping(Exception):
    """Raised out of a wait when a stop was requested."""


class _NothingInHand(Exception):
    """Raised out of a wait when a rebalance took every record being stored."""


class Processor:
    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        store: Store,
        topics: list[str],
        prune: Sequence[Target] = (),
    ):
        self.config = config
        self.settings = config.processor
        self.pipeline = pipeline
        self.store = store
        self.topics = topics
        self.stats = Stats()
        self._window = Stats()
        self._window_start = self._last_stats = time.monotonic()
        self._stop = threading.Event()
        self.lag = LagTracker()
        # Off with the endpoint (http.listen ""): nothing is counted twice for no reader.
        self.metrics = (
            Metrics(self.snapshot, topics, pipeline.plugins) if config.http.listen else None
        )
        self.agent_states = (
            AgentStates(
                lambda: count_by_state(config, store, datetime.now(UTC), pipeline.registry),
                config.fleet.count_every_s,
                self._stop,
            )
            if self.metrics
            else None
        )
        self.writer = BatchWriter(
            pipeline,
            store,
            stopping=self._stop.is_set,
            committed=self.metrics.commit_seconds.observe if self.metrics else lambda _s: None,
        )
        self._turned = time.monotonic()  # the loop's last turn, for /healthz
        self._last_commit = 0.0  # monotonic
        self._waiting_for_database = False
        self._database_answers = True  # the watcher's last probe while no batch commits
        self._broker_down_since: float | None = None
        self._in_hand: list[Record] = []  # the records being stored now
        self._pending: list[Record] = []  # consumed, to be stored after those in hand
        self._carry: list[Record] = []  # records that arrived while waiting for the database
        self._dead_letters: Producer | None = None
        self.consumer: Consumer | None = None
        self._admin = AdminClient(self._client_conf())
        self._topic_ids: dict[str, tuple[str | None, float]] = {}  # topic -> (id, asked at)
        self._assigned: set[tuple[str, int]] = set()
        self._rebalancing = True  # from subscribe until the group hands out partitions
        self._revoked_since_assign = False
        # A cooperative rebalance that takes partitions away ends with a second round.
        strategy = str(config.kafka.get("partition.assignment.strategy", ""))
        self._cooperative = "cooperative" in strategy.lower()
        self._idle_since: float | None = None  # set by the loop
        self._idle_next_check = 0.0
        self._ever_assigned = False  # until the group's first answer: "waiting" lines
        self._waiting_next_log = 0.0
        self._pruner = (
            BackgroundPruner(Pruner(store, list(prune), self.settings, stop=self._stop))
            if prune
            else None
        )

    # --- life cycle ----------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish the batch in hand and exit (signal-safe)."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def prepare_database(self) -> bool:
        """Create or upgrade the schema, waiting for the database; False if stopped first."""
        try:
            for attempt in self._retrying("database unavailable at start", TRANSIENT_DB_ERRORS):
                with attempt:
                    self.store.create_schema()
                    with self.store.engine.connect() as conn:
                        max_packet = max_packet_bytes(conn)
        except Stopping:
            return False
        problem = packet_problem(max_packet, self.settings.max_message_bytes)
        if problem:
            log.warning("%s", problem)
        return True

    def run(self) -> int:
        try:
            self._ensure_topics()
        except Stopping:
            return 0
        self.consumer = Consumer(self._consumer_conf())
        self._subscribe()
        if self.settings.dead_letter_topic:
            self._dead_letters = Producer({**self._client_conf(), "enable.idempotence": True})
        if self.metrics is not None:
            threading.Thread(target=self._watch, name="watch", daemon=True).start()
        if self.agent_states is not None:
            self.agent_states.start()
        if self._pruner is not None:
            self._pruner.start()
        try:
            while not self._stop.is_set():
                records = self._carry or self._consume(
                    self.settings.batch_size, self.settings.poll_timeout_s
                )
                self._carry = []
                if records:
                    self._handle(records)
                self._maybe_log_stats()
                self._check_idle()
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        self._log_stats(final=True)
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        if self.consumer is not None:
            self._settle_before_leaving(self.settings.shutdown_timeout_s / 2)
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            # close() leaves the group cleanly, but can block while the broker is down.
            closer = threading.Thread(target=consumer.close, daemon=True)
            closer.start()
            closer.join(max(deadline - time.monotonic(), 0.5))
            if closer.is_alive():
                log.warning(
                    "Kafka consumer did not close within %.0f s (broker down?); leaving without it",
                    self.settings.shutdown_timeout_s,
                )
        if self._dead_letters is not None:
            self._dead_letters.flush(2)
        if self._pruner is not None:  # woken by the stop; a batch in flight commits first
            self._pruner.join(self.settings.shutdown_timeout_s)
        self.store.dispose()
        log.info("processor stopped")

    # --- Kafka ---------------------------------------------------------------------

    def _client_conf(self) -> dict[str, Any]:
        conf = {k: v for k, v in self.config.kafka.items() if k.startswith(_CLIENT_PREFIXES)}
        return {**conf, "error_cb": self._on_kafka_error, "logger": KAFKA_LOG}

    def _consumer_conf(self) -> dict[str, Any]:
        return {
            **CONSUMER_DEFAULTS,
            **self.config.kafka,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "error_cb": self._on_kafka_error,
            "logger": KAFKA_LOG,
            "on_commit": self._on_commit,
        }

    def _ensure_topics(self) -> None:
        """Create missing topics where the broker allows; wait for the broker if it is down."""
        admin = self._admin
        wanted = list(self.topics)
        if self.settings.dead_letter_topic:
            wanted.append(self.settings.dead_letter_topic)
        for attempt in self._retrying("Kafka broker unreachable at start", KafkaException):
            with attempt:
                existing = admin.list_topics(timeout=5).topics
                self._broker_up()
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=self.settings.topic_partitions) for t in missing]
        )
        for topic, future in futures.items():
            try:
                future.result(timeout=15)
                log.info("created topic %s (%d partitions)", topic, self.settings.topic_partitions)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    log.warning(
                        "could not create topic %s: %s; waiting for it to appear",
                        topic,
                        exc.args[0].str(),
                    )

    def _consume(self, count: int, timeout: float) -> list[Record]:
        assert self.consumer is not None
        self._turned = time.monotonic()
        records = []
        for msg in self.consumer.consume(count, timeout):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("Kafka: %s", err.str())
                continue
            records.append(Record(msg.topic(), msg.partition(), msg.offset(), msg.value()))
        if records:
            self._broker_up()
        if records and self.metrics is not None:
            firsts: dict[tuple[str, int], int] = {}
            for record in records:
                firsts.setdefault((record.topic, record.partition), record.offset)
            self.lag.consumed(firsts)
        return records

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() in _BROKER_DOWN:
            if self._broker_down_since is None:
                self._broker_down_since = time.monotonic()
                log.warning("Kafka broker unreachable (%s); reconnecting with backoff", err.str())
        else:
            log.warning("Kafka error: %s", err.str())

    def _broker_up(self) -> None:
        if self._broker_down_since is not None:
            log.info(
                "Kafka broker reachable again after %.0f s",
                time.monotonic() - self._broker_down_since,
            )
            self._broker_down_since = None

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        if err is not None:
            # Harmless for correctness: the database holds the offsets too.
            log.info("Kafka offset commit failed (%s); the database has them", err.str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("assigned %s", _describe(partitions))
        # Eager protocols hand out the whole assignment, cooperative ones the increment.
        self._assigned.update((tp.topic, tp.partition) for tp in partitions)
        self.lag.assigned(PartitionKey(tp.topic, tp.partition) for tp in partitions)
        self._rebalancing = self._cooperative and self._revoked_since_assign
        self._revoked_since_assign = False
        self._ever_assigned = True
        self.pipeline.forget_state()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        log.info("revoked %s", _describe(partitions))
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._assigned -= gone
        self.lag.revoked(PartitionKey(*key) for key in gone)
        self._rebalancing = True  # the assign callback ends the rebalance, even with nothing
        self._revoked_since_assign = True
        # Only reachable while a batch waits for the database (callbacks run inside
        # consume()): records of partitions we no longer own go to their new owner.
        self._in_hand = [r for r in self._in_hand if (r.topic, r.partition) not in gone]
        self._pending = [r for r in self._pending if (r.topic, r.partition) not in gone]
        self._carry = [r for r in self._carry if (r.topic, r.partition) not in gone]
        self.pipeline.forget_state()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._on_revoke(consumer, partitions)
        self._revoked_since_assign = False  # lost, not handed over: no second round follows

    def _topic_id(self, topic: str, fresh: bool) -> str | None:
        """The broker's id of ``topic``; ``fresh`` asks the broker again (at most every 2 s)."""
        known, asked = self._topic_ids.get(topic, (None, -1e9))
        if (known is None or fresh) and time.monotonic() - asked > 2:
            try:
                future = self._admin.describe_topics(TopicCollection([topic]))[topic]
                known = str(future.result(timeout=5).topic_id)
            except Exception as exc:  # an old broker without topic ids: detection off
                log.debug("no topic id for %s: %s", topic, exc)
            self._topic_ids[topic] = (known, time.monotonic())
        return known

    def _subscribe(self, rejoin: bool = False) -> None:
        """Subscribe; ``rejoin``: subscribe again, which rejoins the group without leaving it."""
        assert self.consumer is not None
        topics = list(self.topics)
        if rejoin and self._cooperative:
            # Under the cooperative protocol librdkafka rejoins only for a changed
            # subscription: add a pattern that matches no topic name.
            topics.append(_NO_TOPIC)
        self._rebalancing = True  # until the group answers with an assignment
        self.consumer.subscribe(
            topics,
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def _settle_before_leaving(self, timeout: float) -> None:
        """Rejoin the group and let that rebalance end (at most ``timeout`` s) before leaving.

        A member that leaves while its group rebalances, as that rebalance's leader, stays
        recorded as the leader on Tansu 0.6 (LeaveGroup clears the leader only in a stable
        group): every other member, new ones too, then waits for an assignment that never
        comes. The member may not know of the rebalance yet (it learns at its next
        heartbeat), so it rejoins first: as the leader it completes the rebalance, and it
        then leaves a stable group, which is safe on every broker.
        """
        assert self.consumer is not None
        if self._broker_down_since is not None:
            return  # nobody to tell: close() gives up on its own
        started = time.monotonic()
        self._subscribe(rejoin=True)
        while self._rebalancing and time.monotonic() - started < timeout:
            # Records fetched now are dropped uncommitted: their next owner reads them.
            try:
                self.consumer.consume(self.settings.batch_size, 0.1)
            except KafkaException as exc:  # fatal: leave now, close() copes
                log.warning("Kafka: %s; leaving the group now", exc)
                return
        if self._rebalancing:
            log.warning(
                "group %s did not settle within %.0f s; leaving it anyway",
                self.config.group_id,
                timeout,
            )
        else:
            log.info(
                "group %s settled in %.1f s; leaving it",
                self.config.group_id,
                time.monotonic() - started,
            )

    def _check_idle(self) -> None:
        """Say so, at most once per ``idle_assignment_warn_s``, while holding no partition."""
        now = time.monotonic()
        if self._assigned:
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
        if not self._ever_assigned and now >= self._waiting_next_log:
            # A group can take many seconds to form (Tansu's first join): say why nothing moves.
            self._waiting_next_log = now + WAITING_LOG_EVERY_S
            log.info(
                "waiting for partition assignment from group %s (%.0f s)",
                self.config.group_id,
                now - self._idle_since,
            )
        warn_s = self.settings.idle_assignment_warn_s
        if now - self._idle_since < warn_s or now < self._idle_next_check:
            return
        self._idle_next_check = now + warn_s
        try:
            metadata = self._admin.list_topics(timeout=5)
        except KafkaException:
            return  # the broker is down: _on_kafka_error says so
        partitions = max(
            (len(metadata.topics[t].partitions) for t in self.topics if t in metadata.topics),
            default=0,
        )
        group = self.config.group_id
        members: int | None
        try:
            # This processor is one: Tansu (0.6) describes every group as empty.
            members = len(self._admin.describe_consumer_groups([group])[group].result(5).members)
        except Exception as exc:  # KafkaException, or a broker without DescribeGroups
            log.debug("could not describe group %s: %s", group, exc)
            members = None
        members = members or None
        level, message = idle_report(now - self._idle_since, group, partitions, members)
        log.log(level, "%s", message)

    # --- one batch -----------------------------------------------------------------

    def _handle(self, records: list[Record]) -> None:
        """Store consumed records, one transaction per ``batch_max_bytes`` at most."""
        self._pending = records
        while self._pending:
            if self._stop.is_set():
                log.warning(
                    "stopping with %d records not stored; they will be consumed again",
                    len(self._pending),
                )
                self._pending = []
                return
            count = records_that_fit(self._pending, self.settings.batch_max_bytes)
            self._in_hand, self._pending = self._pending[:count], self._pending[count:]
            self._store_in_hand()

    def _store_in_hand(self) -> None:
        try:
            for attempt in self._retrying(
                "database unavailable", Unavailable, wait=self._wait_polling
            ):
                with attempt:
                    started = time.perf_counter()
                    batch, stats = self.writer.write(self._in_hand, self._topic_id)
        except Interrupted as exc:
            log.warning("stopping with %s; they will be consumed again", exc)
            return
        except (Stopping, _NothingInHand):
            return  # _handle says what was left when stopping
        finally:
            self._in_hand = []
            if self.consumer is not None:
                self.consumer.resume(self.consumer.assignment())
        self._waiting_for_database = False
        self._last_commit = time.monotonic()
        self.lag.stored(batch.offsets)
        if self.metrics is not None:
            self.metrics.batch_committed(stats, time.perf_counter() - started)
        self._commit_offsets(batch)
        self._send_dead_letters(batch)
        self.stats.add(stats)
        self._window.add(stats)

    def _commit_offsets(self, batch: Batch) -> None:
        if not batch.offsets or self.consumer is None:
            return
        offsets = [TopicPartition(*key, mark.next_offset) for key, mark in batch.offsets.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            log.info("Kafka offset commit failed (%s); the database has them", exc)

    def _send_dead_letters(self, batch: Batch) -> None:
        if self._dead_letters is None or not batch.rejected:
            return
        for rejection in batch.rejected:
            self._dead_letters.produce(
                self.settings.dead_letter_topic,
                value=rejection.raw,
                key=rejection.agent_id,
                headers={
                    "reason": rejection.reason,
                    "detail": rejection.detail,
                    "source": f"{rejection.topic}[{rejection.partition}]@{rejection.offset}",
                },
            )
        self._dead_letters.poll(0)

    # --- waiting ---------------------------------------------------------------------

    def _retrying(
        self,
        what: str,
        errors: type[BaseException] | tuple[type[BaseException], ...],
        wait: Callable[[float], None] | None = None,
    ) -> Retrying:
        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception()
            log.warning(
                "%s (%s); retrying in %.1f s",
                what,
                mask_url(str(exc).splitlines()[0])[:300],
                state.next_action.sleep,
            )

        def sleep(seconds: float) -> None:
            (wait or self._wait)(seconds)

        return Retrying(
            retry=retry_if_exception_type(errors),
            wait=wait_exponential_jitter(initial=0.5, max=15),
            stop=stop_never,
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )

    def _wait(self, seconds: float) -> None:
        self._turned = time.monotonic()  # waiting for a server is alive, not stuck
        if self._stop.wait(seconds):
            raise Stopping

    def _wait_polling(self, seconds: float) -> None:
        """Wait for the database while staying in the consumer group (paused partitions)."""
        assert self.consumer is not None
        self._waiting_for_database = True
        self.consumer.pause(self.consumer.assignment())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._stop.is_set():
                raise Stopping
            self._carry.extend(self._consume(self.settings.batch_size, 0.2))
        if not self._in_hand:
            raise _NothingInHand  # every record in hand went to another processor

    # --- health and metrics -------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """What /metrics reads from the processor's parts when scraped."""
        cache = self.pipeline.session_key.cache_info()
        return Snapshot(
            lags=self.lag.lags(),
            agents=self.agent_states.latest if self.agent_states else {},
            key_cache_hits=cache.hits,
            key_cache_misses=cache.misses,
            plugins_up={i.name: i.ok for i in self.pipeline.host.infos},
        )

    def liveness(self) -> list[Check]:
        """/healthz: the loop turns (a processor catching up is alive)."""
        idle = time.monotonic() - self._turned
        return [Check("loop_turned_s_ago", idle < self.config.http.alive_max_s, round(idle, 3))]

    def readiness(self) -> list[Check]:
        """/readyz: database writable, broker reachable, group joined, lag small."""
        database = not self._waiting_for_database and self._database_answers
        lag_s = self.lag.max_seconds()
        return [
            Check("database", database, "writable" if database else "unavailable"),
            Check("broker", self._broker_down_since is None, self._broker_down_since is None),
            Check(
                "group_joined",
                self._ever_assigned and not self._rebalancing,
                len(self._assigned),
            ),
            Check("lag_seconds", lag_s < self.config.http.ready_max_lag_s, round(lag_s, 3)),
        ]

    def _watch(self) -> None:
        """Beside the loop: read high watermarks, probe the database while nothing commits."""
        while not self._stop.wait(WATCH_EVERY_S):
            self._sample_watermarks()
            if time.monotonic() - self._last_commit > WATCH_EVERY_S:
                self._database_answers = self.store.probe()
            else:
                self._database_answers = True

    def _sample_watermarks(self) -> None:
        keys = self.lag.partitions()
        if not keys:
            return
        try:
            futures = self._admin.list_offsets(
                {TopicPartition(*key): OffsetSpec.latest() for key in keys},
                request_timeout=WATCH_EVERY_S,
            )
        except KafkaException:
            return
        highs = {}
        for tp, future in futures.items():
            try:
                highs[PartitionKey(tp.topic, tp.partition)] = future.result().offset
            except KafkaException:  # the broker is down: the loop says so
                continue
        self.lag.sampled(highs)

    # --- logging -----------------------------------------------------------------------

    def _maybe_log_stats(self) -> None:
        if time.monotonic() - self._last_stats >= self.settings.stats_interval_s:
            self._log_stats()

    def _log_stats(self, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = max(now - self._window_start, 1e-9)
        s = self.stats
        rejected = ", ".join(f"{k}={v}" for k, v in sorted(s.rejected.items())) or "none"
        log.info(
            "%s: consumed=%d stored=%d rows=%d rejected=%d (%s) duplicates=%d "
            "redelivered=%d rate=%.1f msg/s",
            "final stats" if final else "stats",
            s.consumed,
            s.stored,
            s.rows,
            sum(s.rejected.values()),
            rejected,
            s.duplicates,
            s.redelivered,
            self._window.consumed / elapsed,
        )
        self._window, self._window_start, self._last_stats = Stats(), now, now


def records_that_fit(records: list[Record], max_bytes: int) -> int:
    """How many of the first records fit in ``max_bytes`` (always at least one)."""
    total = 0
    for count, record in enumerate(records):
        total += len(record.value or b"")
        if total > max_bytes and count > 0:
            return count
    return len(records)


def _describe(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


def idle_report(idle_s: float, group: str, partitions: int, members: int | None) -> tuple[int, str]:
    """The log level and line for a processor without partitions for ``idle_s`` seconds.

    ``partitions``: the most partitions of one subscribed topic; ``members``: the group's
    size (None when unknown). Range, round-robin and sticky assignors all give every
    member a partition when the group has no more members than that: a member without
    one then is waiting for a rebalance that does not complete.
    """
    held = f"no partitions assigned for {idle_s:.0f} s"
    if partitions == 0:
        return logging.WARNING, f"{held}: the subscribed topics have no partitions"
    if members is not None and members > partitions:
        return logging.INFO, (
            f"{held}: group {group} has {members} members for {partitions} partitions "
            "per topic; this processor is a standby"
        )
    if members is None:
        return logging.WARNING, (
            f"{held} although a subscribed topic has {partitions} partitions: is group "
            f"{group} stuck in a rebalance (see the broker's log), or larger than that (its "
            "size is unknown)?"
        )
    return logging.WARNING, (
        f"{held} although group {group} has {members} members for {partitions} partitions "
        "per topic: its rebalance is not completing; check the broker's log for this group"
    )
