"""``sparklem`` (``python3 main.py`` in a checkout): the processor's command line."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError

from sparklem_core import __version__, wire
from sparklem_core.commands import PROCESSOR, invoked_as
from sparklem_core.logsetup import add_log_level_argument, setup_logging
from sparklem_core.plugin_host import PluginHost
from sparklem_core.processor.db_errors import DatabaseUnusable, check_database_url
from sparklem_core.processor.endpoint import EndpointError, serve
from sparklem_core.processor.pipeline import Pipeline
from sparklem_core.processor.plugin_tables import PluginTableRefused
from sparklem_core.processor.registry import (
    AgentRegistry,
    NoServerKey,
    create_server_key,
    load_server_keys,
)
from sparklem_core.processor.retention import Target, targets
from sparklem_core.processor.schema_lock import SchemaLockTimeout
from sparklem_core.processor.store import Store
from sparklem_core.reading.catalog import open_store
from sparklem_core.settings.config import (
    Config,
    ConfigError,
    format_duration,
    load_config,
    load_plugins,
    mask_secrets,
)
from sparklem_core.settings.validation import describe_settings

log = logging.getLogger("sparklem")

PROG = PROCESSOR
EXIT_USAGE = 2
EXIT_FAILURE = 1


class CommandError(Exception):
    """A user-facing failure of a command: one line, printed after the program's name."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Setup:
    config: Config
    plugins: PluginHost
    store: Store
    retention: list[Target]  # the bounded tables


def prepare(config: Config) -> Setup:
    """Load plugins, check their settings, declare every table (core and plugins) on a Store."""
    plugins, store = open_store(config)
    return Setup(config, plugins, store, targets(store, config.retention))


def plugin_topics(config: Config, plugins: PluginHost) -> dict[str, str]:
    """Each loaded plugin's topic: ``plugins.NAME.topic`` when set, else its manifest's."""
    return {
        name: config.plugin_topic(name, info.manifest.topic)
        for name, info in plugins.loaded().items()
        if info.manifest is not None
    }


def cmd_init(config: Config, _args: argparse.Namespace) -> int:
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


def cmd_plugins(config: Config, args: argparse.Namespace) -> int:
    if args.action == "new":
        return cmd_plugins_new(args)
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
                    (t.name, t.time, ",".join(t.series) or "-", ",".join(t.values) or "-")
                    for t in declared
                ],  # fmt: skip
                indent="  ",
            )
    print(f"\n{RESTART_NOTE}")
    return 0


RESTART_NOTE = "A newly installed plugin is loaded at the next start of the processor (and agent)."


def cmd_plugins_new(args: argparse.Namespace) -> int:
    from sparklem_core.admin.scaffold import ScaffoldError, write_plugin

    directory = Path(args.dir or f"sparklem-{args.name.replace('_', '-')}")
    try:
        write_plugin(args.name, directory)
    except ScaffoldError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    print(f"wrote plugin {args.name} to {directory}; next: pip install -e '{directory}[test]'")
    return 0


def print_table(rows: Sequence[Sequence[str]], indent: str = "") -> None:
    """Columns padded to their widest cell; the last one is not."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [c.ljust(w) for c, w in zip(row, widths, strict=False)]
        print(indent + "  ".join([*cells, row[-1]]).rstrip())


def cmd_run(config: Config, args: argparse.Namespace) -> int:
    from sparklem_core.processor.processor import Processor
    from sparklem_core.processor.supervisor import follow_supervisor

    if args.workers > 1:
        return run_workers(config, args)
    follow_supervisor()  # a worker of run --workers ends with its supervisor

    setup = prepare(config)  # first: every configuration mistake before anything else
    try:
        server_keys = load_server_keys(config.certificates)
    except NoServerKey as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    if not plugins_loaded(config, setup):
        return EXIT_FAILURE
    loaded = setup.plugins.loaded()
    registry = AgentRegistry(config.certificates, config.processor.registry_refresh_s)
    pipeline = make_pipeline(config, setup, server_keys, registry)
    topics = sorted(set(pipeline.topics.values()))
    processor = Processor(config, pipeline, setup.store, topics, prune=setup.retention)
    processor.install_signal_handlers()
    log.info(
        "sparklem %s processor starting: plugins=%s topics=%s database=%s kid=%s "
        "bootstrap=%s group=%s agents=%d config=%s",
        __version__,
        ",".join(f"{n} {i.manifest.version}" for n, i in loaded.items() if i.manifest),
        ",".join(topics),
        mask_secrets(config.database_url),
        ",".join(server_keys),
        config.bootstrap_servers,
        config.group_id,
        len(registry.agents()),
        config.source,
    )
    endpoint = None
    if processor.metrics is not None:
        endpoint = serve(
            config.http.listen,
            processor.metrics.registry,
            {"/healthz": processor.liveness, "/readyz": processor.readiness},
            explicit=config.http.explicit_listen,
        )
    try:
        if not processor.prepare_database():
            return 0
        registry.use_database(setup.store)
        return processor.run()
    finally:
        if endpoint is not None:
            endpoint.close()


def plugins_loaded(config: Config, setup: Setup) -> bool:
    """Warn of each plugin that is not running; False, said, when none is."""
    for info in setup.plugins.infos:
        if not info.ok and info.status != "disabled":
            log.warning("plugin %s not running: %s", info.name, info.status)
    if not setup.plugins.loaded():
        log.error(
            "no plugin could be loaded from installed packages or the plugins directory (%s); "
            "see: sparklem plugins",
            config.plugins_dir or "none",
        )
        return False
    return True


def make_pipeline(
    config: Config, setup: Setup, server_keys: dict[str, Any], registry: AgentRegistry
) -> Pipeline:
    """The processor's per-record path, as ``run`` and ``redrive`` use it."""
    return Pipeline(
        config.processor,
        server_keys,
        registry,
        setup.plugins,
        config.plugins,
        setup.store,
        topics=plugin_topics(config, setup.plugins),
    )


