"""Smoke tests for the local Kafka broker, PostgreSQL and MariaDB helpers
(sparklem_core.dev.servers)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient
from waiting import wait_for

from sparklem_core.dev.servers import (
    LocalMariaDB,
    LocalPostgres,
    LocalServerError,
    TansuBroker,
    free_port,
)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "session.timeout.ms": 6000,
            "auto.offset.reset": "earliest",
        }
    )


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_broker_produce_and_consume_with_group(broker: TansuBroker) -> None:
    topic = _unique("smoke")
    broker.create_topics([topic])
    broker.create_topics([topic])  # already exists: not an error

    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        producer.produce(topic, value=f"value-{i}".encode(), key=f"key-{i}".encode())
    assert producer.flush(10) == 0

    consumer = _consumer(broker.bootstrap, _unique("group"))
    consumer.subscribe([topic])
    received = []

    def ten_received() -> bool:
        message = consumer.poll(0.2)
        if message is not None:
            assert message.error() is None, message.error()
            received.append(message)
        return len(received) >= 10

    try:
        wait_for(ten_received, timeout=30, interval=0, message="10 messages not consumed")
    finally:
        consumer.close()

    assert [m.key() for m in received] == [f"key-{i}".encode() for i in range(10)]
    assert [m.value() for m in received] == [f"value-{i}".encode() for i in range(10)]
    assert [m.offset() for m in received] == list(range(10))


@pytest.mark.e2e
def test_broker_restart_on_same_port(tmp_path: Path) -> None:
    with TansuBroker(log_path=tmp_path / "tansu.log") as server:
        bootstrap = server.bootstrap
        server.create_topics(["before-restart"])
        server.restart(kill=True)
        assert server.bootstrap == bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        metadata = admin.list_topics(timeout=10)
        assert metadata.brokers
        # Memory storage: topics do not survive a restart.
        assert "before-restart" not in metadata.topics
        server.create_topics(["after-restart"])
        assert "after-restart" in admin.list_topics(timeout=10).topics
    assert not server.is_running()


@pytest.mark.parametrize("server_fixture", ["pg_server", "mariadb_server"])
def test_database_outage_and_recovery(request: pytest.FixtureRequest, server_fixture: str) -> None:
    server: LocalPostgres | LocalMariaDB = request.getfixturevalue(server_fixture)
    # pool_pre_ping: without it the pool hands out a connection the restart killed.
    engine = sa.create_engine(server.url, pool_pre_ping=True)
    table = f"outage_{uuid.uuid4().hex[:8]}"
    try:
        with engine.begin() as conn:
            conn.execute(sa.text(f"CREATE TABLE {table} (id integer PRIMARY KEY)"))
            conn.execute(sa.text(f"INSERT INTO {table} VALUES (1)"))

        server.stop()
        try:
            with pytest.raises(sa.exc.OperationalError):
                engine.connect().close()
        finally:
            server.start()

        with engine.connect() as conn:
            assert conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 1
    finally:
        engine.dispose()


def test_database_url_is_empty_and_usable(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE t (x integer)"))
            conn.execute(sa.text("INSERT INTO t VALUES (42)"))
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM t")).scalar() == 42
    finally:
        engine.dispose()


def test_mysql_url_is_empty_and_dropped_with_connections_open(
    mariadb_server: LocalMariaDB,
) -> None:
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(mariadb_server.create_database(name))
    try:
        assert sa.inspect(engine).get_table_names() == []
        conn = engine.connect()
        conn.execute(sa.text("CREATE TABLE t (x integer)"))
        conn.execute(sa.text("INSERT INTO t VALUES (42)"))  # transaction left open
        mariadb_server.drop_database(name)  # ends that connection instead of waiting on it
        with pytest.raises(sa.exc.OperationalError):
            conn.execute(sa.text("SELECT 1"))
        with pytest.raises(sa.exc.OperationalError, match="Unknown database"):
            engine.connect()
    finally:
        engine.dispose()


def test_mariadb_refuses_a_database_name_it_would_have_to_quote(
    mariadb_server: LocalMariaDB,
) -> None:
    with pytest.raises(LocalServerError, match="letters, digits and _"):
        mariadb_server.create_database("x`; DROP DATABASE mysql; --")
