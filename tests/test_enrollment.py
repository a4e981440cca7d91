"""Enrolment and bundles: sparklem_core.enrollment and the gen_config.py command line."""

from __future__ import annotations

import builtins
import importlib.util
import io
import lzma
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml
from Crypto.PublicKey import RSA

from sparklem_core import enrollment, protocol
from sparklem_core.config import PROJECT_ROOT
from sparklem_core.enrollment import BundleError, EnrollmentError
from sparklem_core.registry import create_server_key

GEN_CONFIG = PROJECT_ROOT / "gen_config.py"
PASSPHRASE = "correct horse battery staple"
PLUGINS = {"temperature": {"topic": "sparklem.temperature", "interval": 30}}

_spec = importlib.util.spec_from_file_location("gen_config", GEN_CONFIG)
assert _spec is not None and _spec.loader is not None
gen_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen_config)


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
    bundle = enrollment.load_bundle(made.bundle_path, PASSPHRASE)
    enrolled = RSA.import_key(made.key_path.read_bytes())
    server = RSA.import_key((certs / "server_private.pem").read_bytes())

    assert made.key_path == certs / "agents" / "edge-1.pem"
    assert bundle.agent_key.public_key() == enrolled
    assert bundle.agent_key.has_private()
    assert bundle.server_key == server.public_key()
    assert bundle.document == made.document
    assert bundle.kid == protocol.key_id(server) == made.kid
    assert bundle.plugins == PLUGINS
    assert bundle.kafka["bootstrap.servers"] == "kafka.example:9092"
    assert bundle.kafka["compression.type"] == "lz4"
    assert bundle.kafka["acks"] == "all" and bundle.kafka["enable.idempotence"] is True
    assert stat_mode(made.bundle_path) == 0o600


def test_bundle_is_a_real_xz_tar_without_secrets_in_clear(certs: Path) -> None:
    made = make(certs)
    with tarfile.open(made.bundle_path, "r:xz") as tar:
        assert tar.getnames() == ["agent.yaml", "server_public.pem", "agent_private.pem"]
        doc = yaml.safe_load(tar.extractfile("agent.yaml").read())  # type: ignore[union-attr]
        private = tar.extractfile("agent_private.pem").read()  # type: ignore[union-attr]
    assert set(doc) >= {"agent_id", "kafka", "plugins", "kid", "agent_key_fingerprint"}
    assert private.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    if shutil.which("tar"):
        listing = subprocess.run(
            ["tar", "-tJf", str(made.bundle_path)], capture_output=True, text=True, check=True
        )
        assert listing.stdout.split() == ["agent.yaml", "server_public.pem", "agent_private.pem"]


def test_generated_passphrase_opens_the_bundle(certs: Path) -> None:
    made = make(certs, passphrase=None)
    assert made.passphrase_generated and len(made.passphrase) >= 32
    assert enrollment.load_bundle(made.bundle_path, made.passphrase).agent_id == "edge-1"


def test_wrong_passphrase_is_refused(certs: Path) -> None:
    made = make(certs)
    with pytest.raises(BundleError, match="wrong passphrase"):
        enrollment.load_bundle(made.bundle_path, "not the passphrase")


@pytest.mark.parametrize("where", [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.999])
def test_tampered_bundle_is_refused(sample: bytes, where: float) -> None:
    data = bytearray(sample)
    data[int(len(data) * where)] ^= 0x5A
    with pytest.raises(BundleError):
        enrollment.open_bundle(bytes(data), PASSPHRASE)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.99])
def test_truncated_bundle_is_refused(sample: bytes, keep: float) -> None:
    data = sample
    with pytest.raises(BundleError, match="truncated|corrupt"):
        enrollment.open_bundle(data[: int(len(data) * keep)], PASSPHRASE)


def test_not_an_xz_file_is_refused() -> None:
    with pytest.raises(BundleError, match="not an xz file"):
        enrollment.open_bundle(b"PK\x03\x04 a zip, say", PASSPHRASE)


def test_missing_bundle_file_gives_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="cannot read bundle"):
        enrollment.load_bundle(tmp_path / "nope.tar.xz", PASSPHRASE)