def cmd_redrive(config: Config, args: argparse.Namespace) -> int:
    from sparklem_core.processor.redrive import Redrive, Selection
    from sparklem_core.processor.writer import Unavailable

    setup = prepare(config)
    if not plugins_loaded(config, setup):
        return EXIT_FAILURE
    registry = AgentRegistry(config.certificates, config.processor.registry_refresh_s)
    pipeline = make_pipeline(config, setup, load_server_keys(config.certificates), registry)
    setup.store.create_schema()
    registry.use_database(setup.store)
    selection = Selection(tuple(args.reason or ()), args.plugin, args.agent, args.since)
    progress = lambda s: print(f"redrive: {s.line()}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        summary = Redrive(pipeline, setup.store, progress).run(selection, dry_run=args.dry_run)
    except Unavailable as exc:
        print(
            f"{PROG}: database unavailable ({mask_secrets(str(exc))}); what was redriven is "
            "committed: run redrive again to go on",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    finally:
        setup.store.dispose()
    print(f"{'dry run, nothing changed: ' if args.dry_run else ''}{summary.line()}")
    if summary.cut:
        shown = ", ".join(summary.cut[:20]) + (" ..." if len(summary.cut) > 20 else "")
        print(f"not redrivable (bytes cut when quarantined): {shown}")
    return 0


def cmd_agents(config: Config, args: argparse.Namespace) -> int:
    import json
    from datetime import UTC

    from sparklem_core.admin.fleet import table_rows
    from sparklem_core.processor.fleet_state import FleetError, inventory

    check_database_url(config.database_url)
    now = datetime.now(UTC)
    try:
        statuses = inventory(config, now)
    except FleetError as exc:
        raise CommandError(str(exc)) from None
    if args.silent:
        statuses = [s for s in statuses if s.silent]
    if args.json:
        print(json.dumps([s.document(now) for s in statuses], indent=2))
    elif statuses:
        print_table(table_rows(statuses, now))
    else:
        print("no silent agents" if args.silent else "no agents enrolled or seen")
    return 0


def cmd_tail(config: Config, args: argparse.Namespace) -> int:
    import threading

    from sparklem_core.reading.feed import START, EventFilter
    from sparklem_core.reading.tail import TailError, follow, open_feed, printer

    check_database_url(config.database_url)
    try:
        reader = open_feed(config.database_url)
    except TailError as exc:
        raise CommandError(str(exc)) from None
    try:
        after = START if args.from_start else args.since or reader.head()
        colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        kinds = ("rejection",) if args.rejected else ()
        show = EventFilter(tuple(args.plugin), tuple(args.agent), kinds)
        write = printer(sys.stdout, as_json=args.json, colour=colour)
        follow(reader, after, show, write, threading.Event())  # until Ctrl-C
    finally:
        reader.engine.dispose()
    return 0


def run_workers(config: Config, args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from sparklem_core.processor.endpoint import free_port, workers_probe
    from sparklem_core.processor.metrics import WorkersCollector
    from sparklem_core.processor.supervisor import Supervisor

    setup = prepare(config)  # fail here, once, rather than in every worker
    load_server_keys(config.certificates)
    if config.database_url.startswith("sqlite"):
        log.info(
            "SQLite with %d workers: writes are serialized by SQLite's lock (WAL, "
            "BEGIN IMMEDIATE, 30 s busy timeout); decryption and plugins run in "
            "parallel. Use PostgreSQL for parallel writes.",
            args.workers,
        )
    setup.store.create_schema()  # once, before the workers race to do it
    setup.store.dispose()
    worker_args = ["--log-level", args.log_level]
    if args.config:
        worker_args += ["--config", args.config]
    if not config.http.listen:
        return Supervisor(args.workers, worker_args).run()
    # One endpoint for the host: each worker listens on a port of its own on 127.0.0.1,
    # this process answers for all of them.
    ports: dict[int, int] = {}

    def worker_env(n: int) -> dict[str, str]:
        ports[n] = free_port()
        return {"SPARKLEM_HTTP_LISTEN": f"127.0.0.1:{ports[n]}"}

    registry = CollectorRegistry()
    registry.register(WorkersCollector(lambda: dict(ports)))
    probes = {path: workers_probe(lambda: dict(ports), path) for path in ("/healthz", "/readyz")}
    endpoint = serve(config.http.listen, registry, probes, explicit=config.http.explicit_listen)
    try:
        return Supervisor(args.workers, worker_args, worker_env).run()
    finally:
        if endpoint is not None:
            endpoint.close()


def cmd_prune(config: Config, args: argparse.Namespace) -> int:
    import signal
    import threading

    from sparklem_core.processor.retention import Pruner

    setup = prepare(config)
    if not setup.retention:
        print("no table has a retention: nothing to prune (see retention: in the README)")
        return 0
    setup.store.create_schema()
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # the batch in flight commits, then out
        signal.signal(signum, lambda *_: stop.set())
    pruner = Pruner(setup.store, setup.retention, config.processor, stop=stop)
    try:
        report = pruner.run_pass(dry_run=args.dry_run)
    finally:
        setup.store.dispose()
    if not report.ran:
        print("another processor is pruning this database now; nothing done")
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for done in report.tables:
        line = f"{done.table:<24} older than {format_duration(done.keep):>5}: {verb} {done.rows}"
        if done.waiting:
            line += " (no rows stored that long ago yet: plugin tables count from arrival)"
        elif not done.finished:
            line += " (stopped before the end: the next pass carries on)"
        print(line)
    return 0 if all(done.finished for done in report.tables) else EXIT_FAILURE


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from sparklem_core.http.server import ServeError, run

    try:
        return run(config, args.listen or config.serve.listen)
    except ServeError as exc:
        raise CommandError(str(exc)) from None


def cmd_demo(config: Config, args: argparse.Namespace) -> int:
    from sparklem_core.demo import DemoError, run_demo

    try:
        return run_demo(Path(args.dir), args.agents, args.seconds, fresh=args.fresh)
    except DemoError as exc:
        raise CommandError(str(exc)) from None


def cmd_dev_broker(_config: Config, args: argparse.Namespace) -> int:
    """A Tansu broker in the foreground, in memory, until Ctrl-C: the demo's, for a quick start."""
    import signal
    import socket
    import threading

    from sparklem_core.testing.servers import LOCALHOST, LocalServerError, TansuBroker

    with socket.socket() as probe:
        try:
            probe.bind((LOCALHOST, args.port))
        except OSError:
            raise CommandError(
                f"port {args.port} on {LOCALHOST} is in use (another Kafka?): "
                "stop it or choose another --port"
            ) from None
    log_path = Path(args.log).resolve()
    try:
        broker = TansuBroker(args.port, log_path).start()
    except LocalServerError as exc:
        raise CommandError(f"dev broker: {str(exc).splitlines()[0]}") from None
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with broker:
        print(
            f"dev broker: Tansu on {broker.bootstrap}, in memory (a restart loses every topic); "
            f"log: {log_path}; Ctrl-C stops it",
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.is_running():
                raise CommandError(f"the dev broker exited; see {log_path}")
    return 0


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The command line; ``prog`` names the command in usage and error lines."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Sparkle-M processor: consumes agents' readings from Kafka, verifies, "
        "decrypts and stores them with SQLAlchemy.",
        epilog="Without a command, 'run' is assumed. Environment: SPARKLEM_BOOTSTRAP_SERVERS, "
        "SPARKLEM_DATABASE_URL, SPARKLEM_CERTIFICATES_DIR, SPARKLEM_GROUP_ID override the file.",
    )
    parser.add_argument("--version", action="version", version=f"sparklem {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", metavar="FILE", help="YAML config file (default: ./config.yaml when present)"
    )
    add_log_level_argument(common)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the processor (the default)",
        description="Consume, verify, decrypt and store until SIGTERM/SIGINT.",
    )
    run.add_argument(
        "--workers",
        default="1",
        metavar="N",
        type=_workers,
        help="consumer processes in the group: a number or 'auto' (one per core); default 1",
    )
    run.set_defaults(func=cmd_run)
    init = sub.add_parser(
        "init",
        parents=[common],
        help="create the server key and the database schema",
        description="Create certificates/server_private.pem (mode 0600) if "
        "missing, create or upgrade the database schema, print the key id.",
    )
    init.set_defaults(func=cmd_init)
    plugins = sub.add_parser(
        "plugins",
        parents=[common],
        help="list plugins and their status",
        description="Name, version, topic, status and source of every plugin found.",
    )
    plugins.set_defaults(func=cmd_plugins, action=None)
    plugin_actions = plugins.add_subparsers(dest="action", metavar="ACTION")
    new = plugin_actions.add_parser(
        "new",
        help="write a new plugin package to start from",
        description="Write an installable plugin package (pyproject.toml, manifest, "
        "processor and agent sides, README, tests using sparklem's kit).",
    )
    new.add_argument("name", metavar="NAME", help="the plugin's name, e.g. humidity")
    new.add_argument("--dir", help="where to write it (default: ./sparklem-NAME)")
    prune = sub.add_parser(
        "prune",
        parents=[common],
        help="delete, once, the rows their table's retention no longer keeps",
        description="One pass of the pruner the processor runs in the background: delete, "
        "in small transactions, the rows each table's retention no longer keeps, and print "
        "how many per table. Skips (exit 0) if another processor is pruning now.",
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="count what would be removed; change nothing"
    )
    prune.set_defaults(func=cmd_prune)
    redrive = sub.add_parser(
        "redrive",
        parents=[common],
        help="process quarantined records again",
        description="Judge quarantined records (rejected_messages) again with today's "
        "plugins, settings and enrolled agents: each one is stored and leaves the quarantine, "
        "or stays with its new reason. Safe while processors run; running it twice stores "
        "nothing twice.",
    )
    redrive.add_argument(
        "--reason",
        action="append",
        choices=wire.REASONS,
        metavar="REASON",
        help=f"only records refused for REASON (repeatable): {', '.join(wire.REASONS)}",
    )
    redrive.add_argument("--plugin", help="only records of this plugin")
    redrive.add_argument("--agent", help="only records of this agent")
    redrive.add_argument(
        "--since",
        type=_time,
        metavar="TIME",
        help="only records received at or after TIME (RFC 3339, or ms since the epoch)",
    )
    redrive.add_argument("--dry-run", action="store_true", help="judge and report, change nothing")
    redrive.set_defaults(func=cmd_redrive)
    agents = sub.add_parser(
        "agents",
        parents=[common],
        help="the fleet: every enrolled or seen agent, and which went silent",
        description="Every agent enrolled or revoked (certificates directory) or seen by the "
        "processors (sparklem_agents): state, activity, last seen (relative and UTC), messages "
        "stored, rejections. Silent: enrolled and no message for longer than "
        "fleet.silent_after_s, by default three times its shortest collection interval.",
    )
    agents.add_argument("--silent", action="store_true", help="only agents that went silent")
    agents.add_argument("--json", action="store_true", help="JSON for scripts, one object each")
    agents.set_defaults(func=cmd_agents)
    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="the read API and dashboard (HTTP)",
        description="Serve the read API under /api/v1 (readings, aggregates, agents, "
        "rejections, a live stream; OpenAPI at /docs) and the dashboard at /, from the "
        "database in the config. Run any number beside the processors. Without "
        "serve.read_tokens or serve.admin_tokens it listens on loopback only. See "
        "docs/reading.md.",
    )
    serve.add_argument(
        "--listen",
        type=_listen_arg,
        metavar="HOST:PORT",
        help="where to listen (default: serve.listen, 127.0.0.1:8620)",
    )
    serve.set_defaults(func=cmd_serve)
    tail = sub.add_parser(
        "tail",
        parents=[common],
        help="stored readings and rejections, live, one line each",
        description="Follow what the processors store, as they commit it: one line per "
        "reading (time, agent, plugin, series and values) or rejection (reason, detail), "
        "read from the database's feed (sparklem_feed), no HTTP server needed. Starts at "
        "the newest event; Ctrl-C ends it. Text from records is escaped: no control "
        "character reaches the terminal. Colour on a terminal unless NO_COLOR is set.",
    )
    tail.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="P",
        help="only this plugin's events (repeat for several)",
    )
    tail.add_argument(
        "--agent",
        action="append",
        default=[],
        metavar="A",
        help="only this agent's events (repeat for several)",
    )
    tail.add_argument("--rejected", action="store_true", help="only rejections")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    start = tail.add_mutually_exclusive_group()
    start.add_argument(
        "--from-start",
        action="store_true",
        help="begin with the oldest event the feed still holds (retention: 1d)",
    )
    start.add_argument(
        "--since",
        type=_event_id,
        metavar="EVENT_ID",
        help="resume after this event id (COMMITSEQ-PART-N, as --json prints)",
    )
    tail.set_defaults(func=cmd_tail)
    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="the whole system on this machine",
        description="Start a local broker, a processor, a real agent on this "
        "machine and a simulated fleet; print what was stored. Needs the "
        "test extra (pip install -e '.[test]').",
    )
    demo.add_argument(
        "--dir", default="demo", help="where keys, database and logs go (default: ./demo)"
    )
    demo.add_argument("--agents", type=int, default=20, help="simulated agents (default 20)")
    demo.add_argument("--seconds", type=float, default=30, help="how long to run (default 30)")
    demo.add_argument(
        "--fresh",
        action="store_true",
        help="wipe the database of an earlier demo in --dir (without it, that is refused)",
    )
    demo.set_defaults(func=cmd_demo)
    dev_broker = sub.add_parser(
        "dev-broker",
        parents=[common],
        help="a local Kafka broker for trying things out (no Docker)",
        description="Run the demo's Tansu broker in the foreground on 127.0.0.1 until "
        "Ctrl-C. Storage is in memory: a restart loses every topic and offset. Needs the "
        "test extra (pip install -e '.[test]').",
    )
    dev_broker.add_argument(
        "--port", type=_port, default=9092, help="port on 127.0.0.1 (default 9092)"
    )
    dev_broker.add_argument(
        "--log", default="dev-broker.log", help="the broker's log file (default: ./dev-broker.log)"
    )
    dev_broker.set_defaults(func=cmd_dev_broker)
    return parser


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (1 to 65535)")
    return port


