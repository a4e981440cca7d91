"""sparklem_plugin_tables: each plugin table's declaration, for readers (issue 18).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

from sparklem_core.db.mysql_types import TABLE_OPTIONS  # names compared byte for byte

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sparklem_plugin_tables",
        sa.Column("table_name", sa.String(255), primary_key=True),
        sa.Column("plugin", sa.String(64), nullable=False),
        sa.Column("declaration", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        **TABLE_OPTIONS,
    )


def downgrade() -> None:
    op.drop_table("sparklem_plugin_tables")
