"""Enrollment and bundles: sparklem_core.admin.enrollment and the gen_config.py command line."""

from __future__ import annotations

import builtins
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from Crypto.PublicKey import RSA
from harness import ROOT as PROJECT_ROOT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import wait_for

from sparklem_core import wire
from sparklem_core.admin import cli as admin_cli
from sparklem_core.admin import enrollment
from sparklem_core.admin.enrollment import EnrollmentError
from sparklem_core.fleet.registry import create_server_key
from sparklem_core.wire import bundle as bundle_file
from sparklem_core.wire.bundle import BundleError

GEN_CONFIG = PROJECT_ROOT / "gen_config.py"
PASSPHRASE = "correct horse battery staple"
PLUGINS = {"temperature": {"topic": "sparklem.temperature", "interval": 30}}


@pytest.fixture(scope="module")
def server_pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path, _ = create_server_key(tmp_path_factory.mktemp("server"), bits=2048)
    return path.read_bytes()


@pytest.fixture
def certs(tmp_path: Path, server_pem: bytes, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A certificates directory with a server key, named by SPARKLEM_CERTIFICATES_DIR."""
    certificates = tmp_path / "certificates"
    (certificates / "agents").mkdir(parents=True)
    (certificates / "revoked").mkdir()
    (certificates / "server_private.pem").write_bytes(server_pem)
    monkeypatch.setenv("SPARKLEM_CERTIFICATES_DIR", str(certificates))
    monkeypatch.delenv("SPARKLEM_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.chdir(tmp_path)
    return certificates


@pytest.fixture(scope="module")
def agent_key(server_pem: bytes) -> RSA.RsaKey:
    return RSA.import_key(server_pem)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory, server_pem: bytes) -> bytes:
    """One bundle's bytes, made once for the tests that only damage copies of it."""
    certificates = tmp_path_factory.mktemp("sample") / "certificates"
    certificates.mkdir()
    (certificates / "server_private.pem").write_bytes(server_pem)
    return make(certificates).bundle_path.read_bytes()


def make(certs: Path, agent_id: str = "edge-1", **kwargs) -> enrollment.Enrollment:
    kwargs.setdefault("passphrase", PASSPHRASE)
    kwargs.setdefault("bootstrap", "kafka.example:9092")
    kwargs.setdefault("plugins", PLUGINS)
    kwargs.setdefault("out_dir", certs.parent / "out" / agent_id)
    return enrollment.create_agent(certs, agent_id, bits=2048, **kwargs)


# --- bundles --------------------------------------------------------------------------


def test_bundle_round_trip(certs: Path) -> None:
    made = make(certs, kafka={"compression.type": "lz4"})
    bundle = bundle_file.load_bundle(made.bundle_path, PASSPHRASE)
    enrolled = RSA.import_key(made.key_path.read_bytes())
    server = RSA.import_key((certs / "server_private.pem").read_bytes())

    assert made.key_path == certs / "agents" / "edge-1.pem"
    assert bundle.agent_key.public_key() == enrolled
    assert bundle.agent_key.has_private()
    assert bundle.server_key == server.public_key()
    assert bundle.document == made.document
    assert bundle.kid == wire.key_id(server) == made.kid
    assert bundle.plugins == PLUGINS
    assert bundle.kafka["bootstrap.servers"] == "kafka.example:9092"
    assert bundle.kafka["compression.type"] == "lz4"
    assert bundle.kafka["acks"] == "all" and bundle.kafka["enable.idempotence"] is True
    assert stat_mode(made.bundle_path) == 0o600


def test_server_id_is_recorded_and_survives_a_key_rotation(certs: Path, tmp_path: Path) -> None:
    first = make(certs)
    server_id = (certs / "server_id").read_text().strip()
    assert first.document["server_id"] == server_id and re.fullmatch(r"[0-9a-f]{16}", server_id)
    rotated, _ = create_server_key(tmp_path / "rotated", bits=2048)
    os.replace(rotated, certs / "server_private_2.pem")
    os.utime(certs / "server_private_2.pem", (2**31, 2**31))  # the newest: bundles name it
    second = make(certs, force=True)
    assert second.kid != first.kid and second.document["server_id"] == server_id
    other = tmp_path / "other"
    (other / "agents").mkdir(parents=True)
    shutil.copy(certs / "server_private.pem", other)
    assert make(other).document["server_id"] != server_id  # another server


def test_bundle_is_sealed_whole_with_nothing_in_clear(certs: Path) -> None:
    made = make(certs)
    data = made.bundle_path.read_bytes()
    assert data.startswith(bundle_file.BUNDLE_MAGIC)
    for clear in (b"agent.yaml", b"BEGIN", b"kafka.example", b"edge-1", b"\xfd7zXZ"):
        assert clear not in data
    archive = bundle_file.unseal(data, PASSPHRASE)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:xz") as tar:
        assert tar.getnames() == ["agent.yaml", "server_public.pem", "agent_private.pem"]
        assert tar.getmember("agent_private.pem").mode == 0o600
        doc = yaml.safe_load(tar.extractfile("agent.yaml").read())  # type: ignore[union-attr]
    assert set(doc) >= {"agent_id", "kafka", "plugins", "kid", "agent_key_fingerprint"}
    opened = bundle_file.load_bundle(made.bundle_path, PASSPHRASE)
    again = enrollment.build_bundle(made.document, opened.server_key, opened.agent_key, PASSPHRASE)
    assert again[16:20] == data[16:20]  # same format and cost...
    assert again[20:48] != data[20:48]  # ...fresh salt and nonce every time


def test_generated_passphrase_opens_the_bundle(certs: Path) -> None:
    made = make(certs, passphrase=None)
    assert made.passphrase_generated and len(made.passphrase) >= 32
    assert bundle_file.load_bundle(made.bundle_path, made.passphrase).agent_id == "edge-1"


def test_wrong_passphrase_is_refused(certs: Path) -> None:
    made = make(certs)
    with pytest.raises(BundleError) as caught:
        bundle_file.load_bundle(made.bundle_path, "not the passphrase")
    assert str(caught.value) == bundle_file.UNOPENABLE


HEADER = bundle_file.SEAL_HEADER.size


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (0, "not a Sparkle-M bundle"),  # magic
        (15, "not a Sparkle-M bundle"),
        (16, "bundle format"),  # format version
        (17, bundle_file.UNOPENABLE),  # scrypt log2(n)
        (18, bundle_file.UNOPENABLE),  # r
        (19, bundle_file.UNOPENABLE),  # p
        (20, bundle_file.UNOPENABLE),  # salt
        (35, bundle_file.UNOPENABLE),
        (36, bundle_file.UNOPENABLE),  # nonce
        (47, bundle_file.UNOPENABLE),
        (HEADER, bundle_file.UNOPENABLE),  # ciphertext
        (0.5, bundle_file.UNOPENABLE),
        (-17, bundle_file.UNOPENABLE),  # its last byte
        (-16, bundle_file.UNOPENABLE),  # tag
        (-1, bundle_file.UNOPENABLE),
    ],
)
def test_any_changed_byte_is_refused(sample: bytes, where: float, message: str) -> None:
    data = bytearray(sample)
    position = int(len(data) * where) if isinstance(where, float) else where
    for flip in (0x01, 0x80, 0xFF):
        data[position] ^= flip
        with pytest.raises(BundleError) as caught:
            bundle_file.open_bundle(bytes(data), PASSPHRASE)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
        data[position] ^= flip
    assert bundle_file.open_bundle(bytes(data), PASSPHRASE).agent_id == "edge-1"


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.99])
def test_truncated_or_extended_bundle_is_refused(sample: bytes, keep: float) -> None:
    with pytest.raises(BundleError, match=bundle_file.UNOPENABLE):
        bundle_file.open_bundle(sample[: int(len(sample) * keep)], PASSPHRASE)
    with pytest.raises(BundleError, match=bundle_file.UNOPENABLE):
        bundle_file.open_bundle(sample + b"\0", PASSPHRASE)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the bundle file is empty"),
        (b"SPARKLEM", "truncated"),
        (bundle_file.BUNDLE_MAGIC + b"\x01" * 40, "truncated"),
        (b"PK\x03\x04 a zip, say", "not a Sparkle-M bundle"),
        (bundle_file.BUNDLE_MAGIC + b"\0" * bundle_file.MAX_BUNDLE_BYTES, "larger than"),
    ],
)
def test_empty_short_foreign_and_huge_files_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        bundle_file.open_bundle(data, PASSPHRASE)


