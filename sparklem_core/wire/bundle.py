"""The bundle file ``config.tar.xz``: what ``gen_config.py`` writes and an agent opens.

A tar.xz archive of three members, sealed whole under a passphrase (format:
:func:`seal`, and "Bundle format" in docs/deployment.md):

``agent.yaml``
    agent id, Kafka producer properties, agent settings (``spool_max_rows``,
    ``stall_timeout_s``), plugins (interval, topic, settings), the server ``kid``, the
    ``server_id`` and the agent key's fingerprint. No secrets.
``server_public.pem``
    the server public key the agent encrypts for.
``agent_private.pem``
    the agent's private key (PKCS#8; the seal around the archive protects it).

:func:`open_bundle` authenticates and decrypts the whole file before it parses a byte of
the archive, in memory only, refusing anything unexpected. Every problem is a
:class:`BundleError` with a one-line message.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import secrets
import struct
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from Crypto.PublicKey import RSA
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from pydantic import BaseModel, Field, StringConstraints, model_validator

from sparklem_core import wire
from sparklem_core.files import UnusableFile, read_regular_file
from sparklem_core.settings.kafka import (
    KafkaName,
    KafkaPropertyError,
    KafkaValue,
    check_properties,
)
from sparklem_core.settings.masking import SECRET_NAME_RE
from sparklem_core.settings.validation import (
    MAX_INTERVAL_S,
    STRICT,
    TOPIC_PATTERN,
    SchemaError,
    YamlRefused,
    load_yaml,
    validate,
)

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
    "sparklem-enroll --agent-id ID --force (python3 gen_config.py in a checkout), and copy "
    "the new bundle to the device"
)


MIN_PASSPHRASE_CHARS = 8
DEFAULT_STALL_TIMEOUT_S = 60.0  # in-flight entries and no delivery: replace the producer
DEFAULT_SPOOL_MAX_ROWS = 100_000
# Kafka properties that would carry secrets: they never go into agent.yaml.
SECRET_PROPERTY_RE = SECRET_NAME_RE


class BundleError(Exception):
    """A bundle that cannot be opened: corrupt, unexpected content or wrong passphrase."""


def read_passphrase_file(path: str | os.PathLike[str]) -> str:
    """The first line of ``path``; at least MIN_PASSPHRASE_CHARS characters."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"cannot read passphrase file {path}: {_reason(exc)}") from None
    passphrase = text.splitlines()[0] if text else ""
    if len(passphrase) < MIN_PASSPHRASE_CHARS:
        raise BundleError(f"passphrase in {path} is shorter than {MIN_PASSPHRASE_CHARS} characters")
    return passphrase


def fingerprint(key: RSA.RsaKey) -> str:
    """First 16 hex characters of SHA-256 over the DER SubjectPublicKeyInfo (like ``kid``)."""
    return wire.key_id(key)


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
        raise BundleError("not a Sparkle-M bundle (sparklem-enroll or gen_config.py makes them)")
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


def _pattern(regex: re.Pattern[str]) -> str:
    return f"^(?:{regex.pattern})$"


KeyId = Annotated[str, StringConstraints(pattern=_pattern(wire.KID_RE))]


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
    agent_id: Annotated[str, StringConstraints(pattern=_pattern(wire.AGENT_ID_RE))]
    created: str = Field("", description="when gen_config.py wrote it, UTC")
    kid: KeyId = Field(description="the server key the agent encrypts for")
    server_id: KeyId | None = Field(
        None,
        description="the server's identity (its certificates directory's), kept across key "
        "rotation: the agent keeps its state per server by it",
    )
    agent_key_fingerprint: KeyId = Field(description="the agent key's, like a kid")
    kafka: dict[KafkaName, KafkaValue] = Field(description="librdkafka producer properties")
    agent: AgentSettings = Field(default_factory=AgentSettings)
    plugins: dict[
        Annotated[str, StringConstraints(pattern=_pattern(wire.PLUGIN_NAME_RE))], PluginSpec
    ] = Field(min_length=1, description="the plugins the agent runs")

    @model_validator(mode="after")
    def _kafka(self) -> AgentDocument:
        if not isinstance(self.kafka.get("bootstrap.servers"), str):
            raise ValueError("kafka.bootstrap.servers is missing")
        secret = next((name for name in self.kafka if SECRET_PROPERTY_RE.search(name)), None)
        if secret:
            raise ValueError(f"kafka.{secret}: a secret; agent.yaml holds no secrets")
        try:
            check_properties(self.kafka, "producer")
        except KafkaPropertyError as exc:
            raise ValueError(exc.under("kafka.")) from None
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
    def server_id(self) -> str | None:
        """None in bundles made before server ids were recorded."""
        return self._checked.server_id

    @property
    def agent_key_fingerprint(self) -> str:
        return self._checked.agent_key_fingerprint

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
    if wire.key_id(server) != document["kid"]:
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
        if key.size_in_bits() < wire.MIN_RSA_BITS:
            raise BundleError(f"{name}: key has fewer than {wire.MIN_RSA_BITS} bits")
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
        doc = load_yaml(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BundleError(f"{AGENT_YAML} in the bundle is not UTF-8 text") from None
    except YamlRefused as exc:
        raise BundleError(f"{AGENT_YAML} in the bundle {exc}") from None
    if not isinstance(doc, dict):
        raise BundleError(f"{AGENT_YAML} in the bundle is not a mapping")
    try:
        validate(AgentDocument, doc)
    except SchemaError as exc:
        raise BundleError(f"{AGENT_YAML}: {exc}") from None
    return doc


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
