"""Redrive: a message's seq and send time on its rejections, and what was redriven.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("rejected_messages", sa.Column("seq", sa.BigInteger))
    op.add_column("rejected_messages", sa.Column("sent_at", sa.DateTime(timezone=True)))
    op.create_table(
        "sparklem_redriven",
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("plugin", sa.String(64), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("part", sa.String(64), primary_key=True),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("partition", sa.Integer, nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("redriven_at", sa.DateTime(timezone=True), nullable=False),
        # MySQL/MariaDB: agent ids compared byte for byte, as 0003 made the other tables
        mysql_charset="utf8mb4",
        mysql_collate="utf8mb4_bin",
    )


def downgrade() -> None:
    op.drop_table("sparklem_redriven")
    with op.batch_alter_table("rejected_messages") as batch:
        batch.drop_column("sent_at")
        batch.drop_column("seq")
