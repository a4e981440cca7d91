"""Agent enrolment and bundles: the logic behind ``gen_config.py`` (and the demo).

Enrolling an agent makes its RSA key pair, stores the public half in
``<certificates>/agents/<id>.pem`` and packs what the device needs into a tar.xz archive,
sealed whole under a passphrase into one ``config.tar.xz`` (format: :func:`seal`, and
"Bundle format" in docs/deployment.md):

``agent.yaml``
    agent id, Kafka producer properties, agent settings (``spool_max_rows``,
    ``stall_timeout_s``), plugins (interval, topic, settings), the server ``kid`` and
    the agent key's fingerprint. No secrets.
``server_public.pem``
    the server public key the agent encrypts for.
``agent_private.pem``
    the agent's private key (PKCS#8; the seal around the archive protects it).

:func:`open_bundle` authenticates and decrypts the whole file before it parses a byte of
the archive, in memory only, refusing anything unexpected.
Every user-facing problem is an :class:`EnrollmentError` with a one-line message.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import secrets
import struct
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from Crypto.PublicKey import RSA
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, Field, StringConstraints, model_validator

from sparklem_core import protocol
from sparklem_core.config import SECRET_NAME_RE, Config, KafkaName, KafkaValue, load_plugins
from sparklem_core.registry import (
    AGENTS_DIR,
    KEY_PARSE_ERRORS,
    MISPLACED_SECRET,
    REVOKED_DIR,
    SERVER_KEY_GLOB,
    NoServerKey,
    UnusableFile,
    load_server_keys,
    one_line,
    read_agent_key,
    read_regular_file,
)
from sparklem_core.schema import (
    MAX_INTERVAL_S,
    STRICT,
    TOPIC_PATTERN,
    SchemaError,
    describe_yaml_error,
    plugin_settings,
    validate,
)
from sparklem_core.spool import DEFAULT_STALL_TIMEOUT_S

BUNDLE_NAME = "config.tar.xz"
BUNDLE_VERSION = 1
AGENT_YAML = "agent.yaml"
SERVER_PUBLIC = "server_public.pem"
AGENT_PRIVATE = "agent_private.pem"
MEMBERS = (AGENT_YAML, SERVER_PUBLIC, AGENT_PRIVATE)
MAX_BUNDLE_BYTES = 1024 * 1024  # the sealed file
MAX_MEMBER_BYTES = 1024 * 1024
MAX_TAR_BYTES = 4 * 1024 * 1024  # decompressed: a bigger one is a bomb, not a bundle
XZ_MAGIC = b"\xfd7zXZ\x00"  # also how a bundle from before the seal starts
# The seal: header = magic, format, scrypt log2(n), r, p, salt, nonce; then AES-256-GCM of
# the tar.xz with the header as associated data (the 16-byte tag at the end).
BUNDLE_MAGIC = b"SPARKLEM-BUNDLE\x00"
BUNDLE_FORMAT = 1
SEAL_HEADER = struct.Struct(">16sBBBB16s12s")
SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P = 15, 8, 1  # 32 MiB and about 0.1 s per open
# A header may only ask for these: a forged one cannot make scrypt take more than 128 MiB.
ALLOWED_SCRYPT_LOG2_N = range(15, 18)
GCM_TAG_BYTES = 16
UNOPENABLE = "cannot open bundle: wrong passphrase or the file was modified"
OLD_FORMAT = (
    "this bundle was made by an older gen_config.py; re-issue it: "
    "python3 gen_config.py --agent-id ID --force, and copy the new bundle to the device"
)
AGENT_KEY_BITS = 3072
MIN_PASSPHRASE_CHARS = 8
DEFAULT_SPOOL_MAX_ROWS = 100_000
BOOTSTRAP_RE = re.compile(r"[A-Za-z0-9._\-\[\]:]+:[0-9]{1,5}")
# Kafka properties that would carry secrets: they never go into agent.yaml.
SECRET_PROPERTY_RE = SECRET_NAME_RE


class EnrollmentError(Exception):
    """A user-facing problem (bad id, not enrolled, bad bundle...): one clear line."""


class BundleError(EnrollmentError):
    """A bundle that cannot be opened: corrupt, unexpected content or wrong passphrase."""


# --- checks --------------------------------------------------------------------------


def check_agent_id(agent_id: str) -> str:
    if not protocol.AGENT_ID_RE.fullmatch(agent_id or ""):
        raise EnrollmentError(
            f"invalid agent id {agent_id!r}: use 1 to 64 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return agent_id


def check_bootstrap(bootstrap: str) -> str:
    servers = [s.strip() for s in (bootstrap or "").split(",") if s.strip()]
    bad = [s for s in servers if not BOOTSTRAP_RE.fullmatch(s)]
    if not servers or bad:
        raise EnrollmentError(
            f"invalid bootstrap servers {bootstrap!r}: expected HOST:PORT[,HOST:PORT...]"
        )
    return ",".join(servers)


def check_kafka_property(name: str, value: Any) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9._-]*", name):
        raise EnrollmentError(f"kafka property {name!r} is not a librdkafka property name")
    if SECRET_PROPERTY_RE.search(name):
        raise EnrollmentError(f"kafka property {name!r} is a secret; agent.yaml holds no secrets")
    if not isinstance(value, str | int | float | bool):
        raise EnrollmentError(f"kafka property {name!r} must be a string, number or boolean")


def read_passphrase_file(path: str | os.PathLike[str]) -> str:
    """The first line of ``path``; at least MIN_PASSPHRASE_CHARS characters."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnrollmentError(f"cannot read passphrase file {path}: {_reason(exc)}") from None
    passphrase = text.splitlines()[0] if text else ""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise EnrollmentError(
            f"passphrase in {path} is shorter than {MIN_PASSPHRASE_CHARS} characters"
        )
    return passphrase


