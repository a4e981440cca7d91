"""Throughput of the processor, from the cryptographic floor to the whole Kafka round trip.

``python3 -m benchmarks.pipeline [--messages N] [--agents A] [--readings R] [--jobs J]
[--sealer {sparklem,independent}] [--phases LIST] [--db URL] [--workers W] [--backlog]
[--skip-e2e] [--profile]``

It builds realistic PROTOCOL.md messages once (2048-bit agent and server keys in a
temporary certificates directory; one session key per agent, reused as agents do; half
``temperature`` with R readings, half ``pu_workload`` with a 4-core CPU). The agents are
spread over J processes that seal their messages, merged back into one sending order.
``--sealer independent`` seals with ``tests/independent_agent.py`` (an agent written apart
from ``sparklem_core``) instead of this project's protocol code. Then it measures, on
those same messages, the phases named by ``--phases`` (default all):

floor
    a bare loop that only verifies each signature and decrypts (``wire.verify`` +
    ``wire.decrypt``, base64 decoding included); the session key is unwrapped once
    per ``(kid, ek)`` as the protocol allows. Envelopes are parsed outside the clock,
    10,000 at a time.
engine
    the processor's whole per-message path without Kafka: ``Pipeline.process`` on batches
    of 500 records fed from memory, ``Store.commit`` and ``Pipeline.committed``
    (SQLite in a temporary directory, or ``--db URL``).
end-to-end
    a Tansu broker, ``python3 main.py run`` as a subprocess (joined to its group before
    anything is produced), then the time from the first record produced until the
    database holds every message; ``bare consume`` is a plain confluent-kafka consumer
    reading the same records, for comparison. With ``--backlog`` every message is
    produced first and the processor then works through the backlog, timed from its
    first commit seen in the database. Its peak RSS is VmHWM summed over its process
    tree, cross-checked by sampling VmRSS every 0.5 s.
naive
    what a first version would do, on fewer messages: RSA-unwrap the session key of every
    message and insert and commit each message on its own (a separate SQLite file).

Prints a table, then one JSON line with every figure. ``--profile`` instead runs the
engine once with per-stage timers and once under cProfile, and prints where the time goes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import cProfile
import dataclasses
import functools
import importlib.util
import io
import json
import multiprocessing
import os
import pstats
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from Crypto.Cipher import AES
from Crypto.PublicKey import RSA
from sqlalchemy import create_engine, insert, text

from sparklem_core import wire
from sparklem_core.fleet.registry import AgentRegistry, create_server_key, load_server_keys
from sparklem_core.plugin_api import Message
from sparklem_core.processor.pipeline import Record, Stats
from sparklem_core.processor.wiring import prepare
from sparklem_core.settings.config import Config

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("temperature", "pu_workload")
PARTITIONS = 4  # per topic, for the engine's records and the end-to-end topics
KEY_BITS = 2048
SENSORS = (
    "cpu_thermal",
    "gpu_thermal",
    "soc_thermal",
    "board",
    "nvme0",
    "ambient",
    "pmic",
    "wifi",
)
GIB = 1024**3


class BenchError(RuntimeError):
    """A phase could not run or produced wrong results."""


_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


@dataclass
class Workload:
    """Enrolled agents and their sealed messages, in sending order."""

    root: Path
    certificates: Path
    suffix: str
    agents: list[str]
    topics: dict[str, str]  # plugin -> topic of this run
    values: list[bytes]  # Kafka record values (envelopes)
    senders: list[str]  # agent of each message (the Kafka key)
    plugins: list[str]  # plugin of each message
    rows: list[int]  # rows each message stores
    build_s: float = 0.0

    @property
    def prefix(self) -> str:
        return f"bench-{self.suffix}-"

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def rows_of(self, count: int) -> int:
        return sum(self.rows[:count])

    def records(self) -> list[Record]:
        """The messages as Kafka records: partition by agent, offsets from 0 per partition."""
        next_offset: dict[tuple[str, int], int] = {}
        records = []
        for value, agent, plugin in zip(self.values, self.senders, self.plugins, strict=True):
            tp = (self.topics[plugin], zlib.crc32(agent.encode()) % PARTITIONS)
            offset = next_offset.get(tp, 0)
            next_offset[tp] = offset + 1
            records.append(Record(tp[0], tp[1], offset, value))
        return records


Signer = Callable[[bytes], bytes]


def _agent_key() -> tuple[bytes, Signer]:
    """A 2048-bit agent key: (public PEM, RSA-PSS SHA-256 salt-32 signer).

    OpenSSL (the ``cryptography`` package) when installed: it generates and signs several
    times faster than pycryptodome, which only makes the set-up shorter. The signatures
    are the same scheme; the processor verifies them with its own code.
    """
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding, rsa
    except ImportError:
        from Crypto.Hash import SHA256
        from Crypto.PublicKey import RSA
        from Crypto.Signature import pss

        key = RSA.generate(KEY_BITS)
        signer = pss.new(key, salt_bytes=wire.PSS_SALT_BYTES)
        return key.public_key().export_key(), lambda data: signer.sign(SHA256.new(data))
    private = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    scheme = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=wire.PSS_SALT_BYTES)
    return pem, lambda data: private.sign(data, scheme, hashes.SHA256())


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def seal(
    plaintext: dict[str, Any], agent: str, plugin: str, session: wire.SessionKey, sign: Signer
) -> bytes:
    """``wire.seal`` with a pluggable signer: encrypt under the session key, then sign."""
    raw = json.dumps(plaintext, separators=(",", ":")).encode("utf-8")
    iv = os.urandom(wire.IV_BYTES)
    cipher = AES.new(session.key, AES.MODE_GCM, nonce=iv)
    cipher.update(wire.aad(agent, plugin, session.kid))
    ct, tag = cipher.encrypt_and_digest(raw)
    session.used += 1
    unsigned = wire.Envelope(
        agent, plugin, session.kid, session.ek, _b64(iv), _b64(ct), _b64(tag), ""
    )
    return dataclasses.replace(unsigned, sig=_b64(sign(unsigned.signed_bytes()))).to_json()


def temperature_payload(rng: random.Random, readings: int, ts: int) -> dict[str, Any]:
    return {
        "readings": [
            {
                "sensor": SENSORS[n] if n < len(SENSORS) else f"sensor{n}",
                "value": round(rng.uniform(30.0, 75.0), 2),
                "unit": "C",
                "ts": ts - rng.randrange(0, 1000),
            }
            for n in range(readings)
        ]
    }


def pu_workload_payload(rng: random.Random, cores: int) -> dict[str, Any]:
    per_core = [round(rng.uniform(0.0, 100.0), 2) for _ in range(cores)]
    return {
        "cpu": {
            "percent": round(sum(per_core) / cores, 2),
            "per_core": per_core,
            "load_avg": [round(rng.uniform(0.0, 4.0), 2) for _ in range(3)],
        },
        "memory": {"used_bytes": rng.randrange(1 * GIB, 6 * GIB), "total_bytes": 8 * GIB},
    }


SEALERS = ("sparklem", "independent")
INDEPENDENT_AGENT = ROOT / "tests" / "independent_agent.py"
SealMessage = Callable[[dict[str, Any], str, str], bytes]  # (plaintext, agent, plugin)


@functools.cache
def independent_agent() -> ModuleType:
    """``tests/independent_agent.py`` (an agent written apart from ``sparklem_core``), by path."""
    if not INDEPENDENT_AGENT.is_file():
        raise BenchError(f"--sealer independent needs {INDEPENDENT_AGENT}, which is missing")
    spec = importlib.util.spec_from_file_location("independent_agent", INDEPENDENT_AGENT)
    if spec is None or spec.loader is None:
        raise BenchError(f"cannot import {INDEPENDENT_AGENT}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def new_agent(sealer: str, server_public_pem: bytes) -> tuple[bytes, SealMessage]:
    """A fresh agent key and session key: (public PEM to enrol, function sealing a message)."""
    if sealer == "independent":
        agent_side = independent_agent()
        private = agent_side.generate_key(KEY_BITS)
        server = agent_side.as_public(server_public_pem)
        session = agent_side.Session(server)

        def seal_independent(plaintext: dict[str, Any], agent: str, plugin: str) -> bytes:
            return agent_side.seal(plaintext, agent, plugin, server, private, session)

        return agent_side.public_pem(private), seal_independent
    pem, sign = _agent_key()
    session = wire.SessionKey(RSA.import_key(server_public_pem))
    return pem, lambda plaintext, agent, plugin: seal(plaintext, agent, plugin, session, sign)


@dataclass(frozen=True)
class Plan:
    """What to build. Message ``n`` comes from agent ``n % A``; each agent alternates plugins."""

    messages: int
    agents: tuple[str, ...]
    readings: int
    cores: int
    seed: int
    now_ms: int
    sealer: str
    server_public_pem: bytes

    def plugin(self, n: int) -> str:
        return PLUGINS[(n // len(self.agents)) % 2]

    def ts(self, n: int) -> int:
        return self.now_ms - (self.messages - n)  # in the past, increasing

    def rows(self, plugin: str) -> int:
        return self.readings if plugin == "temperature" else 1 + self.cores


def seal_agent(plan: Plan, index: int) -> tuple[int, bytes, list[bytes]]:
    """Enrol agent ``index`` and seal its messages ``index, index + A, ...`` in order.

    Returns (index, public PEM, sealed values). Runs in a worker process when ``jobs > 1``;
    the payloads depend only on the seed and the agent, not on how agents are spread.
    """
    agent = plan.agents[index]
    pem, seal_message = new_agent(plan.sealer, plan.server_public_pem)
    rng = random.Random(f"{plan.seed}:{index}")
    seq: Counter[str] = Counter()
    values = []
    for n in range(index, plan.messages, len(plan.agents)):
        plugin, ts = plan.plugin(n), plan.ts(n)
        if plugin == "temperature":
            data = temperature_payload(rng, plan.readings, ts)
        else:
            data = pu_workload_payload(rng, plan.cores)
        values.append(seal_message({"seq": seq[plugin], "ts": ts, "data": data}, agent, plugin))
        seq[plugin] += 1
    return index, pem, values


def build_workload(
    root: Path,
    messages: int,
    agents: int,
    readings: int,
    cores: int = 4,
    seed: int = 1,
    *,
    jobs: int = 1,
    sealer: str = "sparklem",
) -> Workload:
    """Server key, agent keys and sealed messages; agents are spread over ``jobs`` processes."""
    started = time.perf_counter()
    certificates = root / "certificates"
    create_server_key(certificates, bits=KEY_BITS)
    (certificates / "agents").mkdir(exist_ok=True)
    (certificates / "revoked").mkdir(exist_ok=True)
    ((_kid, server_key),) = load_server_keys(certificates).items()
    suffix = uuid.uuid4().hex[:8]
    plan = Plan(
        messages=messages,
        agents=tuple(f"bench-{suffix}-{n:03d}" for n in range(agents)),
        readings=readings,
        cores=cores,
        seed=seed,
        now_ms=int(time.time() * 1000),
        sealer=sealer,
        server_public_pem=server_key.public_key().export_key(),
    )
    plugins = [plan.plugin(n) for n in range(messages)]
    work = Workload(
        root=root,
        certificates=certificates,
        suffix=suffix,
        agents=list(plan.agents),
        topics={p: f"bench{suffix}.{p}" for p in PLUGINS},
        values=[b""] * messages,
        senders=[plan.agents[n % agents] for n in range(messages)],
        plugins=plugins,
        rows=[plan.rows(p) for p in plugins],
    )
    jobs = min(jobs, agents)
    progress(
        f"sealing {messages} messages of {agents} agents ({KEY_BITS}-bit keys, sealer "
        f"{sealer}) in {jobs} process{'es' if jobs > 1 else ''}"
    )
    task = functools.partial(seal_agent, plan)
    tenth, sealed = max(1, messages // 10), 0
    with contextlib.ExitStack() as stack:
        if jobs > 1:
            pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(jobs))
            done: Iterator[tuple[int, bytes, list[bytes]]] = pool.imap_unordered(
                task, range(agents)
            )
        else:
            done = map(task, range(agents))
        for index, pem, values in done:
            (certificates / "agents" / f"{plan.agents[index]}.pem").write_bytes(pem)
            work.values[index::agents] = values
            if (sealed + len(values)) // tenth > sealed // tenth:
                progress(f"  {sealed + len(values)}/{messages} sealed")
            sealed += len(values)
    work.build_s = time.perf_counter() - started
    size = sum(map(len, work.values)) / messages
    progress(f"built {messages} messages in {work.build_s:.1f}s (mean {size:.0f} bytes)")
    return work


# --------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------


@dataclass
class Result:
    phase: str
    messages: int
    rows: int
    seconds: float
    rss_mib: float | None = None
    note: str = ""

    @property
    def msgs_s(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def readings_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux >= 4.0), so each phase reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _config(work: Workload, url: str, group: str) -> Config:
    config = Config(
        database_url=url,
        certificates=work.certificates,
        plugins={p: {"topic": t} for p, t in work.topics.items()},
        source="benchmark",
    )
    config.kafka = {"bootstrap.servers": "127.0.0.1:9", "group.id": group}
    return config


FLOOR_CHUNK = 10_000  # envelopes parsed ahead of the clock at a time


def run_floor(work: Workload) -> Result:
    registry = AgentRegistry(work.certificates, refresh_s=3600)
    agent_keys = {agent: registry.lookup(agent) for agent in work.agents}
    server_keys = load_server_keys(work.certificates)
    session_keys: dict[tuple[str, str], wire.SessionCipher] = {}
    seconds = 0.0
    reset_peak_rss()
    for start in range(0, len(work.values), FLOOR_CHUNK):
        envelopes = [wire.parse_envelope(v) for v in work.values[start : start + FLOOR_CHUNK]]
        started = time.perf_counter()
        for env in envelopes:
            wire.verify(env, agent_keys[env.agent])
            key = session_keys.get((env.kid, env.ek))
            if key is None:
                key = session_keys[(env.kid, env.ek)] = wire.session_cipher(
                    wire.unwrap_key(env.ek, server_keys[env.kid])
                )
            wire.decrypt(env, key)
        seconds += time.perf_counter() - started
    return Result(
        "floor",
        len(work.values),
        work.total_rows,
        seconds,
        peak_rss_mib(),
        f"verify + decrypt; {len(session_keys)} RSA unwraps",
    )


class StageTimers:
    """Wraps the pipeline's steps with perf_counter accumulators (about 1 µs per call)."""

    def __init__(self) -> None:
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        had_own = name in vars(owner)
        seconds, calls = self.seconds, self.calls

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - started
                calls[label] += 1

        setattr(owner, name, timed)
        self._undo.append(
            (lambda: setattr(owner, name, original)) if had_own else lambda: delattr(owner, name)
        )

    @contextlib.contextmanager
    def timing(self, label: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[label] += time.perf_counter() - started
            self.calls[label] += 1

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def run_engine(
    work: Workload,
    url: str,
    group: str,
    batch_size: int = 500,
    *,
    timers: StageTimers | None = None,
    profiler: cProfile.Profile | None = None,
) -> Result:
    config = _config(work, url, group)
    setup = prepare(config)
    setup.store.create_schema()
    registry = AgentRegistry(work.certificates, config.processor.registry_refresh_s)
    pipeline = setup.pipeline(load_server_keys(work.certificates), registry)
    records = work.records()
    store = setup.store
    total = Stats()
    marks = 0  # stream and partition marks moved: one UPDATE each per batch
    process = pipeline.process
    commit = store.commit
    if timers is not None:
        for name in ("parse_envelope", "verify", "unwrap_key", "decrypt", "parse_plaintext"):
            timers.wrap(wire, name, name)
        timers.wrap(registry, "lookup", "registry.lookup")
        timers.wrap(pipeline.host, "process", "plugin")
    reset_peak_rss()
    try:
        if profiler is not None:
            profiler.enable()
        started = time.perf_counter()
        for start in range(0, len(records), batch_size):
            if timers is None:
                batch, stats = process(records[start : start + batch_size])
                commit(batch)
            else:
                with timers.timing("Pipeline.process"):
                    batch, stats = process(records[start : start + batch_size])
                with timers.timing("Store.commit"):
                    commit(batch)
            pipeline.committed(batch)
            total.add(stats)
            marks += len(batch.streams) + len(batch.offsets)
        seconds = time.perf_counter() - started
        if profiler is not None:
            profiler.disable()
    finally:
        if timers is not None:
            timers.restore()
        store.dispose()
    rss = peak_rss_mib()
    if total.stored != len(records) or total.rejected or total.rows != work.total_rows:
        raise BenchError(
            f"engine stored {total.stored}/{len(records)} messages, {total.rows}/"
            f"{work.total_rows} rows, rejected {dict(total.rejected)}"
        )
    db = "SQLite" if url.startswith("sqlite") else url.split(":", 1)[0]
    batches = -(-len(records) // batch_size)
    return Result(
        "engine",
        len(records),
        total.rows,
        seconds,
        rss,
        f"batches of {batch_size}, {db}, {marks / batches:.0f} marks/batch",
    )


def run_naive(work: Workload, root: Path, count: int) -> Result:
    """Unwrap every session key, one INSERT and one COMMIT per message, plain SQLite."""
    url = f"sqlite:///{root / 'naive.db'}"
    setup = prepare(_config(work, url, f"bench{work.suffix}-naive"))
    engine = create_engine(url)  # SQLite's defaults: rollback journal, synchronous=FULL
    setup.store.metadata.create_all(engine)
    tables = setup.store.metadata.tables
    plugins = setup.plugins.loaded()
    registry = AgentRegistry(work.certificates)
    server_keys = load_server_keys(work.certificates)
    values = work.values[:count]
    rows = 0
    reset_peak_rss()
    started = time.perf_counter()
    for value in values:
        env = wire.parse_envelope(value)
        wire.verify(env, registry.lookup(env.agent))
        key = wire.unwrap_key(env.ek, server_keys[env.kid])  # no cache
        plain = wire.parse_plaintext(wire.decrypt(env, key))
        sent_at = datetime.fromtimestamp(plain.ts / 1000, UTC)
        received_at = datetime.now(UTC)
        message = Message(env.agent, env.plugin, plain.seq, sent_at, plain.data, received_at)
        settings = setup.config.plugins[env.plugin]
        result = setup.plugins.process(plugins[env.plugin], message, settings)
        with engine.begin() as conn:
            for table, table_rows in result.rows.items():
                conn.execute(insert(tables[table]), table_rows)
                rows += len(table_rows)
    seconds = time.perf_counter() - started
    rss = peak_rss_mib()
    engine.dispose()
    setup.store.dispose()
    if rows != work.rows_of(count):
        raise BenchError(f"naive stored {rows} rows, expected {work.rows_of(count)}")
    return Result("naive", len(values), rows, seconds, rss, "unwrap + commit per message")


# --------------------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------------------


def _status_kib(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    found = re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)
    return int(found.group(1)) if found else 0


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the workers under ``run --workers``)."""
    pids, index = [pid], 0
    while index < len(pids):
        for task in Path(f"/proc/{pids[index]}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                pids.extend(int(p) for p in task.read_text().split())
        index += 1
    return pids


def _wait_joined(proc: subprocess.Popen[bytes], log: Path, workers: int, timeout: float) -> None:
    """Until every worker got its assignment and the group stopped rebalancing."""
    deadline = time.monotonic() + timeout
    seen, changed = -1, time.monotonic()
    while True:
        text = log.read_text(errors="replace")
        if proc.poll() is not None:
            raise BenchError(f"processor exited with {proc.returncode}:\n{text[-3000:]}")
        assigned = text.count(" assigned ")
        events = assigned + text.count(" revoked ")
        if events != seen:
            seen, changed = events, time.monotonic()
        if assigned >= workers and (workers == 1 or time.monotonic() - changed >= 2.0):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"processor not assigned within {timeout:.0f}s:\n{text[-3000:]}")
        time.sleep(0.1)


def _stored_messages(engine: Any, group: str) -> int:
    """Messages committed by the group: the sum of its next offsets (topics start at 0)."""
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    text(
                        "SELECT coalesce(sum(next_offset), 0) FROM sparklem_offsets WHERE "
                        "group_id = :g"
                    ),  # fmt: skip
                    {"g": group},
                ).scalar()
            )
    except Exception:
        return 0  # the processor has not created the schema yet


def _stored_rows(url: str, prefix: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return sum(
                int(
                    conn.execute(
                        text(f"SELECT count(*) FROM {table} WHERE agent_id LIKE :p"),
                        {"p": prefix + "%"},
                    ).scalar()
                )
                for table in ("temperature_readings", "pu_workload_readings")
            )
    finally:
        engine.dispose()


def _produce(bootstrap: str, work: Workload) -> float:
    """Send every message, keyed by its agent, and wait for delivery; returns the seconds.

    librdkafka copies each value until the broker acknowledges it; its queue is capped at
    32 MiB so the producer never holds a second copy of the whole workload.
    """
    from confluent_kafka import Producer

    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 5,
            "queue.buffering.max.kbytes": 32 * 1024,
            "log.connection.close": False,
        }
    )
    count, tenth = len(work.values), max(1, len(work.values) // 10)
    started = time.perf_counter()
    for n, (value, agent, plugin) in enumerate(
        zip(work.values, work.senders, work.plugins, strict=True), 1
    ):
        while True:
            try:
                producer.produce(work.topics[plugin], value=value, key=agent.encode())
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
        if n % tenth == 0:
            progress(f"  {n}/{count} produced")
    if producer.flush(60) != 0:
        raise BenchError("records not delivered to the broker within 60 s")
    return time.perf_counter() - started


class ProcessorWatch:
    """Polls the database for the processor's progress and samples its tree's VmRSS."""

    SAMPLE_S = 0.5

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, url: str, group: str) -> None:
        self.proc, self.log, self.group = proc, log, group
        self.engine = create_engine(url)
        self.stored = 0
        self.rss_max_kib = 0
        self._next_sample = 0.0

    def sample(self) -> None:
        if time.monotonic() >= self._next_sample:
            self._next_sample = time.monotonic() + self.SAMPLE_S
            tree_kib = sum(_status_kib(pid, "VmRSS") for pid in _process_tree(self.proc.pid))
            self.rss_max_kib = max(self.rss_max_kib, tree_kib)

    def check_running(self) -> None:
        """BenchError, with the tail of its log, once the processor has exited."""
        if self.proc.poll() is not None:
            raise BenchError(
                f"processor exited with {self.proc.returncode}:\n"
                f"{self.log.read_text(errors='replace')[-3000:]}"
            )

    def until(self, target: int, timeout: float) -> float:
        """Wait until ``target`` messages are stored; returns the perf_counter time it saw it."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + 5
        while True:
            self.sample()
            self.stored = _stored_messages(self.engine, self.group)
            if self.stored >= target:
                return time.perf_counter()
            self.check_running()
            if time.monotonic() > deadline:
                raise BenchError(f"only {self.stored}/{target} messages stored after {timeout}s")
            if time.monotonic() > next_note:
                progress(f"  {self.stored}/{target} stored")
                next_note += 5
            time.sleep(0.05)


def run_e2e(
    work: Workload,
    url: str,
    workers: int | None,
    timeout: float,
    *,
    backlog: bool = False,
    keep_values: int = 0,
) -> tuple[Result, Result, dict[str, Any]]:
    """``main.py run`` against a Tansu broker, then a bare consumer on the same records.

    Live (default): the processor joins its group, then the messages are produced; timed
    from the first produce. ``backlog``: every message is produced first, then the
    processor starts; timed from the first commit seen in the database. Afterwards
    ``work.values`` keeps only its first ``keep_values`` messages (for later phases).
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from sparklem_core.dev.servers import TansuBroker

    root, count = work.root, len(work.values)
    extra: dict[str, Any] = {}
    progress("starting the Tansu broker")
    broker = TansuBroker(log_path=root / "tansu.log").start()
    try:
        topics = list(work.topics.values())
        broker.create_topics(topics, partitions=PARTITIONS)
        group = f"bench{work.suffix}-e2e"
        config = {
            "kafka": {
                "bootstrap.servers": broker.bootstrap,
                "group.id": group,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                "topic.metadata.refresh.interval.ms": 2000,
            },
            "database": {"url": url},
            "certificates": str(work.certificates),
            "plugins": {p: {"topic": t} for p, t in work.topics.items()},
            "processor": {"stats_interval_s": 1, "topic_partitions": PARTITIONS},
        }
        config_path, log_path = root / "processor.yaml", root / "processor.log"
        config_path.write_text(yaml.safe_dump(config))
        command = [sys.executable, str(ROOT / "main.py"), "run", "--config", str(config_path)]
        if workers is not None and workers != 1:
            command += ["--workers", str(workers)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKLEM_")}

        def produce() -> None:
            progress(f"producing {count} messages")
            extra["e2e_produce_s"] = round(_produce(broker.bootstrap, work), 3)
            del work.values[keep_values:]
            progress(f"produced in {extra['e2e_produce_s']:.1f}s")

        if backlog:
            produce()
        progress(f"starting: {' '.join(command[1:])}")
        launched = time.perf_counter()
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root
            )
        try:
            watch = ProcessorWatch(proc, log_path, url, group)
            if backlog:
                first = watch.until(1, timeout)
                already = watch.stored
                progress(f"first commit: {already} messages; waiting for the rest")
                ended = watch.until(count, timeout)
                extra["e2e_start_to_first_commit_s"] = round(first - launched, 3)
                extra["e2e_from_start_s"] = round(ended - launched, 3)
                if already < count:
                    messages, seconds = count - already, ended - first
                    timed = f"backlog, from the first commit seen ({already} stored then, "
                    timed += f"{first - launched:.1f}s after start incl. group join)"
                else:
                    messages, seconds = count, ended - launched
                    timed = "backlog stored in one commit: from processor start"
            else:
                _wait_joined(proc, log_path, workers or 1, timeout=90)
                progress("processor joined its group")
                started = time.perf_counter()
                produce()
                progress("waiting for the database")
                messages, seconds = count, watch.until(count, timeout) - started
                timed = "live, from the first produce"
            tree = _process_tree(proc.pid)
            hwm_kib = sum(_status_kib(pid, "VmHWM") for pid in tree)
            watch.sample()
            extra["e2e_sampled_rss_max_mib"] = round(watch.rss_max_kib / 1024, 1)
            extra["e2e_processor_cpu_s"] = round(sum(_cpu_seconds(pid) for pid in tree), 2)
            extra["e2e_processes"] = len(tree)
            watch.engine.dispose()
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        rows = _stored_rows(url, work.prefix)
        if rows != work.total_rows:
            raise BenchError(f"end-to-end stored {rows} rows, expected {work.total_rows}")
        processes = f"{len(tree)} processes" if len(tree) > 1 else "1 process"
        e2e = Result(
            "end-to-end",
            messages,
            round(rows * messages / count),
            seconds,
            hwm_kib / 1024,
            f"main.py run ({processes}); {timed}; RSS: VmHWM, "
            f"sampled VmRSS max {watch.rss_max_kib / 1024:.0f} MiB",
        )

        progress("bare consume: a plain consumer reads the same records")
        consumer = Consumer(
            {
                "bootstrap.servers": broker.bootstrap,
                "group.id": f"bench{work.suffix}-bare",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "log.connection.close": False,
            }
        )
        assigned = time.perf_counter()
        consumer.assign(
            [TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in range(PARTITIONS)]
        )
        consumed, started, deadline = 0, None, time.monotonic() + timeout
        while consumed < count and time.monotonic() < deadline:
            for msg in consumer.consume(500, 1.0):
                if msg.error() is None and msg.value() is not None:
                    consumed += 1
                    if started is None:
                        started = time.perf_counter()
        ended = time.perf_counter()
        consumer.close()
        if consumed < count or started is None:
            raise BenchError(f"bare consumer read {consumed}/{count} records")
        extra["bare_consume_first_record_s"] = round(started - assigned, 3)
        bare = Result(
            "bare consume",
            consumed,
            work.total_rows,
            ended - assigned,
            None,
            f"Kafka only, from assign(); {started - assigned:.2f}s of it before the first record",
        )
        return e2e, bare, extra
    finally:
        broker.close()


def purge(url: str, work: Workload) -> None:
    """Remove what this run wrote to a database given with --db."""
    engine = create_engine(url)
    statements = [
        (f"DELETE FROM {t} WHERE agent_id LIKE :p", {"p": work.prefix + "%"})
        for t in ("temperature_readings", "pu_workload_readings", "rejected_messages")
    ]
    statements += [
        ("DELETE FROM sparklem_streams WHERE agent_id LIKE :p", {"p": work.prefix + "%"}),
        ("DELETE FROM sparklem_offsets WHERE group_id LIKE :g", {"g": f"bench{work.suffix}-%"}),
    ]
    for sql, params in statements:
        with contextlib.suppress(Exception), engine.begin() as conn:
            conn.execute(text(sql), params)
    engine.dispose()


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


def print_table(results: list[Result], floor: Result | None, per_phase_rss: bool) -> None:
    header = ("phase", "messages", "seconds", "msgs/s", "readings/s", "vs floor", "peak RSS")
    lines = [header]
    for r in results:
        lines.append(
            (
                r.phase,
                str(r.messages),
                f"{r.seconds:.2f}",
                f"{r.msgs_s:,.0f}",
                f"{r.readings_s:,.0f}",
                f"{r.msgs_s / floor.msgs_s:.1%}" if floor and floor.msgs_s else "-",
                f"{r.rss_mib:.0f} MiB" if r.rss_mib is not None else "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]
        note = results[n - 1].note if n else "notes"
        print("  ".join(cells) + "  " + note)
    print(
        "peak RSS: "
        + (
            "each in-process phase's own peak (reset before it), messages included"
            if per_phase_rss
            else "this process's peak so far (getrusage)"
        )
        + "; end-to-end: VmHWM of the processor process(es)"
    )


def figures(results: dict[str, Result], floor: Result | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, r in results.items():
        out[f"{key}_msgs_s"] = round(r.msgs_s, 1)
        out[f"{key}_readings_s"] = round(r.readings_s, 1)
        out[f"{key}_seconds"] = round(r.seconds, 3)
        out[f"{key}_messages"] = r.messages
        if r is not floor:
            vs_floor = r.msgs_s / floor.msgs_s if floor and floor.msgs_s else None
            out[f"{key}_vs_floor"] = None if vs_floor is None else round(vs_floor, 4)
        if r.rss_mib is not None:
            out[f"{key}_peak_rss_mib"] = round(r.rss_mib, 1)
    return out


# --------------------------------------------------------------------------------------
# Profile
# --------------------------------------------------------------------------------------

STAGES = (
    ("parse_envelope", "envelope JSON + base64 checks"),
    ("registry.lookup", "agent key lookup"),
    ("verify", "RSA-PSS verify"),
    ("unwrap_key", "RSA-OAEP unwrap (cache misses)"),
    ("decrypt", "AES-GCM decrypt"),
    ("parse_plaintext", "plaintext JSON"),
    ("plugin", "plugin validation + rows"),
)


def profile(work: Workload, batch_size: int, top: int = 15) -> dict[str, Any]:
    root = work.root
    progress("engine with per-stage timers")
    timers = StageTimers()
    timed = run_engine(
        work, f"sqlite:///{root / 'timers.db'}", f"bench{work.suffix}-t", batch_size, timers=timers
    )
    total = timed.seconds
    process_s = timers.seconds["Pipeline.process"]
    inner = sum(timers.seconds[name] for name, _ in STAGES)
    shares: dict[str, float] = {}
    print(f"engine, per-stage timers: {timed.messages} messages in {total:.2f}s "
          f"({timed.msgs_s:,.0f} msgs/s)")  # fmt: skip
    print(f"{'stage':<18} {'seconds':>8} {'share':>7} {'µs/msg':>8}  what")
    rows = [(name, timers.seconds[name], what) for name, what in STAGES]
    rows.append(("pipeline other", process_s - inner, "batch bookkeeping, seq/offset marks, rows"))
    rows.append(("Store.commit", timers.seconds["Store.commit"], "SQL INSERTs + marks + COMMIT"))
    rows.append(("loop other", total - process_s - timers.seconds["Store.commit"], "committed()"))
    for name, seconds, what in rows:
        shares[name] = round(seconds / total, 4)
        per_msg = seconds / timed.messages * 1e6
        print(f"{name:<18} {seconds:8.3f} {seconds / total:7.1%} {per_msg:8.1f}  {what}")

    progress("engine under cProfile")
    profiler = cProfile.Profile()
    profiled = run_engine(
        work,
        f"sqlite:///{root / 'profile.db'}",
        f"bench{work.suffix}-p",
        batch_size,
        profiler=profiler,
    )
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)  # own time: C calls show as such
    print()
    print(
        f"engine under cProfile: {profiled.seconds:.2f}s ({profiled.msgs_s:,.0f} msgs/s; "
        "the profiler inflates Python-heavy code)"
    )
    print(out.getvalue().rstrip())
    entries = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    top_entries = [
        {
            "function": f"{Path(file).name}:{line}({func})",
            "calls": nc,
            "tottime_s": round(tt, 3),
            "cumtime_s": round(ct, 3),
        }
        for (file, line, func), (_cc, nc, tt, ct, _callers) in entries
    ]
    return {
        "messages": timed.messages,
        "engine_timed_msgs_s": round(timed.msgs_s, 1),
        "engine_profiled_msgs_s": round(profiled.msgs_s, 1),
        "stage_shares": shares,
        "stage_us_per_msg": {
            name: round(seconds / timed.messages * 1e6, 1) for name, seconds, _ in rows
        },
        "profile_top": top_entries,
    }


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


PHASES = ("floor", "engine", "e2e", "naive")


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def _phases(value: str) -> list[str]:
    names = {name.strip() for name in value.split(",") if name.strip()}
    if not names or names - set(PHASES):
        raise argparse.ArgumentTypeError(f"{value!r}: a comma list among {','.join(PHASES)}")
    return [phase for phase in PHASES if phase in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.pipeline",
        description="Processor throughput on realistic PROTOCOL.md messages: crypto floor, "
        "engine (pipeline + SQL), end to end through Kafka and main.py, and a naive baseline.",
        epilog="Prints a table, then one JSON line with every figure. Progress on stderr. "
        "Memory: this process holds every sealed message (about 1.4 KB each, so some 1.4 GB "
        "for 1,000,000), and the Tansu broker keeps them in memory too.",
    )
    cores = os.cpu_count() or 1
    options: list[tuple[str, dict[str, Any], str]] = [
        ("--messages", {"type": _positive, "default": 20_000, "metavar": "N"},
         "messages to build and process (default 20000)"),
        ("--agents", {"type": _positive, "default": 50, "metavar": "A"},
         "agents, one 2048-bit key and one session key each (default 50)"),
        ("--readings", {"type": _positive, "default": 8, "metavar": "R"},
         "readings per temperature message (default 8, at most 1000)"),
        ("--cores", {"type": _positive, "default": 4, "metavar": "C"},
         "per-core entries in pu_workload messages (default 4)"),
        ("--jobs", {"type": _positive, "default": cores, "metavar": "J"},
         f"processes sealing the messages, agents split among them (default: the number "
         f"of cores, {cores})"),
        ("--sealer", {"choices": SEALERS, "default": "sparklem"},
         "who seals the messages: this project's protocol code (default) or "
         "tests/independent_agent.py, an agent written apart from it"),
        ("--phases", {"type": _phases, "default": list(PHASES), "metavar": "LIST"},
         f"comma list of phases to run among {','.join(PHASES)} (default: all)"),
        ("--db", {"metavar": "URL"},
         "SQLAlchemy URL for the engine and end-to-end phases (default: SQLite files in "
         "a temporary directory); the rows this run writes are removed afterwards"),
        ("--workers", {"type": _positive, "metavar": "W"},
         "pass 'run --workers W' to the processor (end-to-end phase)"),
        ("--backlog", {"action": "store_true"},
         "end-to-end: produce every message first, then start the processor on the backlog "
         "(timed from its first commit)"),
        ("--batch-size", {"type": _positive, "default": 500, "metavar": "B"},
         "records per Pipeline.process call in the engine phase (default 500)"),
        ("--naive-messages", {"type": _positive, "default": 300, "metavar": "M"},
         "messages for the naive phase (default 300)"),
        ("--skip-e2e", {"action": "store_true"},
         "skip the broker and subprocess phases (e2e removed from --phases)"),
        ("--profile", {"action": "store_true"},
         "only profile the engine: per-stage timers, then cProfile's top 15 by own time"),
        ("--timeout", {"type": _positive, "default": 300, "metavar": "S"},
         "seconds to wait for each wait of the end-to-end phase (default 300)"),
    ]  # fmt: skip
    for flag, kwargs, help_text in options:
        parser.add_argument(flag, help=help_text, **kwargs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.readings > 1000:
        print("--readings: at most 1000 (PROTOCOL.md)", file=sys.stderr)
        return 2
    phases = [p for p in args.phases if not (args.skip_e2e and p == "e2e")]
    jobs = min(args.jobs, args.agents)
    root = Path(tempfile.mkdtemp(prefix="sparklem-bench-"))
    work: Workload | None = None
    try:
        if args.sealer == "independent":
            independent_agent()  # a missing file fails here, before any key is made
        work = build_workload(
            root,
            args.messages,
            args.agents,
            args.readings,
            args.cores,
            jobs=jobs,
            sealer=args.sealer,
        )
        if args.profile:
            report = profile(work, args.batch_size)
            print(json.dumps(report))
            return 0
        per_phase_rss = reset_peak_rss()
        total_rows = work.total_rows
        results: dict[str, Result] = {}
        extra: dict[str, Any] = {}
        floor: Result | None = None
        if "floor" in phases:
            progress("floor: verify + decrypt")
            results["floor"] = floor = run_floor(work)
            progress(f"floor: {floor.msgs_s:,.0f} msgs/s")
        if "engine" in phases:
            engine_url = args.db or f"sqlite:///{root / 'engine.db'}"
            progress(f"engine: Pipeline.process + Store.commit, batches of {args.batch_size}")
            engine = run_engine(work, engine_url, f"bench{work.suffix}-engine", args.batch_size)
            progress(f"engine: {engine.msgs_s:,.0f} msgs/s")
            results["engine"] = engine
        naive_count = min(args.naive_messages, args.messages)
        if "e2e" in phases:
            if args.db:
                purge(args.db, work)  # the engine's seq marks would make every message a dup
            e2e_url = args.db or f"sqlite:///{root / 'e2e.db'}"
            e2e, bare, extra = run_e2e(
                work,
                e2e_url,
                args.workers,
                args.timeout,
                backlog=args.backlog,
                keep_values=naive_count if "naive" in phases else 0,
            )
            progress(f"end-to-end: {e2e.msgs_s:,.0f} msgs/s; bare consume {bare.msgs_s:,.0f}")
            results["e2e"], results["bare_consume"] = e2e, bare
        if "naive" in phases:
            progress(f"naive: {naive_count} messages, unwrap + commit each")
            results["naive"] = run_naive(work, root, naive_count)
            progress(f"naive: {results['naive'].msgs_s:,.0f} msgs/s")

        print(
            f"{args.messages} messages from {args.agents} agents (half temperature with "
            f"{args.readings} readings, half pu_workload with {args.cores} cores; "
            f"{total_rows / args.messages:.1f} rows/message), sealed by {args.sealer} in "
            f"{work.build_s:.1f}s with {jobs} job{'s' if jobs > 1 else ''}"
        )
        print_table(list(results.values()), floor, per_phase_rss)
        report = {
            "messages": args.messages,
            "agents": args.agents,
            "readings_per_message": round(total_rows / args.messages, 2),
            "workers": args.workers,
            "db": "sqlite (temporary)" if not args.db else args.db.split(":", 1)[0],
            "sealer": args.sealer,
            "jobs": jobs,
            "phases": phases,
            "backlog": args.backlog,
            "build_s": round(work.build_s, 2),
            **{
                f"{phase}_{figure}": None
                for phase in ("floor", "engine", "e2e", "bare_consume", "naive")
                for figure in ("msgs_s", "readings_s")
            },
            **figures(results, floor),
            **extra,
        }
        print(json.dumps(report))
        return 0
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.db and work is not None:
            purge(args.db, work)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
