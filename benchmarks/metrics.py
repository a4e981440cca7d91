"""What the metrics endpoint costs: processor throughput with it on and off.

``python3 -m benchmarks.metrics [--messages N] [--agents A] [--readings R] [--runs K]
[--scrape-every S] [--timeout T] [--together]``

The messages of :mod:`benchmarks.pipeline` are produced once to a Tansu broker; then
``main.py run`` works through that backlog 2K times, K with ``http.listen: ""`` (off)
and K with the endpoint on and scraped every S seconds (on), each run with a new
consumer group and a new SQLite file.

* By default the two runs of a pair go one after the other, the order alternated from
  pair to pair. Each run is timed from its first commit seen in the database until
  every message is stored, and again between 20% and 80% of the backlog stored (the
  steady rate, without the start's and the end's part batches).
* ``--together`` runs a pair's two processors at the same time, timed over one window
  (from when both have stored 20% until the first has stored 80%): what slows the
  machine meanwhile slows both. On this 2-core VM a processor's rate drifts by 10-30%
  from one minute to the next, which one-after-the-other pairs cannot cancel.

The processor's CPU time (all its threads) per message is reported too. Prints each run,
then per figure the median and spread of each side and the median of the per-pair on/off
ratios, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.pipeline import (
    PARTITIONS,
    ROOT,
    BenchError,
    ProcessorWatch,
    Workload,
    _cpu_seconds,
    _produce,
    _stored_rows,
    build_workload,
    progress,
)
from sparklem_core.dev.servers import TansuBroker, _end_process, free_port


@dataclass(frozen=True)
class Run:
    msgs_s: float
    steady_msgs_s: float  # between 20% and 80% of the backlog stored: no start or end
    cpu_ms_per_kmsg: float  # the processor's CPU time (all threads) per 1,000 messages
    scrapes: int


class _Processor:
    """``main.py run`` over the backlog with its own group and SQLite file; when ``on``,
    its endpoint scraped every ``scrape_s`` seconds."""

    def __init__(self, work: Workload, bootstrap: str, n: int, on: bool, scrape_s: float):
        self.on, self.work = on, work
        self.group = f"bench{work.suffix}-m{n}"
        self.url = f"sqlite:///{work.root / f'metrics-{n}.db'}"
        port = free_port()
        config = {
            # A short session: the group forms in ~3 s, not ~23 s (librdkafka's default).
            "kafka": {
                "bootstrap.servers": bootstrap,
                "group.id": self.group,
                "session.timeout.ms": 6000,
            },  # fmt: skip
            "database": {"url": self.url},
            "certificates": str(work.certificates),
            "plugins": {p: {"topic": t} for p, t in work.topics.items()},
            "processor": {"stats_interval_s": 30, "topic_partitions": PARTITIONS},
            "http": {"listen": f"127.0.0.1:{port}" if on else ""},
        }
        config_path, log_path = work.root / f"metrics-{n}.yaml", work.root / f"metrics-{n}.log"
        config_path.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKLEM_")}
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(ROOT / "main.py"), "run", "--config", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=work.root,
            )
        self.watch = ProcessorWatch(self.proc, log_path, self.url, self.group)
        self._stop, self.scrapes = threading.Event(), 0
        if on:
            url = f"http://127.0.0.1:{port}/metrics"
            threading.Thread(target=self._scrape, args=(url, scrape_s), daemon=True).start()

    def _scrape(self, url: str, every_s: float) -> None:
        while not self._stop.wait(every_s):
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    answer.read()
                self.scrapes += 1
            except OSError:
                pass  # not listening yet

    def cpu_s(self) -> float:
        return _cpu_seconds(self.proc.pid)

    def stored(self) -> int:
        """Messages stored so far; BenchError once the processor has exited."""
        self.watch.check_running()
        self.watch.until(0, 0)  # reads the count; target 0 returns at once
        return self.watch.stored

    def end(self) -> None:
        self._stop.set()
        self.watch.engine.dispose()
        _end_process(self.proc, kill=False, timeout=30)

    def check_all_stored(self) -> None:
        if _stored_rows(self.url, self.work.prefix) != self.work.total_rows:
            raise BenchError(f"{self.group} did not store every row")


def run_once(
    work: Workload, bootstrap: str, n: int, on: bool, scrape_s: float, timeout: float
) -> Run:
    """One processor over the whole backlog, timed from its first commit."""
    proc = _Processor(work, bootstrap, n, on, scrape_s)
    count = len(work.values)
    try:
        watch = proc.watch
        first = watch.until(1, timeout)
        cpu_first, already = proc.cpu_s(), watch.stored
        low, high = max(already, count // 5), count * 4 // 5
        at_low = watch.until(low, timeout)
        low = watch.stored
        at_high = watch.until(high, timeout)
        high = watch.stored
        ended = watch.until(count, timeout)
        cpu = proc.cpu_s() - cpu_first
    finally:
        proc.end()
    proc.check_all_stored()
    if already >= count:
        raise BenchError("the backlog was stored in one commit: use more --messages")
    messages = count - already
    steady = (high - low) / (at_high - at_low) if high > low else messages / (ended - first)
    return Run(messages / (ended - first), steady, 1e6 * cpu / messages, proc.scrapes)


def run_together(
    work: Workload, bootstrap: str, n: int, scrape_s: float, timeout: float
) -> tuple[Run, Run]:
    """Two processors, on and off, over the backlog at the same time (their own groups
    and files): both timed over the same window, from when both have stored 20% until
    the first has stored 80%, so that whatever slows the machine meanwhile slows both.
    Returns (on, off); ``msgs_s`` and ``steady_msgs_s`` are both the window's rate."""
    count = len(work.values)
    procs = [_Processor(work, bootstrap, n, True, scrape_s),
             _Processor(work, bootstrap, n + 1, False, scrape_s)]  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while min(p.stored() for p in procs) < count // 5:
            if time.monotonic() > deadline:
                raise BenchError(f"not 20% stored by both after {timeout}s")
            time.sleep(0.05)
        started = time.perf_counter()
        low, cpu_low = [p.watch.stored for p in procs], [p.cpu_s() for p in procs]
        while max(p.stored() for p in procs) < count * 4 // 5:
            if time.monotonic() > deadline:
                raise BenchError(f"not 80% stored by either after {timeout}s")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        high, cpu_high = [p.watch.stored for p in procs], [p.cpu_s() for p in procs]
        for p in procs:
            p.watch.until(count, timeout)
    finally:
        for p in procs:
            p.end()
    runs = []
    for i, p in enumerate(procs):
        p.check_all_stored()
        done = high[i] - low[i]
        if done <= 0:
            raise BenchError(
                f"{p.group} stored nothing within the common window (it commits 500 messages "
                "at a time): use more --messages"
            )
        rate = done / seconds
        runs.append(Run(rate, rate, 1e6 * (cpu_high[i] - cpu_low[i]) / done, p.scrapes))
    return runs[0], runs[1]


