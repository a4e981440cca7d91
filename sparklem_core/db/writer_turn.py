"""Turns at SQLite's one writer lock among the threads of one process, first come first served.

SQLite lets one transaction write at a time; a ``BEGIN IMMEDIATE`` that finds the lock
taken waits in SQLite's busy handler, which sleeps and polls. A thread that commits back
to back (the processor's loop when it is never idle) takes the lock again the instant it
lets it go, so a second writer in the same process, sleeping between polls, may wait
for ever (the pruner deleted 200 rows/s against 30,000 ingested). Threads that take a
:class:`WriterTurn` before they begin are served in the order they asked: a waiting
writer goes next, after at most the transaction in progress. Other processes on the same
file (``run --workers N``) still meet at SQLite's lock, as before.
"""

from __future__ import annotations

import threading
from collections import deque
from types import TracebackType


class WriterTurn:
    """A FIFO lock for one database's writers in this process; ``fair=False``: no lock at all
    (databases with row locks, where writers do not exclude each other)."""

    def __init__(self, *, fair: bool) -> None:
        self.fair = fair
        self._changed = threading.Condition()
        self._queue: deque[object] = deque()
        self._held = False

    def __enter__(self) -> None:
        if not self.fair:
            return
        me = object()
        with self._changed:
            self._queue.append(me)
            try:
                while self._held or self._queue[0] is not me:
                    self._changed.wait()
            except BaseException:  # interrupted while waiting: give our place up
                self._queue.remove(me)
                self._changed.notify_all()
                raise
            self._queue.popleft()
            self._held = True

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        if not self.fair:
            return
        with self._changed:
            self._held = False
            self._changed.notify_all()
