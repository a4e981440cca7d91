"""Processors restarted around rebalances (kill -9 and SIGTERM), and processors that hold
no partitions: a real broker, ``python3 main.py run`` as subprocesses, SQLite."""

from __future__ import annotations

import logging
import re
import signal
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from harness import Db, Fleet, ProcessorProcess, temperature
from waiting import wait_for

from sparklem_core.dev.servers import TansuBroker
from sparklem_core.processor.consumer import idle_report
from sparklem_core.processor.consumer import log as processor_log

AGENTS = [f"dev-{a:02d}" for a in range(8)]
# The processor's own lines: "<logger>: assigned t[0], t[1]" and "<logger>: revoked ...".
_ASSIGNED = f"{processor_log.name}: assigned"
_CALLBACK = re.compile(rf"{re.escape(processor_log.name)}: (assigned|revoked) (.*)$", re.MULTILINE)


class Member:
    """A processor whose log is read from its latest start on."""

    def __init__(self, tmp_path: Path, config: dict, name: str) -> None:
        self.proc = ProcessorProcess(tmp_path, config, name)
        self.since = 0

    def start(self) -> None:
        path = self.proc.log_path
        self.since = path.stat().st_size if path.exists() else 0
        self.proc.start(wait_assigned=False)

    def log(self) -> str:
        return self.proc.log()[self.since :]

    def assignments(self) -> int:
        return sum(1 for kind, _ in _CALLBACK.findall(self.log()) if kind == "assigned")

    def since_assigned(self) -> str:
        """This incarnation's log after its latest assignment."""
        return self.log().rpartition(_ASSIGNED)[2]

    def held(self) -> set[str]:
        """The partitions this incarnation holds, by its assign and revoke lines."""
        held: set[str] = set()
        for kind, listed in _CALLBACK.findall(self.log()):
            parts = set() if listed == "nothing" else set(listed.split(", "))
            held = held | parts if kind == "assigned" else held - parts
        return held


def _wait(condition: Callable[[], object], timeout: float, what: str, group: list[Member]) -> None:
    try:
        wait_for(condition, timeout, message=what)
    except AssertionError as exc:
        logs = "\n".join(f"--- {m.proc.log_path.name}\n{m.log()[-2000:]}" for m in group)
        raise AssertionError(f"{exc}\n{logs}") from None


@pytest.fixture
def fleet(tmp_path: Path, broker: TansuBroker) -> Fleet:
    fleet = Fleet(tmp_path, broker.bootstrap)
    for agent in AGENTS:
        fleet.enroll(agent)
    return fleet


@pytest.fixture
def members() -> Iterator[list[Member]]:
    started: list[Member] = []
    yield started
    for member in started:
        member.proc.close()


def _send(fleet: Fleet, count: int) -> int:
    for i in range(count):
        agent = AGENTS[i % len(AGENTS)]
        fleet.send(fleet.envelope(agent, "temperature", temperature(("s", 20.0, "C"))), key=agent)
    fleet.flush()
    return count


def _all_partitions(fleet: Fleet, partitions: int) -> set[str]:
    return {f"{t}[{p}]" for t in fleet.topics.values() for p in range(partitions)}


# Six cycles in every run; the 20 of issue 8 (about 5 minutes) with pytest -m soak.
@pytest.mark.parametrize("cycles", [6, pytest.param(20, marks=pytest.mark.soak)])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_kill_9_and_sigterm_around_rebalances(
    fleet, members, tmp_path, broker, database_url, cycles
):
    config = fleet.config(broker.bootstrap, database_url, batch_size=50)
    a, b = Member(tmp_path, config, "a"), Member(tmp_path, config, "b")
    members += [a, b]
    total = 0
    for cycle in range(cycles):
        a.start()
        b.start()
        total += _send(fleet, 40)
        started = time.monotonic()
        _wait(
            lambda: a.assignments() and b.assignments(), 60, f"cycle {cycle}: no assignment", [a, b]
        )
        print(f"cycle {cycle}: both assigned after {time.monotonic() - started:.1f} s")
        # The timing: about 2 s after a rebalance, often while the next one (for
        # the member killed in the previous cycle) is under way.
        time.sleep(2)
        a.proc.kill9()
        assert b.proc.stop()[0] == 0
    a.start()
    b.start()
    everything = _all_partitions(fleet, 4)
    _wait(
        lambda: a.held() | b.held() == everything and not a.held() & b.held(),
        60,
        "partitions not all assigned",
        [a, b],
    )
    db = Db(database_url)
    try:
        db.wait_count("temperature_readings", total, timeout=90)
        distinct = db.scalar(
            "SELECT count(*) FROM (SELECT DISTINCT agent_id, seq FROM temperature_readings) d"
        )
        assert distinct == total
    finally:
        db.close()


