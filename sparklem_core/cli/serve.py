"""``serve``: the read API and the dashboard."""

from __future__ import annotations

import argparse

from sparklem_core.cli import args as types
from sparklem_core.cli.errors import CommandError
from sparklem_core.settings.config import Config


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "serve",
        parents=[common],
        help="the read API and dashboard (HTTP)",
        description="Serve the read API under /api/v1 (readings, aggregates, agents, "
        "rejections, a live stream; OpenAPI at /docs) and the dashboard at /, from the "
        "database in the config. Run any number beside the processors. Without "
        "serve.read_tokens or serve.admin_tokens it listens on loopback only. See "
        "docs/reading.md.",
    )
    parser.add_argument(
        "--listen",
        type=types.listen,
        metavar="HOST:PORT",
        help="where to listen (default: serve.listen, 127.0.0.1:8620)",
    )
    parser.set_defaults(func=run)


def run(config: Config, args: argparse.Namespace) -> int:
    from sparklem_core.http.server import ServeError
    from sparklem_core.http.server import run as serve

    try:
        return serve(config, args.listen or config.serve.listen)
    except ServeError as exc:
        raise CommandError(str(exc)) from None
