"""Strict, bounded JSON: what one envelope or plaintext document may hold, parsed in linear time."""

from __future__ import annotations

import json
from typing import Any

from sparklem_core.wire.reasons import MALFORMED, Rejected

MAX_JSON_DEPTH = 32
# What one JSON document (envelope or plaintext) may hold, counted on its text before
# parsing, strings included: each bounds the objects a parse makes, and so its time.
MAX_JSON_CONTAINERS = 10_000  # "[" and "{" characters: arrays and objects
MAX_JSON_COMMAS = 20_000  # "," characters: array items and object members
MAX_INT_DIGITS = 20  # any 64-bit integer; a longer one costs quadratic time to convert


def loads_json(raw: bytes, what: str) -> Any:
    """Strict JSON (RFC 8259) in time linear in its size, ``malformed`` otherwise.

    Refuses invalid UTF-8, ``NaN``/``Infinity`` (not JSON), integers of more than
    MAX_INT_DIGITS digits, more than MAX_JSON_CONTAINERS ``[``/``{`` or MAX_JSON_COMMAS
    ``,`` characters (counted before parsing: the objects a parse makes are bounded), and
    nesting deeper than MAX_JSON_DEPTH. The C parser itself stops at Python's recursion
    limit; the depth is then measured on the parsed value, iteratively, only when the
    text holds enough brackets to exceed it.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(MALFORMED, f"{what} is not UTF-8") from None
    containers = text.count("[") + text.count("{")
    if containers > MAX_JSON_CONTAINERS:
        raise Rejected(
            MALFORMED, f"{what} holds more than {MAX_JSON_CONTAINERS} '[' and '{{' characters"
        )
    if text.count(",") > MAX_JSON_COMMAS:
        raise Rejected(MALFORMED, f"{what} holds more than {MAX_JSON_COMMAS} ',' characters")
    try:
        doc = json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int)
    except RecursionError:
        raise Rejected(MALFORMED, f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise Rejected(MALFORMED, f"{what} is not JSON ({str(exc)[:80]})") from None
    if containers > MAX_JSON_DEPTH and _too_deep(doc):
        raise Rejected(MALFORMED, f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return doc


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(digits)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_CONTAINERS = (dict, list)  # json.loads makes exactly these, never subclasses


def _too_deep(doc: Any) -> bool:
    """Whether a parsed JSON value nests deeper than MAX_JSON_DEPTH (one pass, no recursion).

    A plain loop over each container's values: no generator per container, which cost
    several times json.loads itself on a megabyte of small lists (benchmarks.parse).
    """
    level: list[Any] = [doc] if type(doc) in _CONTAINERS else []
    for _ in range(MAX_JSON_DEPTH):
        below: list[Any] = []
        keep = below.append
        for item in level:
            for value in item.values() if type(item) is dict else item:
                if type(value) in _CONTAINERS:
                    keep(value)
        if not below:
            return False
        level = below
    return True
