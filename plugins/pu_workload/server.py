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

import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType
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


# The payload, declared once: msgspec checks types and bounds in C (issue 19). Numbers
# are finite JSON numbers, never bools; byte counts are integers. ``UNSET`` marks an
# optional member left out (``null`` is refused: it is not a number or an object).
Percent = Annotated[float, Meta(ge=0.0, le=100.0)]
Bytes = Annotated[int, Meta(ge=0, le=MAX_BYTES)]
Load = Annotated[float, Meta(ge=0.0, le=MAX_LOAD)]
Celsius = Annotated[float, Meta(ge=MIN_CELSIUS, le=MAX_CELSIUS)]


def _within(used_name: str, used: int, total_name: str, total: int) -> None:
    """Used bytes never above the total (msgspec reports the ValueError with its path)."""
    if used > total:
        raise ValueError(f"{used_name} {used} exceeds {total_name} {total}")


class Cpu(Struct):
    percent: Percent
    per_core: Annotated[list[Percent], Meta(max_length=MAX_CORES)] = []
    load_avg: tuple[Load, Load, Load] | UnsetType = UNSET


class Memory(Struct):
    used_bytes: Bytes
    total_bytes: Bytes

    def __post_init__(self) -> None:
        _within("used_bytes", self.used_bytes, "total_bytes", self.total_bytes)


class Gpu(Struct):
    index: Annotated[int, Meta(ge=0, le=MAX_INDEX)]
    name: str  # checked by check_text once the index is known, to name it in the refusal
    util_percent: Percent
    mem_used_bytes: Bytes
    mem_total_bytes: Bytes
    temperature_c: Celsius | UnsetType = UNSET

    def __post_init__(self) -> None:
        _within("mem_used_bytes", self.mem_used_bytes, "mem_total_bytes", self.mem_total_bytes)


class Payload(Struct):
    cpu: Cpu | UnsetType = UNSET
    memory: Memory | UnsetType = UNSET
    gpus: Annotated[list[Gpu], Meta(max_length=MAX_GPUS)] = []


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
    try:
        payload = msgspec.convert(message.data, Payload, strict=True)
    except msgspec.ValidationError as error:
        raise InvalidPayload(_refusal(str(error))) from None
    cpu, memory, gpus = payload.cpu, payload.memory, payload.gpus
    if cpu is UNSET and not gpus:
        raise InvalidPayload("at least one of 'cpu' and a non-empty 'gpus' is required")

    common = {
        "agent_id": message.agent_id,
        "seq": message.seq,
        "measured_at": message.sent_at,
        "received_at": message.received_at,
    }
    rows: list[dict[str, Any]] = []
    if cpu is not UNSET:
        row = _row(common, "cpu", 0, cpu.percent)
        if memory is not UNSET:
            row.update(mem_used_bytes=memory.used_bytes, mem_total_bytes=memory.total_bytes)
        if cpu.load_avg is not UNSET:
            row["load_1m"], row["load_5m"], row["load_15m"] = cpu.load_avg
        rows.append(row)
        rows.extend(_row(common, "core", i, pct) for i, pct in enumerate(cpu.per_core))

    seen: set[int] = set()
    for i, gpu in enumerate(gpus):
        if gpu.index in seen:
            raise InvalidPayload(f"'gpus[{i}].index' {gpu.index} appears twice")
        seen.add(gpu.index)
        row = _row(common, "gpu", gpu.index, gpu.util_percent)
        row["name"] = check_text(gpu.name, f"gpus[{i}].name", MAX_NAME_CHARS)
        row["mem_used_bytes"], row["mem_total_bytes"] = gpu.mem_used_bytes, gpu.mem_total_bytes
        if gpu.temperature_c is not UNSET:
            row["temperature_c"] = gpu.temperature_c
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


# Where msgspec's wording ("Expected `array` of length 3, got 2") says less than the protocol.
_EXPECTED = {"cpu.load_avg": "must be a list of 3 numbers"}
_MISSING = re.compile(r"Object missing required field `(\w+)`")


def _refusal(error: str) -> str:
    """msgspec's ``<problem> - at `$.<path>``` as one line naming the member first."""
    problem, _, at = error.partition(" - at `$")
    path = at.rstrip("`").removeprefix(".") or "data"
    if missing := _MISSING.fullmatch(problem):
        path, problem = f"{path}.{missing[1]}".removeprefix("data."), "is required"
    elif path in _EXPECTED:
        problem = f"{_EXPECTED[path]} ({problem[0].lower()}{problem[1:]})"
    else:
        problem = f"{problem[0].lower()}{problem[1:]}"
    return f"'{path}' {problem}"
