"""``demo``: the whole system on this machine (the ``dev`` extra)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparklem_core.cli.errors import CommandError
from sparklem_core.settings.config import Config


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "demo",
        parents=[common],
        help="the whole system on this machine",
        description="Start a local broker, a processor, a real agent on this "
        "machine and a simulated fleet; print what was stored. Needs the "
        "dev extra (pip install -e '.[dev]').",
    )
    parser.add_argument(
        "--dir", default="demo", help="where keys, database and logs go (default: ./demo)"
    )
    parser.add_argument("--agents", type=int, default=20, help="simulated agents (default 20)")
    parser.add_argument("--seconds", type=float, default=30, help="how long to run (default 30)")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="wipe the database of an earlier demo in --dir (without it, that is refused)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="after --seconds, keep everything running (the dashboard live, its agents "
        "sending) until Ctrl-C",
    )
    parser.set_defaults(func=run, uses_config=False)


def run(_config: Config | None, args: argparse.Namespace) -> int:
    from sparklem_core.dev.demo import DemoError, run_demo

    try:
        return run_demo(Path(args.dir), args.agents, args.seconds, fresh=args.fresh, keep=args.keep)
    except DemoError as exc:
        raise CommandError(str(exc)) from None
