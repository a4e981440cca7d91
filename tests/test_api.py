"""The read API (``serve``): readings, aggregates, agents, rejections, deletion, auth."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from api_env import (
    ADMIN_TOKEN,
    AGENTS,
    HUMIDITY,
    HUMIDITY_UNITS,
    READ_TOKEN,
    T0,
    commit,
    humidity_rows,
    humidity_store,
    make_config,
    open_schema,
    rejection,
    running,
    temperature_rows,
)
from fastapi.testclient import TestClient
from harness import loaded_packages
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from waiting import wait_for

from sparklem_core import cli
from sparklem_core.http.app import create_app
from sparklem_core.reading.queries import AGGREGATES, BUCKETS
from sparklem_core.settings.config import Config

TEMPERATURE = "temperature_readings"
GROUPINGS = ((), ("agent_id",), ("sensor",), ("agent_id", "sensor"))


def iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Any:
    """An open API (no tokens) on SQLite with 300 temperature readings and 5 rejections."""
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    store = open_schema(config)
    rows = temperature_rows(300)
    commit(store, TEMPERATURE, rows, rejected=[rejection(n, ("clock_skew", "bad_signature")[n % 2])
                                              for n in range(5)])  # fmt: skip
    with TestClient(create_app(config, store)) as client:
        client.rows = rows  # type: ignore[attr-defined]
        yield client
    store.dispose()


# --- aggregates: the same answers as Python on every database -------------------------------


Points = dict[tuple[Any, ...], list[tuple[Any, Any, int]]]


def reference(
    rows: list[dict[str, Any]], agg: str, bucket: str | None, group_by: tuple[str, ...]
) -> Points:
    """What the API must answer, computed in Python: (t, value, count) per group key."""
    groups: dict[tuple[Any, ...], dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        key = tuple(row[k] for k in group_by)
        t = None
        if bucket is not None:
            seconds = math.floor(row["measured_at"].timestamp())
            t = iso(datetime.fromtimestamp(seconds - seconds % BUCKETS[bucket], UTC))
        groups[key][t].append(row["celsius"])
    fn = {"avg": lambda v: sum(v) / len(v), "min": min, "max": max, "sum": sum, "count": len}
    return {
        key: [(t, fn[agg](v), len(v)) for t, v in sorted(points.items(), key=lambda p: p[0] or "")]
        for key, points in groups.items()
    }


def answered(client: TestClient, params: dict[str, Any], group_by: tuple[str, ...]) -> Points:
    answer = client.get("/api/v1/aggregate/temperature", params=params)
    assert answer.status_code == 200, answer.text
    return {
        tuple(g["key"][k] for k in group_by): [(p["t"], p["value"], p["count"]) for p in points]
        for g in answer.json()["groups"]
        for points in [g["points"]]
    }


def test_aggregates_match_python_on_every_database(tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path, database_url)
    store = open_schema(config)
    rows = temperature_rows(400)
    commit(store, TEMPERATURE, rows)
    start, end = T0 - timedelta(days=2), T0 + timedelta(hours=12)
    ranged = [r for r in rows if start <= r["measured_at"] < end]
    try:
        with TestClient(create_app(config, store)) as client:
            for agg in AGGREGATES:
                for bucket in (None, *BUCKETS):
                    for group_by in GROUPINGS:
                        params: dict[str, Any] = {"field": "celsius", "agg": agg,
                                                  "group_by": list(group_by),
                                                  "from": iso(start), "to": iso(end)}  # fmt: skip
                        if bucket:
                            params["bucket"] = bucket
                        got = answered(client, params, group_by)
                        want = reference(ranged, agg, bucket, group_by)
                        assert want and got.keys() == want.keys(), (agg, bucket, group_by)
                        for key, points in want.items():
                            where = (agg, bucket, group_by, key)
                            assert [p[::2] for p in got[key]] == [p[::2] for p in points], where
                            assert [p[1] for p in got[key]] == pytest.approx(
                                [p[1] for p in points], rel=1e-9
                            ), where
    finally:
        store.dispose()


def test_aggregate_refuses_what_the_declaration_does_not_have(sqlite_app: TestClient) -> None:
    base = {"field": "celsius", "agg": "avg"}
    for params, param in (
        ({**base, "field": "seq"}, "field"),
        ({**base, "agg": "median"}, "agg"),
        ({**base, "bucket": "5m"}, "bucket"),
        ({**base, "group_by": "received_at"}, "group_by"),
        ({**base, "group_by": "celsius; DROP TABLE x"}, "group_by"),
        ({**base, "colour": "red"}, "colour"),
        ({**base, "from": "yesterday"}, "from"),
    ):
        answer = sqlite_app.get("/api/v1/aggregate/temperature", params=params)
        assert answer.status_code == 400, answer.text
        assert answer.json()["param"] == param
    missing = sqlite_app.get("/api/v1/aggregate/nosuch", params=base)
    assert missing.status_code == 404 and missing.json()["param"] == "plugin"


# --- latest --------------------------------------------------------------------------------


def test_latest_per_agent_and_series_on_every_database(tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path, database_url)
    store = open_schema(config)
    rows = temperature_rows(120)
    for start in range(0, 120, 40):  # three batches: latest kept across them
        commit(store, TEMPERATURE, rows[start : start + 40])
    newest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["agent_id"], row["sensor"])
        if key not in newest or row["measured_at"] > newest[key]["measured_at"]:
            newest[key] = row
    try:
        with TestClient(create_app(config, store)) as client:
            every = client.get("/api/v1/readings/temperature").json()["latest"]
            assert {(r["agent_id"], r["series"]["sensor"]): (r["time"], r["values"]["celsius"])
                    for r in every} == {
                key: (iso(row["measured_at"]), row["celsius"]) for key, row in newest.items()
            }  # fmt: skip
            assert all(isinstance(r["age_s"], float) for r in every)
            params = {"agent": ["a-1", "a-3"], "sensor": "board"}
            some = client.get("/api/v1/readings/temperature", params=params).json()["latest"]
            assert sorted(r["agent_id"] for r in some) == ["a-1", "a-3"]
            assert {r["series"]["sensor"] for r in some} == {"board"}
    finally:
        store.dispose()


def test_latest_skips_rows_it_cannot_read(sqlite_app: TestClient) -> None:
    from sqlalchemy import insert

    store = sqlite_app.app.state.context.store
    table = store.metadata.tables["sparklem_latest"]
    now = datetime.now(UTC)
    hostile = ["not json", '{"sensor": "x"}', "1, 2", '{"sensor": "y", "celsius": 1, '
               '"measured_at": "yesterday"}', "[" * 10_000]  # fmt: skip
    with store.engine.begin() as conn:
        conn.execute(insert(table), [
            {"table_name": TEMPERATURE, "agent_id": f"zz-{n}", "series": f"[{n}]",
             "measured_at": now, "stored_at": now, "row": text}
            for n, text in enumerate(hostile)
        ])  # fmt: skip
    answer = sqlite_app.get("/api/v1/readings/temperature")
    assert answer.status_code == 200
    agents = {r["agent_id"] for r in answer.json()["latest"]}
    assert agents == {"a-1", "a-2", "a-3"}


def test_latest_answers_rows_stored_by_columns_and_refuses_bad_items(
    sqlite_app: TestClient,
) -> None:
    """A row stored by columns (before rows were stored as items) is answered in the same
    shape; one shaped like an item but not fit to splice, or tampered, is skipped."""
    from sqlalchemy import insert

    store = sqlite_app.app.state.context.store
    table = store.metadata.tables["sparklem_latest"]
    now = datetime.now(UTC)
    item = '{"series":{"sensor":"s"},"values":{"celsius":1.5},"time":"2026-11-30T04:00:00Z"}'
    texts = {
        "old": '{"agent_id":"old","sensor":"s","celsius":2.5,"measured_at":"2026-11-30T04:00:00Z"}',
        "padded": f" {item} ",  # JSON, but cut at its braces it would not be
        "extra": item[:-1] + ',"age_s":1}',
        "listed": '{"series":["s"],"values":{},"time":"2026-11-30T04:00:00Z"}',
        "naive": item.replace("Z", ""),
        'quote"d': item,  # the agent id from the column, escaped
    }
    with store.engine.begin() as conn:
        conn.execute(insert(table), [
            {"table_name": TEMPERATURE, "agent_id": agent, "series": '["s"]',
             "measured_at": now, "stored_at": now, "row": text}
            for agent, text in texts.items()
        ])  # fmt: skip
    answer = sqlite_app.get("/api/v1/readings/temperature", params={"agent": list(texts)})
    got = {r.pop("agent_id"): r for r in answer.json()["latest"]}
    assert set(got) == {"old", 'quote"d'}
    assert all(isinstance(got[a].pop("age_s"), float) for a in got)
    assert got == {
        "old": {"series": {"sensor": "s"}, "values": {"celsius": 2.5},
                "time": "2026-11-30T04:00:00Z"},
        'quote"d': json.loads(item),
    }  # fmt: skip
    board = sqlite_app.get("/api/v1/readings/temperature", params={"sensor": "board"})
    assert {r["series"]["sensor"] for r in board.json()["latest"]} == {"board"}


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=8)
    | st.just("2026-11-30T04:00:00Z"),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["series", "values", "time", "sensor", "celsius",
                                       "measured_at", "age_s"]), inner, max_size=4),
    max_leaves=8,
)  # fmt: skip


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(texts=st.lists(json_values.map(json.dumps) | st.text(max_size=40), min_size=1, max_size=4))
def test_latest_answers_json_items_whatever_the_stored_rows(sqlite_app: TestClient, texts) -> None:
    from sqlalchemy import delete, insert

    table = sqlite_app.app.state.context.store.metadata.tables["sparklem_latest"]
    now = datetime.now(UTC)
    with sqlite_app.app.state.context.store.engine.begin() as conn:
        conn.execute(delete(table).where(table.c.agent_id.like("zz-%")))
        conn.execute(insert(table), [
            {"table_name": TEMPERATURE, "agent_id": f"zz-{n}", "series": "[]",
             "measured_at": now, "stored_at": now, "row": text}
            for n, text in enumerate(texts)
        ])  # fmt: skip
    answer = sqlite_app.get("/api/v1/readings/temperature")
    assert answer.status_code == 200
    for item in answer.json()["latest"]:
        assert list(item) == ["agent_id", "series", "values", "time", "age_s"]
        assert isinstance(item["series"], dict) and isinstance(item["values"], dict)
        assert isinstance(item["time"], str)
        assert isinstance(item["age_s"], float)


# --- history -------------------------------------------------------------------------------


def test_history_pages_newest_first_through_the_cursor(sqlite_app: TestClient) -> None:
    rows = [r for r in sqlite_app.rows if r["agent_id"] == "a-2" and r["sensor"] == "board"]  # type: ignore[attr-defined]
    params: dict[str, Any] = {"agent": "a-2", "sensor": "board", "from": "0", "limit": "7"}
    seen: list[dict[str, Any]] = []
    while True:
        answer = sqlite_app.get("/api/v1/readings/temperature", params=params).json()
        seen += answer["readings"]
        if answer["next"] is None:
            break
        params["cursor"] = answer["next"]
    want = sorted(rows, key=lambda r: (r["measured_at"], r["seq"]), reverse=True)
    assert [r["time"] for r in seen] == [iso(r["measured_at"]) for r in want]
    assert [r["values"]["celsius"] for r in seen] == [r["celsius"] for r in want]
    assert {(r["agent_id"], r["series"]["sensor"]) for r in seen} == {("a-2", "board")}


def test_history_limit_is_clamped_and_bad_input_named(sqlite_app: TestClient) -> None:
    answer = sqlite_app.get("/api/v1/readings/temperature", params={"from": "0", "limit": "99999"})
    assert len(answer.json()["readings"]) == 300
    for params, param in (
        ({"from": "0", "limit": "-1"}, "limit"),
        ({"from": "0", "cursor": "bm90IGEgY3Vyc29y"}, "cursor"),
        ({"from": "2026-11-30T04:00:00"}, "from"),
        ({"to": "1e3"}, "to"),
        ({"from": "0", "unit": "cpu"}, "unit"),
        ({"from": "0", "table": "pu_workload_readings"}, "table"),
    ):
        answer = sqlite_app.get("/api/v1/readings/temperature", params=params)
        assert answer.status_code == 400, (params, answer.text)
        assert answer.json()["param"] == param


# --- rejections, agents, deletion --------------------------------------------------------


def test_rejections_with_counts_by_reason(sqlite_app: TestClient) -> None:
    answer = sqlite_app.get("/api/v1/rejections", params={"limit": "2"}).json()
    assert answer["counts"] == {"bad_signature": 2, "clock_skew": 3}
    assert [r["offset"] for r in answer["rejections"]] == [4, 3]
    rest = sqlite_app.get("/api/v1/rejections", params={"cursor": answer["next"]}).json()
    assert [r["offset"] for r in rest["rejections"]] == [2, 1, 0] and rest["next"] is None
    skew = sqlite_app.get("/api/v1/rejections", params={"reason": "clock_skew"}).json()
    assert skew["counts"] == {"clock_skew": 3}
    assert {r["reason"] for r in skew["rejections"]} == {"clock_skew"}
    assert "raw" not in skew["rejections"][0]


def test_agents_from_the_fleet_inventory(sqlite_app: TestClient) -> None:
    agents = sqlite_app.get("/api/v1/agents").json()["agents"]
    assert [a["agent_id"] for a in agents] == sorted(AGENTS)
    first = agents[0]
    assert first["enrolled"] is False and first["revoked"] is False
    assert first["plugins"]["temperature"]["messages"] == first["messages"] > 0
    one = sqlite_app.get("/api/v1/agents", params={"agent": "a-2"}).json()["agents"]
    assert [a["agent_id"] for a in one] == ["a-2"]
    assert sqlite_app.get("/api/v1/agents", params={"state": "asleep"}).json()["param"] == "state"


def test_agents_in_pages_by_agent_id(sqlite_app: TestClient) -> None:
    whole = sqlite_app.get("/api/v1/agents").json()
    assert whole["next"] is None and len(whole["agents"]) == len(AGENTS)
    first = sqlite_app.get("/api/v1/agents", params={"limit": "2"}).json()
    assert [a["agent_id"] for a in first["agents"]] == ["a-1", "a-2"]
    rest = sqlite_app.get("/api/v1/agents", params={"limit": "2", "cursor": first["next"]})
    assert [a["agent_id"] for a in rest.json()["agents"]] == ["a-3"]
    assert rest.json()["next"] is None
    ids = [a["agent_id"] for a in first["agents"] + rest.json()["agents"]]
    assert ids == [a["agent_id"] for a in whole["agents"]]
    assert first["agents"][0].keys() == whole["agents"][0].keys()
    bad = sqlite_app.get("/api/v1/agents", params={"limit": "two"}).json()
    assert bad["param"] == "limit"


def test_agents_pages_join_to_the_unpaged_answer(sqlite_app: TestClient) -> None:
    filters = st.lists(
        st.tuples(st.sampled_from(("state", "silent", "agent")),
                  st.sampled_from(("active", "never_seen", "silent", "true", "false", *AGENTS))),
        max_size=3,
    )  # fmt: skip

    @settings(max_examples=60)
    @given(filters, st.integers(1, len(AGENTS) + 1), st.sampled_from(("", *AGENTS)) | st.text())
    def check(params: list[tuple[str, str]], limit: int, start: str) -> None:
        params = [(k, v) for k, v in params if k != "silent"] + [
            p for p in params if p[0] == "silent"][:1]  # fmt: skip
        unpaged = sqlite_app.get("/api/v1/agents", params=[*params, ("cursor", start)])
        if unpaged.status_code == 400:
            return
        assert unpaged.status_code == 200, unpaged.text
        expected = unpaged.json()["agents"]
        assert all(a["agent_id"] > start for a in expected)
        pages, cursor = [], start
        while True:
            answer = sqlite_app.get(
                "/api/v1/agents", params=[*params, ("limit", str(limit)), ("cursor", cursor)]
            ).json()
            assert len(answer["agents"]) <= limit
            pages.extend(answer["agents"])
            if answer["next"] is None:
                break
            cursor = answer["next"]
        assert [a["agent_id"] for a in pages] == [a["agent_id"] for a in expected]

    check()


def test_delete_an_agents_data_is_audited(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3",
                         read_tokens=[READ_TOKEN], admin_tokens=[ADMIN_TOKEN],
                         audit_log=str(audit))  # fmt: skip
    store = open_schema(config)
    rows = temperature_rows(60)
    commit(store, TEMPERATURE, rows)
    humid = humidity_store(config.database_url)  # a plugin serve knows from the record only
    commit(humid, HUMIDITY, humidity_rows("a-1", [T0]) + humidity_rows("a-2", [T0]))
    humid.dispose()
    as_admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with TestClient(create_app(config)) as client:  # serve's own (reader's) Store
        answer = client.delete("/api/v1/agents/a-1/data", headers=as_admin)
        assert answer.status_code == 200, answer.text
        deleted = answer.json()["deleted"]
        assert deleted[TEMPERATURE] == sum(r["agent_id"] == "a-1" for r in rows)
        assert deleted[HUMIDITY] == 2
        kept = client.get("/api/v1/readings/humidity", params={"from": "0"}, headers=as_admin)
        assert {r["agent_id"] for r in kept.json()["readings"]} == {"a-2"}
        left = client.get("/api/v1/readings/temperature", params={"from": "0", "limit": "1000"},
                          headers=as_admin).json()["readings"]  # fmt: skip
        assert left and {r["agent_id"] for r in left} == {"a-2", "a-3"}
    store.dispose()
    (line,) = audit.read_text().splitlines()
    entry = json.loads(line)
    assert entry["action"] == "delete_agent_data" and entry["agent"] == "a-1"
    assert entry["counts"] == deleted and ADMIN_TOKEN not in line
    assert entry["token"] == hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:8]


@pytest.mark.parametrize("reading", ["serve", "the processor beside its batches"])
def test_reads_on_sqlite_never_hold_up_the_processors_commits(tmp_path: Path, reading: str) -> None:
    """serve's reads, and the processor's own reads beside its batches (fleet counts,
    registry refresh), are snapshots: they never take the write lock a commit needs."""
    from sqlalchemy import text

    from sparklem_core.db.store import open_store

    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    writer = open_schema(config)
    _plugins, reader = open_store(config, reader=True)
    engine = reader.engine if reading == "serve" else writer.read_engine
    try:
        with engine.connect() as conn:  # a read transaction, left open
            conn.execute(text("SELECT count(*) FROM temperature_readings")).scalar()
            committing = threading.Thread(
                target=commit, args=(writer, TEMPERATURE, temperature_rows(5)), daemon=True
            )
            committing.start()
            wait_for(lambda: not committing.is_alive(), timeout=10,
                     message="the processor's commit waited for serve's read")  # fmt: skip
    finally:
        reader.dispose()
        writer.dispose()


# --- auth ----------------------------------------------------------------------------------


def test_tokens_and_the_session_cookie(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3",
                         read_tokens=[READ_TOKEN], admin_tokens=[ADMIN_TOKEN])  # fmt: skip
    store = open_schema(config)
    with TestClient(create_app(config, store)) as client:
        assert client.get("/api/v1/agents").status_code == 401
        wrong = client.get("/api/v1/agents", headers={"Authorization": "Bearer " + "x" * 27})
        assert wrong.status_code == 401 and "error" in wrong.json()
        read = {"Authorization": f"Bearer {READ_TOKEN}"}
        assert client.get("/api/v1/agents", headers=read).status_code == 200
        assert client.delete("/api/v1/agents/a-1/data", headers=read).status_code == 403
        assert client.post("/api/v1/session", json={"token": "nope"}).status_code == 401
        opened = client.post("/api/v1/session", json={"token": READ_TOKEN})
        assert opened.status_code == 200
        cookie = opened.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert client.get("/api/v1/agents").status_code == 200  # the cookie alone
        client.delete("/api/v1/session")
        assert client.get("/api/v1/agents").status_code == 401
    store.dispose()


# --- a real server --------------------------------------------------------------------------


def test_a_real_server_answers_on_every_database(tmp_path: Path, database_url: str) -> None:
    config = make_config(tmp_path, database_url)
    store = open_schema(config)
    rows = temperature_rows(50)
    commit(store, TEMPERATURE, rows, rejected=[rejection(0, "malformed")])
    try:
        with running(create_app(config, store)) as server:
            params = {"from": "0", "agent": "a-3", "limit": "1000"}
            got = httpx.get(f"{server.url}/api/v1/readings/temperature", params=params).json()
            assert len(got["readings"]) == sum(r["agent_id"] == "a-3" for r in rows)
            counts = httpx.get(f"{server.url}/api/v1/rejections").json()["counts"]
            assert counts == {"malformed": 1}
            assert httpx.get(f"{server.url}/openapi.json").status_code == 200
    finally:
        store.dispose()


def test_serve_learns_a_plugin_recorded_after_it_started(tmp_path: Path, database_url: str) -> None:
    """A plugin installed beside the processors only (serve never loads it) is readable
    once a processor has recorded its table: at the first read naming it, and in
    /plugins; serve is not restarted."""
    config = make_config(tmp_path, database_url)
    open_schema(config).dispose()  # the built-in plugins' processor ran init
    with TestClient(create_app(config)) as client:
        listed = client.get("/api/v1/plugins").json()["plugins"]
        assert set(listed) == {"temperature", "pu_workload"}
        unknown = client.get("/api/v1/readings/humidity")
        assert unknown.status_code == 404 and "known: pu_workload, temperature" in unknown.text

        store = humidity_store(database_url)
        times = [T0 + timedelta(minutes=k) for k in range(3)]
        try:
            commit(store, HUMIDITY, humidity_rows("a-1", times))
        finally:
            store.dispose()
        params = {"agent": "a-1", "from": iso(T0), "room": "lab"}
        got = client.get("/api/v1/readings/humidity", params=params).json()["readings"]
        assert got == [
            {"agent_id": "a-1", "series": {"room": "lab"},
             "values": {"relative_pct": 40.0 + k, "dew_point_c": 10.5 + k},
             "time": iso(at)}
            for k, at in reversed(list(enumerate(times)))
        ]  # fmt: skip
        assert client.get("/api/v1/plugins").json()["plugins"] == {
            **listed,
            "humidity": [{"table": HUMIDITY, "time": "measured_at", "series": ["agent_id", "room"],
                          "values": ["relative_pct", "dew_point_c"], "units": HUMIDITY_UNITS}],
        }  # fmt: skip
        params = {"field": "relative_pct", "agg": "max", "group_by": "room"}
        groups = client.get("/api/v1/aggregate/humidity", params=params).json()["groups"]
        assert {g["key"]["room"]: g["points"][0]["value"] for g in groups} == {
            "lab": 42.0, "store room": 62.0
        }  # fmt: skip
        latest = client.get("/api/v1/readings/humidity").json()["latest"]
        assert {r["series"]["room"]: r["values"]["relative_pct"] for r in latest} == {
            "lab": 42.0, "store room": 62.0
        }  # fmt: skip


def test_plugins_lists_the_declared_units(sqlite_app: TestClient) -> None:
    listed = sqlite_app.get("/api/v1/plugins").json()["plugins"]
    assert listed["temperature"][0]["units"] == {"celsius": "°C"}
    assert listed["pu_workload"][0]["units"] == {
        "utilization_pct": "%", "mem_used_bytes": "B", "mem_total_bytes": "B",
        "load_1m": "", "load_5m": "", "load_15m": "", "temperature_c": "°C",
    }  # fmt: skip


def test_a_table_recorded_before_units_reads_without_them(sqlite_app: TestClient) -> None:
    """A processor of an older version recorded no units: serve lists the table, unitless."""
    store = humidity_store(sqlite_app.app.state.context.store.engine.url.render_as_string(False))
    try:
        table = store.metadata.tables["sparklem_plugin_tables"]
        with store.engine.begin() as conn:
            text = conn.execute(
                select(table.c.declaration).where(table.c.table_name == HUMIDITY)
            ).scalar_one()
            older = {k: v for k, v in json.loads(text).items() if k != "units"}
            conn.execute(
                table.update()
                .where(table.c.table_name == HUMIDITY)
                .values(declaration=json.dumps(older))
            )
    finally:
        store.dispose()
    [listed] = sqlite_app.get("/api/v1/plugins").json()["plugins"]["humidity"]
    assert listed["values"] == ["relative_pct", "dew_point_c"] and listed["units"] == {}


# --- serve, the command ----------------------------------------------------------------------


def serve(config: Config, *args: str) -> tuple[int, str]:
    """``sparklem serve`` in this process: every refusal comes before uvicorn starts."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(err):
        try:
            status = cli.main(["serve", "--config", config.source, *args])
        except SystemExit as exc:  # argparse
            status = int(exc.code or 0)
    return status, err.getvalue().strip()


