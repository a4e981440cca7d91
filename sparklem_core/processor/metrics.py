"""The processor's Prometheus metrics: every definition, in one registry per processor.

Counters are fed from the pipeline's :class:`~sparklem_core.processor.pipeline.Stats` of
each committed batch (no second counting system); the rest is read when scraped. Label
values are bounded: subscribed topics and their partitions, loaded plugins and their
tables, rejection reasons; nothing per agent, nothing a record chose.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sparklem_core import wire
from sparklem_core.db.batch import OffsetMark, PartitionKey
from sparklem_core.processor.pipeline import Stats

log = logging.getLogger(__name__)

# Batches take milliseconds to seconds; a database outage is not in them (retries are).
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# High-watermark samples kept per partition: the oldest unstored offset needs only the
# first sample above it, so a full list keeps its oldest entries and replaces the newest.
MAX_SAMPLES = 512


@dataclass(frozen=True)
class PartitionLag:
    """How far one partition's stored offset is behind the broker."""

    topic: str
    partition: int
    records: int  # high watermark minus the next offset to store
    seconds: float  # how long the oldest record not yet stored has been at the broker


@dataclass
class _Partition:
    stored_next: int | None = None  # next offset the database holds (None: none yet)
    first_consumed: int | None = None  # before any commit: the oldest record consumed
    high: int | None = None
    samples: deque[tuple[int, float]] = field(default_factory=deque)  # (high, seen at)


