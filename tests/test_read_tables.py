"""The read side: sparklem_latest and the feed, written in each batch's transaction, and
the feed read back through FeedReader."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pipeline_env import Env, reading, run, temperature
from sqlalchemy import BigInteger, Column, DateTime, Float, Integer, String, delete, select
from test_redrive import redrive

from sparklem_core.db.batch import Batch, Rejection
from sparklem_core.db.read_tables import as_utc
from sparklem_core.db.schema import core_metadata
from sparklem_core.db.store import Store
from sparklem_core.processor.retention import Pruner, targets
from sparklem_core.reading.feed import (
    START,
    FeedEvent,
    FeedReader,
    format_event_id,
    parse_event_id,
)
from sparklem_core.settings.config import DEFAULT_RETENTION, ProcessorSettings, parse_duration

T0 = datetime(2026, 11, 30, 3, 0, 0, 123456, tzinfo=UTC)
TABLE = "probe_readings"


def probe_store(url: str) -> Store:
    """A Store with one plugin table shaped like temperature's, series (agent_id, sensor)."""
    store = Store(url, "g")
    store.register_table(
        "probe",
        TABLE,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("agent_id", String(64), nullable=False),
        Column("sensor", String(500), nullable=False),
        Column("celsius", Float, nullable=False),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        time="measured_at",
        series=("agent_id", "sensor"),
        values=("celsius",),
    )
    store.create_schema()
    return store


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = probe_store(database_url)
    yield s
    s.dispose()


def row(agent: str, sensor: str, celsius: float, at: datetime) -> dict:
    return {"agent_id": agent, "sensor": sensor, "celsius": celsius, "measured_at": at}


def rejection(offset: int, detail: str = "bad", agent: str | None = "edge-1") -> Rejection:
    return Rejection("sparklem.probe", 0, offset, agent, "probe", "malformed", detail, "", T0)


def latest(store: Store) -> dict[tuple[str, str], tuple[datetime, dict]]:
    t = store.metadata.tables["sparklem_latest"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.agent_id, t.c.series, t.c.measured_at, t.c.row)).all()
    return {
        (a, json.loads(s)[0]): (as_utc(m), json.loads(r))
        for a, s, m, r in rows  # fmt: skip
    }


def read_all(reader: FeedReader, after: str = START, limit: int = 7) -> list[FeedEvent]:
    """Every event after ``after``, read ``limit`` at a time (parts cut mid-way)."""
    found: list[FeedEvent] = []
    while batch := reader.read_after(after, limit):
        found.extend(batch)
        after = batch[-1].id
    return found


# --- latest -----------------------------------------------------------------------------

readings = st.tuples(
    st.sampled_from(["edge-1", "edge-2"]),
    st.sampled_from(["cpu", "gpu", "ß\u202e"]),
    st.integers(0, 5),  # minutes after T0: ties happen
)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=st.lists(st.lists(readings, min_size=1, max_size=8), min_size=1, max_size=5))
def test_latest_holds_the_newest_reading_per_series(store: Store, batches) -> None:
    """Whatever order batches bring readings in (late ones, ties), sparklem_latest holds
    per series the reading measured last, the later stored one on a tie."""
    with store.engine.begin() as conn:
        conn.execute(delete(store.metadata.tables["sparklem_latest"]))
    expected: dict[tuple[str, str], tuple[datetime, float]] = {}
    n = 0
    for readings_ in batches:
        rows = []
        for agent, sensor, minute in readings_:
            n += 1
            at = T0 + timedelta(minutes=minute)
            rows.append(row(agent, sensor, float(n), at))
            held = expected.get((agent, sensor))
            if held is None or at >= held[0]:
                expected[(agent, sensor)] = (at, float(n))
        store.commit(Batch(rows={TABLE: rows}))
    got = latest(store)
    assert {k: (at, r["values"]["celsius"]) for k, (at, r) in got.items()} == expected
    for (_agent, sensor), (at, r) in got.items():  # the API's item, less agent_id and age_s
        assert r == {"series": {"sensor": sensor}, "values": {"celsius": r["values"]["celsius"]},
                     "time": at.isoformat().replace("+00:00", "Z")}  # fmt: skip


