"""A standing fuzz suite: hostile records through the real pipeline and a real database.

Two families of examples, each sent in one batch between two good messages and stored
through the processor's own :class:`BatchWriter`, on SQLite and on PostgreSQL:

* hostile record values: random bytes, odd JSON texts, valid envelopes mutated member
  by member (dropped, duplicated, retyped, odd base64, odd unicode) and byte by byte;
* validly sealed hostile plaintexts: every member of the plaintext and of the built-in
  payloads mutated (wrong types, huge numbers, non-finite, odd text, deep nesting, lists
  beyond their caps), and the plaintext bytes themselves.

Every example must end as rows or rejections with a defined reason (never
``processing_error``: that is a bug met), every record accounted for, the good
messages stored and the partitions' offsets past the batch. The ``ci`` hypothesis
profile (tests/conftest.py) keeps it within CI time; ``--hypothesis-profile=long`` runs
thousands of examples by hand.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pipeline_env import PLUGIN_TABLES, PU_TOPIC, TOPIC, Env, Keys, now_ms, reading, temperature
from sparklem_plugins.pu_workload.server import MAX_CORES, MAX_GPUS
from sparklem_plugins.temperature.server import MAX_READINGS
from sqlalchemy import select

from sparklem_core import wire
from sparklem_core.processor.pipeline import Record
from sparklem_core.processor.writer import BatchWriter

BAD_AGENT, GOOD_AGENT = "edge-1", "edge-2"  # hostile seqs must never shadow good ones
TOPICS = {"temperature": TOPIC, "pu_workload": PU_TOPIC}
# What a validly sealed message may be rejected for, reading by reading apart (its size is
# checked before its signature).
AUTHENTICATED_REASONS = {
    wire.TOO_LARGE,
    wire.MALFORMED,
    wire.CLOCK_SKEW,
    wire.INVALID_PAYLOAD,
}


# --- JSON with what json.dumps cannot write -------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text inserted as is: huge or non-finite numbers, nesting, broken tokens."""

    text: str

    def __repr__(self) -> str:
        return (
            f"Raw({self.text[:40]!r}{'...' if len(self.text) > 40 else ''} {len(self.text)} chars)"
        )


@dataclass(frozen=True)
class Pairs:
    """An object as its members in order, duplicates allowed."""

    items: tuple[tuple[str, Any], ...]


def dumps(value: Any, ascii_only: bool = True) -> str:
    """JSON text of ``value``; lone surrogates stay (escaped, or raw when not ``ascii_only``)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Pairs | dict):
        items = value.items if isinstance(value, Pairs) else value.items()
        return (
            "{" + ",".join(f"{dumps(k, ascii_only)}:{dumps(v, ascii_only)}" for k, v in items) + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(dumps(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)  # NaN and Infinity as Python writes them


def encode(value: Any, ascii_only: bool = True) -> bytes:
    return dumps(value, ascii_only).encode("utf-8", "surrogatepass")  # CESU bytes: hostile too


# --- hostile values ---------------------------------------------------------------------------

ODD_TEXT = [
    "",
    "\x00",
    "a\x00b",
    "\ud800",
    "x\udfffy",
    "\ufeff",
    "\ufeffcpu",
    "\u202ecpu",
    "\x1b[31m",
    "\x7f",
    "\u0085",
    "\u2028",
    "e\u0301",
    "\U0001f525",
    "ＣＰＵ",
    "x" * 129,
    "x" * 10_000,
    " ",
    "C",
    "F",
    "K",
    "c",
    "null",
]
ODD_NUMBERS = [
    0,
    -1,
    -0.0,
    2**31,
    2**63 - 1,
    2**63,
    2**64,
    -(2**63),
    10**400,
    -(10**400),
    1e308,
    -1e308,
    5e-324,
    float("nan"),
    float("inf"),
    float("-inf"),
    -273.15,
    -273.16,
    100.0,
    100.0000001,
    True,
    False,
]
ODD_RAW = [
    Raw("1e400"),
    Raw("-1e400"),
    Raw("1" + "0" * 4400),  # beyond Python's 4300 digits for int()
    Raw("0." + "1" * 5000),
    Raw("1E+99999999999"),
    Raw("-0"),
    Raw("01"),
    Raw("1."),
    Raw(".5"),
    Raw("+1"),
    Raw("0x10"),
    Raw("NaN"),
    Raw("-Infinity"),
    Raw("[" * 31 + "]" * 31),
    Raw("[" * 33 + "]" * 33),
    Raw('{"a":' * 40 + "1" + "}" * 40),
    Raw("[" * 33 + '"' + '\\"' * 2000),
    Raw('"\\ud800\\udc00"'),
    Raw('"\\udc00\\ud800"'),
    Raw('"\\u0000"'),
    Raw('"\\uD800"'),
    Raw('"\\x41"'),
    Raw("'single'"),
    Raw("[1,]"),
    Raw("{}"),
    Raw("[]"),
    Raw(""),
]


def json_values() -> st.SearchStrategy[Any]:
    """Any JSON value, biased to the odd ones."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.integers(min_value=-(10**500), max_value=10**500),
        st.floats(),
        st.text(max_size=40),
        st.sampled_from(ODD_TEXT),
        st.sampled_from(ODD_NUMBERS),
        st.sampled_from(ODD_RAW),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(
                st.sampled_from(["a", "", "\x00", "\ud800", "value"]), inner, max_size=3
            ),
        ),
        max_leaves=8,
    )


