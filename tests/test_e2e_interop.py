"""An agent written by someone else (tests/independent_agent.py: the `cryptography`
package and PROTOCOL.md only) against the real processor, broker and databases:
valid messages stored exactly once, every kind of bad message rejected by reason."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import independent_agent as other
import pytest
from harness import Db, Fleet, ProcessorProcess, now_ms, temperature
from waiting import wait_for

from sparklem_core.dev.servers import TansuBroker


@pytest.fixture
def setup(tmp_path: Path, broker: TansuBroker, database_url: str) -> Iterator[tuple]:
    fleet = Fleet(tmp_path, broker.bootstrap)
    proc = ProcessorProcess(tmp_path, fleet.config(broker.bootstrap, database_url))
    db = Db(database_url)
    yield fleet, proc, db
    proc.close()
    db.close()


def test_independent_agent(setup) -> None:
    fleet, proc, db = setup
    key = other.generate_key()
    (fleet.certificates / "agents" / "other-1.pem").write_bytes(other.public_pem(key))
    stranger = other.generate_key()
    session = other.Session(fleet.server_public)
    proc.start()

    def msg(seq: int, data=None, agent_key=key, agent="other-1") -> bytes:
        plain = {"seq": seq, "ts": now_ms(), "data": data or temperature(("t", 40.0, "C"))}
        return other.seal(plain, agent, "temperature", fleet.server_public, agent_key, session)

    valid = [msg(seq) for seq in range(1, 21)]
    tampered = json.loads(msg(21))
    tampered["ct"] = tampered["ct"][:-4] + ("AAAA" if tampered["ct"][-4:] != "AAAA" else "BBBB")
    sends = [
        *valid,
        valid[3],  # replayed
        valid[7],  # replayed
        msg(22, agent_key=stranger),  # forged: signed by a key that is not the agent's
        other.dumps(tampered),  # tampered after signing
        msg(23, agent="nobody"),  # unknown agent
        b'{"v": 1, "agent": "other-1"}',  # malformed
    ]
    for value in sends:
        fleet.producer.produce(fleet.topics["temperature"], value=value, key="other-1")
    fleet.flush()
    db.wait_count("temperature_readings", 20)
    expected = {"bad_signature": 2, "unknown_agent": 1, "malformed": 1}
    wait_for(lambda: db.reasons() == expected, 30, message=f"got {db.reasons()}")
    seqs = [r.seq for r in db.rows("SELECT seq FROM temperature_readings ORDER BY seq")]
    assert seqs == list(range(1, 21))

    (fleet.certificates / "agents" / "other-1.pem").rename(
        fleet.certificates / "revoked" / "other-1.pem"
    )

    attempts = iter(range(100, 200))

    def revoked_rejected() -> bool:  # revocation applies within the registry refresh
        fleet.producer.produce(
            fleet.topics["temperature"], value=msg(next(attempts)), key="other-1"
        )
        fleet.flush()
        return db.reasons().get("revoked_agent", 0) > 0

    wait_for(revoked_rejected, 20, interval=1, message="revocation not applied")
    # Once one is refused, every later message is: the last one sent is refused too.
    last = msg(500)
    fleet.producer.produce(fleet.topics["temperature"], value=last, key="other-1")
    fleet.flush()
    wait_for(
        lambda: db.scalar(
            "SELECT count(*) FROM rejected_messages WHERE reason = "
            "'revoked_agent' AND raw LIKE '%' || :ct || '%'",
            ct=json.loads(last)["ct"],
        ),
        20,
        message="accepted",
    )
    assert db.scalar("SELECT max(seq) FROM temperature_readings") < 500
    code, took = proc.stop()
    assert code == 0 and took < 10
