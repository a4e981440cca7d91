"""``python3 main.py demo`` runs to its summary from any working directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "demo", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_a_second_demo_in_the_same_directory_is_refused(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    (demo_dir / "db.sqlite3").write_bytes(b"the first demo's rows")
    result = demo(tmp_path, "--dir", str(demo_dir))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"main.py: {demo_dir} holds an earlier demo's database: add --fresh to wipe it, "
        "or choose another --dir"
    )
    assert (demo_dir / "db.sqlite3").read_bytes() == b"the first demo's rows"


def test_demo_runs_to_its_summary(tmp_path: Path, broker) -> None:  # broker: marks it e2e
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    (demo_dir / "db.sqlite3").write_bytes(b"an earlier demo's rows")  # --fresh wipes it
    result = demo(tmp_path, "--dir", str(demo_dir), "--seconds", "8", "--agents", "3", "--fresh")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "=== Sparkle-M demo summary ===" in out
    assert "demo-host" in out and "sim-000" in out
    assert f"sqlite3 {demo_dir / 'db.sqlite3'}" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stored"]["temperature_readings"] > 0
    assert summary["stored"]["pu_workload_readings"] > 0
    assert {"bad_signature", "malformed"} <= set(summary["rejected"])
    assert (demo_dir / "processor.log").exists() and (demo_dir / "agent.log").exists()
    assert "dashboard:  http://127.0.0.1:" in out, out  # printed once the API answered
