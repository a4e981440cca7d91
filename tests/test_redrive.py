"""Redrive: quarantined records judged again by today's pipeline, stored once.

Records are quarantined by the real Pipeline (tests/pipeline_env.py) on SQLite,
PostgreSQL and MariaDB; the last test runs ``main.py redrive`` beside a running processor.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from harness import GOOD, ROOT, Db, Fleet, start
from hypothesis import given
from hypothesis import strategies as st
from pipeline_env import PU_TOPIC, Env, Keys, now_ms, reading, run, temperature
from sqlalchemy import Column, DateTime, Float, Integer, insert, select, text, update
from waiting import wait_for

from sparklem_core import Manifest, Message, PluginResult, Setting, hookimpl, wire
from sparklem_core.fleet.registry import AgentRegistry
from sparklem_core.processor.pipeline import Pipeline
from sparklem_core.processor.redrive import PAGE, Redrive, Selection, Summary
from sparklem_core.processor.wiring import build_pipeline
from sparklem_core.reading.timeparse import parse_time
from sparklem_core.settings.config import Config
from sparklem_core.testing import PluginHarness
from sparklem_core.testing.plugin import MakeHarness

QUARANTINE = ("rejected_messages", "rejected_records")


def today(env: Env, max_celsius: float = 150) -> Pipeline:
    """The pipeline as the command builds it: today's registry, plugins and settings."""
    config = Config(
        certificates=env.certs,
        plugins={"temperature": {"max_celsius": max_celsius}},
        processor=env.settings,
    )
    server_keys = {wire.key_id(env.keys.server): env.keys.server}
    return build_pipeline(
        config, env.host, env.store, server_keys, AgentRegistry(env.certs, refresh_s=3600)
    )


def redrive(
    env: Env,
    max_celsius: float = 150,
    *,
    dry_run: bool = False,
    **selection: Any,
) -> Summary:
    return Redrive(today(env, max_celsius), env.store).run(Selection(**selection), dry_run=dry_run)


def quarantine(env: Env, *values: bytes, topic: str = "sparklem.temperature") -> None:
    """Process ``values`` as the consumer does (enrolled agents as they are now)."""
    run(env.pipeline(), [env.record(v, topic=topic) for v in values])


def celsius(env: Env) -> list[tuple[Any, ...]]:
    return env.query("SELECT agent_id, seq, sensor, celsius FROM temperature_readings ORDER BY id")


def reasons(env: Env) -> list[str]:
    return [row["reason"] for row in env.rejected()]


def snapshot(env: Env) -> dict[str, list[tuple[Any, ...]]]:
    tables = (*QUARANTINE, "temperature_readings", "sparklem_streams", "sparklem_redriven")
    return {t: env.query(f"SELECT * FROM {t} ORDER BY 1") for t in tables}


# --- what a redriven record becomes ------------------------------------------------------


def test_unknown_agent_then_enrolled_is_stored_and_leaves_the_quarantine(env: Env) -> None:
    quarantine(env, env.envelope(temperature(reading("a", 40.0)), seq=3, agent="edge-9"))
    assert reasons(env) == ["unknown_agent"]
    env.enroll("edge-9")
    summary = redrive(env)
    assert (summary.records, summary.stored, summary.rows, summary.already) == (1, 1, 1, 0)
    assert celsius(env) == [("edge-9", 3, "a", 40.0)]
    assert [env.count(t) for t in QUARANTINE] == [0, 0]
    (key,) = keep(env, "sparklem_redriven")
    assert (key["agent_id"], key["plugin"], key["seq"], key["part"], key["offset"]) == (
        "edge-9",
        "temperature",
        3,
        "",
        0,
    )
    # The stream's mark moved: the same message sent again is a duplicate for the consumer.
    assert env.query("SELECT last_seq FROM sparklem_streams") == [(3,)]
    again = run(env.pipeline(), [env.record(env.envelope(temperature(), seq=3, agent="edge-9"))])
    assert again.duplicates == 1 and len(celsius(env)) == 1


