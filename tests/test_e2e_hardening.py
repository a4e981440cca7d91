"""Hostile records through the real processor: it keeps running, stores the good ones,
quarantines the rest with their reasons, and stops on SIGTERM in the middle of them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from confluent_kafka import Producer
from harness import GOOD, Db, Fleet, start
from waiting import wait_for

from sparklem_core import wire

# Each: (what, plugin it is sealed for, data or a whole plaintext, expected reason)
SEALED: list[tuple[str, str, Any, str]] = [
    (
        "ts beyond any datetime",
        "temperature",
        {"seq": None, "ts": 10**400, "data": GOOD},
        "malformed",
    ),
    (
        "lone surrogate sensor",
        "temperature",
        {"readings": [{"sensor": "a\ud800", "value": 1}]},
        "invalid_reading",
    ),
    (
        "NUL in a sensor name",
        "temperature",
        {"readings": [{"sensor": "a\x00b", "value": 1}]},
        "invalid_reading",
    ),
    (
        "150,000 cores",  # more ',' than a plaintext may hold
        "pu_workload",
        {"cpu": {"percent": 1.0, "per_core": [1.0] * 150_000}},
        "malformed",
    ),
    (
        "1,025 cores",
        "pu_workload",
        {"cpu": {"percent": 1.0, "per_core": [1.0] * 1025}},
        "invalid_payload",
    ),
    (
        "65 GPUs",
        "pu_workload",
        {
            "gpus": [
                {
                    "index": i,
                    "name": "g",
                    "util_percent": 1.0,
                    "mem_used_bytes": 0,
                    "mem_total_bytes": 1,
                }
                for i in range(65)
            ]
        },
        "invalid_payload",
    ),
    (
        "GPU name with a lone surrogate",
        "pu_workload",
        {
            "gpus": [
                {
                    "index": 0,
                    "name": "\udfff",
                    "util_percent": 1.0,
                    "mem_used_bytes": 0,
                    "mem_total_bytes": 1,
                }
            ]
        },
        "invalid_payload",
    ),
]


def quadratic_shape(size: int) -> bytes:
    """The record that took most of an hour: brackets, then an unclosed string of escapes."""
    head = b"[" * 33 + b'"'
    return head + b'\\"' * ((size - len(head)) // 2)


def test_one_backlog_of_every_hostile_record(
    fleet: Fleet, db: Db, processors, tmp_path, broker, database_url
):
    """Every reproduced case at once, among good messages: good stored, bad quarantined."""
    expected: dict[str, int] = {}
    fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    for _what, plugin, data, reason in SEALED:
        plaintext = data if "ts" in data else None
        if plaintext is not None:  # a whole hostile plaintext, sealed as an agent would
            session = fleet.sessions.setdefault("edge-1", wire.SessionKey(fleet.server_public))
            value = wire.seal(
                json.dumps({**plaintext, "seq": 10**6}).encode(),
                agent="edge-1",
                plugin=plugin,
                session=session,
                agent_key=fleet.keys["edge-1"],
            ).to_json()
        else:
            value = fleet.envelope("edge-1", plugin, data)
        fleet.send(value, plugin, key="edge-1")
        expected[reason] = expected.get(reason, 0) + 1
    # A signed pu_workload message on the temperature topic: that topic's plugin only.
    fleet.send(fleet.envelope("edge-1", "pu_workload", {"cpu": {"percent": 1.0}}), key="edge-1")
    expected["unknown_plugin"] = 1
    fleet.send(quadratic_shape(512 * 1024), key="edge-1")
    expected["malformed"] += 1
    fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    good_load = fleet.envelope("edge-1", "pu_workload", {"cpu": {"percent": 2.0}})
    fleet.send(good_load, "pu_workload", key="edge-1")  # after the bad ones, in their partition
    fleet.flush()

    proc = start(processors, tmp_path, fleet.config(broker.bootstrap, database_url))
    wait_for(lambda: db.reasons() == expected, 90, message=f"rejections, expected {expected}")
    db.wait_count("temperature_readings", 2)
    db.wait_count("pu_workload_readings", 1)
    assert db.count("rejected_records") == sum(expected.values())  # each from its own record
    code, _ = proc.stop()
    assert code == 0
    assert "Traceback" not in proc.log()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_sigterm_in_the_middle_of_worst_case_records(
    fleet: Fleet, db: Db, processors, tmp_path, broker, database_url
):
    """A backlog of 1 MB hostile records does not delay a stop past the documented 10 s."""
    producer = Producer({"bootstrap.servers": broker.bootstrap, "message.max.bytes": 2_000_000})
    shapes = [
        quadratic_shape(1_000_000),
        b"[" * 1_000_000,
        b'{"a":' * 200_000,
        b'"' + b"\\u0000" * 166_000,
        b"[" + b"1" * 999_998 + b"]",
    ]
    for n in range(60):
        producer.produce(fleet.topics["temperature"], value=shapes[n % len(shapes)])
    assert producer.flush(60) == 0
    proc = start(processors, tmp_path, fleet.config(broker.bootstrap, database_url, batch_size=50))
    wait_for(lambda: db.reasons().get("malformed", 0) >= 1, 60, message="nothing quarantined yet")
    code, took = proc.stop(timeout=10)
    assert code == 0, proc.log()[-3000:]
    assert took < 10
