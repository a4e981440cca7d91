"""Alembic environment for the core tables; the connection comes from Store.create_schema."""

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table="sparklem_alembic_version")
with context.begin_transaction():
    context.run_migrations()
