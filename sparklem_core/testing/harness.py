""":class:`PluginHarness`: one plugin, sealed messages, the real pipeline, a SQLite file."""

from __future__ import annotations

import importlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

from Crypto.PublicKey import RSA
from sqlalchemy import select

from sparklem_core import wire
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import AgentRegistry
from sparklem_core.plugin_api import Manifest, Message, PluginResult
from sparklem_core.plugin_host import PluginHost, PluginInfo
from sparklem_core.processor.pipeline import Record, Stats
from sparklem_core.processor.wiring import build_pipeline
from sparklem_core.processor.writer import BatchWriter
from sparklem_core.settings.config import Config
from sparklem_core.settings.validation import plugin_settings

GROUP = "sparklem-testing"


@cache
def _key(role: str) -> RSA.RsaKey:
    """One RSA key per role and test process: generating them is the slow part."""
    return RSA.generate(2048)


@dataclass(frozen=True)
class Rejection:
    """One ``rejected_messages`` row: its reason code, detail and the offending bytes."""

    reason: str
    detail: str
    raw: str


@dataclass
class Outcome:
    """What one sent record became, read back from the database."""

    stats: Stats
    stored_rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejections: list[Rejection] = field(default_factory=list)

    def rows(self, table: str) -> list[dict[str, Any]]:
        """The rows this record stored in ``table`` (a table of the plugin), oldest first."""
        if table not in self.stored_rows:
            raise KeyError(f"{table!r} is not a table of this plugin: {sorted(self.stored_rows)}")
        return self.stored_rows[table]

    @property
    def stored(self) -> bool:
        """Whether the message was stored (its rows, if any, committed)."""
        return self.stats.stored == 1


