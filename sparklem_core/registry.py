"""Who may talk to the processor: the server keys and the enrolled agents.

Layout of the certificates directory::

    server_private*.pem      server key pairs (mode 0600); each one's kid selects it
    agents/<agent_id>.pem    public keys of enrolled agents
    revoked/<agent_id>.pem   revoked agents (moved here by ``gen_config.py --revoke``)

The directory is re-read every few seconds, so enrolment and revocation take effect
without a restart. Only files whose mtime or size changed are parsed again.

Keys are handed out as pycryptodome ``RSA.RsaKey`` objects; each is also converted to
its ``cryptography`` (OpenSSL) form when it is loaded (``protocol.openssl_public_key`` /
``openssl_private_key``), so a key OpenSSL would refuse is refused here, and the
per-message ``protocol.verify`` / ``unwrap_key`` find the conversion already cached for
as long as the registry (or the caller) keeps the key object.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from Crypto.PublicKey import RSA

from sparklem_core import protocol

log = logging.getLogger(__name__)

SERVER_KEY_GLOB = "server_private*.pem"
DEFAULT_SERVER_KEY = "server_private.pem"


class NoServerKey(RuntimeError):
    pass


@dataclass(frozen=True)
class AgentKey:
    agent_id: str
    key: RSA.RsaKey | None  # None: the file is unusable, see ``problem``
    problem: str = ""

    @property
    def fingerprint(self) -> str:
        return protocol.key_id(self.key) if self.key else ""


def create_server_key(certificates: Path, bits: int = 3072) -> tuple[Path, bool]:
    """Make ``server_private.pem`` (mode 0600) unless one exists; returns (path, created)."""
    certificates.mkdir(parents=True, exist_ok=True)
    path = certificates / DEFAULT_SERVER_KEY
    if path.exists():
        return path, False
    pem = RSA.generate(bits).export_key(format="PEM", pkcs=8)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return path, True


def load_server_keys(certificates: Path) -> dict[str, RSA.RsaKey]:
    """Every live server key by kid; :class:`NoServerKey` when there is none."""
    keys = {}
    for path in sorted(certificates.glob(SERVER_KEY_GLOB)):
        try:
            key = RSA.import_key(path.read_bytes())
        except (ValueError, IndexError, TypeError) as exc:
            raise NoServerKey(f"{path} is not an RSA private key: {exc}") from None
        if not key.has_private():
            raise NoServerKey(f"{path} holds no private key")
        if key.size_in_bits() < protocol.MIN_RSA_BITS:
            raise NoServerKey(
                f"{path} is a {key.size_in_bits()}-bit key; at least {protocol.MIN_RSA_BITS} "
                "bits are required (move it away and run: python3 main.py init)"
            )
        try:
            protocol.openssl_private_key(key)  # once per key object, cached for unwrap_key
        except (ValueError, TypeError) as exc:
            raise NoServerKey(f"{path} is refused by OpenSSL: {exc}") from None
        keys[protocol.key_id(key)] = key
    if not keys:
        raise NoServerKey(
            f"no server key in {certificates}/ (looked for {SERVER_KEY_GLOB}); "
            "create one with: python3 main.py init"
        )
    return keys


class AgentRegistry:
    """Public keys of enrolled and revoked agents, refreshed from disk."""

    def __init__(self, certificates: Path, refresh_s: float = 5.0) -> None:
        self.certificates = certificates
        self.refresh_s = refresh_s
        self._enrolled: dict[str, AgentKey] = {}
        self._revoked: set[str] = set()
        self._seen: dict[Path, tuple[int, int]] = {}
        self._next_refresh = 0.0
        self.refresh()

    def lookup(self, agent_id: str) -> RSA.RsaKey:
        """The agent's public key, or :class:`protocol.Rejected` saying why not."""
        if time.monotonic() >= self._next_refresh:
            self.refresh()
        if agent_id in self._revoked:
            raise protocol.Rejected(protocol.REVOKED_AGENT, f"agent {agent_id!r} was revoked")
        entry = self._enrolled.get(agent_id)
        if entry is None:
            raise protocol.Rejected(protocol.UNKNOWN_AGENT, f"agent {agent_id!r} is not enrolled")
        if entry.key is None:
            raise protocol.Rejected(protocol.UNKNOWN_AGENT, entry.problem)
        return entry.key

    def agents(self) -> dict[str, AgentKey]:
        return dict(self._enrolled)

    def refresh(self) -> None:
        enrolled = {}
        for path in _pem_files(self.certificates / "agents"):
            agent_id = path.stem
            old = self._enrolled.get(agent_id)
            stamp = _stamp(path)
            if old is not None and self._seen.get(path) == stamp:
                enrolled[agent_id] = old
                continue
            enrolled[agent_id] = _read_agent_key(path)
            if stamp is not None:
                self._seen[path] = stamp
            if enrolled[agent_id].problem:
                log.warning("agent key %s refused: %s", path, enrolled[agent_id].problem)
        added = enrolled.keys() - self._enrolled.keys()
        revoked = {p.stem for p in _pem_files(self.certificates / "revoked")}
        if added or revoked != self._revoked:
            log.info(
                "agent registry: %d enrolled (+%d), %d revoked",
                len(enrolled),
                len(added),
                len(revoked),
            )
        self._enrolled, self._revoked = enrolled, revoked
        self._next_refresh = time.monotonic() + self.refresh_s


def _pem_files(directory: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(directory) if e.name.endswith(".pem")]
    except FileNotFoundError:
        return []


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def _read_agent_key(path: Path) -> AgentKey:
    agent_id = path.stem
    try:
        key = RSA.import_key(path.read_bytes())
    except (OSError, ValueError, IndexError, TypeError) as exc:
        return AgentKey(agent_id, None, f"key file of agent {agent_id!r} is unreadable: {exc}")
    if key.size_in_bits() < protocol.MIN_RSA_BITS:
        return AgentKey(
            agent_id,
            None,
            f"key of agent {agent_id!r} has {key.size_in_bits()} bits; "
            f"at least {protocol.MIN_RSA_BITS} are required",
        )
    public = key.public_key()
    try:
        protocol.openssl_public_key(public)  # once per key object, cached for verify
    except (ValueError, TypeError) as exc:
        return AgentKey(agent_id, None, f"key of agent {agent_id!r} is refused by OpenSSL: {exc}")
    return AgentKey(agent_id, public)