def test_latest_compares_times_in_any_zone_as_utc(store: Store) -> None:
    """05:00+02:00 is 03:00Z: older than 03:30Z, on databases that store wall times too."""
    plus2 = timezone(timedelta(hours=2))
    store.commit(Batch(rows={TABLE: [row("edge-1", "cpu", 1.0, T0 + timedelta(minutes=30))]}))
    store.commit(Batch(rows={TABLE: [row("edge-1", "cpu", 2.0, T0.astimezone(plus2))]}))
    ((at, held),) = latest(store).values()
    assert (at, held["values"]["celsius"]) == (T0 + timedelta(minutes=30), 1.0)
    (late,) = FeedReader(store.engine).read_after("1-0-0")
    assert late.at == T0 and late.data["row"]["measured_at"] == "2026-11-30T03:00:00.123456Z"


def test_a_series_too_long_for_the_key_is_kept_by_its_digest(store: Store) -> None:
    long = "s" * 128 + "\u00e9" * 300  # over sparklem_latest.series, in 4-byte-safe text
    store.commit(Batch(rows={TABLE: [row("edge-1", long, 1.0, T0)]}))
    store.commit(Batch(rows={TABLE: [row("edge-1", long, 2.0, T0 + timedelta(1))]}))
    t = store.metadata.tables["sparklem_latest"]
    with store.engine.connect() as conn:
        ((series, stored),) = conn.execute(select(t.c.series, t.c.row)).all()
    assert series.startswith("#sha256:")
    assert json.loads(stored)["series"]["sensor"] == long
    assert json.loads(stored)["values"]["celsius"] == 2.0


# --- the feed ---------------------------------------------------------------------------


