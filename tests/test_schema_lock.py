"""Schema creation under concurrency: any number of ``init``, ``run`` and
``Store.create_schema()`` started at once on a fresh database all succeed, and the
schema ends up at head exactly once (issue 8). SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from alembic.script import ScriptDirectory
from harness import ROOT, Db, Fleet, ProcessorProcess, temperature
from waiting import wait_for

from sparklem_core.db import store as store_module
from sparklem_core.db.engines import make_engine
from sparklem_core.db.schema_lock import SchemaLockTimeout, schema_lock
from sparklem_core.dev.servers import TansuBroker
from sparklem_core.fleet.registry import create_server_key
from sparklem_core.processor.wiring import prepare
from sparklem_core.settings.config import load_config

N = 4


@pytest.fixture
def config_path(tmp_path: Path, database_url: str) -> Path:
    certificates = tmp_path / "certificates"
    create_server_key(certificates, bits=2048)  # the schema is what races here, not the key
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap.servers": "127.0.0.1:1"},  # init never connects
                "database": {"url": database_url},
                "certificates": str(certificates),
            }
        )
    )
    return path


def assert_schema_at_head_once(config_path: Path) -> None:
    setup = prepare(load_config(str(config_path)))
    engine = setup.store.engine
    try:
        head = ScriptDirectory(
            str(Path(store_module.__file__).parent / "migrations")
        ).get_current_head()
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM sparklem_alembic_version"))
            assert [v for (v,) in versions] == [head]
        missing = set(setup.store.metadata.tables) - set(sa.inspect(engine).get_table_names())
        assert not missing, f"tables not created: {missing}"
    finally:
        setup.store.dispose()


def test_concurrent_init_processes(config_path: Path) -> None:
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "init", "--config", str(config_path)],
            cwd=config_path.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(N)
    ]
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output
        assert "schema up to date" in output and "Traceback" not in output, output
    assert_schema_at_head_once(config_path)


def test_concurrent_create_schema_threads(config_path: Path) -> None:
    stores = [prepare(load_config(str(config_path))).store for _ in range(N)]
    barrier = threading.Barrier(N)
    errors: list[BaseException] = []

    def create(store: store_module.Store) -> None:
        barrier.wait()
        try:
            store.create_schema()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(store,), daemon=True) for store in stores]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: not any(t.is_alive() for t in threads), 120, message="still running")
        assert errors == []
        assert_schema_at_head_once(config_path)
    finally:
        for store in stores:
            store.dispose()


def test_init_waits_for_the_lock_and_says_so(config_path: Path, database_url: str) -> None:
    engine = make_engine(database_url)
    output = config_path.parent / "init.out"
    try:
        with schema_lock(engine), open(output, "w") as out:
            init = subprocess.Popen(
                [sys.executable, str(ROOT / "main.py"), "init", "--config", str(config_path)],
                cwd=config_path.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            wait_for(
                lambda: "waiting for another process upgrading" in output.read_text(),
                60,
                message="init did not say it waits",
            )
            assert init.poll() is None, output.read_text()
        assert init.wait(120) == 0, output.read_text()
    finally:
        engine.dispose()
    assert "schema up to date" in output.read_text()
    assert_schema_at_head_once(config_path)


def test_create_schema_gives_up_after_the_lock_timeout(database_url: str) -> None:
    holder, waiter = (
        make_engine(database_url),
        store_module.Store(database_url, "g"),
    )
    try:
        with (
            schema_lock(holder),
            pytest.raises(SchemaLockTimeout, match=r"gave up after 1s waiting for another"),
        ):
            waiter.create_schema(lock_timeout_s=1)
        waiter.create_schema()  # and takes it once it is free
    finally:
        holder.dispose()
        waiter.dispose()


def test_three_processors_start_at_once_on_a_fresh_postgres(
    tmp_path: Path,
    broker: TansuBroker,
    pg_url: str,
    fleet: Fleet,
    processors: list[ProcessorProcess],
) -> None:
    config = fleet.config(broker.bootstrap, pg_url)
    for name in ("a", "b", "c"):
        processors.append(ProcessorProcess(tmp_path, config, name).start(wait_assigned=False))
    for proc in processors:  # past create_schema, consuming: none died of the race
        proc.wait_log("assigned t", timeout=60)
    fleet.send(fleet.envelope("edge-1", "temperature", temperature(("cpu", 50.0, "C"))))
    fleet.flush()
    db = Db(pg_url)
    try:
        db.wait_count("temperature_readings", 1)
    finally:
        db.close()
    for proc in processors:
        assert proc.proc is not None and proc.proc.poll() is None, proc.log()[-3000:]
    for proc in processors:
        assert proc.stop()[0] == 0, proc.log()[-3000:]
