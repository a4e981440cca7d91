"""Agent enrollment: the logic behind ``gen_config.py`` (and the demo).

Enrolling an agent makes its RSA key pair, stores the public half in
``<certificates>/agents/<id>.pem`` and writes the bundle the device needs
(:mod:`sparklem_core.wire.bundle`). Revoking moves the public key to ``revoked/``.
Every user-facing problem is an :class:`EnrollmentError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import tarfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from Crypto.PublicKey import RSA

from sparklem_core import wire
from sparklem_core.commands import PROCESSOR, command
from sparklem_core.files import UnusableFile, read_regular_file, write_atomic
from sparklem_core.fleet.registry import (
    AGENTS_DIR,
    KEY_PARSE_ERRORS,
    MISPLACED_SECRET,
    REVOKED_DIR,
    SERVER_KEY_GLOB,
    NoServerKey,
    load_server_keys,
    one_line,
    read_agent_key,
)
from sparklem_core.fleet.state import (
    FleetError,
    agent_files,
    intervals_path,
)
from sparklem_core.settings.config import (
    Config,
    load_plugins,
)
from sparklem_core.settings.kafka import KafkaPropertyError, check_properties
from sparklem_core.settings.masking import mask_secrets
from sparklem_core.settings.validation import (
    MAX_INTERVAL_S,
    SchemaError,
    plugin_settings,
    validate,
)
from sparklem_core.wire.bundle import (
    AGENT_PRIVATE,
    AGENT_YAML,
    BUNDLE_NAME,
    BUNDLE_VERSION,
    DEFAULT_SPOOL_MAX_ROWS,
    MIN_PASSPHRASE_CHARS,
    SECRET_PROPERTY_RE,
    SERVER_PUBLIC,
    AgentDocument,
    fingerprint,
    seal,
)

AGENT_KEY_BITS = 3072
SERVER_ID_FILE = "server_id"
BOOTSTRAP_RE = re.compile(r"[A-Za-z0-9._\-\[\]:]+:[0-9]{1,5}")


class EnrollmentError(Exception):
    """A user-facing problem (bad id, not enrolled, bad bundle...): one clear line."""


def check_agent_id(agent_id: str) -> str:
    if not wire.AGENT_ID_RE.fullmatch(agent_id or ""):
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


class BadKafkaProperty(EnrollmentError):
    """A Kafka property for the agent that is refused: a usage error."""


def check_kafka_property(name: str, value: Any) -> None:
    if not re.fullmatch(r"[a-z][a-z0-9._-]*", name):
        raise BadKafkaProperty(f"kafka property {name!r} is not a librdkafka property name")
    if SECRET_PROPERTY_RE.search(name):
        raise BadKafkaProperty(f"kafka property {name!r} is a secret; agent.yaml holds no secrets")
    if not isinstance(value, str | int | float | bool):
        raise BadKafkaProperty(f"kafka property {name!r} must be a string, number or boolean")


def check_producer_properties(props: Mapping[str, Any]) -> None:
    """The agent's producer properties, as the librdkafka installed here sees them."""
    try:
        check_properties(props, "producer")
    except KafkaPropertyError as exc:
        raise BadKafkaProperty(exc.under("kafka property ")) from None


def new_passphrase() -> str:
    """A random passphrase: 32 URL-safe characters, 192 bits."""
    return secrets.token_urlsafe(24)


def agent_key_path(certificates: Path, agent_id: str) -> Path:
    return certificates / AGENTS_DIR / f"{agent_id}.pem"


def revoked_key_path(certificates: Path, agent_id: str) -> Path:
    return certificates / REVOKED_DIR / f"{agent_id}.pem"


