"""``plugins``: what was found and loaded; ``plugins new``: a plugin package to start from."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from sparklem_core.cli.errors import EXIT_USAGE, CommandError
from sparklem_core.cli.table import print_table
from sparklem_core.settings.config import Config

if TYPE_CHECKING:
    from sparklem_core.db.plugin_tables import PluginTable

RESTART_NOTE = "A newly installed plugin is loaded at the next start of the processor (and agent)."


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "plugins",
        parents=[common],
        help="list plugins and their status",
        description="Name, version, topic, status and source of every plugin found.",
    )
    parser.set_defaults(func=run, action=None)
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    new = actions.add_parser(
        "new",
        help="write a new plugin package to start from",
        description="Write an installable plugin package (pyproject.toml, manifest, "
        "processor and agent sides, README, tests using sparklem's kit).",
    )
    new.add_argument("name", metavar="NAME", help="the plugin's name, e.g. humidity")
    new.add_argument("--dir", help="where to write it (default: ./sparklem-NAME)")
    new.set_defaults(uses_config=False)


def run(config: Config | None, args: argparse.Namespace) -> int:
    if args.action == "new":
        return new(args)
    assert config is not None
    from sparklem_core.db.store import Store
    from sparklem_core.settings.config import load_plugins
    from sparklem_core.settings.validation import describe_settings

    host = load_plugins(config)
    scratch = Store("sqlite://", config.group_id)  # never opened: declarations checked as at start
    host.register_tables(scratch.register_table, scratch.drop_registrations)
    rows = [("NAME", "VERSION", "TOPIC", "STATUS", "SOURCE")]
    for info in host.infos:
        m = info.manifest
        topic = config.plugin_topic(info.name, m.topic) if m else "-"
        rows.append((info.name, m.version if m else "-", topic, info.status, info.source))
    print_table(rows)
    for info in host.infos:
        if info.manifest is not None:
            print(f"\nsettings of {info.name} (plugins.{info.name}.*):")
            print_table(
                [("SIDE", "NAME", "TYPE", "DEFAULT", "MEANING")] + describe_settings(info.manifest),
                indent="  ",
            )
        declared = [t for t in scratch.plugin_tables.values() if t.owner == info.name]
        if declared:
            print(f"\ntables of {info.name}:")
            print_table(
                [("TABLE", "TIME", "SERIES", "VALUES")]
                + [
                    (t.name, t.time, ",".join(t.series) or "-", values_with_units(t))
                    for t in declared
                ],  # fmt: skip
                indent="  ",
            )
    print(f"\n{RESTART_NOTE}")
    return 0


def new(args: argparse.Namespace) -> int:
    from sparklem_core.admin.scaffold import ScaffoldError, write_plugin

    directory = Path(args.dir or f"sparklem-{args.name.replace('_', '-')}")
    try:
        write_plugin(args.name, directory)
    except ScaffoldError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    print(f"wrote plugin {args.name} to {directory}; next: pip install -e '{directory}[test]'")
    return 0


def values_with_units(table: PluginTable) -> str:
    """``celsius[°C],load_1m``: each value column with its declared unit, if any."""
    shown = [f"{v}[{table.units[v]}]" if table.units.get(v) else v for v in table.values]
    return ",".join(shown) or "-"
