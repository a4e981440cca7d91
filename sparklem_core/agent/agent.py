"""The edge agent: collect with the plugins, seal (docs/protocol.md), spool, publish to Kafka.

``python3 -m sparklem_core.agent --bundle config.tar.xz`` (or ``sparklem-agent``).

- Every plugin named in the bundle collects on its own interval; each payload is sealed
  under a session key (rotated when it expires) and signed with the agent's key.
- ``seq`` is per stream (agent, plugin). ``state.json`` in the state directory reserves
  blocks of numbers *before* they are used, so a crash never reuses one; a stream also
  never starts below the clock (microseconds since the epoch), so an agent that lost
  its state still moves forward.
- Every envelope goes through the SQLite spool (:mod:`sparklem_core.agent.spool`): insert,
  produce, delete on the delivery report. While the broker is unreachable entries pile
  up (bounded, oldest dropped first) and drain in order when it comes back.
- State is kept per server, in ``servers/<server id>/`` of the state directory (the
  bundle's ``server_id``, which a server key rotation keeps; ``kid-<kid>`` for bundles
  without one): ``state.json`` and one spool per agent key, ``spool-<fingerprint>.sqlite3``.
  Envelopes are signed with the agent key and sealed for the server, so a spool of
  another server, or of an earlier enrollment (another agent key), could only be refused
  (``bad_signature``): it is reported at start and never sent.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from sparklem_core import __version__, wire
from sparklem_core.agent.sender import Sender
from sparklem_core.agent.spool import Spool
from sparklem_core.files import write_atomic
from sparklem_core.plugin_host import PluginHost, PluginInfo
from sparklem_core.settings.validation import SchemaError, plugin_settings
from sparklem_core.wire.bundle import (
    AGENT_YAML,
    Bundle,
)

log = logging.getLogger("sparklem.agent")
PASSPHRASE_ENV = "SPARKLEM_AGENT_PASSPHRASE"
STATE_DIR_ENV = "SPARKLEM_AGENT_STATE_DIR"
SERVERS_DIR = "servers"
LEGACY_SPOOL, STATE_FILE = "spool.sqlite3", "state.json"  # in the state directory, before
SEQ_BLOCK = 1000  # seq numbers reserved on disk at a time
MAX_ENVELOPE_BYTES = 1024 * 1024
DEFAULT_FLUSH_TIMEOUT_S = 30.0
STOP_FLUSH_TIMEOUT_S = 10.0  # on SIGTERM/SIGINT
DROP_LOG_INTERVAL_S = 60.0
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class AgentError(Exception):
    """A problem that stops the agent from starting: one clear line."""


def default_state_dir(agent_id: str) -> Path:
    """$SPARKLEM_AGENT_STATE_DIR, else $STATE_DIRECTORY/<id> (systemd), else
    $XDG_STATE_HOME/sparklem-agent/<id> (default ~/.local/state/sparklem-agent/<id>)."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / agent_id
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sparklem-agent" / agent_id


def server_state_dir(state_dir: Path, bundle: Bundle) -> Path:
    """Where the state kept for the bundle's server goes."""
    return state_dir / SERVERS_DIR / (bundle.server_id or f"kid-{bundle.kid}")


def spool_path(state_dir: Path, bundle: Bundle) -> Path:
    """The spool of the bundle's server and agent key."""
    return server_state_dir(state_dir, bundle) / f"spool-{bundle.agent_key_fingerprint}.sqlite3"


def clock_floor() -> int:
    """The lowest seq a stream starts at: microseconds since the epoch."""
    return time.time_ns() // 1000


class SeqState:
    """Per-plugin ``seq`` counters, reserved ahead in ``state.json`` (write-ahead).

    The file holds, per plugin, a number above every seq handed out so far::

        {"version": 1, "agent_id": "jetson-01", "reserved": {"temperature": 1763900000001000}}
    """

    def __init__(
        self,
        path: Path,
        agent_id: str,
        block: int = SEQ_BLOCK,
        floor: Callable[[], int] = clock_floor,
    ) -> None:
        self.path, self.agent_id, self.block, self.floor = path, agent_id, block, floor
        self._reserved: dict[str, int] = {}
        self._next: dict[str, int] = {}
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("state file %s unreadable (%s); seq restarts from the clock", path, exc)
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("reserved"), dict):
            log.warning("state file %s has no 'reserved' map; seq restarts from the clock", path)
            return
        if doc.get("agent_id") != agent_id:
            raise AgentError(
                f"state directory {path.parent} belongs to agent {doc.get('agent_id')!r}, "
                f"not {agent_id!r}; use --state-dir"
            )
        self._reserved = {
            str(k): v for k, v in doc["reserved"].items() if type(v) is int and v >= 0
        }

    def next(self, plugin: str) -> int:
        """The plugin's next seq, persisted (a new block) before it is handed out."""
        seq = self._next.get(plugin)
        if seq is None:
            seq = max(self._reserved.get(plugin, 0), self.floor())
        if seq >= wire.MAX_SEQ:
            raise AgentError(f"seq of plugin {plugin!r} is exhausted")
        if seq >= self._reserved.get(plugin, 0):
            self._reserved[plugin] = min(seq + self.block, wire.MAX_SEQ)
            self._save()
        self._next[plugin] = seq + 1
        return seq

    def _save(self) -> None:
        doc = {"version": 1, "agent_id": self.agent_id, "reserved": self._reserved}
        write_atomic(self.path, json.dumps(doc, indent=1).encode("utf-8") + b"\n", 0o600)


