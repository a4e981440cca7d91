"""``tail``: stored readings and rejections, live, one line each."""

from __future__ import annotations

import argparse
import os
import sys

from sparklem_core.cli import args as types
from sparklem_core.cli.errors import CommandError
from sparklem_core.settings.config import Config


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "tail",
        parents=[common],
        help="stored readings and rejections, live, one line each",
        description="Follow what the processors store, as they commit it: one line per "
        "reading (time, agent, plugin, series and values) or rejection (reason, detail), "
        "read from the database's feed (sparklem_feed), no HTTP server needed. Starts at "
        "the newest event; Ctrl-C ends it. Text from records is escaped: no control "
        "character reaches the terminal. Colour on a terminal unless NO_COLOR is set.",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="P",
        help="only this plugin's events (repeat for several)",
    )
    parser.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="A",
        help="only this agent's events (repeat for several)",
    )
    parser.add_argument("--rejected", action="store_true", help="only rejections")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    start = parser.add_mutually_exclusive_group()
    start.add_argument(
        "--from-start",
        action="store_true",
        help="begin with the oldest event the feed still holds (retention: 1d)",
    )
    start.add_argument(
        "--since",
        type=types.event_id,
        metavar="EVENT_ID",
        help="resume after this event id (COMMITSEQ-PART-N, as --json prints)",
    )
    parser.set_defaults(func=run)


def run(config: Config, args: argparse.Namespace) -> int:
    import threading

    from sparklem_core.db.errors import check_database_url
    from sparklem_core.reading.feed import START, EventFilter
    from sparklem_core.reading.tail import TailError, follow, open_feed, printer

    check_database_url(config.database_url)
    try:
        reader = open_feed(config.database_url)
    except TailError as exc:
        raise CommandError(str(exc)) from None
    try:
        after = START if args.from_start else args.since or reader.head()
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        kinds = ("rejection",) if args.rejected else ()
        show = EventFilter(tuple(args.plugin), tuple(args.agent), kinds)
        write = printer(sys.stdout, as_json=args.json, colour=colour)
        follow(reader, after, show, write, threading.Event())  # until Ctrl-C
    finally:
        reader.engine.dispose()
    return 0
