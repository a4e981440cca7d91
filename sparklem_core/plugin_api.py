"""The types that cross the boundary between the core and a plugin."""

from __future__ import annotations

import re
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


# Characters some database refuses or mangles in text: C0 and C1 controls (NUL among them,
# which PostgreSQL cannot store at all), DEL, and lone surrogates (not encodable as UTF-8).
_UNSTORABLE_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text alike on every database, or None.

    The core runs this over every string of every row a plugin returns and refuses the
    row (``invalid_reading``) when it finds a problem; plugins may call it (or
    :func:`check_text`) to refuse the reading as sent instead.
    """
    found = _UNSTORABLE_TEXT.search(value)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "holds a NUL character"
    if "\ud800" <= char <= "\udfff":
        return f"holds a lone surrogate (U+{ord(char):04X})"
    return f"holds the control character U+{ord(char):04X}"


def check_text(value: object, what: str, max_chars: int) -> str:
    """``value`` if it is a storable string of 1 to ``max_chars`` characters.

    Raises :class:`InvalidPayload` (a ``ValueError``) naming ``what`` otherwise.
    """
    if not isinstance(value, str) or not 1 <= len(value) <= max_chars:
        raise InvalidPayload(f"'{what}' must be a string of 1 to {max_chars} characters")
    problem = text_problem(value)
    if problem is not None:
        raise InvalidPayload(f"'{what}' {problem}")
    return value