@pytest.mark.parametrize("strategy", ["range,roundrobin", "cooperative-sticky"])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_processor_stopped_while_another_joins_leaves_it_every_partition(
    fleet, members, tmp_path, broker, database_url, strategy
):
    # Cooperative rebalances that move partitions take two rounds, 3 s each on Tansu.
    shutdown_s = 16 if "cooperative" in strategy else 8
    config = fleet.config(broker.bootstrap, database_url, shutdown_timeout_s=shutdown_s)
    config["kafka"]["partition.assignment.strategy"] = strategy
    # A slow heartbeat: the first processor hears late that the second one joined, and
    # is stopped before it does, as the leader of a rebalance it does not know of.
    config["kafka"]["heartbeat.interval.ms"] = 3000
    first, second = Member(tmp_path, config, "first"), Member(tmp_path, config, "second")
    members += [first, second]
    everything = _all_partitions(fleet, 4)
    first.start()
    _wait(lambda: first.held() == everything, 60, "the first processor got nothing", [first])
    second.start()
    _wait(
        lambda: "waiting for partition assignment" in second.log(),
        30,
        "the second processor did not subscribe",
        [second],
    )
    assert first.proc.stop(timeout=shutdown_s + 2)[0] == 0
    _wait(
        lambda: second.held() == everything,
        60,
        "the second processor was not given every partition",
        [first, second],
    )


# Issue 18: three Ctrl-C restarts in every run, twenty with pytest -m soak.
@pytest.mark.parametrize("cycles", [3, pytest.param(20, marks=pytest.mark.soak)])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_processor_stopped_with_ctrl_c_gets_every_partition_when_started_again(
    fleet, members, tmp_path, broker, database_url, cycles
):
    config = fleet.config(broker.bootstrap, database_url)
    # The group timing a config without a kafka section gets: the built-in defaults.
    for name in ("session.timeout.ms", "heartbeat.interval.ms"):
        del config["kafka"][name]
    processor = Member(tmp_path, config, "restarted")
    members.append(processor)
    everything = _all_partitions(fleet, 4)
    for cycle in range(cycles):
        processor.start()
        started = time.monotonic()
        _wait(
            lambda: processor.held() == everything,
            60,
            f"start {cycle}: not given every partition",
            [processor],
        )
        print(f"start {cycle}: every partition after {time.monotonic() - started:.1f} s")
        # The bound, read from the processor's own log: from its first wait for an
        # assignment to being assigned, the broker's join rounds and nothing else (before
        # the 6 s session default, 24 s on a fresh group and forever after a restart).
        assert join_seconds(processor.log()) <= 10, processor.log()[-3000:]
        code, took = processor.proc.stop(timeout=30, sig=signal.SIGINT)
        print(f"stop {cycle}: {took:.1f} s")
        assert code == 0
        # Left as it should: after the group settled, with the consumer closed (the
        # LeaveGroup sent), not with a join still pending that keeps it the leader.
        stopped = processor.log()
        assert "settled in" in stopped, stopped[-3000:]
        assert "did not settle" not in stopped and "did not close" not in stopped, stopped[-3000:]


def join_seconds(log: str) -> float:
    """Seconds from a processor's first "waiting for partition assignment" line to its first
    assignment of partitions, by the log's own timestamps."""
    stamp = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
    waiting = re.search(stamp + r".*waiting for partition assignment", log, re.M)
    assigned = re.search(
        stamp + rf".*{re.escape(processor_log.name)}: assigned (?!nothing)", log, re.M
    )
    assert waiting and assigned, log[-3000:]
    times = [datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S,%f") for m in (waiting, assigned)]
    return (times[1] - times[0]).total_seconds()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_processor_without_partitions_says_so(fleet, members, tmp_path, broker, database_url):
    config = fleet.config(
        broker.bootstrap, database_url, topic_partitions=2, idle_assignment_warn_s=2
    )
    trio = [Member(tmp_path, config, name) for name in ("a", "b", "c")]
    members += trio
    for member in trio:
        member.start()
    # Every processor may say so while the group forms; the one left out says so after.
    _wait(
        lambda: (
            sorted(bool(m.held()) for m in trio) == [False, True, True]
            and any("no partitions assigned for" in m.since_assigned() for m in trio)
        ),
        60,
        "the processor left without partitions did not say so",
        trio,
    )
    (idle,) = [m for m in trio if not m.held()]
    assert "2 partitions" in idle.since_assigned()
    assert all("no partitions assigned" not in m.since_assigned() for m in trio if m.held())


def test_idle_report_tells_a_standby_from_a_stuck_group():
    level, line = idle_report(61.2, "g", partitions=2, members=3)
    assert level == logging.INFO
    assert line == (
        "no partitions assigned for 61 s: group g has 3 members for 2 partitions per topic; "
        "this processor is a standby"
    )
    for members in (1, 2):
        level, line = idle_report(300, "g", partitions=2, members=members)
        assert level == logging.WARNING
        assert "rebalance is not completing" in line
    level, line = idle_report(300, "g", partitions=2, members=None)
    assert level == logging.WARNING and "stuck in a rebalance" in line
    assert idle_report(5, "g", partitions=0, members=1)[0] == logging.WARNING
