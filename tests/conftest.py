"""Shared pytest fixtures.

Sections (add new fixtures to the matching section, or open a new one below):

1. Markers        -- tests using a real broker or PostgreSQL are marked ``e2e``.
2. Kafka broker   -- ``broker``: one Tansu broker for the whole session.
3. SQL databases  -- servers ``pg_server``, ``mariadb_server`` (session); fresh databases
                     ``pg_url``, ``mysql_url``, and ``database_url`` (sqlite + postgresql +
                     mariadb), per test.
4. End to end     -- ``fleet`` (enrolled agents), ``db`` (queries), ``processors`` (stopped after).
5. Pipeline       -- ``keys``, ``env``: the pipeline and store without Kafka (pipeline_env.py).

Polling helper for tests: ``from waiting import wait_for`` (tests/waiting.py).
"""

from __future__ import annotations

import importlib.metadata
import os
import random
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Db, Fleet, ProcessorProcess
from pipeline_env import Env, Keys

from sparklem_core.dev.servers import LocalMariaDB, LocalPostgres, TansuBroker
from sparklem_core.settings.masking import forget_secrets

KIT = "sparklem_core.testing.plugin"


def _kit_autoloaded() -> bool:
    """Whether pytest loads the kit itself (installed ``pytest11`` entry point)."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False
    return any(ep.value == KIT for ep in importlib.metadata.entry_points(group="pytest11"))


# The plugin authors' kit (plugin_harness), which the built-in plugins' tests use too;
# registered here until the installed entry point does it, never twice.
pytest_plugins = [] if _kit_autoloaded() else [KIT]

# ======================================================================================
# 1. Markers
# ======================================================================================

#: Tests that request any of these fixtures talk to a real server: mark them ``e2e``.
E2E_FIXTURES = frozenset({"broker", "pg_server", "pg_url", "mariadb_server", "mysql_url"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


# ======================================================================================
# Hypothesis: fresh examples every run, the seed printed
# ======================================================================================


def _register_hypothesis_profiles() -> None:
    """``ci`` (the default): 300 examples a test, drawn afresh each run from a seed that the
    run's header prints (``--hypothesis-seed=N`` draws the same again); ``long``: thousands,
    run by hand. A failure prints its falsifying example: keep it in the test as an
    ``@example(...)``, so that every later run tries it first. ``deadline=None``: examples
    go through a real database, whose latency is not the code's."""
    from hypothesis import HealthCheck, settings

    slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile(
        "ci", max_examples=300, deadline=None, database=None, suppress_health_check=slow
    )
    settings.register_profile(
        "long", max_examples=5000, deadline=None, print_blob=True, suppress_health_check=slow
    )
    settings.load_profile("ci")  # --hypothesis-profile=NAME, read later, overrides it


_register_hypothesis_profiles()


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """One seed for the whole run, chosen here unless given, before Hypothesis's own plugin
    reads it; a pytest-xdist worker takes its controller's (pytest_configure_node)."""
    worker_input = getattr(config, "workerinput", None)
    if worker_input is not None and "hypothesis_seed" in worker_input:
        config.option.hypothesis_seed = worker_input["hypothesis_seed"]
    elif config.getoption("hypothesis_seed", None) is None:
        config.option.hypothesis_seed = str(random.SystemRandom().randrange(2**32))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """pytest-xdist: each worker draws from the seed the run's header printed."""
    node.workerinput["hypothesis_seed"] = node.config.getoption("hypothesis_seed")


def _seed_line(config: pytest.Config) -> str:
    seed = config.getoption("hypothesis_seed")
    return f"hypothesis seed: {seed} (draw the same examples again: --hypothesis-seed={seed})"


