"""End-to-end test harness: a fleet of agents that speak PROTOCOL.md, the processor as
a real subprocess (``python3 main.py run``), and queries on what it stored."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer
from Crypto.PublicKey import RSA
from sqlalchemy import create_engine, text
from waiting import wait_for

from sparklem_core import wire
from sparklem_core.fleet.registry import create_server_key, load_server_keys

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("temperature", "pu_workload")


def now_ms() -> int:
    return int(time.time() * 1000)


def temperature(*readings: tuple[str, float, str]) -> dict[str, Any]:
    return {"readings": [{"sensor": s, "value": v, "unit": u} for s, v, u in readings]}


GOOD = temperature(("cpu", 50.0, "C"))


def run_python(
    args: list[str], cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` (a script or ``-m module``) to its end, output captured."""
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)  # fmt: skip


def install_metadata(directory: Path, name: str) -> None:
    """What ``pip install`` of plugin ``name``'s package in ``directory`` leaves for
    importlib.metadata (its ``sparklem`` entry point), without installing: with
    ``directory`` on PYTHONPATH, every process finds the plugin as an installed one."""
    info = directory / f"sparklem_{name}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: sparklem-{name}\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(f"[sparklem]\n{name} = sparklem_{name}\n")


class Fleet:
    """Enrolled agents with their keys, sending to per-test topics (one per plugin)."""

    def __init__(self, root: Path, bootstrap: str, plugins: Sequence[str] = PLUGINS) -> None:
        self.certificates = root / "certificates"
        create_server_key(self.certificates, bits=2048)
        (self.certificates / "agents").mkdir(exist_ok=True)
        (self.certificates / "revoked").mkdir(exist_ok=True)
        ((self.kid, server_key),) = load_server_keys(self.certificates).items()
        self.server_public = server_key.public_key()
        suffix = uuid.uuid4().hex[:10]
        self.topics = {p: f"t{suffix}.{p}" for p in plugins}
        self.group = f"g{suffix}"
        self.keys: dict[str, RSA.RsaKey] = {}
        self.sessions: dict[str, wire.SessionKey] = {}
        self.seq: dict[tuple[str, str], int] = {}
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def enroll(self, agent_id: str, bits: int = 2048) -> RSA.RsaKey:
        key = self.keys.get(agent_id) or RSA.generate(bits)
        self.keys[agent_id] = key
        path = self.certificates / "agents" / f"{agent_id}.pem"
        path.write_bytes(key.public_key().export_key())
        return key

    def revoke(self, agent_id: str) -> None:
        (self.certificates / "agents" / f"{agent_id}.pem").rename(
            self.certificates / "revoked" / f"{agent_id}.pem"
        )

    def envelope(
        self,
        agent_id: str,
        plugin: str,
        data: dict[str, Any],
        *,
        seq: int | None = None,
        ts: int | None = None,
    ) -> bytes:
        """A valid envelope; ``seq`` defaults to the stream's next one."""
        if seq is None:
            seq = self.seq.get((agent_id, plugin), -1) + 1
        self.seq[(agent_id, plugin)] = max(seq, self.seq.get((agent_id, plugin), -1))
        session = self.sessions.get(agent_id)
        if session is None:
            session = self.sessions[agent_id] = wire.SessionKey(self.server_public)
        return wire.seal(
            {"seq": seq, "ts": now_ms() if ts is None else ts, "data": data},
            agent=agent_id,
            plugin=plugin,
            session=session,
            agent_key=self.keys[agent_id],
        ).to_json()

    def send(self, value: bytes, plugin: str = "temperature", key: str | None = None) -> None:
        self.producer.produce(self.topics[plugin], value=value, key=key)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0, "records not delivered to the broker"

    def config(self, bootstrap: str, database_url: str, **processor: Any) -> dict[str, Any]:
        return {
            "kafka": {
                "bootstrap.servers": bootstrap,
                "group.id": self.group,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 1000,
                "topic.metadata.refresh.interval.ms": 2000,
            },
            "database": {"url": database_url},
            "certificates": str(self.certificates),
            "plugins": {p: {"topic": t} for p, t in self.topics.items()},
            "processor": {
                "stats_interval_s": 2,
                "registry_refresh_s": 1,
                "topic_partitions": 4,
                **processor,
            },
        }