@dataclass
class Collector:
    info: PluginInfo
    topic: str
    interval: float
    settings: dict[str, Any]
    due: float = 0.0  # time.monotonic() of the next collection
    collected: bool = False


class Agent:
    def __init__(
        self,
        bundle: Bundle,
        state_dir: Path,
        plugins_dir: Path | None = None,
    ) -> None:
        self.bundle = bundle
        self.agent_id = bundle.agent_id
        self.state_dir = state_dir
        self.stop = threading.Event()
        settings = bundle.agent_settings  # checked when the bundle was opened
        self._lock = _lock_state_dir(state_dir)
        spool = None
        try:
            server_dir = server_state_dir(state_dir, bundle)
            _adopt_legacy_seq_state(state_dir, server_dir)
            self.seq = SeqState(server_dir / STATE_FILE, self.agent_id)
            self.host = PluginHost(plugins_dir, enabled=lambda key: key in bundle.plugins)
            self.collectors = self._collectors()
            path = spool_path(state_dir, bundle)
            self.spool = spool = Spool(path, settings.spool_max_rows)
            _adopt_legacy_spool(state_dir / LEGACY_SPOOL, spool, bundle)
            report_unsendable_spools(state_dir, bundle)
            try:
                self.sender = Sender(spool, bundle.kafka, settings.stall_timeout_s)
            except ValueError as exc:  # the bundle's Kafka properties
                raise AgentError(str(exc)) from None
        except BaseException:
            if spool is not None:
                spool.close()
            self._lock.close()
            raise
        self.session = wire.SessionKey(bundle.server_key)
        self._dropped_logged, self._drop_logged_at = 0, -DROP_LOG_INTERVAL_S

    def _collectors(self) -> dict[str, Collector]:
        loaded = self.host.loaded()
        collectors = {}
        for name, spec in self.bundle.plugins.items():
            info = loaded.get(name)
            if info is None or info.manifest is None:
                status = next((i.status for i in self.host.infos if i.name == name), "not found")
                log.warning("plugin %s from the bundle is not available here: %s", name, status)
                continue
            try:
                settings = plugin_settings(info.manifest, spec, "agent", f"plugins.{name}")
            except SchemaError as exc:
                raise AgentError(f"{AGENT_YAML} in the bundle: {exc}") from None
            collectors[name] = Collector(info, settings["topic"], settings["interval"], settings)
        if not collectors:
            raise AgentError(
                f"none of the bundle's plugins ({', '.join(self.bundle.plugins)}) can be "
                "loaded here; see the warnings above"
            )
        return collectors

    def run(self, once: bool = False, flush_timeout_s: float = DEFAULT_FLUSH_TIMEOUT_S) -> int:
        log.info(
            "sparklem agent %s starting: agent=%s plugins=%s bootstrap=%s kid=%s state=%s "
            "spooled=%d%s",
            __version__,
            self.agent_id,
            ",".join(f"{n}/{c.interval:g}s" for n, c in self.collectors.items()),
            self.bundle.kafka.get("bootstrap.servers"),
            self.bundle.kid,
            self.state_dir,
            len(self.spool),
            " (once)" if once else "",
        )
        deadline = None
        while not self.stop.is_set():
            now = time.monotonic()
            for name, collector in self.collectors.items():
                if collector.due <= now and not (once and collector.collected):
                    self._collect(name, collector)
                    collector.collected = True
                    collector.due += collector.interval
                    if collector.due <= now:  # late (or the first time): count from now
                        collector.due = now + collector.interval
            self.sender.pump()
            self._log_drops()
            if once:
                deadline = deadline or now + flush_timeout_s
                if not len(self.spool) or now >= deadline:
                    break
            next_due = now + 0.2 if once else min(c.due for c in self.collectors.values())
            wait = min(max(next_due - time.monotonic(), 0.0), 0.2)
            if self.sender.in_flight:
                self.sender.pump(wait_s=wait)
            elif wait > 0:
                self.stop.wait(0.02 if self.sender.busy else wait)
        left_s = deadline - time.monotonic() if deadline else STOP_FLUSH_TIMEOUT_S
        return self._finish(once, min(max(left_s, 0.0), STOP_FLUSH_TIMEOUT_S))

    def _collect(self, name: str, collector: Collector) -> None:
        try:
            data = self.host.collect(collector.info, collector.settings)
        except Exception as exc:  # a failing collector must not stop the others
            log.warning("plugin %s failed to collect: %s: %s", name, type(exc).__name__, exc)
            return
        if data is None:
            log.debug("plugin %s had nothing to send", name)
            return
        if not isinstance(data, dict):
            log.warning("plugin %s returned %s, not a dict; ignored", name, type(data).__name__)
            return
        if self.session.expired():
            self.session = wire.SessionKey(self.bundle.server_key)
        plaintext = {"seq": self.seq.next(name), "ts": int(time.time() * 1000), "data": data}
        envelope = wire.seal(
            plaintext,
            agent=self.agent_id,
            plugin=name,
            session=self.session,
            agent_key=self.bundle.agent_key,
        ).to_json()
        if len(envelope) > MAX_ENVELOPE_BYTES:
            log.error("plugin %s: envelope of %d bytes is too large; dropped", name, len(envelope))
            return
        self.sender.send(collector.topic, self.agent_id.encode("utf-8"), envelope)

    def _log_drops(self) -> None:
        dropped = self.spool.dropped
        if dropped > self._dropped_logged:
            now = time.monotonic()
            if now - self._drop_logged_at >= DROP_LOG_INTERVAL_S or self.stop.is_set():
                log.warning(
                    "spool full (%d entries): dropped the %d oldest (%d since start)",
                    self.spool.max_rows,
                    dropped - self._dropped_logged,
                    dropped,
                )
                self._dropped_logged, self._drop_logged_at = dropped, now

    def _finish(self, once: bool, flush_timeout_s: float) -> int:
        self.sender.flush(flush_timeout_s)
        self.stop.set()
        self._log_drops()
        left = len(self.spool)
        log.info("agent stopping: %d sent, %d left in the spool", self.sender.sent, left)
        if once and left:
            log.error(
                "delivery failed: %d entries left in the spool %s (sent on the next start)",
                left,
                self.spool.path,
            )
            return EXIT_FAILURE
        return EXIT_OK

    def close(self) -> None:
        self.spool.close()
        self._lock.close()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            log.info("%s received: flushing and stopping", signal.Signals(signum).name)
            self.stop.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)


