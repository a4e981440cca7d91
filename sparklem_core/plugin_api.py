"""The types that cross the boundary between the core and a plugin."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Manifest:
    """What a plugin is: returned by its ``sparklem_manifest`` hook.

    ``topic`` defaults to ``sparklem.<name>``; ``agent_defaults`` are the settings an
    agent starts from (``interval`` in seconds, at least).
    """

    name: str
    version: str
    description: str = ""
    topic: str = ""
    agent_defaults: Mapping[str, Any] = field(default_factory=lambda: {"interval": 30})

    def __post_init__(self) -> None:
        if not self.topic:
            object.__setattr__(self, "topic", f"sparklem.{self.name}")


@dataclass(frozen=True)
class Message:
    """One authenticated, decrypted message, handed to its plugin."""

    agent_id: str
    plugin: str
    seq: int
    sent_at: datetime  # the plaintext's ``ts``, UTC
    data: dict[str, Any]  # the plugin's payload, a parsed JSON object as the agent sent it


@dataclass(frozen=True)
class RejectedReading:
    """One reading of a message that the plugin refused; its siblings are still stored."""

    detail: str
    reading: Any  # the reading as sent, stored as JSON in rejected_messages.raw


@dataclass
class PluginResult:
    """What a plugin makes of one message: rows per table, and readings it refused."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    rejected: list[RejectedReading] = field(default_factory=list)

    def add_row(self, table: str, row: dict[str, Any]) -> None:
        self.rows.setdefault(table, []).append(row)

    def reject(self, detail: str, reading: Any) -> None:
        self.rejected.append(RejectedReading(detail, reading))


class InvalidPayload(ValueError):
    """Raised by a plugin when a whole payload is unusable (reason ``invalid_payload``)."""
