"""Hostile command-line input: `plugins new NAME`, `--set PLUGIN.KEY=VALUE`, `--port`.

Whatever is typed, each either does its job or refuses in one line: never a traceback,
never a file outside the directory asked for.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sparklem_core import cli, wire
from sparklem_core.admin.cli import parse_plugin_settings
from sparklem_core.admin.enrollment import EnrollmentError, plugin_specs
from sparklem_core.settings.config import Config, load_config

# Names and values a user, a script or a pasted line could hold: plausible shapes and noise.
words = st.from_regex(r"[a-z][a-z0-9_]{0,70}", fullmatch=True)
noise = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = cli.main(list(argv))
        except SystemExit as exc:  # argparse refusing a value
            status = int(exc.code or 0)
    return status, err.getvalue()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(words, noise))
def test_plugins_new_writes_a_package_or_refuses_in_one_line(name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "out"
        status, err = run_cli("plugins", "new", name, "--dir", str(target))
        if wire.PLUGIN_NAME_RE.fullmatch(name):
            assert status == 0, err
            assert (target / "pyproject.toml").is_file()
            assert all(p.resolve().is_relative_to(target.resolve()) for p in target.rglob("*"))
        else:
            assert status == 2
            assert err.count("\n") == 1 and err.startswith("sparklem: plugin name ")
            assert not target.exists()


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    with contextlib.chdir(tmp_path_factory.mktemp("cwd")):
        return load_config()


setting_items = st.one_of(
    noise,
    st.builds(
        "{}.{}={}".format,
        st.sampled_from(["temperature", "pu_workload", "nope"]),
        st.one_of(st.sampled_from(["thermal_root", "interval", "nvidia_smi", "topic"]), noise),
        st.one_of(
            noise,
            st.sampled_from(["5", "-1", ".nan", "true", "[1, 2]", "{a: 1}", "2020-01-01", "~"]),
            st.integers(1, 400).map(lambda n: "[" * n),
        ),
    ),
)


@given(items=st.lists(setting_items, max_size=3))
@example(items=["a\nb.x=1"]).via("a plugin name holding a newline")
@example(items=["0.0\n=\x08"]).via("a key holding a newline, a value that is no YAML")
def test_set_options_are_stored_checked_or_refused_in_one_line(
    config: Config, items: list[str]
) -> None:
    try:
        specs = plugin_specs(config, None, None, parse_plugin_settings(items))
    except EnrollmentError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    for name, spec in specs.items():  # accepted: every value is one the plugin declares
        assert set(spec) >= {"topic", "interval"}, name


@given(port=st.one_of(st.integers(-(2**70), 2**70).map(str), noise))
def test_dev_broker_port_is_a_port_or_refused_by_argparse(port: str) -> None:
    args = None
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            args = cli.build_parser().parse_args(["dev-broker", "--port", port])
        except SystemExit as exc:
            assert exc.code == 2
    if args is not None:
        assert 1 <= args.port <= 65535
    else:
        assert "is not a port number" in err.getvalue() or "expected one argument" in err.getvalue()