def test_a_redriven_row_keeps_the_time_its_record_was_first_received(env: Env) -> None:
    # A whole message (its agent unknown) and a single refused reading of a stored message.
    sent = now_ms(-3 * 3600)
    quarantine(env, env.envelope(temperature(reading("a", 40.0)), seq=1, agent="edge-9", ts=sent))
    both = temperature(reading("b", 41.0), reading("hot", 180.0))
    quarantine(env, env.envelope(both, seq=1, ts=sent))
    first = datetime.now(UTC).replace(microsecond=123456) - timedelta(hours=2)
    with env.store.engine.begin() as conn:  # received two hours ago, redriven now
        for table in (env.store.rejected, env.store.records):
            conn.execute(update(table).values(received_at=first))
    env.enroll("edge-9")
    assert redrive(env, max_celsius=200).stored == 2
    at = {  # SQLite and MariaDB hand times back naive: UTC
        row["sensor"]: row["received_at"].replace(tzinfo=row["received_at"].tzinfo or UTC)
        for row in keep(env, "temperature_readings")
    }
    assert (at["a"], at["hot"]) == (first, first)
    assert at["b"] > first  # stored by the consumer when it came


def test_setting_changed_stores_the_refused_reading_alone(env: Env) -> None:
    sent = temperature(reading("a", 40.0), reading("hot", 180.0), reading("b", 41.0))
    quarantine(env, env.envelope(sent, seq=1))
    (refused,) = env.rejected()
    assert refused["reason"] == "invalid_reading" and refused["seq"] == 1
    assert refused["sent_at"] is not None
    assert [r[2] for r in celsius(env)] == ["a", "b"]
    summary = redrive(env, max_celsius=200)
    assert (summary.stored, summary.rows) == (1, 1)
    assert sorted(r[2] for r in celsius(env)) == ["a", "b", "hot"]  # the siblings once
    assert [env.count(t) for t in QUARANTINE] == [0, 0]
    assert redrive(env, max_celsius=200).records == 0
    assert len(celsius(env)) == 3


def test_two_refused_readings_of_one_message_each_stored_once(env: Env) -> None:
    sent = temperature(reading("hot", 180.0), reading("a", 40.0), reading("hot", 180.0))
    quarantine(env, env.envelope(sent, seq=1))
    assert reasons(env) == ["invalid_reading", "invalid_reading"]
    summary = redrive(env, max_celsius=200)
    assert (summary.records, summary.stored, summary.rows) == (1, 2, 2)
    assert sorted(r[2] for r in celsius(env)) == ["a", "hot", "hot"]
    assert [env.count(t) for t in QUARANTINE] == [0, 0]


def test_a_record_with_more_refused_readings_than_a_page_is_one_record(env: Env) -> None:
    hot = [reading(f"hot-{n}", 180.0) for n in range(PAGE + 1)]
    quarantine(env, env.envelope(temperature(reading("a", 40.0), *hot), seq=1))
    assert env.count("rejected_messages") == PAGE + 1
    summary = redrive(env, max_celsius=200)
    assert (summary.records, summary.stored) == (1, PAGE + 1)
    assert len(celsius(env)) == PAGE + 2
    assert [env.count(t) for t in QUARANTINE] == [0, 0]


def test_a_reading_refused_again_stays_with_todays_detail(env: Env) -> None:
    quarantine(env, env.envelope(temperature(reading("a", 40.0), reading("hot", 300.0)), seq=1))
    (before,) = env.rejected()
    summary = redrive(env, max_celsius=200)
    assert (summary.stored, dict(summary.rejected)) == (0, {"invalid_reading": 1})
    (after,) = env.rejected()
    assert "[-90, 200]" in after["detail"] and "[-90, 150]" in before["detail"]
    assert (after["raw"], after["seq"], after["received_at"]) == (
        before["raw"],
        before["seq"],
        before["received_at"],
    )
    assert env.count("rejected_records") == 1 and len(celsius(env)) == 1


def test_a_refused_reading_stays_a_reading_whatever_refuses_it_now(env: Env) -> None:
    """Else a later redrive would take it for a whole message and store its siblings again."""
    quarantine(env, env.envelope(temperature(reading("a", 40.0), reading("hot", 180.0)), seq=1))
    (before,) = env.rejected()
    env.enroll("edge-1", where="revoked")
    assert dict(redrive(env, max_celsius=200).rejected) == {"revoked_agent": 1}
    (row,) = env.rejected()
    assert (row["reason"], row["raw"], row["seq"]) == ("invalid_reading", before["raw"], 1)
    assert row["detail"].startswith("revoked_agent: ")
    (env.certs / "revoked" / "edge-1.pem").unlink()
    assert redrive(env, max_celsius=200).stored == 1
    assert sorted(r[2] for r in celsius(env)) == ["a", "hot"]
    assert [env.count(t) for t in QUARANTINE] == [0, 0]