def test_the_feed_holds_every_reading_and_rejection_once_in_commit_order(store: Store) -> None:
    reader = FeedReader(store.engine)
    assert reader.head() == START and reader.read_after(START) == []
    store.commit(Batch(rows={TABLE: [row("edge-1", "cpu", 1.0, T0)]}, rejected=[rejection(1)]))
    store.commit(Batch())  # stores nothing: no feed entry, no commit_seq
    big = [row("edge-2", "gpu", float(i), T0) for i in range(2500)]  # three parts
    store.commit(Batch(rows={TABLE: big}))
    store.commit(Batch(rejected=[rejection(2, "esc \x1b[31m", agent=None)]))

    events = read_all(reader)
    assert [e.id for e in events] == [
        "1-0-0", "1-0-1",
        *(format_event_id(2, i // 1000, i % 1000) for i in range(2500)),
        "3-0-0",
    ]  # fmt: skip
    first, rejected_, *_, last = events
    assert (first.kind, first.plugin, first.table, first.agent_id, first.at) == (
        "reading", "probe", TABLE, "edge-1", T0,
    )  # fmt: skip
    assert first.data == {"row": {"agent_id": "edge-1", "sensor": "cpu", "celsius": 1.0,
                                  "measured_at": "2026-11-30T03:00:00.123456Z"},
                          "time": "measured_at"}  # fmt: skip
    assert (rejected_.kind, rejected_.table, rejected_.data["reason"]) == (
        "rejection", None, "malformed",
    )  # fmt: skip
    assert [e.data["row"]["celsius"] for e in events[2:-1]] == [float(i) for i in range(2500)]
    assert (last.agent_id, last.data["detail"], last.at) == (None, "esc \x1b[31m", T0)
    assert reader.head() == "3-0-0"
    assert reader.read_after("2-2-498") == events[-2:]  # strictly after, across batches
    assert [e.id for e in reader.read_after("2-1-999", 2)] == ["2-2-0", "2-2-1"]
    assert reader.read_after("3-0-0") == [] and reader.read_after("99-0-0") == []
    json.dumps([e.as_json() for e in events])  # every event is plain JSON


def test_text_beyond_ascii_is_stored_as_it_came(store: Store) -> None:
    """The feed and latest hold any Unicode (written raw, not escaped) on every database."""
    name = "cpu \U0001f321\u2028\u00e9"
    store.commit(Batch(rows={TABLE: [row("edge-\u00e9", name, 1.5, T0)]},
                       rejected=[rejection(1, "d\u00e9tail \U0001f4a5")]))  # fmt: skip
    reading, rejected = FeedReader(store.engine).read_after(START)
    assert (reading.agent_id, reading.data["row"]["sensor"]) == ("edge-\u00e9", name)
    assert rejected.data["detail"] == "d\u00e9tail \U0001f4a5"
    assert latest(store)[("edge-\u00e9", name)][1]["series"]["sensor"] == name


_MIXED: dict[int, Store] = {}


def mixed_store(tmp_path_factory) -> Store:
    """One SQLite store, with nullable columns of every plain type, for every example."""
    key = id(tmp_path_factory)
    if key not in _MIXED:
        store = Store(f"sqlite:///{tmp_path_factory.mktemp('mixed')}/db.sqlite3", "g")
        store.register_table(
            "mixed", "mixed_readings",
            Column("id", Integer, primary_key=True),
            Column("agent_id", String(64), nullable=False),
            Column("label", String(64)),
            Column("n", BigInteger),
            Column("x", Float),
            Column("measured_at", DateTime(timezone=True), nullable=False),
            time="measured_at", series=("agent_id", "label"), values=("n", "x"),
        )  # fmt: skip
        store.create_schema()
        _MIXED[key] = store
    return _MIXED[key]


mixed_rows = st.lists(
    st.fixed_dictionaries({
        "agent_id": st.sampled_from(["a", "b\u202e\x1b"]),
        "label": st.none() | st.text(max_size=8),
        "n": st.none() | st.integers(-(2**63), 2**63 - 1),
        "x": st.none() | st.floats(),
        "measured_at": st.sampled_from([T0, T0 + timedelta(hours=1)]),
    }),
    min_size=1, max_size=12,
)  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(rows=mixed_rows)
def test_feed_and_latest_rows_hold_the_values_as_json_would(tmp_path_factory, rows) -> None:
    """Whatever the values (text of any kind, 64-bit integers, NaN, infinities, nulls),
    the feed's and latest's rows parse back to them (non-finite floats as null)."""
    store = mixed_store(tmp_path_factory)
    reader = FeedReader(store.engine)
    after = reader.head()
    store.commit(Batch(rows={"mixed_readings": rows}))
    expected = [
        {**r, "x": r["x"] if r["x"] is None or math.isfinite(r["x"]) else None,
         "measured_at": r["measured_at"].isoformat().replace("+00:00", "Z")}
        for r in rows
    ]  # fmt: skip
    assert [e.data["row"] for e in read_all(reader, after, 1000)] == expected
    t = store.metadata.tables["sparklem_latest"]
    with store.engine.connect() as conn:
        stored = {(a, s): json.loads(r) for a, s, r in
                  conn.execute(select(t.c.agent_id, t.c.series, t.c.row))}  # fmt: skip
    for r in expected:  # each row's series holds it or a row measured as late or later
        held = stored[(r["agent_id"], json.dumps([r["label"]], ensure_ascii=False))]
        assert held["time"] >= r["measured_at"]


def test_a_tampered_feed_row_is_skipped_not_raised(store: Store) -> None:
    """A part that is not JSON is skipped whole; in a part, a row that does not fit its
    group is skipped but keeps its index, so the ids of the others do not change."""
    feed = store.metadata.tables["sparklem_feed"]
    columns = ["agent_id", "sensor", "celsius", "measured_at"]
    reading_group = {
        "kind": "reading",
        "plugin": "probe",
        "table": TABLE,
        "time": "measured_at",
        "columns": columns,
        "rows": [["a", "s", 1.0], 3, ["a", "s", 10**400, "2026-11-30T03:00:00Z"]],
    }
    with store.engine.begin() as conn:
        conn.execute(
            feed.insert(),
            [
                {"commit_seq": 1, "part": 0, "committed_at": T0, "events": "[[[[nope"},
                {"commit_seq": 2, "part": 0, "committed_at": T0,
                 "events": json.dumps([
                     1, {"kind": "x", "columns": [], "rows": [[]]},
                     {"kind": "reading", "columns": ["a", "a"], "rows": [["x", "y"]]},
                     {"kind": "rejection", "columns": ["agent_id", "received_at"],
                      "rows": [[5, "no"]]},
                     {**reading_group, "agents": ["too", "short"]},
                 ])},
            ],
        )  # fmt: skip
    first, second = FeedReader(store.engine).read_after(START)
    assert (first.id, first.kind, first.agent_id, first.at) == ("2-0-2", "rejection", None, T0)
    assert (second.id, second.agent_id, second.data["row"]["celsius"]) == ("2-0-5", "a", 10**400)
    assert second.at == datetime(2026, 11, 30, 3, tzinfo=UTC)
    assert FeedReader(store.engine).head() == "2-0-5"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=12,
)  # fmt: skip
_names = st.sampled_from(["agent_id", "sensor", "celsius", "measured_at", "plugin", "reason"])
_groups = st.fixed_dictionaries(
    {"kind": st.sampled_from(["reading", "rejection"]) | _json,
     "columns": st.lists(_names, max_size=5) | _json,
     "rows": st.lists(st.lists(_json | st.just("2026-11-30T03:00:00Z"), max_size=5), max_size=4)
     | _json},
    optional={"plugin": _json, "table": _json, "time": _names | _json,
              "agents": st.lists(_json, max_size=4) | _json},
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.lists(_groups | _json, max_size=4) | _json, min_size=1, max_size=3))
def test_hostile_feed_parts_give_events_or_nothing(tmp_path_factory, parts: list[Any]) -> None:
    """Whatever a part holds (groups of wrong types, rows that do not match their columns,
    huge integers), the reader answers checked FeedEvents, in id order, and never raises."""
    reader = _sqlite_reader(tmp_path_factory, "hostile")
    feed = core_metadata().tables["sparklem_feed"]
    with reader.engine.begin() as conn:
        conn.execute(delete(feed))
        conn.execute(
            feed.insert(),
            [{"commit_seq": 1, "part": i, "committed_at": T0, "events": json.dumps(p)}
             for i, p in enumerate(parts)],
        )  # fmt: skip
    events = reader.read_after(START)
    assert [parse_event_id(e.id) for e in events] == sorted(parse_event_id(e.id) for e in events)
    for e in events:
        assert e.kind in ("reading", "rejection") and e.at.tzinfo is not None
        assert all(v is None or isinstance(v, str) for v in (e.plugin, e.table, e.agent_id))
        json.dumps(e.as_json())
    assert parse_event_id(reader.head())[0] in (0, 1)


