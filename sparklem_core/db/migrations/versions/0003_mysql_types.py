"""MySQL/MariaDB: binary collation, microsecond times, 16 MiB text (see mysql_types.py).

Tables made by 0001 and 0002 took the database's default collation (case-insensitive on
MariaDB), DATETIME without fractional seconds and 64 KiB TEXT. Nothing to do elsewhere.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("rejected_messages", "rejected_records", "sparklem_streams", "sparklem_offsets")
# table -> (column, NOT NULL) of its DATETIME columns
TIMES = {
    "rejected_messages": (("received_at", True),),
    "rejected_records": (("received_at", True),),
    "sparklem_streams": (("updated_at", True),),
    "sparklem_offsets": (("updated_at", True),),
}
TEXTS = {"rejected_messages": (("detail", True), ("raw", False))}


def upgrade() -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table in TABLES:
        op.execute(f"ALTER TABLE `{table}` CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
        changes = [
            f"MODIFY `{column}` {kind}{' NOT NULL' if not_null else ' NULL'}"
            for kind, columns in (
                ("DATETIME(6)", TIMES.get(table, ())),
                ("MEDIUMTEXT", TEXTS.get(table, ())),
            )
            for column, not_null in columns
        ]
        if changes:
            op.execute(f"ALTER TABLE `{table}` {', '.join(changes)}")


def downgrade() -> None:
    pass  # widening only: nothing to undo
