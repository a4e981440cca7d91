"""The temperature plugin's processor side, through the plugin authors' kit."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sparklem_plugins.temperature as plugin

from sparklem_core import InvalidPayload, PluginResult
from sparklem_core.testing import PluginHarness
from sparklem_core.testing.plugin import MakeHarness

SENT_AT = datetime(2026, 11, 21, 10, 30, 0, tzinfo=UTC)
SENT_MS = int(SENT_AT.timestamp() * 1000)


Process = Callable[..., PluginResult]


@pytest.fixture
def temperature(plugin_harness: MakeHarness) -> PluginHarness:
    return plugin_harness(plugin)


@pytest.fixture
def process(temperature: PluginHarness) -> Process:
    """``process(readings, settings=None, **members)``: the plugin's result for one message."""

    def call(readings: Any, settings: dict[str, Any] | None = None, **data: Any) -> PluginResult:
        payload = {"readings": readings, **data}
        return temperature.process(payload, settings, seq=7, sent_at=SENT_AT)

    return call


def rows(result: PluginResult) -> list[dict[str, Any]]:
    return result.rows.get("temperature_readings", [])


def test_manifest() -> None:
    manifest = plugin.sparklem_manifest()
    assert manifest.name == "temperature"
    assert manifest.topic == "sparklem.temperature"
    assert manifest.version == "1.0.0"
    assert manifest.agent_defaults["interval"] == 30


def test_register_tables_names_and_columns(temperature: PluginHarness) -> None:
    assert set(temperature.tables) == {"temperature_readings"}
    table = temperature.store.metadata.tables["temperature_readings"]
    assert {"agent_id", "sensor", "celsius", "measured_at"} <= set(table.c.keys())
    assert {"id", "seq", "received_at"} <= set(table.c.keys())
    assert table.c.measured_at.type.timezone and table.c.received_at.type.timezone
    assert not table.c.celsius.nullable and not table.c.agent_id.nullable
    assert [[c.name for c in ix.columns] for ix in table.indexes] == [["agent_id", "measured_at"]]


def test_rows_are_stored_through_the_pipeline(temperature: PluginHarness) -> None:
    outcome = temperature.send(
        {"readings": [{"sensor": "a", "value": 40}, {"sensor": "b", "value": 41.5}]}
    )
    stored = [(r["id"], r["sensor"], r["celsius"]) for r in outcome.rows("temperature_readings")]
    assert stored == [(1, "a", 40.0), (2, "b", 41.5)]
    assert outcome.stored and outcome.rejections == []


def test_a_bad_reading_is_stored_as_a_rejection(temperature: PluginHarness) -> None:
    outcome = temperature.send({"readings": [{"sensor": "a", "value": 40}, {"sensor": "b"}]})
    assert [r["sensor"] for r in outcome.rows("temperature_readings")] == ["a"]
    (rejection,) = outcome.rejections
    assert rejection.reason == "invalid_reading" and '"sensor":"b"' in rejection.raw


def test_valid_readings_are_converted_to_celsius(process: Process) -> None:
    result = process(
        [
            {"sensor": "cpu_thermal", "value": 48.3, "unit": "C", "ts": 1795349829873},
            {"sensor": "boiling", "value": 212, "unit": "F"},
            {"sensor": "freezing_f", "value": 32, "unit": "F"},
            {"sensor": "freezing_k", "value": 273.15, "unit": "K"},
            {"sensor": "no_unit", "value": 21},
        ]
    )
    assert result.rejected == []
    got = {row["sensor"]: row["celsius"] for row in rows(result)}
    assert got == {
        "cpu_thermal": 48.3,
        "boiling": 100.0,
        "freezing_f": 0.0,
        "freezing_k": 0.0,
        "no_unit": 21.0,
    }
    first = rows(result)[0]
    assert first["agent_id"] == "edge-1" and first["seq"] == 7
    assert first["measured_at"] == datetime(2026, 11, 22, 12, 17, 9, 873000, tzinfo=UTC)


def test_ts_defaults_to_message_time_and_received_at_is_shared(process: Process) -> None:
    before = datetime.now(UTC)
    result = process([{"sensor": "a", "value": 1}, {"sensor": "b", "value": 2, "ts": SENT_MS}])
    first, second = rows(result)
    assert first["measured_at"] == SENT_AT == second["measured_at"]
    assert first["measured_at"].tzinfo is not None
    assert first["received_at"] is second["received_at"]
    assert before <= first["received_at"] <= datetime.now(UTC)


def test_received_at_is_the_messages_never_the_clock(temperature: PluginHarness) -> None:
    # Long before now: a plugin reading the clock would write today's time instead.
    long_ago = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
    result = temperature.process({"readings": [{"sensor": "a", "value": 1}]}, received_at=long_ago)
    assert [row["received_at"] for row in rows(result)] == [long_ago]
    outcome = temperature.send({"readings": [{"sensor": "a", "value": 1}]}, received_at=long_ago)
    (row,) = outcome.rows("temperature_readings")
    assert row["received_at"].replace(tzinfo=UTC) == long_ago  # SQLite: naive UTC
    assert row["measured_at"].replace(tzinfo=UTC) == long_ago.replace(microsecond=789000)