def test_event_ids_round_trip() -> None:
    assert parse_event_id(format_event_id(2**63 - 1, 7, 999)) == (2**63 - 1, 7, 999)
    for bad in ["", "1-2", "1-2-3-4", "01-0-0", "-1-0-0", "1-0-٣", f"{2**63}-0-0", " 1-0-0"]:
        with pytest.raises(ValueError, match="event id"):
            parse_event_id(bad)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60) | st.from_regex(r"\A[0-9]{1,25}-[0-9]{1,12}-[0-9]{1,12}\Z"))
def test_a_hostile_event_id_is_a_value_error(tmp_path_factory, text: str) -> None:
    """Whatever the text, read_after answers events or a one-line ValueError."""
    reader = _sqlite_reader(tmp_path_factory)
    try:
        events = reader.read_after(text)
    except ValueError as exc:
        assert "\n" not in str(exc)
    else:
        assert events == []


_READERS: dict[tuple[int, str], FeedReader] = {}


def _sqlite_reader(tmp_path_factory, name: str = "feed") -> FeedReader:
    """One SQLite database per name for every example (hypothesis calls a test many times)."""
    key = (id(tmp_path_factory), name)
    if key not in _READERS:
        s = probe_store(f"sqlite:///{tmp_path_factory.mktemp(name)}/db.sqlite3")
        _READERS[key] = FeedReader(s.engine)
    return _READERS[key]


