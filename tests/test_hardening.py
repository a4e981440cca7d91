"""Regression tests for the hostile inputs of issue 8, on SQLite and PostgreSQL.

Each case goes through the processor's real store path (:class:`BatchWriter`) in a
batch with good messages around it: nothing raises, the good messages are stored and
the bad one becomes a rejection with its expected reason. Timing belongs in
``benchmarks/parse.py``, not here.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from pipeline_env import PU_TOPIC, TOPIC, Env, reading, temperature
from sparklem_plugins.pu_workload.server import MAX_CORES, MAX_GPUS
from sqlalchemy import select

from sparklem_core import wire
from sparklem_core.processor.pipeline import Record
from sparklem_core.processor.writer import BatchWriter

BAD_AGENT, GOOD_AGENT = "edge-1", "edge-2"  # two streams: bad seqs never shadow good ones


@dataclass(frozen=True)
class Case:
    """A bad record value (made from an env and a fresh seq), its topic, its reason."""

    value: Callable[[Env, int], bytes]
    reason: str
    topic: str = TOPIC
    stored: bool = False  # a message stored with one reading refused (invalid_reading)


def temp(data: Any) -> Callable[[Env, int], bytes]:
    return lambda env, seq: env.envelope(data, seq=seq, agent=BAD_AGENT)


def pu(data: Any) -> Callable[[Env, int], bytes]:
    return lambda env, seq: env.envelope(data, seq=seq, agent=BAD_AGENT, plugin="pu_workload")


def raw_ts(ts: str) -> Callable[[Env, int], bytes]:
    """A temperature plaintext whose ``ts`` is raw JSON text, sealed as the agent would."""

    def make(env: Env, seq: int) -> bytes:
        body = json.dumps({"seq": seq, "data": temperature()}, separators=(",", ":"))
        return env.seal(f'{{"ts":{ts},{body[1:]}'.encode(), agent=BAD_AGENT)

    return make


def gpu(index: int, name: str = "Orin") -> dict[str, Any]:
    return {"index": index, "name": name, "util_percent": 1.0}


# The failing examples of issue 8 (reproduced on the main of before commit 4293ef1).
CASES = {
    # Made the JSON depth check quadratic: 2-3 s at 32 KB, 17 s at 64 KB.
    "escape run after 33 brackets": Case(
        lambda _env, _seq: ("[" * 33 + '"' + '\\"' * 200_000).encode(), "malformed"
    ),
    # OverflowError in the clock-skew check: the processor crash-looped.
    "ts of 10**400": Case(raw_ts("1" + "0" * 400), "malformed"),
    # UnicodeEncodeError in the driver: the processor crash-looped.
    "lone surrogate in a sensor": Case(
        temp(temperature(reading("\ud800"), reading("ok"))), "invalid_reading", stored=True
    ),
    "lone surrogate in a GPU name": Case(
        pu({"gpus": [gpu(0, "\udfff")]}), "invalid_payload", PU_TOPIC
    ),
    # Stored on SQLite, refused by PostgreSQL with the whole batch.
    "NUL in a sensor": Case(
        temp(temperature(reading("a\x00b"), reading("ok"))), "invalid_reading", stored=True
    ),
    # One 600 KB message made 300,001 rows; now its text alone is refused (',' count).
    "per_core of 300,000 items": Case(
        pu({"cpu": {"percent": 1.0, "per_core": [0] * 300_000}}), "malformed", PU_TOPIC
    ),
    "per_core beyond its cap": Case(
        pu({"cpu": {"percent": 1.0, "per_core": [0.0] * (MAX_CORES + 1)}}),
        "invalid_payload",
        PU_TOPIC,
    ),
    "gpus beyond their cap": Case(
        pu({"gpus": [gpu(i) for i in range(MAX_GPUS + 1)]}), "invalid_payload", PU_TOPIC
    ),
    # The topic decides the plugin (Kafka ACLs), not the message's own 'plugin'.
    "temperature message on the pu_workload topic": Case(
        temp(temperature()), "unknown_plugin", PU_TOPIC
    ),
    "pu_workload message on the temperature topic": Case(
        pu({"cpu": {"percent": 1.0}}), "unknown_plugin"
    ),
}


class Goods:
    """Good messages on both topics, on their own stream; ``check`` finds their rows."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.seqs: dict[str, list[int]] = {"temperature": [], "pu_workload": []}

    def record(self, plugin: str = "temperature") -> Record:
        seq = sum(len(s) for s in self.seqs.values()) + 1
        self.seqs[plugin].append(seq)
        if plugin == "temperature":
            value = self.env.envelope(temperature(reading("good")), seq=seq, agent=GOOD_AGENT)
            return self.env.record(value)
        data = {"cpu": {"percent": 5.0, "per_core": [4.0, 6.0]}}
        value = self.env.envelope(data, seq=seq, agent=GOOD_AGENT, plugin="pu_workload")
        return self.env.record(value, topic=PU_TOPIC)

    def check(self) -> None:
        for plugin, per_message in (("temperature", 1), ("pu_workload", 3)):
            rows = self.env.query(
                f"SELECT seq FROM {plugin}_readings WHERE agent_id = :a ORDER BY seq", a=GOOD_AGENT
            )
            assert rows == [(s,) for s in self.seqs[plugin] for _ in range(per_message)], plugin