def test_a_message_redriven_whole_keeps_its_refused_reading_for_later(env: Env) -> None:
    value = env.envelope(temperature(reading("a", 40.0), reading("hot", 180.0)), seq=7, agent="x")
    quarantine(env, value)
    env.enroll("x")
    first = redrive(env)
    assert (first.stored, dict(first.rejected)) == (1, {"invalid_reading": 1})
    (refused,) = env.rejected()
    assert (refused["reason"], refused["seq"]) == ("invalid_reading", 7)
    second = redrive(env, max_celsius=200)
    assert (second.stored, second.rows) == (1, 1)
    assert sorted(r[2] for r in celsius(env)) == ["a", "hot"]
    assert [env.count(t) for t in QUARANTINE] == [0, 0]


def gauges_plugin(own_row: bool = True) -> types.ModuleType:
    """Readings over ``limit`` refused one by one; a reading marked ``null`` makes a row
    the database refuses; with ``own_row``, a row of the message itself too."""
    module = types.ModuleType("gauges_plugin")

    @hookimpl
    def sparklem_manifest() -> Manifest:
        return Manifest(name="gauges", version="0.1.0", settings=[Setting("limit", float, 10, "")])

    @hookimpl
    def sparklem_register_tables(register: Any) -> None:
        register(
            "gauges",
            Column("id", Integer, primary_key=True),
            Column("v", Float, nullable=False),
            Column("at", DateTime(timezone=True), nullable=False),
            time="at",
            values=("v",),
        )

    @hookimpl
    def sparklem_process(message: Message, settings: dict[str, Any]) -> PluginResult:
        result = PluginResult()
        for item in message.data["readings"]:
            if item["v"] > settings["limit"]:
                result.reject("too high", item)
            else:
                value = None if item.get("null") else item["v"]
                result.add_row("gauges", {"v": value, "at": message.sent_at})
        if own_row:
            result.add_row("gauges", {"v": -1.0, "at": message.sent_at})
        return result

    for hook in (sparklem_manifest, sparklem_register_tables, sparklem_process):
        setattr(module, hook.__name__, hook)
    return module


def fixed(harness: PluginHarness, limit: float) -> Pipeline:
    """The harness's pipeline with ``limit`` changed."""
    config = Config(
        certificates=harness.certs,
        plugins={"gauges": {"limit": limit}},
        processor=harness.pipeline.settings,
    )
    return build_pipeline(
        config, harness.host, harness.store, harness.pipeline.server_keys, harness.registry
    )


def test_a_reading_whose_message_makes_other_rows_is_not_redriven_alone(
    plugin_harness: MakeHarness,
) -> None:
    harness = plugin_harness(gauges_plugin())
    assert harness.send({"readings": [{"v": 1.0}, {"v": 50.0}]}).stored
    summary = Redrive(fixed(harness, 100), harness.store).run()
    assert (summary.stored, dict(summary.rejected)) == (0, {"invalid_reading": 1})
    (stays,) = harness.rejections()
    assert stays.detail == (
        "cannot be redriven alone: its plugin makes rows of this message without this reading"
    )
    assert sorted(row["v"] for row in harness.rows("gauges")) == [-1.0, 1.0]


def test_a_reading_whose_row_the_database_refuses_stays_a_reading(
    plugin_harness: MakeHarness,
) -> None:
    harness = plugin_harness(gauges_plugin(own_row=False))
    assert harness.send({"readings": [{"v": 1.0}, {"v": 50.0, "null": True}]}).stored
    (before,) = harness.rejections()
    summary = Redrive(fixed(harness, 100), harness.store).run()
    assert (summary.stored, dict(summary.rejected)) == (0, {"invalid_payload": 1})
    (stays,) = harness.rejections()
    assert (stays.reason, stays.raw) == ("invalid_reading", before.raw)
    assert stays.detail.startswith("invalid_payload: database refused its rows: ")
    assert [row["v"] for row in harness.rows("gauges")] == [1.0]


# --- stored exactly once -----------------------------------------------------------------


