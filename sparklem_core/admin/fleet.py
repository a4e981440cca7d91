"""``sparklem agents`` as a text table; what each agent's state is and the JSON form
are :mod:`sparklem_core.fleet.state`'s, shared with the processor and ``serve``."""

from __future__ import annotations

from datetime import datetime

from sparklem_core.fleet.registry import one_line
from sparklem_core.fleet.state import AgentStatus


def table_rows(statuses: list[AgentStatus], now: datetime) -> list[tuple[str, ...]]:
    """The text table's rows, header first: last seen both relative and absolute."""
    rows = [("AGENT", "STATE", "ACTIVITY", "LAST SEEN", "LAST SEEN (UTC)", "MESSAGES",
             "REJECTIONS", "LAST REJECTION")]  # fmt: skip
    for s in statuses:
        last = s.last_seen
        rows.append(
            (
                one_line(s.agent_id),
                s.state,
                s.activity + (" (!)" if s.silent else ""),
                "-" if last is None else f"{ago((now - last).total_seconds())} ago",
                "-" if last is None else last.strftime("%Y-%m-%d %H:%M:%S"),
                str(s.messages),
                str(s.rejections),
                s.last_rejection_reason or "-",
            )
        )
    return rows


def ago(seconds: float) -> str:
    """A duration the way people read it: ``42s``, ``7m``, ``3h``, ``12d``."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
