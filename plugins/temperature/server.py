"""Processor side of the temperature plugin: table, validation, rows.

Payload (PROTOCOL.md): ``{"readings": [{"sensor", "value", "unit"?, "ts"?}, ...]}``.
A bad payload as a whole raises :class:`InvalidPayload`; a bad single reading is
rejected on its own (``invalid_reading``) and its siblings are still stored.
Unknown members, of the payload or of a reading, are ignored, as the envelope's are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Float, Index, Integer, String

from sparklem_core import (
    MAX_TS_MS,
    InvalidPayload,
    Manifest,
    Message,
    PluginResult,
    RegisterTable,
    check_text,
    hookimpl,
)

from .manifest import MANIFEST

TABLE = "temperature_readings"
MAX_READINGS = 1000
MAX_SENSOR_CHARS = 128
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ABSOLUTE_ZERO = {"C": -273.15, "F": -459.67, "K": 0.0}  # per unit, checked before converting


@hookimpl
def sparklem_manifest() -> Manifest:
    """Name, version, topic and declared settings."""
    return MANIFEST


@hookimpl
def sparklem_register_tables(register: RegisterTable) -> None:
    """One row per accepted reading, in Celsius."""
    register(
        TABLE,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("agent_id", String(64), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("sensor", String(MAX_SENSOR_CHARS), nullable=False),
        Column("celsius", Float, nullable=False),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        Index(f"ix_{TABLE}_agent_measured", "agent_id", "measured_at"),
        time="measured_at",
        series=("agent_id", "sensor"),
        values=("celsius",),
        units={"celsius": "°C"},
    )


@hookimpl
def sparklem_process(message: Message, settings: Mapping[str, Any]) -> PluginResult:
    """Validate the readings and turn each good one into a row.

    ``settings`` (declared in manifest.py, validated by the core): ``min_celsius`` and
    ``max_celsius``, the plausible range, bounds included; a reading outside it is
    rejected on its own.
    """
    readings = message.data.get("readings") if isinstance(message.data, dict) else None
    if not isinstance(readings, list):
        raise InvalidPayload("'readings' must be a list")
    if not 1 <= len(readings) <= MAX_READINGS:
        raise InvalidPayload(f"'readings' must hold 1 to {MAX_READINGS} items, not {len(readings)}")
    low, high = settings["min_celsius"], settings["max_celsius"]

    result = PluginResult()
    for reading in readings:
        try:
            sensor, celsius, measured_at = _parse_reading(reading, low, high)
        except ValueError as exc:
            result.reject(str(exc), reading)
            continue
        row = {
            "agent_id": message.agent_id,
            "seq": message.seq,
            "sensor": sensor,
            "celsius": celsius,
            "measured_at": measured_at or message.sent_at,
            "received_at": message.received_at,
        }
        result.add_row(TABLE, row)
    return result


def _parse_reading(reading: Any, low: float, high: float) -> tuple[str, float, datetime | None]:
    """Return (sensor, celsius, measured_at or None for the message's ts), or raise ValueError."""
    if not isinstance(reading, dict):  # JSON objects arrive as dicts
        raise ValueError("a reading must be an object")
    sensor = check_text(reading.get("sensor"), "sensor", MAX_SENSOR_CHARS)
    value = reading.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("'value' must be a number")
    try:
        value = float(value)  # OverflowError: an integer beyond float range
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ValueError("'value' must be finite")
    unit = reading.get("unit", "C")
    if not isinstance(unit, str) or unit not in ABSOLUTE_ZERO:
        raise ValueError("'unit' must be C, F or K")
    if value < ABSOLUTE_ZERO[unit]:
        raise ValueError(f"{value:g} {unit} is below absolute zero")
    celsius = to_celsius(value, unit)
    if not low <= celsius <= high:
        raise ValueError(f"{celsius:g} C is outside the plausible range [{low:g}, {high:g}] C")
    if "ts" not in reading:
        return sensor, celsius, None
    ts = reading["ts"]
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        raise ValueError("'ts' must be an integer count of milliseconds since the epoch")
    return sensor, celsius, EPOCH + timedelta(milliseconds=ts)


def to_celsius(value: float, unit: str) -> float:
    """Convert a temperature in ``unit`` ("C", "F" or "K") to Celsius."""
    if unit == "F":
        return (value - 32.0) * 5.0 / 9.0
    if unit == "K":
        return value - 273.15
    return value
