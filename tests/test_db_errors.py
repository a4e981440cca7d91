"""Database errors are judged by what they mean, on real databases, and what BatchWriter does.

Errors with a code (SQLSTATE, SQLite result code) are raised for real by the server or
the driver; the outcome of a batch that meets one is checked through ``BatchWriter``:
data errors quarantine only the records whose rows are refused, transient ones store
nothing and raise ``Unavailable``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from Crypto.PublicKey import RSA
from sqlalchemy import text

from sparklem_core import wire
from sparklem_core.db.batch import Batch
from sparklem_core.db.errors import Verdict, classify
from sparklem_core.db.store import Store
from sparklem_core.fleet.registry import AgentRegistry
from sparklem_core.plugin_host import PluginHost
from sparklem_core.processor.pipeline import Record
from sparklem_core.processor.wiring import build_pipeline
from sparklem_core.processor.writer import BatchWriter, Interrupted, Unavailable
from sparklem_core.settings.config import Config, ProcessorSettings

# A plugin that trusts its payload: whatever rows it is sent go to a table with limits.
LOOSE = """\
from sqlalchemy import Column, DateTime, Index, Integer, String, Text, func
from sparklem_core import Manifest, PluginResult, hookimpl


@hookimpl
def sparklem_manifest():
    return Manifest(name="loose", version="0")


@hookimpl
def sparklem_register_tables(register):
    register(
        "loose_rows",
        Column("id", Integer, primary_key=True),
        Column("short", String(8)),
        Column("big", Text),
        Column("at", DateTime(timezone=True)),
        Column("n", Integer, nullable=False),
        Column("stored_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_loose_big", "big", mysql_length=255),
        time="stored_at",
    )


@hookimpl
def sparklem_process(message, settings):
    return PluginResult(rows={"loose_rows": message.data["rows"]})
