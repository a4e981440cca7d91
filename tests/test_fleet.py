"""``sparklem agents``: the fleet as the certificates directory and the processors know it."""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA
from harness import loaded_packages
from hypothesis import given
from hypothesis import strategies as st
from pipeline_env import Env, reading, run, temperature

from sparklem_core import cli
from sparklem_core.admin import enrollment
from sparklem_core.admin.enrollment import record_intervals
from sparklem_core.db import enrollments
from sparklem_core.db.batch import AgentActivity, Batch
from sparklem_core.db.store import Store
from sparklem_core.fleet.state import (
    STATES,
    count_by_state,
    intervals_path,
    inventory,
    open_registry,
    read_intervals,
)
from sparklem_core.settings.config import load_config

LONG_AGO = datetime(2026, 1, 1, tzinfo=UTC)
AHEAD = datetime.now(UTC) + timedelta(days=1)  # seen "later than now": active whatever the clock


@pytest.fixture(scope="module")
def agent_pem() -> bytes:
    return RSA.generate(2048).public_key().export_key(format="PEM")


def agents_cli(config: Path, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = cli.main(["agents", "--config", str(config), *args])
        except SystemExit as exc:
            status = int(exc.code or 0)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture
def fleet(tmp_path: Path, agent_pem: bytes) -> Path:
    """Enrolled: quiet (silent), busy (active), new (never seen), far (on another host,
    never seen); revoked: old."""
    certs = tmp_path / "certs"
    for directory in ("agents", "revoked"):
        (certs / directory).mkdir(parents=True)
    for agent in ("quiet", "busy", "new"):
        (certs / "agents" / f"{agent}.pem").write_bytes(agent_pem)
        record_intervals(certs, agent, {"temperature": 60, "pu_workload": 10})
    (certs / "revoked" / "old.pem").write_bytes(agent_pem)
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    store = Store(url, "g")
    store.create_schema()
    seen = {"quiet": LONG_AGO, "busy": AHEAD, "old": LONG_AGO}
    batch = Batch(agents={agent: AgentActivity(at, at) for agent, at in seen.items()})
    batch.agents["busy"].stored("temperature", AHEAD)
    batch.agents["busy"].rejected("clock_skew", AHEAD)
    store.commit(batch)
    enrollments.publish(store.engine, store.metadata, "far", "enrolled", agent_pem)  # elsewhere
    store.dispose()
    config = tmp_path / "config.yaml"
    config.write_text(f"certificates: {certs}\ndatabase:\n  url: {url}\n")
    return config


def test_every_enrolled_or_seen_agent_with_its_state(fleet: Path) -> None:
    status, out, err = agents_cli(fleet, "--json")
    assert status == 0, err
    listed = {a["agent_id"]: a for a in json.loads(out)}
    summary = {k: (a["state"], a["enrolled"], a["silent"]) for k, a in listed.items()}
    assert summary == {
        "busy": ("active", True, False),
        "far": ("never_seen", True, True),
        "new": ("never_seen", True, True),
        "old": ("revoked", False, False),
        "quiet": ("silent", True, True),
    }
    assert "activity" not in listed["busy"]  # one word per agent: its state
    busy = listed["busy"]
    assert (busy["messages"], busy["rejections"], busy["last_rejection_reason"]) == (
        1,
        1,
        "clock_skew",
    )
    assert busy["silent_after_s"] == 30  # three times the shortest interval
    assert set(busy["plugins"]) == {"temperature"}
    assert listed["quiet"]["last_seen"] == "2026-01-01T00:00:00Z"
    assert listed["quiet"]["last_seen_ago_s"] > 0


def test_silent_lists_only_silent_agents_and_the_text_table_says_when(fleet: Path) -> None:
    status, out, _ = agents_cli(fleet, "--silent")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["AGENT", "STATE", "LAST"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["far", "never_seen", "(!)"], ["new", "never_seen", "(!)"], ["quiet", "silent", "(!)"]
    ]  # fmt: skip
    assert "2026-01-01 00:00:00" in lines[3] and " ago" in lines[3]


def test_configured_threshold_overrides_the_intervals(fleet: Path) -> None:
    fleet.write_text(fleet.read_text() + "fleet:\n  silent_after_s: 31000000\n")
    _, out, _ = agents_cli(fleet, "--json")
    assert {a["agent_id"]: a["state"] for a in json.loads(out)}["quiet"] == "active"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("fleet:\n  silent_after_s: -1\n", "fleet.silent_after_s"),
        ("fleet:\n  silence: 3\n", "unknown key(s) silence"),
    ],
)
def test_bad_fleet_settings_are_one_line_errors(tmp_path: Path, config: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config)
    status, _, err = agents_cli(path)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


