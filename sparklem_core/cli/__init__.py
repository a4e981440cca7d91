"""``sparklem`` (``python3 main.py`` in a checkout): the processor's command line.

One module per command, each with ``add_parser`` (its arguments and help) and ``run``
(what it does). Modules import what their command needs inside ``run``, so that building
the parser, ``--help`` and light commands such as ``plugins new`` load no database stack.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sparklem_core import __version__
from sparklem_core.cli import (
    agents,
    demo,
    dev_broker,
    init,
    plugins,
    prune,
    redrive,
    run,
    serve,
    tail,
)
from sparklem_core.cli.errors import EXIT_FAILURE, EXIT_USAGE, CommandError, known_failure
from sparklem_core.commands import PROCESSOR, invoked_as
from sparklem_core.settings.config import ConfigError, load_config
from sparklem_core.settings.logs import add_log_level_argument, setup_logging
from sparklem_core.settings.masking import mask_secrets

log = logging.getLogger("sparklem")

PROG = PROCESSOR
#: In the order ``--help`` lists them.
COMMANDS = (run, init, plugins, prune, redrive, agents, serve, tail, demo, dev_broker)

__all__ = ["PROG", "CommandError", "build_parser", "main"]


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line; ``prog`` names the command in usage and error lines."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Sparkle-M processor: consumes agents' readings from Kafka, verifies, "
        "decrypts and stores them with SQLAlchemy.",
        epilog="Without a command, 'run' is assumed. Environment: SPARKLEM_BOOTSTRAP_SERVERS, "
        "SPARKLEM_DATABASE_URL, SPARKLEM_CERTIFICATES_DIR, SPARKLEM_GROUP_ID override the file.",
    )
    parser.add_argument("--version", action="version", version=f"sparklem {__version__}")
    parser.set_defaults(prog=prog, uses_config=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help="YAML config file (default: ./config.yaml when present)"
    )
    add_log_level_argument(common)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    invoked_as(prog)  # hints name the commands this user has
    parser = build_parser(prog)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = load_config(args.config) if args.uses_config else None
        return args.func(config, args)
    except CommandError as exc:
        print(f"{prog}: {mask_secrets(str(exc))}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print(f"{prog}: configuration error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sparklem agents | head`: the reader left, nothing went wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except Exception as exc:
        line = known_failure(exc)
        if line is not None:
            print(f"{prog}: {mask_secrets(line)}", file=sys.stderr)
            return EXIT_FAILURE
        # a bug, not a user mistake: say so with the traceback, exit non-zero
        log.exception("sparklem %s failed unexpectedly", args.command or "run")
        return EXIT_FAILURE
