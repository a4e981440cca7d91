"""``sparklem tail``: stored readings and rejections as they are committed, one line each.

It polls the feed (:class:`~sparklem_core.reading.feed.FeedReader`) on the database
itself, so it needs no HTTP server and works on every supported database. Every text it
prints came from an agent, a record or the database: :func:`escape` turns each control
character (C0, DEL, C1, ESC among them) and each Unicode bidirectional control into a
visible escape, so nothing in a record can move the cursor, recolour or reorder the
terminal's text.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy import Engine, create_engine, inspect, make_url
from sqlalchemy.exc import DBAPIError

from sparklem_core.db.read_tables import rfc3339
from sparklem_core.reading.feed import EventFilter, FeedEvent, FeedReader

log = logging.getLogger(__name__)

#: Seconds between polls of the feed.
POLL_INTERVAL_S = 0.5
_READ_LIMIT = 1000
# C0, DEL, C1 and the backslash (so that an escape printed is never ambiguous); beyond
# ASCII, each character is judged by its Unicode category (_HIDDEN).
_UNSAFE = re.compile("[\\\\\x00-\x1f\x7f-\x9f]|[^\x00-\x7f]")
# Controls, formats (the bidi embeddings, overrides, isolates and marks, zero-width
# joiners), line and paragraph separators, and lone surrogates (unprintable).
_HIDDEN = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
_COLOURS = {"time": "2", "agent": "36", "plugin": "35", "rejection": "31"}


class TailError(Exception):
    """Why tail cannot start: one line saying what to do."""


def escape(text: str) -> str:
    """``text`` with every control or invisible formatting character written as ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``, and ``\\`` as ``\\\\``."""
    return _UNSAFE.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    if code > 0x9F and unicodedata.category(char) not in _HIDDEN:
        return char
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _shown(value: Any) -> str:
    """A value from a record, escaped (``-`` for none)."""
    if value is None:
        return "-"
    return escape(value if isinstance(value, str) else json.dumps(value, default=str))


def format_line(event: FeedEvent, colour: bool = False) -> str:
    """One terminal line: time, agent, plugin, then series and values, or the rejection's
    reason and detail. Escaped; coloured with ANSI codes only if ``colour``."""

    def paint(text: str, what: str) -> str:
        return f"\x1b[{_COLOURS[what]}m{text}\x1b[0m" if colour else text

    head = [paint(rfc3339(event.at), "time"), paint(_shown(event.agent_id), "agent"),
            paint(_shown(event.plugin), "plugin")]  # fmt: skip
    if event.kind == "rejection":
        reason = _shown(event.data.get("reason"))
        body = [paint(f"rejected {reason}", "rejection"), _shown(event.data.get("detail"))]
    else:
        row = event.data.get("row")
        skip = {"agent_id", event.data.get("time")}
        body = [
            f"{_shown(name)}={_shown(value)}"
            for name, value in (row.items() if isinstance(row, dict) else ())
            if name not in skip
        ]
    return "  ".join([*head, *body])


def format_json(event: FeedEvent) -> str:
    """One JSON object; non-ASCII and DEL escaped too, so it is safe on a terminal as well."""
    return json.dumps(event.as_json(), default=str).replace("\x7f", "\\u007f")


def open_feed(url: str) -> FeedReader:
    """A reader on ``url``; :class:`TailError` if the database has no feed yet.

    A plain engine: the processor's SQLite engine takes the writer lock at each BEGIN,
    which a reader must never hold.
    """
    parsed = make_url(url)
    local = parsed.get_backend_name() == "sqlite" and parsed.database not in ("", ":memory:")
    if local and not Path(str(parsed.database)).is_file():  # connecting would create it
        raise TailError(f"no database at {parsed.database}: give --config or run `init`")
    engine: Engine = create_engine(url, pool_pre_ping=True)
    if not inspect(engine).has_table("sparklem_feed"):
        engine.dispose()
        raise TailError(
            "the database has no sparklem_feed table: run `init` (or a processor) of this "
            "version first"
        )
    return FeedReader(engine)


def follow(
    reader: FeedReader,
    after: str,
    show: EventFilter,
    write: Callable[[FeedEvent], None],
    stop: threading.Event,
    interval: float = POLL_INTERVAL_S,
) -> None:
    """Write each event after ``after`` that ``show`` matches, polling until ``stop``.

    A database that stops answering is logged once and retried at each poll.
    """
    failing = False
    while not stop.is_set():
        try:
            events = reader.read_after(after, _READ_LIMIT)
        except DBAPIError as exc:
            if not failing:
                first = str(exc.orig or exc).strip().splitlines()[0][:200]
                log.warning("reading the feed failed, retrying: %s", escape(first))
            failing = True
            stop.wait(interval)
            continue
        failing = False
        for event in events:
            if show(event):
                write(event)
        if events:
            after = events[-1].id
        if len(events) < _READ_LIMIT:  # caught up: wait for more
            stop.wait(interval)


def printer(out: TextIO, *, as_json: bool, colour: bool) -> Callable[[FeedEvent], None]:
    """Writes one line per event to ``out``, flushed (a pipe sees each as it comes)."""

    def write(event: FeedEvent) -> None:
        out.write((format_json(event) if as_json else format_line(event, colour)) + "\n")
        out.flush()

    return write