def test_forged_header_cannot_ask_for_a_costly_key_derivation(sample: bytes) -> None:
    for log2_n, r, p in [(40, 8, 1), (14, 8, 1), (15, 255, 1), (15, 8, 255)]:
        forged = bytearray(sample)
        forged[17:20] = bytes([log2_n, r, p])
        with pytest.raises(BundleError, match=bundle_file.UNOPENABLE):
            bundle_file.open_bundle(bytes(forged), PASSPHRASE)


def test_huge_bundle_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "config.tar.xz"
    with open(path, "wb") as out:
        out.truncate(10 * bundle_file.MAX_BUNDLE_BYTES)
    with pytest.raises(BundleError, match="larger than"):
        bundle_file.load_bundle(path, PASSPHRASE)


def test_missing_bundle_file_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="nope.tar.xz cannot be read: No such file"):
        bundle_file.load_bundle(tmp_path / "nope.tar.xz", PASSPHRASE)


def test_bundle_path_to_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.tar.xz")  # nothing ever writes to it: opening would block
    refused: list[str] = []

    def load() -> None:
        try:
            bundle_file.load_bundle(tmp_path / "fifo.tar.xz", PASSPHRASE)
        except BundleError as exc:
            refused.append(str(exc))

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    wait_for(lambda: not worker.is_alive(), timeout=20, message="load_bundle blocked")
    assert refused and refused[0].endswith("fifo.tar.xz is a FIFO, not a regular file")


