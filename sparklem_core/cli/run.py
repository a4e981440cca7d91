"""``run``: the processor, or ``--workers N`` of them under one supervisor."""

from __future__ import annotations

import argparse
import logging

from sparklem_core import __version__
from sparklem_core.cli import args as types
from sparklem_core.cli.errors import EXIT_FAILURE
from sparklem_core.settings.config import Config

log = logging.getLogger("sparklem")


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "run",
        parents=[common],
        help="run the processor (the default)",
        description="Consume, verify, decrypt and store until SIGTERM/SIGINT.",
    )
    parser.add_argument(
        "--workers",
        default="1",
        metavar="N",
        type=types.workers,
        help="consumer processes in the group: a number or 'auto' (one per core); default 1",
    )
    parser.set_defaults(func=run)


def run(config: Config, args: argparse.Namespace) -> int:
    from sparklem_core.fleet.registry import NoServerKey, load_server_keys
    from sparklem_core.processor.metrics_server import serve
    from sparklem_core.processor.supervisor import follow_supervisor
    from sparklem_core.processor.wiring import prepare
    from sparklem_core.settings.masking import mask_secrets

    if args.workers > 1:
        return run_workers(config, args)
    follow_supervisor()  # a worker of run --workers ends with its supervisor

    setup = prepare(config)  # first: every configuration mistake before anything else
    try:
        server_keys = load_server_keys(config.certificates)
    except NoServerKey as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    if not setup.plugins_running():
        return EXIT_FAILURE
    loaded = setup.plugins.loaded()
    registry = setup.registry()
    pipeline = setup.pipeline(server_keys, registry)
    processor = setup.processor(pipeline)
    processor.install_signal_handlers()
    log.info(
        "sparklem %s processor starting: plugins=%s topics=%s database=%s kid=%s "
        "bootstrap=%s group=%s agents=%d config=%s",
        __version__,
        ",".join(f"{n} {i.manifest.version}" for n, i in loaded.items() if i.manifest),
        ",".join(processor.topics),
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


def run_workers(config: Config, args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from sparklem_core.fleet.registry import load_server_keys
    from sparklem_core.processor.metrics import WorkersCollector
    from sparklem_core.processor.metrics_server import free_port, serve, workers_probe
    from sparklem_core.processor.supervisor import Supervisor
    from sparklem_core.processor.wiring import prepare

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
