"""The operator's path: gen_config.py → the agent with its bundle (--once) → the
processor stores the readings; a revoked agent's next readings are refused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from harness import Db, Fleet, ProcessorProcess, run_python
from waiting import wait_for

from sparklem_core.dev.servers import TansuBroker

ROOT = Path(__file__).resolve().parent.parent


def test_bundle_round_trip_through_the_processor(tmp_path: Path, broker: TansuBroker,
                                                 database_url: str) -> None:  # fmt: skip
    fleet = Fleet(tmp_path, broker.bootstrap)
    config = fleet.config(broker.bootstrap, database_url)
    proc = ProcessorProcess(tmp_path, config)
    db = Db(database_url)
    try:
        proc.start()
        env = {**os.environ, "SPARKLEM_CERTIFICATES_DIR": str(fleet.certificates)}
        passfile = tmp_path / "passphrase"
        passfile.write_text("correct horse battery staple 42\n")
        made = run_python([str(ROOT / "gen_config.py"), "--agent-id", "field-7", "--bootstrap",
                     broker.bootstrap, "--config", str(proc.config_path), "--out",
                     str(tmp_path / "bundle"), "--passphrase-file", str(passfile)],
                    tmp_path, env)  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        bundle = tmp_path / "bundle" / "config.tar.xz"
        assert (fleet.certificates / "agents" / "field-7.pem").exists()

        def send_once() -> subprocess.CompletedProcess[str]:
            return run_python(["-m", "sparklem_core.agent", "--bundle", str(bundle),
                         "--passphrase-file", str(passfile), "--state-dir",
                         str(tmp_path / "state"), "--once"], tmp_path, env)  # fmt: skip

        sent = send_once()
        assert sent.returncode == 0, sent.stdout + sent.stderr
        # This machine has /proc: pu_workload always reports (cpu row + one per core).
        wait_for(lambda: db.count("pu_workload_readings") >= 2, 30,
                 message="the agent's readings were not stored")  # fmt: skip
        (unit,) = db.rows("SELECT unit FROM pu_workload_readings WHERE unit = 'cpu'")[0]
        assert unit == "cpu"
        assert db.reasons() == {}

        revoked = run_python([str(ROOT / "gen_config.py"), "--config", str(proc.config_path),
                        "--revoke", "field-7"], tmp_path, env)  # fmt: skip
        assert revoked.returncode == 0, revoked.stdout + revoked.stderr
        wait_for(lambda: send_once().returncode == 0 and db.reasons().get("revoked_agent"),
                 30, interval=1, message="revocation not applied")  # fmt: skip
        code, _ = proc.stop()
        assert code == 0
    finally:
        proc.close()
        db.close()
