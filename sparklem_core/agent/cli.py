"""``sparklem-agent``: the agent's command line."""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sparklem_core import __version__
from sparklem_core.agent.agent import (
    DEFAULT_FLUSH_TIMEOUT_S,
    EXIT_FAILURE,
    EXIT_USAGE,
    PASSPHRASE_ENV,
    STATE_DIR_ENV,
    Agent,
    AgentError,
    default_state_dir,
)
from sparklem_core.plugin_host import default_plugins_dir
from sparklem_core.settings.logs import add_log_level_argument, setup_logging
from sparklem_core.settings.masking import mask_secrets, remember_secret
from sparklem_core.wire.bundle import (
    BUNDLE_NAME,
    BundleError,
    load_bundle,
    read_passphrase_file,
)


def passphrase(args: argparse.Namespace) -> str:
    """From --passphrase-file, the environment or a prompt; masked in logs from now on."""
    secret = _passphrase(args)
    remember_secret(secret)
    return secret


def _passphrase(args: argparse.Namespace) -> str:
    if args.passphrase_file:
        return read_passphrase_file(args.passphrase_file)
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if sys.stdin.isatty():
        with contextlib.suppress(EOFError):
            return getpass.getpass(f"passphrase for {args.bundle}: ")
    raise AgentError(f"no passphrase: use --passphrase-file FILE or set {PASSPHRASE_ENV}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparklem-agent",
        description="Sparkle-M edge agent: collects with the bundle's plugins and publishes "
        "sealed readings to Kafka, spooling them on disk while the broker is unreachable.",
        epilog=f"The passphrase comes from --passphrase-file or ${PASSPHRASE_ENV} (or a "
        f"prompt in a terminal). State (seq counters, spool) goes to --state-dir, else "
        f"${STATE_DIR_ENV}, else $STATE_DIRECTORY/<agent id> (systemd), else "
        "$XDG_STATE_HOME/sparklem-agent/<agent id> (~/.local/state/...). Keep it across "
        "restarts.",
    )
    parser.add_argument("--version", action="version", version=f"sparklem-agent {__version__}")
    parser.add_argument(
        "--bundle",
        type=Path,
        default=Path(BUNDLE_NAME),
        metavar="FILE",
        help=f"the agent's bundle (default: ./{BUNDLE_NAME})",
    )
    parser.add_argument("--passphrase-file", metavar="FILE", help="file holding the passphrase")
    parser.add_argument(
        "--once",
        action="store_true",
        help="collect every plugin once, send, wait for delivery, exit (1 if undelivered)",
    )
    parser.add_argument("--state-dir", type=Path, metavar="DIR", help="seq state and spool")
    parser.add_argument(
        "--plugins-dir",
        type=Path,
        default=default_plugins_dir(),
        metavar="DIR",
        help="directory plugins are loaded from, besides installed ones (default: ./plugins "
        "if present)",
    )
    parser.add_argument(
        "--flush-timeout",
        type=float,
        default=DEFAULT_FLUSH_TIMEOUT_S,
        metavar="S",
        help=f"--once: seconds to wait for delivery (default {DEFAULT_FLUSH_TIMEOUT_S:g})",
    )
    add_log_level_argument(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    try:
        bundle = load_bundle(args.bundle, passphrase(args))
        agent = Agent(
            bundle, args.state_dir or default_state_dir(bundle.agent_id), args.plugins_dir
        )
    except (AgentError, BundleError) as exc:
        print(f"sparklem-agent: error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    agent.install_signal_handlers()
    try:
        return agent.run(once=args.once, flush_timeout_s=args.flush_timeout)
    except AgentError as exc:
        print(f"sparklem-agent: error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        agent.close()
