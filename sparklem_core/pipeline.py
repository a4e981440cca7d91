"""The per-record path, from Kafka record to a database batch, without Kafka or I/O.

record → size → envelope → agent key → signature → server key → plugin known →
session key (LRU by (kid, ek)) → AES-GCM → plaintext → clock skew → duplicate →
plugin → rows. Any failure becomes a ``rejected_messages`` row with its reason.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from Crypto.PublicKey import RSA

from sparklem_core import protocol
from sparklem_core.config import ProcessorSettings
from sparklem_core.plugin_api import Message
from sparklem_core.plugin_manager import PluginHost
from sparklem_core.registry import AgentRegistry
from sparklem_core.schema import plugin_settings as checked_settings
from sparklem_core.storage import Batch, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """The parts of a Kafka record the pipeline reads."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


@dataclass
class Stats:
    consumed: int = 0
    stored: int = 0  # messages whose rows were committed
    rows: int = 0
    duplicates: int = 0
    redelivered: int = 0  # records below the offset already committed to the database
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, other: Stats) -> None:
        self.consumed += other.consumed
        self.stored += other.stored
        self.rows += other.rows
        self.duplicates += other.duplicates
        self.redelivered += other.redelivered
        self.rejected.update(other.rejected)


class Pipeline:
    def __init__(
        self,
        settings: ProcessorSettings,
        server_keys: Mapping[str, RSA.RsaKey],
        registry: AgentRegistry,
        plugins: PluginHost,
        plugin_settings: Mapping[str, Mapping[str, Any]],
        store: Store,
    ) -> None:
        self.settings = settings
        self.server_keys = dict(server_keys)
        self.registry = registry
        self.plugins = plugins.loaded()
        self.host = plugins
        self.plugin_settings = {  # checked again here for callers other than the CLI
            n: checked_settings(i.manifest, plugin_settings.get(n) or {})
            for n, i in self.plugins.items()
            if i.manifest is not None
        }
        self.store = store
        self._seq: dict[tuple[str, str], int] = {}  # committed high-water marks
        # committed (next offset, topic id) per partition
        self._offsets: dict[tuple[str, int], tuple[int, str | None]] = {}
        self.session_key = lru_cache(maxsize=settings.key_cache_size)(self._unwrap)

    def forget_state(self) -> None:
        """Drop cached marks (after a rebalance or a conflict): reread from the database."""
        self._seq.clear()
        self._offsets.clear()

    def _unwrap(self, kid: str, ek: str) -> protocol.SessionCipher:
        return protocol.session_cipher(protocol.unwrap_key(ek, self.server_keys[kid]))

    def process(
        self,
        records: Sequence[Record],
        topic_id: Callable[[str, bool], str | None] = lambda _topic, _fresh: None,
    ) -> tuple[Batch, Stats]:
        """Turn records into one batch; pure apart from loading marks it has not cached.

        ``topic_id(topic, fresh)`` gives the broker's id of a topic (None if unknown).
        Offsets are stored with it: a record below the stored offset of a topic whose
        id changed comes from a topic that was deleted and created again (or a broker
        that lost its data), so it is new, not a redelivery.
        """
        batch, stats = Batch(), Stats(consumed=len(records))
        now = datetime.now(UTC)
        self._load_offsets({(r.topic, r.partition) for r in records})
        envelopes = [self._envelope(r) for r in records]
        self._load_seqs(
            {(e.agent, e.plugin) for e in envelopes if isinstance(e, protocol.Envelope)}
        )
        seq_now: dict[tuple[str, str], int] = {}
        for record, envelope in zip(records, envelopes, strict=True):
            tp = (record.topic, record.partition)
            stored_next, stored_id = self._offsets.get(tp, (None, None))
            if tp in batch.offsets:
                current_id = batch.offsets[tp][2]
            elif stored_next is not None and record.offset < stored_next:
                current_id = topic_id(record.topic, True)  # a redelivery, or a new topic?
                if current_id is None or stored_id is None or current_id == stored_id:
                    stats.redelivered += 1
                    continue
                log.warning(
                    "%s[%d] was recreated (topic id %s, was %s): consuming it from offset %d",
                    *tp,
                    current_id,
                    stored_id,
                    record.offset,
                )
            else:
                current_id = topic_id(record.topic, False)
            expected = batch.offsets[tp][0] if tp in batch.offsets else stored_next
            batch.offsets[tp] = (expected, record.offset + 1, current_id)
            try:
                if isinstance(envelope, protocol.Rejected):
                    raise envelope
                self._message(record, envelope, batch, stats, seq_now, now)
            except protocol.Rejected as rejected:
                self._reject(batch, stats, record, envelope, rejected, now)
        return batch, stats

    def refuse(self, record: Record, batch: Batch, detail: str) -> tuple[Batch, Stats]:
        """``batch`` (of this one record) with its rows replaced by an ``invalid_payload``."""
        envelope = self._envelope(record)
        refused = Batch(streams=batch.streams, offsets=batch.offsets)
        stats = Stats(consumed=1)
        rejected = protocol.Rejected(protocol.INVALID_PAYLOAD, detail)
        self._reject(refused, stats, record, envelope, rejected, datetime.now(UTC))
        return refused, stats

    def committed(self, batch: Batch) -> None:
        """Adopt a batch's marks once its transaction has committed."""
        for key, (_, new) in batch.streams.items():
            self._seq[key] = new
        for key, (_, new, topic_id) in batch.offsets.items():
            self._offsets[key] = (new, topic_id)

    # --- steps -------------------------------------------------------------------

    def _envelope(self, record: Record) -> protocol.Envelope | protocol.Rejected:
        value = record.value
        if value is None:
            return protocol.Rejected(protocol.MALFORMED, "record has no value")
        if len(value) > self.settings.max_message_bytes:
            return protocol.Rejected(
                protocol.TOO_LARGE,
                f"record is {len(value)} bytes; the limit is {self.settings.max_message_bytes}",
            )
        try:
            return protocol.parse_envelope(value)
        except protocol.Rejected as rejected:
            return rejected

    def _message(
        self,
        record: Record,
        env: protocol.Envelope,
        batch: Batch,
        stats: Stats,
        seq_now: dict[tuple[str, str], int],
        now: datetime,
    ) -> None:
        protocol.verify(env, self.registry.lookup(env.agent))
        if env.kid not in self.server_keys:
            raise protocol.Rejected(protocol.UNKNOWN_KEY, f"no server key with kid {env.kid}")
        info = self.plugins.get(env.plugin)
        if info is None:
            raise protocol.Rejected(
                protocol.UNKNOWN_PLUGIN, f"no enabled plugin named {env.plugin!r}"
            )
        plain = protocol.parse_plaintext(protocol.decrypt(env, self.session_key(env.kid, env.ek)))
        skew_ms = plain.ts - now.timestamp() * 1000
        if skew_ms > self.settings.clock_skew_s * 1000:
            raise protocol.Rejected(
                protocol.CLOCK_SKEW, f"'ts' is {skew_ms / 1000:.0f} s in the future"
            )
        stream = (env.agent, env.plugin)
        last = seq_now.get(stream, self._seq.get(stream, -1))
        if plain.seq <= last:
            stats.duplicates += 1
            log.debug("duplicate %s seq %d (last %d)", stream, plain.seq, last)
            return
        seq_now[stream] = plain.seq
        batch.streams[stream] = (self._seq.get(stream), plain.seq)

        message = Message(
            env.agent,
            env.plugin,
            plain.seq,
            datetime.fromtimestamp(plain.ts / 1000, UTC),
            plain.data,
        )
        try:
            result = self.host.process(info, message, self.plugin_settings[env.plugin])
            for table in result.rows:
                if self.store.table_owner(table) != env.plugin:
                    raise ValueError(f"plugin wrote to table {table!r}, which it did not register")
        except Exception as exc:
            detail = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            raise protocol.Rejected(protocol.INVALID_PAYLOAD, detail) from None
        for table, rows in result.rows.items():
            batch.rows.setdefault(table, []).extend(rows)
            stats.rows += len(rows)
        for refused in result.rejected:
            self._reject_reading(batch, stats, record, env, refused.detail, refused.reading, now)
        stats.stored += 1

    def _reject(
        self,
        batch: Batch,
        stats: Stats,
        record: Record,
        env: Any,
        rejected: protocol.Rejected,
        now: datetime,
    ) -> None:
        known = isinstance(env, protocol.Envelope)
        raw = record.value or b""
        batch.rejected.append(
            self._rejection(
                record,
                env.agent if known else None,
                env.plugin if known else None,
                rejected.reason,
                rejected.detail,
                raw.decode("utf-8", "replace"),
                now,
            )
        )
        stats.rejected[rejected.reason] += 1

    def _reject_reading(
        self,
        batch: Batch,
        stats: Stats,
        record: Record,
        env: protocol.Envelope,
        detail: str,
        reading: Any,
        now: datetime,
    ) -> None:
        raw = json.dumps(reading, default=str, separators=(",", ":"))
        batch.rejected.append(
            self._rejection(
                record, env.agent, env.plugin, protocol.INVALID_READING, detail, raw, now
            )
        )
        stats.rejected[protocol.INVALID_READING] += 1

    def _rejection(
        self,
        record: Record,
        agent: str | None,
        plugin: str | None,
        reason: str,
        detail: str,
        raw: str,
        now: datetime,
    ) -> dict[str, Any]:
        # PostgreSQL text cannot hold NUL; an unauthenticated sender must not be able to
        # make a rejection unstorable (the batch would then never commit).
        raw, detail = raw.replace("\x00", "\\u0000"), detail.replace("\x00", "\\u0000")
        limit = self.settings.rejected_raw_max_bytes
        if len(raw) > limit:
            raw = raw[:limit] + f"…[{len(raw) - limit} more characters]"
        return {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "agent_id": agent,
            "plugin": plugin,
            "reason": reason,
            "detail": detail[:1000],
            "raw": raw,
            "received_at": now,
        }

    def _load_offsets(self, keys: set[tuple[str, int]]) -> None:
        missing = keys - self._offsets.keys()
        if missing:
            self._offsets.update(self.store.load_offsets(missing))
            # Partitions never committed stay absent: every offset is new there.

    def _load_seqs(self, keys: set[tuple[str, str]]) -> None:
        missing = keys - self._seq.keys()
        if missing:
            self._seq.update(self.store.load_streams(missing))
