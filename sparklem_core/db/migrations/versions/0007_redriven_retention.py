"""Retention of sparklem_redriven: its rows indexed by when they were redriven.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_sparklem_redriven_redriven_at", "sparklem_redriven", ["redriven_at"])


def downgrade() -> None:
    op.drop_index("ix_sparklem_redriven_redriven_at", "sparklem_redriven")
