"""Who may talk to the processor: the server keys and the enrolled agents.

Layout of the certificates directory::

    server_private*.pem      server key pairs (mode 0600); each one's kid selects it
    agents/<agent_id>.pem    public keys of enrolled agents
    revoked/<agent_id>.pem   revoked agents (moved here by ``gen_config.py --revoke``)

The directory is re-read every few seconds, so enrollment and revocation take effect
without a restart. Only files that changed are read again.

Every byte here is treated as hostile: key files are read only when they are regular
files of at most ``MAX_KEY_FILE_BYTES`` (:func:`read_regular_file`: no link followed, no
FIFO or device opened). An unusable file makes that one agent unknown and is logged
once per version of the file; a directory that cannot be listed is logged once and
never raises. A file in ``revoked/`` counts by its name alone, readable or not.

Keys are handed out as pycryptodome ``RSA.RsaKey`` objects; each is also converted to
its ``cryptography`` (OpenSSL) form when it is loaded (``wire.openssl_public_key`` /
``openssl_private_key``), so a key OpenSSL would refuse is refused here, and the
per-message ``wire.verify`` / ``unwrap_key`` find the conversion already cached for
as long as the registry (or the caller) keeps the key object.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from Crypto.PublicKey import RSA
from sqlalchemy.exc import SQLAlchemyError

from sparklem_core import wire
from sparklem_core.db import enrollments
from sparklem_core.db.store import Store
from sparklem_core.files import UnusableFile, _strerror, read_regular_file
from sparklem_core.settings.masking import mask_secrets

log = logging.getLogger(__name__)
SERVER_KEY_GLOB = "server_private*.pem"
DEFAULT_SERVER_KEY = "server_private.pem"
AGENTS_DIR, REVOKED_DIR = "agents", "revoked"
PRIVATE_KEY_PEM = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")
MISPLACED_SECRET = "misplaced secret"
# What pycryptodome raises on malformed key bytes.
KEY_PARSE_ERRORS = (ValueError, IndexError, TypeError, KeyError, struct.error)


class NoServerKey(RuntimeError):
    pass


@dataclass(frozen=True)
class AgentKey:
    agent_id: str
    key: RSA.RsaKey | None  # None: the file is unusable, see ``problem``
    problem: str = ""

    @property
    def fingerprint(self) -> str:
        return wire.key_id(self.key) if self.key else ""


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
            key = RSA.import_key(read_regular_file(path))
        except UnusableFile as exc:
            raise NoServerKey(f"{path} {exc}") from None
        except KEY_PARSE_ERRORS as exc:
            raise NoServerKey(f"{path} is not an RSA private key: {exc}") from None
        if not key.has_private():
            raise NoServerKey(f"{path} holds no private key")
        if key.size_in_bits() < wire.MIN_RSA_BITS:
            raise NoServerKey(
                f"{path} is a {key.size_in_bits()}-bit key; at least {wire.MIN_RSA_BITS} "
                "bits are required (move it away and run: sparklem init, or python3 main.py init "
                "in a checkout)"
            )
        try:
            wire.openssl_private_key(key)  # once per key object, cached for unwrap_key
        except (ValueError, TypeError) as exc:
            raise NoServerKey(f"{path} is refused by OpenSSL: {exc}") from None
        keys[wire.key_id(key)] = key
    if not keys:
        raise NoServerKey(
            f"no server key in {certificates}/ (looked for {SERVER_KEY_GLOB}); "
            "create one with: sparklem init (python3 main.py init in a checkout)"
        )
    return keys


class AgentRegistry:
    """Public keys of enrolled and revoked agents, refreshed from disk and, once given a
    store (:meth:`use_database`), from its ``sparklem_enrollments`` table
    (:mod:`.enrollments`): a revocation in either wins; a key on disk comes first."""

    def __init__(self, certificates: Path, refresh_s: float = 5.0) -> None:
        self.certificates = certificates
        self.refresh_s = refresh_s
        self.store: Store | None = None  # see use_database
        self._enrolled: dict[str, AgentKey] = {}
        self._revoked: set[str] = set()
        self._db_rows: dict[str, enrollments.DbEnrollment] = {}
        self._db_keys: dict[str, AgentKey] = {}
        self._db_revoked: set[str] = set()
        self._db_problem = ""
        self._seen: dict[str, tuple[int, ...]] = {}  # agents/ file name -> its version
        self._unlistable: dict[str, str] = {}  # directory -> why it cannot be listed
        self._revoked_keys: dict[str, tuple[object, AgentKey]] = {}  # id -> (version, key)
        self._refreshing = threading.Lock()  # serve's requests and the processor's count
        self._next_refresh = 0.0
        self.refresh()

    def lookup(self, agent_id: str) -> RSA.RsaKey:
        """The agent's public key, or :class:`wire.Rejected` saying why not."""
        if time.monotonic() >= self._next_refresh:
            self.refresh()
        if agent_id in self._revoked or agent_id in self._db_revoked:
            raise wire.Rejected(wire.REVOKED_AGENT, f"agent {agent_id!r} was revoked")
        entry = self._enrolled.get(agent_id) or self._db_keys.get(agent_id)
        if entry is None:
            raise wire.Rejected(wire.UNKNOWN_AGENT, f"agent {agent_id!r} is not enrolled")
        if entry.key is None:
            raise wire.Rejected(wire.UNKNOWN_AGENT, entry.problem)
        return entry.key

    def use_database(self, store: Store) -> None:
        """Read enrollments from ``store`` too, from now on (once its schema is there)."""
        self.store = store
        self.refresh()

    def agents(self) -> dict[str, AgentKey]:
        """Every enrolled agent's key, or why it is refused (``key`` None), as
        :meth:`lookup` judges it (unless the agent is also revoked)."""
        return {**self._db_keys, **self._enrolled}

    def revoked(self) -> set[str]:
        """The agents revoked in ``revoked/`` or in the database."""
        return self._revoked | self._db_revoked

    def unlistable(self) -> list[str]:
        """Why a directory of the certificates cannot be listed, one line each."""
        return [problem for problem in self._unlistable.values() if problem]

    def signed_by_revoked(self, envelope: wire.Envelope) -> bool:
        """Whether ``envelope`` of a revoked agent verifies with that agent's revoked key:
        the agent itself still sending, not a forgery of its id."""
        key = self._revoked_key(envelope.agent)
        if key.key is None:
            return False
        try:
            wire.verify(envelope, key.key)
        except wire.Rejected:
            return False
        return True

    def _revoked_key(self, agent_id: str) -> AgentKey:
        """The revoked agent's key from ``revoked/`` (else the database), read again only
        when the file or row changed; ``key`` None when there is none usable."""
        path = self.certificates / REVOKED_DIR / f"{agent_id}.pem"
        row = self._db_rows.get(agent_id)
        on_disk = _version(path)
        version = on_disk or (row.fingerprint if row else None)
        cached = self._revoked_keys.get(agent_id)  # only revoked ids get here: bounded
        if cached is not None and cached[0] == version:
            return cached[1]
        if on_disk is not None:
            key = read_agent_key(path, one_line(f"{REVOKED_DIR}/{path.name}"))
        elif row is not None:
            key = parse_agent_key(agent_id, row.public_key.encode(), repr(agent_id), "row")
        else:
            key = AgentKey(agent_id, None, "no key kept")
        self._revoked_keys[agent_id] = (version, key)
        return key

    def refresh(self) -> None:
        with self._refreshing:
            self._refresh()

    def _refresh(self) -> None:
        enrolled, seen = {}, {}
        for name in self._list(AGENTS_DIR) or []:
            path = self.certificates / AGENTS_DIR / name
            version = _version(path) if name.endswith(".pem") else None
            if version is None:  # another file, or one removed since the listing
                continue
            agent_id = name.removesuffix(".pem")
            old = self._enrolled.get(agent_id)
            if old is not None and self._seen.get(name) == version:
                enrolled[agent_id] = old
            else:
                enrolled[agent_id] = read_agent_key(path, one_line(f"{AGENTS_DIR}/{name}"))
                if enrolled[agent_id].problem:
                    log.warning("agent key refused: %s", enrolled[agent_id].problem)
            seen[name] = version
        listed = self._list(REVOKED_DIR)
        # A revoked/ that cannot be listed keeps the revocations already known.
        revoked = (
            self._revoked
            if listed is None
            else {n.removesuffix(".pem") for n in listed if n.endswith(".pem")}
        )
        added = enrolled.keys() - self._enrolled.keys()
        if added or revoked != self._revoked:
            log.info(
                "agent registry: %d enrolled (+%d), %d revoked",
                len(enrolled),
                len(added),
                len(revoked),
            )
        self._enrolled, self._revoked, self._seen = enrolled, revoked, seen
        if self.store is not None:
            self._refresh_database(self.store)
        self._next_refresh = time.monotonic() + self.refresh_s

    def _refresh_database(self, store: Store) -> None:
        """Read ``sparklem_enrollments``; while it cannot be read, what was read stays."""
        try:
            rows = enrollments.read(store.read_engine, store.metadata, self._db_rows)
        except SQLAlchemyError as exc:
            problem = str(exc).splitlines()[0][:300]
            if problem != self._db_problem:
                log.error(
                    "agent registry: cannot read %s (%s); the enrollments and revocations "
                    "already read stay until it can",
                    enrollments.TABLE,
                    mask_secrets(problem),
                )
            self._db_problem = problem
            return
        self._db_problem = ""
        keys, revoked = {}, set()
        for agent_id, row in rows.items():
            if row.state == enrollments.REVOKED:
                revoked.add(agent_id)
            elif row.state == enrollments.ENROLLED:
                old = self._db_keys.get(agent_id)
                if old is not None and self._db_rows.get(agent_id) == row:
                    keys[agent_id] = old
                else:
                    shown = f"{agent_id!r}"
                    key = parse_agent_key(
                        agent_id, row.public_key.encode(), shown, enrollments.TABLE
                    )
                    if key.problem:
                        log.warning("agent key refused: %s", one_line(key.problem))
                    keys[agent_id] = key
            elif self._db_rows.get(agent_id) != row:
                log.warning("%s: agent %s has state %s; ignored", enrollments.TABLE,
                            one_line(agent_id), one_line(row.state))  # fmt: skip
        if keys.keys() != self._db_keys.keys() or revoked != self._db_revoked:
            log.info("agent registry: %s: %d enrolled, %d revoked", enrollments.TABLE,
                     len(keys), len(revoked))  # fmt: skip
        self._db_rows, self._db_keys, self._db_revoked = rows, keys, revoked

    def _list(self, directory: str) -> list[str] | None:
        """The names in ``certificates/directory`` (none when it is absent); ``None`` when it
        cannot be listed, logged once until that changes."""
        problem, names = "", None
        try:
            with os.scandir(self.certificates / directory) as entries:
                names = [entry.name for entry in entries]
        except FileNotFoundError:
            names = []
        except OSError as exc:
            problem = f"{self.certificates / directory} cannot be listed: {_strerror(exc)}"
        if problem != self._unlistable.get(directory, ""):
            if problem:
                meaning = (
                    "no agent is accepted"
                    if directory == AGENTS_DIR
                    else "the revocations already known stay"
                )
                log.error("agent registry: %s; %s until it is fixed", problem, meaning)
            self._unlistable[directory] = problem
        return names