"""


def no_probe() -> bool:
    raise AssertionError("an error with a known code needs no probe")


def raised(run: Any) -> BaseException:
    with pytest.raises(Exception) as info:
        run()
    return info.value


# --- errors with codes -------------------------------------------------------------------

PG_CODES = {
    "08006": Verdict.TRANSIENT,  # connection failure
    "40001": Verdict.TRANSIENT,  # serialization failure
    "40P01": Verdict.TRANSIENT,  # deadlock
    "55P03": Verdict.TRANSIENT,  # lock not available (lock timeout)
    "53100": Verdict.TRANSIENT,  # disk full
    "57P01": Verdict.TRANSIENT,  # admin shutdown
    "42P01": Verdict.TRANSIENT,  # undefined table: the operator's, never a record's
    "22001": Verdict.DATA,  # value too long
    "22007": Verdict.DATA,  # invalid datetime format
    "22P05": Verdict.DATA,  # untranslatable character
    "23502": Verdict.DATA,  # not null violation
    "54000": Verdict.DATA,  # program limit exceeded (index row too large)
}


@pytest.mark.parametrize("code", sorted(PG_CODES))
def test_postgresql_errors_are_judged_by_sqlstate(pg_server: Any, code: str) -> None:
    store = Store(pg_server.url, "g")
    try:
        with store.engine.connect() as conn:
            error = raised(
                lambda: conn.exec_driver_sql(
                    f"DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '{code}'; END $$"
                )
            )
        assert classify(error, no_probe) is PG_CODES[code]
    finally:
        store.dispose()


MYSQL_NUMBERS = {
    1205: Verdict.TRANSIENT,  # lock wait timeout
    1213: Verdict.TRANSIENT,  # deadlock
    1021: Verdict.TRANSIENT,  # disk full
    2013: Verdict.TRANSIENT,  # lost connection
    1146: Verdict.TRANSIENT,  # no such table: the operator's
    1406: Verdict.DATA,  # data too long
    1292: Verdict.DATA,  # incorrect datetime value
    1366: Verdict.DATA,  # incorrect string value
    1048: Verdict.DATA,  # column cannot be null
}


@pytest.mark.parametrize("number", sorted(MYSQL_NUMBERS))
def test_mariadb_errors_are_judged_by_error_number(mariadb_server: Any, number: int) -> None:
    """SIGNAL raises a real server error with the number asked for (PyMySQL maps some of
    them to OperationalError and the rest to InternalError: the class says nothing)."""
    store = Store(mariadb_server.url_for("mysql"), "g")
    try:
        with store.engine.connect() as conn:
            error = raised(
                lambda: conn.exec_driver_sql(
                    f"SIGNAL SQLSTATE '45000' SET MYSQL_ERRNO = {number}, MESSAGE_TEXT = 'x'"
                )
            )
        assert getattr(error, "orig", None) is not None and error.orig.args[0] == number
        assert classify(error, no_probe) is MYSQL_NUMBERS[number]
    finally:
        store.dispose()


def test_sqlite_busy_full_and_constraint_are_judged_by_result_code(tmp_path: Path) -> None:
    path = tmp_path / "db.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (n INTEGER NOT NULL)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    busy = raised(lambda: other.execute("BEGIN IMMEDIATE"))
    assert classify(busy, no_probe) is Verdict.TRANSIENT
    holder.execute("ROLLBACK")

    constraint = raised(lambda: holder.execute("INSERT INTO t VALUES (NULL)"))
    assert classify(constraint, no_probe) is Verdict.DATA

    pages = holder.execute("PRAGMA page_count").fetchone()[0]
    holder.execute(f"PRAGMA max_page_count = {pages}")

    def fill() -> None:
        for _ in range(40):
            holder.execute("INSERT INTO t SELECT 1 UNION ALL SELECT n FROM t")

    full = raised(fill)
    assert getattr(full, "sqlite_errorname", "") == "SQLITE_FULL"
    assert classify(full, no_probe) is Verdict.TRANSIENT
    holder.close()
    other.close()


def test_an_error_without_a_code_is_judged_by_a_probe() -> None:
    assert classify(RuntimeError("?"), lambda: True) is Verdict.DATA
    assert classify(RuntimeError("?"), lambda: False) is Verdict.TRANSIENT


# --- rows the database refuses ------------------------------------------------------------


@dataclass
class World:
    """A processor's pieces on one database, with the ``loose`` plugin loaded."""

    tmp: Path
    url: str
    server: RSA.RsaKey
    agent: RSA.RsaKey

    def __post_init__(self) -> None:
        certs = self.tmp / "certs"
        (certs / "agents").mkdir(parents=True)
        (certs / "agents" / "edge-1.pem").write_bytes(self.agent.public_key().export_key())
        plugin = self.tmp / "plugins" / "loose"
        plugin.mkdir(parents=True)
        (plugin / "__init__.py").write_text(LOOSE)
        self.store = Store(self.url, "g")
        host = PluginHost(self.tmp / "plugins")
        host.register_tables(self.store.register_table, self.store.drop_registrations)
        self.store.create_schema()
        self.pipeline = build_pipeline(
            Config(certificates=certs),
            host,
            self.store,
            {wire.key_id(self.server): self.server},
            AgentRegistry(certs, refresh_s=3600),
        )
        self.writer = BatchWriter(self.pipeline, self.store)
        self.session = wire.SessionKey(self.server)
        self.seq = 0
        self.offset = 0

    def record(self, plugin: str, data: dict[str, Any]) -> Record:
        self.seq += 1
        self.offset += 1
        plain = {"seq": self.seq, "ts": int(time.time() * 1000), "data": data}
        envelope = wire.seal(
            plain, agent="edge-1", plugin=plugin, session=self.session, agent_key=self.agent
        )
        return Record(f"sparklem.{plugin}", 0, self.offset, envelope.to_json())

    def good(self) -> Record:
        return self.record("temperature", {"readings": [{"sensor": "cpu", "value": 40.0}]})

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.store.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql))]


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[RSA.RsaKey, RSA.RsaKey]:
    return RSA.generate(2048), RSA.generate(2048)


@pytest.fixture
def world(tmp_path: Path, database_url: str, rsa_keys: Any) -> Iterator[World]:
    made = World(tmp_path, database_url, *rsa_keys)
    yield made
    made.store.dispose()


def incompressible(chars: int) -> str:
    import random

    rng = random.Random(7)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(chars))


# Rows that reach the database and are refused there (or by its driver) on each dialect.
REFUSED = {
    "sqlite": {
        "not null": {"n": None},
        "integer overflow": {"n": 2**63},  # 19 digits: JSON takes it, SQLite cannot
        "text for a datetime": {"n": 1, "at": "not a date"},
    },
    "postgresql": {
        "not null": {"n": None},
        "integer out of range": {"n": 2**40},
        "value too long": {"n": 1, "short": "123456789"},
        "incorrect datetime": {"n": 1, "at": "not a date"},
        "index row too large": {"n": 1, "big": incompressible(12000)},
    },
    "mysql": {
        "not null": {"n": None},
        "integer out of range": {"n": 2**40},
        "value too long": {"n": 1, "short": "123456789"},
        "incorrect datetime": {"n": 1, "at": "not a date"},
    },
}


def dialect(url: str) -> str:
    return url.split(":", 1)[0].split("+", 1)[0]


