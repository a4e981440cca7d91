"""The wheel works on its own: built, installed in a fresh venv, run from an empty directory.

Nothing of the checkout is on the path: the commands are the wheel's console scripts,
their defaults (database, certificates, plugins directory) are relative to the current
directory, and nothing is written into site-packages.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from harness import ROOT
from waiting import wait_for

from sparklem_core.dev.servers import TansuBroker

pytestmark = pytest.mark.e2e  # builds a wheel and installs it with its dependencies


@dataclass
class Installed:
    wheel: Path
    bin: Path
    site_packages: Path

    def env(self) -> dict[str, str]:
        """The environment without the checkout: no PYTHONPATH, no SPARKLEM_ overrides."""
        return {
            k: v
            for k, v in os.environ.items()
            if k != "PYTHONPATH" and not k.startswith("SPARKLEM_")
        }

    def run(self, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]], cwd=cwd, env=self.env(), capture_output=True,
            text=True, timeout=120, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self, cwd: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            return subprocess.Popen(
                [str(self.bin / args[0]), *args[1:]], cwd=cwd, env=self.env(), stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def site_files(self) -> set[str]:
        return {str(p.relative_to(self.site_packages)) for p in self.site_packages.rglob("*")
                if "__pycache__" not in p.parts}  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    # A copy of the sources: a build in the checkout would leave build/ there, and a stale
    # build/ from an older layout could end up in the wheel.
    source = root / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "*.sqlite3", "out",
        ".pytest_cache", ".ruff_cache", ".hypothesis",
    ))  # fmt: skip
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(root / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    (wheel,) = (root / "dist").glob("sparklem-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(wheel)], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    (site,) = venv.glob("lib/python*/site-packages")
    return Installed(wheel, venv / "bin", site)


def test_the_wheel_holds_the_packages_under_the_projects_names(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"sparklem_core", "sparklem_plugins", "sparklem-0.1.0.dist-info"}
    assert "sparklem_plugins/temperature/requirements.txt" in names
    # every package of the checkout, under its installed name (pyproject.toml lists them)
    for init in [*ROOT.glob("sparklem_core/**/__init__.py"), *ROOT.glob("plugins/**/__init__.py")]:
        path = init.relative_to(ROOT).as_posix()
        if path.startswith("plugins/"):
            path = f"sparklem_plugins/{path.removeprefix('plugins/')}"
        assert path in names, f"{path} is not in the wheel: list its package in pyproject.toml"
    assert "sparklem_core/db/migrations/env.py" in names
    # the dashboard's files, the vendored chart library and its licence with them
    static = ROOT / "sparklem_core" / "http" / "static"
    for file in (p for p in static.rglob("*") if p.is_file()):
        path = file.relative_to(ROOT).as_posix()
        assert path in names, f"{path} is not in the wheel: see package-data in pyproject.toml"
    assert "sparklem_core/http/static/vendor/uplot/LICENSE" in names
    entry_points = zipfile.ZipFile(installed.wheel).read(
        "sparklem-0.1.0.dist-info/entry_points.txt"
    )
    assert b"temperature = sparklem_plugins.temperature" in entry_points
    assert b"sparklem-enroll = sparklem_core.admin.cli:main" in entry_points


def test_installed_commands_from_an_empty_directory(
    installed: Installed, broker: TansuBroker, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    before = installed.site_files()
    uid = uuid.uuid4().hex[:8]
    (work / "config.yaml").write_text(yaml.safe_dump({
        "kafka": {"bootstrap.servers": broker.bootstrap, "group.id": f"wheel-{uid}",
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000,
                  "topic.metadata.refresh.interval.ms": 2000},
        "plugins": {p: {"topic": f"wheel-{uid}.{p}"} for p in ("temperature", "pu_workload")},
        "processor": {"stats_interval_s": 2, "registry_refresh_s": 1, "topic_partitions": 4},
    }))  # fmt: skip

    init = installed.run(work, "sparklem", "init")
    assert init.returncode == 0, init.stdout + init.stderr
    assert (work / "db.sqlite3").is_file()
    assert (work / "certificates" / "server_private.pem").is_file()

    listed = installed.run(work, "sparklem", "plugins")
    assert listed.returncode == 0, listed.stderr
    for name in ("temperature", "pu_workload"):
        (row,) = [line.split() for line in listed.stdout.splitlines() if line.startswith(name)]
        assert row[3] == "ok" and row[-1] == f"(sparklem_plugins.{name})", row

    (work / "passphrase").write_text("correct horse battery staple 42\n")
    made = installed.run(work, "sparklem-enroll", "--agent-id", "wheel-1", "--key-bits", "2048",
                         "--passphrase-file", "passphrase")  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    bundle = work / "out" / "wheel-1" / "config.tar.xz"
    assert bundle.is_file()

    with contextlib.ExitStack() as cleanup:
        proc = installed.start(work, work / "run.log", "sparklem", "run")
        cleanup.callback(kill, proc)
        wait_log(proc, work / "run.log", f"assigned wheel-{uid}")
        sent = installed.run(work, "sparklem-agent", "--bundle", str(bundle), "--once",
                             "--passphrase-file", "passphrase", "--state-dir", "state")  # fmt: skip
        assert sent.returncode == 0, sent.stdout + sent.stderr
        wait_for(lambda: count(work / "db.sqlite3", "pu_workload_readings") > 0, 30,
                 message="the agent's readings were not stored")  # fmt: skip
        assert stop(proc) == 0

        proc = installed.start(work, work / "workers.log", "sparklem", "run", "--workers", "2")
        cleanup.callback(kill, proc)
        for n in (0, 1):  # each worker got partitions
            wait_log(proc, work / "workers.log", f"assigned wheel-{uid}", f"[worker {n}] ")
        assert stop(proc) == 0
        assert "all workers stopped" in (work / "workers.log").read_text()

    assert installed.site_files() == before  # nothing written into site-packages


def test_installed_commands_hints_name_installed_commands(
    installed: Installed, tmp_path: Path
) -> None:
    # A processor setting where an agent one belongs: the hint names the enrol command.
    (tmp_path / "config.yaml").write_text("plugins: {temperature: {interval: 5}}\n")
    for argv in (["sparklem", "plugins"], ["sparklem-enroll", "--agent-id", "edge-1"]):
        done = installed.run(tmp_path, *argv)
        assert done.returncode == 2, done.stderr
        assert done.stderr.rstrip().endswith("the agent's bundle (sparklem-enroll --set)")
        assert "gen_config" not in done.stderr


# --- helpers ----------------------------------------------------------------------------


def kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def wait_log(proc: subprocess.Popen[bytes], log: Path, *needles: str) -> None:
    """Wait for a line of ``log`` holding every one of ``needles``."""

    def seen() -> bool:
        text = log.read_text(errors="replace")
        assert proc.poll() is None, f"exited early:\n{text[-3000:]}"
        return any(all(n in line for n in needles) for line in text.splitlines())

    wait_for(seen, 60, message=f"no line with {needles!r} in {log.name}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(30)


def count(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
