"""A plugin author's path, end to end: ``main.py plugins new humidity`` → ``main.py init``
→ ``gen_config.py --set humidity.source=FILE`` → the real agent (--once) through the real
broker → the processor stores the sample in humidity_readings; a sample above the
processor's ``max_value`` is refused alone as invalid_reading."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from harness import PLUGINS, ROOT, Db, Fleet, ProcessorProcess, install_metadata, run_python
from sqlalchemy import inspect
from waiting import wait_for

from sparklem_core.cli import main
from sparklem_core.dev.servers import TansuBroker

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_new_plugin_goes_from_scaffold_to_a_stored_row(
    tmp_path: Path,
    broker: TansuBroker,
    db: Db,
    database_url: str,
    processors: list[ProcessorProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    package = tmp_path / "sparklem-humidity"
    assert main(["plugins", "new", "humidity", "--dir", str(package)]) == 0
    install_metadata(package, "humidity")
    # init, the processor, gen_config.py and the agent: each finds it as an installed plugin
    monkeypatch.setenv("PYTHONPATH", str(package), prepend=os.pathsep)

    fleet = Fleet(tmp_path, broker.bootstrap, plugins=(*PLUGINS, "humidity"))
    config = fleet.config(broker.bootstrap, database_url)
    config["plugins"]["humidity"]["max_value"] = 100  # a relative humidity, in %
    proc = ProcessorProcess(tmp_path, config)
    processors.append(proc)

    init = run_python([str(ROOT / "main.py"), "init", "--config", str(proc.config_path)], tmp_path)
    assert init.returncode == 0, init.stdout + init.stderr
    assert inspect(db.engine).has_table("humidity_readings")
    proc.start(wait_assigned=False)  # joins the group while the agent is enrolled

    source = tmp_path / "greenhouse"
    passfile = tmp_path / "passphrase"
    passfile.write_text("correct horse battery staple 42\n")
    enrolled = run_python(
        [str(ROOT / "gen_config.py"), "--agent-id", "edge-h", "--bootstrap", broker.bootstrap,
         "--config", str(proc.config_path), "--plugins", "humidity",
         "--set", f"humidity.source={source}", "--out", str(tmp_path / "bundle"),
         "--passphrase-file", str(passfile)],
        tmp_path,
    )  # fmt: skip
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    proc.wait_log("assigned t", timeout=60)

    def agent_once(value: str) -> None:
        source.write_text(f"{value}\n")
        sent = run_python(
            ["-m", "sparklem_core.agent", "--bundle", str(tmp_path / "bundle" / "config.tar.xz"),
             "--passphrase-file", str(passfile), "--state-dir", str(tmp_path / "state"), "--once"],
            tmp_path,
        )  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr

    agent_once("47.5")
    db.wait_count("humidity_readings", 1)
    assert db.rows("SELECT agent_id, sensor, value FROM humidity_readings") == [
        ("edge-h", "greenhouse", 47.5)
    ]
    assert db.reasons() == {}

    agent_once("150")
    wait_for(lambda: db.reasons(), 30, message="the sample above max_value was not refused")
    assert db.reasons() == {"invalid_reading": 1}
    (detail,) = db.rows("SELECT detail FROM rejected_messages")[0]
    assert "at most 100" in detail
    assert db.count("humidity_readings") == 1
    code, _ = proc.stop()
    assert code == 0
