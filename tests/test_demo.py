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


def test_demo_keep_keeps_the_dashboard_live_until_ctrl_c(tmp_path: Path, broker) -> None:
    """--keep: after the timed run the dashboard and what it shows go on (the agents keep
    sending: active, not silent) until Ctrl-C; the database served afterwards says
    they stopped (silent), each state once and true."""
    import signal
    import threading
    import urllib.request
    from datetime import UTC, datetime, timedelta

    from waiting import wait_for

    from sparklem_core.fleet.state import inventory
    from sparklem_core.settings.config import load_config

    demo_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "main.py"), "demo", "--dir", str(demo_dir),
         "--seconds", "4", "--agents", "2", "--keep"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        kept = wait_for(
            lambda: next((ln for ln in lines if ln.startswith("still running until Ctrl-C")), ""),
            timeout=120, message="the demo did not say it keeps running",
        )  # fmt: skip
        after_run = datetime.now(UTC)
        dashboard = kept.split("dashboard ")[1].strip()

        def agents() -> dict[str, dict]:
            with urllib.request.urlopen(dashboard + "api/v1/agents", timeout=5) as answer:
                return {a["agent_id"]: a for a in json.load(answer)["agents"]}

        def all_active_since_the_run() -> dict[str, dict]:
            fleet = agents()
            live = all(
                a["state"] == "active"
                and datetime.fromisoformat(a["last_seen"].replace("Z", "+00:00")) > after_run
                for a in fleet.values()
            )
            return fleet if live and len(fleet) == 3 else {}

        fleet = wait_for(all_active_since_the_run, timeout=60,
                         message="the agents did not keep sending after the timed run")  # fmt: skip
        assert set(fleet) == {"demo-host", "sim-000", "sim-001"}
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        status = proc.wait(timeout=60)
        reader.join(10)
    out = "".join(lines)
    assert status == 0, out
    assert "stopping..." in out and "Traceback" not in out
    assert out.count("=== Sparkle-M demo summary ===") == 1
    config = load_config(demo_dir / "config.yaml", env={})
    later = datetime.now(UTC) + timedelta(minutes=1)  # past every agent's silence threshold
    states = {s.agent_id: s.state for s in inventory(config, later)}
    assert states == dict.fromkeys(("demo-host", "sim-000", "sim-001"), "silent"), states
