"""Smoke tests of the benchmarks: they run and end with a JSON line. No timing asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sparklem_core import wire
from sparklem_core.fleet.registry import AgentRegistry, load_server_keys

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


def test_prune_benchmark_smoke() -> None:
    report = run_module(
        "benchmarks.prune", "--rows", "3000", "--db", "sqlite", "--window", "0.2",
        "--batch-rows", "500", "--busy-fraction", "1",
    )  # fmt: skip
    (result,) = report["results"]
    assert result["database"] == "sqlite" and result["pruned"] == 3000 and result["finished"]
    assert result["alone_rows_s"] > 0 and result["pruning_rows_s"] > 0


def test_prune_benchmark_alternating_phases_prunes_every_row_and_compares_phases() -> None:
    # Resting 19 times each 100-row batch's time: several 0.3 s phases before the end.
    report = run_module(
        "benchmarks.prune", "--rows", "3000", "--db", "sqlite", "--alternate", "0.3",
        "--batch-rows", "100", "--busy-fraction", "0.05",
    )  # fmt: skip
    (result,) = report["results"]
    assert result["pruned"] == 3000 and result["finished"]
    assert result["phases"] >= 2 and result["pair_ratios"]["n"] >= 1
    assert result["alone_rows_s"] > 0 and result["pruning_rows_s"] > 0
    assert result["ratio"] == pytest.approx(result["pruning_rows_s"] / result["alone_rows_s"], 0.01)


def test_prune_benchmark_reports_a_prune_stopped_by_its_limit() -> None:
    # Resting 999 times each batch's time, 3,000 rows take far longer than the limit.
    report = run_module(
        "benchmarks.prune", "--rows", "3000", "--db", "sqlite", "--window", "0.2",
        "--batch-rows", "100", "--busy-fraction", "0.001", "--max-prune-s", "1",
    )  # fmt: skip
    (result,) = report["results"]
    assert not result["finished"] and result["pruned"] < 3000


def test_api_benchmark_smoke() -> None:
    report = run_module(
        "benchmarks.api", "--rows", "2000", "--agents", "20", "--db", "sqlite",
        "--requests", "3", "--clients", "2", "--seconds", "1",
    )  # fmt: skip
    (result,) = report["results"]
    assert result["database"] == "sqlite" and result["latest_items"] == 40
    assert result["latest_p95_ms"] > 0 and result["day_p95_ms"] > 0
    assert result["day_points"] > 0 and result["ingest_rows_s"] > 0


@pytest.mark.e2e  # Chromium and serve
def test_dashboard_benchmark_smoke() -> None:
    report = run_module(
        "benchmarks.dashboard", "--agents", "20", "--cores", "2", "--sensors", "2",
        "--hours", "0.05", "--loads", "1",
    )  # fmt: skip
    (result,) = report["dashboard"]
    assert result["database"] == "sqlite" and result["agents"] == 20
    assert result["hour_points"] > 0 and result["day_points"] > 0
    assert result["fleet_p50_ms"] > 0 and result["day_p50_ms"] > 0


@pytest.mark.parametrize(
    ("module", "flags"),
    [
        (
            "benchmarks.pipeline",
            ("--skip-e2e", "--workers", "--jobs", "--backlog", "--phases", "--sealer"),
        ),
        ("benchmarks.parse", ("--size", "--repeat")),
        (
            "benchmarks.prune",
            (
                "--rows",
                "--db",
                "--window",
                "--batch-rows",
                "--batch-s",
                "--busy-fraction",
                "--max-prune-s",
            ),
        ),
        ("benchmarks.api", ("--rows", "--agents", "--days", "--db", "--clients", "--rate")),
        ("benchmarks.dashboard", ("--agents", "--cores", "--hours", "--loads", "--db")),
    ],
)
def test_benchmark_help(module: str, flags: tuple[str, ...]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    for flag in flags:
        assert flag in result.stdout, flag


def _sent(work: Any) -> list[tuple[str, str, int, int]]:
    """(agent, plugin, seq, ts) of every message, opened with the processor's own checks."""
    registry = AgentRegistry(work.certificates, refresh_s=3600)
    server_keys = load_server_keys(work.certificates)
    sent = []
    for value in work.values:
        env = wire.parse_envelope(value)
        wire.verify(env, registry.lookup(env.agent))
        plain = wire.parse_plaintext(
            wire.decrypt(env, wire.unwrap_key(env.ek, server_keys[env.kid]))
        )
        sent.append((env.agent, env.plugin, plain.seq, plain.ts))
    return sent


