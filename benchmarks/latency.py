"""Freshness: how long a message produced to an idle processor takes to be stored.

    python3 -m benchmarks.latency [--messages N] [--gap SECONDS]

Starts a Tansu broker and ``python3 main.py run`` (SQLite in a temp dir), waits for
the group to be joined, then sends one temperature message at a time, every
``--gap`` seconds, and times produce → row visible in the database. Prints p50, p90,
p99 and max, and a last line of JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from confluent_kafka import Producer
from Crypto.PublicKey import RSA
from sqlalchemy import create_engine, text

from sparklem_core import wire
from sparklem_core.dev.servers import TansuBroker
from sparklem_core.fleet.registry import create_server_key, load_server_keys

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--messages", type=int, default=100, help="messages to time (100)")
    parser.add_argument("--gap", type=float, default=0.25, help="seconds between them (0.25)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="sparklem-latency-") as tmp, TansuBroker() as broker:
        root = Path(tmp)
        certs = root / "certificates"
        create_server_key(certs, bits=2048)
        (certs / "agents").mkdir()
        agent_key = RSA.generate(2048)
        (certs / "agents" / "lat-1.pem").write_bytes(agent_key.public_key().export_key())
        ((_, server_key),) = load_server_keys(certs).items()
        url = f"sqlite:///{root}/db.sqlite3"
        config = {
            "kafka": {
                "bootstrap.servers": broker.bootstrap,
                "group.id": "latency",
                "session.timeout.ms": 6000,
            },
            "database": {"url": url},
            "certificates": str(certs),
            "processor": {"stats_interval_s": 60},
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        log = open(root / "processor.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "run", "--config", str(root / "config.yaml")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while "assigned" not in (root / "processor.log").read_text():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("processor did not join its group; see its log")
                time.sleep(0.05)
            engine = create_engine(url)
            producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 0})
            session = wire.SessionKey(server_key.public_key())
            latencies = []
            for seq in range(args.messages):
                data = {"readings": [{"sensor": "cpu", "value": 40.0}]}
                value = wire.seal(
                    {"seq": seq, "ts": int(time.time() * 1000), "data": data},
                    agent="lat-1",
                    plugin="temperature",
                    session=session,
                    agent_key=agent_key,
                ).to_json()
                started = time.monotonic()
                producer.produce("sparklem.temperature", value=value, key="lat-1")
                producer.flush(10)
                while True:
                    with engine.connect() as conn:
                        got = conn.execute(text("SELECT count(*) FROM temperature_readings"))
                        if got.scalar() > seq:
                            break
                    if time.monotonic() - started > 10:
                        raise SystemExit(f"message {seq} not stored within 10 s")
                    time.sleep(0.002)
                latencies.append(time.monotonic() - started)
                time.sleep(args.gap)
        finally:
            proc.terminate()
            proc.wait(15)
            log.close()
    ms = sorted(x * 1000 for x in latencies)
    q = statistics.quantiles(ms, n=100)
    result = {
        "messages": len(ms),
        "p50_ms": round(q[49], 1),
        "p90_ms": round(q[89], 1),
        "p99_ms": round(q[98], 1),
        "max_ms": round(ms[-1], 1),
    }
    print(
        f"produce → stored, idle processor, {len(ms)} messages: p50 {result['p50_ms']} ms, "
        f"p90 {result['p90_ms']} ms, p99 {result['p99_ms']} ms, max {result['max_ms']} ms"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
