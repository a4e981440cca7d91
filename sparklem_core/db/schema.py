"""The core tables: what every processor writes beside the plugins' rows.

Created and upgraded by Alembic (``sparklem_core/db/migrations``; a test checks the
migrations against this declaration); plugin tables are declared by plugins
(:mod:`sparklem_core.db.plugin_tables`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

from sparklem_core.db.mysql_types import TABLE_OPTIONS
from sparklem_core.db.plugin_tables import RECORDED_TABLE

ID = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only

CORE_TABLES = (
    "rejected_messages",
    "rejected_records",
    "sparklem_streams",
    "sparklem_offsets",
    "sparklem_redriven",
    "sparklem_agents",
    "sparklem_agent_plugins",
    "sparklem_enrollments",
    "sparklem_leases",
    "sparklem_arrival_marks",
    "sparklem_latest",
    "sparklem_feed",
    "sparklem_feed_head",
    RECORDED_TABLE,
)
# sparklem_latest.series: with table_name and agent_id, within MySQL's 3072-byte key in
# utf8mb4. A longer series is stored as a digest (read_tables.series_key).
SERIES_CHARS = 400
# A whole record of max_message_bytes (1 MiB by default) on every database: MySQL's BLOB
# stops at 64 KiB.
RECORD_BYTES = LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def _rejected_record_columns() -> list[Column[Any]]:
    """Where a rejected record came from, and who sent it when that is known."""
    return [
        Column("id", ID, primary_key=True, autoincrement=True),
        Column("topic", String(255), nullable=False),
        Column("partition", Integer, nullable=False),
        Column("offset", BigInteger, nullable=False),
        Column("agent_id", String(64)),
        Column("plugin", String(64)),
    ]


def core_metadata() -> MetaData:
    """A fresh MetaData holding the core tables (what readers query; Store adds plugins')."""
    metadata = MetaData()
    Table(
        "rejected_messages",
        metadata,
        *_rejected_record_columns(),
        Column("reason", String(32), nullable=False, index=True),
        Column("detail", Text, nullable=False),
        Column("raw", Text),
        Column("received_at", DateTime(timezone=True), nullable=False, index=True),
        # Once the message was decrypted: what redriving one of its readings needs.
        Column("seq", BigInteger),
        Column("sent_at", DateTime(timezone=True)),
        **TABLE_OPTIONS,
    )
    # The bytes of each rejected record, once per record however many of its readings
    # were refused: whole once its signature verified (what redrive needs), else cut to
    # rejected_raw_max_bytes (a flood of unsigned records must not fill the disk).
    Table(
        "rejected_records",
        metadata,
        *_rejected_record_columns(),
        Column("authenticated", Boolean, nullable=False),
        Column("size", Integer, nullable=False),  # of the record as it arrived
        Column("truncated", Boolean, nullable=False),  # value holds fewer than size bytes
        Column("value", RECORD_BYTES, nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False, index=True),
        Index("ix_rejected_records_position", "topic", "partition", "offset"),
        **TABLE_OPTIONS,
    )
    Table(
        "sparklem_streams",
        metadata,
        Column("agent_id", String(64), primary_key=True),
        Column("plugin", String(64), primary_key=True),
        Column("last_seq", BigInteger, nullable=False),
        Column("updated_at", DateTime(timezone=True), nullable=False),
        **TABLE_OPTIONS,
    )
    Table(
        "sparklem_offsets",
        metadata,
        Column("group_id", String(255), primary_key=True),
        Column("topic", String(255), primary_key=True),
        Column("partition", Integer, primary_key=True),
        Column("next_offset", BigInteger, nullable=False),
        Column("topic_id", String(32)),  # detects a topic deleted and created again
        Column("updated_at", DateTime(timezone=True), nullable=False),
        **TABLE_OPTIONS,
    )
    # What redrive stored, once per message or refused reading: a record quarantined twice,
    # or redriven twice, is stored once, even below its stream's mark.
    Table(
        "sparklem_redriven",
        metadata,
        Column("agent_id", String(64), primary_key=True),
        Column("plugin", String(64), primary_key=True),
        Column("seq", BigInteger, primary_key=True, autoincrement=False),
        Column("part", String(64), primary_key=True),  # batch.WHOLE_MESSAGE, or a digest
        Column("topic", String(255), nullable=False),  # where the stored copy was quarantined
        Column("partition", Integer, nullable=False),
        Column("offset", BigInteger, nullable=False),
        Column("redriven_at", DateTime(timezone=True), nullable=False, index=True),
        **TABLE_OPTIONS,
    )
    # The fleet inventory: authenticated agents only (a forged id never gets a row), each
    # updated once per batch by additive upserts (agent_inventory.py). Times are when the
    # processor received the records.
    Table(
        "sparklem_agents",
        metadata,
        Column("agent_id", String(64), primary_key=True),
        Column("first_seen", DateTime(timezone=True), nullable=False),
        Column("last_seen", DateTime(timezone=True), nullable=False),
        Column("messages", BigInteger, nullable=False),  # stored
        Column("rejections", BigInteger, nullable=False),  # rejected_messages rows written
        Column("last_rejection_reason", String(32)),
        Column("last_rejection_at", DateTime(timezone=True)),
        **TABLE_OPTIONS,
    )
    # A row per agent and plugin rather than a JSON column: two processors can then add
    # to it with the same atomic upsert, where merging JSON differs on every database.
    Table(
        "sparklem_agent_plugins",
        metadata,
        Column("agent_id", String(64), primary_key=True),
        Column("plugin", String(64), primary_key=True),
        Column("last_message_at", DateTime(timezone=True), nullable=False),
        Column("messages", BigInteger, nullable=False),
        **TABLE_OPTIONS,
    )
    # Enrollments and revocations for every processor host (enrollments.py), beside the
    # certificates directory of each.
    Table(
        "sparklem_enrollments",
        metadata,
        Column("agent_id", String(64), primary_key=True),
        Column("state", String(16), nullable=False),  # enrolled | revoked
        Column("fingerprint", String(64), nullable=False),  # of public_key: what changed
        Column("public_key", Text, nullable=False),  # PEM
        Column("updated_at", DateTime(timezone=True), nullable=False),
        **TABLE_OPTIONS,
    )
    # Who does a database-wide chore (the pruner) until when; see processor/retention.py.
    Table(
        "sparklem_leases",
        metadata,
        Column("name", String(64), primary_key=True),
        Column("holder", String(255), nullable=False),
        Column("expires_at", DateTime(timezone=True), nullable=False),
        **TABLE_OPTIONS,
    )
    # A plugin table's highest id at a time: rows up to it had arrived by then.
    Table(
        "sparklem_arrival_marks",
        metadata,
        Column("table_name", String(255), primary_key=True),
        Column("marked_at", DateTime(timezone=True), primary_key=True),
        Column("max_id", BigInteger, nullable=False),
        **TABLE_OPTIONS,
    )
    _read_tables(metadata)
    return metadata


def _read_tables(metadata: MetaData) -> None:
    """What readers (``serve``, ``tail``) read, written with each batch (read_tables.py)."""
    # The newest reading per series of every plugin table: a "last value" lookup reads
    # one row per series, never the history.
    Table(
        "sparklem_latest",
        metadata,
        Column("table_name", String(255), primary_key=True),
        Column("agent_id", String(64), primary_key=True),
        # JSON array of the other series columns' values; MySQL's 3072-byte key bounds it.
        Column("series", String(SERIES_CHARS), primary_key=True),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        Column("stored_at", DateTime(timezone=True), nullable=False),
        # JSON: {"series": {...}, "values": {...}, "time": ...}, the API's item (read_tables.py)
        Column("row", Text, nullable=False),
        **TABLE_OPTIONS,
    )
    # What each committed batch stored, in commit order (commit_seq), in parts of at most
    # read_tables.PART_EVENTS events (a JSON array each).
    Table(
        "sparklem_feed",
        metadata,
        Column("commit_seq", BigInteger, primary_key=True, autoincrement=False),
        Column("part", Integer, primary_key=True, autoincrement=False),
        Column("committed_at", DateTime(timezone=True), nullable=False, index=True),
        Column("events", Text, nullable=False),
        **TABLE_OPTIONS,
    )
    # One row: the last commit_seq given out. Its row lock, taken last in each batch's
    # transaction and held to the commit, makes commit_seq order the commit order.
    Table(
        "sparklem_feed_head",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("commit_seq", BigInteger, nullable=False),
        **TABLE_OPTIONS,
    )
    # Each plugin table's declaration as the processors last brought it to the database
    # (plugin_tables.record): what a reader learns a plugin it has not loaded from.
    Table(
        RECORDED_TABLE,
        metadata,
        Column("table_name", String(255), primary_key=True),
        Column("plugin", String(64), nullable=False),
        Column("declaration", Text, nullable=False),  # JSON: PluginTable.document()
        Column("recorded_at", DateTime(timezone=True), nullable=False),
        **TABLE_OPTIONS,
    )
