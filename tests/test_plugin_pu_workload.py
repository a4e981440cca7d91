"""The pu_workload plugin's processor side, through the plugin authors' kit."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sparklem_plugins.pu_workload as plugin
from sparklem_plugins.pu_workload.server import MAX_CORES, MAX_GPUS, MAX_INDEX, MAX_NAME_CHARS

from sparklem_core import InvalidPayload
from sparklem_core.testing import PluginHarness
from sparklem_core.testing.plugin import MakeHarness

SENT_AT = datetime(2026, 11, 21, 10, 30, 0, tzinfo=UTC)
GIB = 1024**3
CPU = {"percent": 37.5, "per_core": [40.0, 35.0], "load_avg": [0.52, 0.61, 0.70]}
MEMORY = {"used_bytes": GIB, "total_bytes": 8 * GIB}
GPU = {
    "index": 0,
    "name": "Orin",
    "util_percent": 12.0,
    "mem_used_bytes": 100 * 1024**2,
    "mem_total_bytes": 8 * GIB,
    "temperature_c": 51.0,
}
EXAMPLE = {"cpu": CPU, "memory": MEMORY, "gpus": [GPU]}  # PROTOCOL.md's example
REQUIRED_COLUMNS = {
    "agent_id",
    "unit",
    "unit_index",
    "name",
    "utilization_pct",
    "mem_used_bytes",
    "mem_total_bytes",
    "load_1m",
    "load_5m",
    "load_15m",
    "measured_at",
}


Process = Callable[[Any], list[dict[str, Any]]]


@pytest.fixture
def pu_workload(plugin_harness: MakeHarness) -> PluginHarness:
    return plugin_harness(plugin)


@pytest.fixture
def process(pu_workload: PluginHarness) -> Process:
    """``process(data)``: the rows the plugin makes of one message; it refuses no reading."""

    def call(data: Any) -> list[dict[str, Any]]:
        result = pu_workload.process(data, seq=9, sent_at=SENT_AT)
        assert result.rejected == []
        return result.rows["pu_workload_readings"]

    return call


def units(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(row["unit"], row["unit_index"]) for row in rows]


def test_manifest() -> None:
    manifest = plugin.sparklem_manifest()
    assert (manifest.name, manifest.topic) == ("pu_workload", "sparklem.pu_workload")
    assert manifest.agent_defaults["interval"] == 30


def test_register_tables_names_and_columns(pu_workload: PluginHarness) -> None:
    assert set(pu_workload.tables) == {"pu_workload_readings"}
    table = pu_workload.store.metadata.tables["pu_workload_readings"]
    assert REQUIRED_COLUMNS | {"id", "seq", "temperature_c", "received_at"} <= set(table.c.keys())
    assert table.c.measured_at.type.timezone
    assert [[c.name for c in ix.columns] for ix in table.indexes] == [["agent_id", "measured_at"]]


def test_rows_are_stored_through_the_pipeline(pu_workload: PluginHarness) -> None:
    outcome = pu_workload.send(EXAMPLE)
    assert outcome.stored and outcome.rejections == []
    stored = outcome.rows("pu_workload_readings")
    assert [(r["id"], r["unit"], r["name"]) for r in stored] == [
        (1, "cpu", None),
        (2, "core", None),
        (3, "core", None),
        (4, "gpu", "Orin"),
    ]


def test_protocol_example_gives_cpu_core_and_gpu_rows(process: Process) -> None:
    rows = process(EXAMPLE)
    assert units(rows) == [("cpu", 0), ("core", 0), ("core", 1), ("gpu", 0)]
    assert all(set(row) >= REQUIRED_COLUMNS for row in rows)
    cpu, core0, core1, gpu = rows
    assert cpu["utilization_pct"] == 37.5
    assert (cpu["load_1m"], cpu["load_5m"], cpu["load_15m"]) == (0.52, 0.61, 0.70)
    assert (cpu["mem_used_bytes"], cpu["mem_total_bytes"]) == (GIB, 8 * GIB)
    assert cpu["name"] is None and cpu["temperature_c"] is None
    assert (core0["utilization_pct"], core1["utilization_pct"]) == (40.0, 35.0)
    assert core0["mem_used_bytes"] is None and core0["load_1m"] is None
    assert gpu["name"] == "Orin" and gpu["utilization_pct"] == 12.0
    assert (gpu["mem_used_bytes"], gpu["temperature_c"]) == (100 * 1024**2, 51.0)
    assert gpu["load_1m"] is None
    for row in rows:
        assert (row["agent_id"], row["seq"], row["measured_at"]) == ("edge-1", 9, SENT_AT)
        assert row["received_at"] is rows[0]["received_at"]


def test_received_at_is_the_messages_never_the_clock(pu_workload: PluginHarness) -> None:
    # Long before now: a plugin reading the clock would write today's time instead.
    long_ago = datetime(2001, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
    result = pu_workload.process(EXAMPLE, received_at=long_ago)
    assert {row["received_at"] for row in result.rows["pu_workload_readings"]} == {long_ago}
    outcome = pu_workload.send(EXAMPLE, received_at=long_ago)
    stored = outcome.rows("pu_workload_readings")
    assert len(stored) == 4  # cpu, two cores, one gpu
    assert {row["received_at"].replace(tzinfo=UTC) for row in stored} == {long_ago}  # naive UTC


def test_cpu_only_minimal(process: Process) -> None:
    (row,) = process({"cpu": {"percent": 0}})
    assert units([row]) == [("cpu", 0)]
    assert row["utilization_pct"] == 0.0
    assert row["mem_total_bytes"] is None and row["load_15m"] is None


def test_cpu_only_with_empty_gpus_and_per_core_indexes(process: Process) -> None:
    rows = process({"cpu": {"percent": 100, "per_core": [1, 2, 3, 4]}, "gpus": []})
    assert units(rows) == [("cpu", 0), ("core", 0), ("core", 1), ("core", 2), ("core", 3)]
    assert [row["utilization_pct"] for row in rows] == [100.0, 1.0, 2.0, 3.0, 4.0]


def test_gpu_only_keeps_gpu_index_and_optional_temperature(process: Process) -> None:
    second = {k: v for k, v in GPU.items() if k != "temperature_c"} | {"index": 3, "name": "T4"}
    rows = process({"gpus": [GPU, second]})
    assert units(rows) == [("gpu", 0), ("gpu", 3)]
    assert [row["name"] for row in rows] == ["Orin", "T4"]
    assert rows[1]["temperature_c"] is None


def test_unknown_members_are_ignored(process: Process) -> None:
    data = copy.deepcopy(EXAMPLE)
    data["disk"] = {"free": 1}
    data["cpu"]["steal"] = 3.0
    data["gpus"][0]["fan_percent"] = 30
    assert len(process(data)) == 4


def broken(path: str, value: Any) -> dict[str, Any]:
    """EXAMPLE with the member at dotted ``path`` set to ``value``, or removed if it is ``...``."""
    data = copy.deepcopy(EXAMPLE)
    *parents, last = path.split(".")
    target: Any = data
    for key in parents:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({}, "at least one"),
        ({"gpus": []}, "at least one"),
        ({"memory": MEMORY}, "at least one"),
        ({"cpu": None}, "cpu"),
        ({"cpu": [37.5]}, "cpu"),
        ({"cpu": {"percent": 1}, "gpus": {"index": 0}}, "gpus"),
        (broken("cpu.percent", 100.5), "cpu.percent"),
        (broken("cpu.percent", -0.1), "cpu.percent"),
        (broken("cpu.percent", True), "cpu.percent"),
        (broken("cpu.percent", "37.5"), "cpu.percent"),
        (broken("cpu.percent", ...), "cpu.percent"),
        (broken("cpu.per_core", [40.0, 101]), r"per_core\[1\]"),
        (broken("cpu.per_core", 40.0), "per_core"),
        (broken("cpu.load_avg", [0.5, 0.6]), "3 numbers"),
        (broken("cpu.load_avg", [0.5, 0.6, 0.7, 0.8]), "3 numbers"),
        (broken("cpu.load_avg", [0.5, -0.6, 0.7]), "load_avg"),
        (broken("cpu.load_avg", [0.5, False, 0.7]), "load_avg"),
        (broken("cpu.load_avg", None), "load_avg"),
        (broken("memory.used_bytes", 9 * GIB), "exceeds"),
        (broken("memory.used_bytes", -1), "used_bytes"),
        (broken("memory.used_bytes", 1.0), "used_bytes"),
        (broken("memory.total_bytes", True), "total_bytes"),
        (broken("memory.total_bytes", 2**63), "total_bytes"),
        # Bounded to what a real device produces (issue 19): each of these, signed by one
        # agent, made fleet-wide sums and averages fail before.
        (broken("memory.total_bytes", 2**53 + 1), "total_bytes"),
        (broken("gpus.0.mem_total_bytes", 2**63 - 1), "mem_total_bytes"),
        (broken("cpu.load_avg", [0.5, 1.7e308, 0.7]), "load_avg"),
        (broken("cpu.load_avg", [0.5, 2**22 + 1, 0.7]), "load_avg"),
        (broken("gpus.0.temperature_c", 1.7e308), "temperature_c"),
        (broken("gpus.0.temperature_c", 1000.5), "temperature_c"),
        (broken("gpus.0.temperature_c", -273.2), "temperature_c"),
        (broken("memory.total_bytes", ...), "total_bytes"),
        (broken("memory", "8GiB"), "memory"),
        (broken("gpus.0.mem_used_bytes", 9 * GIB), "exceeds"),
        (broken("gpus.0.mem_total_bytes", ...), "mem_total_bytes"),
        (broken("gpus.0.util_percent", 100.5), "util_percent"),
        (broken("gpus.0.util_percent", ...), "util_percent"),
        (broken("gpus.0.index", -1), "index"),
        (broken("gpus.0.index", True), "index"),
        (broken("gpus.0.index", "0"), "index"),
        (broken("gpus.0.name", ""), "name"),
        (broken("gpus.0.name", ...), "name"),
        (broken("gpus.0.temperature_c", "51"), "temperature_c"),
        (broken("gpus.0.temperature_c", None), "temperature_c"),
        (broken("gpus", ["Orin"]), "gpus"),
        (broken("gpus", [GPU, GPU]), "twice"),
        # Edges of the payload's declaration (issue 19: checked by msgspec since).
        (broken("cpu.percent", float("nan")), "cpu.percent"),
        (broken("cpu.percent", 10**400), "cpu.percent"),
        (broken("cpu.per_core", [1.0] * (MAX_CORES + 1)), "cpu.per_core"),
        (broken("gpus", [GPU | {"index": i} for i in range(MAX_GPUS + 1)]), "gpus"),
        (broken("gpus.0.index", MAX_INDEX + 1), "index"),
        (broken("gpus.0.index", 0.0), "index"),
        (broken("gpus.0.name", "x" * (MAX_NAME_CHARS + 1)), "name"),
    ],
)
def test_invalid_payload_refuses_the_whole_message(data: Any, match: str, process: Process) -> None:
    with pytest.raises(InvalidPayload, match=match):
        process(data)


def test_memory_is_checked_even_without_cpu(process: Process) -> None:
    with pytest.raises(InvalidPayload, match="exceeds"):
        process({"gpus": [GPU], "memory": {"used_bytes": 2, "total_bytes": 1}})
    assert units(process({"gpus": [GPU], "memory": MEMORY})) == [("gpu", 0)]


def test_values_at_the_bounds_are_stored(pu_workload: PluginHarness) -> None:
    """The bounds are inclusive: a device at the edge of them is stored, and every stored
    value still sums in a double (2^53 bytes, loads up to 2^22, -273.15 to 1000 °C)."""
    data = copy.deepcopy(EXAMPLE)
    data["memory"] = {"used_bytes": 2**53, "total_bytes": 2**53}
    data["cpu"]["load_avg"] = [0.0, float(2**22), 2**22]
    data["gpus"][0].update(mem_used_bytes=0, mem_total_bytes=2**53, temperature_c=1000)
    assert pu_workload.send(data).stored
    data["gpus"][0]["temperature_c"] = -273.15
    assert pu_workload.send(data).stored
    rows = pu_workload.rows("pu_workload_readings")
    assert max(r["mem_total_bytes"] or 0 for r in rows) == 2**53
    assert max(r["load_15m"] or 0 for r in rows) == 2**22
