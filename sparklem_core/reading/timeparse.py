"""Times as people and scripts write them: RFC 3339 with a zone, or ms since the epoch."""

from __future__ import annotations

from datetime import UTC, datetime

from sparklem_core.plugin_api import MAX_TS_MS

MAX_TEXT = 64  # longer than any RFC 3339 time: not echoed back whole


def parse_time(text: str, name: str | None = None) -> datetime:
    """``text`` as an aware UTC datetime; ``ValueError`` in one line (naming ``name``)."""
    where = f"{name}: " if name else ""
    shown = repr(text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "...")
    if text.isascii() and text.isdigit():
        ms = int(text)
        if ms > MAX_TS_MS:
            raise ValueError(f"{where}{shown} ms is after the year 9999")
        return datetime.fromtimestamp(ms / 1000, UTC)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{where}{shown} is neither RFC 3339 (2026-11-30T04:00:00Z) "
            "nor milliseconds since the epoch"
        ) from None
    if value.tzinfo is None:
        raise ValueError(f"{where}{shown} has no time zone: add Z or an offset such as +01:00")
    try:
        return value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+01:00 is before the first datetime
        raise ValueError(f"{where}{shown} is outside the years 1 to 9999 in UTC") from None
