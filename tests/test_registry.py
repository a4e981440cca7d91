"""sparklem_core.fleet.registry: enrolled and revoked agents, server keys."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from Crypto.PublicKey import RSA
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import wait_for

from sparklem_core import wire
from sparklem_core.admin import enrollment
from sparklem_core.files import MAX_KEY_FILE_BYTES
from sparklem_core.fleet.registry import (
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


def rejection(registry: AgentRegistry, agent_id: str) -> wire.Rejected:
    with pytest.raises(wire.Rejected) as caught:
        registry.lookup(agent_id)
    return caught.value


def test_enrolled_agent(certs: Path, keys: list[RSA.RsaKey]) -> None:
    enroll(certs, "edge-1", keys[0])
    registry = AgentRegistry(certs)
    key = registry.lookup("edge-1")
    assert key == keys[0].public_key() and not key.has_private()
    assert set(registry.agents()) == {"edge-1"}
    assert registry.agents()["edge-1"].fingerprint == wire.key_id(keys[0])


def test_unknown_agent(certs: Path, keys: list[RSA.RsaKey]) -> None:
    enroll(certs, "edge-1", keys[0])
    rejected = rejection(AgentRegistry(certs), "edge-2")
    assert rejected.reason == wire.UNKNOWN_AGENT
    assert "edge-2" in rejected.detail


def test_missing_directories_mean_no_agents(tmp_path: Path) -> None:
    registry = AgentRegistry(tmp_path / "absent")
    assert registry.agents() == {}
    assert rejection(registry, "edge-1").reason == wire.UNKNOWN_AGENT


def test_revoked_agent_even_if_still_enrolled(certs: Path, keys: list[RSA.RsaKey]) -> None:
    enroll(certs, "edge-1", keys[0])
    enroll(certs, "edge-1", keys[0], where="revoked")
    enroll(certs, "edge-2", keys[1], where="revoked")  # moved there: no longer in agents/
    registry = AgentRegistry(certs)
    for agent_id in ("edge-1", "edge-2"):
        rejected = rejection(registry, agent_id)
        assert rejected.reason == wire.REVOKED_AGENT
        assert agent_id in rejected.detail


def test_small_agent_key_is_refused(certs: Path, small_key: RSA.RsaKey) -> None:
    enroll(certs, "old-edge", small_key)
    registry = AgentRegistry(certs)
    rejected = rejection(registry, "old-edge")
    assert rejected.reason == wire.UNKNOWN_AGENT
    assert "1024 bits" in rejected.detail and "2048" in rejected.detail
    assert registry.agents()["old-edge"].key is None


def test_unreadable_agent_key_is_refused(certs: Path) -> None:
    (certs / "agents" / "broken.pem").write_text("-----BEGIN PUBLIC KEY-----\nnope\n")
    rejected = rejection(AgentRegistry(certs), "broken")
    assert rejected.reason == wire.UNKNOWN_AGENT
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
    assert rejection(registry, "late").reason == wire.UNKNOWN_AGENT
    enroll(certs, "late", keys[1])
    # Within refresh_s nothing is re-read...
    assert rejection(registry, "late").reason == wire.UNKNOWN_AGENT
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
    assert rejection(registry, "edge-1").reason == wire.REVOKED_AGENT
    assert rejection(registry, "edge-2").reason == wire.UNKNOWN_AGENT


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
    assert loaded == {wire.key_id(k): k for k in keys}
    assert all(k.has_private() for k in loaded.values())


def test_pkcs1_server_key_is_loaded(certs: Path, keys: list[RSA.RsaKey]) -> None:
    (certs / "server_private.pem").write_bytes(keys[0].export_key(format="PEM", pkcs=1))
    assert list(load_server_keys(certs)) == [wire.key_id(keys[0])]


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
    kid = wire.key_id(RSA.import_key(pem))
    assert list(load_server_keys(certs)) == [kid]


# --- odd files in the certificates directory ---------------------------------------------
# Each one makes its own agent unknown (logged once); the other agents keep working.


def accepts_only_the_good_agent(registry: AgentRegistry, good: RSA.RsaKey, bad: str) -> str:
    """Assert edge-1 still works and ``bad`` is unknown; returns the rejection's detail."""
    assert registry.lookup("edge-1") == good.public_key()
    rejected = rejection(registry, bad)
    assert rejected.reason == wire.UNKNOWN_AGENT
    assert "\n" not in rejected.detail
    return rejected.detail