def one_line(text: str) -> str:
    """``text`` (a file name, say) fit for one log line, whatever characters it holds."""
    return text if text.isprintable() and text.isascii() else ascii(text)


def read_agent_key(path: Path, shown: str) -> AgentKey:
    """The agent key in ``path`` (named ``shown`` in messages), or why it is unusable."""
    agent_id = path.name.removesuffix(".pem")
    try:
        data = read_regular_file(path)
    except UnusableFile as exc:
        return AgentKey(agent_id, None, f"key file {shown} {exc}")
    return parse_agent_key(agent_id, data, shown)


def parse_agent_key(agent_id: str, data: bytes, shown: str, kind: str = "key file") -> AgentKey:
    """The agent key in ``data``, from the ``kind`` named ``shown``, or why it is unusable."""
    misplaced = (
        f"{MISPLACED_SECRET}: {shown} holds a private key; move it away and keep only the "
        "public key"
    )
    if PRIVATE_KEY_PEM.search(data):
        return AgentKey(agent_id, None, misplaced)
    try:
        key = RSA.import_key(data)
    except KEY_PARSE_ERRORS as exc:
        return AgentKey(agent_id, None, f"{kind} {shown} is unreadable: {exc}")
    if key.has_private():  # a DER private key, say
        return AgentKey(agent_id, None, misplaced)
    if key.size_in_bits() < wire.MIN_RSA_BITS:
        return AgentKey(
            agent_id,
            None,
            f"key of agent {agent_id!r} has {key.size_in_bits()} bits; "
            f"at least {wire.MIN_RSA_BITS} are required",
        )
    try:
        wire.openssl_public_key(key)  # once per key object, cached for verify
    except (ValueError, TypeError) as exc:
        return AgentKey(agent_id, None, f"key of agent {agent_id!r} is refused by OpenSSL: {exc}")
    return AgentKey(agent_id, key)


def _version(path: Path) -> tuple[int, ...] | None:
    """What changes when the directory entry is replaced or written; None once it is gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns
