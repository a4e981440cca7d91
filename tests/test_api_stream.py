"""``GET /api/v1/stream``: live events through a real server, resuming, slow clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_env import (
    ADMIN_TOKEN,
    READ_TOKEN,
    commit,
    make_config,
    open_schema,
    running,
    temperature_rows,
)

from sparklem_core.http.app import create_app
from sparklem_core.http.stream import Broadcaster, events
from sparklem_core.reading.feed import EventFilter, FeedReader

TEMPERATURE = "temperature_readings"
TIMEOUT = httpx.Timeout(20.0)


def sse_events(lines: Iterator[str], count: int) -> list[dict[str, Any]]:
    """The next ``count`` events of an SSE body: id, event and data of each."""
    found: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    for line in lines:
        if line == "":
            if "event" in current:
                found.append(current)
                if len(found) == count:
                    return found
            current = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            current[name] = json.loads(value) if name == "data" else value
    raise AssertionError(f"the stream ended after {len(found)} of {count} events")


def connected(lines: Iterator[str]) -> None:
    """Read up to the stream's first field (retry): the client is subscribed from then on."""
    for line in lines:
        if line.startswith("retry:"):
            return
    raise AssertionError("the stream ended before it started")


def test_a_reading_committed_while_connected_arrives(tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path, database_url)
    store = open_schema(config)
    try:
        with running(create_app(config, store)) as server, httpx.stream(
            "GET", f"{server.url}/api/v1/stream", params={"agent": "a-2"}, timeout=TIMEOUT
        ) as response:  # fmt: skip
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.iter_lines()
            connected(lines)
            rows = temperature_rows(30)
            commit(store, TEMPERATURE, rows)
            mine = [r for r in rows if r["agent_id"] == "a-2"]
            got = sse_events(lines, len(mine))
            assert {e["event"] for e in got} == {"reading"}
            assert [e["data"]["data"]["row"]["celsius"] for e in got] == [
                r["celsius"] for r in mine
            ]
            assert all(e["id"] == e["data"]["id"] for e in got)
    finally:
        store.dispose()


