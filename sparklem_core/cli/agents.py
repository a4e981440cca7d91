"""``agents``: the fleet, every enrolled or seen agent and which went silent.

What each agent's state is, and the JSON form, are :mod:`sparklem_core.fleet.state`'s,
shared with the processor and ``serve``; this module only draws the text table.
"""

from __future__ import annotations

import argparse
from datetime import datetime
from typing import TYPE_CHECKING

from sparklem_core.cli.errors import CommandError
from sparklem_core.cli.table import print_table
from sparklem_core.settings.config import Config

if TYPE_CHECKING:
    from sparklem_core.fleet.state import AgentStatus


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "agents",
        parents=[common],
        help="the fleet: every enrolled or seen agent, and which went silent",
        description="Every agent enrolled, revoked or refused (certificates directory, "
        "sparklem_enrollments) or seen by the processors (sparklem_agents): its state (see "
        "docs/operations.md, Agent states), last seen (relative and UTC), messages stored, "
        "rejections, why its key is refused. "
        "Silent: enrolled and no message for longer than fleet.silent_after_s, by default "
        "three times its shortest collection interval.",
    )
    parser.add_argument("--silent", action="store_true", help="only agents that went silent")
    parser.add_argument("--json", action="store_true", help="JSON for scripts, one object each")
    parser.set_defaults(func=run)


def run(config: Config, args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from sparklem_core.db.errors import check_database_url
    from sparklem_core.fleet.state import FleetError, inventory

    check_database_url(config.database_url)
    now = datetime.now(UTC)
    try:
        statuses = inventory(config, now)
    except FleetError as exc:
        raise CommandError(str(exc)) from None
    if args.silent:
        statuses = [s for s in statuses if s.silent]
    if args.json:
        print(json.dumps([s.document(now) for s in statuses], indent=2))
    elif statuses:
        print_table(table_rows(statuses, now))
    else:
        print("no silent agents" if args.silent else "no agents enrolled or seen")
    return 0


def table_rows(statuses: list[AgentStatus], now: datetime) -> list[tuple[str, ...]]:
    """The text table's rows, header first: last seen both relative and absolute."""
    from sparklem_core.fleet.registry import one_line

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
