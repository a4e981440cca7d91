"""What can be read: each loaded plugin's tables, as its manifest declares them.

Built from the same plugin loading as ``python3 main.py plugins`` and the processor
(:func:`sparklem_core.db.store.open_store`), so a third-party plugin's tables are readable
without extra code: its time column, series keys and value columns (``register(..., time=, series=,
values=)``) say what the API filters, groups and returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparklem_core.db.plugin_tables import PluginTable
from sparklem_core.db.store import Store


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
        by_plugin: dict[str, list[PluginTable]] = {}
        for table in store.plugin_tables.values():
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
                name: [
                    {
                        "table": t.name,
                        "time": t.time,
                        "series": list(t.series),
                        "values": list(t.values),
                    }
                    for t in tables
                ]  # fmt: skip
                for name, tables in self.plugins.items()
            }
        }
