"""Enrollments in the database: several processor hosts see one fleet."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from Crypto.PublicKey import RSA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert, select, text
from waiting import wait_for

from sparklem_core import wire
from sparklem_core.admin import cli as admin_cli
from sparklem_core.db import enrollments
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import AgentRegistry

REFRESH_S = 0.2


@pytest.fixture(scope="module")
def pem() -> bytes:
    return RSA.generate(2048).public_key().export_key(format="PEM")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store(database_url, "g")
    store.create_schema()
    yield store
    store.dispose()


def host(tmp_path: Path, name: str, url: str) -> AgentRegistry:
    """A processor host: its own (empty) certificates directory, the shared database."""
    certs = tmp_path / name
    for directory in ("agents", "revoked"):
        (certs / directory).mkdir(parents=True)
    registry = AgentRegistry(certs, refresh_s=REFRESH_S)
    registry.use_database(Store(url, "g"))
    return registry


def verdict(registry: AgentRegistry, agent_id: str) -> str:
    try:
        registry.lookup(agent_id)
    except wire.Rejected as rejected:
        return rejected.reason
    return "ok"


def test_two_hosts_see_an_enrollment_and_a_revocation(
    store: Store, tmp_path: Path, pem: bytes
) -> None:
    hosts = [host(tmp_path, n, store.engine.url.render_as_string(False)) for n in "ab"]
    try:
        assert [verdict(h, "edge-1") for h in hosts] == [wire.UNKNOWN_AGENT] * 2
        assert enrollments.publish(store.engine, store.metadata, "edge-1", "enrolled", pem)
        wait_for(lambda: [verdict(h, "edge-1") for h in hosts] == ["ok", "ok"], timeout=10)
        enrollments.publish(store.engine, store.metadata, "edge-1", "revoked", pem)
        # every host refuses it once its registry refreshed (every REFRESH_S)
        wait_for(
            lambda: [verdict(h, "edge-1") for h in hosts] == [wire.REVOKED_AGENT] * 2, timeout=10
        )
    finally:
        for h in hosts:
            assert h.store is not None
            h.store.dispose()


def test_a_revocation_in_files_or_database_wins(store: Store, tmp_path: Path, pem: bytes) -> None:
    registry = host(tmp_path, "a", store.engine.url.render_as_string(False))
    try:
        (registry.certificates / "agents" / "on-disk.pem").write_bytes(pem)
        (registry.certificates / "revoked" / "in-db.pem").write_bytes(pem)
        enrollments.publish(store.engine, store.metadata, "on-disk", "revoked", pem)
        enrollments.publish(store.engine, store.metadata, "in-db", "enrolled", pem)
        registry.refresh()
        assert verdict(registry, "on-disk") == verdict(registry, "in-db") == wire.REVOKED_AGENT
    finally:
        assert registry.store is not None
        registry.store.dispose()


def test_revocations_stay_while_the_table_cannot_be_read(tmp_path: Path, pem: bytes) -> None:
    store = Store(f"sqlite:///{tmp_path}/db.sqlite3", "g")
    store.create_schema()
    registry = host(tmp_path, "a", str(store.engine.url))
    enrollments.publish(store.engine, store.metadata, "edge-1", "revoked", pem)
    registry.refresh()
    with store.engine.begin() as conn:
        conn.execute(text("ALTER TABLE sparklem_enrollments RENAME TO gone"))
    registry.refresh()
    assert verdict(registry, "edge-1") == wire.REVOKED_AGENT
    store.dispose()
    assert registry.store is not None
    registry.store.dispose()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    state=st.one_of(st.sampled_from(["enrolled", "revoked"]), st.text(max_size=16)),
    key=st.one_of(st.text(max_size=200), st.just("-----BEGIN PRIVATE KEY-----\nAAAA\n")),
)
def test_hostile_rows_make_the_agent_unknown_never_raise(
    tmp_path: Path, state: str, key: str
) -> None:
    url = f"sqlite:///{tmp_path}/hostile.sqlite3"
    store = Store(url, "g")
    store.create_schema()
    table = store.metadata.tables[enrollments.TABLE]
    with store.engine.begin() as conn:
        conn.execute(delete(table))
        conn.execute(
            insert(table),
            [{"agent_id": "x", "state": state, "fingerprint": "f", "public_key": key,
              "updated_at": datetime.now(UTC)}],
        )  # fmt: skip
    registry = AgentRegistry(tmp_path / "none", refresh_s=3600)
    registry.use_database(store)
    expected = wire.REVOKED_AGENT if state == "revoked" else wire.UNKNOWN_AGENT
    assert verdict(registry, "x") == expected
    store.dispose()


def test_gen_config_records_enrollment_and_revocation(
    tmp_path: Path, pem: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "server_private.pem").write_bytes(RSA.generate(2048).export_key(format="PEM"))
    url = f"sqlite:///{tmp_path}/db.sqlite3"
    store = Store(url, "g")
    store.create_schema()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"certificates": str(certs), "database": {"url": url}}))
    common = ["--config", str(config)]
    args = ["--agent-id", "edge-9", "--bootstrap", "k:9092", "--plugins", "temperature",
            "--key-bits", "2048", "--out", str(tmp_path / "out"), *common]  # fmt: skip
    assert admin_cli.main(args) == 0
    assert "and in the database" in capsys.readouterr().out
    table = store.metadata.tables[enrollments.TABLE]

    def states() -> list[tuple[str, str]]:
        with store.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(table.c.agent_id, table.c.state))]

    assert states() == [("edge-9", "enrolled")]
    assert admin_cli.main(["--revoke", "edge-9", *common]) == 0
    assert states() == [("edge-9", "revoked")]
    assert admin_cli.main(["--revoke", "edge-9", *common]) == 0  # again: recorded again
    assert "already revoked" in capsys.readouterr().out
    store.dispose()


def test_a_revocation_the_database_refuses_says_so_in_one_line(
    tmp_path: Path, pem: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    certs = tmp_path / "certs"
    (certs / "agents").mkdir(parents=True)
    (certs / "agents" / "edge-1.pem").write_bytes(pem)
    config = tmp_path / "config.yaml"
    unreachable = "postgresql+psycopg://sparklem@127.0.0.1:1/none"  # nothing listens on port 1
    config.write_text(
        yaml.safe_dump({"certificates": str(certs), "database": {"url": unreachable}})
    )
    assert admin_cli.main(["--revoke", "edge-1", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "only: the database refused it" in err and "run the same command again" in err
    assert len(err.strip().splitlines()) == 1
    assert (certs / "revoked" / "edge-1.pem").exists()  # this host refuses it already
