"""``main.py plugins new NAME``: a complete, installable plugin package to start from.

The package is a small working plugin (samples of one number per sensor), with its
tests written against the plugin authors' kit (:mod:`sparklem_core.testing`).
"""

from __future__ import annotations

from pathlib import Path
from string import Template

from sparklem_core import __version__, wire


class ScaffoldError(ValueError):
    """The plugin cannot be written there; the message says what to do instead."""


PYPROJECT = """\
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "sparklem-$dist"
version = "0.1.0"
description = "Sparkle-M plugin $name"
readme = "README.md"
requires-python = ">=3.11"
# Everything the plugin imports beyond the standard library goes here.
dependencies = ["sparklem>=$version", "SQLAlchemy>=2.0"]

[project.optional-dependencies]
test = ["pytest>=8"]

# How the processor, the agent and `main.py plugins` find the plugin.
[project.entry-points.sparklem]
$name = "$package"

[tool.setuptools.packages.find]
include = ["$package*"]

[tool.pytest.ini_options]
testpaths = ["tests"]
"""

README = """\
# sparklem-$dist

A Sparkle-M plugin: agents send `{"samples": [{"sensor": str, "value": number}]}`
on topic `sparklem.$name`; the processor stores one row per sample in `${name}_readings`.

    pip install -e '.[test]'     # next to sparklem, on the processor and on agents
    pytest                       # the tests use sparklem's kit (fixture plugin_harness)
    python3 main.py plugins      # from the sparklem checkout: $name is listed, ok

A running processor loads a newly installed plugin at its next start: restart it.

- `$package/manifest.py`: name, version and declared settings (`plugins.$name.*`).
- `$package/server.py`: processor side: the table and `sparklem_process`.
- `$package/main.py`: agent side: `sparklem_collect`.
"""

INIT = '''\
"""The $name plugin: the hooks under their standard names (entry point group sparklem)."""

from .main import sparklem_collect
from .server import sparklem_manifest, sparklem_process, sparklem_register_tables

__all__ = [
    "sparklem_collect",
    "sparklem_manifest",
    "sparklem_process",
    "sparklem_register_tables",
]
'''

MANIFEST = '''\
"""What the $name plugin is: read by the processor, the agent and `main.py plugins`."""

from sparklem_core import Manifest, Setting

MANIFEST = Manifest(
    name="$name",
    version="0.1.0",
    description="$name samples, one number per sensor.",
    settings=[
        Setting("max_value", float, 1000, "highest plausible value; above it a sample is refused"),
        Setting("interval", int, 60, "seconds between two samples", side="agent"),
        Setting("source", str, "", "file holding one number to send; empty: none", side="agent"),
    ],
)
'''

SERVER = '''\
"""Processor side: {"samples": [{"sensor": str, "value": number}, ...]} into rows."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sparklem_core import (
    InvalidPayload,
    Manifest,
    Message,
    PluginResult,
    RegisterTable,
    check_text,
    hookimpl,
)
from sqlalchemy import BigInteger, Column, DateTime, Float, Integer, String

from .manifest import MANIFEST

TABLE = "${name}_readings"
MAX_SAMPLES = 100
MAX_SENSOR_CHARS = 128


@hookimpl
def sparklem_manifest() -> Manifest:
    return MANIFEST


@hookimpl
def sparklem_register_tables(register: RegisterTable) -> None:
    register(
        TABLE,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("agent_id", String(64), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("sensor", String(MAX_SENSOR_CHARS), nullable=False),
        Column("value", Float, nullable=False),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        # What retention and reads use: when, which series (one per agent and sensor), values.
        time="measured_at",
        series=("agent_id", "sensor"),
        values=("value",),
        # The value's unit, on the dashboard: "°C", "%" (drawn 0-100), "B" (bytes); "": none.
        units={"value": ""},
    )


@hookimpl
def sparklem_process(message: Message, settings: Mapping[str, Any]) -> PluginResult:
    """One row per good sample; a bad sample is refused alone, its siblings stored."""
    samples = message.data.get("samples")
    if not isinstance(samples, list) or not 1 <= len(samples) <= MAX_SAMPLES:
        raise InvalidPayload(f"'samples' must be a list of 1 to {MAX_SAMPLES} items")
    result = PluginResult()
    for sample in samples:
        try:
            row = _row(message, sample, settings["max_value"])
        except ValueError as exc:
            result.reject(str(exc), sample)
        else:
            result.add_row(TABLE, row)
    return result


def _row(message: Message, sample: Any, highest: float) -> dict[str, Any]:
    if not isinstance(sample, dict):
        raise ValueError("a sample must be an object")
    sensor = check_text(sample.get("sensor"), "sensor", MAX_SENSOR_CHARS)
    value = sample.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("'value' must be a number")
    if not math.isfinite(value) or value > highest:
        raise ValueError(f"'value' must be finite and at most {highest:g}")
    return {
        "agent_id": message.agent_id,
        "seq": message.seq,
        "sensor": sensor,
        "value": float(value),
        "measured_at": message.sent_at,
        # The processor's arrival time: sparklem_process is pure and never reads the clock.
        "received_at": message.received_at,
    }
'''

