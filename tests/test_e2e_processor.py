"""The processor end to end: a real broker, ``python3 main.py run`` as a subprocess,
and SQLite or a real PostgreSQL. Every case waits on conditions, never on sleeps."""

from __future__ import annotations

import base64
import json
import os
import signal

import pytest
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15, pss
from harness import GOOD, Db, Fleet, ProcessorProcess, now_ms, pid_alive, start, temperature
from waiting import wait_for

from sparklem_core import wire
from sparklem_core.dev.servers import TansuBroker


def _resign(fleet: Fleet, env: dict, agent: str) -> dict:
    signed = wire.Envelope(
        **{k: env[k] for k in ("agent", "plugin", "kid", "ek", "iv", "ct", "tag", "sig")}
    )
    sig = pss.new(fleet.keys[agent], salt_bytes=32).sign(SHA256.new(signed.signed_bytes()))
    return {**env, "sig": base64.b64encode(sig).decode()}


def test_every_rejection_reason_on_the_wire(fleet, db, processors, tmp_path, broker, database_url):
    fleet.enroll("revoked-1")
    fleet.enroll("weak-1", bits=1024)
    start(
        processors, tmp_path, fleet.config(broker.bootstrap, database_url, max_message_bytes=20_000)
    )
    fleet.revoke("revoked-1")

    valid = json.loads(fleet.envelope("edge-1", "temperature", GOOD))
    other_server = RSA.generate(2048)
    sends = {
        "malformed": b"not json at all",
        "too_large": b"x" * 30_000,
        "unknown_agent": json.dumps({**valid, "agent": "stranger"}).encode(),
        "revoked_agent": fleet.envelope("revoked-1", "temperature", GOOD),
        "unknown_key": json.dumps(
            _resign(fleet, {**valid, "kid": "0123456789abcdef"}, "edge-1")
        ).encode(),
        "bad_signature": json.dumps(
            {**valid, "ct": base64.b64encode(b"tampered!").decode()}
        ).encode(),
        "unknown_plugin": json.dumps(
            _resign(fleet, {**valid, "plugin": "humidity"}, "edge-1")
        ).encode(),
        "clock_skew": fleet.envelope("edge-1", "temperature", GOOD, ts=now_ms() + 3_600_000),
        "invalid_payload": fleet.envelope("edge-1", "temperature", {"readings": []}),
        "invalid_reading": fleet.envelope(
            "edge-1", "temperature", temperature(("ok", 20.0, "C"), ("cold", -300.0, "C"))
        ),
    }
    # decrypt_failed: a session key wrapped for another server key, properly signed.
    foreign = wire.SessionKey(other_server.public_key())
    foreign.kid = fleet.kid
    sends["decrypt_failed"] = wire.seal(
        {"seq": 999, "ts": now_ms(), "data": GOOD},
        agent="edge-1",
        plugin="temperature",
        session=foreign,
        agent_key=fleet.keys["edge-1"],
    ).to_json()
    # PKCS#1 v1.5 signature instead of PSS, and a 1024-bit agent key.
    v15 = json.loads(fleet.envelope("edge-1", "temperature", GOOD))
    raw = wire.Envelope(
        **{k: v15[k] for k in ("agent", "plugin", "kid", "ek", "iv", "ct", "tag", "sig")}
    )
    v15["sig"] = base64.b64encode(
        pkcs1_15.new(fleet.keys["edge-1"]).sign(SHA256.new(raw.signed_bytes()))
    ).decode()
    sends["bad_signature_v15"] = json.dumps(v15).encode()
    sends["unknown_agent_weak"] = fleet.envelope("weak-1", "temperature", GOOD)
    sends["valid"] = fleet.envelope("edge-1", "temperature", GOOD)

    for value in sends.values():
        fleet.send(value, key="edge-1")
    fleet.flush()

    expected = {
        "malformed": 1,
        "too_large": 1,
        "unknown_agent": 2,
        "revoked_agent": 1,
        "unknown_key": 1,
        "bad_signature": 2,
        "unknown_plugin": 1,
        "clock_skew": 1,
        "invalid_payload": 1,
        "invalid_reading": 1,
        "decrypt_failed": 1,
    }
    wait_for(lambda: db.reasons() == expected, 45, message=f"rejections were {db.reasons()}")
    # the valid message and the valid sibling reading
    db.wait_count("temperature_readings", 2)
    row = db.rows(
        "SELECT agent_id, plugin, detail, raw FROM rejected_messages "
        "WHERE reason = 'invalid_reading'"
    )[0]
    assert row.agent_id == "edge-1" and row.plugin == "temperature"
    assert json.loads(row.raw)["sensor"] == "cold"
    unknown = db.rows("SELECT agent_id, raw FROM rejected_messages WHERE reason = 'malformed'")[0]
    assert unknown.agent_id is None and unknown.raw == "not json at all"
    code, took = processors[0].stop()
    assert code == 0 and took < 10


