"""``redrive``: quarantined records judged again with today's plugins, settings and agents."""

from __future__ import annotations

import argparse
import sys

from sparklem_core.cli import args as types
from sparklem_core.cli.errors import EXIT_FAILURE
from sparklem_core.settings.config import Config
from sparklem_core.wire.reasons import REASONS


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "redrive",
        parents=[common],
        help="process quarantined records again",
        description="Judge quarantined records (rejected_messages) again with today's "
        "plugins, settings and enrolled agents: each one is stored and leaves the quarantine, "
        "or stays with its new reason. Safe while processors run; running it twice stores "
        "nothing twice.",
    )
    parser.add_argument(
        "--reason",
        action="append",
        choices=REASONS,
        metavar="REASON",
        help=f"only records refused for REASON (repeatable): {', '.join(REASONS)}",
    )
    parser.add_argument("--plugin", help="only records of this plugin")
    parser.add_argument("--agent", help="only records of this agent")
    parser.add_argument(
        "--since",
        type=types.time,
        metavar="TIME",
        help="only records received at or after TIME (RFC 3339, or ms since the epoch)",
    )
    parser.add_argument("--dry-run", action="store_true", help="judge and report, change nothing")
    parser.set_defaults(func=run)


def run(config: Config, args: argparse.Namespace) -> int:
    from sparklem_core.processor.redrive import Redrive, Selection
    from sparklem_core.processor.wiring import prepare
    from sparklem_core.processor.writer import Unavailable
    from sparklem_core.settings.masking import mask_secrets

    setup = prepare(config)
    if not setup.plugins_running():
        return EXIT_FAILURE
    registry = setup.registry()
    pipeline = setup.pipeline(registry=registry)
    setup.store.create_schema()
    registry.use_database(setup.store)
    selection = Selection(tuple(args.reason or ()), args.plugin, args.agent, args.since)
    progress = lambda s: print(f"redrive: {s.line()}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        summary = Redrive(pipeline, setup.store, progress).run(selection, dry_run=args.dry_run)
    except Unavailable as exc:
        print(
            f"{args.prog}: database unavailable ({mask_secrets(str(exc))}); what was redriven "
            "is committed: run redrive again to go on",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        setup.store.dispose()
    print(f"{'dry run, nothing changed: ' if args.dry_run else ''}{summary.line()}")
    if summary.cut:
        shown = ", ".join(summary.cut[:20]) + (" ..." if len(summary.cut) > 20 else "")
        print(f"not redrivable (bytes cut when quarantined): {shown}")
    return 0
