"""Store: plugin rows are written exactly as SQLAlchemy's own INSERT would write them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pytest
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    Integer,
    Numeric,
    String,
    insert,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError

from sparklem_core.db.batch import (
    Batch,
    OffsetMark,
    PartitionKey,
    Rejection,
    StreamKey,
    StreamMark,
)
from sparklem_core.db.mysql_types import max_packet_bytes, packet_problem
from sparklem_core.db.store import Conflict, Store

WHEN = datetime(2026, 11, 23, 14, 5, 6, 789012, tzinfo=UTC)


def columns() -> list[Column]:
    return [
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("name", String(64), nullable=False),
        Column("value", Float),
        Column("amount", Numeric(10, 3)),
        Column("flag", Boolean),
        Column("day", Date),
        Column("at", DateTime(timezone=True), nullable=False),
    ]


@pytest.fixture
def stores(database_url: str):
    """Two stores on one database, each with its own table of the same shape."""
    ours, theirs = Store(database_url, "g"), Store(database_url, "g")
    ours.register_table("p", "ours", *columns(), time="at")
    theirs.register_table("p", "reference", *columns(), time="at")
    ours.create_schema()
    theirs.create_schema()
    yield ours, theirs
    ours.dispose()
    theirs.dispose()


def stored(store: Store, table: str) -> list[tuple]:
    t = store.metadata.tables[table]
    with store.engine.connect() as conn:
        return [tuple(r)[1:] for r in conn.execute(select(t).order_by(t.c.id))]


ROWS = [
    {"name": "a", "value": 1.5, "amount": "2.25", "flag": True, "day": date(2026, 1, 2),
     "at": WHEN},
    {"name": "b", "value": 3, "amount": 7, "flag": False, "day": None, "at": WHEN},
    {"name": "c", "value": None, "amount": None, "flag": None, "day": None,
     "at": WHEN + timedelta(microseconds=1)},
    # the same instant in another zone: equal to WHEN, yet stored with its own fields
    {"name": "d", "value": -0.0, "amount": 1, "flag": True, "day": date(1, 1, 1),
     "at": WHEN.astimezone(timezone(timedelta(hours=5)))},
    {"name": "e", "value": 1e300, "amount": 0, "flag": False, "day": None,
     "at": datetime(1999, 12, 31, 23, 59, 59)},  # naive
]  # fmt: skip


def test_rows_stored_as_sqlalchemy_insert_stores_them(stores) -> None:
    ours, theirs = stores
    ours.commit(Batch(rows={"ours": [dict(r) for r in ROWS]}))
    with theirs.engine.begin() as conn:
        conn.execute(insert(theirs.metadata.tables["reference"]), [dict(r) for r in ROWS])
    assert stored(ours, "ours") == stored(theirs, "reference")
    assert [r[0] for r in stored(ours, "ours")] == ["a", "b", "c", "d", "e"]


def test_rows_with_different_columns_in_one_batch(stores) -> None:
    ours, _ = stores
    rows = [
        {"name": "x", "at": WHEN},
        {"name": "y", "value": 2.0, "at": WHEN},
        {"value": 3.0, "at": WHEN, "name": "z"},
    ]
    ours.commit(Batch(rows={"ours": rows}))
    assert [(r[0], r[1]) for r in stored(ours, "ours")] == [("x", None), ("y", 2.0), ("z", 3.0)]


def test_repeated_batches_reuse_the_prepared_insert(stores) -> None:
    ours, _ = stores
    for n in range(3):
        ours.commit(Batch(rows={"ours": [{"name": f"n{n}", "at": WHEN}]}))
    assert [r[0] for r in stored(ours, "ours")] == ["n0", "n1", "n2"]


@pytest.mark.parametrize(
    "row",
    [
        {"name": "x", "at": WHEN, "nonexistent": 1},  # no such column
        {"name": "x", "at": "not a date"},  # a string where a datetime belongs
        {"name": "x", "at": ["unhashable"]},
        {"name": None, "at": WHEN},  # NOT NULL
        {"name": {"a": 1}, "at": WHEN},  # a type no driver binds
    ],
)
def test_rows_the_database_refuses_raise_sqlalchemy_errors(stores, row) -> None:
    """The consumer turns SQLAlchemyError into a per-record ``invalid_payload``."""
    ours, _ = stores
    with pytest.raises(SQLAlchemyError):
        ours.commit(Batch(rows={"ours": [{"name": "fine", "at": WHEN}, row]}))
    assert stored(ours, "ours") == []  # all or nothing


def test_migrations_build_exactly_the_declared_core_schema(database_url: str) -> None:
    """The Alembic migrations and the core tables in store.py describe one schema."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    store = Store(database_url, "g")
    try:
        store.create_schema()
        with store.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "version_table": "sparklem_alembic_version"}
            )
            differences = [
                d
                for d in compare_metadata(context, store.metadata)
                # only the core tables are ours to compare: nothing else lives here
                if not (d[0] == "remove_table" and d[1].name == "sparklem_alembic_version")
            ]
        assert differences == []
    finally:
        store.dispose()


