"""The agent-side collectors, against fake /sys and /proc trees and a fake nvidia-smi."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sparklem_plugins.pu_workload as pu_workload
import sparklem_plugins.temperature as temperature

from sparklem_core import Message, commands
from sparklem_core.settings.validation import plugin_settings

KIB = 1024
MIB = 1024 * 1024


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def process(plugin: Any, data: dict[str, Any]) -> Any:
    """Run a collected payload through the plugin's processor side."""
    now = datetime.now(UTC)
    message = Message("edge-1", plugin.sparklem_manifest().name, 1, now, data, now)
    settings = plugin_settings(plugin.sparklem_manifest(), {})
    return plugin.sparklem_process(message=message, settings=settings)


# --- temperature --------------------------------------------------------------------------


@pytest.fixture
def sys_tree(tmp_path: Path) -> dict[str, str]:
    thermal, hwmon = tmp_path / "thermal", tmp_path / "hwmon"
    write(thermal / "thermal_zone0/type", "x86_pkg_temp\n")
    write(thermal / "thermal_zone0/temp", "48300\n")
    write(thermal / "thermal_zone10/type", "acpitz\n")
    write(thermal / "thermal_zone10/temp", "30000\n")
    write(thermal / "thermal_zone2/type", "acpitz\n")
    write(thermal / "thermal_zone2/temp", "-5500\n")
    write(thermal / "thermal_zone3/type", "asleep\n")  # no temp file: skipped
    write(thermal / "thermal_zone4/type", "garbage\n")
    write(thermal / "thermal_zone4/temp", "n/a\n")  # unparsable: skipped
    write(thermal / "cooling_device0/type", "Processor\n")  # not a thermal zone
    write(hwmon / "hwmon0/name", "coretemp\n")
    write(hwmon / "hwmon0/temp1_input", "52000\n")
    write(hwmon / "hwmon0/temp1_label", "Package id 0\n")
    write(hwmon / "hwmon0/temp2_input", "50125\n")
    write(hwmon / "hwmon0/fan1_input", "1200\n")  # not a temperature
    write(hwmon / "hwmon1/temp1_input", "41850\n")  # no name file: the directory's name
    return {"thermal_root": str(thermal), "hwmon_root": str(hwmon)}


def test_temperature_reads_thermal_zones_and_hwmon(sys_tree: dict[str, str]) -> None:
    data = temperature.sparklem_collect(settings=sys_tree)
    assert data == {
        "readings": [
            {"sensor": "x86_pkg_temp", "value": 48.3, "unit": "C"},
            {"sensor": "acpitz", "value": -5.5, "unit": "C"},
            {"sensor": "acpitz#2", "value": 30.0, "unit": "C"},
            {"sensor": "coretemp/Package id 0", "value": 52.0, "unit": "C"},
            {"sensor": "coretemp/temp2", "value": 50.125, "unit": "C"},
            {"sensor": "hwmon1/temp1", "value": 41.85, "unit": "C"},
        ]
    }
    result = process(temperature, data)
    assert result.rejected == [] and len(result.rows["temperature_readings"]) == 6