def test_readings_converted_and_stored(fleet, db, processors, tmp_path, broker, database_url):
    start(processors, tmp_path, fleet.config(broker.bootstrap, database_url))
    fleet.send(
        fleet.envelope(
            "edge-1",
            "temperature",
            temperature(("a", 212.0, "F"), ("b", 273.15, "K"), ("c", 21.5, "C")),
        ),
        key="edge-1",
    )
    workload = {
        "cpu": {"percent": 37.5, "per_core": [40.0, 35.0], "load_avg": [0.5, 0.6, 0.7]},
        "memory": {"used_bytes": 1024, "total_bytes": 4096},
        "gpus": [
            {
                "index": 0,
                "name": "Orin",
                "util_percent": 12.0,
                "mem_used_bytes": 100,
                "mem_total_bytes": 800,
                "temperature_c": 51.0,
            }
        ],
    }
    fleet.send(fleet.envelope("edge-1", "pu_workload", workload), "pu_workload", key="edge-1")
    fleet.flush()
    db.wait_count("temperature_readings", 3)
    db.wait_count("pu_workload_readings", 4)  # cpu, 2 cores, 1 gpu
    celsius = dict(db.rows("SELECT sensor, celsius FROM temperature_readings"))
    assert celsius["a"] == pytest.approx(100.0)
    assert celsius["b"] == pytest.approx(0.0, abs=1e-9)
    assert celsius["c"] == pytest.approx(21.5)
    units = {(r.unit, r.unit_index): r for r in db.rows("SELECT * FROM pu_workload_readings")}
    assert set(units) == {("cpu", 0), ("core", 0), ("core", 1), ("gpu", 0)}
    assert units[("cpu", 0)].load_15m == pytest.approx(0.7)
    assert units[("cpu", 0)].mem_total_bytes == 4096
    assert units[("gpu", 0)].name == "Orin" and units[("gpu", 0)].load_1m is None
    assert units[("core", 1)].utilization_pct == pytest.approx(35.0)


def test_replay_and_redelivery_stored_once(fleet, db, processors, tmp_path, broker, database_url):
    from confluent_kafka import Consumer, TopicPartition

    config = fleet.config(broker.bootstrap, database_url)
    proc = start(processors, tmp_path, config)
    first = fleet.envelope("edge-1", "temperature", GOOD)
    fleet.send(first, key="edge-1")
    fleet.send(first, key="edge-1")  # a replay: same message, new offset
    fleet.send(b"garbage", key="edge-1")
    fleet.flush()
    db.wait_count("temperature_readings", 1)
    wait_for(lambda: db.reasons() == {"malformed": 1}, 30, message="malformed not recorded")
    assert proc.stop()[0] == 0
    assert "duplicates=1" in proc.log()

    # Redelivery: rewind the group's committed Kafka offsets to 0, as after a crash
    # between the database commit and the offset commit.
    rewind = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": fleet.group})
    topic = fleet.topics["temperature"]
    parts = rewind.list_topics(topic, timeout=10).topics[topic].partitions
    rewind.commit(offsets=[TopicPartition(topic, p, 0) for p in parts], asynchronous=False)
    rewind.close()

    again = start(processors, tmp_path, config, name="again")
    fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    fleet.flush()
    db.wait_count("temperature_readings", 2)
    assert db.reasons() == {"malformed": 1}
    assert again.stop()[0] == 0
    assert "redelivered=3" in again.log()


def _send_fleet(fleet: Fleet, agents: int, per_agent: int) -> int:
    for a in range(agents):
        fleet.enroll(f"dev-{a:03d}")
    for i in range(per_agent):
        for a in range(agents):
            agent = f"dev-{a:03d}"
            fleet.send(
                fleet.envelope(agent, "temperature", temperature((f"s{i}", 20.0, "C"))), key=agent
            )
    fleet.flush()
    return agents * per_agent


def _assert_exactly_once(db: Db, total: int) -> None:
    db.wait_count("temperature_readings", total, timeout=90)
    distinct = db.scalar(
        "SELECT count(*) FROM (SELECT DISTINCT agent_id, seq FROM temperature_readings) d"
    )
    assert distinct == total