class LagTracker:
    """Consumer lag per partition, in records and in seconds, from processor time only.

    The broker's high watermark is sampled (:meth:`sampled`); an offset is dated by the
    monotonic time of the first sample that showed it, so a producer's timestamp never
    enters. The age of the oldest unstored record is thus measured from when this
    processor first saw it at the broker: at least that old, never forged. Thread-safe:
    the loop records commits, a sampler records watermarks, a scrape reads.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._parts: dict[PartitionKey, _Partition] = {}

    def assigned(self, keys: Iterable[PartitionKey]) -> None:
        with self._lock:
            for key in keys:
                self._parts.setdefault(PartitionKey(*key), _Partition())

    def revoked(self, keys: Iterable[PartitionKey]) -> None:
        with self._lock:
            for key in keys:
                self._parts.pop(PartitionKey(*key), None)

    def partitions(self) -> list[PartitionKey]:
        with self._lock:
            return list(self._parts)

    def consumed(self, firsts: Mapping[tuple[str, int], int]) -> None:
        """Records were consumed: the first offset of each partition among them (the
        oldest unstored one until the partition's first commit tells the stored offset)."""
        with self._lock:
            for key, offset in firsts.items():
                part = self._parts.get(PartitionKey(*key))
                if part is not None and part.stored_next is None and part.first_consumed is None:
                    part.first_consumed = offset

    def stored(self, offsets: Mapping[PartitionKey, OffsetMark]) -> None:
        """A batch committed these partitions' next offsets."""
        with self._lock:
            for key, mark in offsets.items():
                part = self._parts.get(PartitionKey(*key))
                if part is not None:
                    part.stored_next = mark.next_offset
                    while part.samples and part.samples[0][0] <= mark.next_offset:
                        part.samples.popleft()

    def sampled(self, highs: Mapping[PartitionKey, int]) -> None:
        """High watermarks just read from the broker."""
        now = self._clock()
        with self._lock:
            for key, high in highs.items():
                part = self._parts.get(PartitionKey(*key))
                if part is None or high < 0:
                    continue
                part.high = high
                if part.samples and part.samples[-1][0] >= high:
                    continue
                if len(part.samples) >= MAX_SAMPLES:
                    part.samples.pop()
                part.samples.append((high, now))

    def lags(self) -> list[PartitionLag]:
        """Every assigned partition whose lag is known."""
        now = self._clock()
        result = []
        with self._lock:
            for key, part in sorted(self._parts.items()):
                base = part.stored_next if part.stored_next is not None else part.first_consumed
                if base is None or part.high is None:
                    continue
                records = max(part.high - base, 0)
                seen = next((t for high, t in part.samples if high > base), None)
                seconds = now - seen if records and seen is not None else 0.0
                result.append(PartitionLag(key.topic, key.partition, records, seconds))
        return result

    def max_seconds(self) -> float:
        return max((lag.seconds for lag in self.lags()), default=0.0)


@dataclass(frozen=True)
class Snapshot:
    """What is read at scrape time from the processor's parts (no counting of its own)."""

    lags: list[PartitionLag]
    agents: Mapping[str, int]  # by state, as last counted (empty until the first count)
    key_cache_hits: int
    key_cache_misses: int
    plugins_up: Mapping[str, bool]


class AgentStates(threading.Thread):
    """Agents by state, counted every ``every_s`` beside the loop (never per scrape nor per
    batch); while a count fails, the last one stays (logged once until one succeeds)."""

    def __init__(
        self, count: Callable[[], Mapping[str, int]], every_s: float, stop: threading.Event
    ) -> None:
        super().__init__(name="sparklem-agent-states", daemon=True)
        self._count, self._every_s, self._stop = count, every_s, stop
        self.latest: Mapping[str, int] = {}
        self._failing = False

    def run(self) -> None:
        while True:
            try:
                self.latest = dict(self._count())
                self._failing = False
            except Exception as exc:  # the database is down, or the schema is older
                if not self._failing:
                    log.warning("cannot count agents by state for /metrics: %s", exc)
                self._failing = True
            if self._stop.wait(self._every_s):
                return


class _SnapshotCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        s = self._snapshot()
        records = GaugeMetricFamily(
            "sparklem_consumer_lag_records",
            "High watermark minus the next offset stored in the database",
            labels=["topic", "partition"],
        )
        seconds = GaugeMetricFamily(
            "sparklem_consumer_lag_seconds",
            "Age of the oldest record not yet stored, since this processor saw it at the broker",
            labels=["topic", "partition"],
        )
        for lag in s.lags:
            records.add_metric([lag.topic, str(lag.partition)], lag.records)
            seconds.add_metric([lag.topic, str(lag.partition)], lag.seconds)
        yield records
        yield seconds
        if s.agents:
            agents = GaugeMetricFamily(
                "sparklem_agents",
                "Agents by state (active, silent, never_seen, seen: no silence threshold "
                "known; revoked; refused: a key the registry refuses)",
                labels=["state"],
            )
            for state, n in sorted(s.agents.items()):
                agents.add_metric([state], n)
            yield agents
        yield CounterMetricFamily(
            "sparklem_session_key_cache_hits", "Session keys found cached", value=s.key_cache_hits
        )
        yield CounterMetricFamily(
            "sparklem_session_key_cache_misses", "Session keys unwrapped", value=s.key_cache_misses
        )
        up = GaugeMetricFamily(
            "sparklem_plugin_up", "1 when the plugin is loaded and running", labels=["plugin"]
        )
        for name, ok in sorted(s.plugins_up.items()):
            up.add_metric([name], 1 if ok else 0)
        yield up


class Metrics:
    """The metrics of one processor, in their own registry (never the global one)."""

    def __init__(
        self,
        snapshot: Callable[[], Snapshot],
        topics: Iterable[str] = (),
        plugins: Iterable[str] = (),
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            "sparklem_records_consumed", "Kafka records processed", ["topic"], registry=r
        )
        self.stored = Counter(
            "sparklem_messages_stored", "Messages whose rows were committed", ["plugin"], registry=r
        )
        self.rows = Counter("sparklem_rows_stored", "Rows committed", ["table"], registry=r)
        self.rejected = Counter(
            "sparklem_records_rejected",
            'Rejections by reason; plugin "" unless the record was authenticated',
            ["reason", "plugin"],
            registry=r,
        )
        self.duplicates = Counter(
            "sparklem_duplicates", "Messages already stored (seq)", registry=r
        )
        self.redelivered = Counter(
            "sparklem_redeliveries", "Records below the stored offset", registry=r
        )
        self.batch_seconds = Histogram(
            "sparklem_batch_duration_seconds",
            "Processing and storing one batch (the attempt that committed)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.commit_seconds = Histogram(
            "sparklem_commit_duration_seconds",
            "One database transaction of a batch",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.last_commit = Gauge(
            "sparklem_last_commit_timestamp_seconds",
            "Unix time of the last committed batch",
            registry=r,
        )
        for topic in topics:  # zero from the start, so that rate() sees the first ones
            self.consumed.labels(topic)
        for plugin in plugins:
            self.stored.labels(plugin)
        for reason in wire.REASONS:
            self.rejected.labels(reason, "")
        r.register(_SnapshotCollector(snapshot))

    def batch_committed(self, stats: Stats, seconds: float) -> None:
        """Count a committed batch (its :class:`Stats`) and how long it took."""
        for topic, n in stats.consumed_by_topic.items():
            self.consumed.labels(topic).inc(n)
        for plugin, n in stats.stored_by_plugin.items():
            self.stored.labels(plugin).inc(n)
        for table, n in stats.rows_by_table.items():
            self.rows.labels(table).inc(n)
        for (reason, plugin), n in stats.rejected_by.items():
            self.rejected.labels(reason, plugin).inc(n)
        if stats.duplicates:
            self.duplicates.inc(stats.duplicates)
        if stats.redelivered:
            self.redelivered.inc(stats.redelivered)
        self.batch_seconds.observe(seconds)
        self.last_commit.set_to_current_time()


# --- run --workers N: one endpoint for the host ------------------------------------------

# The same value in every worker (read from shared files): the host's is the largest, not
# the sum. Everything else (counters, histograms, lag per partition owned by one worker)
# is summed.
SAME_IN_EVERY_WORKER = frozenset(
    {"sparklem_agents", "sparklem_plugin_up", "sparklem_last_commit_timestamp_seconds"}
)
WORKER_SCRAPE_TIMEOUT_S = 2.0


def worker_url(port: int, path: str) -> str:
    return f"http://127.0.0.1:{port}{path}"


def fetch(url: str) -> tuple[int, bytes] | None:
    """GET ``url`` on a worker: (status, body), or None when it does not answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=WORKER_SCRAPE_TIMEOUT_S) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError):
        return None


def merge_expositions(texts: Iterable[str]) -> list[Metric]:
    """Workers' /metrics as one host's: samples summed, :data:`SAME_IN_EVERY_WORKER` maxed."""
    from prometheus_client.parser import text_string_to_metric_families

    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            if family.name not in merged:
                merged[family.name] = Metric(family.name, family.documentation, family.type)
                values[family.name] = {}
            into = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sample.labels.items()))
                if family.name in SAME_IN_EVERY_WORKER:
                    into[key] = max(into.get(key, sample.value), sample.value)
                else:
                    into[key] = into.get(key, 0.0) + sample.value
    for name, metric in merged.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


class WorkersCollector(Collector):
    """The host's metrics: every worker's /metrics, scraped when this one is."""

    def __init__(self, ports: Callable[[], Mapping[int, int]]) -> None:
        """``ports()``: each running worker's endpoint port, by worker number."""
        self._ports = ports

    def collect(self) -> Iterator[Metric]:
        texts, up = (
            [],
            GaugeMetricFamily(
                "sparklem_worker_up", "1 when the worker's endpoint answered", labels=["worker"]
            ),
        )
        for n, port in sorted(self._ports().items()):
            answer = fetch(worker_url(port, "/metrics"))
            ok = answer is not None and answer[0] == 200
            if answer is not None and ok:
                texts.append(answer[1].decode("utf-8", "replace"))
            up.add_metric([str(n)], 1 if ok else 0)
        yield from merge_expositions(texts)
        yield up