def test_redriving_twice_stores_once(env: Env) -> None:
    quarantine(env, env.envelope(temperature(), seq=1, agent="edge-9"))
    kept = {t: keep(env, t) for t in QUARANTINE}
    env.enroll("edge-9")
    assert redrive(env).stored == 1
    assert redrive(env).records == 0  # nothing left to redrive
    # The same quarantine rows back (a backup restored, or a second redrive that read
    # them before the first committed): the key says it was stored.
    restore(env, kept)
    summary = redrive(env)
    assert (summary.stored, summary.already) == (0, 1)
    assert len(celsius(env)) == 1
    assert [env.count(t) for t in QUARANTINE] == [0, 0]


def keep(env: Env, name: str) -> list[dict[str, Any]]:
    with env.store.engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(env.store.metadata.tables[name])).mappings()]


def restore(env: Env, kept: dict[str, list[dict[str, Any]]]) -> None:
    with env.store.engine.begin() as conn:
        for name, rows in kept.items():
            conn.execute(insert(env.store.metadata.tables[name]), rows)


def test_a_message_quarantined_twice_is_stored_once(env: Env) -> None:
    value = env.envelope(temperature(), seq=4, agent="edge-9")
    quarantine(env, value, value)  # redelivered at a new offset
    assert reasons(env) == ["unknown_agent", "unknown_agent"]
    env.enroll("edge-9")
    summary = redrive(env)
    assert (summary.records, summary.stored, summary.already) == (2, 1, 1)
    assert len(celsius(env)) == 1
    assert [env.count(t) for t in QUARANTINE] == [0, 0]


def test_seq_below_the_mark_is_stored_exactly_once(env: Env) -> None:
    quarantine(env, env.envelope(temperature(reading("early", 30.0)), seq=1, agent="edge-9"))
    env.enroll("edge-9")
    quarantine(env, env.envelope(temperature(reading("later", 31.0)), seq=2, agent="edge-9"))
    assert env.query("SELECT last_seq FROM sparklem_streams") == [(2,)]
    assert redrive(env).stored == 1
    assert redrive(env).records == 0
    assert [r[1:3] for r in celsius(env)] == [(2, "later"), (1, "early")]
    assert env.query("SELECT last_seq FROM sparklem_streams") == [(2,)]  # not moved back


def test_two_redrives_at_once_store_each_record_once(env: Env) -> None:
    quarantine(env, *(env.envelope(temperature(), seq=seq, agent="edge-9") for seq in (1, 2, 3)))
    env.enroll("edge-9")
    other: list[Summary] = []

    def meanwhile(_progress: Summary) -> None:  # after judging the first record, uncommitted
        if not other:
            other.append(redrive(env))

    summary = Redrive(today(env), env.store, meanwhile, progress_every=1).run()
    assert (other[0].stored, summary.stored) == (3, 0)
    assert [row[1] for row in celsius(env)] == [1, 2, 3]
    assert [env.count(t) for t in QUARANTINE] == [0, 0]


# --- what stays in quarantine ------------------------------------------------------------


def test_truncated_records_are_counted_and_named(env: Env) -> None:
    env.settings.rejected_raw_max_bytes = 100
    quarantine(env, env.envelope(temperature(), seq=1, agent="edge-9"), b"x" * 500)
    env.enroll("edge-9")
    summary = redrive(env)
    assert summary.cut == ["sparklem.temperature[0]@0", "sparklem.temperature[0]@1"]
    assert summary.stored == 0 and reasons(env) == ["unknown_agent", "malformed"]
    assert env.count("rejected_records") == 2


def test_still_bad_record_stays_with_its_new_reason(env: Env) -> None:
    quarantine(env, env.envelope(temperature(), seq=1, agent="edge-9"))
    (before,) = env.rejected()
    env.enroll("edge-9", env.keys.intruder)  # enrolled, but with another key
    summary = redrive(env)
    assert dict(summary.rejected) == {"bad_signature": 1}
    (after,) = env.rejected()
    assert after["reason"] == "bad_signature"
    assert after["received_at"] == before["received_at"]
    assert env.count("rejected_records") == 1 and celsius(env) == []


