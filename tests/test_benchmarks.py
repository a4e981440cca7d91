"""Smoke tests of the benchmarks: they run and end with a JSON line. No timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_module(*args: str, timeout: float = 300) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    lines = result.stdout.strip().splitlines()
    assert lines, f"{args} printed nothing; stderr:\n{result.stderr[-3000:]}"
    report = json.loads(lines[-1])
    assert isinstance(report, dict)
    return report


def test_pipeline_benchmark_smoke() -> None:
    report = run_module("benchmarks.pipeline", "--messages", "200", "--skip-e2e")
    for key in (
        "floor_msgs_s",
        "floor_readings_s",
        "engine_msgs_s",
        "engine_readings_s",
        "engine_vs_floor",
        "engine_peak_rss_mib",
        "naive_msgs_s",
        "naive_vs_floor",
        "e2e_msgs_s",
        "bare_consume_msgs_s",
    ):
        assert key in report, key
    for key in ("floor_msgs_s", "engine_msgs_s", "naive_msgs_s"):
        assert report[key] > 0, key
    assert report["messages"] == 200
    assert report["e2e_msgs_s"] is None  # skipped
    assert report["readings_per_message"] == pytest.approx(6.5)  # 8 and 1 + 4 cores


def test_crypto_benchmark_smoke() -> None:
    pytest.importorskip("cryptography")
    report = run_module("benchmarks.crypto", "--iterations", "50")
    for op in ("verify", "gcm", "unwrap", "floor"):
        assert report[f"{op}_pycryptodome_us"] > 0
        assert report[f"{op}_cryptography_us"] > 0
        assert f"{op}_speedup" in report
    assert report["checks_passed"] is True, report["checks"]
    assert all(report["checks"].values())


def test_pipeline_benchmark_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.pipeline", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert "--skip-e2e" in result.stdout and "--workers" in result.stdout