@st.composite
def byte_edits(draw: st.DrawFn) -> list[tuple[str, int, Any]]:
    """Edits to apply to a value's bytes: (kind, position as a fraction of a million, arg)."""
    edit = st.tuples(
        st.sampled_from(["flip", "insert", "delete", "truncate"]),
        st.integers(0, 10**6),
        st.one_of(
            st.integers(1, 255),
            st.binary(min_size=1, max_size=4),
            st.sampled_from(
                [b"\xc0\xa2", b"\xe0\x80\xaf", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\x00"]
            ),
        ),
    )
    return draw(st.lists(edit, min_size=1, max_size=3))


def apply_edits(value: bytes, edits: list[tuple[str, int, Any]]) -> bytes:
    data = bytearray(value)
    for kind, where, arg in edits:
        at = where * len(data) // 10**6 if data else 0
        if kind == "flip" and data:
            data[min(at, len(data) - 1)] ^= arg if isinstance(arg, int) else 1
        elif kind == "insert":
            data[at:at] = arg if isinstance(arg, bytes) else bytes([arg])
        elif kind == "delete":
            del data[at : at + (arg if isinstance(arg, int) else len(arg))]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


# --- (a) hostile record values ----------------------------------------------------------------

B64_MEMBERS = ("ek", "iv", "ct", "tag", "sig")
TEXT_MEMBERS = ("agent", "plugin", "kid")


B64_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def odd_base64(value: str, how: str) -> str:
    """``value`` (canonical base64) spelled in a way the protocol refuses, or not at all."""
    raw = base64.b64decode(value)
    if how == "unpadded":
        return value.rstrip("=")
    if how == "overpadded":
        return value + "="
    if how == "newline":
        return value[: len(value) // 2] + "\n" + value[len(value) // 2 :]
    if how == "space":
        return " " + value
    if how == "urlsafe":
        return base64.urlsafe_b64encode(raw).decode()
    if how == "spare bits":  # same bytes, another last character
        stem = value.rstrip("=")
        last = B64_ALPHABET.index(stem[-1])
        return stem[:-1] + B64_ALPHABET[last ^ 1] + value[len(stem) :]
    if how == "short":
        return value[:-4]
    if how == "one more byte":
        return base64.b64encode(raw + b"\x00").decode()
    if how == "empty":
        return ""
    if how == "fullwidth":
        return value.replace("A", "Ａ")
    if how == "nul":
        return value + "\x00"
    return value + "\ud800"  # "surrogate"


BASE64_ODDITIES = [
    "unpadded",
    "overpadded",
    "newline",
    "space",
    "urlsafe",
    "spare bits",
    "short",
    "one more byte",
    "empty",
    "fullwidth",
    "nul",
    "surrogate",
]
TEXT_ODDITIES = ["\ud800", "\x00", "\ufeff", "\u0130", "\u212a", " ", "\n", "é", "/../x", "Ｘ"]
# Well-formed members that are not this message's: the signature must catch them.
LOOKALIKES = {
    "agent": ["edge-2", "stranger", "EDGE-1", "edge-1."],
    "plugin": ["pu_workload", "exploder", "no_such_plugin"],
    "kid": ["0" * 16, "f" * 16],
    "iv": [base64.b64encode(bytes(12)).decode()],
    "tag": [base64.b64encode(bytes(16)).decode()],
    "ek": [base64.b64encode(bytes(256)).decode()],
    "ct": ["", base64.b64encode(bytes(40)).decode()],
    "sig": [base64.b64encode(bytes(256)).decode()],
}
SEALED_AS = [
    "itself",
    "unknown plugin",
    "unknown agent",
    "intruder",
    "other server key",
    "future",
    "foreign session",
]

member_edits = st.one_of(
    st.sampled_from(sorted(LOOKALIKES)).flatmap(
        lambda m: st.tuples(st.just("set"), st.just(m), st.sampled_from(LOOKALIKES[m]))
    ),
    st.tuples(st.just("drop"), st.sampled_from(("v", *TEXT_MEMBERS, *B64_MEMBERS))),
    st.tuples(st.just("set"), st.sampled_from(("v", *TEXT_MEMBERS, *B64_MEMBERS)), json_values()),
    st.tuples(st.just("base64"), st.sampled_from(B64_MEMBERS), st.sampled_from(BASE64_ODDITIES)),
    st.tuples(
        st.just("text"),
        st.sampled_from(TEXT_MEMBERS),
        st.sampled_from(TEXT_ODDITIES),
        st.booleans(),  # appended, or in place of the first character
    ),
    st.tuples(
        st.just("duplicate"), st.sampled_from(("v", *TEXT_MEMBERS, *B64_MEMBERS)), json_values()
    ),
    st.tuples(st.just("extra"), st.sampled_from(["x", "", "v ", "\ud800", "V"]), json_values()),
    st.tuples(
        st.just("wrong version"),
        st.sampled_from([Raw("1.0"), Raw("1e0"), "1", 2, 0, -1, Raw("1" + "0" * 400)]),
    ),
)


def mutate_envelope(
    value: bytes, edits: list[tuple[Any, ...]], reverse: bool
) -> list[tuple[str, Any]]:
    members = list(json.loads(value).items())
    for edit in edits:
        kind, member = edit[0], edit[1]
        index = next((i for i, (k, _) in enumerate(members) if k == member), None)
        if kind == "drop" and index is not None:
            del members[index]
        elif kind == "set" and index is not None:
            members[index] = (member, edit[2])
        elif kind == "base64" and index is not None and isinstance(members[index][1], str):
            with contextlib.suppress(ValueError):  # not base64 since an earlier edit
                members[index] = (member, odd_base64(members[index][1], edit[2]))
        elif kind == "text" and index is not None and isinstance(members[index][1], str):
            old = members[index][1]
            members[index] = (member, old + edit[2] if edit[3] else edit[2] + old[1:])
        elif kind == "duplicate":
            members.append((member, edit[2]))
        elif kind == "extra":
            members.insert(0, (member, edit[2]))
        elif kind == "wrong version":
            members = [(k, edit[1] if k == "v" else v) for k, v in members]
    return members[::-1] if reverse else members


@st.composite
def hostile_values(draw: st.DrawFn) -> tuple[str, Any]:
    """(kind, recipe) of a hostile record value; the recipe meets a fresh envelope later."""
    # Envelopes twice as often: they reach the checks past parsing.
    kind = draw(
        st.sampled_from(["bytes", "json", "none", "envelope", "envelope", "envelope bytes"])
    )
    if kind == "bytes":
        return kind, draw(st.binary(max_size=300))
    if kind == "json":
        return kind, (draw(json_values()), draw(st.booleans()))
    if kind == "none":
        return kind, None
    # Half of them unedited: the sealed_as variants then reach the checks after parsing.
    edits = draw(st.one_of(st.just([]), st.lists(member_edits, min_size=1, max_size=4)))
    recipe = (draw(st.sampled_from(SEALED_AS)), edits, draw(st.booleans()), draw(st.booleans()))
    if kind == "envelope bytes":
        recipe += (draw(byte_edits()),)
    return kind, recipe


# --- (b) validly sealed hostile plaintexts ----------------------------------------------------

READING_TS = 1_700_000_000_000
PAYLOADS: dict[str, dict[str, Any]] = {
    "temperature": temperature(
        reading("cpu", 48.3, unit="C", ts=READING_TS), reading("gpu", 100, unit="F")
    ),
    "pu_workload": {
        "cpu": {"percent": 37.5, "per_core": [40.0, 35.0], "load_avg": [0.52, 0.61, 0.70]},
        "memory": {"used_bytes": 1073741824, "total_bytes": 8589934592},
        "gpus": [
            {
                "index": 0,
                "name": "Orin",
                "util_percent": 12.0,
                "mem_used_bytes": 104857600,
                "mem_total_bytes": 8589934592,
                "temperature_c": 51.0,
            }
        ],
    },
}
CAPS = {"readings": MAX_READINGS, "per_core": MAX_CORES, "gpus": MAX_GPUS}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """The path of every member and item in ``value``, itself included."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


PLAINTEXT_PATHS = {
    plugin: [p for p in paths({"seq": 0, "ts": 0, "data": payload}) if p]
    for plugin, payload in PAYLOADS.items()
}


def plaintext_edits(plugin: str) -> st.SearchStrategy[tuple[Any, ...]]:
    """One edit of a plaintext of ``plugin``: at a path of its template, or a list's cap."""
    where = st.sampled_from(PLAINTEXT_PATHS[plugin])
    return st.one_of(
        st.tuples(st.just("set"), where, json_values()),
        st.tuples(st.just("drop"), where),
        st.tuples(st.just("extra"), where, json_values()),
        st.tuples(st.just("beyond cap"), st.sampled_from(sorted(CAPS)), st.sampled_from([0, 1, 2])),
    )


def at(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def mutate_plaintext(
    doc: dict[str, Any], plugin: str, edits: list[tuple[Any, ...]]
) -> dict[str, Any]:
    """``doc`` (a fresh copy) with the edits applied; paths that an edit removed are skipped."""
    choices = PLAINTEXT_PATHS[plugin]
    for edit in edits:
        kind = edit[0]
        if kind == "beyond cap":
            name, filler = edit[1], edit[2]
            parent = next(
                (at(doc, p[:-1]) for p in choices if p[-1] == name and _has(doc, p)), None
            )
            if isinstance(parent, dict) and isinstance(parent.get(name), list) and parent[name]:
                item = (
                    parent[name][0] if filler == 0 else (None if filler == 1 else parent[name][-1])
                )
                parent[name] = [item] * (CAPS[name] + 1)
            continue
        path = edit[1]
        if not _has(doc, path):
            continue
        parent, last = at(doc, path[:-1]), path[-1]
        if kind == "set":
            parent[last] = edit[2]
        elif kind == "drop":
            del parent[last]
        elif kind == "extra" and isinstance(at(doc, path), dict):
            at(doc, path)["zz"] = edit[2]
        elif kind == "extra" and isinstance(at(doc, path), list):
            at(doc, path).append(edit[2])
    return doc


def _has(doc: Any, path: tuple[Any, ...]) -> bool:
    for step in path:
        in_dict = isinstance(doc, dict) and isinstance(step, str) and step in doc
        in_list = isinstance(doc, list) and isinstance(step, int) and 0 <= step < len(doc)
        if not (in_dict or in_list):
            return False
        doc = doc[step]
    return True


@st.composite
def hostile_plaintexts(draw: st.DrawFn) -> tuple[str, list[tuple[Any, ...]], bool, list[Any]]:
    """(plugin, member edits, ASCII-only JSON, byte edits) for one sealed plaintext."""
    plugin = draw(st.sampled_from(sorted(PAYLOADS)))
    edits = draw(st.lists(plaintext_edits(plugin), min_size=1, max_size=3))
    raw_edits = draw(st.one_of(st.just([]), st.just([]), st.just([]), byte_edits()))
    ascii_only = draw(st.sampled_from([True, True, True, False]))  # False: raw surrogates
    return plugin, edits, ascii_only, raw_edits


# --- the world the examples run in --------------------------------------------------------------


class Fuzz:
    """One Env, pipeline and writer for all examples of a module, on one database."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.pipeline = env.pipeline()
        self.writer = BatchWriter(self.pipeline, env.store)
        self.good_seq = 0
        self.stored = 0  # messages stored so far: what the fleet inventory must count
        self.bad_seq: dict[str, int] = dict.fromkeys(PAYLOADS, 0)

    def good(self) -> tuple[Record, int]:
        self.good_seq += 1
        value = self.env.envelope(temperature(reading("good")), seq=self.good_seq, agent=GOOD_AGENT)
        return self.env.record(value), self.good_seq

    def next_bad_seq(self, plugin: str) -> int:
        self.bad_seq[plugin] += 1
        return self.bad_seq[plugin]

    def fresh(self, plugin: str = "temperature", sealed_as: str = "itself") -> bytes:
        """A message of the hostile stream, valid unless ``sealed_as`` says how it is not."""
        keys, seq = self.env.keys, self.next_bad_seq(plugin)
        if sealed_as == "foreign session":  # ek wrapped for another server key
            session = wire.SessionKey(keys.server)
            session.ek = wire.SessionKey(keys.other_server).ek
            plain = {"seq": seq, "ts": now_ms(), "data": PAYLOADS[plugin]}
            return wire.seal(
                plain, agent=BAD_AGENT, plugin=plugin, session=session, agent_key=keys.agent
            ).to_json()
        options: dict[str, Any] = {
            "itself": {},
            "unknown plugin": {"plugin": "no_such_plugin"},
            "unknown agent": {"agent": "stranger"},
            "intruder": {"agent_key": keys.intruder},
            "other server key": {"server": keys.other_server},
            "future": {"ts": now_ms(86_400)},
        }[sealed_as]
        options = {"agent": BAD_AGENT, "plugin": plugin, **options}
        return self.env.envelope(PAYLOADS[plugin], seq=seq, **options)

    def write(self, hostile: Record, allowed: set[str] | None = None) -> Counter[str]:
        """Store [good, hostile, good]; check every invariant; the hostile record's reasons."""
        first, seq1 = self.good()
        second, seq2 = self.good()
        records = [first, hostile, second]
        last_rejection = self._max_id("rejected_messages")
        last_record = self._max_id("rejected_records")
        rows_before = self._plugin_rows()

        _, stats = self.writer.write(records)  # must not raise, whatever the record holds

        table = self.env.store.rejected  # SQLAlchemy quotes offset and partition for each
        with self.env.store.engine.connect() as conn:
            new = conn.execute(
                select(table.c.topic, table.c.partition, table.c.offset, table.c.reason,
                       table.c.detail).where(table.c.id > last_rejection)
            ).all()  # fmt: skip
        by_record: dict[tuple[str, int, int], list[str]] = {}
        for topic, partition, offset, reason, detail in new:
            assert reason in wire.REASONS, reason
            assert reason != wire.PROCESSING_ERROR, detail  # a bug met, not bad data
            assert not detail.startswith("database refused"), detail  # alike on every database
            if allowed is not None:
                assert reason in allowed | {wire.INVALID_READING}, (reason, detail)
            by_record.setdefault((topic, partition, offset), []).append(reason)
        assert stats.consumed == len(records) and stats.redelivered == 0
        assert sum(stats.rejected.values()) == len(new)
        refused = 0  # records rejected whole: one row, one message-level reason
        for reasons in by_record.values():
            if reasons != [wire.INVALID_READING] * len(reasons):
                assert len(reasons) == 1, reasons
                refused += 1
        # Each record is stored (rows, perhaps some readings refused), a duplicate, or refused.
        assert stats.stored + stats.duplicates + refused == len(records)
        assert self._plugin_rows() - rows_before == stats.rows
        assert self._count_since("rejected_records", last_record) == len(by_record)
        for record, seq in ((first, seq1), (second, seq2)):
            assert (record.topic, record.partition, record.offset) not in by_record
            rows = self.env.query(
                "SELECT sensor FROM temperature_readings WHERE agent_id = :a AND seq = :s",
                a=GOOD_AGENT,
                s=seq,
            )
            assert rows == [("good",)]
        self.stored += stats.stored
        inventory = dict(self.env.query("SELECT agent_id, messages FROM sparklem_agents"))
        assert set(inventory) <= {GOOD_AGENT, BAD_AGENT}  # never a row for a forged id
        assert sum(inventory.values()) == self.stored
        offsets = self.env.stored_offsets()
        assert sorted(offsets) == sorted((t, p, n) for (t, p), n in self.env.offsets.items())
        self._keep_streams_usable()
        outcome = Counter(by_record.get((hostile.topic, hostile.partition, hostile.offset), []))
        if currently_in_test_context():  # seen with --hypothesis-show-statistics
            event(f"outcome: {', '.join(sorted(outcome)) or 'stored or duplicate'}")
        return outcome

    def _keep_streams_usable(self) -> None:
        """Follow the hostile streams' marks; drop one that a huge seq used up."""
        marks = self.env.query(
            "SELECT plugin, last_seq FROM sparklem_streams WHERE agent_id = :a", a=BAD_AGENT
        )
        for plugin, mark in marks:
            if plugin not in self.bad_seq:
                continue
            if mark < 2**62:
                self.bad_seq[plugin] = max(self.bad_seq[plugin], mark)
                continue
            streams = self.env.store.streams
            with self.env.store.engine.begin() as conn:
                conn.execute(
                    streams.delete().where(
                        streams.c.agent_id == BAD_AGENT, streams.c.plugin == plugin
                    )
                )
            self.pipeline.forget_state()

    def _max_id(self, table: str) -> int:
        return self.env.query(f"SELECT COALESCE(MAX(id), 0) FROM {table}")[0][0]

    def _count_since(self, table: str, last: int) -> int:
        return self.env.query(f"SELECT COUNT(*) FROM {table} WHERE id > :last", last=last)[0][0]

    def _plugin_rows(self) -> int:
        return sum(self.env.count(table) for table in PLUGIN_TABLES)


@pytest.fixture(
    scope="module",
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.e2e),
        pytest.param("mysql", marks=pytest.mark.e2e),
    ],
)
def fuzz(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: Keys
) -> Iterator[Fuzz]:
    """One world per database for all the examples of this module (``database_url`` is
    per test: a database per example would cost more than the example)."""
    tmp = tmp_path_factory.mktemp("fuzz")
    if request.param == "sqlite":
        env = Env(tmp, keys, f"sqlite:///{tmp}/db.sqlite3")
        yield Fuzz(env)
        env.close()
        return
    server = request.getfixturevalue(
        "pg_server" if request.param == "postgresql" else "mariadb_server"
    )
    server.start()  # no-op when running
    name = f"fuzz_{uuid.uuid4().hex[:16]}"
    env = Env(tmp, keys, server.create_database(name))
    yield Fuzz(env)
    env.close()
    server.drop_database(name)


# --- the properties ---------------------------------------------------------------------------


@given(hostile=hostile_values())
def test_hostile_record_values(fuzz: Fuzz, hostile: tuple[str, Any]) -> None:
    kind, recipe = hostile
    if kind == "bytes":
        value: bytes | None = recipe
    elif kind == "json":
        value = encode(recipe[0], ascii_only=recipe[1])
    elif kind == "none":
        value = None
    else:
        sealed_as, edits, reverse, ascii_only, *raw_edits = recipe
        members = mutate_envelope(fuzz.fresh(sealed_as=sealed_as), edits, reverse)
        value = encode(Pairs(tuple(members)), ascii_only)
        if raw_edits:
            value = apply_edits(value, raw_edits[0])
    fuzz.write(fuzz.env.record(value))


@given(hostile=hostile_plaintexts())
def test_sealed_hostile_plaintexts(fuzz: Fuzz, hostile: tuple[Any, ...]) -> None:
    plugin, edits, ascii_only, raw_edits = hostile
    seq = fuzz.next_bad_seq(plugin)
    doc = json.loads(json.dumps({"seq": seq, "ts": now_ms(), "data": PAYLOADS[plugin]}))
    plaintext = encode(mutate_plaintext(doc, plugin, edits), ascii_only)
    if raw_edits:
        plaintext = apply_edits(plaintext, raw_edits)
    value = fuzz.env.seal(plaintext, agent=BAD_AGENT, plugin=plugin)
    reasons = fuzz.write(fuzz.env.record(value, topic=TOPICS[plugin]), AUTHENTICATED_REASONS)
    assert sum(reasons.values()) <= (MAX_READINGS + 1 if plugin == "temperature" else 1)


def test_the_unmutated_templates_are_stored(fuzz: Fuzz) -> None:
    """The starting points are valid, so the fuzzing above mutates good messages."""
    for plugin in PAYLOADS:
        value = fuzz.fresh(plugin)
        assert fuzz.write(fuzz.env.record(value, topic=TOPICS[plugin])) == Counter()
