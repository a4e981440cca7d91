"""``main.py tail``: the feed, live, one escaped line per event."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import yaml
from harness import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st
from test_read_tables import TABLE, probe_store, rejection, row
from waiting import wait_for

from sparklem_core.db.batch import Batch
from sparklem_core.db.store import Store
from sparklem_core.reading.feed import EventFilter, FeedEvent, FeedReader
from sparklem_core.reading.tail import escape, format_json, format_line

T0 = datetime(2026, 11, 30, 3, 0, 0, 123456, tzinfo=UTC)
SGR = re.compile("\x1b\\[[0-9;]*m")  # tail's own colours


def unsafe(text: str) -> list[str]:
    """What a terminal would act on or hide: C0, DEL, C1 (ESC among them), bidi and other
    format characters, line separators, lone surrogates."""
    return [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")]


def reading_event(agent: object, sensor: object, value: object) -> FeedEvent:
    return FeedEvent(
        "1-0-0", "reading", "probe", TABLE, agent if isinstance(agent, str) else None, T0,
        {"row": {"agent_id": agent, "sensor": sensor, "celsius": value,
                 "measured_at": "2026-11-30T03:00:00Z"}, "time": "measured_at"},
    )  # fmt: skip


def rejection_event(agent: str | None, reason: str, detail: str) -> FeedEvent:
    return FeedEvent(
        "1-0-1", "rejection", "probe", None, agent, T0,
        {"reason": reason, "detail": detail, "topic": "t", "partition": 0, "offset": 1,
         "received_at": "2026-11-30T03:00:00Z"},
    )  # fmt: skip


def test_lines_show_time_agent_plugin_series_and_values_or_the_reason() -> None:
    line = format_line(reading_event("edge-1", "cpu", 41.5))
    assert line == "2026-11-30T03:00:00.123456Z  edge-1  probe  sensor=cpu  celsius=41.5"
    line = format_line(rejection_event(None, "malformed", "not JSON"))
    assert line == "2026-11-30T03:00:00.123456Z  -  probe  rejected malformed  not JSON"
    assert escape("a\x1b[2J\u202eb\\x\U000e0001é") == "a\\x1b[2J\\u202eb\\\\x\\U000e0001é"


HOSTILE = ["\x1b", "\x9b", "\x07", "\x7f", "\r", "\u202e", "\u2066", "\u200f", "\ufeff",
           "\u200d", "\u2028", "\ud800", "\U000e0001", "\\", "\x1b[2J", "\x1b]0;x\x07"]  # fmt: skip
text = st.lists(st.text(max_size=8) | st.sampled_from(HOSTILE), max_size=6).map("".join)


@settings(max_examples=300, deadline=None)
@given(agent=text, sensor=text | st.integers() | st.none(), detail=text, reason=text)
def test_no_control_character_from_a_record_reaches_the_terminal(
    agent: str, sensor: object, detail: str, reason: str
) -> None:
    for event in (reading_event(agent, sensor, detail), rejection_event(agent, reason, detail)):
        for line in (format_line(event), SGR.sub("", format_line(event, colour=True)),
                     format_json(event)):  # fmt: skip
            assert unsafe(line) == [], line
        assert json.loads(format_json(event))["agent_id"] == event.agent_id


def test_filters() -> None:
    reading, rejected = reading_event("edge-1", "cpu", 1.0), rejection_event("edge-2", "r", "d")
    assert EventFilter()(reading) and EventFilter()(rejected)
    assert not EventFilter(kinds=("rejection",))(reading)
    assert EventFilter(agents=("edge-2",))(rejected)
    assert not EventFilter(agents=("edge-2",))(reading)
    assert not EventFilter(plugins=("other",))(reading)


class Tail:
    """``main.py tail`` as a subprocess, its stdout lines collected as they come."""

    def __init__(self, tmp_path: Path, url: str, *args: str) -> None:
        config = tmp_path / "tail.yaml"
        config.write_text(yaml.safe_dump({"database": {"url": url}}))
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "tail", "--config", str(config), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "NO_COLOR": ""},
        )  # fmt: skip
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def stop(self) -> tuple[int, str]:
        """Ctrl-C: its exit status and stderr."""
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=30)
        self.reader.join(timeout=10)
        return self.proc.returncode, err


def test_tail_refuses_a_database_without_the_feed_in_one_line(tmp_path: Path) -> None:
    tail = Tail(tmp_path, f"sqlite:///{tmp_path}/none.sqlite3")
    _, err = tail.proc.communicate(timeout=60)
    assert tail.proc.returncode == 1 and len(err.splitlines()) == 1 and "no database" in err
    assert not (tmp_path / "none.sqlite3").exists()


def test_tail_json_follows_what_a_store_commits(tmp_path: Path, database_url: str) -> None:
    store: Store = probe_store(database_url)
    try:
        store.commit(Batch(rows={TABLE: [row("edge-0", "old", 0.0, T0)]}))  # before: not shown
        # --since the head: what is committed from now on, however soon tail is polling
        tail = Tail(tmp_path, database_url, "--json", "--since", FeedReader(store.engine).head())
        try:
            store.commit(Batch(rows={TABLE: [row("edge-1", "cpu\x1b[31m", 41.5, T0)]},
                               rejected=[rejection(7, "bad \u202e")]))  # fmt: skip
            wait_for(lambda: len(tail.lines) >= 2, timeout=30, message="tail printed nothing")
        finally:
            status, err = tail.stop()
        assert status in (0, 130) and "Traceback" not in err
        events = [json.loads(line) for line in tail.lines]
        assert [(e["kind"], e["agent_id"]) for e in events] == [
            ("reading", "edge-1"), ("rejection", "edge-1"),
        ]  # fmt: skip
        assert events[0]["data"]["row"]["sensor"] == "cpu\x1b[31m"  # escaped on the wire
        assert all(unsafe(line) == [] for line in tail.lines)
    finally:
        store.dispose()