def test_bad_reading_is_rejected_and_siblings_are_stored(process: Process) -> None:
    bad = {"sensor": "broken", "value": "48.3"}
    result = process([{"sensor": "ok1", "value": 40}, bad, {"sensor": "ok2", "value": 41}])
    assert [row["sensor"] for row in rows(result)] == ["ok1", "ok2"]
    assert len(result.rejected) == 1
    assert result.rejected[0].reading is bad
    assert "value" in result.rejected[0].detail


@pytest.mark.parametrize(
    ("reading", "word"),
    [
        ({"sensor": "s", "value": True}, "number"),
        ({"sensor": "s", "value": False}, "number"),
        ({"sensor": "s", "value": "21"}, "number"),
        ({"sensor": "s", "value": None}, "number"),
        ({"sensor": "s"}, "number"),
        ({"sensor": "s", "value": math.nan}, "finite"),  # Python's json.loads accepts NaN
        ({"sensor": "s", "value": math.inf}, "finite"),
        ({"sensor": "s", "value": -math.inf}, "finite"),
        ({"sensor": "s", "value": 10**400}, "finite"),
        ({"sensor": "", "value": 1}, "sensor"),
        ({"sensor": "x" * 129, "value": 1}, "sensor"),
        ({"sensor": 5, "value": 1}, "sensor"),
        ({"value": 1}, "sensor"),
        ({"sensor": "s", "value": 1, "unit": "c"}, "unit"),
        ({"sensor": "s", "value": 1, "unit": None}, "unit"),
        ({"sensor": "s", "value": 1, "unit": ["C"]}, "unit"),
        ({"sensor": "s", "value": 1, "ts": "1795349829873"}, "ts"),
        ({"sensor": "s", "value": 1, "ts": 1795349829.873}, "ts"),
        ({"sensor": "s", "value": 1, "ts": True}, "ts"),
        ({"sensor": "s", "value": 1, "ts": -1}, "ts"),
        ({"sensor": "s", "value": 1, "ts": 10**20}, "ts"),
        ("cpu 48", "object"),
        (None, "object"),
    ],
)
def test_invalid_single_readings(reading: Any, word: str, process: Process) -> None:
    result = process([reading, {"sensor": "good", "value": 30}])
    assert [row["sensor"] for row in rows(result)] == ["good"]
    assert len(result.rejected) == 1
    assert word in result.rejected[0].detail


@pytest.mark.parametrize(("value", "unit"), [(-273.16, "C"), (-0.01, "K"), (-460, "F")])
def test_below_absolute_zero(value: float, unit: str, process: Process) -> None:
    result = process([{"sensor": "s", "value": value, "unit": unit}])
    assert rows(result) == []
    assert "absolute zero" in result.rejected[0].detail


def test_default_plausible_range_bounds_included(process: Process) -> None:
    values = [-90, 200, -90.01, 200.01, 0.0, 10 + 273.15]
    result = process([{"sensor": f"s{v}", "value": v} for v in values])
    assert [row["celsius"] for row in rows(result)] == [-90.0, 200.0, 0.0]
    assert len(result.rejected) == 3
    assert all("plausible range" in r.detail for r in result.rejected)


def test_custom_plausible_range(process: Process) -> None:
    settings = {"min_celsius": -200, "max_celsius": 80}
    readings = [
        {"sensor": "cold", "value": -150},
        {"sensor": "hot", "value": 90},
        {"sensor": "hot_f", "value": 212, "unit": "F"},
        {"sensor": "fine", "value": 300, "unit": "K"},
    ]
    result = process(readings, settings)
    assert [row["sensor"] for row in rows(result)] == ["cold", "fine"]
    assert [r.reading["sensor"] for r in result.rejected] == ["hot", "hot_f"]


def test_unknown_members_are_ignored(process: Process) -> None:
    result = process([{"sensor": "s", "value": 1, "extra": {"x": 1}}], note="hello")
    assert len(rows(result)) == 1 and result.rejected == []


def test_reading_count_limits(process: Process) -> None:
    assert len(rows(process([{"sensor": "s", "value": 1}] * 1000))) == 1000
    with pytest.raises(InvalidPayload, match="1 to 1000"):
        process([])
    with pytest.raises(InvalidPayload, match="1 to 1000"):
        process([{"sensor": "s", "value": 1}] * 1001)


@pytest.mark.parametrize("data", [{}, {"readings": {"sensor": "s"}}, {"readings": "x"}])
def test_invalid_whole_payload(
    data: dict[str, Any], temperature: PluginHarness, process: Process
) -> None:
    with pytest.raises(InvalidPayload, match="readings"):
        temperature.process(data, seq=1, sent_at=SENT_AT)
    outcome = temperature.send(data)
    assert not outcome.stored and outcome.rows("temperature_readings") == []
    assert [r.reason for r in outcome.rejections] == ["invalid_payload"]
    assert "readings" in outcome.rejections[0].detail
