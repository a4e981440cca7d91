"""Retention: rejected_records indexed by arrival, the pruner's lease and arrival marks.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from sparklem_core.db.mysql_types import TABLE_OPTIONS  # ids compared byte for byte

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_rejected_records_received_at", "rejected_records", ["received_at"])
    op.create_table(
        "sparklem_leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "sparklem_arrival_marks",
        sa.Column("table_name", sa.String(255), primary_key=True),
        sa.Column("marked_at", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("max_id", sa.BigInteger, nullable=False),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("sparklem_arrival_marks")
    op.drop_table("sparklem_leases")
    op.drop_index("ix_rejected_records_received_at", "rejected_records")