def _listen_arg(value: str) -> str:
    """serve's ``--listen``: ``HOST:PORT``; not ``""``, which only http.listen may be."""
    from sparklem_core.settings.config import DEFAULT_SERVE_PORT, check_listen

    with contextlib.suppress(ValueError):
        if value:
            return check_listen(value)
    raise argparse.ArgumentTypeError(
        f"{value!r} is not HOST:PORT (port 1-65535), e.g. 127.0.0.1:{DEFAULT_SERVE_PORT}"
    )


def _workers(value: str) -> int:
    from sparklem_core.processor.supervisor import parse_workers

    try:
        return parse_workers(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number or 'auto'") from None


def _event_id(value: str) -> str:
    from sparklem_core.reading.feed import parse_event_id

    try:
        parse_event_id(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _time(value: str) -> datetime:
    from sparklem_core.reading.timeparse import parse_time

    try:
        return parse_time(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """Run the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    invoked_as(prog)  # hints name the commands this user has
    parser = build_parser(prog)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv.insert(0, "run")
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    try:
        config = load_config(args.config)
        return args.func(config, args)
    except CommandError as exc:
        print(f"{prog}: {mask_secrets(str(exc))}", file=sys.stderr)
        return exc.status
    except ConfigError as exc:
        print(f"{prog}: configuration error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (
        NoServerKey,
        SchemaLockTimeout,
        DatabaseUnusable,
        PluginTableRefused,
        EndpointError,
    ) as exc:
        print(f"{prog}: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except DBAPIError as exc:  # init and friends: the database refused or is unreachable
        reason = str(exc.orig or exc).strip().splitlines()[0][:300]
        print(f"{prog}: database error: {mask_secrets(reason)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `sparklem agents | head`: the reader left, nothing went wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except Exception:  # a bug, not a user mistake: say so with the traceback, exit non-zero
        log.exception("sparklem %s failed unexpectedly", args.command or "run")
        return EXIT_FAILURE


if __name__ == "__main__":  # the workers of run --workers N
    sys.exit(main())
