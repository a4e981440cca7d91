"""Retention: old rows go, young rows and a late backlog stay, one pruner at a time, and an
interrupted pass leaves whole batches only. SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median

import pytest
import sqlalchemy as sa
import yaml
from harness import ROOT, Fleet, ProcessorProcess, start
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import BigInteger, Column, DateTime, Float, Integer, String
from waiting import wait_for

from sparklem_core.db.batch import Batch
from sparklem_core.db.store import Store
from sparklem_core.dev.servers import TansuBroker
from sparklem_core.processor.retention import (
    FIRST_BATCH_ROWS,
    BackgroundPruner,
    BatchSize,
    PassReport,
    Pruner,
    targets,
)
from sparklem_core.settings.config import (
    MAX_RETENTION,
    ConfigError,
    ProcessorSettings,
    format_duration,
    load_config,
    parse_duration,
)

T0 = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)
DAY = timedelta(days=1)
TABLE = "gauge_readings"


class Clock:
    """The pruner's idea of now, moved by the test."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = gauge_store(database_url)
    yield store
    store.dispose()


def gauge_store(url: str) -> Store:
    store = Store(url, "g")
    store.register_table(
        "gauge",
        TABLE,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("agent_id", String(64), nullable=False),
        Column("value", Float, nullable=False),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        time="measured_at",
        series=("agent_id",),
        values=("value",),
    )
    store.create_schema()
    return store


def settings(**changes: object) -> ProcessorSettings:
    """Batches of 100 rows, however slow the machine (a batch over prune_batch_s shrinks)."""
    return ProcessorSettings(
        **{"prune_batch_rows": 100, "prune_batch_s": 60.0, "prune_busy_fraction": 1.0,
           **changes}
    )  # fmt: skip


def add_readings(store: Store, measured_at: datetime, count: int, agent: str) -> None:
    rows = [
        {"agent_id": agent, "value": float(i), "measured_at": measured_at} for i in range(count)
    ]
    with store.engine.begin() as conn:
        conn.execute(sa.insert(store.metadata.tables[TABLE]), rows)


def add_rejections(store: Store, received_at: datetime, count: int, reason: str) -> None:
    rows = [
        {"topic": "t", "partition": 0, "offset": i, "reason": reason, "detail": "d",
         "received_at": received_at}
        for i in range(count)
    ]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(sa.insert(store.rejected), rows)


def counts(store: Store, table: str, column: str) -> dict[str, int]:
    t = store.metadata.tables[table]
    with store.engine.connect() as conn:
        rows = conn.execute(sa.select(t.c[column], sa.func.count()).group_by(t.c[column]))
        return {key: n for key, n in rows}


def pruner(
    store: Store, retention: dict[str, timedelta], clock: Clock, **changes: object
) -> Pruner:
    return Pruner(store, targets(store, retention), settings(**changes), clock=clock)


def test_rejections_are_pruned_by_arrival_old_ones_only(store: Store) -> None:
    add_rejections(store, T0 - 31 * DAY, 250, "old")
    add_rejections(store, T0 - 29 * DAY, 30, "young")
    clock = Clock(T0)
    report = pruner(store, {"rejected_messages": 30 * DAY}, clock).run_pass()
    assert report.ran
    assert [(t.table, t.rows, t.finished) for t in report.tables] == [
        ("rejected_messages", 250, True)
    ]
    assert counts(store, "rejected_messages", "reason") == {"young": 30}


def test_quick_batches_double_up_to_the_most_rows(tmp_path: Path) -> None:
    store = gauge_store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    add_rejections(store, T0 - 31 * DAY, 1000, "old")
    report = pruner(store, {"rejected_messages": 30 * DAY}, Clock(T0),
                    prune_batch_rows=400, prune_batch_s=60.0).run_pass()  # fmt: skip
    store.dispose()
    # 100, 200, 400, then 300 left: a short last batch.
    assert [(t.rows, t.batches) for t in report.tables] == [(1000, 4)]