def server_id(certificates: Path) -> str:
    """The server's identity, ``certificates/server_id`` (made on first use): unlike a kid
    it stays when server keys rotate. Agents keep their state per server by it."""
    path = certificates / SERVER_ID_FILE
    with contextlib.suppress(FileExistsError):  # made before, or by an enrollment beside us
        write_atomic(path, f"{secrets.token_hex(8)}\n".encode("ascii"), 0o644, replace=False)
    try:
        text = read_regular_file(path, 64).decode("ascii", "replace").strip()
    except UnusableFile as exc:
        raise EnrollmentError(f"{path} {exc}; remove it and enroll again") from None
    if not wire.KID_RE.fullmatch(text):
        raise EnrollmentError(f"{path} does not hold 16 hex characters; remove it, enroll again")
    return text


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
    try:
        write_atomic(path, pem, 0o644, replace=force)
    except FileExistsError as exc:
        raise EnrollmentError(str(exc)) from None
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


def record_intervals(certificates: Path, agent_id: str, intervals: Mapping[str, float]) -> Path:
    """Write the agent's collection interval per plugin, as its bundle sets them."""
    path = intervals_path(certificates, agent_id)
    write_atomic(path, json.dumps(dict(intervals), sort_keys=True).encode(), 0o644, replace=True)
    return path


def publish_enrollment(
    config: Config,
    agent_id: str,
    state: str,
    key_path: Path,
    retry: str = "run the same command again once the database is reachable",
) -> str:
    """Record the agent's enrollment or revocation in the database for every processor host;
    says where it was recorded. :class:`EnrollmentError`, saying ``retry``, when the
    database cannot be written."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from sparklem_core.db import enrollments
    from sparklem_core.db.store import Store

    url = make_url(config.database_url)
    files_only = f"{state} in {certificates_text(config)} only"
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        return f"{files_only} (no database yet)"
    store = Store(config.database_url, config.group_id)
    try:
        pem = read_regular_file(key_path)
        published = enrollments.publish(store.engine, store.metadata, agent_id, state, pem)
    except UnusableFile as exc:
        raise EnrollmentError(f"{key_path} {exc}") from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        raise EnrollmentError(
            f"{files_only}: the database refused it ({mask_secrets(reason)}); other processor "
            f"hosts do not know yet: {retry}"
        ) from None
    finally:
        store.dispose()
    if not published:
        return (
            f"{files_only} (the database has no {enrollments.TABLE} table: "
            f"run {command(PROCESSOR)} init)"
        )
    return f"{state} in {certificates_text(config)} and in the database (every processor host)"


def certificates_text(config: Config) -> str:
    return one_line(f"{config.certificates}/")


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
    try:
        files = agent_files(certificates)
    except FleetError as exc:
        raise EnrollmentError(str(exc)) from None
    for status, path in files:
        try:
            modified = datetime.fromtimestamp(path.lstat().st_mtime, UTC)
        except OSError:  # removed since the listing
            continue
        agent = read_agent_key(path, one_line(f"{path.parent.name}/{path.name}"))
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
            f"unknown plugin(s) {', '.join(map(one_line, unknown))} "
            f"(available: {', '.join(loaded) or 'none'})"
        )
    if not names:
        raise EnrollmentError("no plugin selected (and none is available)")
    unselected = sorted(set(settings or {}) - set(names))
    if unselected:
        raise EnrollmentError(
            f"settings for plugin(s) not selected: {', '.join(map(one_line, unselected))}"
        )
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
    server: str | None = None,
) -> dict[str, Any]:
    """The content of ``agent.yaml``; ``plugins`` maps a name to its topic, interval, settings,
    ``agent`` adds agent settings (``spool_max_rows``, ``stall_timeout_s``), ``server`` the
    server id (:func:`server_id`)."""
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
    check_producer_properties(props)
    if not plugins:
        raise EnrollmentError("no plugin selected")
    document = {
        "version": BUNDLE_VERSION,
        "agent_id": check_agent_id(agent_id),
        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kid": wire.key_id(server_public),
        **({"server_id": server} if server else {}),
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
    enrollment then fails is removed again.
    """
    check_enrollable(certificates, agent_id, force)
    if bits < wire.MIN_RSA_BITS:
        raise EnrollmentError(f"agent keys need at least {wire.MIN_RSA_BITS} bits")
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
        server=server_id(certificates),
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
    # What the processor cannot learn from messages: when this agent counts as silent.
    record_intervals(certificates, agent_id, {n: s["interval"] for n, s in plugins.items()})
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
