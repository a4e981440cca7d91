"""The databases the benchmarks run on: SQLite in a temporary directory, a private
PostgreSQL (``LocalPostgres``), chosen with ``--db sqlite,postgresql``."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sparklem_core.db.store import Store
from sparklem_core.plugin_host import PluginHost

ROOT = Path(__file__).resolve().parent.parent
NAMES = ("sqlite", "postgresql")


@contextmanager
def database(name: str) -> Iterator[tuple[str, Path]]:
    """(URL, a scratch directory) of a fresh database; ``ValueError`` for an unknown name."""
    if name not in NAMES:
        raise ValueError(f"--db: {name!r} is not sqlite or postgresql")
    with tempfile.TemporaryDirectory(prefix="sparklem-bench-") as tmp:
        if name == "sqlite":
            yield f"sqlite:///{tmp}/db.sqlite3", Path(tmp)
            return
        from sparklem_core.dev.servers import LocalPostgres

        with LocalPostgres() as pg:
            yield pg.url, Path(tmp)


def new_store(url: str) -> Store:
    """A Store with the temperature plugin's table, schema created."""
    store = Store(url, "bench")
    host = PluginHost(ROOT / "plugins", enabled=lambda name: name == "temperature")
    host.register_tables(store.register_table, store.drop_registrations)
    store.create_schema()
    return store