def test_a_reading_cut_when_quarantined_stays_and_its_siblings_are_not_stored_again(
    env: Env,
) -> None:
    env.settings.rejected_raw_max_bytes = 40
    sent = temperature(reading("a", 40.0), reading("a-long-sensor-name-" * 3, 180.0))
    quarantine(env, env.envelope(sent, seq=1))
    summary = redrive(env, max_celsius=200)
    assert (summary.stored, dict(summary.rejected)) == (0, {"invalid_reading": 1})
    (row,) = env.rejected()
    assert row["detail"].startswith("cannot be redriven alone: its reading was cut")
    assert [r[2] for r in celsius(env)] == ["a"]


def test_clock_skew_is_judged_against_when_the_record_was_received(env: Env) -> None:
    quarantine(env, env.envelope(temperature(), seq=1, agent="edge-9"))
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with env.store.engine.begin() as conn:  # it arrived an hour ago, sent "now"
        for table in (env.store.rejected, env.store.records):
            conn.execute(update(table).values(received_at=an_hour_ago))
    env.enroll("edge-9")
    assert dict(redrive(env).rejected) == {"clock_skew": 1}
    assert reasons(env) == ["clock_skew"] and celsius(env) == []


def test_revoked_agents_record_stays_rejected(env: Env) -> None:
    quarantine(env, env.envelope(temperature(), seq=1, agent="edge-9"))
    env.enroll("edge-9", where="revoked")
    summary = redrive(env)
    assert dict(summary.rejected) == {"revoked_agent": 1}
    assert reasons(env) == ["revoked_agent"] and celsius(env) == []


def test_dry_run_changes_nothing(env: Env) -> None:
    value = env.envelope(temperature(), seq=1, agent="edge-9")
    quarantine(env, value, value, env.envelope(temperature(reading("hot", 180.0)), seq=1))
    env.enroll("edge-9")
    before = snapshot(env)
    summary = redrive(env, max_celsius=200, dry_run=True)
    assert (summary.records, summary.stored, summary.already) == (3, 2, 1)
    assert snapshot(env) == before


def test_selection_by_reason_plugin_agent_and_time(env: Env) -> None:
    sent = now_ms(-3600)
    quarantine(env, env.envelope(temperature(), seq=1, agent="edge-8", ts=sent))
    cpu = {"cpu": {"percent": 5.0}}
    quarantine(
        env,
        env.envelope(cpu, seq=1, agent="edge-8", plugin="pu_workload", ts=sent),
        topic=PU_TOPIC,
    )
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with env.store.engine.begin() as conn:  # received an hour ago: no close call
        for table in (env.store.rejected, env.store.records):
            conn.execute(update(table).values(received_at=an_hour_ago))
    later = an_hour_ago + timedelta(minutes=30)
    quarantine(env, env.envelope(temperature(), seq=1, agent="edge-9"))
    env.enroll("edge-8")
    env.enroll("edge-9")
    assert redrive(env, reasons=("invalid_reading",)).records == 0
    assert redrive(env, plugin="pu_workload").stored == 1
    assert env.count("pu_workload_readings") == 1
    assert redrive(env, since=later + timedelta(hours=1)).records == 0
    assert redrive(env, agent="edge-8", since=later).records == 0
    assert redrive(env, since=later).stored == 1
    assert [row[0] for row in celsius(env)] == ["edge-9"]
    assert redrive(env, reasons=("unknown_agent",), agent="edge-8").stored == 1
    assert [env.count(t) for t in QUARANTINE] == [0, 0]


# --- hostile quarantine rows -------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_env(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Iterator[Env]:
    tmp = tmp_path_factory.mktemp("hostile")
    world = Env(tmp, keys, f"sqlite:///{tmp}/db.sqlite3")
    world.enroll("edge-9")
    yield world
    world.close()


@pytest.fixture(scope="module")
def sealed(sqlite_env: Env) -> bytes:
    return sqlite_env.envelope(temperature(), seq=1, agent="edge-9")