def new_passphrase() -> str:
    """A random passphrase: 32 URL-safe characters, 192 bits."""
    return secrets.token_urlsafe(24)


def fingerprint(key: RSA.RsaKey) -> str:
    """First 16 hex characters of SHA-256 over the DER SubjectPublicKeyInfo (like ``kid``)."""
    return protocol.key_id(key)


# --- the certificates directory -----------------------------------------------------


def agent_key_path(certificates: Path, agent_id: str) -> Path:
    return certificates / AGENTS_DIR / f"{agent_id}.pem"


def revoked_key_path(certificates: Path, agent_id: str) -> Path:
    return certificates / REVOKED_DIR / f"{agent_id}.pem"


def server_key(certificates: Path) -> RSA.RsaKey:
    """The server key new bundles name: the newest file when several are live."""
    try:
        keys = load_server_keys(certificates)
    except NoServerKey as exc:
        raise EnrollmentError(str(exc)) from None
    if len(keys) == 1:
        return next(iter(keys.values()))
    newest = max(certificates.glob(SERVER_KEY_GLOB), key=lambda p: p.lstat().st_mtime)
    try:
        return RSA.import_key(read_regular_file(newest))  # load_server_keys has just checked it
    except KEY_PARSE_ERRORS as exc:
        raise EnrollmentError(f"{newest} changed while it was read: {exc}") from None


def check_enrollable(certificates: Path, agent_id: str, force: bool) -> None:
    """Refuse an agent already enrolled (or revoked) unless ``force`` (re-key)."""
    check_agent_id(agent_id)
    if force:
        return
    if agent_key_path(certificates, agent_id).exists():
        raise EnrollmentError(
            f"agent {agent_id!r} is already enrolled; use --force to issue it a new key "
            "(its current bundle stops working)"
        )
    if revoked_key_path(certificates, agent_id).exists():
        raise EnrollmentError(
            f"agent {agent_id!r} was revoked; use --force to enroll it again with a new key"
        )


