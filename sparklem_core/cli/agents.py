"""``agents``: the fleet, every enrolled or seen agent and which went silent."""

from __future__ import annotations

import argparse

from sparklem_core.cli.errors import CommandError
from sparklem_core.cli.table import print_table
from sparklem_core.settings.config import Config


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "agents",
        parents=[common],
        help="the fleet: every enrolled or seen agent, and which went silent",
        description="Every agent enrolled or revoked (certificates directory) or seen by the "
        "processors (sparklem_agents): state, activity, last seen (relative and UTC), messages "
        "stored, rejections. Silent: enrolled and no message for longer than "
        "fleet.silent_after_s, by default three times its shortest collection interval.",
    )
    parser.add_argument("--silent", action="store_true", help="only agents that went silent")
    parser.add_argument("--json", action="store_true", help="JSON for scripts, one object each")
    parser.set_defaults(func=run)


def run(config: Config, args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    from sparklem_core.admin.fleet import table_rows
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