AGENT = '''\
"""Agent side: read one number from the file named by the `source` setting."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sparklem_core import hookimpl

# One number and a newline; more is not a reading (a log file, /dev/zero): never read it all.
MAX_SOURCE_BYTES = 64


@hookimpl
def sparklem_collect(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    if not settings["source"]:
        return None  # nothing configured: send nothing
    path = Path(settings["source"])
    try:
        with path.open("rb") as source:
            raw = source.read(MAX_SOURCE_BYTES + 1)
        value = float(raw.decode("ascii"))
    except (OSError, ValueError):
        return None  # no sensor here, or it could not be read: send nothing
    if len(raw) > MAX_SOURCE_BYTES or not math.isfinite(value):
        return None  # not one number (NaN and infinities are not JSON): send nothing
    return {"samples": [{"sensor": path.name, "value": value}]}
'''

TESTS = '''\
"""The $name plugin through the real Sparkle-M pipeline, with sparklem's kit.

``plugin_harness`` comes with sparklem (a pytest plugin): it seals messages as an
agent does and stores them as the processor does, in a fresh SQLite database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sparklem_core.testing import PluginHarness

import $package
from $package.server import TABLE


@pytest.fixture
def plugin(plugin_harness) -> PluginHarness:
    return plugin_harness($package)


def test_a_sample_is_stored(plugin: PluginHarness) -> None:
    outcome = plugin.send({"samples": [{"sensor": "s1", "value": 21.5}]})
    assert outcome.stored and outcome.rejections == []
    (row,) = outcome.rows(TABLE)
    assert (row["agent_id"], row["sensor"], row["value"]) == ("edge-1", "s1", 21.5)


def test_a_row_keeps_the_time_the_processor_received_it(plugin: PluginHarness) -> None:
    received = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    result = plugin.process({"samples": [{"sensor": "s1", "value": 1}]}, received_at=received)
    assert [row["received_at"] for row in result.rows[TABLE]] == [received]


def test_a_bad_sample_is_refused_alone(plugin: PluginHarness) -> None:
    samples = [{"sensor": "s1", "value": "hot"}, {"sensor": "s2", "value": 1}]
    outcome = plugin.send({"samples": samples})
    assert [row["sensor"] for row in outcome.rows(TABLE)] == ["s2"]
    assert [r.reason for r in outcome.rejections] == ["invalid_reading"]


def test_a_payload_without_samples_is_refused(plugin: PluginHarness) -> None:
    outcome = plugin.send({"readings": []})
    assert outcome.rows(TABLE) == []
    assert [r.reason for r in outcome.rejections] == ["invalid_payload"]


def test_max_value_setting(plugin_harness) -> None:
    strict = plugin_harness($package, {"max_value": 10})
    outcome = strict.send({"samples": [{"sensor": "s1", "value": 11}]})
    assert outcome.rows(TABLE) == [] and "at most 10" in outcome.rejections[0].detail


def test_collect_reads_the_source(plugin: PluginHarness, tmp_path: Path) -> None:
    assert plugin.collect() is None
    source = tmp_path / "sensor0"
    source.write_text("42.5\\n")
    assert plugin.collect({"source": str(source)}) == {
        "samples": [{"sensor": "sensor0", "value": 42.5}]
    }


@pytest.mark.parametrize("text", ["", "hot", "nan", "-inf", "1e999", "1" * 100, "4\\u00b02"])
def test_collect_sends_nothing_but_one_finite_number(
    plugin: PluginHarness, tmp_path: Path, text: str
) -> None:
    source = tmp_path / "sensor0"
    source.write_text(text + "\\n", encoding="utf-8")
    assert plugin.collect({"source": str(source)}) is None
'''


def files(name: str) -> dict[str, str]:
    """The plugin package's files, relative path -> text."""
    package = f"sparklem_{name}"
    values = {
        "name": name,
        "dist": name.replace("_", "-"),
        "package": package,
        "version": __version__,
    }
    templates = {
        "pyproject.toml": PYPROJECT,
        "README.md": README,
        f"{package}/__init__.py": INIT,
        f"{package}/manifest.py": MANIFEST,
        f"{package}/server.py": SERVER,
        f"{package}/main.py": AGENT,
        f"tests/test_{name}.py": TESTS,
    }
    return {path: Template(text).substitute(values) for path, text in templates.items()}


def write_plugin(name: str, directory: Path) -> list[Path]:
    """Write the package for plugin ``name`` into ``directory`` (new or empty)."""
    if not wire.PLUGIN_NAME_RE.fullmatch(name):
        raise ScaffoldError(
            f"plugin name {name!r} must be lowercase letters, digits and _, starting with a "
            "letter, at most 64 characters (e.g. humidity)"
        )
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ScaffoldError(f"{directory} already exists; choose another --dir or remove it")
    written = []
    for relative, text in files(name).items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
