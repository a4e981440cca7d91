"""Shared pytest fixtures.

Sections (add new fixtures to the matching section, or open a new one below):

1. Markers        -- tests using a real broker or PostgreSQL are marked ``e2e``.
2. Kafka broker   -- ``broker``: one Tansu broker for the whole session.
3. SQL databases  -- ``pg_server`` (session) and ``database_url`` (per test, sqlite + postgresql).

Polling helper for tests: ``from waiting import wait_for`` (tests/waiting.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sparklem_core.local_servers import LocalPostgres, TansuBroker

# ======================================================================================
# 1. Markers
# ======================================================================================

#: Tests that request any of these fixtures talk to a real server: mark them ``e2e``.
E2E_FIXTURES = frozenset({"broker", "pg_server"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.e2e)


# ======================================================================================
# Hypothesis profiles: ``ci`` (the default) and ``long`` (``--hypothesis-profile=long``)
# ======================================================================================


def _register_hypothesis_profiles() -> None:
    """``ci``: a fixed, derandomized budget (tests/test_fuzz.py within ~90 s on both
    databases); ``long``: thousands of random examples, run by hand. ``deadline=None``:
    examples go through a real database, whose latency is not the code's."""
    from hypothesis import HealthCheck, settings

    slow = [HealthCheck.too_slow, HealthCheck.data_too_large]
    settings.register_profile(
        "ci",
        max_examples=300,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=slow,
    )
    settings.register_profile(
        "long", max_examples=5000, deadline=None, print_blob=True, suppress_health_check=slow
    )
    settings.load_profile("ci")  # --hypothesis-profile=NAME, read later, overrides it


_register_hypothesis_profiles()


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


@pytest.fixture(scope="session")
def pg_server() -> Iterator[LocalPostgres]:
    """A local PostgreSQL server for the session; skips when the binaries are absent.

    Tests may ``stop()`` it to simulate an outage; they must ``start()`` it again (the
    ``database_url`` fixture also restarts it if a test left it stopped).
    """
    reason = LocalPostgres.available()
    if reason is not None:
        pytest.skip(reason)
    with LocalPostgres() as server:
        yield server


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.e2e)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """SQLAlchemy URL of an empty database, once for SQLite and once for PostgreSQL.

    PostgreSQL: a fresh database per test on ``pg_server`` (dropped afterwards), so tests
    never see each other's rows.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/db.sqlite3"
        return
    server: LocalPostgres = request.getfixturevalue("pg_server")
    server.start()  # no-op when running; recovers from a test that left it stopped
    name = f"test_{uuid.uuid4().hex[:16]}"
    url = server.create_database(name)
    yield url
    if not server.is_running():
        server.start()
    server.drop_database(name)  # WITH (FORCE): also ends connections the test left open
