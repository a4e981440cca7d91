"""The edge agent: seq state, spool, command line, and end to end against a real broker."""

from __future__ import annotations

import json
import lzma
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from Crypto.PublicKey import RSA
from harness import loaded_packages
from waiting import wait_for

from sparklem_core import wire
from sparklem_core.admin import enrollment
from sparklem_core.agent import agent as agent_core
from sparklem_core.agent import cli as agent_cli
from sparklem_core.agent.sender import Sender
from sparklem_core.agent.spool import Spool
from sparklem_core.dev.servers import TansuBroker, free_port
from sparklem_core.fleet.registry import create_server_key, load_server_keys
from sparklem_core.wire import bundle as bundle_file

PASSPHRASE = "agent passphrase for tests"
# Tansu auto-creates a topic a producer asks for with 4 partitions. Creating ours with as
# many keeps an agent on one partition whoever wins the race after a broker restart.
TANSU_AUTO_PARTITIONS = 4
AGENT_ID = "edge-test"


# --- imports ----------------------------------------------------------------------------


def test_the_agent_imports_nothing_of_the_database_stack() -> None:
    """An edge device does not pay for the processor's SQL stack, nor loads its code (nor
    the processor's config module: the bundle's settings are declared apart)."""
    stack = ["sqlalchemy", "alembic", "psycopg", "pymysql", "sparklem_core.processor",
             "sparklem_core.db", "sparklem_core.fleet", "sparklem_core.settings.config",
             "sparklem_core.admin", "sparklem_core.testing"]  # fmt: skip
    assert loaded_packages(["sparklem_core.agent.cli"], stack) == []


# --- seq state ------------------------------------------------------------------------


def test_seq_rises_across_restarts_from_the_state_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    state = agent_core.SeqState(path, AGENT_ID, block=3, floor=lambda: 0)
    first = [state.next("temperature") for _ in range(4)] + [state.next("pu_workload")]
    assert first == [0, 1, 2, 3, 0]
    # Reserved before use: the file already covers every seq handed out.
    reserved = json.loads(path.read_text())["reserved"]
    assert reserved == {"temperature": 6, "pu_workload": 3}

    restarted = agent_core.SeqState(path, AGENT_ID, block=3, floor=lambda: 0)  # a crash, say
    assert restarted.next("temperature") == 6 > max(first)
    assert restarted.next("pu_workload") == 3


def test_seq_never_starts_below_the_clock(tmp_path: Path) -> None:
    state = agent_core.SeqState(tmp_path / "state.json", AGENT_ID)
    seq = state.next("temperature")
    assert seq >= agent_core.clock_floor() - 60_000_000  # microseconds
    (tmp_path / "state.json").unlink()  # state lost: still above what was sent
    assert agent_core.SeqState(tmp_path / "state.json", AGENT_ID).next("temperature") > seq


def test_seq_state_of_another_agent_is_refused(tmp_path: Path) -> None:
    agent_core.SeqState(tmp_path / "state.json", "other").next("temperature")
    with pytest.raises(agent_core.AgentError, match="belongs to agent 'other'"):
        agent_core.SeqState(tmp_path / "state.json", AGENT_ID)


