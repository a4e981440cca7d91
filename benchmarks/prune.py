"""Ingestion while the pruner deletes a large backlog of old rows.

``python3 -m benchmarks.prune [--rows N] [--db sqlite,postgresql] [--window S]
[--alternate S] [--batch-rows B] [--batch-s S] [--busy-fraction F] [--max-prune-s S]``

For each database (SQLite in a temporary directory; PostgreSQL a private
``LocalPostgres``): ``temperature_readings`` (the real plugin's table, indexes included)
is filled with N rows measured and stored 100 days ago (a pass of the pruner then records
their arrival, with its clock set back), and retention is ``30d``. Ingestion is a loop of
``Store.commit`` batches of 2,000 fresh readings, as fast as the database takes them
(the worst case: a processor that is never idle). Measured:

* ``alone``: ingestion rate without pruning, ``--window`` seconds before the pruner
  starts and again after it has finished (the mean of both, so that drift shows);
* ``while pruning``: ingestion rate from the pruner's start until it has deleted all N
  rows, and the pruner's own rate.

Ingestion's rate drifts on a shared VM (10-30 % from one minute to the next) and falls as
the table grows, so two 10 s windows around a prune of several minutes are a rough
baseline. ``--alternate S`` measures instead in phases of S seconds, the pruner at work
and paused by turns until every old row is gone (a paused pass stops after its batch; the
next carries on): ``alone`` is then the rate over the paused phases, ``while pruning``
over the others, and each working phase's ratio to the mean of the paused phases either
side of it is summed up (median, mean and its 95 % interval). Both sides then meet the
same drift and the same table sizes.

While the pruner runs, a progress line goes to stderr every 10 s (rows pruned so far,
their rate, ingestion's rate over those 10 s). A prune still running after
``--max-prune-s`` is stopped: the figures are then those of the rows it did prune, and
say it did not finish. Prints a line per database, then one JSON line with every figure.
Nothing is asserted: the issue's bar is ``ratio >= 0.8``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial

from sqlalchemy import func, select, text

from benchmarks.databases import database, new_store
from sparklem_core.db.batch import Batch
from sparklem_core.db.store import Store
from sparklem_core.processor.retention import PassReport, Pruner, targets
from sparklem_core.settings.config import ProcessorSettings
from sparklem_core.settings.validation import SchemaError, validate

TABLE = "temperature_readings"
KEEP = timedelta(days=30)
INGEST_BATCH = 2000
#: The pruner's settings the benchmark takes as options: flag -> processor setting.
SETTINGS = {
    "--batch-rows": "prune_batch_rows",
    "--batch-s": "prune_batch_s",
    "--busy-fraction": "prune_busy_fraction",
}
# Filled by SQL on the server side: 5 million rows through Python would take longer than
# the measurement.
FILL = {
    "sqlite": (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :count) "
        "INSERT INTO temperature_readings (agent_id, seq, sensor, celsius, measured_at, "
        "received_at) SELECT 'old-' || (i % 1000), i, 'cpu', 20.5, :at, :at FROM n"
    ),
    "postgresql": (
        "INSERT INTO temperature_readings (agent_id, seq, sensor, celsius, measured_at, "
        "received_at) SELECT 'old-' || (i % 1000), i, 'cpu', 20.5, "
        "CAST(:at AS timestamptz), CAST(:at AS timestamptz) FROM generate_series(1, :count) i"
    ),
}


@dataclass(frozen=True)
class Figures:
    database: str
    old_rows: int
    fill_s: float
    alone_rows_s: float  # mean of before and after
    alone_before_rows_s: float
    alone_after_rows_s: float
    pruning_rows_s: float
    ratio: float
    pruned: int
    prune_s: float
    prune_rows_s: float
    finished: bool  # False: stopped at --max-prune-s with old rows left
    phases: int = 0  # --alternate: working phases (0: one prune from start to end)
    pair_ratios: dict[str, float] = field(default_factory=dict)  # --alternate: summed up


def progress(message: str) -> None:
    print(f"[prune bench] {message}", file=sys.stderr, flush=True)


def fill(store: Store, count: int, at: datetime) -> None:
    stamp = at.strftime("%Y-%m-%d %H:%M:%S.%f")
    if store.engine.dialect.name == "postgresql":
        stamp += "+00"
    step = 500_000
    for start in range(0, count, step):
        with store.engine.begin() as conn:
            conn.execute(text(FILL[store.engine.dialect.name]),
                         {"count": min(step, count - start), "at": stamp})  # fmt: skip
        progress(f"filled {min(start + step, count):,} of {count:,}")


class Ingest(threading.Thread):
    """Commits batches of fresh readings until stopped; counts rows per phase."""

    def __init__(self, store: Store) -> None:
        super().__init__(daemon=True)
        self.store = store
        self.rows = 0
        self.stopped = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        seq = 0
        try:
            while not self.stopped.is_set():
                now = datetime.now(UTC)
                rows = [
                    {"agent_id": f"a{i % 200}", "seq": seq + i, "sensor": "cpu",
                     "celsius": 40.0, "measured_at": now, "received_at": now}
                    for i in range(INGEST_BATCH)
                ]  # fmt: skip
                seq += INGEST_BATCH
                self.store.commit(Batch(rows={TABLE: rows}))
                self.rows += INGEST_BATCH
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def rate_over(self, wait: Callable[[], None]) -> float:
        """Rows per second committed while ``wait()`` runs."""
        rows, seconds = self.count_over(wait)
        return rows / seconds

    def count_over(self, wait: Callable[[], None]) -> tuple[int, float]:
        """Rows committed while ``wait()`` runs, and the seconds it ran."""
        rows, started = self.rows, time.monotonic()
        wait()
        return self.rows - rows, time.monotonic() - started


PROGRESS_EVERY_S = 10.0


def prune_watched(pruner: Pruner, ingest: Ingest, old_rows: int, limit_s: float) -> bool:
    """One pass of ``pruner``, saying how it goes every 10 s; stopped after ``limit_s``.

    Whether the pass finished.
    """
    report: list[PassReport] = []
    worker = threading.Thread(target=lambda: report.append(pruner.run_pass()), daemon=True)
    started = time.monotonic()
    worker.start()
    rows, at = ingest.rows, started
    while worker.is_alive():
        left_s = started + limit_s - time.monotonic()
        if left_s <= 0:
            progress(f"still pruning after --max-prune-s {limit_s:g}: stopping the pruner")
            pruner.stop.set()
            worker.join()
            break
        worker.join(min(PROGRESS_EVERY_S, left_s))
        now = time.monotonic()
        progress(
            f"pruned {pruner.deleted:,} of {old_rows:,} in {now - started:.0f} s "
            f"({pruner.deleted / (now - started):,.0f} rows/s); ingesting "
            f"{(ingest.rows - rows) / (now - at):,.0f} rows/s"
        )
        rows, at = ingest.rows, now
    return bool(report) and all(t.finished for t in report[0].tables)


@dataclass
class Phases:
    """Ingestion with the pruner at work (on) and paused (off): (rows, seconds) of each
    phase; the paused ones are one more, either side of every working one."""

    on: list[tuple[int, float]] = field(default_factory=list)
    off: list[tuple[int, float]] = field(default_factory=list)
    finished: bool = False

    @staticmethod
    def rate(phases: list[tuple[int, float]]) -> float:
        return sum(rows for rows, _ in phases) / sum(seconds for _, seconds in phases)

    @property
    def on_s(self) -> float:
        return sum(seconds for _, seconds in self.on)

    def pair_ratios(self, phase_s: float) -> list[float]:
        """Each working phase's rate over the mean of the paused ones either side, but for
        a last one cut short (under half a phase) by the end of the prune."""
        return [
            self.rate([on]) / ((self.rate([self.off[i]]) + self.rate([self.off[i + 1]])) / 2)
            for i, on in enumerate(self.on)
            if on[1] >= phase_s / 2
        ]


def pass_for(pruner: Pruner, report: list[PassReport], limit_s: float) -> None:
    """A pass of ``pruner``, stopped after ``limit_s`` (the batch in progress ends whole)."""
    worker = threading.Thread(target=lambda: report.append(pruner.run_pass()), daemon=True)
    worker.start()
    worker.join(limit_s)
    pruner.stop.set()
    worker.join()


def prune_alternating(
    pruner: Pruner, ingest: Ingest, old_rows: int, phase_s: float, limit_s: float
) -> Phases:
    """Passes of ``pruner`` cut into ``phase_s`` pieces, each followed by as long paused,
    the first preceded by one; until a pass finishes or ``limit_s`` of pruning."""
    phases = Phases()

    def paused() -> None:
        phases.off.append(ingest.count_over(lambda: time.sleep(phase_s)))

    paused()
    while not phases.finished and phases.on_s < limit_s:
        report: list[PassReport] = []
        pruner.stop.clear()
        phases.on.append(
            ingest.count_over(
                partial(pass_for, pruner, report, min(phase_s, limit_s - phases.on_s))
            )
        )
        phases.finished = bool(report) and all(t.finished for t in report[0].tables)
        paused()
        progress(
            f"pruned {pruner.deleted:,} of {old_rows:,} in {phases.on_s:.0f} s of pruning; "
            f"ingesting {phases.rate(phases.on[-1:]):,.0f} rows/s pruning, "
            f"{phases.rate(phases.off[-2:-1]):,.0f} and {phases.rate(phases.off[-1:]):,.0f} "
            "paused either side"
        )
    return phases


def summed_up(ratios: list[float]) -> dict[str, float]:
    if not ratios:
        return {}
    half = 1.96 * statistics.stdev(ratios) / len(ratios) ** 0.5 if len(ratios) > 1 else 0.0
    return {
        "n": len(ratios),
        "median": round(statistics.median(ratios), 3),
        "mean": round(statistics.fmean(ratios), 3),
        "ci95": round(half, 3),
    }


def measure(
    name: str,
    url: str,
    count: int,
    window: float,
    settings: ProcessorSettings,
    limit_s: float,
    alternate_s: float = 0.0,
) -> Figures:
    store = new_store(url)
    try:
        long_ago = datetime.now(UTC) - timedelta(days=100)
        started = time.monotonic()
        fill(store, count, long_ago)
        with store.engine.begin() as conn:
            if store.engine.dialect.name == "postgresql":
                conn.execute(text(f"ANALYZE {TABLE}"))
        fill_s = time.monotonic() - started
        bounded = targets(store, {TABLE: KEEP})
        # A pass on the day they were stored records their arrival (and prunes nothing).
        Pruner(store, bounded, settings, clock=lambda: long_ago).run_pass()
        ingest = Ingest(store)
        ingest.start()
        time.sleep(1.0)  # warm: the first batches prepare statements
        pruner = Pruner(store, bounded, settings)
        if alternate_s:
            progress(f"pruning {count:,} old rows in phases of {alternate_s:g} s")
            phases = prune_alternating(pruner, ingest, count, alternate_s, limit_s)
            finished, prune_s = phases.finished, phases.on_s
            before, after = phases.rate(phases.off[:1]), phases.rate(phases.off[-1:])
            alone, pruning = phases.rate(phases.off), phases.rate(phases.on)
            phase_count, pairs = len(phases.on), summed_up(phases.pair_ratios(alternate_s))
        else:
            before = ingest.rate_over(lambda: time.sleep(window))
            progress(f"ingestion alone: {before:,.0f} rows/s; pruning {count:,} old rows")
            done: list[bool] = []
            prune_started = time.monotonic()
            pruning = ingest.rate_over(
                lambda: done.append(prune_watched(pruner, ingest, count, limit_s))
            )
            finished, prune_s = done[0], time.monotonic() - prune_started
            after = ingest.rate_over(lambda: time.sleep(window))
            alone = (before + after) / 2
            phase_count, pairs = 0, {}
        ingest.stopped.set()
        ingest.join()
        if ingest.error is not None:
            raise ingest.error
        with store.engine.connect() as conn:
            left = conn.execute(
                select(func.count()).select_from(store.metadata.tables[TABLE])
                .where(store.metadata.tables[TABLE].c.measured_at < long_ago + timedelta(days=1))
            ).scalar_one()  # fmt: skip
        if left and finished:
            raise RuntimeError(f"{left} old rows were not pruned")
        pruned = pruner.deleted
        return Figures(
            name, count, round(fill_s, 1), round(alone), round(before), round(after),
            round(pruning), round(pruning / alone, 3), pruned, round(prune_s, 1),
            round(pruned / prune_s) if prune_s else 0, finished, phase_count, pairs,
        )  # fmt: skip
    finally:
        store.dispose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.prune",
        description="Ingestion rate while the pruner deletes N old rows, against without.",
    )
    parser.add_argument("--rows", type=int, default=5_000_000, help="old rows (default 5M)")
    parser.add_argument(
        "--db", default="sqlite,postgresql", help="comma list: sqlite, postgresql (default both)"
    )
    parser.add_argument(
        "--window", type=float, default=10.0, help="seconds of ingestion alone, before and after"
    )
    parser.add_argument(
        "--alternate",
        type=float,
        default=0.0,
        metavar="S",
        help="measure in phases of S seconds, pruning and paused by turns (default 0: "
        "one prune from start to end between two --window measurements)",
    )
    defaults = ProcessorSettings()
    for flag, setting in SETTINGS.items():
        default = getattr(defaults, setting)
        parser.add_argument(
            flag,
            dest=setting,
            type=type(default),
            default=default,
            help=f"processor.{setting}: {ProcessorSettings.model_fields[setting].description} "
            f"(default {default:g})",
        )
    parser.add_argument(
        "--max-prune-s",
        type=float,
        default=1800.0,
        help="stop the pruner after this long and report what it pruned (default 1800)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = validate(
            ProcessorSettings,
            {setting: getattr(args, setting) for setting in SETTINGS.values()},
            "processor",
        )
    except SchemaError as exc:
        build_parser().error(str(exc))
    figures: list[Figures] = []
    for name in args.db.split(","):
        try:
            with database(name) as (url, _tmp):
                figures.append(
                    measure(
                        name, url, args.rows, args.window, settings, args.max_prune_s,
                        args.alternate,
                    )
                )  # fmt: skip
        except ValueError as exc:
            build_parser().error(str(exc))
        f = figures[-1]
        pairs = f.pair_ratios
        print(
            f"{f.database:<10} {f.pruned:>9,} of {f.old_rows:,} old rows pruned in "
            f"{f.prune_s:7.1f} s "
            f"({f.prune_rows_s:,} rows/s); ingestion {f.alone_rows_s:,} rows/s alone "
            + (f"(paused phases; first {f.alone_before_rows_s:,}, last "
               if f.phases else f"(before {f.alone_before_rows_s:,}, after ")
            + f"{f.alone_after_rows_s:,}), {f.pruning_rows_s:,} while pruning: {f.ratio:.0%}"
            + (f"; {pairs['n']} phases, ratio median {pairs['median']:.3f}, mean "
               f"{pairs['mean']:.3f} ± {pairs['ci95']:.3f}" if pairs else "")
            + ("" if f.finished else "; did NOT finish within --max-prune-s"),
            flush=True,
        )  # fmt: skip
    print(json.dumps({"batch_rows": settings.prune_batch_rows,
                      "batch_s": settings.prune_batch_s,
                      "busy_fraction": settings.prune_busy_fraction,
                      "results": [asdict(f) for f in figures]}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
