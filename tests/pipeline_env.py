"""A processor's world for tests of the per-record path: keys, plugins, a Store, messages.

Shared by test_pipeline.py, test_hardening.py and test_fuzz.py. No Kafka: records are
built here and each batch is committed as the consumer would (``process`` ->
``Store.commit`` -> ``committed``), or through the consumer's own :class:`BatchWriter`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from Crypto.PublicKey import RSA
from sqlalchemy import select, text

from sparklem_core import wire
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import AgentRegistry
from sparklem_core.plugin_host import PluginHost
from sparklem_core.processor.pipeline import Pipeline, Record, Stats
from sparklem_core.processor.wiring import build_pipeline
from sparklem_core.settings.config import Config, ProcessorSettings

TOPIC = "sparklem.temperature"
PU_TOPIC = "sparklem.pu_workload"
GROUP = "test-group"
PLUGIN_TABLES = ("temperature_readings", "pu_workload_readings")

EXPLODER = """\
from sparklem_core import Manifest, PluginResult, hookimpl


@hookimpl
def sparklem_manifest():
    return Manifest(name="exploder", version="0.1.0")


@hookimpl
def sparklem_process(message, settings):
    if message.data.get("steal"):
        return PluginResult(rows={"temperature_readings": [{"agent_id": message.agent_id}]})
    raise RuntimeError("boom " + str(message.seq))
"""


@dataclass
class Keys:
    server: RSA.RsaKey
    other_server: RSA.RsaKey
    agent: RSA.RsaKey
    intruder: RSA.RsaKey

    @classmethod
    def generate(cls) -> Keys:
        return cls(*(RSA.generate(2048) for _ in range(4)))


def now_ms(offset_s: float = 0) -> int:
    return int((time.time() + offset_s) * 1000)


@dataclass
class Env:
    """A processor's world: certificates, plugins, a Store, and what makes messages."""

    tmp: Path
    keys: Keys
    url: str
    settings: ProcessorSettings = field(default_factory=ProcessorSettings)
    stores: list[Store] = field(default_factory=list)
    sessions: dict[str, wire.SessionKey] = field(default_factory=dict)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        certs = self.tmp / "certs"
        for directory in ("agents", "revoked"):
            (certs / directory).mkdir(parents=True, exist_ok=True)
        self.certs = certs
        plugins = self.tmp / "plugins" / "exploder"
        plugins.mkdir(parents=True, exist_ok=True)
        (plugins / "__init__.py").write_text(EXPLODER)
        self.enroll("edge-1")
        self.enroll("edge-2")
        self.store = self.new_store()
        self.store.create_schema()

    def close(self) -> None:
        for store in self.stores:
            store.dispose()

    def enroll(self, agent: str, key: RSA.RsaKey | None = None, where: str = "agents") -> None:
        pem = (key or self.keys.agent).public_key().export_key(format="PEM")
        (self.certs / where / f"{agent}.pem").write_bytes(pem)

    def new_store(self) -> Store:
        store = Store(self.url, GROUP)
        self.host = PluginHost(self.tmp / "plugins")
        assert set(self.host.loaded()) == {"temperature", "pu_workload", "exploder"}
        self.host.register_tables(store.register_table, store.drop_registrations)
        self.stores.append(store)
        return store

    def pipeline(self, store: Store | None = None, **settings: Any) -> Pipeline:
        for name, value in settings.items():
            setattr(self.settings, name, value)
        registry = AgentRegistry(self.certs, refresh_s=3600)
        server_keys = {wire.key_id(self.keys.server): self.keys.server}
        config = Config(
            certificates=self.certs,
            plugins={"temperature": {"max_celsius": 150}},
            processor=self.settings,
        )
        return build_pipeline(config, self.host, store or self.store, server_keys, registry)

    def seal(
        self,
        plaintext: dict[str, Any] | bytes,
        *,
        agent: str = "edge-1",
        plugin: str = "temperature",
        server: RSA.RsaKey | None = None,
        agent_key: RSA.RsaKey | None = None,
    ) -> bytes:
        """A record value as the agent makes it: ``plaintext`` (object or exact bytes) sealed."""
        server = server or self.keys.server
        kid = wire.key_id(server)
        if kid not in self.sessions:
            self.sessions[kid] = wire.SessionKey(server)
        return wire.seal(
            plaintext,
            agent=agent,
            plugin=plugin,
            session=self.sessions[kid],
            agent_key=agent_key or self.keys.agent,
        ).to_json()

    def envelope(
        self,
        data: dict[str, Any],
        *,
        seq: int,
        agent: str = "edge-1",
        plugin: str = "temperature",
        ts: int | None = None,
        server: RSA.RsaKey | None = None,
        agent_key: RSA.RsaKey | None = None,
    ) -> bytes:
        plaintext = {"seq": seq, "ts": now_ms() if ts is None else ts, "data": data}
        return self.seal(plaintext, agent=agent, plugin=plugin, server=server, agent_key=agent_key)

    def record(self, value: bytes | None, topic: str = TOPIC, partition: int = 0) -> Record:
        """The next record of the partition."""
        offset = self.offsets.get((topic, partition), 0)
        self.offsets[(topic, partition)] = offset + 1
        return Record(topic, partition, offset, value)

    def query(self, sql: str, **params: Any) -> list[tuple[Any, ...]]:
        with self.store.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql), params)]

    def stored_offsets(self) -> list[tuple[str, int, int]]:
        """(topic, partition, next offset) of every stored partition mark."""
        table = self.store.offsets  # through SQLAlchemy: "partition" is reserved on MariaDB
        with self.store.engine.connect() as conn:
            query = select(table.c.topic, table.c.partition, table.c.next_offset)
            return [tuple(row) for row in conn.execute(query)]

    def count(self, table: str) -> int:
        return self.query(f"SELECT COUNT(*) FROM {table}")[0][0]

    def rejected(self) -> list[dict[str, Any]]:
        with self.store.engine.connect() as conn:
            rows = conn.execute(text("SELECT * FROM rejected_messages ORDER BY id"))
            return [dict(row._mapping) for row in rows]


def run(pipeline: Pipeline, records: list[Record], store: Store | None = None) -> Stats:
    """One consumer iteration: process, commit, adopt the marks."""
    batch, stats = pipeline.process(records)
    (store or pipeline.store).commit(batch)
    pipeline.committed(batch)
    return stats


def reading(sensor: str = "cpu_thermal", value: Any = 48.3, **extra: Any) -> dict[str, Any]:
    return {"sensor": sensor, "value": value, **extra}


def temperature(*readings: dict[str, Any]) -> dict[str, Any]:
    return {"readings": list(readings or [reading()])}


def rejected_reasons(stats: Stats) -> dict[str, int]:
    return dict(stats.rejected)
