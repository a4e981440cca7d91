"""The edge agent: collect with the plugins, seal (PROTOCOL.md), spool, publish to Kafka.

``python3 -m sparklem_core.agent --bundle config.tar.xz`` (or ``sparklem-agent``).

- Every plugin named in the bundle collects on its own interval; each payload is sealed
  under a session key (rotated when it expires) and signed with the agent's key.
- ``seq`` is per stream (agent, plugin). ``state.json`` in the state directory reserves
  blocks of numbers *before* they are used, so a crash never reuses one; a stream also
  never starts below the clock (microseconds since the epoch), so an agent that lost
  its state still moves forward.
- Every envelope goes through the SQLite spool (:mod:`sparklem_core.spool`): insert,
  produce, delete on the delivery report. While the broker is unreachable entries pile
  up (bounded, oldest dropped first) and drain in order when it comes back.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import getpass
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

from sparklem_core import __version__, protocol
from sparklem_core.config import mask_secrets, remember_secret
from sparklem_core.enrollment import (
    AGENT_YAML,
    BUNDLE_NAME,
    Bundle,
    EnrollmentError,
    load_bundle,
    read_passphrase_file,
    write_atomic,
)
from sparklem_core.logsetup import add_log_level_argument, setup_logging
from sparklem_core.plugin_manager import PluginHost, PluginInfo, default_plugins_dir
from sparklem_core.schema import SchemaError, plugin_settings
from sparklem_core.spool import Sender, Spool

log = logging.getLogger("sparklem.agent")

PASSPHRASE_ENV = "SPARKLEM_AGENT_PASSPHRASE"
STATE_DIR_ENV = "SPARKLEM_AGENT_STATE_DIR"
SEQ_BLOCK = 1000  # seq numbers reserved on disk at a time
MAX_ENVELOPE_BYTES = 1024 * 1024
DEFAULT_FLUSH_TIMEOUT_S = 30.0
STOP_FLUSH_TIMEOUT_S = 10.0  # on SIGTERM/SIGINT
DROP_LOG_INTERVAL_S = 60.0
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class AgentError(Exception):
    """A problem that stops the agent from starting: one clear line."""


# --- state ------------------------------------------------------------------------------


def default_state_dir(agent_id: str) -> Path:
    """$SPARKLEM_AGENT_STATE_DIR, else $STATE_DIRECTORY/<id> (systemd), else
    $XDG_STATE_HOME/sparklem-agent/<id> (default ~/.local/state/sparklem-agent/<id>)."""
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / agent_id
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "sparklem-agent" / agent_id


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
        if seq >= protocol.MAX_SEQ:
            raise AgentError(f"seq of plugin {plugin!r} is exhausted")
        if seq >= self._reserved.get(plugin, 0):
            self._reserved[plugin] = min(seq + self.block, protocol.MAX_SEQ)
            self._save()
        self._next[plugin] = seq + 1
        return seq

    def _save(self) -> None:
        doc = {"version": 1, "agent_id": self.agent_id, "reserved": self._reserved}
        write_atomic(self.path, json.dumps(doc, indent=1).encode("utf-8") + b"\n", 0o600)


# --- the agent --------------------------------------------------------------------------


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
            self.seq = SeqState(state_dir / "state.json", self.agent_id)
            self.host = PluginHost(plugins_dir, enabled=lambda key: key in bundle.plugins)
            self.collectors = self._collectors()
            self.spool = spool = Spool(state_dir / "spool.sqlite3", settings.spool_max_rows)
            try:
                self.sender = Sender(spool, bundle.kafka, settings.stall_timeout_s)
            except ValueError as exc:  # the bundle's Kafka properties
                raise AgentError(str(exc)) from None
        except BaseException:
            if spool is not None:
                spool.close()
            self._lock.close()
            raise
        self.session = protocol.SessionKey(bundle.server_key)
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
            self.session = protocol.SessionKey(self.bundle.server_key)
        plaintext = {"seq": self.seq.next(name), "ts": int(time.time() * 1000), "data": data}
        envelope = protocol.seal(
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


# --- command line -----------------------------------------------------------------------


def passphrase(args: argparse.Namespace) -> str:
    """From --passphrase-file, the environment or a prompt; masked in logs from now on."""
    secret = _passphrase(args)
    remember_secret(secret)
    return secret


def _passphrase(args: argparse.Namespace) -> str:
    if args.passphrase_file:
        return read_passphrase_file(args.passphrase_file)
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if sys.stdin.isatty():
        with contextlib.suppress(EOFError):
            return getpass.getpass(f"passphrase for {args.bundle}: ")
    raise AgentError(f"no passphrase: use --passphrase-file FILE or set {PASSPHRASE_ENV}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparklem-agent",
        description="Sparkle-M edge agent: collects with the bundle's plugins and publishes "
        "sealed readings to Kafka, spooling them on disk while the broker is unreachable.",
        epilog=f"The passphrase comes from --passphrase-file or ${PASSPHRASE_ENV} (or a "
        f"prompt in a terminal). State (seq counters, spool) goes to --state-dir, else "
        f"${STATE_DIR_ENV}, else $STATE_DIRECTORY/<agent id> (systemd), else "
        "$XDG_STATE_HOME/sparklem-agent/<agent id> (~/.local/state/...). Keep it across "
        "restarts.",
    )
    parser.add_argument("--version", action="version", version=f"sparklem-agent {__version__}")
    parser.add_argument(
        "--bundle",
        type=Path,
        default=Path(BUNDLE_NAME),
        metavar="FILE",
        help=f"the agent's bundle (default: ./{BUNDLE_NAME})",
    )
    parser.add_argument("--passphrase-file", metavar="FILE", help="file holding the passphrase")
    parser.add_argument(
        "--once",
        action="store_true",
        help="collect every plugin once, send, wait for delivery, exit (1 if undelivered)",
    )
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="seq state and spool")
    parser.add_argument(
        "--plugins-dir",
        type=Path,
        default=default_plugins_dir(),
        metavar="DIR",
        help="directory plugins are loaded from, besides installed ones (default: ./plugins "
        "if present)",
    )
    parser.add_argument(
        "--flush-timeout",
        type=float,
        default=DEFAULT_FLUSH_TIMEOUT_S,
        metavar="S",
        help=f"--once: seconds to wait for delivery (default {DEFAULT_FLUSH_TIMEOUT_S:g})",
    )
    add_log_level_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        bundle = load_bundle(args.bundle, passphrase(args))
        agent = Agent(
            bundle, args.state_dir or default_state_dir(bundle.agent_id), args.plugins_dir
        )
    except (AgentError, EnrollmentError) as exc:
        print(f"sparklem-agent: error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    agent.install_signal_handlers()
    try:
        return agent.run(once=args.once, flush_timeout_s=args.flush_timeout)
    except AgentError as exc:
        print(f"sparklem-agent: error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        agent.close()


if __name__ == "__main__":
    sys.exit(main())
