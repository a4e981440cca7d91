"""Logging for every command (processor, agent): ``--log-level`` and the stderr handler.

Kept apart from :mod:`sparklem_core.cli` so the edge agent can use it without loading
the processor's database stack.
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from sparklem_core.settings.masking import SecretFilter

LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def add_log_level_argument(parser: argparse.ArgumentParser) -> None:
    """``--log-level``, the same for every command of the project."""
    parser.add_argument(
        "--log-level",
        default="INFO",
        metavar="L",
        choices=LOG_LEVELS + [level.lower() for level in LOG_LEVELS],
        help="DEBUG, INFO (default), WARNING or ERROR",
    )


def setup_logging(level: str) -> None:
    """Log to stderr at ``level``, with every secret of the configuration masked."""
    handler = logging.StreamHandler()
    worker = os.environ.get("SPARKLEM_WORKER")
    prefix = f"[worker {worker}] " if worker else ""
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)-7s {prefix}%(name)s: %(message)s")
    )
    handler.addFilter(SecretFilter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.getLogger("alembic").setLevel(max(logging.WARNING, logging.getLogger().level))


class OncePerMinute(logging.Filter):
    """librdkafka repeats a connection failure at every retry: keep one line a minute."""

    def __init__(self) -> None:
        super().__init__()
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = str(record.msg)[:60]
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < 60:
            return False
        self._last[key] = now
        return True
