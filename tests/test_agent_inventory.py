"""The fleet inventory: sparklem_agents and sparklem_agent_plugins, written with each batch."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from pipeline_env import Env, reading, run, temperature
from sqlalchemy import select
from test_redrive import today

from sparklem_core import wire
from sparklem_core.db.batch import AgentActivity, Batch
from sparklem_core.db.errors import Verdict, classify
from sparklem_core.db.read_tables import as_utc
from sparklem_core.db.store import Store
from sparklem_core.processor.redrive import Redrive

T0 = datetime(2026, 11, 30, 3, 0, 0, 123456, tzinfo=UTC)


def agents(store: Store) -> dict[str, tuple]:
    t = store.metadata.tables["sparklem_agents"]
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(t.c.agent_id, t.c.messages, t.c.rejections, t.c.last_rejection_reason)
        )
        return {row[0]: tuple(row[1:]) for row in rows}


def plugins(store: Store) -> dict[tuple[str, str], int]:
    t = store.metadata.tables["sparklem_agent_plugins"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(t.c.agent_id, t.c.plugin, t.c.messages))
        return {(a, p): n for a, p, n in rows}


def test_authenticated_agents_get_a_row_and_unknown_ones_are_only_counted(env: Env) -> None:
    """Stored messages and rejections of enrolled agents are counted per agent; a record
    signed by an agent never enrolled is counted as unknown_agent and gets no row."""
    records = [
        env.record(env.envelope(temperature(), seq=1)),
        env.record(env.envelope(temperature(), seq=2)),
        env.record(env.envelope(temperature(reading("x", "hot")), seq=3)),  # refused reading
        env.record(env.envelope(temperature(), seq=1, agent="edge-2")),
        env.record(env.envelope(temperature(), seq=1, agent="forged-1")),
        env.record(b"{not json"),
    ]
    stats = run(env.pipeline(), records)
    assert stats.rejected[wire.UNKNOWN_AGENT] == 1
    assert agents(env.store) == {
        "edge-1": (3, 1, wire.INVALID_READING),  # stored, its bad reading refused
        "edge-2": (1, 0, None),
    }
    assert plugins(env.store) == {("edge-1", "temperature"): 3, ("edge-2", "temperature"): 1}


def test_each_batch_adds_to_the_row(env: Env) -> None:
    pipeline = env.pipeline()
    run(pipeline, [env.record(env.envelope(temperature(), seq=1))])
    run(pipeline, [env.record(env.envelope(temperature(), seq=2))])
    run(pipeline, [env.record(env.envelope(temperature(), seq=2))])  # a duplicate: not counted
    assert agents(env.store) == {"edge-1": (2, 0, None)}
    t = env.store.metadata.tables["sparklem_agents"]
    with env.store.engine.connect() as conn:
        first, last = conn.execute(select(t.c.first_seen, t.c.last_seen)).one()
    assert first <= last


def test_redrive_counts_a_message_once_and_a_rejection_once(env: Env) -> None:
    """A record stored by redrive counts as a message of its agent; one refused again, or a
    refused reading stored alone, counts nothing more (it was counted when refused)."""
    run(env.pipeline(), [env.record(env.envelope(temperature(), seq=1, agent="edge-9"))])
    sent = temperature(reading("a", 40.0), reading("hot", 180.0))
    run(env.pipeline(), [env.record(env.envelope(sent, seq=1))])
    assert agents(env.store) == {"edge-1": (1, 1, wire.INVALID_READING)}  # edge-9: unknown
    env.enroll("edge-9")
    Redrive(env.pipeline(), env.store).run()  # max_celsius 150: the reading refused again
    assert agents(env.store) == {"edge-1": (1, 1, wire.INVALID_READING), "edge-9": (1, 0, None)}
    Redrive(today(env, max_celsius=200), env.store).run()
    assert agents(env.store) == {"edge-1": (1, 1, wire.INVALID_READING), "edge-9": (1, 0, None)}


def activity(at: datetime, messages: int, rejection: str | None) -> AgentActivity:
    entry = AgentActivity(at, at)
    for _ in range(messages):
        entry.stored("temperature", at)
    if rejection is not None:
        entry.rejected(rejection, at)
    return entry


def test_two_processors_updating_one_agent_lose_no_update(database_url: str) -> None:
    """Two stores commit batches for the same agents at once: every count adds up, and the
    times are the earliest and latest seen, whichever transaction came last."""
    stores = [Store(database_url, "g"), Store(database_url, "g")]
    stores[0].create_schema()
    rounds = 25
    errors: list[BaseException] = []

    def commit(store: Store, offset: int) -> None:
        for i in range(rounds):
            at = T0 + timedelta(seconds=2 * i + offset)
            batch = Batch(
                agents={
                    "a": activity(at, 3, wire.CLOCK_SKEW if offset else wire.MALFORMED),
                    "b": activity(at, 1, None),
                }
            )
            while True:
                try:
                    store.commit(batch)
                    break
                except Exception as exc:  # a deadlock victim retries, as the writer does
                    if classify(exc, store.probe) is not Verdict.TRANSIENT:
                        errors.append(exc)
                        return

    threads = [threading.Thread(target=commit, args=(s, n)) for n, s in enumerate(stores)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not errors
        assert agents(stores[0]) == {
            "a": (2 * 3 * rounds, 2 * rounds, wire.CLOCK_SKEW),  # the later one, at offset 1
            "b": (2 * rounds, 0, None),
        }
        assert plugins(stores[0]) == {("a", "temperature"): 6 * rounds, ("b", "temperature"): 50}
        t = stores[0].metadata.tables["sparklem_agents"]
        with stores[0].engine.connect() as conn:
            first, last, rejected_at = conn.execute(
                select(t.c.first_seen, t.c.last_seen, t.c.last_rejection_at).where(
                    t.c.agent_id == "a"
                )
            ).one()
        latest = T0 + timedelta(seconds=2 * (rounds - 1) + 1)
        assert [as_utc(first), as_utc(last), as_utc(rejected_at)] == [T0, latest, latest]
    finally:
        for store in stores:
            store.dispose()
