"""Enroll an agent and write its bundle: ``sparklem-enroll --help``.

A thin command line over :mod:`sparklem_core.admin.enrollment`; ``python3 gen_config.py`` in a
checkout is the same command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sparklem_core.admin.enrollment import (
    AGENT_KEY_BITS,
    BadKafkaProperty,
    EnrollmentError,
    agent_key_path,
    check_agent_id,
    check_bootstrap,
    create_agent,
    format_agents,
    list_agents,
    plugin_specs,
    publish_enrollment,
    revoke,
    revoked_key_path,
)
from sparklem_core.commands import ENROLL, invoked_as
from sparklem_core.db.enrollments import ENROLLED, REVOKED
from sparklem_core.settings.config import (
    Config,
    ConfigError,
    load_config,
    mask_secrets,
    remember_secret,
)
from sparklem_core.settings.validation import YamlRefused, load_yaml
from sparklem_core.wire.bundle import BUNDLE_NAME, BundleError, read_passphrase_file

PROG = ENROLL
EXIT_FAILURE, EXIT_USAGE = 1, 2


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line; ``prog`` names the command in usage and error lines."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Enroll an agent (make its RSA key pair, store the public key in "
        "certificates/agents/ID.pem) and write its bundle DIR/config.tar.xz (agent.yaml, "
        "server_public.pem, agent_private.pem, encrypted and authenticated whole under a "
        "passphrase). Also "
        "revokes agents and lists them. Without arguments in a terminal, asks.",
        epilog="The certificates directory comes from the processor's config "
        "(certificates:, or SPARKLEM_CERTIFICATES_DIR); the default bootstrap servers from "
        "kafka.bootstrap.servers (or SPARKLEM_BOOTSTRAP_SERVERS).",
    )
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--agent-id", metavar="ID", help="the agent to enroll")
    action.add_argument("--revoke", metavar="ID", help="revoke an agent (moves its key)")
    action.add_argument("--list", action="store_true", help="list enrolled and revoked agents")
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT,...",
        help="Kafka bootstrap servers as the device reaches them (default: the processor's)",
    )
    parser.add_argument(
        "--plugins",
        metavar="NAME,...",
        help="plugins the agent runs (default: every plugin the processor loads)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        metavar="SECONDS",
        help="collection interval of every plugin (default: each plugin's own, 30 s built in)",
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help=f"where {BUNDLE_NAME} goes (default: ./out/ID/)"
    )
    parser.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="passphrase that seals the bundle (first line); default: a random one, printed once",
    )
    parser.add_argument(
        "--force", action="store_true", help="re-key an agent already enrolled (or revoked)"
    )
    parser.add_argument(
        "--kafka-property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra librdkafka producer property for the agent, repeatable (no secrets)",
    )
    parser.add_argument(
        "--set",
        "--plugin-setting",  # its first name, kept as an alias
        dest="plugin_setting",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE",
        help="an agent-side plugin setting (a YAML value), repeatable, checked against the "
        "plugin's declared settings; 'sparklem plugins' lists them",
    )
    parser.add_argument(
        "--key-bits",
        type=int,
        default=AGENT_KEY_BITS,
        metavar="N",
        help=f"RSA key size of the agent (default {AGENT_KEY_BITS}, at least 2048)",
    )
    parser.add_argument(
        "--config", metavar="FILE", help="processor config (default: ./config.yaml when present)"
    )
    return parser


def cmd_enroll(config: Config, args: argparse.Namespace) -> int:
    agent_id = check_agent_id(args.agent_id)
    bootstrap = check_bootstrap(args.bootstrap or config.bootstrap_servers)
    names = [n.strip() for n in args.plugins.split(",") if n.strip()] if args.plugins else None
    plugins = plugin_specs(config, names, args.interval, parse_plugin_settings(args.plugin_setting))
    passphrase = read_passphrase_file(args.passphrase_file) if args.passphrase_file else None
    remember_secret(passphrase)
    result = create_agent(
        config.certificates,
        agent_id,
        bootstrap=bootstrap,
        plugins=plugins,
        out_dir=args.out or Path("out") / agent_id,
        passphrase=passphrase,
        force=args.force,
        bits=args.key_bits,
        kafka=_kafka_properties(args.kafka_property),
    )
    every = ", ".join(f"{n} every {s['interval']:g} s" for n, s in plugins.items())
    print(f"enrolled:    {agent_id} ({result.key_path}, fingerprint {result.fingerprint})")
    print(f"bundle:      {result.bundle_path}")
    print(f"plugins:     {every}")
    print(f"bootstrap:   {bootstrap}")
    print(f"server kid:  {result.kid}")
    if result.passphrase_generated:
        print(f"passphrase:  {result.passphrase}")
        print(
            f"{args.prog}: WARNING: store this passphrase now; it is not saved anywhere and the "
            "agent needs it (--passphrase-file or SPARKLEM_AGENT_PASSPHRASE)",
            file=sys.stderr,
        )
    # Last: the bundle and its passphrase are shown whatever the database says.
    retry = "re-issue the agent with --force once the database is reachable"
    print(f"recorded:    {publish_enrollment(config, agent_id, ENROLLED, result.key_path, retry)}")
    return 0


def cmd_revoke(config: Config, args: argparse.Namespace) -> int:
    check_agent_id(args.revoke)
    target = revoked_key_path(config.certificates, args.revoke)
    if target.exists() and not agent_key_path(config.certificates, args.revoke).exists():
        # revoked here before: recording it in the database again is what may be missing
        where = publish_enrollment(config, args.revoke, REVOKED, target)
        print(f"revoked: {args.revoke} was already revoked ({target}); {where}")
        return 0
    path = revoke(config.certificates, args.revoke)
    where = publish_enrollment(config, args.revoke, REVOKED, path)
    print(f"revoked: {args.revoke} (key moved to {path}); {where}")
    print("every processor reading it refuses the agent within its registry_refresh_s")
    return 0


def cmd_list(config: Config, _args: argparse.Namespace) -> int:
    entries = list_agents(config.certificates)
    if not entries:
        print(f"no agents in {config.certificates}/agents or {config.certificates}/revoked")
        return 0
    print(format_agents(entries))
    return 0


def ask(config: Config, args: argparse.Namespace) -> None:
    """Fill in the agent id, bootstrap servers and plugins interactively."""
    available = ",".join(plugin_specs(config))
    args.agent_id = _prompt("agent id", None, check_agent_id)
    args.bootstrap = _prompt("bootstrap servers", config.bootstrap_servers, check_bootstrap)
    args.plugins = _prompt(
        "plugins", available, lambda v: ",".join(plugin_specs(config, v.split(",")))
    )


def _prompt(label: str, default: str | None, check: Any) -> str:
    while True:
        answer = input(f"{label}{f' [{default}]' if default else ''}: ").strip() or default
        if not answer:
            continue
        try:
            return str(check(answer))
        except (EnrollmentError, BundleError) as exc:
            print(f"  {exc}", file=sys.stderr)


def parse_plugin_settings(items: list[str]) -> dict[str, dict[str, Any]]:
    """``--set PLUGIN.KEY=VALUE`` items, by plugin; the value is read as YAML (``5``,
    ``true``, ``/x``). :class:`EnrollmentError` for an item of another shape; whether the
    plugin declares the key and its type is :func:`plugin_specs`' to check."""
    settings: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        plugin, dot, name = key.strip().partition(".")
        if not sep or not dot or not plugin or not name:
            raise EnrollmentError(f"--set {key!r}: expected PLUGIN.KEY=VALUE")
        try:
            value = load_yaml(text) if text.strip() else ""
        except YamlRefused as exc:
            raise EnrollmentError(f"--set {key!r}: the value {exc}") from None
        settings.setdefault(plugin, {})[name] = value
    return settings


