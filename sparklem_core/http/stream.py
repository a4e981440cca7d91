"""``GET /api/v1/stream``: newly stored readings and rejections as Server-Sent Events.

One :class:`Broadcaster` per serve process polls the feed (:class:`FeedReader`, the
commit-ordered ``sparklem_feed``) in one background task and hands each event to every
client's bounded queue. A client whose queue is full (it reads slower than events come)
is dropped: it never slows the others or the database, and its ``EventSource``
reconnects with ``Last-Event-ID`` to get what it missed from the feed table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sparklem_core.db.errors import first_line
from sparklem_core.settings.config import mask_secrets

if TYPE_CHECKING:
    from sparklem_core.reading.feed import EventFilter, FeedEvent, FeedReader

log = logging.getLogger(__name__)

PAGE = 1000  # events read from the feed per query
RETRY_MS = 2000  # how soon an EventSource reconnects


@dataclass(eq=False)  # by identity: kept in sets
class Subscriber:
    """One connected client: what it wants, its queue, whether it was dropped as slow."""

    wanted: EventFilter
    queue: asyncio.Queue[FeedEvent]
    since: str  # the feed's last event read when it subscribed: its queue holds what follows
    dropped: bool = False


@dataclass(eq=False)
class Broadcaster:
    """The process's one feed reader, fanned out to every client's bounded queue."""

    reader: FeedReader
    poll_s: float
    buffer: int
    # Clients by the agents they follow, and those that follow every agent: an event is
    # offered only to its agent's clients (a hundred clients each on one agent cost one
    # dictionary lookup per event, not a hundred filter calls).
    by_agent: dict[str, set[Subscriber]] = field(default_factory=dict)
    any_agent: set[Subscriber] = field(default_factory=set)
    cursor: str = ""  # the last event read from the feed (set before any client subscribes)
    _task: asyncio.Task[None] | None = None
    _ready: asyncio.Event | None = None

    async def subscribe(self, wanted: EventFilter) -> Subscriber:
        """A new client's queue: every ``wanted`` event read from now on goes there too."""
        if self._task is None:
            self._ready = asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="sparklem-feed")
        assert self._ready is not None
        await self._ready.wait()  # the cursor is set: nothing committed from now is missed
        subscriber = Subscriber(wanted, asyncio.Queue(self.buffer), self.cursor)
        for agent in wanted.agents:
            self.by_agent.setdefault(agent, set()).add(subscriber)
        if not wanted.agents:
            self.any_agent.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self.any_agent.discard(subscriber)
        for agent in subscriber.wanted.agents:
            followers = self.by_agent.get(agent)
            if followers is not None:
                followers.discard(subscriber)
                if not followers:
                    del self.by_agent[agent]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        assert self._ready is not None
        cursor = None
        while cursor is None:
            try:
                cursor = self.cursor = await asyncio.to_thread(self.reader.head)
            except Exception as exc:  # the database is down: keep trying, say why
                log.warning("stream: cannot read the feed: %s", mask_secrets(first_line(exc)))
                await asyncio.sleep(max(self.poll_s, 1.0))
        self._ready.set()
        while True:
            try:
                events = await asyncio.to_thread(self.reader.read_after, cursor, PAGE)
            except Exception as exc:
                log.warning("stream: cannot read the feed: %s", mask_secrets(first_line(exc)))
                await asyncio.sleep(max(self.poll_s, 1.0))
                continue
            if events:
                cursor = self.cursor = events[-1].id
                self._fan_out(events)
            if len(events) < PAGE:
                await asyncio.sleep(self.poll_s)

    def _fan_out(self, events: list[FeedEvent]) -> None:
        # Filtered here, not by the client: only what it wants counts against its buffer.
        for event in events:
            followers = self.by_agent.get(event.agent_id or "", ())
            for subscriber in (*followers, *self.any_agent):
                if subscriber.dropped or not subscriber.wanted(event):
                    continue
                try:
                    subscriber.queue.put_nowait(event)
                except asyncio.QueueFull:
                    subscriber.dropped = True  # its generator ends at its next event
                    self.unsubscribe(subscriber)
                    log.info("stream: a client fell %d events behind; dropped", self.buffer)


def sse(event: FeedEvent) -> str:
    """One event in the SSE wire format: id, event, data."""
    data = json.dumps(event.as_json(), separators=(",", ":"))
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


async def events(
    broadcaster: Broadcaster,
    subscriber: Subscriber,
    last_event_id: str | None,
    keepalive_s: float,
    disconnected: Callable[[], Any],
) -> AsyncIterator[str]:
    """The text of one client's stream: catch-up after ``last_event_id``, then live events.

    ``subscriber`` is subscribed before the response starts, so nothing committed after
    the client's connection opened is missed; a new client's first message sets its
    Last-Event-ID to where its queue begins, so that a reconnect resumes from there.
    """
    from sparklem_core.reading.feed import parse_event_id

    wanted = subscriber.wanted
    try:
        yield f"retry: {RETRY_MS}\nid: {last_event_id or subscriber.since}\n\n"
        last = None if last_event_id is None else parse_event_id(last_event_id)
        if last_event_id is not None:
            cursor = last_event_id
            while True:  # what was stored since, from the feed table
                missed = await asyncio.to_thread(broadcaster.reader.read_after, cursor, PAGE)
                for event in missed:
                    if wanted(event):
                        yield sse(event)
                if missed:
                    cursor = missed[-1].id
                    last = parse_event_id(cursor)
                if len(missed) < PAGE:
                    break
        while not subscriber.dropped:
            try:
                event = await asyncio.wait_for(subscriber.queue.get(), keepalive_s)
            except TimeoutError:
                if await disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            if last is not None and parse_event_id(event.id) <= last:
                continue  # already sent from the table
            if not subscriber.dropped:
                yield sse(event)
    finally:
        broadcaster.unsubscribe(subscriber)
