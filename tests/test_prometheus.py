"""The metrics against a real Prometheus: promtool on the live output and on deploy/,
and a Prometheus server scraping a running processor."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from harness import GOOD, ROOT, start
from test_metrics_endpoint import get, with_http
from waiting import wait_for

from sparklem_core.dev.servers import _end_process, _spawn, free_port

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "sparklem-dashboard.json"


def test_alert_rules_are_valid_and_pass_their_unit_tests(promtool: str) -> None:
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        done = subprocess.run([promtool, *args], cwd=RULES, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    config = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=RULES, capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr


@pytest.fixture
def scraped(fleet, db, processors, tmp_path, broker, database_url) -> Iterator[str]:
    """The base URL of a running processor's endpoint, after it stored 7 messages."""
    port = free_port()
    start(processors, tmp_path, with_http(fleet.config(broker.bootstrap, database_url), port))
    for _ in range(7):
        fleet.send(fleet.envelope("edge-1", "temperature", GOOD), key="edge-1")
    fleet.send(b"{}", key="x")
    fleet.flush()
    db.wait_count("temperature_readings", 7)
    yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_promtool_accepts_the_live_exposition(promtool: str, scraped: str) -> None:
    # Lag appears once the watcher read the high watermarks (within seconds).
    def with_lag() -> bytes | None:
        body = get(f"{scraped}/metrics")[1]
        return body if b"sparklem_consumer_lag_seconds{" in body else None

    body = wait_for(with_lag, 15, message="no lag in /metrics")
    done = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    # What the rules and the dashboard ask for is exposed.
    exposed = set(re.findall(rb"^(sparklem_\w+)", body, re.MULTILINE))
    asked = set(re.findall(rb"sparklem_[a-z_]+", (RULES / "alerts.yml").read_bytes()))
    asked |= set(re.findall(rb"sparklem_[a-z_]+", DASHBOARD.read_bytes()))
    asked = {name for name in asked if not name.startswith(b"sparklem_processor")}
    assert asked - exposed == set()


@pytest.fixture
def prometheus(tmp_path: Path, promtool: str, scraped: str) -> Iterator[str]:
    """A Prometheus server scraping ``scraped`` every second; its base URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = urllib.parse.urlsplit(scraped).netloc
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {"job_name": "sparklem", "static_configs": [{"targets": [target]}]}
                ],
            }
        )
    )
    command = [
        str(Path(promtool).with_name("prometheus")),
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",  # thrown away with tmp_path
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    proc = _spawn(command, tmp_path / "prometheus.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        _end_process(proc, kill=False, timeout=15)


def query(prometheus: str, promql: str) -> list[dict]:
    try:
        status, body = get(
            f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        )
    except OSError:
        return []  # not listening yet
    if status != 200:
        return []
    return json.loads(body)["data"]["result"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_real_prometheus_counts_what_the_database_holds(prometheus: str, db) -> None:
    stored = db.count("temperature_readings")
    result = wait_for(
        lambda: query(prometheus, 'sum(sparklem_messages_stored_total{job="sparklem"})'),
        60,
        message="Prometheus never scraped the processor",
    )
    assert float(result[0]["value"][1]) == stored == 7
    rejected = query(prometheus, "sum by (reason) (sparklem_records_rejected_total) > 0")
    assert {r["metric"]["reason"]: float(r["value"][1]) for r in rejected} == db.reasons()
