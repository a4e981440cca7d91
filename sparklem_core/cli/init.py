"""``init``: the server key and the database schema."""

from __future__ import annotations

import argparse

from sparklem_core.settings.config import Config


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "init",
        parents=[common],
        help="create the server key and the database schema",
        description="Create certificates/server_private.pem (mode 0600) if "
        "missing, create or upgrade the database schema, print the key id.",
    )
    parser.set_defaults(func=run)


def run(config: Config, _args: argparse.Namespace) -> int:
    from sparklem_core.fleet.registry import create_server_key, load_server_keys
    from sparklem_core.processor.wiring import prepare
    from sparklem_core.settings.masking import mask_secrets

    setup = prepare(config)  # first: every configuration mistake before anything is written
    path, created = create_server_key(config.certificates)
    (config.certificates / "agents").mkdir(exist_ok=True)
    (config.certificates / "revoked").mkdir(exist_ok=True)
    keys = load_server_keys(config.certificates)
    changes = setup.store.create_schema()
    setup.store.dispose()
    print(f"server key: {path} ({'created' if created else 'already there'})")
    print(f"database:   {mask_secrets(config.database_url)} (schema up to date)")
    for change in changes:
        print(f"table:      {change}")
    for kid in keys:
        print(f"kid:        {kid}")
    return 0
