"""The read API's world for tests: a config, seeded tables, the app, a real server.

Rows are written through ``Store.commit`` (the processor's own batch transaction), so
whatever the processor keeps beside them (latest values, the feed) is kept here too.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from sparklem_core.db.batch import Batch, Rejection
from sparklem_core.db.store import Store, open_store
from sparklem_core.settings.config import Config, load_config

READ_TOKEN = "read-token-0123456789abcdef"
ADMIN_TOKEN = "admin-token-0123456789abcdef"
T0 = datetime(2026, 11, 28, 23, 58, 30, tzinfo=UTC)  # buckets of every width cross here
AGENTS = ("a-1", "a-2", "a-3")
SENSORS = ("cpu_thermal", "board")


def make_config(tmp_path: Path, database_url: str, **serve: Any) -> Config:
    """A config on ``database_url`` with an empty certificates directory."""
    certificates = tmp_path / "certs"
    for sub in ("agents", "revoked"):
        (certificates / sub).mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    doc = {"database": {"url": database_url}, "certificates": str(certificates)}
    if serve:
        doc["serve"] = serve
    path.write_text(yaml.safe_dump(doc))
    return load_config(path, env={})


def open_schema(config: Config) -> Store:
    """A Store with every table declared and created."""
    _plugins, store = open_store(config)
    store.create_schema()
    return store


HUMIDITY = "humidity_readings"
ROOMS = ("lab", "store room")
HUMIDITY_UNITS = {"relative_pct": "%", "dew_point_c": "°C"}


def humidity_store(url: str) -> Store:
    """The Store of a processor that has a third-party plugin, ``humidity``, installed
    (which ``serve`` never loads): its table created and recorded, as ``init`` does."""
    from sqlalchemy import BigInteger, Column, DateTime, Float, Integer, String

    store = Store(url, "humidity")
    store.register_table(
        "humidity",
        HUMIDITY,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
        Column("agent_id", String(64), nullable=False),
        Column("room", String(32), nullable=False),
        Column("relative_pct", Float, nullable=False),
        Column("dew_point_c", Float),
        Column("measured_at", DateTime(timezone=True), nullable=False),
        time="measured_at",
        series=("agent_id", "room"),
        values=("relative_pct", "dew_point_c"),
        units=HUMIDITY_UNITS,
    )
    store.create_schema()
    return store


def humidity_rows(agent: str, times: list[datetime]) -> list[dict[str, Any]]:
    """A reading of each room at each of ``times``: 40 % and up in the lab, 60 % and up
    in the store room, by 1 % a reading; dew points only in the lab."""
    return [
        {"agent_id": agent, "room": room, "relative_pct": 40.0 + 20 * r + k,
         "dew_point_c": 10.5 + k if r == 0 else None, "measured_at": at}
        for k, at in enumerate(times)
        for r, room in enumerate(ROOMS)
    ]  # fmt: skip


def temperature_rows(count: int, seed: int = 1) -> list[dict[str, Any]]:
    """``count`` readings over three days around T0, some on bucket edges, 1/100 °C steps."""
    rng = random.Random(seed)
    rows = []
    for n in range(count):
        if n % 7 == 0:  # exactly on a minute edge, or a microsecond before one
            at = T0 + timedelta(minutes=rng.randint(-3000, 3000))
            at -= timedelta(microseconds=n % 2)
        else:
            at = T0 + timedelta(seconds=rng.uniform(-3 * 86400, 86400))
        rows.append({
            "agent_id": rng.choice(AGENTS), "seq": n, "sensor": rng.choice(SENSORS),
            "celsius": rng.randint(-4000, 9000) / 100, "measured_at": at,
            "received_at": T0,
        })  # fmt: skip
    return rows


def commit(
    store: Store, table: str, rows: list[dict[str, Any]], seen: datetime = T0, **batch: Any
) -> None:
    """One batch through the processor's transaction, agents seen (at ``seen``) as they are
    stored."""
    done = Batch(rows={table: rows}, **batch)
    for row in rows:
        done.activity(row["agent_id"], seen).stored(table.split("_readings")[0], seen)
    store.commit(done)


def rejection(n: int, reason: str, agent: str | None = "a-1") -> Rejection:
    return Rejection(
        "sparklem.temperature", 0, n, agent, "temperature", reason, f"detail {n}", "{}",
        T0 + timedelta(seconds=n),
    )  # fmt: skip


@dataclass
class Running:
    """A real uvicorn serving ``app`` on 127.0.0.1."""

    url: str
    server: Any


@contextmanager
def running(app: Any) -> Iterator[Running]:
    """Serve ``app`` in a thread on a free port until the block ends."""
    import uvicorn
    from waiting import wait_for

    from sparklem_core.http.server import bind

    sock = bind("127.0.0.1:0", tokens=False)
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started, timeout=20, message="uvicorn did not start")
        yield Running(f"http://127.0.0.1:{sock.getsockname()[1]}", server)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