def test_corrupt_seq_state_falls_back_to_the_clock(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    state = agent_core.SeqState(tmp_path / "state.json", AGENT_ID, floor=lambda: 12345)
    assert state.next("temperature") == 12345


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in (agent_core.STATE_DIR_ENV, "STATE_DIRECTORY", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    home = tmp_path / ".local" / "state" / "sparklem-agent" / "a1"
    assert agent_core.default_state_dir("a1") == home
    monkeypatch.setenv("XDG_STATE_HOME", "/xdg")
    assert agent_core.default_state_dir("a1") == Path("/xdg/sparklem-agent/a1")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/sparklem-agent")
    assert agent_core.default_state_dir("a1") == Path("/var/lib/sparklem-agent/a1")
    monkeypatch.setenv(agent_core.STATE_DIR_ENV, "/explicit")
    assert agent_core.default_state_dir("a1") == Path("/explicit")


# --- spool ------------------------------------------------------------------------------


def test_spool_keeps_order_and_survives_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    ids = [spool.put("t", b"k", f"v{i}".encode()) for i in range(10)]
    assert ids == sorted(ids) and len(spool) == 10
    assert [e.value for e in spool.pending(limit=3)] == [b"v0", b"v1", b"v2"]
    assert [e.value for e in spool.pending(after=ids[7])] == [b"v8", b"v9"]
    spool.delete([ids[0], ids[1], 999_999])
    spool.close()

    reopened = Spool(tmp_path / "spool.sqlite3")
    assert len(reopened) == 8
    assert [e.value for e in reopened.pending()] == [f"v{i}".encode() for i in range(2, 10)]
    reopened.delete(e.id for e in reopened.pending())
    assert reopened.put("t", b"k", b"new") > ids[-1]  # ids never repeat
    reopened.close()


def test_spool_is_bounded_and_drops_the_oldest(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.sqlite3", max_rows=5)
    for i in range(12):
        spool.put("t", b"k", str(i).encode())
    assert len(spool) == 5 and spool.dropped == 7
    assert [e.value for e in spool.pending()] == [b"7", b"8", b"9", b"10", b"11"]
    spool.close()
    smaller = Spool(tmp_path / "spool.sqlite3", max_rows=2)  # a lower bound applies at once
    assert [e.value for e in smaller.pending()] == [b"10", b"11"] and smaller.dropped == 3
    smaller.close()


def test_unusable_spool_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    spool = Spool(path)
    assert len(spool) == 0 and spool.put("t", b"k", b"v") >= 1
    assert len(list(tmp_path.glob("spool.sqlite3.corrupt-*"))) == 1
    spool.close()


# --- sender and agent, in process -----------------------------------------------------


def test_sender_keeps_its_ordering_properties(tmp_path: Path, caplog) -> None:
    spool = Spool(tmp_path / "spool.sqlite3")
    kafka = {"bootstrap.servers": "127.0.0.1:9", "acks": "1", "delivery.timeout.ms": 5000,
             "enable.idempotence": True, "linger.ms": 7}  # fmt: skip
    with caplog.at_level("WARNING", logger="sparklem.agent"):
        sender = Sender(spool, kafka)
    assert "ignored" in caplog.text and "'acks': '1'" in caplog.text
    assert "enable.idempotence" not in caplog.text.split("ignored")[1]  # it agreed
    assert sender.conf["acks"] == "all" and sender.conf["enable.idempotence"] is True
    assert sender.conf["message.timeout.ms"] == 0 and "delivery.timeout.ms" not in sender.conf
    assert sender.conf["linger.ms"] == 7
    spool.close()


# --- command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path, _ = create_server_key(tmp_path_factory.mktemp("server"), bits=2048)
    return path.read_bytes()


class Setup:
    """A certificates directory and helpers to make bundles and run the agent."""

    def __init__(self, root: Path, server_pem: bytes) -> None:
        self.root = root
        self.certs = root / "certificates"
        self.certs.mkdir(parents=True)
        (self.certs / "server_private.pem").write_bytes(server_pem)
        (self.certs / "empty").mkdir()
        thermal = root / "thermal" / "thermal_zone0"
        thermal.mkdir(parents=True)
        (thermal / "type").write_text("cpu-thermal\n")
        (thermal / "temp").write_text("48300\n")
        self.topics = {p: f"t{uuid.uuid4().hex[:10]}.{p}" for p in ("temperature", "pu_workload")}
        self.state = root / "state"
        self._sessions: dict[tuple[str, str], bytes] = {}

    def bundle(self, bootstrap: str, interval: float = 30, stall_s: float = 60) -> Path:
        plugins = {
            "temperature": {
                "topic": self.topics["temperature"],
                "interval": interval,
                "thermal_root": str(self.root / "thermal"),
                "hwmon_root": str(self.certs / "empty"),
            },
            "pu_workload": {
                "topic": self.topics["pu_workload"],
                "interval": interval,
                "nvidia_smi": str(self.root / "no-nvidia-smi"),
            },
        }
        made = enrollment.create_agent(
            self.certs,
            AGENT_ID,
            bootstrap=bootstrap,
            plugins=plugins,
            out_dir=self.root / "out",
            passphrase=PASSPHRASE,
            force=True,
            bits=2048,
            agent={"stall_timeout_s": stall_s},
        )
        self.spool = agent_core.spool_path(
            self.state, bundle_file.load_bundle(made.bundle_path, PASSPHRASE)
        )
        return made.bundle_path

    def command(self, bundle: Path, *args: str) -> list[str]:
        return [sys.executable, "-m", "sparklem_core.agent", "--bundle", str(bundle),
                "--state-dir", str(self.state), *args]  # fmt: skip

    def run(self, bundle: Path, *args: str, env: dict[str, str] | None = None):
        return subprocess.run(
            self.command(bundle, *args),
            env={**os.environ, agent_cli.PASSPHRASE_ENV: PASSPHRASE, **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def open(self, value: bytes) -> tuple[wire.Envelope, wire.Plaintext]:
        """Verify and decrypt like the processor does (session keys cached like it does)."""
        envelope = wire.parse_envelope(value)
        agent_key = RSA.import_key((self.certs / "agents" / f"{envelope.agent}.pem").read_bytes())
        wire.verify(envelope, agent_key)
        session = self._sessions.get((envelope.kid, envelope.ek))
        if session is None:
            server_key = load_server_keys(self.certs)[envelope.kid]
            session = wire.unwrap_key(envelope.ek, server_key)
            self._sessions[(envelope.kid, envelope.ek)] = session
        raw = wire.decrypt(envelope, session)
        return envelope, wire.parse_plaintext(raw)

    def spooled_seqs(self, topic: str | None = None) -> list[int]:
        """The seqs waiting in the agent's spool, oldest first (of one topic, if given)."""
        path = self.spool  # of the last bundle made
        if not path.exists():
            return []
        db = sqlite3.connect(path)
        try:
            rows = db.execute("SELECT topic, value FROM spool ORDER BY id").fetchall()
        finally:
            db.close()
        return [self.open(bytes(v))[1].seq for t, v in rows if topic in (None, t)]


@pytest.fixture
def setup(tmp_path: Path, server_pem: bytes) -> Setup:
    return Setup(tmp_path, server_pem)


def test_cli_refuses_bad_bundles_and_passphrases_in_one_line(setup: Setup) -> None:
    bundle = setup.bundle("127.0.0.1:9")
    tampered = setup.root / "tampered.tar.xz"
    data = bytearray(bundle.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    truncated = setup.root / "truncated.tar.xz"
    truncated.write_bytes(bundle.read_bytes()[:300])
    old = setup.root / "old.tar.xz"
    old.write_bytes(lzma.compress(b"a tar from before the seal", format=lzma.FORMAT_XZ))
    empty = setup.root / "empty.tar.xz"
    empty.write_bytes(b"")
    huge = setup.root / "huge.tar.xz"
    huge.write_bytes(bundle.read_bytes() * (bundle_file.MAX_BUNDLE_BYTES // 1000))
    cases = [
        (bundle, {agent_cli.PASSPHRASE_ENV: "wrong passphrase!"}, bundle_file.UNOPENABLE),
        (tampered, {}, bundle_file.UNOPENABLE),
        (truncated, {}, bundle_file.UNOPENABLE),
        (old, {}, "older gen_config.py; re-issue it"),
        (empty, {}, "empty"),
        (huge, {}, "larger than"),
        (setup.root / "missing.tar.xz", {}, "cannot be read: No such file"),
        (setup.root, {}, "is a directory, not a regular file"),
        (bundle, {agent_cli.PASSPHRASE_ENV: ""}, "no passphrase"),
    ]
    for path, env, expected in cases:
        done = setup.run(path, "--once", env=env)
        assert done.returncode == 2, (expected, done.stderr)
        assert "Traceback" not in done.stderr
        assert expected in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


def test_cli_passphrase_file_and_default_bundle_name(setup: Setup) -> None:
    bundle = setup.bundle("127.0.0.1:9")
    (setup.root / "config.tar.xz").write_bytes(bundle.read_bytes())
    (setup.root / "pass").write_text("not it at all\n")
    done = subprocess.run(
        [sys.executable, "-m", "sparklem_core.agent", "--passphrase-file", "pass", "--once"],
        cwd=setup.root,
        env={**os.environ, agent_cli.PASSPHRASE_ENV: PASSPHRASE},  # the file wins
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "wrong passphrase" in done.stderr


def test_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sparklem_core.agent", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0
    for option in ("--bundle", "--passphrase-file", "--once", "--state-dir", "--log-level"):
        assert option in done.stdout


# --- against a broker --------------------------------------------------------------------


def read_records(
    bootstrap: str,
    topics: list[str],
    count: int = 0,
    timeout: float = 30,
    quiet_s: float = 0.0,
) -> list[Any]:
    """Records of ``topics`` (every partition, from the beginning): at least ``count``, and
    with ``quiet_s``, until none has come for that long (Tansu's watermarks count batches,
    not records, so they cannot say how many there are)."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"g{uuid.uuid4().hex}", "log_level": 0}
    )
    try:
        metadata = consumer.list_topics(timeout=10)
        consumer.assign([
            TopicPartition(topic, partition, OFFSET_BEGINNING)
            for topic in topics
            for partition in metadata.topics[topic].partitions
        ])  # fmt: skip
        records: list[Any] = []
        last = [time.monotonic()]

        def enough() -> bool:
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is None:
                    records.append(message)
                    last[0] = time.monotonic()
            return len(records) >= count and time.monotonic() - last[0] >= quiet_s

        wait_for(
            enough, timeout=timeout, interval=0, message=f"fewer than {count} records in {topics}"
        )
        return records
    finally:
        consumer.close()


@pytest.mark.e2e
def test_once_sends_envelopes_the_processor_can_open(setup: Setup, broker: TansuBroker) -> None:
    broker.create_topics(setup.topics.values())
    bundle = setup.bundle(broker.bootstrap)

    done = setup.run(bundle, "--once")
    assert done.returncode == 0, done.stderr
    assert "2 sent, 0 left in the spool" in done.stderr

    records = read_records(broker.bootstrap, list(setup.topics.values()), 2)
    first: dict[str, int] = {}
    for record in records:
        envelope, plaintext = setup.open(record.value())
        assert record.key() == AGENT_ID.encode()
        assert envelope.agent == AGENT_ID
        assert record.topic() == setup.topics[envelope.plugin]
        first[envelope.plugin] = plaintext.seq
        if envelope.plugin == "temperature":
            assert plaintext.data == {
                "readings": [{"sensor": "cpu-thermal", "value": 48.3, "unit": "C"}]
            }
        else:
            assert 0 <= plaintext.data["cpu"]["percent"] <= 100
    assert set(first) == {"temperature", "pu_workload"}
    assert setup.spooled_seqs() == []

    again = setup.run(bundle, "--once")  # a restart: seq keeps rising
    assert again.returncode == 0, again.stderr
    records = read_records(broker.bootstrap, list(setup.topics.values()), 4)
    seqs: dict[str, list[int]] = {}
    for record in records:
        envelope, plaintext = setup.open(record.value())
        seqs.setdefault(envelope.plugin, []).append(plaintext.seq)
    for plugin, values in seqs.items():
        assert len(values) == 2 and values[0] == first[plugin] < values[1], plugin


@pytest.mark.e2e
def test_once_with_broker_down_keeps_the_spool_for_the_next_start(
    setup: Setup, tmp_path: Path
) -> None:
    port = free_port()
    bundle = setup.bundle(f"127.0.0.1:{port}")
    down = setup.run(bundle, "--once", "--flush-timeout", "2")
    assert down.returncode == 1
    assert "2 entries left in the spool" in down.stderr
    assert "Traceback" not in down.stderr
    waiting = setup.spooled_seqs()
    assert len(waiting) == 2

    with TansuBroker(port=port, log_path=tmp_path / "tansu.log") as own:
        own.create_topics(setup.topics.values())
        up = setup.run(bundle, "--once")
        assert up.returncode == 0, up.stderr
        records = read_records(own.bootstrap, list(setup.topics.values()), 4)
    by_plugin: dict[str, list[int]] = {}
    for record in records:
        envelope, plaintext = setup.open(record.value())
        by_plugin.setdefault(envelope.plugin, []).append(plaintext.seq)
    assert sorted(s for seqs in by_plugin.values() for s in seqs[:1]) == sorted(waiting)
    for seqs in by_plugin.values():
        assert len(seqs) == 2 and seqs[0] < seqs[1]  # the spooled one first, then the new one
    assert setup.spooled_seqs() == []


@pytest.mark.e2e
def test_spool_drains_in_order_after_a_broker_restart(setup: Setup, tmp_path: Path) -> None:
    topics = list(setup.topics.values())
    with TansuBroker(log_path=tmp_path / "tansu.log") as own:
        own.create_topics(topics, partitions=TANSU_AUTO_PARTITIONS)
        bundle = setup.bundle(own.bootstrap, interval=0.1, stall_s=2)
        log_path = tmp_path / "agent.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                setup.command(bundle),
                env={**os.environ, agent_cli.PASSPHRASE_ENV: PASSPHRASE},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            read_records(own.bootstrap, topics, 6)  # it works before the outage

            own.stop(kill=True)
            wait_for(
                lambda: all(len(setup.spooled_seqs(t)) >= 10 for t in topics),
                timeout=60,
                message="the agent did not spool while the broker was down",
            )
            spooled = {t: setup.spooled_seqs(t) for t in topics}
            assert proc.poll() is None, log_path.read_text()

            own.start()
            own.create_topics(topics, partitions=TANSU_AUTO_PARTITIONS)
            wait_for(
                lambda: all(set(spooled[t]).isdisjoint(setup.spooled_seqs(t)) for t in topics),
                timeout=60,
                message="the spool did not drain after the broker came back",
            )
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert setup.spooled_seqs() == []  # SIGTERM flushed the rest
        expected = sum(len(seqs) for seqs in spooled.values())
        records = read_records(own.bootstrap, topics, expected, timeout=60, quiet_s=2)

    for topic in topics:
        assert len({r.partition() for r in records if r.topic() == topic}) == 1, topic
        seqs = [setup.open(r.value())[1].seq for r in records if r.topic() == topic]
        assert seqs == sorted(seqs), f"{topic}: out of order"
        assert len(seqs) == len(set(seqs)), f"{topic}: doubled"
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{topic}: a gap"
        # Everything not delivered when the broker went away came through, exactly once.
        assert seqs[0] == spooled[topic][0] and set(spooled[topic]) <= set(seqs), topic
    text = log_path.read_text()
    assert "readings are spooled" in text and "works again" in text
    assert "Traceback" not in text


def test_agent_refuses_a_bundle_whose_plugins_are_all_missing(setup: Setup) -> None:
    made = enrollment.create_agent(
        setup.certs, "lonely", bootstrap="127.0.0.1:9", out_dir=setup.root / "lonely",
        plugins={"nope": {"topic": "t.nope", "interval": 5}}, passphrase=PASSPHRASE, bits=2048,
    )  # fmt: skip
    bundle = bundle_file.load_bundle(made.bundle_path, PASSPHRASE)
    with pytest.raises(agent_core.AgentError, match=r"none of the bundle's plugins \(nope\)"):
        agent_core.Agent(bundle, setup.root / "state-lonely")


# --- state per server ---------------------------------------------------------------------


def spool_count(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT COUNT(*) FROM spool").fetchone()[0]
    finally:
        db.close()


def warnings_about(stderr: str, path: Path) -> list[str]:
    return [line for line in stderr.splitlines() if str(path) in line and "WARNING" in line]


@pytest.mark.e2e
def test_a_spool_sealed_for_another_server_is_reported_and_not_sent(
    setup: Setup, broker: TansuBroker, tmp_path: Path
) -> None:
    old = setup.bundle(f"127.0.0.1:{free_port()}")  # server A, its broker down
    assert setup.run(old, "--once", "--flush-timeout", "1").returncode == 1
    old_spool = setup.spool
    assert spool_count(old_spool) == 2

    other_pem = create_server_key(tmp_path / "server-b", bits=2048)[0].read_bytes()
    server_b = Setup(tmp_path / "b", other_pem)  # re-enrolled against server B
    server_b.state, server_b.topics = setup.state, setup.topics
    broker.create_topics(setup.topics.values())
    new = server_b.bundle(broker.bootstrap)
    done = server_b.run(new, "--once")
    assert done.returncode == 0, done.stderr

    server_a = old_spool.parent.name
    assert server_b.spool.parent.name != server_a
    (line,) = warnings_about(done.stderr, old_spool)
    assert f"holds 2 entries sealed for another server ({server_a})" in line
    assert "not sent" in line and "Traceback" not in done.stderr
    records = read_records(broker.bootstrap, list(setup.topics.values()), 2, quiet_s=1)
    assert len(records) == 2
    for record in records:
        server_b.open(record.value())  # B's agent key signed it, B's server key opens it
    assert spool_count(old_spool) == 2  # kept for server A, untouched


def test_state_is_kept_per_server_across_a_key_rotation(setup: Setup) -> None:
    first = setup.bundle(f"127.0.0.1:{free_port()}")
    assert setup.run(first, "--once", "--flush-timeout", "1").returncode == 1
    old_spool, old_seqs = setup.spool, setup.spooled_seqs()
    before = bundle_file.load_bundle(first, PASSPHRASE)

    rotated, _ = create_server_key(setup.root / "new-key", bits=2048)
    os.replace(rotated, setup.certs / "server_private_2.pem")
    later = time.time() + 60  # the newest key file: new bundles name it
    os.utime(setup.certs / "server_private_2.pem", (later, later))
    second = setup.bundle(f"127.0.0.1:{free_port()}")
    after = bundle_file.load_bundle(second, PASSPHRASE)  # over the first one's file
    assert after.kid != before.kid and after.server_id == before.server_id is not None
    done = setup.run(second, "--once", "--flush-timeout", "1")
    assert done.returncode == 1

    assert setup.spool.parent == old_spool.parent  # the same server: its state stays
    assert setup.spool != old_spool  # a new agent key: what the old one signed cannot go
    (line,) = warnings_about(done.stderr, old_spool)
    assert "signed with the agent key of an earlier enrollment with this server" in line
    assert spool_count(old_spool) == 2
    assert min(setup.spooled_seqs()) > max(old_seqs)  # seq state kept: it keeps rising


def test_the_state_of_an_agent_from_before_is_adopted(setup: Setup) -> None:
    bundle = setup.bundle(f"127.0.0.1:{free_port()}")
    assert setup.run(bundle, "--once", "--flush-timeout", "1").returncode == 1
    before = setup.spooled_seqs()
    server_dir = setup.spool.parent  # the layout of earlier versions: all in the root
    assert sorted(os.listdir(server_dir)) == sorted(["state.json", setup.spool.name])
    os.replace(server_dir / "state.json", setup.state / "state.json")
    os.replace(setup.spool, setup.state / "spool.sqlite3")

    done = setup.run(bundle, "--once", "--flush-timeout", "1")
    assert done.returncode == 1
    assert "moved 2 spooled entries" in done.stderr and "WARNING spool" not in done.stderr
    after = setup.spooled_seqs()
    assert after[:2] == before and len(after) == 4 and min(after[2:]) > max(before)
    assert not (setup.state / "spool.sqlite3").exists()
    assert not (setup.state / "state.json").exists()