def test_serve_refuses_in_one_line(tmp_path: Path) -> None:
    from sparklem_core.http.server import bind
    from sparklem_core.processor.metrics_server import free_port

    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    status, said = serve(config, "--listen", "0.0.0.0:8620")
    assert status == 1 and "without tokens" in said and "\n" not in said
    taken = bind("127.0.0.1:0", tokens=False)
    try:
        status, said = serve(config, "--listen", f"127.0.0.1:{taken.getsockname()[1]}")
        assert status == 1 and "in use" in said and "\n" not in said
    finally:
        taken.close()
    status, said = serve(config, "--listen", "nowhere")
    assert status == 2 and "HOST:PORT" in said
    # --listen "" used to mean serve.listen; here one it refuses, never one it serves on.
    exposed = make_config(tmp_path / "exposed", config.database_url, listen="0.0.0.0:8620")
    for empty in ("", " "):
        status, said = serve(exposed, "--listen", empty)
        assert status == 2
        assert said.splitlines()[-1] == (
            f"sparklem serve: error: argument --listen: {empty!r} is not HOST:PORT "
            "(port 1-65535), e.g. 127.0.0.1:8620"
        )
    status, said = serve(config, "--help")
    assert status == 0 and "--listen HOST:PORT" in said and "loopback only" in said
    (tmp_path / "audit").mkdir()
    unwritable = make_config(tmp_path, config.database_url, audit_log=str(tmp_path / "audit"))
    status, said = serve(unwritable, "--listen", f"127.0.0.1:{free_port()}")
    assert status == 1 and said.endswith("cannot append to it (Is a directory)")