def pytest_report_header(config: pytest.Config) -> str:
    return _seed_line(config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """At the end too: ``-q`` (as .ci/run runs) prints no header."""
    if not hasattr(config, "workerinput"):
        terminalreporter.write_line(_seed_line(config))


@pytest.fixture(autouse=True)
def _no_secret_remembered_across_tests() -> Iterator[None]:
    """Secrets a test's configuration held are masked in that test's logs only."""
    yield
    forget_secrets()


# ======================================================================================
# 2. Kafka broker
# ======================================================================================


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    """A started Tansu broker shared by the session; ``broker.bootstrap`` for clients.

    Shared: use unique topic and group names per test (e.g. with a uuid suffix) and do
    not restart it -- a restart wipes every topic (memory storage). Tests that need a
    restart start their own ``TansuBroker``.
    """
    log_path = tmp_path_factory.mktemp("tansu") / "tansu.log"
    with TansuBroker(log_path=log_path) as server:
        yield server


# ======================================================================================
# 3. SQL databases
# ======================================================================================


def _skip_unless_available(reason: str | None) -> None:
    """Skip when a database server cannot run here; fail instead where CI installs them."""
    if reason is None:
        return
    if os.environ.get("SPARKLEM_TEST_REQUIRE_SERVERS"):
        pytest.fail(f"SPARKLEM_TEST_REQUIRE_SERVERS is set, but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    """A local PostgreSQL server for the session; skips when the binaries are absent.

    Tests may ``stop()`` it to simulate an outage; they must ``start()`` it again (the
    ``database_url`` fixture also restarts it if a test left it stopped).
    """
    _skip_unless_available(LocalPostgres.available())
    with LocalPostgres() as server:
        yield server


@pytest.fixture
def pg_url(pg_server: LocalPostgres) -> Iterator[str]:
    """SQLAlchemy URL of a fresh, empty PostgreSQL database on ``pg_server``, dropped after
    (so tests never see each other's rows)."""
    pg_server.start()  # no-op when running; recovers from a test that left it stopped
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = pg_server.create_database(name)
    yield url
    if not pg_server.is_running():
        pg_server.start()
    pg_server.drop_database(name)  # WITH (FORCE): also ends connections the test left open


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.e2e),
        pytest.param("mysql", marks=pytest.mark.e2e),
    ],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLAlchemy URL of an empty database: once each on SQLite, PostgreSQL and MariaDB."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db.sqlite3"
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[LocalMariaDB]:
    """A local MariaDB server for the session; skips when the binaries are absent."""
    _skip_unless_available(LocalMariaDB.available())
    with LocalMariaDB() as server:
        yield server


@pytest.fixture
def mysql_url(mariadb_server: LocalMariaDB) -> Iterator[str]:
    """SQLAlchemy URL (``mysql+pymysql``) of a fresh, empty MariaDB database, dropped after."""
    mariadb_server.start()  # no-op when running; recovers from a test that left it stopped
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = mariadb_server.create_database(name)
    yield url
    mariadb_server.start()
    mariadb_server.drop_database(name)


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's ``promtool`` (package ``prometheus``, which .ci/run installs)."""
    found = shutil.which("promtool")
    _skip_unless_available(None if found else "promtool not found (apt-get install prometheus)")
    assert found is not None
    return found


# ======================================================================================
# 4. End to end (tests/harness.py)
# ======================================================================================


@pytest.fixture
def fleet(tmp_path: Path, broker: TansuBroker) -> Iterator[Fleet]:
    """Agents speaking the protocol, with ``edge-1`` enrolled, on per-test topics."""
    fleet = Fleet(tmp_path, broker.bootstrap)
    fleet.enroll("edge-1")
    yield fleet


@pytest.fixture
def db(database_url: str) -> Iterator[Db]:
    db = Db(database_url)
    yield db
    db.close()


@pytest.fixture
def processors() -> Iterator[list[ProcessorProcess]]:
    """Processors started with ``harness.start``; any still running are killed after."""
    started: list[ProcessorProcess] = []
    yield started
    for proc in started:
        proc.close()


# ======================================================================================
# 5. The pipeline without Kafka (tests/pipeline_env.py)
# ======================================================================================


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Server and agent keys, made once per module (RSA generation is slow)."""
    return Keys.generate()


@pytest.fixture
def env(tmp_path: Path, keys: Keys, database_url: str) -> Iterator[Env]:
    """A Pipeline and Store on ``database_url``, sealing as enrolled agents would."""
    world = Env(tmp_path, keys, database_url)
    yield world
    world.close()