def test_a_batch_slower_than_prune_batch_s_makes_the_next_smaller(tmp_path: Path) -> None:
    """Every batch overruns a target of a microsecond: after the first (100 rows), one row
    a batch, and still every old row goes."""
    store = gauge_store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    add_rejections(store, T0 - 31 * DAY, 130, "old")
    add_rejections(store, T0, 3, "young")
    report = pruner(store, {"rejected_messages": 30 * DAY}, Clock(T0),
                    prune_batch_rows=1000, prune_batch_s=1e-6).run_pass()  # fmt: skip
    assert counts(store, "rejected_messages", "reason") == {"young": 3}
    store.dispose()
    # 100 rows, 30 batches of one, and a last one that finds nothing left.
    assert [(t.rows, t.batches) for t in report.tables] == [(130, 1 + 30 + 1)]


@given(
    most=st.integers(1, 1_000_000),
    target=st.floats(1e-6, 60),
    held=st.lists(st.floats(0, 1e4), max_size=30),
)
def test_a_batch_size_stays_between_one_row_and_the_most(
    most: int, target: float, held: list[float]
) -> None:
    size = BatchSize(most, target)
    assert size.rows == min(FIRST_BATCH_ROWS, most)
    for took in held:
        before = size.rows
        size.took(took)
        assert 1 <= size.rows <= most
        if took > target:
            assert size.rows <= before  # slower than the target: never larger
        else:
            assert before <= size.rows <= 2 * before  # quick enough: at most doubled


def add_redriven(store: Store, redriven_at: datetime, count: int, part: str) -> None:
    rows = [
        {"agent_id": "a", "plugin": "p", "seq": i, "part": part, "topic": "t", "partition": 0,
         "offset": i, "redriven_at": redriven_at + timedelta(microseconds=i % 7)}
        for i in range(count)
    ]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(sa.insert(store.redriven), rows)


def test_redriven_rows_are_pruned_by_when_they_were_redriven(store: Store) -> None:
    """sparklem_redriven has no integer id: its batches are ranges of redriven_at."""
    add_redriven(store, T0 - 91 * DAY, 250, "old")
    add_redriven(store, T0 - 89 * DAY, 30, "young")
    p = pruner(store, {"sparklem_redriven": 90 * DAY}, Clock(T0))
    assert [(t.table, t.rows) for t in p.run_pass(dry_run=True).tables] == [
        ("sparklem_redriven", 250)
    ]
    report = p.run_pass()
    assert [(t.table, t.rows, t.finished) for t in report.tables] == [
        ("sparklem_redriven", 250, True)
    ]
    assert counts(store, "sparklem_redriven", "part") == {"young": 30}


def test_redriven_rows_kept_less_long_than_the_quarantine_are_warned_of(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    targets(store, {"sparklem_redriven": 90 * DAY, "rejected_messages": 30 * DAY,
                    "rejected_records": 30 * DAY})  # fmt: skip
    assert caplog.text == ""
    targets(store, {"sparklem_redriven": 90 * DAY, "rejected_messages": 30 * DAY})
    assert caplog.text.count("retention.sparklem_redriven (90d) is shorter") == 1
    assert "than retention.rejected_records (forever)" in caplog.text
    caplog.clear()
    targets(store, {"sparklem_redriven": 7 * DAY, "rejected_messages": 30 * DAY,
                    "rejected_records": 30 * DAY})  # fmt: skip
    assert caplog.text.count("retention.sparklem_redriven (7d) is shorter") == 2


def test_dry_run_counts_and_changes_nothing(store: Store) -> None:
    add_rejections(store, T0 - 31 * DAY, 120, "old")
    add_readings(store, T0 - 40 * DAY, 10, "a")
    clock = Clock(T0)
    p = pruner(store, {"rejected_messages": 30 * DAY, TABLE: 30 * DAY}, clock)
    report = p.run_pass(dry_run=True)
    assert {t.table: (t.rows, t.waiting) for t in report.tables} == {
        "rejected_messages": (120, False),
        TABLE: (0, True),  # no arrival known yet: nothing of it could go
    }
    assert counts(store, "rejected_messages", "reason") == {"old": 120}
    marks = store.metadata.tables["sparklem_arrival_marks"]
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(marks)).scalar() == 0


