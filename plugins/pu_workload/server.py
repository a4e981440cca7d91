"""Processor side of the pu_workload plugin: table, validation, rows.

Payload (PROTOCOL.md): at least one of ``cpu`` and a non-empty ``gpus``::

    {"cpu": {"percent", "per_core"?, "load_avg"?}, "memory"?: {"used_bytes", "total_bytes"},
     "gpus": [{"index", "name", "util_percent", "mem_used_bytes", "mem_total_bytes",
               "temperature_c"?}]}

The payload is checked whole: any invalid member raises :class:`InvalidPayload` and
nothing of the message is stored (there is no per-reading rejection here). Optional
members may be left out; ``null`` is not accepted in their place. Lists are capped
(``per_core`` MAX_CORES items, ``gpus`` MAX_GPUS), so one message makes a bounded number
of rows; text (GPU names) must be storable (:func:`sparklem_core.check_text`).
Unknown members are ignored, as the envelope's are. ``memory`` is stored on the ``cpu``
row, so without ``cpu`` it is checked but not stored.

Rows, one per processing unit: ``cpu`` (index 0), ``core`` (index = position in
``per_core``) and ``gpu`` (index = the GPU's ``index``); columns that do not apply are NULL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Float, Index, Integer, String

from sparklem_core import (
    InvalidPayload,
    Manifest,
    Message,
    PluginResult,
    RegisterTable,
    check_text,
    hookimpl,
)

from .manifest import MANIFEST

TABLE = "pu_workload_readings"
MAX_NAME_CHARS = 128
MAX_CORES = 1024  # per_core items: generous for any CPU, and a bound on rows per message
MAX_GPUS = 64
MAX_INDEX = 2**31 - 1  # what an INTEGER holds
# What a real device produces (PROTOCOL.md lets a plugin bound its values; docs/protocol.md
# lists these). Wider values only break fleet-wide sums and averages for everyone.
MAX_BYTES = 2**53  # 8 PiB; every byte count sums exactly in a double
MAX_LOAD = 2**22  # Linux's PID_MAX_LIMIT: no more tasks can be runnable or waiting
MIN_CELSIUS, MAX_CELSIUS = -273.15, 1000.0  # absolute zero; far above any silicon's limit


@hookimpl
def sparklem_manifest() -> Manifest:
    """Name, version, topic and agent defaults."""
    return MANIFEST


@hookimpl
def sparklem_register_tables(register: RegisterTable) -> None:
    """One row per processing unit (cpu, core, gpu) and sample."""
    register(
        TABLE,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("agent_id", String(64), nullable=False),
        Column("seq", BigInteger, nullable=False),
        Column("unit", String(8), nullable=False),  # "cpu", "core" or "gpu"
        Column("unit_index", Integer, nullable=False),
        Column("name", String(MAX_NAME_CHARS)),  # the GPU's name; NULL for cpu and core
        Column("utilization_pct", Float),
        Column("mem_used_bytes", BigInteger),
        Column("mem_total_bytes", BigInteger),
        Column("load_1m", Float),
        Column("load_5m", Float),
        Column("load_15m", Float),
        Column("temperature_c", Float),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False),
        Index(f"ix_{TABLE}_agent_measured", "agent_id", "measured_at"),
        time="measured_at",
        series=("agent_id", "unit", "unit_index"),
        values=(
            "utilization_pct",
            "mem_used_bytes",
            "mem_total_bytes",
            "load_1m",
            "load_5m",
            "load_15m",
            "temperature_c",
        ),
        units={
            "utilization_pct": "%",
            "mem_used_bytes": "B",
            "mem_total_bytes": "B",
            "load_1m": "",  # a count of runnable tasks: no unit
            "load_5m": "",
            "load_15m": "",
            "temperature_c": "°C",
        },
    )


@hookimpl
def sparklem_process(message: Message, settings: Mapping[str, Any]) -> PluginResult:
    """Validate the whole payload, then emit the cpu, core and gpu rows (no settings used)."""
    data = _object(message.data, "data")
    cpu = _object(data["cpu"], "cpu") if "cpu" in data else None
    memory = _object(data["memory"], "memory") if "memory" in data else None
    gpus = _list(data["gpus"], "gpus", MAX_GPUS) if "gpus" in data else []
    if cpu is None and not gpus:
        raise InvalidPayload("at least one of 'cpu' and a non-empty 'gpus' is required")

    mem_used, mem_total = _used_total(memory, "used_bytes", "total_bytes", "memory")
    common = {
        "agent_id": message.agent_id,
        "seq": message.seq,
        "measured_at": message.sent_at,
        "received_at": message.received_at,
    }
    rows: list[dict[str, Any]] = []
    if cpu is not None:
        row = _row(common, "cpu", 0, _percent(cpu.get("percent"), "cpu.percent"))
        row.update(mem_used_bytes=mem_used, mem_total_bytes=mem_total)
        if "load_avg" in cpu:
            row["load_1m"], row["load_5m"], row["load_15m"] = _load_avg(cpu["load_avg"])
        rows.append(row)
        per_core = _list(cpu["per_core"], "cpu.per_core", MAX_CORES) if "per_core" in cpu else []
        for i, pct in enumerate(per_core):
            rows.append(_row(common, "core", i, _percent(pct, f"cpu.per_core[{i}]")))

    seen: set[int] = set()
    for i, item in enumerate(gpus):
        where = f"gpus[{i}]"
        gpu = _object(item, where)
        index = gpu.get("index")
        if type(index) is not int or not 0 <= index <= MAX_INDEX:
            raise InvalidPayload(f"'{where}.index' must be an integer >= 0")
        if index in seen:
            raise InvalidPayload(f"'{where}.index' {index} appears twice")
        seen.add(index)
        name = check_text(gpu.get("name"), f"{where}.name", MAX_NAME_CHARS)
        row = _row(common, "gpu", index, _percent(gpu.get("util_percent"), f"{where}.util_percent"))
        row["name"] = name
        row["mem_used_bytes"], row["mem_total_bytes"] = _used_total(
            gpu, "mem_used_bytes", "mem_total_bytes", where
        )
        if "temperature_c" in gpu:
            row["temperature_c"] = _number(
                gpu["temperature_c"], f"{where}.temperature_c", MIN_CELSIUS, MAX_CELSIUS
            )
        rows.append(row)

    return PluginResult(rows={TABLE: rows})


def _row(common: Mapping[str, Any], unit: str, index: int, utilization: float) -> dict[str, Any]:
    """A row with every column present; those that do not apply stay None (NULL)."""
    return {
        **common,
        "unit": unit,
        "unit_index": index,
        "name": None,
        "utilization_pct": utilization,
        "mem_used_bytes": None,
        "mem_total_bytes": None,
        "load_1m": None,
        "load_5m": None,
        "load_15m": None,
        "temperature_c": None,
    }


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):  # JSON objects arrive as dicts
        raise InvalidPayload(f"'{what}' must be an object")
    return value


def _list(value: Any, what: str, max_items: int) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidPayload(f"'{what}' must be a list")
    if len(value) > max_items:
        raise InvalidPayload(f"'{what}' must hold at most {max_items} items, not {len(value)}")
    return value


def _number(value: Any, what: str, low: float = -math.inf, high: float = math.inf) -> float:
    """A finite JSON number (not a bool) within [low, high], as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPayload(f"'{what}' must be a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = math.inf
    if not math.isfinite(number) or not low <= number <= high:
        raise InvalidPayload(f"'{what}' must be a finite number in [{low:g}, {high:g}]")
    return number


def _percent(value: Any, what: str) -> float:
    return _number(value, what, 0.0, 100.0)


def _used_total(
    parent: Mapping[str, Any] | None, used_key: str, total_key: str, what: str
) -> tuple[int | None, int | None]:
    """(used, total) byte counts: integers >= 0 with used <= total; (None, None) without parent."""
    if parent is None:
        return None, None
    used, total = parent.get(used_key), parent.get(total_key)
    for key, value in ((used_key, used), (total_key, total)):
        if type(value) is not int or not 0 <= value <= MAX_BYTES:
            raise InvalidPayload(f"'{what}.{key}' must be an integer in [0, 2^53]")
    if used > total:
        raise InvalidPayload(f"'{what}.{used_key}' {used} exceeds '{total_key}' {total}")
    return used, total


def _load_avg(value: Any) -> tuple[float, float, float]:
    if not isinstance(value, list) or len(value) != 3:
        raise InvalidPayload("'cpu.load_avg' must be a list of 3 numbers")
    loads = value
    one, five, fifteen = (_number(x, "cpu.load_avg[]", 0.0, MAX_LOAD) for x in loads)
    return one, five, fifteen