def test_parallel_build_same_workload_stored_fully(tmp_path: Path) -> None:
    from benchmarks import pipeline

    serial = pipeline.build_workload(tmp_path / "serial", 60, 6, 8, jobs=1)
    parallel = pipeline.build_workload(tmp_path / "parallel", 60, 6, 8, jobs=2)
    assert parallel.rows == serial.rows
    assert parallel.plugins == serial.plugins
    assert [a.rsplit("-", 1)[1] for a in parallel.senders] == [
        a.rsplit("-", 1)[1] for a in serial.senders
    ]
    sent = _sent(parallel)  # every signature checks against the enrolled PEMs
    assert [(agent, plugin) for agent, plugin, _, _ in sent] == list(
        zip(parallel.senders, parallel.plugins, strict=True)
    )
    assert [ts for *_, ts in sent] == sorted(ts for *_, ts in sent)
    for agent in parallel.agents:
        for plugin in pipeline.PLUGINS:
            seqs = [seq for a, p, seq, _ in sent if (a, p) == (agent, plugin)]
            assert seqs == list(range(len(seqs)))
    # run_engine raises unless every message is stored, none rejected, every row there
    result = pipeline.run_engine(
        parallel, f"sqlite:///{tmp_path / 'engine.db'}", "bench-test-engine"
    )
    assert result.messages == 60
    assert result.rows == parallel.total_rows == 30 * 8 + 30 * 5


def test_independent_sealer_accepted(tmp_path: Path) -> None:
    from benchmarks import pipeline

    work = pipeline.build_workload(tmp_path, 40, 4, 8, jobs=2, sealer="independent")
    assert len(_sent(work)) == 40
    assert pipeline.run_engine(work, f"sqlite:///{tmp_path / 'e.db'}", "bench-ind").messages == 40
    report = run_module(
        "benchmarks.pipeline",
        *("--messages", "60", "--agents", "4", "--sealer", "independent"),
        *("--phases", "floor,engine"),
    )
    assert report["sealer"] == "independent"
    assert report["engine_messages"] == 60
    assert report["e2e_msgs_s"] is None and report["naive_msgs_s"] is None


@pytest.mark.e2e
def test_backlog_end_to_end() -> None:
    report = run_module(
        "benchmarks.pipeline",
        *("--messages", "120", "--agents", "4", "--jobs", "2"),
        *("--phases", "floor,e2e", "--backlog", "--timeout", "120"),
    )
    assert report["backlog"] is True and report["phases"] == ["floor", "e2e"]
    assert report["e2e_msgs_s"] > 0 and report["floor_msgs_s"] > 0
    assert report["engine_msgs_s"] is None and report["naive_msgs_s"] is None
    assert report["e2e_peak_rss_mib"] > 0 and report["e2e_sampled_rss_max_mib"] > 0
    assert report["e2e_from_start_s"] >= report["e2e_start_to_first_commit_s"] > 0


def test_parse_benchmark_smoke() -> None:
    report = run_module("benchmarks.parse", "--size", "4096", "--repeat", "1")
    assert report["size"] == 4096 and report["target_ms"] == 50.0
    shapes = report["shapes"]
    for shape in ("33 brackets + escape run", "many small lists", "duplicate keys"):
        assert shapes[shape]["kind"] == "record"
        assert shapes[shape]["outcome"] == "malformed", shape
    assert shapes["per_core beyond the cap"]["outcome"] == "invalid_payload"
    assert shapes["valid envelope, 4 KiB ct"]["outcome"] == "stored, 1 rows"
    for figures in shapes.values():
        assert figures["envelope_ms"] >= 0 and figures["pipeline_ms"] >= 0
    assert report["slowest_shape"] in shapes


def test_metrics_benchmark_smoke() -> None:
    report = run_module("benchmarks.metrics", "--messages", "600", "--agents", "3", "--runs", "1")
    assert report["messages"] == 600 and report["scrapes"] > 0
    for key in ("off_msgs_s", "on_msgs_s", "off_cpu_ms_per_kmsg", "on_cpu_ms_per_kmsg"):
        assert report[key]["median"] > 0, key
    assert report["msgs_s_on_off_pair_ratio"]["median"] > 0


def test_metrics_benchmark_together_smoke() -> None:
    report = run_module(
        # Enough 500-message batches that both processors commit within the common window
        # (from both at 20% to either at 80%), even when one joins its group seconds late:
        # with 10,000, one run in eight failed here, most likely so.
        "benchmarks.metrics",
        "--messages",
        "30000",
        "--agents",
        "3",
        "--runs",
        "1",
        "--together",
    )
    assert report["together"] and report["messages"] == 30000
    for key in ("off_msgs_s", "on_msgs_s", "off_cpu_ms_per_kmsg", "on_cpu_ms_per_kmsg"):
        assert report[key]["median"] > 0, key
    assert report["msgs_s_on_off_pair_ratio"]["median"] > 0
