"""``prune``: one pass of the pruner the processor runs in the background."""

from __future__ import annotations

import argparse

from sparklem_core.cli.errors import EXIT_FAILURE
from sparklem_core.settings.config import Config, format_duration


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "prune",
        parents=[common],
        help="delete, once, the rows their table's retention no longer keeps",
        description="One pass of the pruner the processor runs in the background: delete, "
        "in small transactions, the rows each table's retention no longer keeps, and print "
        "how many per table. Skips (exit 0) if another processor is pruning now.",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="count what would be removed; change nothing"
    )
    parser.set_defaults(func=run)


def run(config: Config, args: argparse.Namespace) -> int:
    import signal
    import threading

    from sparklem_core.processor.retention import Pruner
    from sparklem_core.processor.wiring import prepare

    setup = prepare(config)
    if not setup.retention:
        print(
            "no table has a retention: nothing to prune (see retention: in docs/configuration.md)"
        )
        return 0
    setup.store.create_schema()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # the batch in flight commits, then out
        signal.signal(signum, lambda *_: stop.set())
    pruner = Pruner(setup.store, setup.retention, config.processor, stop=stop)
    try:
        report = pruner.run_pass(dry_run=args.dry_run)
    finally:
        setup.store.dispose()
    if not report.ran:
        print("another processor is pruning this database now; nothing done")
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for done in report.tables:
        line = f"{done.table:<24} older than {format_duration(done.keep):>5}: {verb} {done.rows}"
        if done.waiting:
            line += " (no rows stored that long ago yet: plugin tables count from arrival)"
        elif not done.finished:
            line += " (stopped before the end: the next pass carries on)"
        print(line)
    return 0 if all(done.finished for done in report.tables) else EXIT_FAILURE
