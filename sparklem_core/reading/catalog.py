"""What can be read: each plugin's tables, as the plugin declares them.

Built from the same plugin loading as ``python3 main.py plugins`` and the processor
(:func:`sparklem_core.db.store.open_store`), so a third-party plugin's tables are readable
without extra code: its time column, series keys and value columns (``register(...,
time=, series=, values=)``) say what the API filters, groups and returns. ``serve`` also
reads the declarations the processors record (``sparklem_plugin_tables``,
:class:`LiveCatalog`): a plugin installed beside the processors only is readable too,
without a restart.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, MetaData, Table, select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from sparklem_core.db.plugin_tables import RECORDED_TABLE, PluginTable, check_units
from sparklem_core.db.schema import CORE_TABLES
from sparklem_core.db.store import Store

log = logging.getLogger(__name__)


class ReadError(ValueError):
    """Bad input to a read: one line naming the parameter; ``not_found`` for 404s."""

    def __init__(self, param: str, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.param = param
        self.not_found = not_found


@dataclass(frozen=True)
class Catalog:
    """The plugin tables by plugin, in registration order."""

    plugins: dict[str, tuple[PluginTable, ...]]

    @classmethod
    def of(cls, store: Store) -> Catalog:
        return cls.grouped(store.plugin_tables.values())

    @classmethod
    def grouped(cls, tables: Iterable[PluginTable]) -> Catalog:
        """``tables`` by plugin name, each plugin's in the order given."""
        by_plugin: dict[str, list[PluginTable]] = {}
        for table in tables:
            by_plugin.setdefault(table.owner, []).append(table)
        return cls({name: tuple(tables) for name, tables in sorted(by_plugin.items())})

    def table(self, plugin: str, table: str | None = None) -> PluginTable:
        """The plugin's table (its only one when ``table`` is None); :class:`ReadError`."""
        tables = self.plugins.get(plugin)
        if tables is None:
            known = ", ".join(self.plugins) or "none"
            raise ReadError("plugin", f"no plugin {plugin[:64]!r} (known: {known})", not_found=True)
        if table is None:
            if len(tables) > 1:
                names = ", ".join(t.name for t in tables)
                raise ReadError("table", f"plugin {plugin} has several tables: name one ({names})")
            return tables[0]
        for declared in tables:
            if declared.name == table:
                return declared
        names = ", ".join(t.name for t in tables)
        raise ReadError("table", f"plugin {plugin} has no table {table[:64]!r} ({names})")

    def document(self) -> dict[str, Any]:
        """The JSON form: each plugin's tables with their time, series and value columns."""
        return {
            "plugins": {
                name: [t.document() for t in tables] for name, tables in self.plugins.items()
            }
        }


class LiveCatalog:
    """``serve``'s catalog: the tables of the plugins it loaded, and every table the
    processors recorded in ``sparklem_plugin_tables`` (a recorded declaration wins: it is
    what the processors write). Read again for ``/plugins`` and whenever a read names a
    plugin or table not known yet; a table serve has no code for is reflected from the
    database, so serve never imports a newly installed plugin.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._current = Catalog.of(store)
        self._reflected: dict[tuple[str, str, str], PluginTable] = {}
        self._lock = threading.Lock()

    @property
    def current(self) -> Catalog:
        return self._current

    def refresh(self) -> Catalog:
        """The catalog with what is recorded now; the one before if the database fails."""
        with self._lock:
            try:
                with self._store.engine.connect() as conn:
                    self._current = self._read(conn)
            except DBAPIError as exc:  # not reachable, or not initialized yet
                log.warning("plugin tables not read: %s", str(exc.orig).splitlines()[0][:200])
            return self._current

    def table(self, plugin: str, table: str | None = None) -> PluginTable:
        """As :meth:`Catalog.table`, reading the recorded tables again once if not found."""
        try:
            return self._current.table(plugin, table)
        except ReadError:
            return self.refresh().table(plugin, table)

    def _read(self, conn: Connection) -> Catalog:
        recorded = self._store.metadata.tables[RECORDED_TABLE]
        rows = conn.execute(
            select(recorded.c.table_name, recorded.c.plugin, recorded.c.declaration)
        ).all()
        own = self._store.plugin_tables
        tables = {name: t for name, t in own.items()}
        for name, plugin, text in sorted(rows):
            mine = own.get(name)
            if mine is not None and json.dumps(mine.document(), sort_keys=True) == text:
                continue
            key = (name, plugin, text)
            if key not in self._reflected:
                found = _reflect(conn, name, plugin, text)
                if found is None:
                    continue
                self._reflected[key] = found
            tables[name] = self._reflected[key]
        return Catalog.grouped(tables.values())


def _reflect(conn: Connection, name: str, plugin: str, text: str) -> PluginTable | None:
    """A recorded table as the database has it, with its recorded declaration; None (logged)
    when the table or a declared column is missing, or the row is not one the processors
    write: the table is as hostile as any file, and may not make a core table readable."""
    if name in CORE_TABLES:
        log.warning("recorded plugin table %.64r is a core table: ignored", name)
        return None
    try:
        doc = json.loads(text)
        time, series, values = doc["time"], tuple(doc["series"]), tuple(doc["values"])
        if not all(isinstance(c, str) for c in (plugin, time, *series, *values)):
            raise TypeError("names must be strings")
        units = check_units(doc.get("units"), values, "units")  # recorded before units: none
        table = Table(name, MetaData(), autoload_with=conn)
    except (ValueError, KeyError, TypeError, RecursionError, SQLAlchemyError) as exc:
        log.warning("recorded plugin table %.64r not readable: %.200s", name, exc)
        return None
    missing = [c for c in (time, *series, *values) if c not in table.c]
    if missing:
        log.warning("recorded plugin table %.64r lacks column %.64r", name, missing[0])
        return None
    return PluginTable(plugin, table, time, series, values, units)
