"""sparklem_enrolments is renamed sparklem_enrollments: one spelling, as the commands have.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.rename_table("sparklem_enrolments", "sparklem_enrollments")


def downgrade() -> None:
    op.rename_table("sparklem_enrollments", "sparklem_enrolments")