def refreshed_without_blocking(make: Callable[[], AgentRegistry]) -> AgentRegistry:
    """``make()`` run in a thread, so that a registry stuck on a FIFO fails the test."""
    done: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: done.update(registry=make()), daemon=True)
    worker.start()
    wait_for(lambda: not worker.is_alive(), timeout=20, message="registry blocked")
    assert "registry" in done, "the registry raised (see the thread's exception above)"
    return done["registry"]


def private_pems(key: RSA.RsaKey) -> list[bytes]:
    return [
        key.export_key(format="PEM", pkcs=1),
        key.export_key(format="PEM", pkcs=8),
        key.export_key(format="PEM", pkcs=8, passphrase="x" * 8, protection="scryptAndAES256-CBC"),
        key.export_key(format="DER", pkcs=8),
    ]


def make_odd_file(certs: Path, kind: str, keys: list[RSA.RsaKey]) -> str:
    """Put one odd entry in agents/; returns the agent id it is named after."""
    agents = certs / "agents"
    path = agents / f"{kind}.pem"
    if kind == "loop":
        path.symlink_to(path.name)
    elif kind == "link-out":
        outside = certs.parent / "outside.pem"
        outside.write_bytes(keys[1].public_key().export_key())
        path.symlink_to(outside)
    elif kind == "dangling":
        path.symlink_to(certs.parent / "nowhere.pem")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "huge":
        with open(path, "wb") as out:
            out.write(keys[1].public_key().export_key())
            out.truncate(10 * 1024 * 1024)
    elif kind == "junk":
        path.write_bytes(bytes(range(256)) * 4)
    elif kind == "empty":
        path.write_bytes(b"")
    return kind


ODD = ["loop", "link-out", "dangling", "fifo", "directory", "huge", "junk", "empty"]