# --- hostile query strings ----------------------------------------------------------------

NAMES = ("agent", "from", "to", "limit", "cursor", "table", "field", "agg", "bucket", "group_by",
         "sensor", "unit", "unit_index", "reason", "plugin", "state", "silent", "kind",
         "last_event_id")  # fmt: skip
VALUES = ("a-1", "0", "-1", "1e3", "2026-11-28T23:58:30Z", "0001-01-01T00:00:00+01:00",
          "9999-12-31T23:59:59-01:00", "celsius", "avg", "count", "1m", "1d", "agent_id",
          "sensor", "true", "cpu", "99999999999999999999", "9999999999999999999", "WyIxIiwgMV0",
          "1-0-0", "", "\x00", "é", "%", "'; DROP TABLE sparklem_agents; --")  # fmt: skip
PATHS = ("/api/v1/agents", "/api/v1/readings/temperature", "/api/v1/readings/pu_workload",
         "/api/v1/aggregate/temperature", "/api/v1/aggregate/pu_workload", "/api/v1/rejections",
         "/api/v1/plugins", "/api/v1/readings/{x}", "/api/v1/aggregate/{x}")  # fmt: skip
pairs = st.lists(
    st.tuples(st.sampled_from(NAMES) | st.text(max_size=12),
              st.sampled_from(VALUES) | st.text(max_size=40)),
    max_size=6,
)  # fmt: skip