def _members(sample: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(sample), mode="r:xz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]


def _pack(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


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
def test_bundle_with_a_bad_member_is_refused(sample: bytes, extra, message: str) -> None:
    members = _members(sample)
    data = _pack(*(_file(n, d) for n, d in members.items()), extra)
    with pytest.raises(BundleError, match=message):
        enrollment.open_bundle(data, PASSPHRASE)


def test_symlink_in_place_of_a_member_is_refused(sample: bytes) -> None:
    members = _members(sample)
    data = _pack(
        _special("agent.yaml", tarfile.SYMTYPE, "/etc/passwd"),
        *(_file(n, d) for n, d in members.items() if n != "agent.yaml"),
    )
    with pytest.raises(BundleError, match="'agent.yaml' is a symbolic link"):
        enrollment.open_bundle(data, PASSPHRASE)


def test_oversized_member_and_missing_member_are_refused(sample: bytes) -> None:
    members = _members(sample)
    big = _pack(*(_file(n, d) for n, d in members.items() if n != "agent.yaml"),
                _file("agent.yaml", b"#" * (enrollment.MAX_MEMBER_BYTES + 1)))  # fmt: skip
    with pytest.raises(BundleError, match="larger than"):
        enrollment.open_bundle(big, PASSPHRASE)
    missing = _pack(*(_file(n, d) for n, d in members.items() if n != "server_public.pem"))
    with pytest.raises(BundleError, match="lacks server_public.pem"):
        enrollment.open_bundle(missing, PASSPHRASE)


def test_decompression_bomb_is_refused() -> None:
    bomb = lzma.compress(b"\0" * (enrollment.MAX_TAR_BYTES + 1024), format=lzma.FORMAT_XZ)
    with pytest.raises(BundleError, match="unpacks to more than"):
        enrollment.open_bundle(bomb, PASSPHRASE)


def test_swapped_server_key_and_plain_agent_key_are_refused(sample: bytes) -> None:
    members = _members(sample)
    other = RSA.generate(2048)
    swapped = {**members, "server_public.pem": other.public_key().export_key()}
    with pytest.raises(BundleError, match="does not match the kid"):
        enrollment.open_bundle(_pack(*(_file(n, d) for n, d in swapped.items())), PASSPHRASE)
    plain = {**members, "agent_private.pem": other.export_key(pkcs=8)}
    with pytest.raises(BundleError, match="not an encrypted PKCS#8 key"):
        enrollment.open_bundle(_pack(*(_file(n, d) for n, d in plain.items())), PASSPHRASE)


def test_agent_yaml_is_checked(sample: bytes) -> None:
    members = _members(sample)
    doc = yaml.safe_load(members["agent.yaml"])
    doc["plugins"]["temperature"]["interval"] = -1
    bad = {**members, "agent.yaml": yaml.safe_dump(doc).encode()}
    with pytest.raises(BundleError, match=r"plugins\.temperature\.interval"):
        enrollment.open_bundle(_pack(*(_file(n, d) for n, d in bad.items())), PASSPHRASE)


# --- enrolment rules -------------------------------------------------------------------


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
    assert enrollment.fingerprint(enrolled) == second.fingerprint
    assert enrollment.load_bundle(second.bundle_path, PASSPHRASE).agent_key.public_key() == (
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
    assert enrollment.read_passphrase_file(good) == PASSPHRASE
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(EnrollmentError, match="shorter than 8"):
        enrollment.read_passphrase_file(short)
    with pytest.raises(EnrollmentError, match="cannot read passphrase file"):
        enrollment.read_passphrase_file(tmp_path / "missing")


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


def test_cli_enroll_list_revoke(certs: Path, tmp_path: Path) -> None:
    env = {"SPARKLEM_CERTIFICATES_DIR": str(certs)}
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    args = ["--agent-id", "edge-9", "--bootstrap", "k1:9092,k2:9093", "--plugins", "temperature",
            "--interval", "5", "--passphrase-file", "pass", "--key-bits", "2048"]  # fmt: skip
    done = run_gen_config(*args, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert PASSPHRASE not in done.stdout and "passphrase:" not in done.stdout
    bundle = enrollment.load_bundle(tmp_path / "out" / "edge-9" / "config.tar.xz", PASSPHRASE)
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
    bundle = enrollment.load_bundle(tmp_path / "bundles" / "config.tar.xz", passphrase)
    assert bundle.kafka["bootstrap.servers"] == "cfg:9092"  # the processor's, by default
    assert set(bundle.plugins) == {"temperature", "pu_workload"}


def test_cli_interactive(certs: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    answers = iter(["bad id", "edge-5", "", "temperature"])
    monkeypatch.setattr(builtins, "input", lambda _prompt: next(answers))
    monkeypatch.setattr(sys, "stdin", type("Tty", (), {"isatty": lambda self: True})())
    fast = lambda *a, **kw: enrollment.create_agent(*a, **{**kw, "bits": 2048})  # noqa: E731
    monkeypatch.setattr(gen_config, "create_agent", fast)
    assert gen_config.main([]) == 0
    out = capsys.readouterr()
    assert "invalid agent id" in out.err
    assert "enrolled:    edge-5" in out.out
    (passphrase,) = re.findall(r"^passphrase:\s+(\S+)$", out.out, re.MULTILINE)
    bundle = enrollment.load_bundle(certs.parent / "out" / "edge-5" / "config.tar.xz", passphrase)
    assert bundle.kafka["bootstrap.servers"] == "localhost:9092"
    assert list(bundle.plugins) == ["temperature"]


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777