def test_kill_9_mid_stream_then_restart(fleet, db, processors, tmp_path, broker, database_url):
    config = fleet.config(broker.bootstrap, database_url, batch_size=50)
    total = _send_fleet(fleet, agents=20, per_agent=60)
    proc = start(processors, tmp_path, config)
    wait_for(lambda: db.count("temperature_readings") > 0, 30, message="nothing stored")
    proc.kill9()
    assert db.count("temperature_readings") < total, "too fast to kill mid-stream"
    start(processors, tmp_path, config, name="restarted")
    _assert_exactly_once(db, total)


def test_two_processors_share_the_partitions(fleet, db, processors, tmp_path, broker, database_url):
    config = fleet.config(broker.bootstrap, database_url, batch_size=50)
    a = start(processors, tmp_path, config, name="a")
    b = start(processors, tmp_path, config, name="b")
    a.wait_log("assigned", count=1)
    total = _send_fleet(fleet, agents=20, per_agent=30)
    wait_for(lambda: db.count("temperature_readings") > total // 3, 60, message="slow")
    assert a.stop()[0] == 0  # b takes over a's partitions mid-stream
    _assert_exactly_once(db, total)
    assert "stored=" in b.log() and "assigned t" in b.log()


def test_plugin_that_raises(fleet, db, processors, tmp_path, broker, database_url):
    plugin = tmp_path / "plugins" / "exploder"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(
        "from sparklem_core import Manifest, hookimpl\n"
        "@hookimpl\ndef sparklem_manifest():\n    return Manifest(name='exploder', version='0')\n"
        "@hookimpl\ndef sparklem_process(message, settings):\n"
        "    raise RuntimeError('boom ' + str(message.seq))\n"
    )
    fleet.topics["exploder"] = fleet.topics["temperature"].replace("temperature", "exploder")
    config = fleet.config(broker.bootstrap, database_url)
    config["plugins_dir"] = str(tmp_path / "plugins")
    start(processors, tmp_path, config)
    fleet.send(fleet.envelope("edge-1", "exploder", {"x": 1}), "exploder", key="edge-1")
    fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    fleet.flush()
    db.wait_count("temperature_readings", 1)
    wait_for(lambda: db.reasons() == {"processing_error": 1}, 30, message="not rejected")
    (detail,) = db.rows("SELECT detail FROM rejected_messages")[0]
    assert "RuntimeError: boom 0" in detail


def test_enrollment_and_revocation_while_running(
    fleet, db, processors, tmp_path, broker, database_url
):
    start(processors, tmp_path, fleet.config(broker.bootstrap, database_url))
    fleet.enroll("late-1")  # after the processor started
    fleet.send(fleet.envelope("late-1", "temperature", GOOD), key="late-1")
    fleet.flush()
    db.wait_count("temperature_readings", 1, timeout=15)
    fleet.revoke("late-1")
    wait_for(
        lambda: _sent_and_rejected(fleet, db), 15, interval=1, message="revocation not picked up"
    )


def _sent_and_rejected(fleet: Fleet, db: Db) -> bool:
    fleet.send(fleet.envelope("late-1", "temperature", GOOD), key="late-1")
    fleet.flush()
    return db.reasons().get("revoked_agent", 0) > 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_broker_restart_mid_run(fleet, db, processors, tmp_path, database_url):
    with TansuBroker(log_path=tmp_path / "own-broker.log") as own:
        fleet.producer = type(fleet.producer)({"bootstrap.servers": own.bootstrap})
        proc = start(processors, tmp_path, fleet.config(own.bootstrap, database_url))
        for _ in range(5):
            fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
        fleet.flush()
        db.wait_count("temperature_readings", 5)
        own.restart(kill=True)  # memory storage: topics and offsets are gone
        own.create_topics(fleet.topics.values(), partitions=4)
        for _ in range(5):
            fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
        fleet.flush()
        db.wait_count("temperature_readings", 10, timeout=60)
        assert proc.stop()[0] == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sigterm_while_broker_down(fleet, processors, tmp_path, database_url):
    with TansuBroker(log_path=tmp_path / "own-broker.log") as own:
        proc = start(processors, tmp_path, fleet.config(own.bootstrap, database_url))
        own.stop(kill=True)
        proc.wait_log("unreachable", timeout=30)
    code, took = proc.stop()
    assert code == 0 and took < 10


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_database_outage(fleet, db, processors, tmp_path, broker, database_url, pg_server):
    proc = start(processors, tmp_path, fleet.config(broker.bootstrap, database_url))
    fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    fleet.flush()
    db.wait_count("temperature_readings", 1)
    pg_server.stop()
    for _ in range(10):
        fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    fleet.flush()
    proc.wait_log("database unavailable", timeout=30)
    pg_server.start()
    db.wait_count("temperature_readings", 11, timeout=60)
    _assert_exactly_once(db, 11)
    code, took = proc.stop()
    assert code == 0 and took < 10


def _two_workers(
    fleet: Fleet, processors: list, tmp_path, bootstrap: str, database_url: str
) -> tuple[ProcessorProcess, list[int]]:
    """``run --workers 2``, both assigned; the supervisor and its workers' pids."""
    proc = ProcessorProcess(tmp_path, fleet.config(bootstrap, database_url, batch_size=50))
    processors.append(proc)
    proc.start(False, "--workers", "2")
    proc.wait_log("assigned t", timeout=60, count=2)
    pids = [int(line.rsplit("pid ", 1)[1].rstrip(")")) for line in proc.log().splitlines()
            if "started (pid" in line]  # fmt: skip
    assert len(pids) == 2
    return proc, pids


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_workers_supervised(fleet, db, processors, tmp_path, broker, database_url):
    proc, pids = _two_workers(fleet, processors, tmp_path, broker.bootstrap, database_url)
    total = _send_fleet(fleet, agents=20, per_agent=20)
    wait_for(lambda: db.count("temperature_readings") > 0, 30, message="nothing stored")
    os.kill(pids[0], signal.SIGKILL)
    proc.wait_log("exited with code -9; restarting", timeout=15)
    proc.wait_log("worker 0 started (pid", timeout=15, count=2)
    _assert_exactly_once(db, total)
    code, took = proc.stop()
    assert code == 0 and took < 10
    assert "all workers stopped" in proc.log()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_killed_supervisor_ends_its_workers(fleet, db, processors, tmp_path, broker, database_url):
    """SIGKILL (the OOM killer) gives the supervisor no chance to stop its workers: they
    notice and stop as on SIGTERM, rather than consume on with nobody to restart them."""
    proc, pids = _two_workers(fleet, processors, tmp_path, broker.bootstrap, database_url)
    total = _send_fleet(fleet, agents=4, per_agent=5)
    db.wait_count("temperature_readings", total)
    proc.kill9()
    wait_for(
        lambda: not any(pid_alive(pid) for pid in pids),
        20,
        message="workers outlived their supervisor",
    )
    assert proc.log().count("processor stopped") == 2  # each left as on SIGTERM


def test_rows_the_database_refuses_and_dead_letters(
    fleet, db, processors, tmp_path, broker, database_url
):
    from confluent_kafka import Consumer

    plugin = tmp_path / "plugins" / "sloppy"
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text(
        "from sqlalchemy import Column, DateTime, Integer\n"
        "from sparklem_core import Manifest, PluginResult, hookimpl\n"
        "@hookimpl\ndef sparklem_manifest():\n    return Manifest(name='sloppy', version='0')\n"
        "@hookimpl\ndef sparklem_register_tables(register):\n"
        "    register('sloppy_rows', Column('id', Integer, primary_key=True),\n"
        "             Column('n', Integer, nullable=False),\n"
        "             Column('at', DateTime(timezone=True), nullable=False), time='at')\n"
        "@hookimpl\ndef sparklem_process(message, settings):\n"
        "    result = PluginResult()\n"
        "    row = {'n': message.data.get('n'), 'at': message.sent_at}  # n None: NOT NULL\n"
        "    result.add_row('sloppy_rows', row)\n"
        "    return result\n"
    )
    fleet.topics["sloppy"] = fleet.topics["temperature"].replace("temperature", "sloppy")
    dead = f"{fleet.group}.dead"
    config = fleet.config(broker.bootstrap, database_url, dead_letter_topic=dead)
    config["plugins_dir"] = str(tmp_path / "plugins")
    start(processors, tmp_path, config)
    for n in (1, None, 3):
        fleet.send(fleet.envelope("edge-1", "sloppy", {"n": n}), "sloppy", key="edge-1")
    fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    fleet.flush()
    db.wait_count("sloppy_rows", 2)
    db.wait_count("temperature_readings", 1)
    wait_for(lambda: db.reasons() == {"invalid_payload": 1}, 30, message="not rejected")
    (detail,) = db.rows("SELECT detail FROM rejected_messages")[0]
    assert detail.startswith("database refused its rows")

    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"{dead}-reader",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([dead])
    try:
        msg = wait_for(lambda: consumer.poll(0.5), 30, message="no dead letter")
    finally:
        consumer.close()
    assert dict(msg.headers())["reason"] == b"invalid_payload"
    assert msg.key() == b"edge-1"
