"""The Pipeline engine with a real SQLite Store, a real registry and the real plugins.

No Kafka: records are built here and each batch is committed as the consumer would
(``process`` -> ``Store.commit`` -> ``committed``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pipeline_env import (
    GROUP,
    TOPIC,
    Env,
    Keys,
    now_ms,
    reading,
    rejected_reasons,
    run,
    temperature,
)
from sqlalchemy import text

from sparklem_core import wire
from sparklem_core.db.batch import Batch, StreamMark
from sparklem_core.db.store import Conflict


@pytest.fixture
def env(tmp_path: Path, keys: Keys) -> Iterator[Env]:
    world = Env(tmp_path, keys, f"sqlite:///{tmp_path}/db.sqlite3")
    yield world
    world.close()


# --- the good path ---------------------------------------------------------------------------


def test_valid_temperature_message_is_stored(env: Env) -> None:
    value = env.envelope(temperature(reading("a", 40.0), reading("b", 212, unit="F")), seq=1)
    stats = run(env.pipeline(), [env.record(value)])
    assert (stats.consumed, stats.stored, stats.rows, stats.duplicates) == (1, 1, 2, 0)
    assert rejected_reasons(stats) == {}
    rows = env.query(
        "SELECT agent_id, seq, sensor, celsius FROM temperature_readings ORDER BY sensor"
    )
    assert rows == [("edge-1", 1, "a", 40.0), ("edge-1", 1, "b", 100.0)]
    assert env.query("SELECT agent_id, plugin, last_seq FROM sparklem_streams") == [
        ("edge-1", "temperature", 1)
    ]
    assert env.query("SELECT group_id, topic, partition, next_offset FROM sparklem_offsets") == [
        (GROUP, TOPIC, 0, 1)
    ]
    assert env.count("rejected_messages") == 0


def test_pu_workload_message_is_stored(env: Env) -> None:
    data = {"cpu": {"percent": 37.5, "per_core": [40.0, 35.0]}}
    value = env.envelope(data, seq=1, plugin="pu_workload")
    stats = run(env.pipeline(), [env.record(value, topic="sparklem.pu_workload")])
    assert stats.stored == 1 and stats.rows == 3
    assert env.count("pu_workload_readings") == 3


def test_many_messages_in_one_batch(env: Env) -> None:
    records = [
        env.record(env.envelope(temperature(), seq=seq, agent=agent))
        for seq in range(1, 6)
        for agent in ("edge-1", "edge-2")
    ]
    stats = run(env.pipeline(), records)
    assert (stats.stored, stats.rows) == (10, 10)
    assert env.query("SELECT agent_id, last_seq FROM sparklem_streams ORDER BY agent_id") == [
        ("edge-1", 5),
        ("edge-2", 5),
    ]
    assert env.query("SELECT next_offset FROM sparklem_offsets") == [(10,)]


# --- at most once ---------------------------------------------------------------------------


def test_same_record_twice_is_a_redelivery(env: Env) -> None:
    record = env.record(env.envelope(temperature(), seq=1))
    pipeline = env.pipeline()
    assert run(pipeline, [record]).stored == 1
    again = run(pipeline, [record])
    assert (again.redelivered, again.stored, again.duplicates) == (1, 0, 0)
    assert rejected_reasons(again) == {}
    # A processor that starts afresh knows the committed offset from the database.
    cold = run(env.pipeline(), [record])
    assert (cold.redelivered, cold.stored) == (1, 0)
    assert env.count("temperature_readings") == 1
    assert env.query("SELECT next_offset FROM sparklem_offsets") == [(1,)]


def test_redelivered_batch_with_new_records(env: Env) -> None:
    pipeline = env.pipeline()
    first = [env.record(env.envelope(temperature(), seq=seq)) for seq in (1, 2)]
    run(pipeline, first)
    later = env.record(env.envelope(temperature(), seq=3))
    stats = run(env.pipeline(), [*first, later])
    assert (stats.redelivered, stats.stored) == (2, 1)
    assert env.count("temperature_readings") == 3
    assert env.query("SELECT next_offset FROM sparklem_offsets") == [(3,)]


def test_same_seq_on_a_new_offset_is_a_duplicate(env: Env) -> None:
    pipeline = env.pipeline()
    run(pipeline, [env.record(env.envelope(temperature(), seq=5))])
    replay = env.record(env.envelope(temperature(), seq=5))  # same seq, sealed again
    older = env.record(env.envelope(temperature(), seq=4))
    stats = run(pipeline, [replay, older])
    assert (stats.duplicates, stats.stored, stats.redelivered) == (2, 0, 0)
    assert rejected_reasons(stats) == {}
    assert env.count("temperature_readings") == 1
    assert env.query("SELECT next_offset FROM sparklem_offsets") == [(3,)]
    assert env.query("SELECT last_seq FROM sparklem_streams") == [(5,)]
    # ...and for a processor that reads the mark from the database.
    stats = run(env.pipeline(), [env.record(env.envelope(temperature(), seq=5))])
    assert stats.duplicates == 1 and env.count("temperature_readings") == 1


def test_duplicate_within_one_batch(env: Env) -> None:
    value = env.envelope(temperature(), seq=1)
    stats = run(env.pipeline(), [env.record(value), env.record(value)])
    assert (stats.stored, stats.duplicates) == (1, 1)
    assert env.count("temperature_readings") == 1


def test_streams_are_per_agent_and_plugin(env: Env) -> None:
    records = [
        env.record(env.envelope(temperature(), seq=1, agent="edge-1")),
        env.record(env.envelope(temperature(), seq=1, agent="edge-2")),
        env.record(
            env.envelope({"cpu": {"percent": 1.0}}, seq=1, plugin="pu_workload"),
            topic="sparklem.pu_workload",
        ),
    ]
    stats = run(env.pipeline(), records)
    assert (stats.stored, stats.duplicates) == (3, 0)


# --- rejections ------------------------------------------------------------------------------


def only_rejection(env: Env) -> dict[str, Any]:
    (row,) = env.rejected()
    return row


def test_clock_skew(env: Env) -> None:
    value = env.envelope(temperature(), seq=1, ts=now_ms(600))
    stats = run(env.pipeline(), [env.record(value)])
    assert rejected_reasons(stats) == {"clock_skew": 1}
    row = only_rejection(env)
    assert (row["reason"], row["agent_id"], row["plugin"]) == (
        "clock_skew",
        "edge-1",
        "temperature",
    )
    assert (row["topic"], row["partition"], row["offset"]) == (TOPIC, 0, 0)
    assert "in the future" in row["detail"]
    assert row["raw"] == value.decode()
    assert env.count("temperature_readings") == 0


def test_small_clock_skew_and_old_messages_are_accepted(env: Env) -> None:
    records = [
        env.record(env.envelope(temperature(), seq=1, ts=now_ms(120))),
        env.record(env.envelope(temperature(), seq=2, ts=now_ms(-30 * 86400))),
    ]
    assert run(env.pipeline(), records).stored == 2


def test_clock_skew_is_configurable(env: Env) -> None:
    value = env.envelope(temperature(), seq=1, ts=now_ms(120))
    stats = run(env.pipeline(clock_skew_s=60.0), [env.record(value)])
    assert rejected_reasons(stats) == {"clock_skew": 1}


def test_unknown_plugin(env: Env) -> None:
    value = env.envelope({"x": 1}, seq=1, plugin="no_such_plugin")
    stats = run(env.pipeline(), [env.record(value)])
    assert rejected_reasons(stats) == {"unknown_plugin": 1}
    row = only_rejection(env)
    assert (row["agent_id"], row["plugin"]) == ("edge-1", "no_such_plugin")
    assert "no_such_plugin" in row["detail"]


def test_a_plugin_on_another_plugins_topic_is_unknown_there(env: Env) -> None:
    """Per-topic produce rights decide which plugin a record can reach."""
    value = env.envelope({"cpu": {"percent": 1.0}}, seq=1, plugin="pu_workload")
    stats = run(env.pipeline(), [env.record(value, topic=TOPIC)])
    assert rejected_reasons(stats) == {"unknown_plugin": 1}
    assert "not configured for topic 'sparklem.temperature'" in only_rejection(env)["detail"]
    assert env.count("pu_workload_readings") == 0


def test_a_plugin_topic_can_be_configured(env: Env) -> None:
    pipeline = env.pipeline()
    pipeline.topics["temperature"] = "site-a.temps"
    stats = run(pipeline, [env.record(env.envelope(temperature(), seq=1), topic="site-a.temps")])
    assert stats.stored == 1


def rejected_records(env: Env) -> list[dict[str, Any]]:
    with env.store.engine.connect() as conn:
        rows = conn.execute(text("SELECT * FROM rejected_records ORDER BY id"))
        return [dict(row._mapping) for row in rows]


def test_a_signed_message_is_kept_whole_once_however_many_readings_are_refused(env: Env) -> None:
    bad = [reading(f"s{i}", -300.0, pad="p" * 3000) for i in range(3)]
    value = env.envelope(temperature(reading("ok", 40.0), *bad), seq=1)
    assert len(value) > 9000
    stats = run(env.pipeline(rejected_raw_max_bytes=100), [env.record(value)])
    assert rejected_reasons(stats) == {"invalid_reading": 3}
    (kept,) = rejected_records(env)  # one record, three refused readings
    assert bytes(kept["value"]) == value and kept["size"] == len(value)
    assert (kept["authenticated"], kept["truncated"]) == (True, False)
    assert [r["offset"] for r in env.rejected()] == [kept["offset"]] * 3


def test_an_unsigned_record_is_kept_up_to_the_limit_and_flagged(env: Env) -> None:
    forged = json.loads(env.envelope(temperature(), seq=1))
    forged["ct"] = forged["ct"][:-4] + "AAA="  # the signature no longer verifies
    value = json.dumps({**forged, "pad": "x" * 5000}).encode()
    stats = run(env.pipeline(rejected_raw_max_bytes=1000), [env.record(value)])
    assert rejected_reasons(stats) == {"bad_signature": 1}
    (kept,) = rejected_records(env)
    assert bytes(kept["value"]) == value[:1000] and kept["size"] == len(value)
    assert (kept["authenticated"], kept["truncated"]) == (False, True)


def test_a_signed_message_refused_after_verification_is_kept_whole(env: Env) -> None:
    value = env.envelope({"readings": "hot", "pad": "y" * 5000}, seq=1)
    stats = run(env.pipeline(rejected_raw_max_bytes=100), [env.record(value)])
    assert rejected_reasons(stats) == {"invalid_payload": 1}
    (kept,) = rejected_records(env)
    assert bytes(kept["value"]) == value and not kept["truncated"]
    assert len(only_rejection(env)["raw"]) < 200  # the human-readable copy stays short


def test_unknown_key(env: Env) -> None:
    value = env.envelope(temperature(), seq=1, server=env.keys.other_server)
    stats = run(env.pipeline(), [env.record(value)])
    assert rejected_reasons(stats) == {"unknown_key": 1}
    assert wire.key_id(env.keys.other_server) in only_rejection(env)["detail"]


def test_too_large(env: Env) -> None:
    value = env.envelope(temperature(*[reading(f"s{i}") for i in range(50)]), seq=1)
    assert len(value) > 2000
    stats = run(env.pipeline(max_message_bytes=2000), [env.record(value)])
    assert rejected_reasons(stats) == {"too_large": 1}
    row = only_rejection(env)
    assert (row["agent_id"], row["plugin"]) == (None, None)
    assert str(len(value)) in row["detail"] and "2000" in row["detail"]


def test_rejected_raw_is_truncated(env: Env) -> None:
    value = b'{"not": "an envelope", "pad": "' + b"x" * 5000 + b'"}'
    run(env.pipeline(rejected_raw_max_bytes=100), [env.record(value)])
    raw = only_rejection(env)["raw"]
    assert raw.startswith('{"not"') and len(raw) < 200


def test_plugin_that_raises(env: Env) -> None:
    good = env.record(env.envelope(temperature(), seq=1))
    boom = env.record(env.envelope({"x": 1}, seq=7, plugin="exploder"), topic="sparklem.exploder")
    stats = run(env.pipeline(), [boom, good])
    assert rejected_reasons(stats) == {"processing_error": 1}  # a plugin bug, not bad data
    assert stats.stored == 1
    row = only_rejection(env)
    assert row["reason"] == "processing_error" and row["plugin"] == "exploder"
    assert "RuntimeError: boom 7" in row["detail"]
    assert env.count("temperature_readings") == 1


def test_plugin_writing_another_plugins_table(env: Env) -> None:
    value = env.envelope({"steal": True}, seq=1, plugin="exploder")
    stats = run(env.pipeline(), [env.record(value, topic="sparklem.exploder")])
    assert rejected_reasons(stats) == {"processing_error": 1}
    assert "temperature_readings" in only_rejection(env)["detail"]
    assert env.count("temperature_readings") == 0


def test_invalid_payload_from_the_plugin(env: Env) -> None:
    value = env.envelope({"readings": "hot"}, seq=1)
    stats = run(env.pipeline(), [env.record(value)])
    assert rejected_reasons(stats) == {"invalid_payload": 1}
    assert only_rejection(env)["detail"] == "'readings' must be a list"


def test_one_bad_reading_among_good_ones(env: Env) -> None:
    bad = reading("gpu", -300.0)
    value = env.envelope(temperature(reading("a", 40.0), bad, reading("b", 41.0)), seq=1)
    stats = run(env.pipeline(), [env.record(value)])
    assert rejected_reasons(stats) == {"invalid_reading": 1}
    assert (stats.stored, stats.rows) == (1, 2)
    assert env.query("SELECT sensor FROM temperature_readings ORDER BY sensor") == [("a",), ("b",)]
    row = only_rejection(env)
    assert (row["reason"], row["agent_id"], row["plugin"]) == (
        "invalid_reading",
        "edge-1",
        "temperature",
    )
    assert json.loads(row["raw"]) == bad
    assert "absolute zero" in row["detail"]


def test_plugin_settings_reach_the_plugin(env: Env) -> None:
    value = env.envelope(temperature(reading("hot", 160.0)), seq=1)  # max_celsius is 150 here
    stats = run(env.pipeline(), [env.record(value)])
    assert rejected_reasons(stats) == {"invalid_reading": 1}
    assert "150" in only_rejection(env)["detail"]


def test_identity_and_crypto_rejections(env: Env) -> None:
    env.enroll("gone")
    env.enroll("gone", where="revoked")
    good = env.envelope(temperature(), seq=1)
    doc = json.loads(good)
    doc["ct"] = doc["ct"][:-4] + ("AAAA" if doc["ct"][-4:] != "AAAA" else "BBBB")
    tampered = json.dumps(doc).encode()
    cases = {
        "unknown_agent": env.envelope(temperature(), seq=1, agent="stranger"),
        "revoked_agent": env.envelope(temperature(), seq=1, agent="gone"),
        "bad_signature": tampered,
        "malformed": b"{not json",
    }
    records = [env.record(value) for value in cases.values()] + [env.record(None)]
    stats = run(env.pipeline(), records)
    assert rejected_reasons(stats) == {
        "unknown_agent": 1,
        "revoked_agent": 1,
        "bad_signature": 1,
        "malformed": 2,
    }
    rows = env.rejected()
    assert [r["reason"] for r in rows] == [*cases, "malformed"]
    assert [r["offset"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["agent_id"] == "stranger" and rows[3]["agent_id"] is None
    assert rows[4]["detail"] == "record has no value" and rows[4]["raw"] == ""
    assert env.query("SELECT next_offset FROM sparklem_offsets") == [(5,)]


def test_decrypt_failed(env: Env) -> None:
    session = wire.SessionKey(env.keys.server)
    session.ek = wire.SessionKey(env.keys.other_server).ek  # wrapped for another key
    value = wire.seal(
        {"seq": 1, "ts": now_ms(), "data": temperature()},
        agent="edge-1",
        plugin="temperature",
        session=session,
        agent_key=env.keys.agent,
    ).to_json()
    assert json.loads(value)["kid"] == wire.key_id(env.keys.server)
    stats = run(env.pipeline(), [env.record(value)])
    assert rejected_reasons(stats) == {"decrypt_failed": 1}
    assert only_rejection(env)["detail"] == "message could not be decrypted"


def test_enrollment_after_start_needs_a_registry_refresh(env: Env) -> None:
    pipeline = env.pipeline()
    env.enroll("late")
    value = env.envelope(temperature(), seq=1, agent="late")
    assert rejected_reasons(run(pipeline, [env.record(value)])) == {"unknown_agent": 1}
    pipeline.registry.refresh()
    value = env.envelope(temperature(), seq=2, agent="late")
    assert run(pipeline, [env.record(value)]).stored == 1


# --- two processors on one database -----------------------------------------------------------


@pytest.fixture
def every_db(tmp_path: Path, keys: Keys, database_url: str) -> Iterator[Env]:
    """The world on SQLite, PostgreSQL and MariaDB (the marks' compare-and-set differs)."""
    world = Env(tmp_path, keys, database_url)
    yield world
    world.close()


def test_commit_conflict_when_a_mark_was_moved_by_someone_else(every_db: Env) -> None:
    env = every_db
    other_store = env.new_store()
    a, b = env.pipeline(env.store), env.pipeline(other_store)
    first = env.record(env.envelope(temperature(), seq=1))

    # Both take the partition's first record: the second insert of the mark conflicts.
    batch_a, _ = a.process([first])
    batch_b, _ = b.process([first])
    env.store.commit(batch_a)
    a.committed(batch_a)
    with pytest.raises(Conflict):
        other_store.commit(batch_b)
    assert env.count("temperature_readings") == 1  # b's rows rolled back with it

    # Both know offset 1 was committed; a moves it first, b's UPDATE finds it moved.
    b.forget_state()
    second = env.record(env.envelope(temperature(), seq=2))
    batch_a, _ = a.process([second])
    batch_b, stats_b = b.process([second])
    assert stats_b.redelivered == 0 and batch_b.offsets[(TOPIC, 0)].expected == 1
    env.store.commit(batch_a)
    a.committed(batch_a)
    with pytest.raises(Conflict):
        other_store.commit(batch_b)
    assert env.count("temperature_readings") == 2
    assert env.query("SELECT last_seq FROM sparklem_streams") == [(2,)]
    assert env.query("SELECT next_offset FROM sparklem_offsets") == [(2,)]

    # After a conflict b reloads its marks and sees the record as a redelivery.
    b.forget_state()
    batch_b, stats_b = b.process([second])
    assert stats_b.redelivered == 1 and batch_b.rows == {}


def test_stream_mark_conflict_across_partitions(every_db: Env) -> None:
    """One stream on two partitions (a repartition): the seq mark is guarded too."""
    env = every_db
    other_store = env.new_store()
    a, b = env.pipeline(env.store), env.pipeline(other_store)
    run(a, [env.record(env.envelope(temperature(), seq=1), partition=0)])
    b.process([])  # nothing cached yet
    on_0 = env.record(env.envelope(temperature(), seq=2), partition=0)
    on_1 = env.record(env.envelope(temperature(), seq=3), partition=1)
    batch_a, _ = a.process([on_0])
    batch_b, _ = b.process([on_1])
    assert batch_b.streams[("edge-1", "temperature")] == StreamMark(expected=1, last_seq=3)
    env.store.commit(batch_a)
    with pytest.raises(Conflict):
        other_store.commit(batch_b)
    assert env.query("SELECT last_seq FROM sparklem_streams") == [(2,)]
    assert set(env.store.load_offsets([(TOPIC, 0), (TOPIC, 1)])) == {(TOPIC, 0)}


def test_commit_of_an_empty_batch(env: Env) -> None:
    env.store.commit(Batch())
    assert env.count("sparklem_offsets") == 0


# --- NUL characters (PostgreSQL text cannot hold them) -----------------------------------


def test_rejected_raw_holds_no_nul_character(env: Env) -> None:
    stats = run(env.pipeline(), [env.record(b'{"v": 1, "agent": "a\x00b"}')])
    assert rejected_reasons(stats) == {"malformed": 1}
    assert "\x00" not in only_rejection(env)["raw"]


def test_record_with_nul_byte_is_storable_in_postgresql(
    tmp_path: Path, keys: Keys, pg_server
) -> None:
    pg_server.start()
    name = f"test_nul_{uuid.uuid4().hex[:12]}"
    world = Env(tmp_path, keys, pg_server.create_database(name))
    try:
        pipeline = world.pipeline()
        batch, stats = pipeline.process([world.record(b"\x00garbage")])
        assert rejected_reasons(stats) == {"malformed": 1}
        world.store.commit(batch)  # sqlalchemy.exc.DataError: ... cannot contain NUL
    finally:
        world.close()
        pg_server.drop_database(name)
