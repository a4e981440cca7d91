"""What one consumed batch changes in the database: the pipeline makes it, the store writes it.

Every part is a named type: keys are named tuples (they still compare equal to plain
tuples), marks and rejections are frozen dataclasses whose fields are their table's
columns.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, NamedTuple


class StreamKey(NamedTuple):
    """One agent's messages for one plugin: ``seq`` rises along it."""

    agent_id: str
    plugin: str


class PartitionKey(NamedTuple):
    topic: str
    partition: int


class RecordKey(NamedTuple):
    """Where a Kafka record was read."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class StreamMark:
    """A stream's highest stored ``seq``: moved from ``expected`` (None: absent) to ``last_seq``."""

    expected: int | None
    last_seq: int


@dataclass(frozen=True)
class OffsetMark:
    """A partition's next offset to read, moved from ``expected`` (None: absent) to
    ``next_offset``, with the broker's id of the topic (None if unknown)."""

    expected: int | None
    next_offset: int
    topic_id: str | None


@dataclass(frozen=True)
class Rejection:
    """A ``rejected_messages`` row: one refused message, or one refused reading of one."""

    topic: str
    partition: int
    offset: int
    agent_id: str | None  # None until the envelope parsed
    plugin: str | None
    reason: str
    detail: str
    raw: str
    received_at: datetime
    seq: int | None = None  # once the message was decrypted: what redriving a reading needs
    sent_at: datetime | None = None  # the plaintext's ``ts``

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RejectedRecord:
    """A ``rejected_records`` row: the bytes of a record that was (partly) rejected."""

    topic: str
    partition: int
    offset: int
    agent_id: str | None
    plugin: str | None
    authenticated: bool  # its signature verified: the bytes are kept whole
    size: int  # of the record as it arrived
    truncated: bool  # value holds fewer than size bytes
    value: bytes
    received_at: datetime

    def row(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Redriven:
    """A ``sparklem_redriven`` row: a message, or one refused reading of it, that redrive
    stored, and where that copy had been quarantined."""

    agent_id: str
    plugin: str
    seq: int
    part: str  # WHOLE_MESSAGE, or a refused reading's digest
    topic: str
    partition: int
    offset: int
    redriven_at: datetime

    def row(self) -> dict[str, Any]:
        return asdict(self)


# Redriven.part of a whole message.
WHOLE_MESSAGE = ""


@dataclass
class AgentActivity:
    """What a batch saw of one authenticated agent: one ``sparklem_agents`` upsert, and one
    ``sparklem_agent_plugins`` upsert per plugin it stored a message of (times are when
    the processor received the records, never the agent's clock)."""

    first_at: datetime
    last_at: datetime
    messages: int = 0  # stored
    rejections: int = 0  # rejected_messages rows
    last_rejection: str | None = None  # its reason
    last_rejection_at: datetime | None = None
    plugins: dict[str, PluginActivity] = field(default_factory=dict)

    def seen(self, at: datetime) -> None:
        self.first_at, self.last_at = min(self.first_at, at), max(self.last_at, at)

    def stored(self, plugin: str, at: datetime) -> None:
        self.seen(at)
        self.messages += 1
        activity = self.plugins.get(plugin)
        if activity is None:
            self.plugins[plugin] = PluginActivity(at, 1)
        else:
            activity.last_at = max(activity.last_at, at)
            activity.messages += 1

    def rejected(self, reason: str, at: datetime) -> None:
        self.seen(at)
        self.rejections += 1
        if self.last_rejection_at is None or at >= self.last_rejection_at:
            self.last_rejection, self.last_rejection_at = reason, at

    def add(self, other: AgentActivity) -> None:
        self.seen(other.first_at)
        self.seen(other.last_at)
        self.messages += other.messages
        for plugin, activity in other.plugins.items():
            mine = self.plugins.setdefault(plugin, PluginActivity(activity.last_at, 0))
            mine.last_at = max(mine.last_at, activity.last_at)
            mine.messages += activity.messages
        self.rejections += other.rejections
        at = other.last_rejection_at
        if at is not None and (self.last_rejection_at is None or at >= self.last_rejection_at):
            self.last_rejection, self.last_rejection_at = other.last_rejection, at


@dataclass
class PluginActivity:
    """One agent's stored messages of one plugin in a batch."""

    last_at: datetime
    messages: int


@dataclass
class Batch:
    """What one consumed batch changes in the database, written in one transaction."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # table -> plugin rows
    rejected: list[Rejection] = field(default_factory=list)
    records: dict[RecordKey, RejectedRecord] = field(default_factory=dict)
    streams: dict[StreamKey, StreamMark] = field(default_factory=dict)
    offsets: dict[PartitionKey, OffsetMark] = field(default_factory=dict)
    # Redrive: the quarantine rows it takes out (each must still be there, else Conflict)
    # and what it stored (each new, else Conflict).
    released_messages: list[int] = field(default_factory=list)  # rejected_messages ids
    released_records: list[int] = field(default_factory=list)  # rejected_records ids
    redriven: list[Redriven] = field(default_factory=list)
    agents: dict[str, AgentActivity] = field(default_factory=dict)  # by agent id

    def activity(self, agent_id: str, at: datetime) -> AgentActivity:
        """The agent's entry, made on first use: only for an authenticated agent."""
        entry = self.agents.get(agent_id)
        if entry is None:
            entry = self.agents[agent_id] = AgentActivity(at, at)
        return entry

    def merge(self, other: Batch) -> None:
        """Add ``other`` (a later batch) to this one; its offsets win, and a stream's mark
        moves from where it was before both to the higher ``seq`` of the two."""
        for table, rows in other.rows.items():
            self.rows.setdefault(table, []).extend(rows)
        self.rejected.extend(other.rejected)
        self.records.update(other.records)
        for key, mark in other.streams.items():
            first = self.streams.get(key)
            if first is not None:
                mark = StreamMark(first.expected, max(first.last_seq, mark.last_seq))
            self.streams[key] = mark
        self.offsets.update(other.offsets)
        self.released_messages.extend(other.released_messages)
        self.released_records.extend(other.released_records)
        self.redriven.extend(other.redriven)
        for agent_id, activity in other.agents.items():
            self.activity(agent_id, activity.first_at).add(activity)  # a copy: both may be reused