class ProcessorProcess:
    """``python3 main.py run`` in a subprocess, logging to a file."""

    def __init__(self, workdir: Path, config: dict[str, Any], name: str = "processor") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_assigned: bool = True, *args: str) -> ProcessorProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKLEM_")}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "main.py"),
                "run",
                "--config",
                str(self.config_path),
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.config_path.parent,
            start_new_session=True,  # a group of its own, with any workers: close() ends all
        )
        if wait_assigned:
            self.wait_log("assigned t", timeout=60)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 30, count: int = 1) -> None:
        def seen() -> bool:
            assert self.proc is not None and self.proc.poll() is None or needle in self.log(), (
                f"processor exited early:\n{self.log()[-3000:]}"
            )
            return self.log().count(needle) >= count

        wait_for(seen, timeout, message=f"no {needle!r} in processor log:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 10, sig: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        """SIGTERM (or ``sig``: SIGINT is Ctrl-C); returns (exit code, seconds it took)."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"processor ignored {sig.name} for {timeout} s") from None
        self._log.close()
        return code, time.monotonic() - started

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def close(self) -> None:
        """Kill it and every process it started (``run --workers``), and wait for them."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.kill9()
        group = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        wait_for(lambda: not group_alive(group), 10, message=f"process group {group} lingers")


def group_alive(group: int) -> bool:
    """Whether any process of the group is left (reaped: none)."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    """Whether the process runs (a zombie not yet reaped by its new parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


class Db:
    """Read-only queries on what the processor stored."""

    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    def scalar(self, sql: str, **params: Any) -> Any:
        try:
            with self.engine.connect() as conn:
                return conn.execute(text(sql), params).scalar()
        except Exception:
            return None  # table not created yet, or the database is down

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(text(sql), params))

    def count(self, table: str) -> int:
        return self.scalar(f"SELECT count(*) FROM {table}") or 0

    def reasons(self) -> dict[str, int]:
        try:
            rows = self.rows("SELECT reason, count(*) FROM rejected_messages GROUP BY reason")
        except Exception:
            return {}
        return {r: n for r, n in rows}

    def wait_count(self, table: str, expected: int, timeout: float = 45) -> None:
        wait_for(
            lambda: self.count(table) >= expected,
            timeout,
            message=f"{table} did not reach {expected} rows (has {self.count(table)})",
        )
        # and it must not overshoot once the processor has caught up
        assert self.count(table) == expected, f"{table}: {self.count(table)} != {expected}"

    def close(self) -> None:
        self.engine.dispose()


def reading_json(rows: list[Any]) -> list[dict[str, Any]]:
    return [json.loads(r) for r in rows]


def start(
    processors: list[ProcessorProcess],
    tmp_path: Path,
    config: dict[str, Any],
    name: str = "processor",
    **kwargs: Any,
) -> ProcessorProcess:
    """Start a processor that the ``processors`` fixture stops after the test."""
    proc = ProcessorProcess(tmp_path, config, name)
    processors.append(proc)
    return proc.start(**kwargs)


def loaded_packages(modules: Sequence[str], packages: Sequence[str]) -> list[str]:
    """The ``packages`` (or their sub-modules) that importing ``modules`` loads, in a
    fresh interpreter."""
    code = (
        f"import json, sys, {', '.join(modules)}\n"
        f"stack = {tuple(packages)!r}\n"
        "print(json.dumps(sorted({s for s in stack for m in sys.modules\n"
        "                         if m == s or m.startswith(s + '.')})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
