"""sparklem_core.registry: enrolled and revoked agents, server keys."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest
from Crypto.PublicKey import RSA

from sparklem_core import protocol
from sparklem_core.registry import (
    AgentRegistry,
    NoServerKey,
    create_server_key,
    load_server_keys,
)


@pytest.fixture(scope="module")
def keys() -> list[RSA.RsaKey]:
    return [RSA.generate(2048) for _ in range(3)]


@pytest.fixture(scope="module")
def small_key() -> RSA.RsaKey:
    return RSA.generate(1024)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    directory = tmp_path / "certificates"
    (directory / "agents").mkdir(parents=True)
    (directory / "revoked").mkdir()
    return directory


def enroll(certs: Path, agent_id: str, key: RSA.RsaKey, where: str = "agents") -> Path:
    path = certs / where / f"{agent_id}.pem"
    path.write_bytes(key.public_key().export_key(format="PEM"))
    return path


def rejection(registry: AgentRegistry, agent_id: str) -> protocol.Rejected:
    with pytest.raises(protocol.Rejected) as caught:
        registry.lookup(agent_id)
    return caught.value


def test_enrolled_agent(certs: Path, keys: list[RSA.RsaKey]) -> None:
    enroll(certs, "edge-1", keys[0])
    registry = AgentRegistry(certs)
    key = registry.lookup("edge-1")
    assert key == keys[0].public_key() and not key.has_private()
    assert set(registry.agents()) == {"edge-1"}
    assert registry.agents()["edge-1"].fingerprint == protocol.key_id(keys[0])


def test_unknown_agent(certs: Path, keys: list[RSA.RsaKey]) -> None:
    enroll(certs, "edge-1", keys[0])
    rejected = rejection(AgentRegistry(certs), "edge-2")
    assert rejected.reason == protocol.UNKNOWN_AGENT
    assert "edge-2" in rejected.detail


def test_missing_directories_mean_no_agents(tmp_path: Path) -> None:
    registry = AgentRegistry(tmp_path / "absent")
    assert registry.agents() == {}
    assert rejection(registry, "edge-1").reason == protocol.UNKNOWN_AGENT


def test_revoked_agent_even_if_still_enrolled(certs: Path, keys: list[RSA.RsaKey]) -> None:
    enroll(certs, "edge-1", keys[0])
    enroll(certs, "edge-1", keys[0], where="revoked")
    enroll(certs, "edge-2", keys[1], where="revoked")  # moved there: no longer in agents/
    registry = AgentRegistry(certs)
    for agent_id in ("edge-1", "edge-2"):
        rejected = rejection(registry, agent_id)
        assert rejected.reason == protocol.REVOKED_AGENT
        assert agent_id in rejected.detail


def test_small_agent_key_is_refused(certs: Path, small_key: RSA.RsaKey) -> None:
    enroll(certs, "old-edge", small_key)
    registry = AgentRegistry(certs)
    rejected = rejection(registry, "old-edge")
    assert rejected.reason == protocol.UNKNOWN_AGENT
    assert "1024 bits" in rejected.detail and "2048" in rejected.detail
    assert registry.agents()["old-edge"].key is None


def test_unreadable_agent_key_is_refused(certs: Path) -> None:
    (certs / "agents" / "broken.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n")
    rejected = rejection(AgentRegistry(certs), "broken")
    assert rejected.reason == protocol.UNKNOWN_AGENT
    assert "unreadable" in rejected.detail


def test_other_files_are_ignored(certs: Path, keys: list[RSA.RsaKey]) -> None:
    enroll(certs, "edge-1", keys[0])
    (certs / "agents" / "README.txt").write_text("not a key")
    (certs / "agents" / "edge-2.pem.bak").write_bytes(keys[1].public_key().export_key())
    assert set(AgentRegistry(certs).agents()) == {"edge-1"}


def test_enrollment_after_construction_is_picked_up_on_refresh(
    certs: Path, keys: list[RSA.RsaKey]
) -> None:
    registry = AgentRegistry(certs, refresh_s=3600)
    assert rejection(registry, "late").reason == protocol.UNKNOWN_AGENT
    enroll(certs, "late", keys[1])
    # Within refresh_s nothing is re-read...
    assert rejection(registry, "late").reason == protocol.UNKNOWN_AGENT
    registry.refresh()
    assert registry.lookup("late") == keys[1].public_key()


def test_lookup_refreshes_once_refresh_s_has_passed(
    certs: Path, keys: list[RSA.RsaKey], monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = AgentRegistry(certs, refresh_s=0.5)
    enroll(certs, "late", keys[1])
    now = time.monotonic()
    monkeypatch.setattr(time, "monotonic", lambda: now + 1.0)
    assert registry.lookup("late") == keys[1].public_key()


def test_revocation_and_unenrollment_take_effect_on_refresh(
    certs: Path, keys: list[RSA.RsaKey]
) -> None:
    enroll(certs, "edge-1", keys[0])
    enroll(certs, "edge-2", keys[1])
    registry = AgentRegistry(certs, refresh_s=3600)
    assert registry.lookup("edge-1") and registry.lookup("edge-2")
    os.replace(certs / "agents" / "edge-1.pem", certs / "revoked" / "edge-1.pem")
    (certs / "agents" / "edge-2.pem").unlink()
    registry.refresh()
    assert rejection(registry, "edge-1").reason == protocol.REVOKED_AGENT
    assert rejection(registry, "edge-2").reason == protocol.UNKNOWN_AGENT


def test_replaced_key_is_reread(certs: Path, keys: list[RSA.RsaKey]) -> None:
    path = enroll(certs, "edge-1", keys[0])
    registry = AgentRegistry(certs, refresh_s=3600)
    enroll(certs, "edge-1", keys[1])
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    registry.refresh()
    assert registry.lookup("edge-1") == keys[1].public_key()


# --- server keys ---------------------------------------------------------------------------


def write_server_key(certs: Path, name: str, key: RSA.RsaKey) -> None:
    (certs / name).write_bytes(key.export_key(format="PEM", pkcs=8))


def test_load_server_keys_by_kid(certs: Path, keys: list[RSA.RsaKey]) -> None:
    write_server_key(certs, "server_private.pem", keys[0])
    write_server_key(certs, "server_private-2026.pem", keys[1])
    write_server_key(certs, "server_private_old.pem", keys[2])
    (certs / "server_public.pem").write_bytes(keys[0].public_key().export_key())  # ignored
    loaded = load_server_keys(certs)
    assert loaded == {protocol.key_id(k): k for k in keys}
    assert all(k.has_private() for k in loaded.values())


def test_pkcs1_server_key_is_loaded(certs: Path, keys: list[RSA.RsaKey]) -> None:
    (certs / "server_private.pem").write_bytes(keys[0].export_key(format="PEM", pkcs=1))
    assert list(load_server_keys(certs)) == [protocol.key_id(keys[0])]


def test_no_server_key_says_to_run_init(certs: Path) -> None:
    with pytest.raises(NoServerKey) as caught:
        load_server_keys(certs)
    assert "python3 main.py init" in str(caught.value)
    assert str(certs) in str(caught.value)


def test_no_server_key_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(NoServerKey, match="python3 main.py init"):
        load_server_keys(tmp_path / "absent")


def test_public_key_as_server_key_is_refused(certs: Path, keys: list[RSA.RsaKey]) -> None:
    (certs / "server_private.pem").write_bytes(keys[0].public_key().export_key())
    with pytest.raises(NoServerKey, match="no private key"):
        load_server_keys(certs)


def test_garbage_server_key_is_refused(certs: Path) -> None:
    (certs / "server_private.pem").write_text("garbage")
    with pytest.raises(NoServerKey, match="server_private.pem"):
        load_server_keys(certs)


def test_create_server_key(tmp_path: Path) -> None:
    certs = tmp_path / "new" / "certs"
    path, created = create_server_key(certs, bits=2048)
    assert created and path == certs / "server_private.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert b"BEGIN PRIVATE KEY" in pem  # PKCS#8
    again, created_again = create_server_key(certs, bits=2048)
    assert again == path and not created_again and path.read_bytes() == pem
    kid = protocol.key_id(RSA.import_key(pem))
    assert list(load_server_keys(certs)) == [kid]
