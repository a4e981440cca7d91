"""The read side: sparklem_latest, sparklem_feed and its head (issue 11).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from sparklem_core.db.mysql_types import TABLE_OPTIONS  # ids compared byte for byte

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sparklem_latest",
        sa.Column("table_name", sa.String(255), primary_key=True),
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("series", sa.String(400), primary_key=True),
        sa.Column("measured_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("row", sa.Text, nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "sparklem_feed",
        sa.Column("commit_seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("events", sa.Text, nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_index("ix_sparklem_feed_committed_at", "sparklem_feed", ["committed_at"])
    bind = op.get_bind()
    if (
        bind.dialect.name == "postgresql"
        and bind.exec_driver_sql(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)"
        ).first()
    ):
        # A batch's events are ~200 bytes a reading: pglz, the default, compresses them
        # at several times the cost of storing them.
        op.execute("ALTER TABLE sparklem_feed ALTER COLUMN events SET COMPRESSION lz4")
    head = op.create_table(
        "sparklem_feed_head",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("commit_seq", sa.BigInteger, nullable=False),
        **TABLE_OPTIONS,
    )
    op.bulk_insert(head, [{"id": 1, "commit_seq": 0}])


def downgrade() -> None:
    op.drop_table("sparklem_feed_head")
    op.drop_index("ix_sparklem_feed_committed_at", "sparklem_feed")
    op.drop_table("sparklem_feed")
    op.drop_table("sparklem_latest")