def test_plugin_rows_go_once_both_measured_and_stored_longer_than_the_retention(
    store: Store,
) -> None:
    keep = {TABLE: 30 * DAY}
    clock = Clock(T0)
    add_readings(store, T0 - 40 * DAY, 150, "stored-long-ago")
    first = pruner(store, keep, clock).run_pass()
    assert first.tables[0].waiting  # stored just now, as far as the pruner can know

    clock.now = T0 + 31 * DAY
    # A spooled backlog measured 40 days ago arrives today, with fresh readings.
    add_readings(store, clock.now - 40 * DAY, 120, "late-backlog")
    add_readings(store, clock.now - DAY, 20, "fresh")
    second = pruner(store, keep, clock).run_pass()
    assert [(t.rows, t.waiting) for t in second.tables] == [(150, False)]
    assert counts(store, TABLE, "agent_id") == {"late-backlog": 120, "fresh": 20}

    clock.now = T0 + 62 * DAY  # the backlog has now been stored 31 days
    third = pruner(store, keep, clock).run_pass()
    assert third.tables[0].rows == 120 + 20
    assert counts(store, TABLE, "agent_id") == {}


def test_a_second_pruner_skips_while_the_first_holds_the_lease(store: Store) -> None:
    add_rejections(store, T0 - 31 * DAY, 1000, "old")
    clock = Clock(T0)
    keep = {"rejected_messages": 30 * DAY}
    stop = threading.Event()
    # Rests 99 times each batch's duration: busy for long enough to be caught at it.
    first = Pruner(
        store, targets(store, keep), settings(prune_busy_fraction=0.01), stop=stop, clock=clock
    )
    leases = store.metadata.tables["sparklem_leases"]

    def holder() -> str | None:
        with store.engine.connect() as conn:
            return conn.execute(sa.select(leases.c.holder)).scalar()

    worker = threading.Thread(target=first.run_pass)
    worker.start()
    try:
        wait_for(lambda: holder() == first.holder, message="first pruner never took the lease")
        second = pruner(store, keep, clock).run_pass()
        assert not second.ran and second.tables == ()
    finally:
        stop.set()
        worker.join(30)
    # Released at the end of its pass: the next one runs.
    assert pruner(store, keep, clock).run_pass().ran


def test_an_expired_lease_is_taken_over(store: Store) -> None:
    add_rejections(store, T0 - 31 * DAY, 10, "old")
    keep = {"rejected_messages": 30 * DAY}
    clock = Clock(T0)
    crashed = pruner(store, keep, clock, prune_lease_s=60)
    assert crashed._take_lease()  # then it crashed: the lease is never released
    assert not pruner(store, keep, clock).run_pass().ran
    clock.now = T0 + timedelta(seconds=61)
    assert pruner(store, keep, clock).run_pass().tables[0].rows == 10


def test_background_pruner_prunes_until_stopped(store: Store) -> None:
    add_rejections(store, datetime.now(UTC) - 31 * DAY, 50, "old")
    stop = threading.Event()
    p = Pruner(
        store,
        targets(store, {"rejected_messages": 30 * DAY}),
        settings(prune_interval_s=0.05),
        stop=stop,
    )
    background = BackgroundPruner(p)
    background.start()
    try:
        wait_for(lambda: counts(store, "rejected_messages", "reason") == {})
    finally:
        stop.set()
        background.join(30)
    assert not background.is_alive()