def test_a_database_without_the_inventory_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"certificates: {tmp_path}\ndatabase:\n  url: sqlite:///{tmp_path}/x.db\n")
    status, _, err = agents_cli(path)
    assert status == 1 and "sparklem init" in err and len(err.strip().splitlines()) == 1


def test_enrollment_records_the_intervals(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "server_private.pem").write_bytes(RSA.generate(2048).export_key(format="PEM"))
    enrollment.create_agent(
        certs,
        "edge-9",
        bootstrap="kafka.example:9092",
        plugins={"temperature": {"topic": "sparklem.temperature", "interval": 15}},
        out_dir=tmp_path / "out",
        passphrase="x" * 32,
        bits=2048,
    )
    assert read_intervals(certs, "edge-9") == {"temperature": 15}


@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_a_hostile_intervals_file_counts_as_none(data: bytes) -> None:
    with contextlib.ExitStack() as stack:
        import tempfile

        certs = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        (certs / "agents").mkdir()
        intervals_path(certs, "a").write_bytes(data)
        intervals = read_intervals(certs, "a")
    assert all(0 < v <= enrollment.MAX_INTERVAL_S for v in intervals.values())


def test_a_reader_that_leaves_early_is_no_error(fleet: Path) -> None:
    """`sparklem agents --json | head -1`: the pipe closes, the command ends quietly."""
    import subprocess
    import sys

    from harness import ROOT

    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "agents", "--config", str(fleet), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()  # the reader is gone before a byte is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err


def test_agents_are_counted_by_state_from_what_the_pipeline_stored(env: Env) -> None:
    """What /metrics exports as sparklem_agents{state}, on each database: agents that sent
    (one since gone silent, one with no interval recorded), agents never seen (one
    enrolled on another host), a revoked one and one whose key was removed (not counted)."""
    for agent in ("busy", "quiet", "unjudged", "gone", "dropped", "new"):
        env.enroll(agent)
    record_intervals(env.certs, "busy", {"temperature": 3600})
    record_intervals(env.certs, "quiet", {"temperature": 1})  # silent after 3 s
    senders = ("busy", "quiet", "unjudged", "gone", "dropped")
    run(
        env.pipeline(),
        [env.record(env.envelope(temperature(reading()), seq=1, agent=a)) for a in senders],
    )
    assert env.count("sparklem_agents") == len(senders)
    (env.certs / "agents" / "gone.pem").rename(env.certs / "revoked" / "gone.pem")
    (env.certs / "agents" / "dropped.pem").unlink()
    pem = env.keys.agent.public_key().export_key(format="PEM")
    enrollments.publish(env.store.engine, env.store.metadata, "far", "enrolled", pem)
    enrollments.publish(env.store.engine, env.store.metadata, "edge-2", "revoked", pem)
    path = env.tmp / "config.yaml"
    path.write_text(json.dumps({"certificates": str(env.certs), "database": {"url": env.url}}))
    config = load_config(path, env={})
    later = datetime.now(UTC) + timedelta(seconds=60)
    counts = count_by_state(config, env.store, later, open_registry(config, env.store))
    # edge-1 (enrolled by the world, no interval, never sent): never seen
    assert counts == {
        "active": 1, "silent": 1, "seen": 1, "never_seen": 3, "revoked": 2, "refused": 0
    }  # fmt: skip
    # The same as `sparklem agents` shows (one rule for both).
    shown = Counter(s.state for s in inventory(config, later) if s.state != "not_enrolled")
    assert shown == {state: n for state, n in counts.items() if n}


def test_the_processor_and_the_read_side_do_not_import_admin() -> None:
    """An agent's state is a rule of its own (fleet.state): the processor's
    gauge and serve's /agents read it without the enrollment commands' code."""
    imports = ("sparklem_core.processor.consumer", "sparklem_core.reading.queries",
               "sparklem_core.http.errors")  # fmt: skip
    assert loaded_packages(imports, ["sparklem_core.admin"]) == []


