"""The decrypted message: ``seq``, ``ts`` and the plugin's ``data``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparklem_core.plugin_api import MAX_TS_MS
from sparklem_core.wire.jsonlimits import loads_json
from sparklem_core.wire.reasons import MALFORMED, Rejected

MAX_SEQ = 2**63


@dataclass(frozen=True)
class Plaintext:
    seq: int
    ts: int  # milliseconds since the epoch
    data: dict[str, Any]


def parse_plaintext(raw: bytes) -> Plaintext:
    doc = loads_json(raw, "plaintext")
    if not isinstance(doc, dict):
        raise Rejected(MALFORMED, "plaintext is not a JSON object")
    seq, ts, data = doc.get("seq"), doc.get("ts"), doc.get("data")
    if type(seq) is not int or not 0 <= seq < MAX_SEQ:
        raise Rejected(MALFORMED, "plaintext 'seq' must be an integer in [0, 2^63)")
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        raise Rejected(
            MALFORMED, f"plaintext 'ts' must be an integer count of ms in [0, {MAX_TS_MS}]"
        )
    if not isinstance(data, dict):
        raise Rejected(MALFORMED, "plaintext 'data' must be an object")
    return Plaintext(seq, ts, data)