@pytest.mark.parametrize("kind", ODD)
def test_an_odd_file_makes_only_its_agent_unknown(
    certs: Path, keys: list[RSA.RsaKey], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    enroll(certs, "edge-1", keys[0])
    bad = make_odd_file(certs, kind, keys)
    registry = refreshed_without_blocking(lambda: AgentRegistry(certs, refresh_s=3600))
    detail = accepts_only_the_good_agent(registry, keys[0], bad)
    assert f"agents/{bad}.pem" in detail
    expected = {
        "loop": "symbolic link", "link-out": "symbolic link", "dangling": "symbolic link",
        "fifo": "FIFO", "directory": "directory", "huge": "larger than 65536 bytes",
        "junk": "unreadable", "empty": "unreadable",
    }[kind]  # fmt: skip
    assert expected in detail
    registry.refresh()
    registry.refresh()
    assert caplog.text.count(f"agents/{bad}.pem") == 1  # once per version of the file


def test_a_misplaced_private_key_is_refused_as_a_secret(
    certs: Path, keys: list[RSA.RsaKey], caplog: pytest.LogCaptureFixture
) -> None:
    enroll(certs, "edge-1", keys[0])
    for number, pem in enumerate(private_pems(keys[1])):
        (certs / "agents" / f"leak-{number}.pem").write_bytes(pem)
    registry = AgentRegistry(certs)
    for number in range(4):
        detail = accepts_only_the_good_agent(registry, keys[0], f"leak-{number}")
        assert detail == (
            f"misplaced secret: agents/leak-{number}.pem holds a private key; "
            "move it away and keep only the public key"
        )
        assert registry.agents()[f"leak-{number}"].key is None
    assert caplog.text.count("misplaced secret") == 4


def test_a_rewritten_file_is_read_and_logged_again(
    certs: Path, keys: list[RSA.RsaKey], caplog: pytest.LogCaptureFixture
) -> None:
    enroll(certs, "edge-1", keys[0])
    path = certs / "agents" / "edge-2.pem"
    path.write_bytes(b"junk")
    registry = AgentRegistry(certs, refresh_s=3600)
    path.write_bytes(b"other junk")
    registry.refresh()
    assert caplog.text.count("agents/edge-2.pem") == 2
    path.unlink()
    path.symlink_to(certs.parent / "nowhere")  # same name, now a link
    registry.refresh()
    assert "symbolic link" in accepts_only_the_good_agent(registry, keys[0], "edge-2")
    path.unlink()
    enroll(certs, "edge-2", keys[1])
    registry.refresh()
    assert registry.lookup("edge-2") == keys[1].public_key()


def test_odd_file_names_are_logged_on_one_line(
    certs: Path, keys: list[RSA.RsaKey], caplog: pytest.LogCaptureFixture
) -> None:
    enroll(certs, "edge-1", keys[0])
    name = os.fsdecode(b"bad\nname\xff.pem")
    (certs / "agents" / name).write_bytes(b"junk")
    registry = AgentRegistry(certs)
    assert registry.lookup("edge-1")
    (record,) = [r for r in caplog.records if "bad" in r.getMessage()]
    assert "\n" not in record.getMessage() and "\\n" in record.getMessage()


@pytest.mark.parametrize("kind", ["plain file", "symlink loop", "dangling symlink"])
def test_an_agents_directory_that_is_not_one_means_no_agents(
    certs: Path, keys: list[RSA.RsaKey], kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    enroll(certs, "edge-1", keys[0], where="revoked")
    agents = certs / "agents"
    agents.rmdir()
    if kind == "plain file":
        agents.write_text("not a directory")
    elif kind == "symlink loop":
        agents.symlink_to("agents")
    else:
        agents.symlink_to(certs / "nowhere")
    registry = AgentRegistry(certs, refresh_s=3600)
    assert registry.agents() == {}
    assert rejection(registry, "edge-2").reason == wire.UNKNOWN_AGENT
    assert rejection(registry, "edge-1").reason == wire.REVOKED_AGENT
    registry.refresh()
    if kind != "dangling symlink":  # that one is just absent
        assert caplog.text.count("cannot be listed") == 1


@pytest.mark.parametrize("kind", ["fifo", "loop", "directory", "junk"])
def test_a_revocation_counts_by_name_even_if_the_file_is_unusable(
    certs: Path, keys: list[RSA.RsaKey], kind: str
) -> None:
    enroll(certs, "edge-1", keys[0])
    enroll(certs, kind, keys[1])
    revoked = certs / "revoked" / f"{kind}.pem"
    {
        "fifo": lambda: os.mkfifo(revoked),
        "loop": lambda: revoked.symlink_to(revoked.name),
        "directory": revoked.mkdir,
        "junk": lambda: revoked.write_bytes(b"\xff\xfe"),
    }[kind]()
    registry = refreshed_without_blocking(lambda: AgentRegistry(certs))
    assert rejection(registry, kind).reason == wire.REVOKED_AGENT
    assert registry.lookup("edge-1") == keys[0].public_key()


def test_an_unlistable_revoked_directory_keeps_the_known_revocations(
    certs: Path, keys: list[RSA.RsaKey]
) -> None:
    enroll(certs, "edge-1", keys[0])
    enroll(certs, "edge-2", keys[1])
    os.replace(certs / "agents" / "edge-2.pem", certs / "revoked" / "edge-2.pem")
    enroll(certs, "edge-2", keys[1])  # re-appears in agents/, still revoked
    registry = AgentRegistry(certs, refresh_s=3600)
    assert rejection(registry, "edge-2").reason == wire.REVOKED_AGENT
    revoked = certs / "revoked"
    revoked.rename(certs / "revoked.moved")
    revoked.write_text("now a plain file")
    registry.refresh()
    assert rejection(registry, "edge-2").reason == wire.REVOKED_AGENT
    assert registry.lookup("edge-1") == keys[0].public_key()


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Run the body without root's right to read any file (a no-op when not root)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)  # nobody; the saved uid stays 0, so this is undone below
    try:
        yield
    finally:
        os.seteuid(0)


def test_an_unreadable_file_makes_only_its_agent_unknown(keys: list[RSA.RsaKey]) -> None:
    root = Path(tempfile.mkdtemp(prefix="sparklem-registry-"))
    try:
        root.chmod(0o755)  # traversable by the unprivileged user
        certs = root / "certificates"
        (certs / "agents").mkdir(parents=True, mode=0o755)
        enroll(certs, "edge-1", keys[0]).chmod(0o644)
        locked = enroll(certs, "locked", keys[1])
        locked.chmod(0)
        with unprivileged():
            registry = AgentRegistry(certs, refresh_s=3600)
        detail = accepts_only_the_good_agent(registry, keys[0], "locked")
        assert "agents/locked.pem cannot be read: Permission denied" in detail
    finally:
        shutil.rmtree(root)


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=2048))
def test_random_bytes_as_a_key_file_never_raise(
    tmp_path: Path, keys: list[RSA.RsaKey], data: bytes
) -> None:
    path = tmp_path / "certificates" / "agents" / "random.pem"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    registry = AgentRegistry(tmp_path / "certificates")
    assert rejection(registry, "random").reason == wire.UNKNOWN_AGENT


