"""The dashboard's speed in headless Chromium: the fleet, one agent's hour, one agent's day.

``python3 -m benchmarks.dashboard [--agents A] [--cores C] [--sensors S] [--hours H]
[--interval-s I] [--loads K] [--db sqlite,postgresql]``

For each database: A agents in the fleet inventory, and one of them, ``agent-0``, with H
hours of readings every I seconds (S temperature sensors; pu_workload's cpu, C cores and
one GPU), all through ``Store.commit`` as the processor stores them. ``python3 main.py
serve`` runs as a process of its own; Debian's chromium (Selenium) loads the page K times
and measures, from navigation to the page saying it is done:

* ``fleet``: the fleet table drawn (``window.sparklem.ready``);
* ``hour``: ``#agent=agent-0``, the last hour drawn from raw readings (``/readings``, pages of
  1,000, as many as it takes);
* ``day``: the range set to a day, drawn from 1-minute averages (``/aggregate``).

Prints a line per database, then one JSON line with every figure (p50 and max in ms).
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from benchmarks.databases import NAMES, ROOT, database
from sparklem_core.db.batch import Batch
from sparklem_core.db.store import Store
from sparklem_core.plugin_host import PluginHost
from sparklem_core.processor.metrics_server import LOCALHOST, free_port

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NO_CHROMIUM = "no Chromium: apt-get install -y chromium chromium-driver"
COMMIT_ROWS = 20_000


@dataclass(frozen=True)
class Figures:
    database: str
    agents: int
    agent_rows: int
    fill_s: float
    fleet_p50_ms: float
    fleet_max_ms: float
    hour_points: int
    hour_p50_ms: float
    hour_max_ms: float
    day_points: int
    day_p50_ms: float
    day_max_ms: float


def progress(message: str) -> None:
    print(f"[dashboard bench] {message}", file=sys.stderr, flush=True)


def fill(store: Store, args: argparse.Namespace) -> int:
    """The fleet and agent-0's readings, committed in batches; returns agent-0's row count."""
    now = datetime.now(UTC)
    fleet = Batch()
    for a in range(args.agents):
        fleet.activity(f"agent-{a}", now - timedelta(seconds=a)).stored("temperature", now)
    store.commit(fleet)
    rows: dict[str, list[dict[str, Any]]] = {"temperature_readings": [],
                                             "pu_workload_readings": []}  # fmt: skip
    samples = int(args.hours * 3600 / args.interval_s)
    stored = 0
    for i in range(samples):
        at = now - timedelta(seconds=i * args.interval_s)
        common = {"agent_id": "agent-0", "seq": i, "measured_at": at, "received_at": now}
        for s in range(args.sensors):
            rows["temperature_readings"].append(
                {**common, "sensor": f"sensor-{s}", "celsius": 40.0 + s + i % 7}
            )
        units = [("cpu", 0), *(("core", c) for c in range(args.cores)), ("gpu", 0)]
        for unit, index in units:
            rows["pu_workload_readings"].append({
                **common, "unit": unit, "unit_index": index, "utilization_pct": (i + index) % 100,
                "mem_used_bytes": 2**30 if unit != "core" else None,
                "mem_total_bytes": 2**32 if unit != "core" else None,
            })  # fmt: skip
        if sum(map(len, rows.values())) >= COMMIT_ROWS or i == samples - 1:
            stored += sum(map(len, rows.values()))
            store.commit(Batch(rows=rows))
            rows = {name: [] for name in rows}
            progress(f"stored {stored:,} rows")
    return stored


def serve(url: str, directory: Path, port: int) -> subprocess.Popen[bytes]:
    config = directory / "config.yaml"
    for sub in ("agents", "revoked"):
        (directory / "certs" / sub).mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"database": {"url": url},
                                      "certificates": str(directory / "certs")}))  # fmt: skip
    log = open(directory / "serve.log", "wb")  # noqa: SIM115  # the process holds it
    process = subprocess.Popen(
        [sys.executable, "-m", "sparklem_core.cli", "serve", "--config", str(config),
         "--listen", f"{LOCALHOST}:{port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{LOCALHOST}:{port}/", timeout=2):
                return process
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"serve did not start; see {directory / 'serve.log'}")


def headless_chromium() -> Any:
    """Debian's chromium, headless, through its chromedriver (Selenium), the console log kept
    (``driver.get_log("browser")``); tests/test_dashboard.py drives the same."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        raise RuntimeError(NO_CHROMIUM)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1400,1250", "--lang=en-US"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def until(driver: Any, script: str, started: float, timeout: float = 120) -> float:
    """Milliseconds from ``started`` until ``script`` returns true (polled every 5 ms)."""
    while not driver.execute_script(script):
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"the page did not get there: {script}")
        time.sleep(0.005)
    return (time.perf_counter() - started) * 1000