def reasons_at(env: Env, record: Record) -> list[str]:
    table = env.store.rejected  # SQLAlchemy quotes "offset" as each database wants it
    where = (table.c.topic == record.topic) & (table.c.offset == record.offset)
    with env.store.engine.connect() as conn:
        return list(conn.scalars(select(table.c.reason).where(where).order_by(table.c.id)))


def assert_offsets_cover(env: Env) -> None:
    """The committed offset of each partition is just past its last record."""
    stored = env.stored_offsets()
    assert sorted(stored) == sorted((t, p, n) for (t, p), n in env.offsets.items())


@pytest.mark.parametrize("name", CASES)
def test_bad_record_among_good_ones(env: Env, name: str) -> None:
    case, goods = CASES[name], Goods(env)
    records = [goods.record(), goods.record("pu_workload")]
    bad = env.record(case.value(env, 1), topic=case.topic)
    records += [bad, goods.record()]
    batch, stats = BatchWriter(env.pipeline(), env.store).write(records)
    assert stats.consumed == 4 and dict(stats.rejected) == {case.reason: 1}
    assert stats.stored == 3 + case.stored
    assert reasons_at(env, bad) == [case.reason]
    goods.check()
    assert_offsets_cover(env)


def test_every_bad_record_in_one_batch(env: Env) -> None:
    goods = Goods(env)
    records, bad = [goods.record()], {}
    for seq, (name, case) in enumerate(CASES.items(), start=1):
        bad[name] = env.record(case.value(env, seq), topic=case.topic)
        records += [bad[name], goods.record(("temperature", "pu_workload")[seq % 2])]
    batch, stats = BatchWriter(env.pipeline(), env.store).write(records)
    assert stats.consumed == len(records)
    assert stats.stored == len(records) - len(CASES) + sum(c.stored for c in CASES.values())
    for name, case in CASES.items():
        assert reasons_at(env, bad[name]) == [case.reason], name
    goods.check()
    assert env.count("temperature_readings") == len(goods.seqs["temperature"]) + 2  # two "ok"
    assert_offsets_cover(env)


@pytest.mark.parametrize("open_, close", [("[", "]"), ('{"a":', "}")])
def test_nesting_limit_is_exact(open_: str, close: str) -> None:
    """MAX_JSON_DEPTH levels are JSON; one more is malformed, however the text is padded."""
    limit = wire.MAX_JSON_DEPTH
    for depth in (limit - 1, limit, limit + 1):
        text = (open_ * depth + "0" + close * depth).encode()
        padded = b'["[[[[' + b"[" * limit + b'", ' + text + b", [[0], [0], [0]]]"
        for value, levels in ((text, depth), (padded, depth + 1)):
            if levels <= limit:
                wire.loads_json(value, "test")
            else:
                with pytest.raises(wire.Rejected, match="nests deeper"):
                    wire.loads_json(value, "test")
    assert wire.loads_json(b'"' + b"[" * 100 + b'"', "test") == "[" * 100