def test_a_refused_row_quarantines_its_record_only(world: World) -> None:
    for name, row in REFUSED[dialect(world.url)].items():
        good = [world.good(), world.good()]
        bad = world.record("loose", {"rows": [{"n": 7}, row]})
        batch, stats = world.writer.write([good[0], bad, good[1]])
        assert stats.stored == 2, name
        assert stats.rejected == {"invalid_payload": 1}, name
        (rejected,) = batch.rejected
        assert rejected.offset == bad.offset
        assert rejected.detail.startswith("database refused its rows"), name
        assert batch.records[(bad.topic, 0, bad.offset)].value == bad.value  # whole bytes
    cases = len(REFUSED[dialect(world.url)])
    assert world.query("SELECT COUNT(*) FROM temperature_readings") == [(2 * cases,)]
    assert world.query("SELECT COUNT(*) FROM loose_rows") == [(0,)]  # all or nothing per record
    assert world.query("SELECT reason, COUNT(*) FROM rejected_messages GROUP BY reason") == [
        ("invalid_payload", cases)
    ]


def test_rows_are_judged_data_errors_by_their_codes(world: World) -> None:
    """Every refusal above is classified DATA, most without needing the probe."""
    for name, row in REFUSED[dialect(world.url)].items():
        error = raised(lambda row=row: world.store.commit(Batch(rows={"loose_rows": [row]})))
        assert classify(error, world.store.probe) is Verdict.DATA, name


def test_a_database_that_is_down_stores_nothing_and_says_unavailable(
    tmp_path: Path, pg_server: Any, rsa_keys: Any
) -> None:
    url = pg_server.create_database(f"down_{int(time.time() * 1000)}")
    world = World(tmp_path, url, *rsa_keys)
    records = [world.good(), world.good()]
    pg_server.stop()
    try:
        assert world.store.probe() is False
        with pytest.raises(Unavailable):
            world.writer.write(records)
    finally:
        pg_server.start()
    batch, stats = world.writer.write(records)  # the same records, once it is back
    assert stats.stored == 2 and not batch.rejected
    assert world.query("SELECT COUNT(*) FROM temperature_readings") == [(2,)]
    world.store.dispose()


def test_rejection_rows_hold_only_storable_text(world: World) -> None:
    """A sender's NUL or lone surrogate reaches rejected_messages escaped, on every database."""
    nasty = b'{"v":1,"agent":"a\\u0000b\\ud800","x":"\\ud800\\u0000"}'
    raw_bytes = b"\x00\xff" + json.dumps({"a": "\ud800"}).encode()
    batch, stats = world.writer.write(
        [
            Record("sparklem.temperature", 0, 90, nasty),
            Record("sparklem.temperature", 0, 91, raw_bytes),
        ]
    )
    assert stats.rejected == {"malformed": 2}
    stored = world.query("SELECT raw, detail FROM rejected_messages ORDER BY id")
    assert [raw for raw, _ in stored] == [
        nasty.decode(),  # JSON escapes are plain text: kept as sent
        raw_bytes.decode("utf-8", "replace").replace("\x00", "\\u0000"),  # a real NUL
    ]
    kept = world.query("SELECT value FROM rejected_records ORDER BY id")
    assert [bytes(value) for (value,) in kept] == [nasty, raw_bytes]


def test_a_stop_interrupts_storing_record_by_record(world: World) -> None:
    answers = iter([False, True])  # stop once the first record is stored
    world.writer.stopping = lambda: next(answers, True)
    records = [world.good(), world.record("loose", {"rows": [{"n": None}]}), world.good()]
    with pytest.raises(Interrupted, match="2 records not stored"):
        world.writer.write(records)
    assert world.query("SELECT COUNT(*) FROM temperature_readings") == [(1,)]
    # the rest comes again (as Kafka redelivers it) and is stored once
    batch, stats = BatchWriter(world.pipeline, world.store).write(records)
    assert (stats.stored, stats.redelivered, dict(stats.rejected)) == (1, 1, {"invalid_payload": 1})
    assert world.query("SELECT COUNT(*) FROM temperature_readings") == [(2,)]


def test_a_signed_record_near_the_size_limit_is_kept_whole(world: World) -> None:
    """rejected_records.value holds max_message_bytes everywhere (MySQL BLOB: 64 KiB)."""
    big = world.record("temperature", {"readings": "hot", "pad": incompressible(770_000)})
    assert 1_000_000 < len(big.value) <= ProcessorSettings().max_message_bytes
    batch, stats = world.writer.write([big])
    assert stats.rejected == {"invalid_payload": 1}
    ((value, size, truncated),) = world.query("SELECT value, size, truncated FROM rejected_records")
    assert (bytes(value), size, bool(truncated)) == (big.value, len(big.value), False)