# --- server keys and the agent list read files the same way -------------------------------


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory", "huge"])
def test_an_odd_server_key_file_is_refused_in_one_line(
    certs: Path, keys: list[RSA.RsaKey], kind: str
) -> None:
    path = certs / "server_private.pem"
    if kind == "symlink":
        outside = certs.parent / "elsewhere.pem"
        write_server_key(certs.parent, "elsewhere.pem", keys[0])
        path.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.write_bytes(b"#" * (MAX_KEY_FILE_BYTES + 1))
    done: dict[str, Any] = {}

    def load() -> None:
        try:
            load_server_keys(certs)
        except NoServerKey as exc:
            done["error"] = str(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    wait_for(lambda: not worker.is_alive(), timeout=20, message="server key loading blocked")
    assert "server_private.pem" in done["error"] and "\n" not in done["error"]


def test_list_agents_survives_odd_files(certs: Path, keys: list[RSA.RsaKey]) -> None:
    enroll(certs, "edge-1", keys[0])
    for kind in ODD:
        make_odd_file(certs, kind, keys)
    (certs / "agents" / "leak.pem").write_bytes(keys[1].export_key(pkcs=8))
    entries = {e.agent_id: e for e in enrollment.list_agents(certs)}
    assert entries["edge-1"].fingerprint == wire.key_id(keys[0])
    assert all(entries[kind].fingerprint == "" and entries[kind].problem for kind in ODD)
    assert entries["leak"].problem.startswith("misplaced secret")
    text = enrollment.format_agents(list(entries.values()))
    assert re.search(r"leak\s+enrolled\s+\(private key: move it away\)", text)
    assert re.search(r"fifo\s+enrolled\s+\(unreadable key\)", text)


def test_list_agents_with_agents_as_a_plain_file_is_one_line(certs: Path) -> None:
    (certs / "agents").rmdir()
    (certs / "agents").write_text("oops")
    with pytest.raises(enrollment.EnrollmentError, match=r"cannot list .*agents: Not a directory"):
        enrollment.list_agents(certs)