def test_reconnecting_with_last_event_id_gets_exactly_what_it_missed(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    store = open_schema(config)
    url_params = {"plugin": "temperature"}
    try:
        with running(create_app(config, store)) as server:
            url = f"{server.url}/api/v1/stream"
            with httpx.stream("GET", url, params=url_params, timeout=TIMEOUT) as response:
                lines = response.iter_lines()
                connected(lines)
                commit(store, TEMPERATURE, temperature_rows(5, seed=1))
                last = sse_events(lines, 5)[-1]["id"]
            commit(store, TEMPERATURE, temperature_rows(4, seed=2))  # while away
            commit(store, TEMPERATURE, temperature_rows(3, seed=3))
            missed = FeedReader(store.engine).read_after(last)
            assert len(missed) == 7
            headers = {"Last-Event-ID": last}
            with httpx.stream(
                "GET", url, params=url_params, headers=headers, timeout=TIMEOUT
            ) as response:
                lines = response.iter_lines()
                connected(lines)
                assert [e["id"] for e in sse_events(lines, 7)] == [e.id for e in missed]
                commit(store, TEMPERATURE, temperature_rows(2, seed=4))  # then live, no repeat
                live = FeedReader(store.engine).read_after(missed[-1].id)
                assert [e["id"] for e in sse_events(lines, 2)] == [e.id for e in live]
    finally:
        store.dispose()


def test_the_session_cookie_opens_the_stream_and_keepalives_flow(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3", read_tokens=[READ_TOKEN],
                         admin_tokens=[ADMIN_TOKEN], stream_keepalive_s=0.2)  # fmt: skip
    store = open_schema(config)
    try:
        with running(create_app(config, store)) as server, httpx.Client(
            base_url=server.url, timeout=TIMEOUT
        ) as client:  # fmt: skip
            with client.stream("GET", "/api/v1/stream") as refused:
                assert refused.status_code == 401
            assert client.post("/api/v1/session", json={"token": READ_TOKEN}).status_code == 200
            with client.stream("GET", "/api/v1/stream") as response:
                assert response.status_code == 200
                lines = response.iter_lines()
                connected(lines)
                assert any(
                    line == ": keep-alive" for line, _ in zip(lines, range(10), strict=False)
                )
    finally:
        store.dispose()


def test_a_slow_client_is_dropped_and_the_others_get_everything(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    store = open_schema(config)

    async def scenario() -> tuple[list[str], list[str]]:
        broadcaster = Broadcaster(FeedReader(store.engine), poll_s=0.05, buffer=5)
        every = EventFilter()
        slow = events(
            broadcaster, await broadcaster.subscribe(every), None, 30, _never_disconnected
        )
        fast = events(
            broadcaster, await broadcaster.subscribe(every), None, 30, _never_disconnected
        )
        assert (await anext(slow)).startswith("retry:")  # subscribed; then reads nothing
        assert (await anext(fast)).startswith("retry:")
        fast_got = []
        for seed in range(5):  # two events a batch: the fast client keeps up
            await asyncio.to_thread(commit, store, TEMPERATURE, temperature_rows(2, seed))
            fast_got += [await asyncio.wait_for(anext(fast), 20) for _ in range(2)]
        slow_got = [text async for text in slow]  # what was queued, then the end
        await fast.aclose()
        await broadcaster.close()
        return fast_got, slow_got

    try:
        fast_got, slow_got = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        store.dispose()
    assert all(text.startswith("id: ") for text in fast_got)
    assert len(fast_got) == 10
    assert len(slow_got) <= 5  # dropped once its 5 places were full: its stream ended


async def _never_disconnected() -> bool:
    return False


@pytest.mark.parametrize("bad", ["x", "1-2", "-1-0-0", "9" * 30 + "-0-0"])
def test_a_bad_last_event_id_is_a_400(tmp_path: Path, bad: str) -> None:
    from fastapi.testclient import TestClient

    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    store = open_schema(config)
    with TestClient(create_app(config, store)) as client:
        answer = client.get("/api/v1/stream", headers={"Last-Event-ID": bad})
        assert answer.status_code == 400 and answer.json()["param"] == "last_event_id"
    store.dispose()


def test_only_what_a_client_asked_for_fills_its_buffer(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    store = open_schema(config)
    rows = temperature_rows(60)  # 20 or so for each of three agents
    mine = [r for r in rows if r["agent_id"] == "a-1"]

    async def scenario() -> list[str]:
        broadcaster = Broadcaster(FeedReader(store.engine), poll_s=0.05, buffer=len(mine))
        one_agent = await broadcaster.subscribe(EventFilter(agents=("a-1",)))
        stream = events(broadcaster, one_agent, None, 30, _never_disconnected)
        assert (await anext(stream)).startswith("retry:")
        await asyncio.to_thread(commit, store, TEMPERATURE, rows)  # 60 events in one page
        got = [await asyncio.wait_for(anext(stream), 20) for _ in mine]
        await stream.aclose()
        await broadcaster.close()
        return got

    try:
        got = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        store.dispose()
    celsius = [json.loads(text.split("data: ", 1)[1])["data"]["row"]["celsius"] for text in got]
    assert celsius == [r["celsius"] for r in mine]


def test_a_new_client_is_told_where_its_stream_begins(tmp_path: Path) -> None:
    """Its first message sets Last-Event-ID, so a reconnect gets what came while it was away."""
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    store = open_schema(config)
    commit(store, TEMPERATURE, temperature_rows(3))  # stored before the client came

    async def scenario() -> tuple[str, list[str]]:
        broadcaster = Broadcaster(FeedReader(store.engine), poll_s=0.05, buffer=100)
        stream = events(broadcaster, await broadcaster.subscribe(EventFilter()), None, 30,
                        _never_disconnected)  # fmt: skip
        first = await anext(stream)
        await stream.aclose()  # the client goes away; two more are stored meanwhile
        await asyncio.to_thread(commit, store, TEMPERATURE, temperature_rows(2, 7))
        since = first.split("id: ", 1)[1].strip()
        again = events(broadcaster, await broadcaster.subscribe(EventFilter()), since, 30,
                       _never_disconnected)  # fmt: skip
        await anext(again)
        got = [await asyncio.wait_for(anext(again), 20) for _ in range(2)]
        await again.aclose()
        await broadcaster.close()
        return first, got

    try:
        first, got = asyncio.run(asyncio.wait_for(scenario(), 60))
    finally:
        store.dispose()
    assert first.startswith("retry: ") and "\nid: " in first
    assert FeedReader(store.engine).read_after("0-0-0")[2].id == first.split("id: ", 1)[1].strip()
    assert [json.loads(t.split("data: ", 1)[1])["data"]["row"]["celsius"] for t in got] == [
        r["celsius"] for r in temperature_rows(2, 7)
    ]