def points(driver: Any) -> int:
    return driver.execute_script(
        "return Object.values(window.sparklem.charts).reduce((n, c) => n + "
        "Object.values(c.snapshot()).reduce((m, p) => m + p.length, 0), 0)"
    )


def measure(name: str, args: argparse.Namespace) -> Figures:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    with database(name) as (url, directory):
        store = Store(url, "bench")
        host = PluginHost(ROOT / "plugins")
        host.register_tables(store.register_table, store.drop_registrations)
        store.create_schema()
        started = time.perf_counter()
        rows = fill(store, args)
        fill_s = time.perf_counter() - started
        store.dispose()
        port = free_port()
        process = serve(url, directory, port)
        driver = headless_chromium()
        fleet, hour, day = [], [], []
        hour_points = day_points = 0
        try:
            page = f"http://{LOCALHOST}:{port}/"
            for _ in range(args.loads):
                driver.get("about:blank")
                started = time.perf_counter()
                driver.get(page)
                fleet.append(until(driver, "return window.sparklem?.ready", started))
                driver.get("about:blank")
                started = time.perf_counter()
                driver.get(page + "#agent=agent-0")
                hour.append(until(driver, "return window.sparklem?.loaded", started))
                hour_points = points(driver)
                driver.execute_script("window.sparklem.loaded = null")
                started = time.perf_counter()
                Select(driver.find_element(By.ID, "range")).select_by_value("86400")
                day.append(until(driver, "return window.sparklem.loaded", started))
                day_points = points(driver)
        finally:
            driver.quit()
            process.terminate()
            process.wait(30)
    return Figures(
        name, args.agents, rows, round(fill_s, 1),
        *_p50_max(fleet), hour_points, *_p50_max(hour), day_points, *_p50_max(day),
    )  # fmt: skip


def _p50_max(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return round(ordered[len(ordered) // 2], 1), round(ordered[-1], 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.dashboard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--agents", type=int, default=10_000, help="fleet size (default 10000)")
    parser.add_argument("--cores", type=int, default=16, help="agent-0's cores (default 16)")
    parser.add_argument("--sensors", type=int, default=4, help="its sensors (default 4)")
    parser.add_argument("--hours", type=float, default=24, help="hours of readings (default 24)")
    parser.add_argument("--interval-s", type=float, default=10, help="seconds apart (default 10)")
    parser.add_argument("--loads", type=int, default=5, help="page loads measured (default 5)")
    parser.add_argument("--db", default="sqlite", help="sqlite,postgresql (default sqlite)")
    args = parser.parse_args(argv)
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        parser.error(NO_CHROMIUM)
    names = [n.strip() for n in args.db.split(",") if n.strip()]
    for name in names:
        if name not in NAMES:
            parser.error(f"--db: {name!r} is not sqlite or postgresql")
    results = []
    for name in names:
        figures = measure(name, args)
        results.append(asdict(figures))
        print(f"{name}: fleet of {figures.agents:,} p50 {figures.fleet_p50_ms} ms "
              f"(max {figures.fleet_max_ms}); hour, {figures.hour_points:,} points, p50 "
              f"{figures.hour_p50_ms} ms (max {figures.hour_max_ms}); day, "
              f"{figures.day_points:,} points, p50 {figures.day_p50_ms} ms "
              f"(max {figures.day_max_ms}); {figures.agent_rows:,} rows stored in "
              f"{figures.fill_s} s", flush=True)  # fmt: skip
    print(json.dumps({"dashboard": results, "args": vars(args)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
