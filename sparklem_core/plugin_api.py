"""The types that cross the boundary between the core and a plugin."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # the agent imports this module and never the database stack
    from sqlalchemy import Table
    from sqlalchemy.schema import SchemaItem

DEFAULT_INTERVAL_S = 30
MAX_TS_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last instant a datetime holds
SETTING_TYPES = (bool, int, float, str)
#: A plugin's name (its topic's suffix, wire.PLUGIN_NAME_RE) and a setting's name.
NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
SIDES = ("processor", "agent")
# Every plugin section has these; the core declares them (sparklem_core.settings.validation).
CORE_SETTINGS = ("enabled", "topic")


@dataclass(frozen=True)
class Setting:
    """One setting a plugin declares: ``plugins.<plugin>.<name>``.

    ``side="processor"``: read from the processor's ``config.yaml`` and passed to
    ``sparklem_process``; ``side="agent"``: read from the agent's bundle and passed to
    ``sparklem_collect``. ``type`` is ``bool``, ``int``, ``float`` or ``str``; a ``None``
    default makes the setting optional. ``ge``/``le`` bound numbers, bounds included.
    """

    name: str
    type: type
    default: Any
    description: str
    side: Literal["processor", "agent"] = "processor"
    ge: float | None = None
    le: float | None = None

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise ValueError(f"setting name {self.name!r} is not [a-z][a-z0-9_]{{0,63}}")
        if self.type not in SETTING_TYPES:
            raise TypeError(f"setting {self.name}: type must be bool, int, float or str")
        if self.side not in SIDES:
            raise ValueError(f"setting {self.name}: side must be 'processor' or 'agent'")
        numeric = self.type in (int, float)
        if (self.ge is not None or self.le is not None) and not numeric:
            raise TypeError(f"setting {self.name}: ge/le bound numbers only")
        default_ok = self.default is None or type(self.default) is self.type
        if self.type is float and type(self.default) is int:
            default_ok = True
        if not default_ok:
            raise TypeError(f"setting {self.name}: default must be a {self.type.__name__}")
        outside = (
            self.default is not None
            and numeric
            and not (
                (self.ge is None or self.default >= self.ge)
                and (self.le is None or self.default <= self.le)
            )
        )
        if outside:
            raise ValueError(f"setting {self.name}: default {self.default} is outside ge/le")


@dataclass(frozen=True)
class Manifest:
    """What a plugin is: returned by its ``sparklem_manifest`` hook.

    ``topic`` defaults to ``sparklem.<name>``. ``settings`` declares the plugin's
    settings (:class:`Setting`); ``check``, if given, is called with the processor-side
    settings, validated and with their defaults, and raises ``ValueError`` (one line) to
    refuse a combination (a minimum above a maximum, say).
    """

    name: str
    version: str
    description: str = ""
    topic: str = ""
    settings: Sequence[Setting] = ()
    check: Callable[[Mapping[str, Any]], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.topic:
            object.__setattr__(self, "topic", f"sparklem.{self.name}")
        object.__setattr__(self, "settings", tuple(self.settings))
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError(f"plugin {self.name}: a setting is declared twice")
        reserved = sorted(set(names) & set(CORE_SETTINGS))
        if reserved:
            raise ValueError(f"plugin {self.name}: {reserved[0]} is a core setting, not declared")
        for s in self.settings:
            if s.name == "interval" and (s.side != "agent" or s.type not in (int, float)):
                raise ValueError(f"plugin {self.name}: interval is an agent-side number")

    def declared(self, side: str) -> tuple[Setting, ...]:
        """The settings of one side (``processor`` or ``agent``)."""
        return tuple(s for s in self.settings if s.side == side)

    @property
    def agent_defaults(self) -> dict[str, Any]:
        """What an agent starts from: ``interval`` and the agent-side defaults."""
        return {
            "interval": DEFAULT_INTERVAL_S,
            **{s.name: s.default for s in self.declared("agent")},
        }


@dataclass(frozen=True)
class Message:
    """One authenticated, decrypted message, handed to its plugin."""

    agent_id: str
    plugin: str
    seq: int
    sent_at: datetime  # the plaintext's ``ts``, UTC
    data: dict[str, Any]  # the plugin's payload, a parsed JSON object as the agent sent it
    # When the processor received the record, UTC; a redriven record keeps its first arrival.
    received_at: datetime


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


class RegisterTable(Protocol):
    """``register`` as ``sparklem_register_tables`` receives it: the store's
    ``register_table`` with the plugin as owner (tests keep the two signatures equal)."""

    def __call__(
        self,
        name: str,
        *columns: SchemaItem,
        time: str | None = None,
        series: Sequence[str] = (),
        values: Sequence[str] = (),
        units: Mapping[str, str] | None = None,
    ) -> Table:
        """Add the table ``name`` of ``columns`` (``Column``, ``Index``...) and return it.

        ``time`` (required: omitted, the call raises) names its ``DateTime(timezone=True)``,
        NOT NULL column a row is measured at; ``series`` the columns naming one series;
        ``values`` the measured columns; ``units`` a value column's unit, at most
        16 characters (``"°C"``, ``"%"``: drawn 0-100, ``"B"``: bytes; ``""`` or absent:
        none), which the read API lists and the dashboard draws by.
        """
        ...


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
