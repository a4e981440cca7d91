"""Polling helper for tests: wait for a condition instead of sleeping and hoping.

from waiting import wait_for

rows = wait_for(lambda: count_rows(engine) == 10 and count_rows(engine),
                timeout=30, message="processor did not store 10 rows")
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 30,
    interval: float = 0.1,
    message: str = "condition not met",
) -> T:
    """Call *predicate* every *interval* seconds until it returns a truthy value.

    Returns that value. Raises ``AssertionError`` with *message* (and the last value
    seen) when *timeout* seconds pass first. Exceptions raised by *predicate* propagate.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout:g}s; last value: {result!r})")
        time.sleep(interval)