def test_no_query_string_makes_a_500(sqlite_app: TestClient) -> None:
    @settings(max_examples=400)
    @given(st.sampled_from(PATHS), pairs, st.text(max_size=20))
    def check(path: str, params: list[tuple[str, str]], segment: str) -> None:
        url = path.replace("{x}", quote(segment, safe="")) + "?" + urlencode(params)
        answer = sqlite_app.get(url)
        assert answer.status_code in (200, 400, 404), (url, answer.text)
        if answer.status_code != 200:
            assert isinstance(answer.json()["error"], str)

    check()


def test_no_query_string_makes_a_500_on_delete_or_stream(tmp_path: Path) -> None:
    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3", admin_tokens=[ADMIN_TOKEN])
    store = open_schema(config)
    commit(store, TEMPERATURE, temperature_rows(20))
    as_admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    @settings(max_examples=100)
    @given(pairs, st.text(max_size=20))
    def check(params: list[tuple[str, str]], segment: str) -> None:
        query = urlencode(params)
        deleted = client.delete(f"/api/v1/agents/{quote(segment, safe='')}/data?{query}",
                                headers=as_admin)  # fmt: skip
        assert deleted.status_code in (200, 400, 404, 405), deleted.text
        with httpx.stream("GET", f"{server.url}/api/v1/stream?{query}", headers=as_admin,
                          timeout=20) as answer:  # fmt: skip
            assert answer.status_code in (200, 400), query

    try:
        with TestClient(create_app(config, store)) as client, running(
            create_app(config, store)
        ) as server:  # fmt: skip
            check()
    finally:
        store.dispose()


