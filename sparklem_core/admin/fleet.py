"""``sparklem agents`` as a text table; what each agent's state is and the JSON form
are :mod:`sparklem_core.processor.fleet_state`'s, shared with the processor and ``serve``."""

from __future__ import annotations

from datetime import datetime

from sparklem_core.processor.fleet_state import AgentStatus
from sparklem_core.processor.registry import one_line


def table_rows(statuses: list[AgentStatus], now: datetime) -> list[tuple[str, ...]]:
    """The text table's rows, header first: last seen both relative and absolute."""
    rows = [("AGENT", "STATE", "LAST SEEN", "LAST SEEN (UTC)", "MESSAGES", "REJECTIONS",
             "LAST REJECTION", "WHY REFUSED")]  # fmt: skip
    for s in statuses:
        last = s.last_seen
        rows.append(
            (
                one_line(s.agent_id),
                s.state + (" (!)" if s.silent else ""),
                "-" if last is None else f"{ago((now - last).total_seconds())} ago",
                "-" if last is None else last.strftime("%Y-%m-%d %H:%M:%S"),
                str(s.messages),
                str(s.rejections),
                s.last_rejection_reason or "-",
                one_line(s.problem) if s.problem else "-",
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