def test_on_sqlite_the_pruner_gets_turns_against_a_writer_that_is_never_idle(
    tmp_path: Path,
) -> None:
    """SQLite's busy handler alone let a writer committing back to back starve the pruner
    (it waited in BEGIN IMMEDIATE while the writer took the lock again at once). With
    turns, and no rest (busy fraction 1), the two alternate."""
    store = gauge_store(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    batch, old = FIRST_BATCH_ROWS, 5000  # the first batch's size: every batch the same
    add_rejections(store, T0 - 31 * DAY, old, "old")
    p = pruner(store, {"rejected_messages": 30 * DAY}, Clock(T0),
               prune_batch_rows=batch, prune_busy_fraction=1.0)  # fmt: skip
    seen: list[int] = []  # the pruner's progress after each ingested batch
    stop = threading.Event()
    ingest_errors: list[BaseException] = []

    def ingest() -> None:
        try:
            while not stop.is_set():
                now = datetime.now(UTC)
                rows = [{"agent_id": "a", "value": 1.0, "measured_at": now}] * 1000
                store.commit(Batch(rows={TABLE: rows}))
                seen.append(p.deleted)
        except BaseException as exc:  # reported below
            ingest_errors.append(exc)

    writer = threading.Thread(target=ingest)
    writer.start()
    reports: list[PassReport] = []
    try:
        wait_for(lambda: len(seen) >= 5, message="ingestion never committed")
        worker = threading.Thread(target=lambda: reports.append(p.run_pass()), daemon=True)
        worker.start()
        wait_for(lambda: not worker.is_alive(), timeout=120,
                 message="the pruner's pass never finished")  # fmt: skip
        after = len(seen)
        wait_for(lambda: len(seen) > after, message="ingestion stopped after the pass")
    finally:
        stop.set()
        writer.join(60)
        store.dispose()
    assert not ingest_errors
    assert [(t.rows, t.finished) for t in reports[0].tables] == [(old, True)]
    # Ingested batches between two of the pruner's: ingestion went on all along, and the
    # pruner waited for about one, not for as many as the writer could commit.
    commits = Counter(seen)
    gaps = [commits[k * batch] for k in range(1, old // batch)]
    assert sum(1 for n in gaps if n) >= len(gaps) // 2, gaps
    assert median(gaps) <= 2, gaps


# --- configuration -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [("30d", 30 * DAY), ("12h", timedelta(hours=12)), ("90m", timedelta(minutes=90)),
     (0, None), ("0", None)],
)  # fmt: skip
def test_durations(value: object, expected: timedelta | None) -> None:
    assert parse_duration(value) == expected


@given(st.one_of(st.text(max_size=12), st.integers(), st.booleans(), st.floats(), st.none()))
def test_any_value_is_a_duration_or_a_one_line_refusal(value: object) -> None:
    try:
        parsed = parse_duration(value)
    except ValueError as exc:
        assert "\n" not in str(exc)
        return
    assert parsed is None or timedelta(minutes=1) <= parsed <= MAX_RETENTION
    if parsed is not None:
        assert parse_duration(format_duration(parsed)) == parsed


@given(st.integers(1, 9_999_999), st.sampled_from("dhm"))
def test_written_durations_round_trip(number: int, unit: str) -> None:
    text = f"{number}{unit}"
    try:
        parsed = parse_duration(text)
    except ValueError:
        assert number * {"d": 1440, "h": 60, "m": 1}[unit] > MAX_RETENTION.days * 1440
        return
    assert parsed is not None and parse_duration(format_duration(parsed)) == parsed


def write_config(tmp_path: Path, doc: dict[str, object]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("value", ["30", "30s", "-1d", "1.5d", "d", "", True, 30, "0d"])
def test_a_bad_duration_is_refused_naming_the_key(tmp_path: Path, value: object) -> None:
    path = write_config(tmp_path, {"retention": {"rejected_messages": value}})
    with pytest.raises(ConfigError, match=r"^retention\.rejected_messages: .*30d"):
        load_config(path, env={})


def test_defaults_bound_the_rejection_tables_and_0_keeps_forever(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, {}), env={}).retention == {
        "rejected_messages": 30 * DAY,
        "rejected_records": 30 * DAY,
        "sparklem_feed": DAY,
        "sparklem_redriven": 90 * DAY,
    }
    path = write_config(tmp_path, {"retention": {"rejected_records": 0, TABLE: "7d"}})
    assert load_config(path, env={}).retention == {
        "rejected_messages": 30 * DAY,
        "sparklem_feed": DAY,
        "sparklem_redriven": 90 * DAY,
        TABLE: 7 * DAY,
    }


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("table", "message"),
    [("sparklem_offsets", "no such core or plugin table can be pruned"),
     ("nonesuch", "no such core or plugin table can be pruned")],
)  # fmt: skip
def test_a_table_that_cannot_be_pruned_is_refused_at_start(
    tmp_path: Path, table: str, message: str
) -> None:
    write_config(tmp_path, {"retention": {table: "1d"},
                            "database": {"url": f"sqlite:///{tmp_path}/db.sqlite3"}})  # fmt: skip
    for command in ("prune", "init"):
        result = run_cli(tmp_path, command)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(f"main.py: configuration error: retention.{table}: ")
        assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "db.sqlite3").exists()


