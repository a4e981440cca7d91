"""The read API's speed: latest values, one agent's day in 1-minute buckets, the stream.

``python3 -m benchmarks.api [--rows N] [--agents A] [--days D] [--db sqlite,postgresql]
[--requests K] [--clients C] [--seconds S] [--rate R]``

For each database (SQLite in a temporary directory; PostgreSQL a private ``LocalPostgres``):
``temperature_readings`` (the real plugin's table) is filled by SQL with N rows from A
agents (two sensors each) over D days (~0.5M rows/s: its indexes are built after the fill,
and checked to be the declared ones; on PostgreSQL then ANALYZEd), then one batch through
``Store.commit`` stores a reading per agent and sensor (which fills ``sparklem_latest``
as the processor does). ``python3 main.py serve`` runs as a process of its own. Measured
over HTTP, with a client in this process:

* ``latest_all``: ``GET /readings/temperature`` without filters (every agent), K times;
* ``agent_day_1m``: ``GET /aggregate/temperature?agent=X&bucket=1m`` over one day, K
  random agents;
* ``stream``: C clients on ``/stream``, each filtered to one agent, while batches of 2,000
  readings are committed as fast as the database takes them (or R rows/s), each carrying one
  reading for one of the C agents: the time from the commit's return to its arrival.

Prints a line per database, then one JSON line with every figure (p50, p95, p99 in ms).
Nothing is asserted: the issue's bars are latest p95 <= 200 ms and day p95 <= 50 ms at
10M rows / 10k agents, stream p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import inspect, text

from benchmarks.databases import ROOT, database, new_store
from sparklem_core.db.batch import Batch
from sparklem_core.db.store import Store
from sparklem_core.processor.metrics_server import free_port

TABLE = "temperature_readings"
INGEST_BATCH = 2000
DAY0 = datetime(2026, 11, 1, tzinfo=UTC)
FILL = {
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT :first UNION ALL SELECT i + 1 FROM n WHERE i < :last) "
        "INSERT INTO temperature_readings (agent_id, seq, sensor, celsius, measured_at, "
        "received_at) SELECT 'agent-' || (i % :agents), i, "
        "CASE i % 2 WHEN 0 THEN 'cpu_thermal' ELSE 'board' END, 20 + (i % 50), "
        "datetime(:day0, '+' || (i * :step / 1000) || ' seconds') || '.000000', :day0 FROM n"
    ),
    "postgresql": (
        "INSERT INTO temperature_readings (agent_id, seq, sensor, celsius, measured_at, "
        "received_at) SELECT 'agent-' || (i % :agents), i, "
        "CASE i % 2 WHEN 0 THEN 'cpu_thermal' ELSE 'board' END, 20 + (i % 50), "
        "CAST(:day0 AS timestamptz) + (i * :step / 1000) * interval '1 second', "
        "CAST(:day0 AS timestamptz) FROM generate_series(:first, :last) i"
    ),
}


@dataclass(frozen=True)
class Figures:
    database: str
    rows: int
    agents: int
    fill_s: float
    latest_items: int
    latest_p50_ms: float
    latest_p95_ms: float
    day_points: int
    day_p50_ms: float
    day_p95_ms: float
    stream_clients: int
    stream_events: int
    stream_p50_ms: float | None
    stream_p99_ms: float | None
    ingest_rows_s: float


def progress(message: str) -> None:
    print(f"[api bench] {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 2)


def fill(store: Store, rows: int, agents: int, days: int) -> None:
    """``rows`` readings by SQL on the server, evenly over ``days`` days from DAY0.

    The table's indexes are dropped for the fill and built again after it (the same
    ones, from the plugin's declaration): inserting 10M rows into an index on
    (agent_id, measured_at) in agent order is random writes, several times slower.
    """
    step_ms = max(1, days * 86_400_000 // max(rows, 1))
    stamp = DAY0.strftime("%Y-%m-%d %H:%M:%S")
    table = store.metadata.tables[TABLE]
    indexes = sorted(table.indexes, key=lambda index: index.name or "")
    declared = inspect(store.engine).get_indexes(TABLE)
    with store.engine.begin() as conn:
        for index in indexes:
            index.drop(conn)
    chunk, started = 1_000_000, time.perf_counter()
    for first in range(0, rows, chunk):
        last = min(rows, first + chunk) - 1
        with store.engine.begin() as conn:
            conn.execute(text(FILL[store.engine.dialect.name]),
                         {"first": first, "last": last, "agents": agents, "step": step_ms,
                          "day0": stamp})  # fmt: skip
        elapsed = time.perf_counter() - started
        progress(f"filled {last + 1:,} of {rows:,} ({(last + 1) / elapsed:,.0f} rows/s)")
    for index in indexes:
        began = time.perf_counter()
        with store.engine.begin() as conn:
            index.create(conn)
        progress(f"index {index.name} built in {time.perf_counter() - began:.1f} s")
    if inspect(store.engine).get_indexes(TABLE) != declared:
        raise RuntimeError(f"{TABLE}'s indexes differ from its declaration's after the fill")
    if store.engine.dialect.name == "postgresql":  # the planner's statistics, as autovacuum
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text(f"ANALYZE {TABLE}"))  # would have them
    now = datetime.now(UTC)
    latest = [
        {"agent_id": f"agent-{a}", "seq": rows + a, "sensor": sensor, "celsius": 40.0,
         "measured_at": now, "received_at": now}
        for a in range(agents) for sensor in ("cpu_thermal", "board")
    ]  # fmt: skip
    for start in range(0, len(latest), 10_000):
        store.commit(Batch(rows={TABLE: latest[start : start + 10_000]}))


class Serve:
    """``python3 main.py serve`` on a free port, as a process of its own."""

    def __init__(self, url: str, directory: Path) -> None:
        config = directory / "config.yaml"
        (directory / "certs" / "agents").mkdir(parents=True, exist_ok=True)
        (directory / "certs" / "revoked").mkdir(exist_ok=True)
        config.write_text(yaml.safe_dump({
            "database": {"url": url}, "certificates": str(directory / "certs"),
            "plugins": {"pu_workload": {"enabled": False}},
        }))  # fmt: skip
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = open(directory / "serve.log", "wb")  # noqa: SIM115  # closed in stop
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sparklem_core.cli", "serve", "--config", str(config),
             "--listen", self.url.removeprefix("http://")],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/api/v1/plugins", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"serve did not start; see {directory / 'serve.log'}")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


def timed(client: httpx.Client, path: str, params: dict[str, Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    answer = client.get(path, params=params)
    elapsed = (time.perf_counter() - started) * 1000
    answer.raise_for_status()
    return elapsed, answer.json()


def stream_latency(
    store: Store, url: str, clients: int, agents: int, seconds: float, rate: float
) -> tuple[list[float], float]:
    """Delivery delays (ms) to ``clients`` filtered clients while ingesting; rows/s stored."""
    watched = [f"agent-{a}" for a in random.Random(3).sample(range(agents), clients)]
    committed: dict[float, float] = {}
    delays: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    ready = threading.Barrier(clients + 1)

    def listen(agent: str) -> None:
        with contextlib.suppress(httpx.HTTPError):  # serve stopped at the end
            follow(agent)

    def follow(agent: str) -> None:
        with httpx.stream("GET", f"{url}/api/v1/stream", params={"agent": agent},
                          timeout=httpx.Timeout(60.0)) as answer:  # fmt: skip
            lines = answer.iter_lines()
            for line in lines:
                if line.startswith("retry:"):
                    break
            ready.wait()
            for line in lines:
                if stop.is_set():
                    return
                if line.startswith("data: "):
                    arrived = time.perf_counter()
                    marker = json.loads(line[6:])["data"]["row"]["celsius"]
                    with lock:
                        if marker in committed:
                            delays.append(max(0.0, arrived - committed[marker]) * 1000)

    threads = [threading.Thread(target=listen, args=(a,), daemon=True) for a in watched]
    for thread in threads:
        thread.start()
    ready.wait()
    stored, n, started = 0, 0, time.perf_counter()
    rng = random.Random(5)
    while time.perf_counter() - started < seconds:
        n += 1
        now = datetime.now(UTC)
        rows = [
            {"agent_id": f"agent-{rng.randrange(agents)}", "seq": n * INGEST_BATCH + i,
             "sensor": "cpu_thermal", "celsius": 30.0, "measured_at": now, "received_at": now}
            for i in range(INGEST_BATCH - 1)
        ]  # fmt: skip
        marker = 1000.0 + n  # the value says which batch the reading came in
        rows.append({"agent_id": watched[n % clients], "seq": n * INGEST_BATCH - 1,
                     "sensor": "board", "celsius": marker, "measured_at": now,
                     "received_at": now})  # fmt: skip
        store.commit(Batch(rows={TABLE: rows}))
        with lock:
            committed[marker] = time.perf_counter()
        stored += len(rows)
        if rate:  # hold the rate: sleep until this batch's share of time has passed
            time.sleep(max(0.0, started + stored / rate - time.perf_counter()))
    elapsed = time.perf_counter() - started
    time.sleep(2)  # the last batches' events still on their way
    stop.set()
    with lock:
        return list(delays), stored / elapsed


def measure(name: str, url: str, args: argparse.Namespace, directory: Path) -> Figures:
    store = new_store(url)
    try:
        started = time.perf_counter()
        fill(store, args.rows, args.agents, args.days)
        fill_s = time.perf_counter() - started
        serve = Serve(url, directory)
        try:
            rng = random.Random(1)
            with httpx.Client(base_url=serve.url, timeout=60) as client:
                latest_ms, items = [], 0
                for _ in range(args.requests):
                    ms, body = timed(client, "/api/v1/readings/temperature", {})
                    latest_ms.append(ms)
                    items = len(body["latest"])
                day_ms, points = [], 0
                for _ in range(args.requests):
                    day = DAY0 + timedelta(days=rng.randrange(args.days))
                    until = day + timedelta(days=1)
                    params = {"field": "celsius", "agg": "avg", "bucket": "1m",
                              "agent": f"agent-{rng.randrange(args.agents)}",
                              "from": day.isoformat(), "to": until.isoformat()}  # fmt: skip
                    ms, body = timed(client, "/api/v1/aggregate/temperature", params)
                    day_ms.append(ms)
                    points += sum(len(g["points"]) for g in body["groups"])
            delays, ingest = ([], 0.0)
            if args.clients:
                delays, ingest = stream_latency(
                    store, serve.url, args.clients, args.agents, args.seconds, args.rate
                )
        finally:
            serve.stop()
    finally:
        store.dispose()
    return Figures(
        name, args.rows, args.agents, round(fill_s, 1), items,
        percentile(latest_ms, 50), percentile(latest_ms, 95),
        points // max(args.requests, 1), percentile(day_ms, 50), percentile(day_ms, 95),
        args.clients, len(delays),
        percentile(delays, 50) if delays else None, percentile(delays, 99) if delays else None,
        round(ingest),
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.api",
        description="The read API's latency: latest values, a day in 1-minute buckets, the "
        "stream under ingestion.",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows seeded (default 1M)")
    parser.add_argument("--agents", type=int, default=10_000, help="agents (default 10,000)")
    parser.add_argument("--days", type=int, default=7, help="days the rows span (default 7)")
    parser.add_argument(
        "--db", default="sqlite,postgresql", help="comma list: sqlite, postgresql (default both)"
    )
    parser.add_argument("--requests", type=int, default=50, help="requests per query (50)")
    parser.add_argument("--clients", type=int, default=100, help="stream clients (100; 0: none)")
    parser.add_argument("--seconds", type=float, default=10.0, help="stream test length (10 s)")
    parser.add_argument(
        "--rate", type=float, default=0, help="rows/s stored during the stream test (0: all)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.clients <= args.agents:
        build_parser().error("--clients must be between 0 and --agents")
    figures: list[Figures] = []
    for name in args.db.split(","):
        try:
            with database(name) as (url, tmp):
                figures.append(measure(name, url, args, tmp))
        except ValueError as exc:
            build_parser().error(str(exc))
        f = figures[-1]
        print(
            f"{f.database:<10} {f.rows:,} rows, {f.agents:,} agents: latest ({f.latest_items:,} "
            f"series) p50 {f.latest_p50_ms} ms p95 {f.latest_p95_ms} ms; a day in 1m buckets "
            f"({f.day_points} points) p50 {f.day_p50_ms} ms p95 {f.day_p95_ms} ms; stream "
            f"{f.stream_clients} clients, {f.stream_events} events p50 {f.stream_p50_ms} ms "
            f"p99 {f.stream_p99_ms} ms while storing {f.ingest_rows_s:,} rows/s",
            flush=True,
        )
    print(json.dumps({"results": [asdict(f) for f in figures]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