def _kafka_properties(items: list[str]) -> dict[str, str]:
    props = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise BadKafkaProperty(f"--kafka-property {item!r}: expected KEY=VALUE")
        props[name.strip()] = value.strip()
    return props


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    invoked_as(prog)  # hints name the commands this user has
    parser = build_parser(prog)
    parser.set_defaults(prog=prog)
    interactive = not argv
    if interactive and not sys.stdin.isatty():
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: give --agent-id ID, --revoke ID or --list", file=sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    if not interactive and not (args.agent_id or args.revoke or args.list):
        parser.error("give --agent-id ID, --revoke ID or --list")
    try:
        config = load_config(args.config)
        if interactive:
            ask(config, args)
        if args.revoke:
            return cmd_revoke(config, args)
        if args.list:
            return cmd_list(config, args)
        return cmd_enroll(config, args)
    except ConfigError as exc:
        print(f"{prog}: configuration error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except BadKafkaProperty as exc:  # checked only once the config is loaded
        print(f"{prog}: error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (EnrollmentError, BundleError) as exc:
        print(f"{prog}: error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:
        reason = mask_secrets(f"{exc.filename or ''}: {exc.strerror or exc}")
        print(f"{prog}: error: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    except EOFError:
        print(f"\n{prog}: aborted (end of input)", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"\n{prog}: aborted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