def bookkeeping_us_per_batch(batch_size: int = 500, repeat: int = 2000) -> dict[str, float]:
    """In-process cost of what the loop adds per batch when metrics are on, in µs.

    What the loop calls for a committed batch of ``batch_size`` records over 2 topics,
    2 plugins and 2 tables: the lag tracker per record, then per batch the tracker and
    the counters fed from the batch's Stats; and one scrape of the exposition.
    """
    from collections import Counter

    from prometheus_client import generate_latest

    from sparklem_core.db.batch import OffsetMark, PartitionKey
    from sparklem_core.processor.metrics import LagTracker, Metrics, Snapshot
    from sparklem_core.processor.pipeline import Stats

    lag = LagTracker()
    keys = [PartitionKey(f"topic{t}", p) for t in range(2) for p in range(PARTITIONS)]
    lag.assigned(keys)
    lag.sampled({k: 10**9 for k in keys})
    metrics = Metrics(
        lambda: Snapshot(lag.lags(), {"active": 100, "revoked": 2}, 10, 2, {"a": True, "b": True}),
        ["topic0", "topic1"],
        ["a", "b"],
    )
    stats = Stats(
        Counter({"topic0": batch_size // 2, "topic1": batch_size // 2}),
        Counter({"a": batch_size // 2, "b": batch_size // 2}),
        Counter({"a_rows": 4 * batch_size, "b_rows": batch_size // 2}),
        Counter({("malformed", ""): 1}),
    )
    marks = {k: OffsetMark(None, 1000, None) for k in keys}
    started = time.perf_counter()
    for n in range(repeat):
        firsts: dict[tuple[str, int], int] = {}
        for i in range(batch_size):  # as Processor._consume does
            firsts.setdefault(tuple(keys[i % len(keys)]), n * batch_size + i)
        lag.consumed(firsts)
        lag.stored(marks)
        metrics.batch_committed(stats, 0.05)
        metrics.commit_seconds.observe(0.01)
    per_batch = (time.perf_counter() - started) / repeat * 1e6
    started = time.perf_counter()
    for _ in range(200):
        generate_latest(metrics.registry)
    per_scrape = (time.perf_counter() - started) / 200 * 1e6
    return {"per_batch_us": round(per_batch, 1), "per_scrape_us": round(per_scrape, 1)}


def summary(values: list[float]) -> dict[str, float]:
    """Median, extremes, and the spread (max - min) as a percentage of the median."""
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 4),
        "min": round(ordered[0], 4),
        "max": round(ordered[-1], 4),
        "spread_pct": round(100 * (ordered[-1] - ordered[0]) / statistics.median(ordered), 1),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.metrics",
        description="Processor throughput with the metrics endpoint on and off, interleaved.",
    )
    parser.add_argument("--messages", type=int, default=20_000, help="backlog size")
    parser.add_argument("--agents", type=int, default=20, help="enrolled agents")
    parser.add_argument("--readings", type=int, default=8, help="readings per temperature msg")
    parser.add_argument("--runs", type=int, default=5, help="pairs of runs (on and off)")
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes")
    parser.add_argument("--timeout", type=float, default=600, help="longest run, seconds")
    parser.add_argument(
        "--together",
        action="store_true",
        help="run each pair's two processors at the same time, timed over one window "
        "(what slows the machine meanwhile slows both), instead of one after the other",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.messages, args.agents, args.readings, args.runs) < 1 or args.scrape_every <= 0:
        print("benchmarks.metrics: every number must be positive", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="sparklem-bench-metrics-"))
    try:
        work = build_workload(root, args.messages, args.agents, args.readings)
        with TansuBroker(log_path=root / "tansu.log") as broker:
            broker.create_topics(list(work.topics.values()), partitions=PARTITIONS)
            progress(f"producing {len(work.values)} messages once")
            _produce(broker.bootstrap, work)
            runs: dict[str, list[Run]] = {"off": [], "on": []}
            for pair in range(args.runs):
                if args.together:
                    on_run, off_run = run_together(
                        work, broker.bootstrap, 2 * pair, args.scrape_every, args.timeout
                    )
                    done = [(2 * pair, True, on_run), (2 * pair + 1, False, off_run)]
                else:
                    done = []
                    for on in (pair % 2 == 0, pair % 2 == 1):  # on first, then off first, ...
                        n = 2 * pair + on
                        done.append((n, on, run_once(
                            work, broker.bootstrap, n, on, args.scrape_every, args.timeout
                        )))  # fmt: skip
                for n, on, run in done:
                    side = "on" if on else "off"
                    runs[side].append(run)
                    print(
                        f"run {n:2d} metrics {side:3s}: {run.msgs_s:9,.0f} msgs/s "
                        f"({run.steady_msgs_s:,.0f} from 20% to 80%), "
                        f"{run.cpu_ms_per_kmsg:6.0f} CPU ms per 1,000 msgs",
                        flush=True,
                    )
        report: dict[str, Any] = {
            "messages": len(work.values),
            "runs_per_side": args.runs,
            "together": args.together,
        }
        report["bookkeeping"] = bookkeeping = bookkeeping_us_per_batch()
        print(
            f"in-process, metrics on: {bookkeeping['per_batch_us']:,.0f} µs per batch of 500 "
            f"records, {bookkeeping['per_scrape_us']:,.0f} µs per scrape"
        )
        report["scrape_every_s"] = args.scrape_every
        report["scrapes"] = sum(r.scrapes for r in runs["on"])
        for figure, unit in (
            ("msgs_s", "msgs/s"),
            ("steady_msgs_s", "msgs/s from 20% to 80% stored"),
            ("cpu_ms_per_kmsg", "CPU ms/1,000 msgs"),
        ):
            for side in ("off", "on"):
                values = [getattr(r, figure) for r in runs[side]]
                report[f"{side}_{figure}"] = summary(values)
                report[f"{side}_{figure}_runs"] = [round(v, 1) for v in values]
                s = report[f"{side}_{figure}"]
                print(
                    f"metrics {side:3s}: {unit} median {s['median']:,.1f}, min {s['min']:,.1f}, "
                    f"max {s['max']:,.1f}, spread {s['spread_pct']}%"
                )
            # Each pair ran back to back or together: its ratio cancels the machine's drift.
            ratios = [
                getattr(on, figure) / getattr(off, figure)
                for on, off in zip(runs["on"], runs["off"], strict=True)
            ]
            report[f"{figure}_on_off_pair_ratio"] = ratio = summary(ratios)
            # The mean's 95% interval (normal approximation): what the pairs can resolve.
            half = 1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0
            ratio["mean"], ratio["mean_ci95"] = round(statistics.mean(ratios), 4), round(half, 4)
            print(
                f"  on/off per pair: median {ratio['median']:.3f} "
                f"(from {min(ratios):.3f} to {max(ratios):.3f}), "
                f"mean {ratio['mean']:.3f} ± {half:.3f} (95%)"
            )
        print(json.dumps(report))
        return 0
    except BenchError as exc:
        print(f"benchmarks.metrics: {exc}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
