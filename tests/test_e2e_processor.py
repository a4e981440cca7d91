"""The processor end to end: a real broker, ``python3 main.py run`` as a subprocess,
and SQLite or a real PostgreSQL. Every case waits on conditions, never on sleeps."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15
from harness import Db, Fleet, ProcessorProcess, now_ms, temperature
from waiting import wait_for

from sparklem_core import protocol
from sparklem_core.local_servers import TansuBroker

GOOD = temperature(("cpu", 50.0, "C"))


@pytest.fixture
def fleet(tmp_path: Path, broker: TansuBroker) -> Iterator[Fleet]:
    fleet = Fleet(tmp_path, broker.bootstrap)
    fleet.enroll("edge-1")
    yield fleet


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    db = Db(database_url)
    yield db
    db.close()


@pytest.fixture
def processors(tmp_path: Path) -> Iterator[list[ProcessorProcess]]:
    started: list[ProcessorProcess] = []
    yield started
    for proc in started:
        proc.close()


def start(processors: list[ProcessorProcess], tmp_path: Path, config: dict,
          name: str = "processor", **kwargs) -> ProcessorProcess:  # fmt: skip
    proc = ProcessorProcess(tmp_path, config, name)
    processors.append(proc)
    return proc.start(**kwargs)


def _resign(fleet: Fleet, env: dict, agent: str) -> dict:
    signed = protocol.Envelope(**{k: env[k] for k in
                                  ("agent", "plugin", "kid", "ek", "iv", "ct", "tag", "sig")})
    sig = protocol.pss.new(fleet.keys[agent], salt_bytes=32).sign(SHA256.new(signed.signed_bytes()))
    return {**env, "sig": base64.b64encode(sig).decode()}


def test_every_rejection_reason_on_the_wire(fleet, db, processors, tmp_path, broker, database_url):
    fleet.enroll("revoked-1")
    fleet.enroll("weak-1", bits=1024)
    start(processors, tmp_path, fleet.config(broker.bootstrap, database_url,
                                             max_message_bytes=20_000))
    fleet.revoke("revoked-1")

    valid = json.loads(fleet.envelope("edge-1", "temperature", GOOD))
    other_server = RSA.generate(2048)
    sends = {
        "malformed": b"not json at all",
        "too_large": b"x" * 30_000,
        "unknown_agent": json.dumps({**valid, "agent": "stranger"}).encode(),
        "revoked_agent": fleet.envelope("revoked-1", "temperature", GOOD),
        "unknown_key": json.dumps(_resign(fleet, {**valid, "kid": "0123456789abcdef"}, "edge-1")).encode(),
        "bad_signature": json.dumps({**valid, "ct": base64.b64encode(b"tampered!").decode()}).encode(),
        "unknown_plugin": json.dumps(_resign(fleet, {**valid, "plugin": "humidity"}, "edge-1")).encode(),
        "clock_skew": fleet.envelope("edge-1", "temperature", GOOD, ts=now_ms() + 3_600_000),
        "invalid_payload": fleet.envelope("edge-1", "temperature", {"readings": []}),
        "invalid_reading": fleet.envelope("edge-1", "temperature",
                                          temperature(("ok", 20.0, "C"), ("cold", -300.0, "C"))),
    }
    # decrypt_failed: a session key wrapped for another server key, properly signed.
    foreign = protocol.SessionKey(other_server.public_key())
    foreign.kid = fleet.kid
    sends["decrypt_failed"] = protocol.seal({"seq": 999, "ts": now_ms(), "data": GOOD},
                                            agent="edge-1", plugin="temperature",
                                            session=foreign, agent_key=fleet.keys["edge-1"]).to_json()
    # PKCS#1 v1.5 signature instead of PSS, and a 1024-bit agent key.
    v15 = json.loads(fleet.envelope("edge-1", "temperature", GOOD))
    raw = protocol.Envelope(**{k: v15[k] for k in ("agent", "plugin", "kid", "ek", "iv", "ct", "tag", "sig")})
    v15["sig"] = base64.b64encode(pkcs1_15.new(fleet.keys["edge-1"]).sign(SHA256.new(raw.signed_bytes()))).decode()
    sends["bad_signature_v15"] = json.dumps(v15).encode()
    sends["unknown_agent_weak"] = fleet.envelope("weak-1", "temperature", GOOD)
    sends["valid"] = fleet.envelope("edge-1", "temperature", GOOD)

    for value in sends.values():
        fleet.send(value, key="edge-1")
    fleet.flush()

    expected = {"malformed": 1, "too_large": 1, "unknown_agent": 2, "revoked_agent": 1,
                "unknown_key": 1, "bad_signature": 2, "unknown_plugin": 1, "clock_skew": 1,
                "invalid_payload": 1, "invalid_reading": 1, "decrypt_failed": 1}
    wait_for(lambda: db.reasons() == expected, 45,
             message=f"rejections were {db.reasons()}")
    # the valid message and the valid sibling reading
    db.wait_count("temperature_readings", 2)
    row = db.rows("SELECT agent_id, plugin, detail, raw FROM rejected_messages "
                  "WHERE reason = 'invalid_reading'")[0]
    assert row.agent_id == "edge-1" and row.plugin == "temperature"
    assert json.loads(row.raw)["sensor"] == "cold"
    unknown = db.rows("SELECT agent_id, raw FROM rejected_messages WHERE reason = 'malformed'")[0]
    assert unknown.agent_id is None and unknown.raw == "not json at all"
    code, took = processors[0].stop()
    assert code == 0 and took < 10