def test_the_processor_and_agent_never_load_fastapi() -> None:
    imports = ("sparklem_core.cli", "sparklem_core.processor.consumer",
               "sparklem_core.agent.agent", "sparklem_core.reading.queries")  # fmt: skip
    assert loaded_packages(imports, ["fastapi", "uvicorn", "starlette"]) == []


def test_every_serve_setting_is_documented() -> None:
    from sparklem_core.settings.config import ServeSettings

    text = (Path(__file__).parent.parent / "docs" / "reading.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `serve\.([a-z_]+)` \|", text, re.M))
    assert documented == set(ServeSettings.model_fields)


def test_tokens_from_the_environment_and_bad_ones_in_one_line(tmp_path: Path) -> None:
    from sparklem_core.settings.config import ConfigError, load_config
    from sparklem_core.settings.masking import mask_secrets

    path = tmp_path / "config.yaml"
    path.write_text("serve: {listen: '127.0.0.1:8700'}\n")
    env = {
        "SPARKLEM_READ_TOKENS": f"{READ_TOKEN},{READ_TOKEN}x",
        "SPARKLEM_ADMIN_TOKENS": ADMIN_TOKEN,
    }
    config = load_config(path, env=env)
    assert config.serve.read_tokens == [READ_TOKEN, READ_TOKEN + "x"]
    assert config.serve.admin_tokens == [ADMIN_TOKEN] and config.serve.tokens
    assert ADMIN_TOKEN not in mask_secrets(f"got {ADMIN_TOKEN}")
    with pytest.raises(ConfigError) as refused:
        load_config(path, env={"SPARKLEM_READ_TOKENS": "short"})
    assert str(refused.value).startswith("SPARKLEM_READ_TOKENS item 1: a token must be")
    assert "short" not in str(refused.value).split(":", 1)[1]