def enroll(certificates: Path, agent_id: str, public_key: RSA.RsaKey, force: bool) -> Path:
    """Store the agent's public key; with ``force`` replace it and lift a revocation."""
    check_enrollable(certificates, agent_id, force)
    path = agent_key_path(certificates, agent_id)
    pem = public_key.public_key().export_key(format="PEM")
    write_atomic(path, pem, 0o644, replace=force)
    if force:
        revoked_key_path(certificates, agent_id).unlink(missing_ok=True)
    return path


def revoke(certificates: Path, agent_id: str) -> Path:
    """Move ``agents/<id>.pem`` to ``revoked/<id>.pem``; returns the new path."""
    check_agent_id(agent_id)
    source = agent_key_path(certificates, agent_id)
    target = revoked_key_path(certificates, agent_id)
    if not source.exists():
        if target.exists():
            raise EnrollmentError(f"agent {agent_id!r} is already revoked ({target})")
        raise EnrollmentError(f"agent {agent_id!r} is not enrolled (no {source})")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    return target


@dataclass(frozen=True)
class AgentEntry:
    agent_id: str
    status: str  # enrolled | revoked
    fingerprint: str  # "" when the file is not a usable key
    modified: datetime
    path: Path
    problem: str = ""  # why the file is not a usable key


def list_agents(certificates: Path) -> list[AgentEntry]:
    """Enrolled then revoked agents, each sorted by id; files are read like the registry
    reads them (regular files only, bounded)."""
    entries = []
    for status, directory in (("enrolled", AGENTS_DIR), ("revoked", REVOKED_DIR)):
        try:
            names = sorted(n for n in os.listdir(certificates / directory) if n.endswith(".pem"))
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise EnrollmentError(
                f"cannot list {certificates / directory}: {_reason(exc)}"
            ) from None
        for name in names:
            path = certificates / directory / name
            try:
                modified = datetime.fromtimestamp(path.lstat().st_mtime, UTC)
            except OSError:  # removed since the listing
                continue
            agent = read_agent_key(path, one_line(f"{directory}/{name}"))
            entries.append(
                AgentEntry(agent.agent_id, status, agent.fingerprint, modified, path, agent.problem)
            )
    return entries


def format_agents(entries: list[AgentEntry]) -> str:
    rows = [("AGENT", "STATUS", "FINGERPRINT", "MODIFIED (UTC)")]
    for e in entries:
        when = e.modified.strftime("%Y-%m-%d %H:%M:%S")
        misplaced = e.problem.startswith(MISPLACED_SECRET)
        usable = e.fingerprint or (
            "(private key: move it away)" if misplaced else "(unreadable key)"
        )
        rows.append((one_line(e.agent_id), e.status, usable, when))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
        for row in rows
    )


# --- building a bundle ----------------------------------------------------------------