def test_bundle_path_may_be_a_link_to_the_bundle(sample: bytes, tmp_path: Path) -> None:
    (tmp_path / "real.tar.xz").write_bytes(sample)
    (tmp_path / "config.tar.xz").symlink_to(tmp_path / "real.tar.xz")
    assert bundle_file.load_bundle(tmp_path / "config.tar.xz", PASSPHRASE).agent_id == "edge-1"


def _members(sample: bytes) -> dict[str, bytes]:
    archive = bundle_file.unseal(sample, PASSPHRASE)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:xz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def _pack(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """A tar.xz archive as gen_config.py made them before the seal (and as anyone can)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _sealed(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    """An archive sealed with the real passphrase: what only gen_config.py can make."""
    return bundle_file.seal(_pack(*entries), PASSPHRASE)


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_bundle_from_before_the_seal_says_reissue(sample: bytes) -> None:
    old = _pack(*(_file(n, d) for n, d in _members(sample).items()))
    with pytest.raises(BundleError) as caught:
        bundle_file.open_bundle(old, PASSPHRASE)
    message = str(caught.value)
    assert message == bundle_file.OLD_FORMAT and "\n" not in message
    assert "re-issue" in message and "sparklem-enroll --agent-id ID --force" in message
    assert "gen_config.py" in message


def _attacks(members: dict[str, bytes]) -> dict[str, list[tuple[str, bytes]]]:
    """Archives an attacker would like the agent to open, one per kind of change."""
    doc = yaml.safe_load(members["agent.yaml"])
    doc["plugins"]["pu_workload"] = {"topic": "t", "interval": 1, "nvidia_smi": "/tmp/evil"}
    doc["kafka"]["bootstrap.servers"] = "attacker.example:9092"
    other = RSA.generate(2048)
    changed = {**members, "agent.yaml": yaml.safe_dump(doc).encode()}
    forged_server = {**members, "server_public.pem": other.public_key().export_key()}
    items = list(members.items())
    return {
        "modified agent.yaml": list(changed.items()),
        "replaced server key": list(forged_server.items()),
        "added member": [*items, ("notes.txt", b"x")],
        "removed member": items[:-1],
        "reordered members": items[::-1],
    }


ATTACKS = ["modified agent.yaml", "replaced server key", "added member", "removed member",
           "reordered members"]  # fmt: skip


@pytest.mark.parametrize("attack", ATTACKS)
def test_repacked_bundle_is_refused(sample: bytes, attack: str) -> None:
    """Without the passphrase an attacker can pack the archive in the old format, seal it
    under a passphrase of their own, or splice it under the real header: all refused."""
    archive = _pack(*(_file(n, d) for n, d in _attacks(_members(sample))[attack]))
    with pytest.raises(BundleError, match="re-issue"):
        bundle_file.open_bundle(archive, PASSPHRASE)
    with pytest.raises(BundleError, match=bundle_file.UNOPENABLE):
        bundle_file.open_bundle(bundle_file.seal(archive, "the attacker's own"), PASSPHRASE)
    own = bundle_file.seal(archive, "the attacker's own")
    spliced = sample[:HEADER] + own[HEADER:]
    with pytest.raises(BundleError, match=bundle_file.UNOPENABLE):
        bundle_file.open_bundle(spliced, PASSPHRASE)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (_file("../evil", b"x"), r"'\.\./evil' points outside the bundle"),
        (_file("/etc/evil", b"x"), r"'/etc/evil' has an absolute path"),
        (_special("link", tarfile.SYMTYPE, "/etc/passwd"), "is a symbolic link"),
        (_special("hard", tarfile.LNKTYPE, "agent.yaml"), "is a hard link"),
        (_special("dev", tarfile.CHRTYPE), "device or special file"),
        (_special("dir", tarfile.DIRTYPE), "is a directory"),
        (_file("notes.txt", b"x"), "unexpected bundle member 'notes.txt'"),
        (_file("agent.yaml", b"again"), "appears twice"),
    ],
)
def test_sealed_bundle_with_a_bad_member_is_refused(sample: bytes, extra, message: str) -> None:
    members = _members(sample)
    data = _sealed(*(_file(n, d) for n, d in members.items()), extra)
    with pytest.raises(BundleError, match=message):
        bundle_file.open_bundle(data, PASSPHRASE)


def test_symlink_in_place_of_a_member_is_refused(sample: bytes) -> None:
    members = _members(sample)
    data = _sealed(
        _special("agent.yaml", tarfile.SYMTYPE, "/etc/passwd"),
        *(_file(n, d) for n, d in members.items() if n != "agent.yaml"),
    )
    with pytest.raises(BundleError, match="'agent.yaml' is a symbolic link"):
        bundle_file.open_bundle(data, PASSPHRASE)


def test_oversized_member_and_missing_member_are_refused(sample: bytes) -> None:
    members = _members(sample)
    big = _sealed(*(_file(n, d) for n, d in members.items() if n != "agent.yaml"),
                  _file("agent.yaml", b"#" * (bundle_file.MAX_MEMBER_BYTES + 1)))  # fmt: skip
    with pytest.raises(BundleError, match="larger than"):
        bundle_file.open_bundle(big, PASSPHRASE)
    missing = _sealed(*(_file(n, d) for n, d in members.items() if n != "server_public.pem"))
    with pytest.raises(BundleError, match="lacks server_public.pem"):
        bundle_file.open_bundle(missing, PASSPHRASE)


def test_decompression_bomb_is_refused() -> None:
    bomb = lzma.compress(b"\0" * (bundle_file.MAX_TAR_BYTES + 1024), format=lzma.FORMAT_XZ)
    with pytest.raises(BundleError, match="unpacks to more than"):
        bundle_file.open_bundle(bundle_file.seal(bomb, PASSPHRASE), PASSPHRASE)


def test_swapped_server_key_and_encrypted_agent_key_are_refused(sample: bytes) -> None:
    members = _members(sample)
    other = RSA.generate(2048)
    swapped = {**members, "server_public.pem": other.public_key().export_key()}
    with pytest.raises(BundleError, match="does not match the kid"):
        bundle_file.open_bundle(_sealed(*(_file(n, d) for n, d in swapped.items())), PASSPHRASE)
    locked = other.export_key(pkcs=8, passphrase=PASSPHRASE, protection="scryptAndAES256-CBC")
    encrypted = {**members, "agent_private.pem": locked}
    with pytest.raises(BundleError, match="not a PKCS#8 private key"):
        bundle_file.open_bundle(_sealed(*(_file(n, d) for n, d in encrypted.items())), PASSPHRASE)


def test_agent_yaml_is_checked(sample: bytes) -> None:
    members = _members(sample)
    doc = yaml.safe_load(members["agent.yaml"])
    doc["plugins"]["temperature"]["interval"] = -1
    bad = {**members, "agent.yaml": yaml.safe_dump(doc).encode()}
    with pytest.raises(BundleError, match=r"plugins\.temperature\.interval"):
        bundle_file.open_bundle(_sealed(*(_file(n, d) for n, d in bad.items())), PASSPHRASE)


def test_agent_yaml_kafka_properties_are_checked_by_librdkafka(sample: bytes) -> None:
    members = _members(sample)
    doc = yaml.safe_load(members["agent.yaml"])
    doc["kafka"]["linger.msec"] = 5  # agent.yaml edited by hand, or from another version
    bad = {**members, "agent.yaml": yaml.safe_dump(doc).encode()}
    message = "agent.yaml: kafka.linger.msec: not a librdkafka property (did you mean linger.ms?)"
    with pytest.raises(BundleError, match=re.escape(message)):
        bundle_file.open_bundle(_sealed(*(_file(n, d) for n, d in bad.items())), PASSPHRASE)


_MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 10**6), st.integers(1, 64)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, Any]]) -> bytes:
    out = bytearray(data)
    for kind, at, arg in mutations:
        at %= len(out) + 1
        if kind == "flip" and at < len(out):
            out[at] ^= arg
        elif kind == "cut":
            del out[at : at + arg]
        elif kind == "insert":
            out[at:at] = arg
    return bytes(out)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=4))
def test_mutated_bundles_open_only_when_unchanged(sample: bytes, mutations) -> None:
    data = _mutate(sample, mutations)
    try:
        bundle = bundle_file.open_bundle(data, PASSPHRASE)
    except BundleError as exc:
        assert data != sample and str(exc) and "\n" not in str(exc)
    else:
        assert data == sample and bundle.agent_id == "edge-1"


_JUNK = st.binary(max_size=512)


@settings(max_examples=60, deadline=None)
@given(data=st.one_of(_JUNK, _JUNK.map(lambda b: bundle_file.BUNDLE_MAGIC + b)))
def test_random_bytes_are_refused_in_one_line(data: bytes) -> None:
    with pytest.raises(BundleError) as caught:
        bundle_file.open_bundle(data, PASSPHRASE)
    assert str(caught.value) and "\n" not in str(caught.value)


# --- enrollment rules -------------------------------------------------------------------


@pytest.mark.parametrize("agent_id", ["", "-lead", "has space", "a/b", "../x", "x" * 65, "é"])
def test_invalid_agent_id_is_refused(certs: Path, agent_id: str) -> None:
    with pytest.raises(EnrollmentError, match="invalid agent id"):
        make(certs, agent_id)
    assert list((certs / "agents").iterdir()) == []


def test_enrolled_agent_needs_force_to_rekey(certs: Path) -> None:
    first = make(certs)
    with pytest.raises(EnrollmentError, match="already enrolled; use --force"):
        make(certs)
    second = make(certs, force=True)
    assert second.fingerprint != first.fingerprint
    enrolled = RSA.import_key(second.key_path.read_bytes())
    assert bundle_file.fingerprint(enrolled) == second.fingerprint
    assert bundle_file.load_bundle(second.bundle_path, PASSPHRASE).agent_key.public_key() == (
        enrolled
    )


def test_revoked_agent_needs_force_and_force_lifts_the_revocation(certs: Path) -> None:
    make(certs)
    moved = enrollment.revoke(certs, "edge-1")
    assert moved == certs / "revoked" / "edge-1.pem" and moved.exists()
    assert not (certs / "agents" / "edge-1.pem").exists()
    with pytest.raises(EnrollmentError, match="was revoked; use --force"):
        make(certs)
    make(certs, force=True)
    assert (certs / "agents" / "edge-1.pem").exists()
    assert not (certs / "revoked" / "edge-1.pem").exists()


def test_revoke_unknown_or_twice_is_refused(certs: Path) -> None:
    with pytest.raises(EnrollmentError, match="not enrolled"):
        enrollment.revoke(certs, "ghost")
    make(certs)
    enrollment.revoke(certs, "edge-1")
    with pytest.raises(EnrollmentError, match="already revoked"):
        enrollment.revoke(certs, "edge-1")


def test_nothing_is_written_when_refused(certs: Path) -> None:
    out = certs.parent / "out" / "edge-1"
    with pytest.raises(EnrollmentError, match="bootstrap"):
        make(certs, bootstrap="no-port")
    with pytest.raises(EnrollmentError, match="is a secret"):
        make(certs, kafka={"sasl.password": "hunter2"})
    with pytest.raises(EnrollmentError, match="shorter than 8"):
        make(certs, passphrase="short")
    assert not out.exists() and list((certs / "agents").iterdir()) == []


def test_no_server_key_says_run_init(tmp_path: Path) -> None:
    with pytest.raises(EnrollmentError, match=r"python3 main\.py init"):
        make(tmp_path / "empty")


def test_list_agents(certs: Path) -> None:
    a, b = make(certs, "alpha"), make(certs, "beta")
    enrollment.revoke(certs, "beta")
    (certs / "agents" / "broken.pem").write_text("not a key")
    entries = enrollment.list_agents(certs)
    assert [(e.agent_id, e.status) for e in entries] == [
        ("alpha", "enrolled"),
        ("broken", "enrolled"),
        ("beta", "revoked"),
    ]
    assert entries[0].fingerprint == a.fingerprint and entries[2].fingerprint == b.fingerprint
    text = enrollment.format_agents(entries)
    assert text.splitlines()[0].split() == ["AGENT", "STATUS", "FINGERPRINT", "MODIFIED", "(UTC)"]
    assert re.search(rf"alpha\s+enrolled\s+{a.fingerprint}\s+\d{{4}}-\d\d-\d\d \d\d:\d\d", text)
    assert re.search(rf"beta\s+revoked\s+{b.fingerprint}", text)
    assert "(unreadable key)" in text


def test_passphrase_file(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text(f"{PASSPHRASE}\nsecond line ignored\n")
    assert bundle_file.read_passphrase_file(good) == PASSPHRASE
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(bundle_file.BundleError, match="shorter than 8"):
        bundle_file.read_passphrase_file(short)
    with pytest.raises(bundle_file.BundleError, match="cannot read passphrase file"):
        bundle_file.read_passphrase_file(tmp_path / "missing")


# --- gen_config.py ---------------------------------------------------------------------


def run_gen_config(*args: str, cwd: Path, env: dict[str, str] | None = None, stdin=None):
    return subprocess.run(
        [sys.executable, str(GEN_CONFIG), *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdin=stdin if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_help(tmp_path: Path) -> None:
    done = run_gen_config("--help", cwd=tmp_path)
    assert done.returncode == 0
    for option in ("--agent-id", "--bootstrap", "--plugins", "--interval", "--out",
                   "--passphrase-file", "--force", "--revoke", "--list", "--config"):  # fmt: skip
        assert option in done.stdout


def test_cli_without_server_key_says_run_init(tmp_path: Path) -> None:
    env = {"SPARKLEM_CERTIFICATES_DIR": str(tmp_path / "certificates")}
    done = run_gen_config("--agent-id", "edge-1", cwd=tmp_path, env=env)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "python3 main.py init" in done.stderr


@pytest.mark.parametrize(
    "argv, init",
    [
        ([str(GEN_CONFIG)], "python3 main.py init"),
        (["-c", "import sys; from sparklem_core.admin.cli import main; sys.exit(main())"],
         "sparklem init"),
    ],
)  # fmt: skip
def test_cli_on_a_database_without_the_schema_names_the_init_the_user_has(
    certs: Path, argv: list[str], init: str
) -> None:
    (certs.parent / "db.sqlite3").touch()  # a database, without the schema
    (certs.parent / "passphrase").write_text("correct horse battery staple\n")
    done = subprocess.run(
        [sys.executable, *argv, "--agent-id", "edge-1", "--key-bits", "2048",
         "--passphrase-file", "passphrase"],
        cwd=certs.parent, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"table: run {init})" in done.stdout


def test_cli_without_arguments_and_no_terminal_prints_usage(tmp_path: Path) -> None:
    done = run_gen_config(cwd=tmp_path)
    assert done.returncode == 2
    assert "usage: gen_config.py" in done.stderr


def test_cli_user_mistakes_are_one_line(certs: Path) -> None:
    env = {"SPARKLEM_CERTIFICATES_DIR": str(certs)}
    for args, expected in [
        (["--agent-id", "bad id"], "invalid agent id"),
        (["--agent-id", "ok", "--plugins", "nope"], "unknown plugin(s) nope"),
        (["--agent-id", "ok", "--bootstrap", "nohost"], "invalid bootstrap servers"),
        (["--revoke", "ghost"], "not enrolled"),
        (["--agent-id", "ok", "--passphrase-file", "missing"], "cannot read passphrase file"),
    ]:
        done = run_gen_config(*args, cwd=certs.parent, env=env)
        assert done.returncode == 1, (args, done.stderr)
        assert "Traceback" not in done.stderr
        assert expected in done.stderr and done.stderr.strip().count("\n") == 0, done.stderr


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("linger.msec=5", "kafka property linger.msec: not a librdkafka property (did you mean "
         "linger.ms?)"),
        ("linger.ms=abc", "kafka property linger.ms: librdkafka refuses this value (expects "),
        ("session.timeout.ms=6000", "kafka property session.timeout.ms: a consumer property"),
        ("acks=1", "kafka property: librdkafka refuses this combination: "),
        ("linger.ms", "--kafka-property 'linger.ms': expected KEY=VALUE"),
    ],
)  # fmt: skip
def test_cli_kafka_property_refused_by_librdkafka_exits_2(
    certs: Path, item: str, expected: str
) -> None:
    env = {"SPARKLEM_CERTIFICATES_DIR": str(certs)}
    done = run_gen_config("--agent-id", "ok", "--kafka-property", item, cwd=certs.parent, env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"gen_config.py: error: {expected}"), done.stderr
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert not (certs.parent / "out").exists() and list((certs / "agents").iterdir()) == []


@settings(max_examples=60, deadline=None)
@given(
    kafka=st.dictionaries(
        st.one_of(
            st.sampled_from(["linger.ms", "acks", "compression.type", "session.timeout.ms"]),
            st.text(max_size=12),
        ),
        st.one_of(st.text(max_size=12), st.integers(-(2**40), 2**40), st.booleans()),
        max_size=3,
    )
)
def test_any_kafka_properties_give_a_document_or_one_refusal(
    agent_key: RSA.RsaKey, kafka: dict[str, Any]
) -> None:
    try:
        document = enrollment.agent_document(
            "edge-1",
            bootstrap="k:9092",
            plugins=PLUGINS,
            server_public=agent_key,
            agent_key=agent_key,
            kafka=kafka,
        )
    except enrollment.BadKafkaProperty as exc:
        assert str(exc).startswith("kafka property") and "\n" not in str(exc)
    else:
        assert kafka.items() <= document["kafka"].items()
        bundle_file.validate(bundle_file.AgentDocument, document)  # the agent takes it too


def test_cli_enroll_list_revoke(certs: Path, tmp_path: Path) -> None:
    env = {"SPARKLEM_CERTIFICATES_DIR": str(certs)}
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    args = ["--agent-id", "edge-9", "--bootstrap", "k1:9092,k2:9093", "--plugins", "temperature",
            "--interval", "5", "--passphrase-file", "pass", "--key-bits", "2048"]  # fmt: skip
    done = run_gen_config(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert PASSPHRASE not in done.stdout and "passphrase:" not in done.stdout
    bundle = bundle_file.load_bundle(tmp_path / "out" / "edge-9" / "config.tar.xz", PASSPHRASE)
    assert bundle.kafka["bootstrap.servers"] == "k1:9092,k2:9093"
    assert bundle.plugins == {"temperature": {"topic": "sparklem.temperature", "interval": 5}}

    again = run_gen_config(*args, cwd=tmp_path, env=env)
    assert again.returncode == 1 and "already enrolled" in again.stderr

    listed = run_gen_config("--list", cwd=tmp_path, env=env)
    assert listed.returncode == 0
    assert re.search(r"edge-9\s+enrolled\s+[0-9a-f]{16}", listed.stdout)

    revoked = run_gen_config("--revoke", "edge-9", cwd=tmp_path, env=env)
    assert revoked.returncode == 0
    assert (certs / "revoked" / "edge-9.pem").exists()
    assert not (certs / "agents" / "edge-9.pem").exists()


def test_cli_generated_passphrase_printed_once_with_warning(certs: Path, tmp_path: Path) -> None:
    config = tmp_path / "processor.yaml"
    config.write_text(
        yaml.safe_dump({"certificates": str(certs), "kafka": {"bootstrap.servers": "cfg:9092"}})
    )
    done = run_gen_config(
        "--agent-id", "edge-7", "--config", str(config), "--out", "bundles", "--key-bits", "2048",
        cwd=tmp_path, env={"SPARKLEM_CERTIFICATES_DIR": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    (passphrase,) = re.findall(r"^passphrase:\s+(\S+)$", done.stdout, re.MULTILINE)
    assert "WARNING" in done.stderr and "store this passphrase" in done.stderr
    bundle = bundle_file.load_bundle(tmp_path / "bundles" / "config.tar.xz", passphrase)
    assert bundle.kafka["bootstrap.servers"] == "cfg:9092"  # the processor's, by default
    assert set(bundle.plugins) == {"temperature", "pu_workload"}


def test_cli_interactive(certs: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    answers = iter(["bad id", "edge-5", "", "temperature"])
    monkeypatch.setattr(builtins, "input", lambda _prompt: next(answers))
    monkeypatch.setattr(sys, "stdin", type("Tty", (), {"isatty": lambda self: True})())
    fast = lambda *a, **kw: enrollment.create_agent(*a, **{**kw, "bits": 2048})  # noqa: E731
    monkeypatch.setattr(admin_cli, "create_agent", fast)
    assert admin_cli.main([]) == 0
    out = capsys.readouterr()
    assert "invalid agent id" in out.err
    assert "enrolled:    edge-5" in out.out
    (passphrase,) = re.findall(r"^passphrase:\s+(\S+)$", out.out, re.MULTILINE)
    bundle = bundle_file.load_bundle(certs.parent / "out" / "edge-5" / "config.tar.xz", passphrase)
    assert bundle.kafka["bootstrap.servers"] == "localhost:9092"
    assert list(bundle.plugins) == ["temperature"]


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_cli_list_with_odd_files(certs: Path) -> None:
    env = {"SPARKLEM_CERTIFICATES_DIR": str(certs)}
    make(certs, "alpha")
    os.mkfifo(certs / "agents" / "fifo.pem")
    (certs / "agents" / "loop.pem").symlink_to("loop.pem")
    listed = run_gen_config("--list", cwd=certs.parent, env=env)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"alpha\s+enrolled\s+[0-9a-f]{16}", listed.stdout)
    assert re.search(r"fifo\s+enrolled\s+\(unreadable key\)", listed.stdout)
    shutil.rmtree(certs / "agents")
    (certs / "agents").write_text("not a directory")
    broken = run_gen_config("--list", cwd=certs.parent, env=env)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "cannot list" in broken.stderr and broken.stderr.strip().count("\n") == 0