def test_temperature_without_sensors_returns_none_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "thermal").mkdir()
    settings = {"thermal_root": str(tmp_path / "thermal"), "hwmon_root": str(tmp_path / "none")}
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert temperature.sparklem_collect(settings=settings) is None
    said = [r for r in caplog.records if "no readable sensor" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert str(tmp_path / "thermal") in said[0].getMessage()


@pytest.mark.parametrize("prog, enroll", [("sparklem-agent", "sparklem-enroll"),
                                          ("main.py", "python3 gen_config.py")])  # fmt: skip
def test_temperature_without_sensors_names_the_enrol_command_the_user_has(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
    prog: str, enroll: str,
) -> None:  # fmt: skip
    monkeypatch.setattr(commands, "_checkout", False)  # restored after the test
    commands.invoked_as(prog)
    settings = {"thermal_root": str(tmp_path / "t"), "hwmon_root": str(tmp_path / "h")}
    with caplog.at_level(logging.INFO):
        assert temperature.sparklem_collect(settings=settings) is None
    (said,) = [r.getMessage() for r in caplog.records if "no readable sensor" in r.getMessage()]
    assert f"(other paths: {enroll} --set temperature.thermal_root=PATH)" in said


# --- pu_workload --------------------------------------------------------------------------

# user nice system idle iowait irq softirq steal guest guest_nice
STAT_1 = """cpu  100 0 100 800 0 0 0 0 0 0
cpu0 50 0 50 400 0 0 0 0 0 0
cpu1 50 0 50 400 0 0 0 0 0 0
intr 12345 0 0
ctxt 999
"""
MEMINFO = """MemTotal:        8000000 kB
MemFree:         1000000 kB
MemAvailable:    6000000 kB
Buffers:          200000 kB
Cached:          3000000 kB
"""
SMI_CSV = """0, NVIDIA H100 80GB HBM3, 37, 1024, 81559, 45
1, Orin, [N/A], [N/A], [N/A], [N/A]
2, Tesla T4, 5, 100, 15360, [N/A]
"""


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    write(root / "stat", STAT_1)
    write(root / "loadavg", "0.52 0.61 0.70 2/345 6789\n")
    write(root / "meminfo", MEMINFO)
    return root


def fake_smi(tmp_path: Path, output: str, status: int = 0) -> str:
    script = tmp_path / "nvidia-smi"
    write(tmp_path / "smi.out", output)
    script.write_text(
        f'#!/bin/sh\necho "$@" > "{tmp_path}/smi.args"\ncat "{tmp_path}/smi.out"\nexit {status}\n'
    )
    script.chmod(0o755)
    return str(script)


def no_gpu(tmp_path: Path) -> str:
    return fake_smi(tmp_path, "", status=9)


def test_pu_workload_first_call_samples_twice(proc: Path, tmp_path: Path) -> None:
    settings = {"proc_root": str(proc), "nvidia_smi": no_gpu(tmp_path)}
    started = time.monotonic()
    first = pu_workload.sparklem_collect(settings=settings)
    assert time.monotonic() - started >= 0.09
    assert first == {
        "cpu": {"percent": 0.0, "per_core": [0.0, 0.0], "load_avg": [0.52, 0.61, 0.70]},
        "memory": {"used_bytes": 2000000 * KIB, "total_bytes": 8000000 * KIB},
    }
    assert pu_workload.sparklem_collect(settings=settings)["cpu"]["percent"] == 0.0
    rows = process(pu_workload, first).rows["pu_workload_readings"]
    assert [(r["unit"], r["unit_index"]) for r in rows] == [("cpu", 0), ("core", 0), ("core", 1)]


def test_pu_workload_percentages_from_deltas(proc: Path, tmp_path: Path) -> None:
    settings = {"proc_root": str(proc), "nvidia_smi": no_gpu(tmp_path)}
    pu_workload.sparklem_collect(settings=settings)
    write(proc / "stat", "cpu  150 0 150 880 20 0 0 0\ncpu0 125 0 50 425 0\ncpu1 25 0 100 475 0\n")
    cpu = pu_workload.sparklem_collect(settings=settings)["cpu"]
    assert cpu["percent"] == 50.0  # busy +100 of +200 jiffies; iowait counts as idle
    assert cpu["per_core"] == [75.0, 25.0]  # +75 of +100, +25 of +100


def test_pu_workload_core_set_change_drops_per_core(proc: Path, tmp_path: Path) -> None:
    settings = {"proc_root": str(proc), "nvidia_smi": no_gpu(tmp_path)}
    pu_workload.sparklem_collect(settings=settings)
    write(proc / "stat", "cpu  150 0 150 900 0 0 0 0\ncpu0 125 0 50 425 0\ncpu2 1 0 1 1 0\n")
    cpu = pu_workload.sparklem_collect(settings=settings)["cpu"]
    assert cpu["percent"] == 50.0 and "per_core" not in cpu


def test_pu_workload_meminfo_without_memavailable(proc: Path, tmp_path: Path) -> None:
    write(proc / "meminfo", "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n")
    (proc / "loadavg").unlink()
    data = pu_workload.sparklem_collect(
        settings={"proc_root": str(proc), "nvidia_smi": no_gpu(tmp_path)}
    )
    assert data["memory"] == {"used_bytes": 600 * KIB, "total_bytes": 1000 * KIB}
    assert "load_avg" not in data["cpu"]


def test_pu_workload_reads_gpus_from_nvidia_smi(proc: Path, tmp_path: Path) -> None:
    smi = fake_smi(tmp_path, SMI_CSV)
    data = pu_workload.sparklem_collect(settings={"proc_root": str(proc), "nvidia_smi": smi})
    assert data["gpus"] == [
        {
            "index": 0,
            "name": "NVIDIA H100 80GB HBM3",
            "util_percent": 37.0,
            "mem_used_bytes": 1024 * MIB,
            "mem_total_bytes": 81559 * MIB,
            "temperature_c": 45.0,
        },
        {
            "index": 2,
            "name": "Tesla T4",
            "util_percent": 5.0,
            "mem_used_bytes": 100 * MIB,
            "mem_total_bytes": 15360 * MIB,
        },
    ]
    args = (tmp_path / "smi.args").read_text().split()
    assert args == [
        "--query-gpu=index,name,utilization.gpu,memory.used,memory.total,temperature.gpu",
        "--format=csv,noheader,nounits",
    ]
    rows = process(pu_workload, data).rows["pu_workload_readings"]
    assert [(r["unit"], r["unit_index"]) for r in rows if r["unit"] == "gpu"] == [
        ("gpu", 0),
        ("gpu", 2),
    ]


def test_pu_workload_gpu_only_and_no_gpu(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-proc")
    smi = fake_smi(tmp_path, SMI_CSV)
    data = pu_workload.sparklem_collect(settings={"proc_root": missing, "nvidia_smi": smi})
    assert set(data) == {"gpus"}
    assert (
        pu_workload.sparklem_collect(
            settings={"proc_root": missing, "nvidia_smi": no_gpu(tmp_path)}
        )
        is None
    )
    absent = str(tmp_path / "not-installed")
    assert (
        pu_workload.sparklem_collect(settings={"proc_root": missing, "nvidia_smi": absent}) is None
    )


# --- the real machine ---------------------------------------------------------------------


def test_real_temperature_collector() -> None:
    data = temperature.sparklem_collect(settings=temperature.sparklem_manifest().agent_defaults)
    if data is not None:  # many containers and VMs expose no sensors
        result = process(temperature, data)
        assert 1 <= len(data["readings"]) <= 1000
        assert len(result.rows.get("temperature_readings", [])) + len(result.rejected) == len(
            data["readings"]
        )


def test_real_pu_workload_collector() -> None:
    data = pu_workload.sparklem_collect(settings=pu_workload.sparklem_manifest().agent_defaults)
    assert data is not None
    cpu = data["cpu"]
    assert 0.0 <= cpu["percent"] <= 100.0
    assert all(0.0 <= pct <= 100.0 for pct in cpu.get("per_core", []))
    assert len(cpu["load_avg"]) == 3 and min(cpu["load_avg"]) >= 0
    assert 0 < data["memory"]["used_bytes"] <= data["memory"]["total_bytes"]
    if shutil.which("nvidia-smi") is None and importlib.util.find_spec("pynvml") is None:
        assert "gpus" not in data
    rows = process(pu_workload, data).rows["pu_workload_readings"]
    assert rows[0]["unit"] == "cpu"