def test_without_the_schema_a_503_and_cors_only_when_configured(tmp_path: Path) -> None:
    from sparklem_core.db.store import open_store

    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3", cors_origins=["http://ui"])
    _plugins, store = open_store(config)  # no create_schema: the processor never ran init
    preflight = {"Origin": "http://ui", "Access-Control-Request-Method": "GET"}
    with TestClient(create_app(config, store)) as client:
        answer = client.get("/api/v1/rejections")
        assert answer.status_code == 503 and "python3 main.py init" in answer.json()["error"]
        allowed = client.options("/api/v1/agents", headers=preflight)
        assert allowed.headers.get("access-control-allow-origin") == "http://ui"
        other = client.options("/api/v1/agents", headers={**preflight, "Origin": "http://evil"})
        assert "access-control-allow-origin" not in other.headers
    store.dispose()
    closed = make_config(tmp_path / "closed", f"sqlite:///{tmp_path}/db.sqlite3")
    with TestClient(create_app(closed)) as client:
        answer = client.get("/api/v1/plugins", headers={"Origin": "http://ui"})
        assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers


def test_without_tokens_data_can_be_read_but_never_deleted(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    config = make_config(tmp_path, f"sqlite:///{tmp_path}/db.sqlite3")
    store = open_schema(config)
    commit(store, TEMPERATURE, temperature_rows(5))
    try:
        with TestClient(create_app(config, store)) as client:
            assert client.get("/api/v1/readings/temperature").status_code == 200
            refused = client.delete("/api/v1/agents/a-1/data")
            assert refused.status_code == 403 and "serve.admin_tokens" in refused.json()["error"]
            assert client.get("/api/v1/readings/temperature").json()["latest"]
    finally:
        store.dispose()


# A recorded row as anyone able to write the database could leave it.
NAMES = ["rejected_records", "sparklem_enrollments", HUMIDITY, "temperature_readings"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
UNITS = st.one_of(st.text(max_size=20), json_values)
declarations = st.fixed_dictionaries(
    {
        "time": st.sampled_from(["measured_at", "id", "nope"]),
        "series": st.lists(st.sampled_from(["agent_id", "sensor", "room", "x"]), max_size=3),
        "values": st.lists(st.sampled_from(["celsius", "relative_pct", "reason"]), max_size=3),
    },
    optional={"units": json_values | st.dictionaries(st.sampled_from(["celsius", "x"]), UNITS)},
)
recorded_rows = st.tuples(
    st.one_of(st.sampled_from(NAMES), st.text(max_size=80)),
    st.text(max_size=40),
    st.one_of(st.text(max_size=200), json_values.map(json.dumps), declarations.map(json.dumps)),
)


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(recorded_rows, max_size=4, unique_by=lambda r: r[0]))
@example(
    rows=[
        ("rejected_records", "x", json.dumps({"time": "id", "series": ["agent_id"], "values": []}))
    ]
)
def test_hostile_recorded_plugin_tables_never_break_serve_nor_expose_core_tables(
    sqlite_app: TestClient, rows: list[tuple[str, str, str]]
) -> None:
    """Whatever sparklem_plugin_tables holds, /plugins answers, a core table never becomes a
    plugin's, and the built-in plugins stay readable."""
    store = humidity_store(sqlite_app.app.state.context.store.engine.url.render_as_string(False))
    try:
        store.create_schema()  # humidity_readings exists, and its row is recorded
        table = store.metadata.tables["sparklem_plugin_tables"]
        hostile = [
            {"table_name": n, "plugin": p, "declaration": d, "recorded_at": T0}
            for n, p, d in rows
            if n != "temperature_readings"  # kept as the processor recorded it
        ]
        with store.engine.begin() as conn:
            conn.execute(table.delete().where(table.c.plugin != "temperature"))
            for row in hostile:
                conn.execute(table.insert().values(row))
    finally:
        store.dispose()
    answer = sqlite_app.get("/api/v1/plugins")
    assert answer.status_code == 200, answer.text
    listed = {t["table"] for tables in answer.json()["plugins"].values() for t in tables}
    assert not listed & {"rejected_records", "sparklem_enrollments", "sparklem_plugin_tables"}
    assert sqlite_app.get("/api/v1/readings/temperature").status_code == 200