def refused_key_files(certs: Path, agent_pem: bytes) -> None:
    """Four key files the registry refuses, beside the fleet's good ones."""
    os.mkfifo(certs / "agents" / "fifo.pem")
    (certs / "elsewhere.pem").write_bytes(agent_pem)
    (certs / "agents" / "link.pem").symlink_to(certs / "elsewhere.pem")
    private = RSA.generate(2048).export_key(format="PEM")
    (certs / "agents" / "private.pem").write_bytes(private)
    small = RSA.generate(1024).public_key().export_key(format="PEM")
    (certs / "agents" / "small.pem").write_bytes(small)


REFUSED_WHY = {
    "fifo": "FIFO",
    "link": "symbolic link",
    "private": "holds a private key",
    "small": "1024 bits",
}


def test_key_files_the_registry_refuses_are_shown_refused_with_why(
    fleet: Path, agent_pem: bytes
) -> None:
    certs = fleet.parent / "certs"
    refused_key_files(certs, agent_pem)
    status, out, err = agents_cli(fleet, "--json")
    assert status == 0, err
    listed = {a["agent_id"]: a for a in json.loads(out)}
    for agent, why in REFUSED_WHY.items():
        assert listed[agent]["state"] == "refused", listed[agent]
        assert listed[agent]["enrolled"] is False and listed[agent]["silent"] is False
        assert why in listed[agent]["problem"], listed[agent]["problem"]
    assert listed["busy"]["state"] == "active" and listed["busy"]["problem"] is None
    _, table, _ = agents_cli(fleet)
    row = next(line for line in table.splitlines() if line.startswith("small "))
    assert row.split()[1] == "refused" and "1024 bits" in row
    config = load_config(fleet, env={})
    store = Store(config.database_url, config.group_id)
    try:
        counts = count_by_state(config, store, datetime.now(UTC), open_registry(config, store))
    finally:
        store.dispose()
    assert counts["refused"] == len(REFUSED_WHY)


def test_the_api_and_agents_json_say_the_same(fleet: Path, agent_pem: bytes) -> None:
    """One vocabulary: /api/v1/agents answers the documents `agents --json` prints."""
    from fastapi.testclient import TestClient

    from sparklem_core.http.app import create_app

    refused_key_files(fleet.parent / "certs", agent_pem)
    _, out, _ = agents_cli(fleet, "--json")
    with TestClient(create_app(load_config(fleet, env={}))) as client:
        api = client.get("/api/v1/agents").json()["agents"]
        refused = client.get("/api/v1/agents", params={"state": "refused"}).json()["agents"]
    printed = json.loads(out)
    for doc in (*api, *printed):
        doc.pop("last_seen_ago_s")  # relative to each one's now
    assert api == printed
    assert sorted(a["agent_id"] for a in refused) == sorted(REFUSED_WHY)
    assert {a["state"] for a in api} <= set(STATES)


def test_a_revoked_agent_that_keeps_sending_is_shown_revoked_with_its_rejections(
    env: Env,
) -> None:
    env.enroll("gone")
    pipeline = env.pipeline()
    run(pipeline, [env.record(env.envelope(temperature(reading()), seq=1, agent="gone"))])
    (env.certs / "agents" / "gone.pem").rename(env.certs / "revoked" / "gone.pem")
    pipeline.registry.refresh()
    still = [env.record(env.envelope(temperature(reading()), seq=n, agent="gone"))
             for n in (2, 3)]  # fmt: skip
    forged = env.envelope(temperature(reading()), seq=4, agent="gone", agent_key=env.keys.intruder)
    run(pipeline, [*still, env.record(forged)])
    assert [r["reason"] for r in env.rejected()] == ["revoked_agent"] * 3
    path = env.tmp / "config.yaml"
    path.write_text(json.dumps({"certificates": str(env.certs), "database": {"url": env.url}}))
    (gone,) = [s for s in inventory(load_config(path, env={}), datetime.now(UTC))
               if s.agent_id == "gone"]  # fmt: skip
    # Its own two count; the forgery of its id does not.
    assert (gone.state, gone.messages, gone.rejections) == ("revoked", 1, 2)
    assert gone.last_rejection_reason == "revoked_agent" and not gone.silent


def test_every_state_is_documented() -> None:
    from harness import ROOT

    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    table = text.split("### Agent states")[1].split("\n\n")[2]
    assert [line.split("`")[1] for line in table.splitlines()[2:]] == list(STATES)
