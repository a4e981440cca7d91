"""The per-record path, from Kafka record to a database batch, without Kafka or I/O.

record → size → envelope → agent key → signature → server key → plugin known on this
topic → session key (LRU by (kid, ek)) → AES-GCM → plaintext → clock skew → duplicate →
plugin → rows → storable text. Any failure becomes a ``rejected_messages`` row with its
reason, and the record's bytes a ``rejected_records`` row (whole once the signature
verified, cut to ``rejected_raw_max_bytes`` before); an exception of any other kind
becomes ``processing_error``. Nothing a record holds can raise out of :meth:`process`.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from Crypto.PublicKey import RSA

from sparklem_core import wire
from sparklem_core.db.batch import (
    Batch,
    OffsetMark,
    PartitionKey,
    RecordKey,
    RejectedRecord,
    Rejection,
    StreamKey,
    StreamMark,
)
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import AgentRegistry
from sparklem_core.plugin_api import Message, text_problem
from sparklem_core.plugin_host import PluginHost, PluginInfo
from sparklem_core.settings.config import ProcessorSettings
from sparklem_core.settings.validation import plugin_settings as checked_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """The parts of a Kafka record the pipeline reads."""

    topic: str
    partition: int
    offset: int
    value: bytes | None


# judge()'s rules: whether a message is new, and which part of it to store.
Admit = Callable[[wire.Envelope, wire.Plaintext], bool]
Narrow = Callable[[Message], Message]


@dataclass
class Stats:
    """What one or more batches did, broken down the way /metrics labels it.

    Label values are bounded: topics the processor subscribes to, loaded plugins, their
    tables, rejection reasons; a rejection's plugin only when authenticated and loaded
    (else ``""``), never a name a record chose.
    """

    consumed_by_topic: Counter[str] = field(default_factory=Counter)
    stored_by_plugin: Counter[str] = field(default_factory=Counter)  # messages committed
    rows_by_table: Counter[str] = field(default_factory=Counter)
    rejected_by: Counter[tuple[str, str]] = field(default_factory=Counter)  # (reason, plugin)
    duplicates: int = 0
    redelivered: int = 0  # records below the offset already committed to the database

    @property
    def consumed(self) -> int:
        return self.consumed_by_topic.total()

    @property
    def stored(self) -> int:
        return self.stored_by_plugin.total()

    @property
    def rows(self) -> int:
        return self.rows_by_table.total()

    @property
    def rejected(self) -> Counter[str]:
        """Rejections by reason; ``rejected[wire.UNKNOWN_AGENT]`` counts the records of
        agents never enrolled, which get no row in the fleet inventory (sparklem_agents)."""
        by_reason: Counter[str] = Counter()
        for (reason, _plugin), count in self.rejected_by.items():
            by_reason[reason] += count
        return by_reason

    def add(self, other: Stats) -> None:
        self.consumed_by_topic.update(other.consumed_by_topic)
        self.stored_by_plugin.update(other.stored_by_plugin)
        self.rows_by_table.update(other.rows_by_table)
        self.rejected_by.update(other.rejected_by)
        self.duplicates += other.duplicates
        self.redelivered += other.redelivered


class Pipeline:
    def __init__(
        self,
        settings: ProcessorSettings,
        server_keys: Mapping[str, RSA.RsaKey],
        registry: AgentRegistry,
        plugins: PluginHost,
        plugin_settings: Mapping[str, Mapping[str, Any]],
        store: Store,
        topics: Mapping[str, str] | None = None,
    ) -> None:
        """``topics``: each plugin's configured topic (default: its manifest's)."""
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
        self.topics = {
            name: (topics or {}).get(name) or info.manifest.topic
            for name, info in self.plugins.items()
            if info.manifest is not None
        }
        self.store = store
        self._seq: dict[StreamKey, int] = {}  # committed high-water marks
        # committed (next offset, topic id) per partition
        self._offsets: dict[PartitionKey, tuple[int, str | None]] = {}
        self.session_key = lru_cache(maxsize=settings.key_cache_size)(self._unwrap)
        self._tracebacks_logged: set[tuple[type[BaseException], str]] = set()
        #: When a batch of records is received (their ``Message.received_at``), aware UTC.
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    def forget_state(self) -> None:
        """Drop cached marks (after a rebalance or a conflict): reread from the database."""
        self._seq.clear()
        self._offsets.clear()

    def _unwrap(self, kid: str, ek: str) -> wire.SessionCipher:
        return wire.session_cipher(wire.unwrap_key(ek, self.server_keys[kid]))

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
        batch, stats = Batch(), Stats(Counter(r.topic for r in records))
        now = self.clock()
        self._load_offsets({(r.topic, r.partition) for r in records})
        envelopes = [self.envelope(r) for r in records]
        self._load_seqs({(e.agent, e.plugin) for e in envelopes if isinstance(e, wire.Envelope)})
        admit = self._admit_next_seq(batch, {})
        for record, envelope in zip(records, envelopes, strict=True):
            tp = PartitionKey(record.topic, record.partition)
            stored_next, stored_id = self._offsets.get(tp, (None, None))
            if tp in batch.offsets:
                current_id = batch.offsets[tp].topic_id
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
            expected = batch.offsets[tp].expected if tp in batch.offsets else stored_next
            batch.offsets[tp] = OffsetMark(expected, record.offset + 1, current_id)
            self.judge(record, envelope, batch, stats, now, admit)
        return batch, stats

    def judge(
        self,
        record: Record,
        envelope: wire.Envelope | wire.Rejected,
        batch: Batch,
        stats: Stats,
        now: datetime,
        admit: Admit,
        narrow: Narrow | None = None,
    ) -> None:
        """Every check of one record; its rows or its rejections are added to ``batch``.

        No offset bookkeeping: the consumer (:meth:`process`) and redrive both judge
        records here. ``admit(envelope, plaintext)`` says whether the message is new
        (False: a duplicate, counted and dropped); ``narrow(message)`` gives the part of
        the message to store (redrive of a single refused reading) or raises
        :class:`wire.Rejected`. ``now`` is when the record was received.
        """
        authenticated = False
        plain: wire.Plaintext | None = None
        try:
            if isinstance(envelope, wire.Rejected):
                raise envelope
            try:
                key = self.registry.lookup(envelope.agent)
            except wire.Rejected as refused:
                # A revoked agent still sending with its own key is that agent: its
                # rejections count in the inventory (a forgery of its id gets no row).
                authenticated = refused.reason == wire.REVOKED_AGENT and (
                    self.registry.signed_by_revoked(envelope)
                )
                raise
            wire.verify(envelope, key)
            authenticated = True
            info, plain = self._open(record, envelope, now)
            if not admit(envelope, plain):
                stats.duplicates += 1
                return
            self._message(record, envelope, info, plain, batch, stats, now, narrow)
        except wire.Rejected as rejected:
            self._reject(batch, stats, record, envelope, rejected, now, authenticated, plain)
        except Exception as exc:  # a bug met on this record: quarantine it, carry on
            where = envelope.plugin if isinstance(envelope, wire.Envelope) else ""
            first = (type(exc), where) not in self._tracebacks_logged
            self._tracebacks_logged.add((type(exc), where))
            log.warning(
                "%s[%d]@%d: %s while processing it; stored as %s",
                record.topic,
                record.partition,
                record.offset,
                _describe(exc)[:300],
                wire.PROCESSING_ERROR,
                exc_info=first,  # the traceback once per kind, not once per record
            )
            error = wire.Rejected(wire.PROCESSING_ERROR, _describe(exc))
            self._reject(batch, stats, record, envelope, error, now, authenticated, plain)

    def _admit_next_seq(self, batch: Batch, seq_now: dict[StreamKey, int]) -> Admit:
        """The consumer's rule: a message is new when its seq is above its stream's mark."""

        def admit(env: wire.Envelope, plain: wire.Plaintext) -> bool:
            stream = StreamKey(env.agent, env.plugin)
            last = seq_now.get(stream, self._seq.get(stream, -1))
            if plain.seq <= last:
                log.debug("duplicate %s seq %d (last %d)", stream, plain.seq, last)
                return False
            seq_now[stream] = plain.seq
            batch.streams[stream] = StreamMark(self._seq.get(stream), plain.seq)
            return True

        return admit

    def refuse(self, record: Record, batch: Batch, detail: str) -> tuple[Batch, Stats]:
        """``batch`` (of this one record) with its rows replaced by an ``invalid_payload``."""
        envelope = self.envelope(record)
        refused = Batch(streams=batch.streams, offsets=batch.offsets)
        stats = Stats(Counter([record.topic]))
        rejected = wire.Rejected(wire.INVALID_PAYLOAD, detail)
        kept = batch.records.get(RecordKey(record.topic, record.partition, record.offset))
        # Rows are only made of messages whose signature verified.
        authenticated = kept.authenticated if kept is not None else bool(batch.rows)
        self._reject(refused, stats, record, envelope, rejected, self.clock(), authenticated)
        return refused, stats

    def committed(self, batch: Batch) -> None:
        """Adopt a batch's marks once its transaction has committed."""
        for key, stream in batch.streams.items():
            self._seq[key] = stream.last_seq
        for key, offset in batch.offsets.items():
            self._offsets[key] = (offset.next_offset, offset.topic_id)

    # --- steps -------------------------------------------------------------------

    def envelope(self, record: Record) -> wire.Envelope | wire.Rejected:
        """The record's envelope, parsed but not verified, or why it has none."""
        value = record.value
        if value is None:
            return wire.Rejected(wire.MALFORMED, "record has no value")
        if len(value) > self.settings.max_message_bytes:
            return wire.Rejected(
                wire.TOO_LARGE,
                f"record is {len(value)} bytes; the limit is {self.settings.max_message_bytes}",
            )
        try:
            return wire.parse_envelope(value)
        except wire.Rejected as rejected:
            return rejected
        except Exception as exc:  # pragma: no cover - parse_envelope refuses what it cannot read
            return wire.Rejected(wire.PROCESSING_ERROR, _describe(exc))

    def _open(
        self, record: Record, env: wire.Envelope, now: datetime
    ) -> tuple[PluginInfo, wire.Plaintext]:
        """An authenticated record's plugin and plaintext, once the checks before it pass."""
        if env.kid not in self.server_keys:
            raise wire.Rejected(wire.UNKNOWN_KEY, f"no server key with kid {env.kid}")
        info = self.plugins.get(env.plugin)
        if info is None:
            raise wire.Rejected(wire.UNKNOWN_PLUGIN, f"no enabled plugin named {env.plugin!r}")
        if record.topic != self.topics[env.plugin]:
            # Per-topic produce rights (Kafka ACLs) must decide which plugin a record reaches.
            raise wire.Rejected(
                wire.UNKNOWN_PLUGIN,
                f"plugin {env.plugin!r} is not configured for topic {record.topic!r} "
                f"(its topic is {self.topics[env.plugin]!r})",
            )
        plain = wire.parse_plaintext(wire.decrypt(env, self.session_key(env.kid, env.ek)))
        skew_ms = plain.ts - now.timestamp() * 1000
        if skew_ms > self.settings.clock_skew_s * 1000:
            raise wire.Rejected(wire.CLOCK_SKEW, f"'ts' is {skew_ms / 1000:.0f} s in the future")
        return info, plain

    def _message(
        self,
        record: Record,
        env: wire.Envelope,
        info: PluginInfo,
        plain: wire.Plaintext,
        batch: Batch,
        stats: Stats,
        now: datetime,
        narrow: Narrow | None,
    ) -> None:
        """A new message: its plugin's rows, each checked, and its refused readings."""
        message = Message(env.agent, env.plugin, plain.seq, sent_at(plain), plain.data, now)
        if narrow is not None:
            message = narrow(message)
        try:
            result = self.host.process(info, message, self.plugin_settings[env.plugin])
        except ValueError as exc:  # InvalidPayload included: the plugin refuses the payload
            raise wire.Rejected(wire.INVALID_PAYLOAD, str(exc)) from None
        for table in result.rows:
            if self.store.table_owner(table) != env.plugin:
                raise wire.Rejected(
                    wire.PROCESSING_ERROR,
                    f"plugin wrote to table {table!r}, which it did not register",
                )
        for refused in result.rejected:
            self._reject_reading(
                batch, stats, record, env, plain, refused.detail, refused.reading, now
            )
        for table, rows in result.rows.items():
            stored = batch.rows.setdefault(table, [])
            for row in rows:
                problem = _row_problem(row)
                if problem is None:
                    stored.append(row)
                    stats.rows_by_table[table] += 1
                else:
                    self._reject_reading(
                        batch, stats, record, env, plain, f"{table}: {problem}", row, now
                    )
        stats.stored_by_plugin[env.plugin] += 1
        if narrow is None:
            batch.activity(env.agent, now).stored(env.plugin, now)
        # else a refused reading redriven: its message was counted when it was stored

    def _reject(
        self,
        batch: Batch,
        stats: Stats,
        record: Record,
        env: Any,
        rejected: wire.Rejected,
        now: datetime,
        authenticated: bool,
        plain: wire.Plaintext | None = None,
    ) -> None:
        known = isinstance(env, wire.Envelope)
        raw = record.value or b""
        text = raw[: self.settings.rejected_raw_max_bytes].decode("utf-8", "replace")
        if len(raw) > self.settings.rejected_raw_max_bytes:
            text += f"…[{len(raw) - self.settings.rejected_raw_max_bytes} more bytes]"
        agent = env.agent if known else None
        plugin = env.plugin if known else None
        batch.rejected.append(
            self._rejection(
                record, agent, plugin, rejected.reason, rejected.detail, text, now, plain
            )
        )
        self._keep_record(batch, record, agent, plugin, authenticated, now)
        label = plugin if authenticated and plugin and plugin in self.plugins else ""  # see Stats
        stats.rejected_by[rejected.reason, label] += 1
        if authenticated and agent is not None:  # forged ids get no inventory row
            batch.activity(agent, now).rejected(rejected.reason, now)

    def _reject_reading(
        self,
        batch: Batch,
        stats: Stats,
        record: Record,
        env: wire.Envelope,
        plain: wire.Plaintext,
        detail: str,
        reading: Any,
        now: datetime,
    ) -> None:
        try:
            raw = json.dumps(reading, default=str, separators=(",", ":"))
        except (ValueError, TypeError, RecursionError) as exc:  # a plugin's odd object
            raw = f"(not JSON: {_describe(exc)})"
        limit = self.settings.rejected_raw_max_bytes
        if len(raw) > limit:
            raw = raw[:limit] + f"…[{len(raw) - limit} more characters]"
        batch.rejected.append(
            self._rejection(
                record, env.agent, env.plugin, wire.INVALID_READING, detail, raw, now, plain
            )
        )
        self._keep_record(batch, record, env.agent, env.plugin, True, now)
        stats.rejected_by[wire.INVALID_READING, env.plugin] += 1
        batch.activity(env.agent, now).rejected(wire.INVALID_READING, now)

    def _keep_record(
        self,
        batch: Batch,
        record: Record,
        agent: str | None,
        plugin: str | None,
        authenticated: bool,
        now: datetime,
    ) -> None:
        """The record's bytes, once per record: whole when signed, else cut to the limit."""
        key = RecordKey(record.topic, record.partition, record.offset)
        if key in batch.records:
            return
        value = record.value or b""
        limit = len(value) if authenticated else self.settings.rejected_raw_max_bytes
        batch.records[key] = RejectedRecord(
            *key, agent, plugin, authenticated, len(value), len(value) > limit, value[:limit], now
        )

    def _rejection(
        self,
        record: Record,
        agent: str | None,
        plugin: str | None,
        reason: str,
        detail: str,
        raw: str,
        now: datetime,
        plain: wire.Plaintext | None,
    ) -> Rejection:
        """A ``rejected_messages`` row; ``seq`` and ``sent_at`` once the message was read."""
        return Rejection(
            record.topic,
            record.partition,
            record.offset,
            agent,
            plugin,
            reason,
            storable_text(detail[:1000]),
            storable_text(raw),
            now,
            plain.seq if plain is not None else None,
            sent_at(plain) if plain is not None else None,
        )

    def _load_offsets(self, keys: set[tuple[str, int]]) -> None:
        missing = keys - self._offsets.keys()
        if missing:
            self._offsets.update(self.store.load_offsets(missing))
            # Partitions never committed stay absent: every offset is new there.

    def _load_seqs(self, keys: set[tuple[str, str]]) -> None:
        missing = keys - self._seq.keys()
        if missing:
            self._seq.update(self.store.load_streams(missing))


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """``text`` with what some database refuses escaped: NUL, lone surrogates.

    Rejection rows carry text from the sender; it must never make them unstorable (the
    batch would then never commit).
    """
    if _UNSTORABLE.search(text) is None:
        return text
    return text.replace("\x00", "\\u0000").encode("utf-8", "backslashreplace").decode("utf-8")


def sent_at(plain: wire.Plaintext) -> datetime:
    """When the agent sent the message: its plaintext's ``ts``, UTC."""
    return datetime.fromtimestamp(plain.ts / 1000, UTC)


def _row_problem(row: Mapping[str, Any]) -> str | None:
    """Why a plugin's row cannot be stored alike on every database, or None."""
    for column, value in row.items():
        if type(value) is str:
            problem = text_problem(value)
            if problem is not None:
                return f"column {column!r} {problem}"
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]