def test_what_every_database_must_hold_alike(database_url: str) -> None:
    """Microseconds, 4-byte characters, long text, 64-bit seqs, and ids that differ only
    in case (two agents, not one): MySQL and MariaDB hold them only by mysql_types."""
    store = Store(database_url, "g")
    try:
        store.create_schema()
        raw = "😀" * 20_000 + "x" * 30_000  # 110 KB of UTF-8: more than a MySQL TEXT
        rejection = Rejection("t", 0, 1, "Jetson-01", "p", "malformed", "d😀", raw, WHEN)
        top = 2**63 - 1
        store.commit(
            Batch(
                rejected=[rejection],
                streams={
                    StreamKey("Jetson-01", "p"): StreamMark(None, top),
                    StreamKey("jetson-01", "p"): StreamMark(None, 7),
                },
            )
        )
        assert store.load_streams([("Jetson-01", "p"), ("jetson-01", "p")]) == {
            ("Jetson-01", "p"): top,
            ("jetson-01", "p"): 7,
        }
        with store.engine.connect() as conn:
            (row,) = conn.execute(select(store.rejected)).mappings().all()
        assert (row["raw"], row["detail"]) == (raw, "d😀")
        assert row["received_at"].replace(tzinfo=UTC) == WHEN
    finally:
        store.dispose()


def test_the_packet_limit_is_read_and_judged(database_url: str) -> None:
    """MariaDB's max_allowed_packet bounds one statement; the processor warns at start
    when a rejected record of max_message_bytes may not fit it."""
    store = Store(database_url, "g")
    try:
        with store.engine.connect() as conn:
            limit = max_packet_bytes(conn)
    finally:
        store.dispose()
    if store.engine.dialect.name == "mysql":
        assert limit is not None and packet_problem(limit, 1024 * 1024) is None  # defaults fit
    else:
        assert limit is None and packet_problem(limit, 10**9) is None
    problem = packet_problem(4 * 1024 * 1024, 4 * 1024 * 1024)
    assert problem is not None and "raise max_allowed_packet" in problem and "\n" not in problem


def test_many_marks_move_together_or_not_at_all(database_url: str) -> None:
    """A batch moving the marks of many streams and partitions (on MySQL/MariaDB one
    UPDATE moves them all): each from its expected value, and none when any one was
    moved by someone else."""
    store = Store(database_url, "g")
    store.create_schema()
    streams = [StreamKey(f"edge-{n}", "temperature") for n in range(30)]
    parts = [PartitionKey("sparklem.temperature", p) for p in range(12)]

    def batch(expected: int | None, to: int, topic_id: str | None = None) -> Batch:
        return Batch(
            streams={k: StreamMark(expected, to) for k in streams},
            offsets={k: OffsetMark(expected, to, topic_id) for k in parts},
        )

    store.commit(batch(None, 1))
    store.commit(batch(1, 2, "id-2"))
    assert store.load_streams(streams) == dict.fromkeys(streams, 2)
    assert store.load_offsets(parts) == dict.fromkeys(parts, (2, "id-2"))
    with store.engine.begin() as conn:  # another processor moved one stream's mark
        conn.execute(text("UPDATE sparklem_streams SET last_seq = 3 WHERE agent_id = 'edge-7'"))
    with pytest.raises(Conflict):
        store.commit(batch(2, 4, "id-4"))
    marks = store.load_streams(streams)
    assert marks == {**dict.fromkeys(streams, 2), streams[7]: 3}
    assert store.load_offsets(parts) == dict.fromkeys(parts, (2, "id-2"))
    store.dispose()
