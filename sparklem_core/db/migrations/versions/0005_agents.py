"""The fleet inventory (sparklem_agents, sparklem_agent_plugins) and sparklem_enrolments.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from sparklem_core.db.mysql_types import TABLE_OPTIONS  # ids compared byte for byte

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sparklem_agents",
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("messages", sa.BigInteger, nullable=False),
        sa.Column("rejections", sa.BigInteger, nullable=False),
        sa.Column("last_rejection_reason", sa.String(32)),
        sa.Column("last_rejection_at", sa.DateTime(timezone=True)),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "sparklem_agent_plugins",
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("plugin", sa.String(64), primary_key=True),
        sa.Column("last_message_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("messages", sa.BigInteger, nullable=False),
        **TABLE_OPTIONS,
    )
    op.create_table(
        "sparklem_enrolments",
        sa.Column("agent_id", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("public_key", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("sparklem_enrolments")
    op.drop_table("sparklem_agent_plugins")
    op.drop_table("sparklem_agents")
