"""Argument types shared by the commands: each turns a bad value into argparse's one line."""

from __future__ import annotations

import argparse
import contextlib
from datetime import datetime


def port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1 to 65535)")
    return number


def listen(value: str) -> str:
    """serve's ``--listen``: ``HOST:PORT``; not ``""``, which only http.listen may be."""
    from sparklem_core.settings.config import DEFAULT_SERVE_PORT, check_listen

    with contextlib.suppress(ValueError):
        if value:
            return check_listen(value)
    raise argparse.ArgumentTypeError(
        f"{value!r} is not HOST:PORT (port 1-65535), e.g. 127.0.0.1:{DEFAULT_SERVE_PORT}"
    )


def workers(value: str) -> int:
    from sparklem_core.processor.supervisor import parse_workers

    try:
        return parse_workers(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number or 'auto'") from None


def event_id(value: str) -> str:
    from sparklem_core.reading.feed import parse_event_id

    try:
        parse_event_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def time(value: str) -> datetime:
    from sparklem_core.reading.timeparse import parse_time

    try:
        return parse_time(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
