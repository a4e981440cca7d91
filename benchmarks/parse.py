"""Worst-case cost of one hostile record on the per-record path, against the 50 ms target.

``python3 -m benchmarks.parse [--size BYTES] [--repeat N]``

Builds records of about ``--size`` bytes (default 1 MiB, the default
``max_message_bytes``) in the shapes that are hardest to parse or check:

record shapes (the record value itself)
    deep nesting, unclosed strings, runs of escapes ``"\\"...``, 33 brackets then an escape
    run (once quadratic in the depth check), long integers, long float digits, many keys,
    many small lists, duplicate keys, lone-surrogate escapes, documents at the JSON limits
    (as many arrays, members and 20-digit integers as ``wire.loads_json`` lets
    through), and a valid envelope whose ``ct`` holds ``--size`` bytes;
sealed shapes (a plaintext sealed as an agent does, so every check before it passes)
    the same shapes inside a ``temperature`` or ``pu_workload`` plaintext: lists beyond
    their caps, 1000 readings that are each refused, long or escaped sensor names, huge
    numbers, deep nesting, many or duplicate keys.

Each is timed, best of ``--repeat`` rounds, at each stage of the per-record path:
``wire.parse_envelope`` (which runs ``loads_json``), ``wire.parse_plaintext`` and
the plugin's own processing for sealed ones, and ``Pipeline.process`` on the one record
(everything up to the database batch; SQLite in a temporary directory holds the marks).
The pipeline here accepts records up to twice ``--size``, so that records beyond the
product's limit are parsed and timed too rather than refused as ``too_large`` for free.

Prints a table of shape -> ms per record and the slowest against the 50 ms target, then
one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from Crypto.PublicKey import RSA
from sparklem_plugins.pu_workload.server import MAX_CORES, MAX_GPUS
from sparklem_plugins.temperature.server import MAX_READINGS

from sparklem_core import wire
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import AgentRegistry
from sparklem_core.plugin_api import Message
from sparklem_core.plugin_host import PluginHost
from sparklem_core.processor.pipeline import Record
from sparklem_core.processor.wiring import build_pipeline
from sparklem_core.settings.config import Config, ProcessorSettings
from sparklem_core.wire import MAX_INT_DIGITS, MAX_JSON_COMMAS, MAX_JSON_CONTAINERS

TARGET_MS = 50.0
KEY_BITS = 2048
AGENT = "edge-bench"
TOPICS = {"temperature": "sparklem.temperature", "pu_workload": "sparklem.pu_workload"}


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def best_ms(fn: Callable[[], object], repeat: int) -> float:
    """Best wall time of ``repeat`` calls after one untimed call, in milliseconds."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def _fill(head: bytes, unit: bytes, tail: bytes, size: int) -> bytes:
    """``head + unit * k + tail`` of about ``size`` bytes."""
    return head + unit * max(1, (size - len(head) - len(tail)) // len(unit)) + tail


def json_shapes(size: int) -> dict[str, bytes]:
    """Hostile JSON texts of about ``size`` bytes, valid JSON or not."""
    half = size // 2
    return {
        "deep nesting, unclosed": b"[" * size,
        "deep nesting, closed": b"[" * half + b"]" * half,
        "deep objects, unclosed": _fill(b"", b'{"a":', b"", size),
        "unclosed string": _fill(b'"', b"a", b"", size),
        "escape run": _fill(b'"', b'\\"', b"", size),
        "33 brackets + escape run": _fill(b"[" * 33 + b'"', b'\\"', b"", size),
        "long integer": b"1" * size,
        "long float digits": _fill(b"0.", b"1", b"", size),
        "long exponent": _fill(b"1e", b"9", b"", size),
        "many keys": b"{"
        + b",".join(b'"k%d":0' % i for i in range(size // 10))[: size - 2].rsplit(b",", 1)[0]
        + b"}",
        "many small lists": _fill(b"[", b"[0],", b"[0]]", size),
        "duplicate keys": _fill(b"{", b'"a":0,', b'"a":0}', size),
        "lone surrogate escapes": _fill(b'"', b"\\ud800", b'"', size),
        **at_the_caps(size),
    }


def at_the_caps(size: int) -> dict[str, bytes]:
    """The costliest documents the JSON limits let through: as many arrays, members and
    long integers as allowed, the rest of ``size`` a plain string."""

    def padded(body: bytes) -> bytes:
        return b'{"pad":"' + b"a" * max(0, size - len(body) - 12) + b'","x":' + body + b"}"

    lists = MAX_JSON_CONTAINERS - 4  # room for the outer array, object and plaintext
    key_bytes = max(8, size // MAX_JSON_COMMAS - 4)
    keys = (b'"%0*d":0' % (key_bytes, i) for i in range(MAX_JSON_COMMAS - 4))
    return {
        "at the caps: arrays": padded(b"[" + b",".join([b"[0,0]"] * lists) + b"]"),
        "at the caps: keys": b"{" + b",".join(keys) + b"}",
        "at the caps: 20-digit integers": padded(
            b"[" + b",".join([b"9" * MAX_INT_DIGITS] * (MAX_JSON_COMMAS - 4)) + b"]"
        ),
    }


def _readings(count: int, sensor: str, value: str = "20.5") -> bytes:
    one = '{"sensor":%s,"value":%s}' % (json.dumps(sensor), value)  # noqa: UP031
    return ("[" + ",".join([one] * count) + "]").encode()


def _plaintext(data: bytes, seq: int = 1) -> bytes:
    ts = int(time.time() * 1000)
    return b'{"seq":%d,"ts":%d,"data":%s}' % (seq, ts, data)


def sealed_shapes(size: int) -> dict[str, tuple[str, bytes]]:
    """(plugin, plaintext) of hostile plaintexts whose sealed record is about ``size`` bytes."""
    p = max(1024, size * 3 // 4 - 2048)  # base64 grows the ciphertext by 4/3
    shapes = json_shapes(p - 40)
    cap = MAX_READINGS
    per_reading = max(50, p // cap)
    return {
        "readings beyond the cap": (
            "temperature",
            _plaintext(b'{"readings":' + _readings(max(cap + 1, p // 27), "s") + b"}"),
        ),
        "1000 readings, each refused (long sensor)": (
            "temperature",
            _plaintext(b'{"readings":' + _readings(cap, "x" * (per_reading - 30)) + b"}"),
        ),
        "1000 readings, each refused (NUL)": (
            "temperature",
            _plaintext(b'{"readings":' + _readings(cap, "a\x00b") + b"}"),
        ),
        "1000 readings, each not an object": (
            "temperature",
            _plaintext(b'{"readings":[' + b",".join([b"[0]"] * cap) + b"]}"),
        ),
        "1000 readings, long float digits": (
            "temperature",
            _plaintext(
                b'{"readings":' + _readings(cap, "s", "0." + "1" * (per_reading - 40)) + b"}"
            ),
        ),
        "1000 readings, 4300-digit values": (
            "temperature",
            _plaintext(b'{"readings":' + _readings(min(cap, p // 4330), "s", "9" * 4300) + b"}"),
        ),
        "escape run in a sensor name": (
            "temperature",
            _plaintext(b'{"readings":[{"sensor":' + shapes["escape run"] + b'","value":1}]}'),
        ),
        "per_core beyond the cap": (
            "pu_workload",
            _plaintext(
                b'{"cpu":{"percent":1,"per_core":'
                + _fill(b"[", b"0,", b"0]", max(p, 2 * MAX_CORES + 4))
                + b"}}"
            ),
        ),
        f"{MAX_CORES} cores and {MAX_GPUS} GPUs (the caps)": (
            "pu_workload",
            _plaintext(
                json.dumps(
                    {
                        "cpu": {"percent": 1.0, "per_core": [1.5] * MAX_CORES},
                        "gpus": [
                            {
                                "index": i,
                                "name": "G" * 128,
                                "util_percent": 1.0,
                                "mem_used_bytes": 1,
                                "mem_total_bytes": 2,
                            }
                            for i in range(MAX_GPUS)
                        ],
                    }
                ).encode()
            ),
        ),
        "many small lists as gpus": (
            "pu_workload",
            _plaintext(b'{"gpus":' + shapes["many small lists"] + b"}"),
        ),
        "deep nesting in data": (
            "temperature",
            _plaintext(b'{"readings":' + shapes["deep nesting, closed"] + b"}"),
        ),
        "33 brackets + escape run as plaintext": (
            "temperature",
            shapes["33 brackets + escape run"],
        ),
        "many keys in data": (
            "temperature",
            _plaintext(shapes["many keys"][:-1] + b',"readings":' + _readings(1, "s") + b"}"),
        ),
        "duplicate keys in data": (
            "temperature",
            _plaintext(
                _fill(b"{", b'"readings":[],', b'"readings":' + _readings(1, "s") + b"}", p)
            ),
        ),
        "long integer as seq": ("temperature", b'{"seq":' + shapes["long integer"] + b"}"),
        **{
            f"{name} in data": ("temperature", _plaintext(doc))
            for name, doc in at_the_caps(p).items()
        },
    }


@dataclass
class Row:
    shape: str
    kind: str  # "record" or "sealed"
    record_bytes: int
    envelope_ms: float
    plaintext_ms: float | None
    plugin_ms: float | None
    pipeline_ms: float
    outcome: str

    @property
    def worst_ms(self) -> float:
        return max(self.envelope_ms, self.pipeline_ms)


class Bench:
    """A processor's per-record path over a temporary certificates directory and SQLite."""

    def __init__(self, root: Path, size: int) -> None:
        _progress(f"generating two {KEY_BITS}-bit keys")
        self.server_key, self.agent_key = RSA.generate(KEY_BITS), RSA.generate(KEY_BITS)
        certs = root / "certificates"
        (certs / "agents").mkdir(parents=True)
        (certs / "agents" / f"{AGENT}.pem").write_bytes(
            self.agent_key.public_key().export_key(format="PEM")
        )
        self.session = wire.SessionKey(self.server_key.public_key())
        self.store = Store(f"sqlite:///{root / 'bench.sqlite3'}", "bench-parse")
        self.host = PluginHost(None)
        self.host.register_tables(self.store.register_table, self.store.drop_registrations)
        self.store.create_schema()
        settings = ProcessorSettings()
        settings.max_message_bytes = max(settings.max_message_bytes, 2 * size + 65536)
        self.pipeline = build_pipeline(
            Config(certificates=certs, processor=settings),
            self.host,
            self.store,
            {wire.key_id(self.server_key): self.server_key},
            AgentRegistry(certs, refresh_s=3600),
        )
        self.offset = 0

    def seal(self, plaintext: bytes, plugin: str) -> bytes:
        return wire.seal(
            plaintext, agent=AGENT, plugin=plugin, session=self.session, agent_key=self.agent_key
        ).to_json()

    def process(self, value: bytes, topic: str) -> str:
        """Pipeline.process on one fresh record (nothing committed: its seq stays new)."""
        self.offset += 1
        _, stats = self.pipeline.process([Record(topic, 0, self.offset, value)])
        reasons = ", ".join(f"{r} x{n}" if n > 1 else r for r, n in sorted(stats.rejected.items()))
        stored = f"stored, {stats.rows} rows" if stats.stored else ""
        return "; ".join(part for part in (stored, reasons) if part) or "duplicate"

    def record_row(self, shape: str, value: bytes, repeat: int) -> Row:
        envelope = best_ms(lambda: _rejected(wire.parse_envelope, value), repeat)
        pipeline = best_ms(lambda: self.process(value, TOPICS["temperature"]), repeat)
        outcome = self.process(value, TOPICS["temperature"])
        return Row(shape, "record", len(value), envelope, None, None, pipeline, outcome)

    def sealed_row(self, shape: str, plugin: str, plaintext: bytes, repeat: int) -> Row:
        value = self.seal(plaintext, plugin)
        envelope = best_ms(lambda: wire.parse_envelope(value), repeat)
        parsed = _rejected(wire.parse_plaintext, plaintext)
        plaintext_ms = best_ms(lambda: _rejected(wire.parse_plaintext, plaintext), repeat)
        plugin_ms = None
        if isinstance(parsed, wire.Plaintext):
            info = self.host.loaded()[plugin]
            now = datetime.now(UTC)
            message = Message(AGENT, plugin, parsed.seq, now, parsed.data, now)
            settings = self.pipeline.plugin_settings[plugin]  # as the pipeline hands them
            plugin_ms = best_ms(
                lambda: _rejected(self.host.process, info, message, settings), repeat
            )
        pipeline = best_ms(lambda: self.process(value, TOPICS[plugin]), repeat)
        outcome = self.process(value, TOPICS[plugin])
        return Row(
            shape, "sealed", len(value), envelope, plaintext_ms, plugin_ms, pipeline, outcome
        )

    def valid_envelope_row(self, size: int, repeat: int) -> Row:
        """A valid envelope whose ciphertext holds ``size`` bytes (a stored message)."""
        reading = b'{"readings":[{"sensor":"s","value":1}],"pad":"'
        data = _fill(reading, b"x", b'"}', size - 40)
        return self.sealed_row(f"valid envelope, {size // 1024} KiB ct", "temperature",
                               _plaintext(data), repeat)  # fmt: skip


def _rejected(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)``, or the Rejected or ValueError it raised (what the pipeline catches)."""
    try:
        return fn(*args)
    except (wire.Rejected, ValueError) as exc:
        return exc


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def print_table(rows: list[Row], size: int, repeat: int) -> None:
    print(f"one record of about {size:,} bytes per shape; best of {repeat}; ms per record")
    print(
        f"{'shape':<44} {'kind':<6} {'KiB':>6} {'envelope':>9} {'plaintext':>9} "
        f"{'plugin':>8} {'pipeline':>9}  outcome"
    )
    for row in rows:
        print(
            f"{row.shape[:44]:<44} {row.kind:<6} {row.record_bytes / 1024:6.0f} "
            f"{_ms(row.envelope_ms):>9} {_ms(row.plaintext_ms):>9} {_ms(row.plugin_ms):>8} "
            f"{_ms(row.pipeline_ms):>9}  {row.outcome[:60]}"
        )
    slowest = max(rows, key=lambda r: r.worst_ms)
    verdict = "within" if slowest.worst_ms <= TARGET_MS else "OVER"
    print(
        f"slowest: {slowest.shape} ({slowest.kind}), {slowest.worst_ms:.2f} ms: {verdict} "
        f"the {TARGET_MS:.0f} ms target"
    )


def _positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.parse",
        description="Time the per-record path (parse_envelope, parse_plaintext, the plugin, "
        "Pipeline.process) on worst-case record shapes, against the 50 ms target.",
        epilog="Prints a table, then one JSON line with every figure.",
    )
    parser.add_argument(
        "--size",
        type=_positive,
        default=1024 * 1024,
        metavar="BYTES",
        help="about how large each record is; default 1 MiB (1048576)",
    )
    parser.add_argument("--repeat", type=_positive, default=3, metavar="N",
                        help="timing rounds per stage, the best kept; default 3")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sparklem-bench-parse-") as tmp:
        bench = Bench(Path(tmp), args.size)
        try:
            for shape, value in json_shapes(args.size).items():
                _progress(f"record: {shape}")
                rows.append(bench.record_row(shape, value, args.repeat))
            for shape, (plugin, plaintext) in sealed_shapes(args.size).items():
                _progress(f"sealed: {shape}")
                rows.append(bench.sealed_row(shape, plugin, plaintext, args.repeat))
            _progress("valid envelope")
            rows.append(bench.valid_envelope_row(args.size, args.repeat))
        finally:
            bench.store.dispose()
    print_table(rows, args.size, args.repeat)
    slowest = max(rows, key=lambda r: r.worst_ms)
    report = {
        "size": args.size,
        "repeat": args.repeat,
        "target_ms": TARGET_MS,
        "slowest_shape": slowest.shape,
        "slowest_ms": round(slowest.worst_ms, 3),
        "within_target": slowest.worst_ms <= TARGET_MS,
        "shapes": {
            row.shape: {
                "kind": row.kind,
                "record_bytes": row.record_bytes,
                "envelope_ms": round(row.envelope_ms, 3),
                "plaintext_ms": None if row.plaintext_ms is None else round(row.plaintext_ms, 3),
                "plugin_ms": None if row.plugin_ms is None else round(row.plugin_ms, 3),
                "pipeline_ms": round(row.pipeline_ms, 3),
                "outcome": row.outcome,
            }
            for row in rows
        },
    }
    print(json.dumps(report, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
