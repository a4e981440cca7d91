"""``main.py plugins new``: the package it writes is tested with the kit and gets loaded."""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import ROOT as PROJECT_ROOT
from harness import install_metadata
from hypothesis import given
from hypothesis import strategies as st

from sparklem_core.admin.scaffold import files, write_plugin
from sparklem_core.cli import main
from sparklem_core.cli.plugins import RESTART_NOTE
from sparklem_core.testing import PluginHarness

KIT = "sparklem_core.testing.plugin"


def run(args: list[str], cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(pythonpath), str(PROJECT_ROOT)]),
        # the kit exactly once: by -p, whether or not its pytest11 entry point is installed
        "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
    }
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_new_plugin_passes_its_own_tests_and_is_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "sparklem-humidity"
    assert main(["plugins", "new", "humidity", "--dir", str(target)]) == 0
    assert "pip install -e" in capsys.readouterr().out
    written = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert written == sorted(files("humidity"))
    pyproject = (target / "pyproject.toml").read_text()
    assert '[project.entry-points.sparklem]\nhumidity = "sparklem_humidity"' in pyproject
    assert '"sparklem>=' in pyproject

    tests = run(["-m", "pytest", "-q", "-p", KIT], target, target)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "13 passed" in tests.stdout

    install_metadata(target, "humidity")
    listed = run([str(PROJECT_ROOT / "main.py"), "plugins"], tmp_path, target)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split() for line in listed.stdout.split("\n\n")[0].splitlines()}
    assert rows["humidity"][1:4] == ["0.1.0", "sparklem.humidity", "ok"]
    assert "settings of humidity (plugins.humidity.*):" in listed.stdout
    assert listed.stdout.rstrip().endswith(RESTART_NOTE)


@pytest.mark.parametrize("name", ["Humidity", "9lives", "air-quality", "x" * 65, ""])
def test_a_bad_name_is_one_line_error(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plugins", "new", name, "--dir", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "must be lowercase letters" in err
    assert not (tmp_path / "p").exists()


def test_an_existing_directory_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mine.txt").write_text("keep")
    assert main(["plugins", "new", "humidity", "--dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PluginHarness]:
    """A fresh scaffold's plugin (named ``scaffolded``), imported here, in the kit."""
    directory = tmp_path_factory.mktemp("sparklem-scaffolded")
    write_plugin("scaffolded", directory)
    sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module("sparklem_scaffolded")
        harness = PluginHarness(module, tmp_path_factory.mktemp("kit"))
        yield harness
        harness.close()
    finally:
        sys.path.remove(str(directory))
        for name in [m for m in sys.modules if m.partition(".")[0] == "sparklem_scaffolded"]:
            del sys.modules[name]


NUMBER_LIKE = st.from_regex(rb"\A\s{0,3}[-+]?[0-9._eE]{0,70}(nan|inf|infinity)?\s{0,3}\Z")


@given(raw=st.binary(max_size=100) | NUMBER_LIKE | st.floats().map(lambda f: f"{f}\n".encode()))
def test_the_agent_side_sends_one_storable_number_or_nothing(
    scaffolded: PluginHarness, tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    """Whatever the source file holds, the scaffold's agent side sends nothing or a
    sample the processor side stores (or refuses alone, above max_value): never a record
    refused whole, as NaN (not JSON) would be."""
    source = tmp_path_factory.getbasetemp() / "scaffolded-source"
    source.write_bytes(raw)
    data = scaffolded.collect({"source": str(source)})
    if data is None:
        return
    ((sample,),) = data.values()
    assert math.isfinite(sample["value"])
    outcome = scaffolded.send(data)
    assert outcome.stored
    assert [r.reason for r in outcome.rejections] in ([], ["invalid_reading"])


def test_plugins_new_and_help_load_no_database_stack(tmp_path: Path) -> None:
    """The command line imports what a command needs in the command: writing a plugin, or
    asking for help, loads no SQL, Kafka or HTTP stack."""
    heavy = ("sqlalchemy", "alembic", "confluent_kafka", "fastapi", "uvicorn",
             "prometheus_client", "sparklem_core.db", "sparklem_core.processor")  # fmt: skip
    code = (
        "import contextlib, io, json, sys\n"
        "from sparklem_core.cli import main\n"
        f"assert main(['plugins', 'new', 'humidity', '--dir', {str(tmp_path / 'p')!r}]) == 0\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['serve', '--help'])\n"
        f"print(json.dumps([m for m in {heavy!r} if m in sys.modules]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"