def test_retention_prunes_the_feed_by_commit_time(store: Store) -> None:
    """The default 1d bounds sparklem_feed by committed_at; readers carry on after it."""
    feed = store.metadata.tables["sparklem_feed"]
    with store.engine.begin() as conn:  # 250 old commits (two parts each), then a young one
        conn.execute(feed.insert(), [
            {"commit_seq": seq, "part": part, "committed_at": T0 - timedelta(days=2),
             "events": "[]"}
            for seq in range(1, 251) for part in (0, 1)
        ])  # fmt: skip
        conn.execute(store.metadata.tables["sparklem_feed_head"].update().values(commit_seq=250))
    store.commit(Batch(rejected=[rejection(1)]))  # committed now: kept
    keep = parse_duration(DEFAULT_RETENTION["sparklem_feed"])
    assert keep == timedelta(days=1)
    pruner = Pruner(store, targets(store, {"sparklem_feed": keep}),
                    ProcessorSettings(prune_batch_rows=100, prune_busy_fraction=1.0))  # fmt: skip
    report = pruner.run_pass()
    assert [(t.table, t.rows, t.finished) for t in report.tables] == [("sparklem_feed", 500, True)]
    reader = FeedReader(store.engine)
    assert [e.id for e in reader.read_after(START)] == ["251-0-0"] and reader.head() == "251-0-0"


def test_redriven_readings_reach_the_feed_and_latest(env: Env) -> None:
    """Redrive stores through Store.commit(): what it stores is fed and becomes latest."""
    run(env.pipeline(), [env.record(env.envelope(temperature(reading("a", 40.0)), seq=3,
                                                  agent="edge-9"))])  # fmt: skip
    reader = FeedReader(env.store.engine)
    (quarantined,) = reader.read_after(START)
    assert (quarantined.kind, quarantined.data["reason"]) == ("rejection", "unknown_agent")
    env.enroll("edge-9")
    assert redrive(env).stored == 1
    (redriven,) = reader.read_after(quarantined.id)
    assert (redriven.kind, redriven.plugin, redriven.agent_id) == ("reading", "temperature",
                                                                    "edge-9")  # fmt: skip
    assert (redriven.data["row"]["sensor"], redriven.data["row"]["celsius"]) == ("a", 40.0)
    t = env.store.metadata.tables["sparklem_latest"]
    with env.store.engine.connect() as conn:
        assert conn.execute(select(t.c.table_name, t.c.agent_id, t.c.series)).all() == [
            ("temperature_readings", "edge-9", '["a"]')
        ]


# --- concurrent writers ----------------------------------------------------------------


@pytest.fixture(params=["postgresql", "mysql"])
def server_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")


@pytest.mark.e2e
def test_a_polling_reader_misses_nothing_two_writers_commit_at_once(server_url: str) -> None:
    """Two stores commit batches concurrently; a reader polling read_after() from its last
    id sees every event exactly once, in commit_seq order."""
    writers, batches, per_batch = 2, 40, 3
    stores = [probe_store(server_url) for _ in range(writers)]
    reader = FeedReader(stores[0].engine)
    done = threading.Event()
    errors: list[BaseException] = []

    def write(w: int) -> None:
        try:
            for b in range(batches):
                rows = [row(f"w{w}", f"s{i}", float(b * per_batch + i), T0)
                        for i in range(per_batch)]  # fmt: skip
                stores[w].commit(Batch(rows={TABLE: rows}))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    seen: list[FeedEvent] = []
    after = START
    try:
        while not done.is_set():
            finished = not any(t.is_alive() for t in threads)  # before the read: nothing after
            while batch := reader.read_after(after, 50):
                seen.extend(batch)
                after = batch[-1].id
            if finished:
                done.set()
    finally:
        for t in threads:
            t.join()
        for s in stores:
            s.dispose()
    assert errors == []
    got = [(e.agent_id, e.data["row"]["celsius"]) for e in seen]
    written = {(f"w{w}", float(n)) for w in range(writers) for n in range(batches * per_batch)}
    assert len(got) == len(written) and set(got) == written
    ids = [parse_event_id(e.id) for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