def report_unsendable_spools(state_dir: Path, bundle: Bundle) -> list[str]:
    """One warning line per spool in ``state_dir`` that this bundle cannot send: sealed
    for another server or signed with another agent key. Returns the lines."""
    current = spool_path(state_dir, bundle)
    lines = []
    for path in sorted([state_dir / LEGACY_SPOOL, *state_dir.glob(f"{SERVERS_DIR}/*/spool-*")]):
        if path == current or not path.name.endswith(".sqlite3") or not path.is_file():
            continue
        count = _count(path)
        if count == 0:
            continue
        if path.parent == current.parent:
            whose = "signed with the agent key of an earlier enrollment with this server"
        elif path.parent.parent == state_dir / SERVERS_DIR:
            whose = f"sealed for another server ({path.parent.name})"
        else:
            whose = "not signed with this bundle's agent key"
        lines.append(
            f"spool {path} holds {count if count >= 0 else 'some'} entries {whose}: "
            "the processor would refuse them (bad_signature), so they are not sent; "
            "delete the file once they are not needed"
        )
    for line in lines:
        log.warning("%s", line)
    return lines


def _count(path: Path) -> int:
    """Entries in the spool at ``path``, read-only; -1 when it cannot be read."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return int(db.execute("SELECT COUNT(*) FROM spool").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return -1


def _adopt_legacy_seq_state(state_dir: Path, server_dir: Path) -> None:
    """``state.json`` from before state was kept per server: the first server takes it
    (seq only moves forward, so any server may)."""
    legacy = state_dir / STATE_FILE
    server_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if legacy.is_file() and not (server_dir / STATE_FILE).exists():
        os.replace(legacy, server_dir / STATE_FILE)


def _adopt_legacy_spool(legacy: Path, spool: Spool, bundle: Bundle) -> None:
    """The spool from before state was kept per server moves into ``spool`` when its
    entries are this bundle's (signed with its agent key); else it stays and is reported."""
    if not legacy.is_file():
        return
    old = Spool(legacy, spool.max_rows)
    try:
        entries = old.pending(limit=1)
        if entries and not _signed_by(entries[0].value, bundle):
            return
        after, moved = 0, 0
        while batch := old.pending(after):
            for entry in batch:
                spool.put(entry.topic, entry.key, entry.value)
            after, moved = batch[-1].id, moved + len(batch)
    finally:
        old.close()
    for suffix in ("", "-wal", "-shm"):
        legacy.with_name(legacy.name + suffix).unlink(missing_ok=True)
    if moved:
        log.info("moved %d spooled entries from %s into %s", moved, legacy, spool.path)


def _signed_by(value: bytes, bundle: Bundle) -> bool:
    try:
        wire.verify(wire.parse_envelope(value), bundle.agent_key.public_key())
    except wire.Rejected:
        return False
    return True


def _lock_state_dir(state_dir: Path) -> IO[bytes]:
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = open(state_dir / "agent.lock", "wb")  # noqa: SIM115  # held while running
    except OSError as exc:
        raise AgentError(f"cannot use state directory {state_dir}: {exc.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise AgentError(f"another agent is running with state directory {state_dir}") from None
    return lock
