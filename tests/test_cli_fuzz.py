"""Hostile command-line input: `plugins new NAME`, `--set PLUGIN.KEY=VALUE`, `--port`,
`redrive --since/--reason/--plugin/--agent`.

Whatever is typed, each either does its job or refuses in one line: never a traceback,
never a file outside the directory asked for.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, insert

from sparklem_core import cli, wire
from sparklem_core.admin.cli import parse_plugin_settings
from sparklem_core.admin.enrollment import EnrollmentError, plugin_specs
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import create_server_key
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
@example(name="-:")  # found by a fresh run: read as an option unless it follows "--"
def test_plugins_new_writes_a_package_or_refuses_in_one_line(name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "out"
        # "--" first, as a user must for a name that starts with "-": the name itself is
        # what is judged here, not argparse's reading of options.
        status, err = run_cli("plugins", "new", "--dir", str(target), "--", name)
        if wire.PLUGIN_NAME_RE.fullmatch(name):
            assert status == 0, err
            assert (target / "pyproject.toml").is_file()
            assert all(p.resolve().is_relative_to(target.resolve()) for p in target.rglob("*"))
        else:
            assert status == 2
            assert err.count("\n") == 1 and err.startswith("sparklem: plugin name ")
            assert not target.exists()


def test_a_name_read_as_an_option_gets_argparse_usage_and_exit_2() -> None:
    status, err = run_cli("plugins", "new", "-:")
    assert status == 2
    assert err.splitlines()[-1].startswith("sparklem plugins new: error: ")


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


# --- redrive's selection: --since, --reason, --plugin, --agent -----------------------------

offsets = st.builds(
    timezone, st.timedeltas(-timedelta(hours=23, minutes=59), timedelta(hours=23, minutes=59))
)
# What a command line can hold: any text but NUL (an argv string ends at one).
arg_text = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",), exclude_characters="\x00"),
    max_size=80,
)
since_values = st.one_of(
    arg_text,
    st.integers(-(2**70), 2**70).map(str),
    st.datetimes(timezones=st.none() | offsets).map(datetime.isoformat),
    st.sampled_from(["9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00+01:00", "²", "١٢٣",
                     "2026-11-30T04:00:00Z", "253402300800000", "1e3", "--agent"]),
)  # fmt: skip
reason_values = st.one_of(arg_text, st.sampled_from(wire.REASONS))


def redrive_argv(since: str, reasons: list[str], plugin: str, agent: str) -> list[str]:
    """The options as ``--name=value``: a value starting with ``-`` stays a value."""
    return [
        "redrive",
        f"--since={since}",
        *(f"--reason={r}" for r in reasons),
        f"--plugin={plugin}",
        f"--agent={agent}",
    ]


@given(
    since=since_values,
    reasons=st.lists(reason_values, max_size=2),
    plugin=arg_text,
    agent=arg_text,
)
@example(since="9999-12-31T23:59:59-01:00", reasons=[], plugin="", agent="").via(
    "after the year 9999 once in UTC (was an OverflowError traceback)"
)
@example(since="²", reasons=[], plugin="", agent="").via("a digit int() refuses")
def test_redrive_options_parse_or_are_refused_in_one_line(
    since: str, reasons: list[str], plugin: str, agent: str
) -> None:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            args = cli.build_parser().parse_args(redrive_argv(since, reasons, plugin, agent))
    except SystemExit as exc:
        assert exc.code == 2
        error = err.getvalue().splitlines()[-1]  # after argparse's usage lines
        assert error.startswith("sparklem redrive: error: argument --"), err.getvalue()
        assert "Traceback" not in err.getvalue()
        return
    assert args.since.tzinfo is not None and 1 <= args.since.year <= 9999
    assert args.reason == (reasons or None) and set(reasons) <= set(wire.REASONS)
    assert (args.plugin, args.agent) == (plugin, agent)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    certs = tmp_path_factory.mktemp("certs")
    create_server_key(certs, bits=2048)
    return certs


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    since=since_values,
    reasons=st.lists(reason_values, max_size=2),
    plugin=arg_text,
    agent=arg_text,
)
@example(since="0", reasons=["unknown_agent"], plugin="temperature", agent="Jetson-01").via(
    "selects the record"
)
@example(since="0", reasons=[], plugin="temperature", agent="jetson-01").via(
    "another agent (ids compare byte for byte, MariaDB too)"
)
@example(since="0", reasons=[], plugin="😀" * 40, agent="Jetson-01").via("4-byte, too long")
def test_redrive_runs_or_refuses_in_one_line_whatever_it_is_given(
    tmp_path: Path,
    certificates: Path,
    database_url: str,
    since: str,
    reasons: list[str],
    plugin: str,
    agent: str,
) -> None:
    """The whole command on each database, over a quarantine holding one record."""
    store = Store(database_url, "g")
    store.create_schema()
    where = {
        "topic": "sparklem.temperature",
        "partition": 0,
        "offset": 7,
        "agent_id": "Jetson-01",
        "plugin": "temperature",
        "received_at": datetime.now(UTC),
    }
    record = {**where, "authenticated": False, "size": 2, "truncated": False, "value": b"{}"}
    with store.engine.begin() as conn:
        conn.execute(delete(store.rejected))
        conn.execute(delete(store.records))
        conn.execute(insert(store.records), record)
        conn.execute(insert(store.rejected), {**where, "reason": "unknown_agent", "detail": "?"})
    store.dispose()
    config = tmp_path / "config.yaml"
    config.write_text(
        json.dumps({"certificates": str(certificates), "database": {"url": database_url}})
    )
    argv = redrive_argv(since, reasons, plugin, agent)
    status, err = run_cli(*argv[:1], "--config", str(config), "--dry-run", *argv[1:])
    assert "Traceback" not in err
    if status != 0:  # else it ran, judging the record or leaving it out of the selection
        assert status == 2, err
        assert err.splitlines()[-1].startswith("sparklem redrive: error: argument --"), err