# --- the command, interrupted ------------------------------------------------------------


def test_prune_command_dry_run_then_for_real(tmp_path: Path, database_url: str) -> None:
    store = Store(database_url, "g")
    store.create_schema()
    add_rejections(store, datetime.now(UTC) - 31 * DAY, 40, "old")
    add_rejections(store, datetime.now(UTC), 5, "young")
    write_config(tmp_path, {"database": {"url": database_url}})
    dry = run_cli(tmp_path, "prune", "--dry-run", "--log-level", "WARNING")
    assert dry.returncode == 0, dry.stderr
    assert "rejected_messages" in dry.stdout and "would remove 40" in dry.stdout
    assert counts(store, "rejected_messages", "reason") == {"old": 40, "young": 5}
    real = run_cli(tmp_path, "prune", "--log-level", "WARNING")
    assert real.returncode == 0, real.stderr
    assert "removed 40" in real.stdout
    assert counts(store, "rejected_messages", "reason") == {"young": 5}
    store.dispose()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "crash"])
def test_an_interrupted_prune_leaves_whole_batches_and_the_next_pass_finishes(
    tmp_path: Path, database_url: str, how: signal.Signals
) -> None:
    batch, old = FIRST_BATCH_ROWS, 6000  # the first batch's size: every batch the same
    store = Store(database_url, "g")
    store.create_schema()
    add_rejections(store, datetime.now(UTC) - 31 * DAY, old, "old")
    add_rejections(store, datetime.now(UTC), 7, "young")
    write_config(tmp_path, {
        "database": {"url": database_url},
        "processor": {"prune_batch_rows": batch, "prune_batch_s": 60, "prune_busy_fraction": 0.02,
                      "prune_lease_s": 1},
    })  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "prune", "--log-level", "WARNING"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: counts(store, "rejected_messages", "reason").get("old", 0) < old,
                 timeout=60, message="prune never deleted a batch")  # fmt: skip
        process.send_signal(how)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    left = counts(store, "rejected_messages", "reason")
    assert left["young"] == 7
    assert 0 < left["old"] < old and (old - left["old"]) % batch == 0  # whole batches only
    if how == signal.SIGTERM:
        assert process.returncode == 1, err
        assert "stopped before the end" in out

    # The crashed one's lease (1 s) expires; then a pass takes over and finishes.
    def next_pass() -> bool:
        result = run_cli(tmp_path, "prune", "--log-level", "WARNING")
        assert result.returncode == 0, result.stderr
        return "removed" in result.stdout

    wait_for(next_pass, timeout=60, interval=0.5, message="no pass took over")
    assert counts(store, "rejected_messages", "reason") == {"young": 7}
    store.dispose()


def test_a_plugin_table_without_an_integer_id_cannot_be_bounded() -> None:
    store = Store("sqlite://", "g")  # never opened: declarations only
    store.register_table(
        "gauge",
        "gauge_by_name",
        Column("name", String(64), primary_key=True),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        time="measured_at",
    )
    with pytest.raises(ConfigError, match=r"^retention\.gauge_by_name: .*integer id"):
        targets(store, {"gauge_by_name": DAY})


def test_a_running_processor_prunes_in_the_background(
    fleet: Fleet,
    processors: list[ProcessorProcess],
    tmp_path: Path,
    broker: TansuBroker,
    database_url: str,
) -> None:
    store = Store(database_url, "g")
    store.create_schema()
    add_rejections(store, datetime.now(UTC) - 31 * DAY, 30, "old")
    add_rejections(store, datetime.now(UTC), 3, "young")
    config = fleet.config(broker.bootstrap, database_url, prune_interval_s=0.2)
    start(processors, tmp_path, config)
    wait_for(lambda: counts(store, "rejected_messages", "reason") == {"young": 3},
             timeout=60, message="the processor did not prune")  # fmt: skip
    store.dispose()