@given(
    pick=st.sampled_from(["random", "sealed", "tampered", "cut"]),
    random=st.binary(max_size=300),
    size=st.none() | st.integers(-5, 2**31 - 1),
    truncated=st.booleans(),
    authenticated=st.booleans(),
    reason=st.sampled_from(wire.REASONS),
    raw=st.none() | st.text(max_size=50),
    topic=st.sampled_from(["sparklem.temperature", "other"]),
)
def test_hostile_quarantine_rows_never_crash_and_are_never_stored(
    sqlite_env: Env, sealed: bytes, pick, random, size, truncated, authenticated, reason, raw, topic
) -> None:
    """Rows as anyone with write access to the database could leave them. Only a whole,
    genuinely signed record on its plugin's topic may be stored: anything else stays."""
    env = sqlite_env
    value = {
        "random": random,
        "sealed": sealed,
        "tampered": sealed.replace(b'"ct":"', b'"ct":"AAAA'),
        "cut": sealed[: len(sealed) // 2],
    }[pick]
    size = len(value) if size is None else size
    now = datetime.now(UTC)
    where = {"topic": topic, "partition": 0, "offset": 7, "agent_id": "edge-9", "plugin": None}
    with env.store.engine.begin() as conn:
        for name in (*QUARANTINE, "sparklem_redriven", "temperature_readings", "sparklem_streams"):
            conn.execute(text(f"DELETE FROM {name}"))
        conn.execute(
            insert(env.store.records),
            {**where, "authenticated": authenticated, "size": size, "truncated": truncated,
             "value": value, "received_at": now},
        )  # fmt: skip
        conn.execute(
            insert(env.store.rejected),
            {**where, "reason": reason, "detail": "?", "raw": raw, "received_at": now},
        )
    summary = redrive(env)
    whole = pick == "sealed" and not truncated and size == len(value)
    storable = whole and topic == "sparklem.temperature" and reason != "invalid_reading"
    assert summary.stored == env.count("temperature_readings") == int(storable)
    assert env.count("sparklem_redriven") == int(storable)
    assert env.count("rejected_messages") == int(not storable)  # else still there, with a reason


# --- the command -------------------------------------------------------------------------


def test_since_takes_rfc3339_or_epoch_ms() -> None:
    assert parse_time("2026-11-30T04:00:00Z") == datetime(2026, 11, 30, 4, tzinfo=UTC)
    assert parse_time("2026-11-30T05:00:00+01:00") == datetime(2026, 11, 30, 4, tzinfo=UTC)
    assert parse_time("1000") == datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC)
    for bad in ("2026-11-30T04:00:00", "yesterday", "99999999999999999999"):
        with pytest.raises(ValueError):
            parse_time(bad)


def test_bad_since_is_a_one_line_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "redrive", "--since", "yesterday"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--since: 'yesterday' is neither RFC 3339" in done.stderr.splitlines()[-1]


def test_redrive_beside_a_running_processor(
    fleet: Fleet, processors, tmp_path, broker, database_url
) -> None:
    """An unknown agent's records, the agent enrolled, redrive while its new messages flow."""
    db = Db(database_url)
    proc = start(processors, tmp_path, fleet.config(broker.bootstrap, database_url))
    fleet.enroll("late")
    key = fleet.certificates / "agents" / "late.pem"
    key.rename(tmp_path / "late.pem")  # not enrolled yet
    early = [fleet.envelope("late", "temperature", GOOD) for _ in range(20)]
    for value in [*early, early[0]]:  # the first one delivered twice
        fleet.send(value, key="late")  # one partition: in seq order, as an agent sends
    fleet.flush()
    wait_for(lambda: db.reasons().get("unknown_agent") == 21, 60, message="not quarantined")
    (tmp_path / "late.pem").rename(key)
    sent = 20

    def send() -> None:
        nonlocal sent
        fleet.send(fleet.envelope("late", "temperature", GOOD), key="late")
        fleet.flush()
        sent += 1

    def enrolled() -> bool:  # until the processor's registry sees the key, it quarantines
        send()
        return db.count("temperature_readings") > 0

    wait_for(enrolled, 30, interval=0.5, message="the agent's key was not picked up")
    command = [sys.executable, str(ROOT / "main.py"), "redrive", "--config", str(proc.config_path)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as rd:
        while rd.poll() is None:  # the processor commits while redrive does
            send()
            with contextlib.suppress(subprocess.TimeoutExpired):
                rd.wait(0.2)
        out, err = rd.communicate(timeout=60)
    assert rd.returncode == 0, err
    assert "already_redriven=1" in out, out
    redrive_again = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert redrive_again.returncode == 0, redrive_again.stderr
    db.wait_count("temperature_readings", sent)
    assert db.count("rejected_messages") == 0 and db.count("rejected_records") == 0
    assert db.scalar("SELECT last_seq FROM sparklem_streams") == sent - 1
    db.close()