def plugin_specs(
    config: Config,
    names: list[str] | None = None,
    interval: float | None = None,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """``agent.yaml``'s plugins: each with its topic (the processor's) and interval.

    ``names`` defaults to every plugin the processor loads; ``interval`` (seconds) to the
    plugin's declared default; ``settings`` adds agent settings per plugin
    (``thermal_root``, say), checked against the plugin's agent-side declaration.
    """
    loaded = load_plugins(config).loaded()
    names = list(loaded) if names is None else names
    unknown = [n for n in names if n not in loaded]
    if unknown:
        raise EnrollmentError(
            f"unknown plugin(s) {', '.join(unknown)} (available: {', '.join(loaded) or 'none'})"
        )
    if not names:
        raise EnrollmentError("no plugin selected (and none is available)")
    unselected = sorted(set(settings or {}) - set(names))
    if unselected:
        raise EnrollmentError(f"settings for plugin(s) not selected: {', '.join(unselected)}")
    if interval is not None and not 0 < interval <= MAX_INTERVAL_S:
        raise EnrollmentError(
            f"interval must be between 0 and {MAX_INTERVAL_S} seconds, got {interval:g}"
        )
    specs = {}
    for name in dict.fromkeys(names):
        manifest = loaded[name].manifest
        assert manifest is not None  # loaded plugins have one
        every = interval if interval is not None else manifest.agent_defaults["interval"]
        spec = {
            "topic": config.plugin_topic(name, manifest.topic),
            "interval": int(every) if float(every).is_integer() else float(every),
            **dict((settings or {}).get(name, {})),
        }
        try:  # only to refuse a bad value now: the agent fills in the defaults itself
            plugin_settings(manifest, spec, "agent")
        except SchemaError as exc:
            raise EnrollmentError(str(exc)) from None
        specs[name] = spec
    return specs


def agent_document(
    agent_id: str,
    *,
    bootstrap: str,
    plugins: Mapping[str, Mapping[str, Any]],
    server_public: RSA.RsaKey,
    agent_key: RSA.RsaKey,
    kafka: Mapping[str, Any] | None = None,
    agent: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``agent.yaml``; ``plugins`` maps a name to its topic, interval, settings,
    ``agent`` adds agent settings (``spool_max_rows``, ``stall_timeout_s``)."""
    props: dict[str, Any] = {
        "bootstrap.servers": check_bootstrap(bootstrap),
        "client.id": f"sparklem-agent-{agent_id}",
        "acks": "all",
        "enable.idempotence": True,
        "linger.ms": 50,
    }
    for name, value in (kafka or {}).items():
        check_kafka_property(name, value)
        props[name] = value
    if not plugins:
        raise EnrollmentError("no plugin selected")
    document = {
        "version": BUNDLE_VERSION,
        "agent_id": check_agent_id(agent_id),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kid": protocol.key_id(server_public),
        "agent_key_fingerprint": fingerprint(agent_key),
        "kafka": props,
        "agent": {"spool_max_rows": DEFAULT_SPOOL_MAX_ROWS, **dict(agent or {})},
        "plugins": {name: dict(spec) for name, spec in plugins.items()},
    }
    try:
        validate(AgentDocument, document)
    except SchemaError as exc:
        raise EnrollmentError(f"{AGENT_YAML}: {exc}") from None
    return document


def build_bundle(
    document: Mapping[str, Any],
    server_public: RSA.RsaKey,
    agent_key: RSA.RsaKey,
    passphrase: str,
) -> bytes:
    """The bytes of ``config.tar.xz``: the members' tar.xz, sealed under ``passphrase``."""
    files = {
        AGENT_YAML: (yaml.safe_dump(dict(document), sort_keys=False).encode("utf-8"), 0o644),
        SERVER_PUBLIC: (server_public.public_key().export_key(format="PEM"), 0o644),
        AGENT_PRIVATE: (agent_key.export_key(format="PEM", pkcs=8), 0o600),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return seal(buffer.getvalue(), passphrase)


def seal(archive: bytes, passphrase: str) -> bytes:
    """Encrypt and authenticate ``archive`` whole: header, then AES-256-GCM ciphertext and tag.

    The key is scrypt(passphrase, salt); the header is the associated data, so no byte of
    the file can change without the tag failing.
    """
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    header = SEAL_HEADER.pack(
        BUNDLE_MAGIC, BUNDLE_FORMAT, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, salt, nonce
    )
    key = _seal_key(passphrase, salt, SCRYPT_LOG2_N)
    return header + AESGCM(key).encrypt(nonce, archive, header)


def unseal(data: bytes, passphrase: str) -> bytes:
    """The archive inside a sealed bundle, once its tag is verified; :class:`BundleError` else."""
    if not data:
        raise BundleError("the bundle file is empty")
    if data.startswith(XZ_MAGIC):
        raise BundleError(OLD_FORMAT)
    if not data.startswith(BUNDLE_MAGIC[: len(data)]):
        raise BundleError("not a Sparkle-M bundle (gen_config.py makes them)")
    if len(data) < SEAL_HEADER.size + GCM_TAG_BYTES:
        raise BundleError("cannot open bundle: the file is truncated")
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleError(f"bundle is larger than {MAX_BUNDLE_BYTES} bytes")
    _magic, version, log2_n, r, p, salt, nonce = SEAL_HEADER.unpack_from(data)
    if version != BUNDLE_FORMAT:
        raise BundleError(
            f"bundle format {version} is not supported by this agent (it reads format "
            f"{BUNDLE_FORMAT}); re-issue the bundle or update the agent"
        )
    if log2_n not in ALLOWED_SCRYPT_LOG2_N or (r, p) != (SCRYPT_R, SCRYPT_P):
        raise BundleError(UNOPENABLE)  # never made by gen_config.py: a forged header
    header = data[: SEAL_HEADER.size]
    try:
        return AESGCM(_seal_key(passphrase, salt, log2_n)).decrypt(
            nonce, data[SEAL_HEADER.size :], header
        )
    except InvalidTag:
        raise BundleError(UNOPENABLE) from None


def _seal_key(passphrase: str, salt: bytes, log2_n: int) -> bytes:
    # surrogateescape: a passphrase from the environment may hold any bytes
    secret = passphrase.encode("utf-8", "surrogateescape")
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=SCRYPT_R, p=SCRYPT_P).derive(secret)


@dataclass(frozen=True)
class Enrollment:
    agent_id: str
    key_path: Path
    bundle_path: Path
    passphrase: str
    passphrase_generated: bool
    fingerprint: str
    kid: str
    document: dict[str, Any]


def create_agent(
    certificates: Path,
    agent_id: str,
    *,
    bootstrap: str,
    plugins: Mapping[str, Mapping[str, Any]],
    out_dir: Path,
    passphrase: str | None = None,
    force: bool = False,
    bits: int = AGENT_KEY_BITS,
    kafka: Mapping[str, Any] | None = None,
    agent: Mapping[str, Any] | None = None,
) -> Enrollment:
    """Check, make the key pair, write ``out_dir/config.tar.xz``, then enroll the key.

    Everything that can be refused is checked before anything is written; a bundle whose
    enrolment then fails is removed again.
    """
    check_enrollable(certificates, agent_id, force)
    if bits < protocol.MIN_RSA_BITS:
        raise EnrollmentError(f"agent keys need at least {protocol.MIN_RSA_BITS} bits")
    if passphrase is not None and len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise EnrollmentError(f"passphrase is shorter than {MIN_PASSPHRASE_CHARS} characters")
    server = server_key(certificates)
    agent_key = RSA.generate(bits)
    document = agent_document(
        agent_id,
        bootstrap=bootstrap,
        plugins=plugins,
        server_public=server,
        agent_key=agent_key,
        kafka=kafka,
        agent=agent,
    )
    generated = passphrase is None
    passphrase = new_passphrase() if passphrase is None else passphrase
    data = build_bundle(document, server, agent_key, passphrase)
    bundle_path = out_dir / BUNDLE_NAME
    write_atomic(bundle_path, data, 0o600)
    try:
        key_path = enroll(certificates, agent_id, agent_key, force)
    except BaseException:
        bundle_path.unlink(missing_ok=True)
        raise
    return Enrollment(
        agent_id,
        key_path,
        bundle_path,
        passphrase,
        generated,
        document["agent_key_fingerprint"],
        document["kid"],
        document,
    )


# --- opening a bundle -------------------------------------------------------------------


def _pattern(regex: re.Pattern[str]) -> str:
    return f"^(?:{regex.pattern})$"


KeyId = Annotated[str, StringConstraints(pattern=_pattern(protocol.KID_RE))]


class AgentSettings(BaseModel):
    """``agent:`` in agent.yaml."""

    model_config = STRICT

    spool_max_rows: int = Field(
        DEFAULT_SPOOL_MAX_ROWS,
        gt=0,
        le=100_000_000,
        description="envelopes kept on disk while the broker is unreachable (oldest dropped)",
    )
    stall_timeout_s: float = Field(
        DEFAULT_STALL_TIMEOUT_S,
        gt=0,
        le=86400,
        description="seconds without a delivery report before the producer is recreated",
    )


class PluginSpec(BaseModel):
    """``plugins.NAME`` in agent.yaml: topic and interval here, the rest per the plugin."""

    model_config = {**STRICT, "extra": "allow"}

    topic: Annotated[str, StringConstraints(pattern=TOPIC_PATTERN)]
    interval: float = Field(gt=0, le=MAX_INTERVAL_S, description="seconds between collections")


class AgentDocument(BaseModel):
    """agent.yaml: everything a bundle tells its agent, no secrets."""

    model_config = STRICT

    version: Literal[BUNDLE_VERSION] = Field(description="the bundle format")
    agent_id: Annotated[str, StringConstraints(pattern=_pattern(protocol.AGENT_ID_RE))]
    created: str = Field("", description="when gen_config.py wrote it, UTC")
    kid: KeyId = Field(description="the server key the agent encrypts for")
    agent_key_fingerprint: KeyId = Field(description="the agent key's, like a kid")
    kafka: dict[KafkaName, KafkaValue] = Field(description="librdkafka producer properties")
    agent: AgentSettings = Field(default_factory=AgentSettings)
    plugins: dict[
        Annotated[str, StringConstraints(pattern=_pattern(protocol.PLUGIN_NAME_RE))], PluginSpec
    ] = Field(min_length=1, description="the plugins the agent runs")

    @model_validator(mode="after")
    def _kafka(self) -> AgentDocument:
        if not isinstance(self.kafka.get("bootstrap.servers"), str):
            raise ValueError("kafka.bootstrap.servers is missing")
        secret = next((name for name in self.kafka if SECRET_PROPERTY_RE.search(name)), None)
        if secret:
            raise ValueError(f"kafka.{secret}: a secret; agent.yaml holds no secrets")
        return self


@dataclass(frozen=True)
class Bundle:
    agent_id: str
    document: dict[str, Any]  # agent.yaml, checked by parse_agent_yaml
    agent_key: RSA.RsaKey
    server_key: RSA.RsaKey

    @cached_property
    def _checked(self) -> AgentDocument:
        return validate(AgentDocument, self.document)

    @property
    def kid(self) -> str:
        return self._checked.kid

    @property
    def kafka(self) -> dict[str, Any]:
        return dict(self._checked.kafka)

    @property
    def plugins(self) -> dict[str, dict[str, Any]]:
        """Each plugin's topic, interval and settings (the agent checks them per plugin)."""
        return {name: spec.model_dump() for name, spec in self._checked.plugins.items()}

    @property
    def agent_settings(self) -> AgentSettings:
        return self._checked.agent


def load_bundle(path: Path, passphrase: str) -> Bundle:
    """Read and open the bundle file at ``path`` (a regular file, or a link to one)."""
    try:
        data = read_regular_file(path, MAX_BUNDLE_BYTES, follow_links=True)
    except UnusableFile as exc:
        raise BundleError(f"bundle {path} {exc}") from None
    return open_bundle(data, passphrase)


def open_bundle(data: bytes, passphrase: str) -> Bundle:
    """Authenticate and decrypt a bundle held in memory, then check what it holds."""
    members = read_members(unseal(data, passphrase))
    document = parse_agent_yaml(members[AGENT_YAML])
    try:
        server = RSA.import_key(members[SERVER_PUBLIC])
    except (ValueError, IndexError, TypeError):
        raise BundleError(f"{SERVER_PUBLIC} in the bundle is not an RSA public key") from None
    if protocol.key_id(server) != document["kid"]:
        raise BundleError(f"{SERVER_PUBLIC} does not match the kid in {AGENT_YAML}")
    if not members[AGENT_PRIVATE].startswith(b"-----BEGIN PRIVATE KEY-----"):
        raise BundleError(f"{AGENT_PRIVATE} in the bundle is not a PKCS#8 private key")
    try:
        agent_key = RSA.import_key(members[AGENT_PRIVATE])
    except (ValueError, IndexError, TypeError):
        raise BundleError(f"{AGENT_PRIVATE} in the bundle is not an RSA private key") from None
    if not agent_key.has_private() or fingerprint(agent_key) != document["agent_key_fingerprint"]:
        raise BundleError(f"the agent key does not match the fingerprint in {AGENT_YAML}")
    for name, key in ((SERVER_PUBLIC, server), (AGENT_PRIVATE, agent_key)):
        if key.size_in_bits() < protocol.MIN_RSA_BITS:
            raise BundleError(f"{name}: key has fewer than {protocol.MIN_RSA_BITS} bits")
    return Bundle(document["agent_id"], document, agent_key, server.public_key())


def read_members(data: bytes) -> dict[str, bytes]:
    """The three files of an unsealed archive, read into memory; anything unexpected is
    refused (the seal already vouches for the bytes: this is the second line of defence)."""
    if not data.startswith(XZ_MAGIC):
        raise BundleError("bundle archive is not an xz file")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    try:
        raw = decompressor.decompress(data, max_length=MAX_TAR_BYTES)
    except lzma.LZMAError as exc:
        raise BundleError(f"bundle is corrupt ({exc})") from None
    if not decompressor.eof:
        if decompressor.needs_input:
            raise BundleError("bundle is truncated")
        raise BundleError(f"bundle unpacks to more than {MAX_TAR_BYTES} bytes")
    if decompressor.unused_data.strip(b"\0"):
        raise BundleError("bundle has trailing data after the xz stream")
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for member in tar:
                _check_member(member, members)
                extracted = tar.extractfile(member)
                assert extracted is not None  # a regular file, checked above
                members[member.name] = extracted.read()
    except tarfile.TarError as exc:
        raise BundleError(f"bundle is not a valid tar archive ({exc})") from None
    missing = [name for name in MEMBERS if name not in members]
    if missing:
        raise BundleError(f"bundle lacks {', '.join(missing)}")
    return members


def _check_member(member: tarfile.TarInfo, seen: Mapping[str, bytes]) -> None:
    name = member.name
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith("\\") or re.match(r"[A-Za-z]:", name):
        raise BundleError(f"bundle member {name!r} has an absolute path")
    if ".." in path.parts or ".." in name.split("\\"):
        raise BundleError(f"bundle member {name!r} points outside the bundle ('..')")
    if not member.isreg():
        kind = (
            "a symbolic link"
            if member.issym()
            else "a hard link"
            if member.islnk()
            else "a directory"
            if member.isdir()
            else "a device or special file"
        )
        raise BundleError(f"bundle member {name!r} is {kind}, not a regular file")
    if name not in MEMBERS:
        raise BundleError(f"unexpected bundle member {name!r} (expected {', '.join(MEMBERS)})")
    if name in seen:
        raise BundleError(f"bundle member {name!r} appears twice")
    if member.size > MAX_MEMBER_BYTES:
        raise BundleError(f"bundle member {name!r} is larger than {MAX_MEMBER_BYTES} bytes")


def parse_agent_yaml(raw: bytes) -> dict[str, Any]:
    """``agent.yaml``, checked against :class:`AgentDocument`: a bundle that passes this
    can configure an agent."""
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{AGENT_YAML} in the bundle is not UTF-8 text") from None
    except yaml.YAMLError as exc:
        raise BundleError(f"{AGENT_YAML} in the bundle {describe_yaml_error(exc)}") from None
    except RecursionError:
        raise BundleError(f"{AGENT_YAML} in the bundle is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{AGENT_YAML} in the bundle is not a mapping")
    try:
        validate(AgentDocument, doc)
    except SchemaError as exc:
        raise BundleError(f"{AGENT_YAML}: {exc}") from None
    return doc


# --- files ----------------------------------------------------------------------------------


def write_atomic(path: Path, data: bytes, mode: int, *, replace: bool = True) -> None:
    """Write through a temporary file and fsync; ``replace=False`` refuses an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent: two enrolments cannot race
            except FileExistsError:
                raise EnrollmentError(f"{path} already exists") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