class PluginHarness:
    """One plugin loaded alone, as the processor loads it, over a fresh SQLite database.

    :meth:`send` seals a payload as an agent does (the wire protocol, keys included)
    and stores it through :class:`~sparklem_core.processor.pipeline.Pipeline` and
    :class:`~sparklem_core.processor.writer.BatchWriter`, the processor's own path; the
    :class:`Outcome` holds the rows and rejections read back. :meth:`process` and
    :meth:`collect` call the plugin's hooks directly, with settings checked like the
    processor's and the agent's.
    """

    def __init__(
        self,
        plugin: ModuleType | str,
        directory: Path,
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """``directory``: an empty directory for the database and the agents' keys."""
        module = importlib.import_module(plugin) if isinstance(plugin, str) else plugin
        self.host = PluginHost(None, modules=[module])
        info = self.host.infos[0]
        if not info.ok or info.manifest is None:
            raise ValueError(f"plugin {info.key} did not load: {info.status}")
        self.info: PluginInfo = info
        self.manifest: Manifest = info.manifest
        self.certs = Path(directory) / "certificates"
        (self.certs / "agents").mkdir(parents=True, exist_ok=True)
        self.store = Store(f"sqlite:///{Path(directory) / 'sparklem.db'}", GROUP)
        self.host.register_tables(self.store.register_table, self.store.drop_registrations)
        if not self.info.ok:
            self.store.dispose()
            raise ValueError(f"plugin {self.manifest.name}: {self.info.status}")
        self.store.create_schema()
        self.tables = tuple(
            t for t in self.store.metadata.tables if self.store.table_owner(t) == self.manifest.name
        )
        self.registry = AgentRegistry(self.certs, refresh_s=3600)
        server = _key("server")
        config = Config(certificates=self.certs, plugins={self.manifest.name: dict(settings or {})})
        self.pipeline = build_pipeline(
            config, self.host, self.store, {wire.key_id(server): server}, self.registry
        )
        self.settings = self.pipeline.plugin_settings[self.manifest.name]
        self.writer = BatchWriter(self.pipeline, self.store)
        self._session = wire.SessionKey(server)
        self._seq: dict[str, int] = {}
        self._offset = 0

    def close(self) -> None:
        self.store.dispose()

    # --- an agent's side -----------------------------------------------------------

    def seal(
        self,
        data: Mapping[str, Any],
        *,
        agent: str = "edge-1",
        seq: int | None = None,
        ts: int | None = None,
    ) -> bytes:
        """A record value as agent ``agent`` (enrolled on first use) makes it.

        ``seq`` defaults to one above the agent's last; ``ts`` (milliseconds since the
        epoch) to now.
        """
        self._enroll(agent)
        seq = self._seq.get(agent, 0) + 1 if seq is None else seq
        self._seq[agent] = max(seq, self._seq.get(agent, 0))
        plaintext = {"seq": seq, "ts": int(time.time() * 1000) if ts is None else ts, "data": data}
        return wire.seal(
            plaintext,
            agent=agent,
            plugin=self.manifest.name,
            session=self._session,
            agent_key=_key("agent"),
        ).to_json()

    def _enroll(self, agent: str) -> None:
        pem = self.certs / "agents" / f"{agent}.pem"
        if not pem.exists():
            pem.write_bytes(_key("agent").public_key().export_key(format="PEM"))
            self.registry.refresh()

    # --- the processor's side ------------------------------------------------------

    def send(
        self,
        data: Mapping[str, Any],
        *,
        agent: str = "edge-1",
        seq: int | None = None,
        ts: int | None = None,
        received_at: datetime | None = None,
    ) -> Outcome:
        """Seal ``data`` as :meth:`seal` does and store it as the processor does.

        ``received_at``: when the processor receives it (default: now); ``ts`` then
        defaults to it, so that the message is not sent in the future.
        """
        if received_at is not None and ts is None:
            ts = int(_utc(received_at).timestamp() * 1000)
        value = self.seal(data, agent=agent, seq=seq, ts=ts)
        return self.send_record(value, received_at=received_at)

    def send_record(self, value: bytes | None, *, received_at: datetime | None = None) -> Outcome:
        """Store one record value, whatever its bytes, on the plugin's topic.

        ``received_at`` (timezone-aware): when the processor receives it, the
        ``Message.received_at`` the plugin gets; default: now.
        """
        clock = self.pipeline.clock
        at = None if received_at is None else _utc(received_at)
        before = {t: len(self.rows(t)) for t in self.tables}
        seen = len(self.rejections())
        record = Record(self.pipeline.topics[self.manifest.name], 0, self._offset, value)
        self._offset += 1
        if at is not None:
            self.pipeline.clock = lambda: at
        try:
            _batch, stats = self.writer.write([record])
        finally:
            self.pipeline.clock = clock
        return Outcome(
            stats,
            {t: self.rows(t)[before[t] :] for t in self.tables},
            self.rejections()[seen:],
        )

    def rows(self, table: str) -> list[dict[str, Any]]:
        """Every row of ``table`` in the database, in primary key order.

        SQLite hands datetimes back without a time zone: they are UTC.
        """
        tab = self.store.metadata.tables[table]
        with self.store.engine.connect() as conn:
            result = conn.execute(select(tab).order_by(*tab.primary_key.columns))
            return [dict(row._mapping) for row in result]

    def rejections(self) -> list[Rejection]:
        """Every ``rejected_messages`` row, oldest first."""
        tab = self.store.rejected
        query = select(tab.c.reason, tab.c.detail, tab.c.raw).order_by(tab.c.id)
        with self.store.engine.connect() as conn:
            return [Rejection(*row) for row in conn.execute(query)]

    def process(
        self,
        data: Mapping[str, Any],
        settings: Mapping[str, Any] | None = None,
        *,
        agent: str = "edge-1",
        seq: int = 1,
        sent_at: datetime | None = None,
        received_at: datetime | None = None,
    ) -> PluginResult:
        """Call ``sparklem_process`` directly: the plugin's result, before the core's checks.

        ``settings`` replace the harness's processor-side settings for this call.
        ``sent_at`` and ``received_at`` (timezone-aware: the message's times) default to now.
        """
        checked = self.settings if settings is None else self.checked(settings)
        now = datetime.now(UTC)
        received = now if received_at is None else _utc(received_at)
        message = Message(agent, self.manifest.name, seq, sent_at or now, dict(data), received)
        return self.host.process(self.info, message, checked)

    def checked(self, settings: Mapping[str, Any], side: str = "processor") -> dict[str, Any]:
        """``settings`` checked against the manifest, defaults filled in, as the core does."""
        return plugin_settings(self.manifest, settings, side)

    def collect(self, settings: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Call ``sparklem_collect`` with agent-side ``settings`` checked as the agent does.

        ``topic``, which an agent's bundle always holds, defaults to the manifest's.
        """
        bundled = {"topic": self.manifest.topic, **(settings or {})}
        return self.host.collect(self.info, self.checked(bundled, "agent"))


def _utc(at: datetime) -> datetime:
    """``at`` in UTC, as the processor hands times to plugins; a naive time is refused."""
    if at.tzinfo is None:
        raise ValueError(f"{at.isoformat()} has no time zone: give an aware datetime (UTC)")
    return at.astimezone(UTC)
