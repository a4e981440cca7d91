"""The dashboard in a real headless Chromium (Debian's ``chromium`` driven by Selenium).

The readings are stored through the real pipeline and Store (so the inventory, the latest
and the feed tables are filled as the processor fills them), ``main.py serve`` runs as a
subprocess, and the test reads the data behind each chart (``window.sparklem.charts``),
not only that a canvas exists. ``SPARKLEM_SCREENSHOTS=DIR`` also saves the screenshots in
DIR (``SPARKLEM_SCREENSHOTS=docs`` refreshes the README's ``docs/dashboard.png``).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from api_env import HUMIDITY, ROOMS, commit, humidity_rows, humidity_store
from harness import ROOT
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pipeline_env import PU_TOPIC, Env, Keys, now_ms, run
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.select import Select
from sparklem_plugins.temperature.server import MAX_SENSOR_CHARS
from waiting import wait_for

from benchmarks.dashboard import headless_chromium
from sparklem_core import check_text
from sparklem_core.processor.metrics_server import LOCALHOST, free_port

pytestmark = pytest.mark.e2e  # a browser and a server process

MINUTE_MS = 60_000
GIB = 2**30
TEMPERATURE_CHART = "temperature/temperature_readings/celsius"
TEMPERATURE_CSS = f'[data-chart="{TEMPERATURE_CHART}"]'
PU_VALUES = ("utilization_pct", "mem_used_bytes", "mem_total_bytes", "load_1m", "load_5m",
             "load_15m", "temperature_c")  # fmt: skip
TOKEN = "dashboard-test-token-0123456789"

#: The data behind every chart, by chart and series label: [[time in s, value], ...].
CHARTS_JS = """
return Object.fromEntries(Object.entries(window.sparklem.charts)
    .map(([name, chart]) => [name, chart.snapshot()]));
"""

#: Each chart's caption, and if drawn its y scale and y tick labels.
AXES_JS = """
return Object.fromEntries(Object.entries(window.sparklem.charts).map(([name, chart]) => [name, {
  caption: chart.el.closest('figure').querySelector('figcaption').textContent,
  y: chart.plot && [chart.plot.scales.y.min, chart.plot.scales.y.max],
  ticks: chart.plot && chart.plot.axes[1]._values,
}]));
"""

#: The page is done: the fleet drawn, and the charts of edge-1.
DRAWN_JS = "return window.sparklem?.ready && window.sparklem.loaded === 'edge-1'"
#: Each drawn chart's tick labels that would overlap: a label of several lines, an x label
#: wider than the room between its ticks, a y label wider than its axis.
CROWDED_TICKS_JS = """
const ctx = document.createElement('canvas').getContext('2d');
const crowded = [];
for (const [name, chart] of Object.entries(window.sparklem.charts)) {
  const u = chart.plot;
  if (!u) continue;
  const [x, y] = u.axes;
  ctx.font = x.font[0].replace(/^[\\d.]+px/, (px) => `${parseFloat(px) / devicePixelRatio}px`);
  const widths = x._values.map((v) => ctx.measureText(String(v)).width);
  const at = x._splits.map((t) => u.valToPos(t, 'x'));
  for (const [i, label] of x._values.entries()) {
    if (String(label).includes('\\n')) crowded.push([name, 'x', label]);
    const room = i > 0 ? at[i] - at[i - 1] : Infinity;
    if ((widths[i - 1] + widths[i]) / 2 > room) crowded.push([name, 'x', label]);
  }
  for (const label of y._values) {
    if (String(label).includes('\\n') || ctx.measureText(String(label)).width > y._size - 10) {
      crowded.push([name, 'y', label]);
    }
  }
}
return crowded;
"""
#: The fleet table's rows' classes, read at once (the table is redrawn every 10 s).
ROW_CLASSES_JS = "return [...document.querySelectorAll('#fleet tbody tr')].map(r => r.className)"
#: Each fleet row as the reader sees it: rendered text, CSS-generated content included.
ROW_TEXT_JS = """return [...document.querySelectorAll('#fleet tbody tr')].map(r =>
  [...r.cells].map(c => c.textContent + getComputedStyle(c, '::after').content
    .replace(/^(none|normal)$/, '').replace(/^"(.*)"$/, '$1')).join(' '))"""


@dataclass
class Seeded:
    """What the test stored, as the charts of agent edge-1 must show it."""

    base_ms: int
    charts: dict[str, dict[str, list[list[float]]]]
    reason: str


@dataclass
class Served:
    env: Env
    url: str
    seeded: Seeded
    token: bool  # whether the server asks for one


@pytest.fixture(scope="module")
def chromium() -> Iterator[WebDriver]:
    try:
        driver = headless_chromium()
    except RuntimeError as exc:
        pytest.fail(f"{exc} (.ci/run does)")
    yield driver
    driver.quit()


@pytest.fixture
def browser(chromium: WebDriver, served: Served) -> Iterator[WebDriver]:
    """The browser with an empty log, left on a blank page before the server stops (a stream
    cut by the server's exit is logged as an error, and would be the next test's)."""
    chromium.get_log("browser")
    yield chromium
    chromium.get("about:blank")


def seed(env: Env) -> Seeded:
    """Five minutes of edge-1 (two sensors, cpu, two cores, memory, one GPU, and two rooms
    of the third-party plugin humidity, which serve never loads), one reading of edge-2 and
    edge-3 each, and one rejected reading; every batch through Store.commit."""
    env.enroll("edge-3")
    pipeline = env.pipeline()
    base = now_ms() - 10 * MINUTE_MS  # whole milliseconds: the stored times are exact
    pu = {value: f"pu_workload/pu_workload_readings/{value}" for value in PU_VALUES}
    charts: dict[str, dict[str, list[list[float]]]] = {
        TEMPERATURE_CHART: {"cpu_thermal": [], "gpu": []},
        pu["utilization_pct"]: {"cpu 0": [], "core 0": [], "core 1": [], "gpu 0": []},
        pu["mem_used_bytes"]: {"cpu 0": [], "gpu 0": []},
        pu["mem_total_bytes"]: {"cpu 0": [], "gpu 0": []},
        **{pu[v]: {} for v in ("load_1m", "load_5m", "load_15m", "temperature_c")},
        f"humidity/{HUMIDITY}/relative_pct": {room: [] for room in ROOMS},
        f"humidity/{HUMIDITY}/dew_point_c": {"lab": []},
    }
    records = []
    for k in range(5):
        ts = base + k * MINUTE_MS
        t = ts / 1000
        temps = {"cpu_thermal": 41.5 + k, "gpu": 60.25 + k}
        readings = [{"sensor": s, "value": v, "ts": ts} for s, v in temps.items()]
        records.append(env.record(env.envelope({"readings": readings}, seq=k + 1, ts=ts)))
        for sensor, value in temps.items():
            charts[TEMPERATURE_CHART][sensor].append([t, value])
        workload = {
            "cpu": {"percent": 12.5 + k, "per_core": [10.0 + k, 20.0 + k]},
            "memory": {"used_bytes": (4 + k) * GIB, "total_bytes": 16 * GIB},
            "gpus": [{"index": 0, "name": "A100", "util_percent": 55.0 + k,
                      "mem_used_bytes": GIB, "mem_total_bytes": 4 * GIB}],
        }  # fmt: skip
        envelope = env.envelope(workload, seq=k + 1, ts=ts, plugin="pu_workload")
        records.append(env.record(envelope, topic=PU_TOPIC))
        load = charts[pu["utilization_pct"]]
        for label, value in (("cpu 0", 12.5), ("core 0", 10.0), ("core 1", 20.0), ("gpu 0", 55.0)):
            load[label].append([t, value + k])
        charts[pu["mem_used_bytes"]]["cpu 0"].append([t, (4 + k) * GIB])
        charts[pu["mem_used_bytes"]]["gpu 0"].append([t, GIB])
        charts[pu["mem_total_bytes"]]["cpu 0"].append([t, 16 * GIB])
        charts[pu["mem_total_bytes"]]["gpu 0"].append([t, 4 * GIB])
    for seq, agent in enumerate(("edge-2", "edge-3"), start=1):
        data = {"readings": [{"sensor": "board", "value": 33.0}]}
        records.append(env.record(env.envelope(data, seq=seq, agent=agent)))
    below_zero = {"readings": [{"sensor": "cpu_thermal", "value": -300.0}]}
    records.append(env.record(env.envelope(below_zero, seq=3, agent="edge-2")))
    stats = run(pipeline, records)
    (reason,) = stats.rejected
    seconds = [(base + k * MINUTE_MS) / 1000 for k in range(5)]
    times = [datetime.fromtimestamp(t, UTC) for t in seconds]
    humid = humidity_store(env.url)
    try:
        commit(humid, HUMIDITY, humidity_rows("edge-1", times), seen=datetime.now(UTC))
    finally:
        humid.dispose()
    for row in humidity_rows("edge-1", times):
        t = seconds[times.index(row["measured_at"])]
        charts[f"humidity/{HUMIDITY}/relative_pct"][row["room"]].append([t, row["relative_pct"]])
        if row["dew_point_c"] is not None:
            charts[f"humidity/{HUMIDITY}/dew_point_c"]["lab"].append([t, row["dew_point_c"]])
    return Seeded(base, charts, reason[0] if isinstance(reason, tuple) else reason)


@contextlib.contextmanager
def serving(tmp_path: Path, env: Env, sections: dict[str, Any]) -> Iterator[str]:
    """``main.py serve`` on a free port over ``env``'s database, with these config sections;
    yields the dashboard's URL."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "database": {"url": env.url},
        "certificates": str(env.certs),
        "plugins_dir": str(tmp_path / "plugins"),
        **sections,
    }))  # fmt: skip
    port = free_port()
    log = tmp_path / "serve.log"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPARKLEM_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "main.py"), "serve", "--config", str(config),
             "--listen", f"{LOCALHOST}:{port}"],
            cwd=tmp_path, env=clean, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://{LOCALHOST}:{port}/"
    try:
        wait_for(lambda: proc.poll() is not None or answers(url),
                 timeout=30, message="serve did not answer")  # fmt: skip
        assert proc.poll() is None, log.read_text()
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def served(request: pytest.FixtureRequest, tmp_path: Path, keys: Keys) -> Iterator[Served]:
    """The seeded database served open on loopback; param "token": with a read token,
    "silent": agents are silent a second after their last message."""
    token = getattr(request, "param", None) == "token"
    silent = getattr(request, "param", None) == "silent"
    sections = {"serve": {"read_tokens": [TOKEN]} if token else {}}
    if silent:
        sections["fleet"] = {"silent_after_s": 1}
    env = Env(tmp_path, keys, f"sqlite:///{tmp_path / 'db.sqlite3'}")
    try:
        seeded = seed(env)
        with serving(tmp_path, env, sections) as url:
            yield Served(env, url, seeded, token)
    finally:
        env.close()


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def api(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> None:
    """Into the test's tmp dir, and into $SPARKLEM_SCREENSHOTS when set."""
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    if os.environ.get("SPARKLEM_SCREENSHOTS"):
        target = Path(os.environ["SPARKLEM_SCREENSHOTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / name)


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def charts(driver: WebDriver) -> dict[str, dict[str, list[list[float]]]]:
    return driver.execute_script(CHARTS_JS)


def sign_in(browser: WebDriver) -> None:
    """Through the token form: a wrong token is refused, the right one opens the session."""
    wait_for(lambda: browser.find_element(By.ID, "login").is_displayed(),
             timeout=30, message="no token form on 401")  # fmt: skip
    field = browser.find_element(By.ID, "token")
    field.send_keys("not-the-token-0123456789")
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(lambda: "not accepted" in browser.find_element(By.ID, "login-error").text,
             timeout=30, message="a wrong token was not refused")  # fmt: skip
    field.clear()
    field.send_keys(TOKEN)
    browser.find_element(By.CSS_SELECTOR, "#login button").click()
    wait_for(lambda: not browser.find_element(By.ID, "login").is_displayed(),
             timeout=30, message="the token was not accepted")  # fmt: skip
    cookies = browser.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]  # path /api/
    (cookie,) = [c for c in cookies if c["name"] == "sparklem_session"]
    assert cookie["httpOnly"] is True
    assert "sparklem_session" not in browser.execute_script("return document.cookie")
    # The refused requests are the only errors so far: the browser logs each 401 it gets.
    refused = console_errors(browser)
    assert refused and all("401" in entry["message"] for entry in refused), refused


@pytest.mark.parametrize("served", ["open", "token"], indirect=True)
def test_the_dashboard_shows_the_fleet_and_an_agents_charts_and_follows_the_stream(
    served: Served, browser: WebDriver, tmp_path: Path
) -> None:
    browser.get(served.url + "#agent=edge-1")
    if served.token:
        sign_in(browser)  # and the stream below works on the session cookie alone
    wait_for(lambda: browser.execute_script(DRAWN_JS), timeout=30,
             message="the fleet and the charts of edge-1 were not drawn")  # fmt: skip

    rows = browser.find_elements(By.CSS_SELECTOR, "#fleet tbody tr")
    listed = {row.get_attribute("data-agent"): row.text for row in rows}
    assert {"edge-1", "edge-2", "edge-3"} <= set(listed), listed
    assert "ago" in listed["edge-1"]  # last seen, relative
    reasons = {
        row.get_attribute("data-reason"): row.text
        for row in browser.find_elements(By.CSS_SELECTOR, "#rejections tbody tr")
    }
    assert reasons[served.seeded.reason].endswith("1"), reasons

    assert charts(browser) == served.seeded.charts
    assert browser.execute_script(CROWDED_TICKS_JS) == []
    check_units(browser.execute_script(AXES_JS))
    if not served.token:
        screenshot(browser, tmp_path, "dashboard.png")

    # A reading stored now reaches the open page through the stream, without a reload.
    wait_for(lambda: browser.execute_script("return window.sparklem.stream.state") == "live",
             timeout=30, message="the stream did not open")  # fmt: skip
    browser.execute_script("window.notReloaded = true")
    ts = now_ms()
    live = {"readings": [{"sensor": "cpu_thermal", "value": 77.25, "ts": ts}]}
    run(served.env.pipeline(), [served.env.record(served.env.envelope(live, seq=6, ts=ts))])
    wait_for(
        lambda: [ts / 1000, 77.25] in charts(browser)[TEMPERATURE_CHART]["cpu_thermal"],
        timeout=30,
        message="the reading stored during the test did not reach the chart",
    )
    assert browser.execute_script("return window.sparklem.stream.events") >= 1
    drawn = str(sum(len(points) for points in served.seeded.charts[TEMPERATURE_CHART].values()) + 1)
    chart = browser.find_element(By.CSS_SELECTOR, TEMPERATURE_CSS)
    wait_for(lambda: chart.get_attribute("data-points") == drawn,
             timeout=30, message="the chart was not drawn again")  # fmt: skip
    assert browser.execute_script("return window.notReloaded") is True
    screenshot(browser, tmp_path, f"dashboard-live-{'token' if served.token else 'open'}.png")

    # A day is drawn from /aggregate: each series' average per minute, at the minute's start.
    browser.execute_script("window.sparklem.loaded = null")
    Select(browser.find_element(By.ID, "range")).select_by_value("86400")
    wait_for(lambda: browser.execute_script("return window.sparklem.loaded") == "edge-1",
             timeout=30, message="the day's averages did not load")  # fmt: skip
    expected = copy.deepcopy(served.seeded.charts)
    expected[TEMPERATURE_CHART]["cpu_thermal"].append([ts / 1000, 77.25])
    assert charts(browser) == {
        name: {label: [[t // 60 * 60, v] for t, v in points] for label, points in lines.items()}
        for name, lines in expected.items()
    }
    assert browser.execute_script(CROWDED_TICKS_JS) == []
    assert console_errors(browser) == []


def check_units(axes: dict[str, dict[str, Any]]) -> None:
    """Each chart is drawn by its column's declared unit (register(..., units=)), the
    third-party humidity's too: "%" from 0 to 100, "B" in KiB..., others in the caption."""
    humidity, pu = f"humidity/{HUMIDITY}", "pu_workload/pu_workload_readings"
    assert axes[f"{humidity}/relative_pct"]["caption"] == "humidity: relative_pct (%)"
    assert axes[f"{humidity}/relative_pct"]["y"] == [0, 100]
    assert axes[f"{humidity}/dew_point_c"]["caption"] == "humidity: dew_point_c (°C)"
    assert axes[f"{humidity}/dew_point_c"]["y"] != [0, 100]
    assert axes[TEMPERATURE_CHART]["caption"] == "temperature: celsius (°C)"
    assert axes[f"{pu}/utilization_pct"]["y"] == [0, 100]
    assert axes[f"{pu}/load_1m"]["caption"] == "pu_workload: load_1m"  # declared unitless
    for value in ("mem_used_bytes", "mem_total_bytes"):
        assert axes[f"{pu}/{value}"]["caption"] == f"pu_workload: {value}"  # in the ticks
        ticks = [t for t in axes[f"{pu}/{value}"]["ticks"] if t]
        assert ticks and all(t.endswith(" GiB") for t in ticks), ticks


#: Set before the page's own scripts: its /readings requests wait for releaseReadings().
HOLD_READINGS_JS = """
(() => {
  const fetch = window.fetch.bind(window), held = [];
  let released = false;
  window.heldReadings = () => held.length;
  window.releaseReadings = () => { released = true; held.splice(0).forEach((go) => go()); };
  window.fetch = (url, init) => released || !String(url).includes("/readings/")
    ? fetch(url, init)
    : new Promise((resolve) => held.push(() => resolve(fetch(url, init))));
})();
"""
#: Each chart's state (loading, empty or data) and, unless it has data, its text.
CHART_STATES_JS = """return Object.fromEntries([...document.querySelectorAll('[data-chart]')]
    .map(e => [e.dataset.chart, e.dataset.state === 'data' ? 'data' : e.textContent]))"""


def test_charts_say_loading_until_their_data_is_in(served: Served, browser: WebDriver) -> None:
    """While an agent's readings are on their way every chart says so; then it shows them,
    or that there are none (not "no data" while still loading)."""
    hold = browser.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": HOLD_READINGS_JS}
    )
    try:
        browser.get(served.url + "#agent=edge-1")
        tables = 3  # temperature's, pu_workload's and humidity's: a history request each
        wait_for(lambda: browser.execute_script("return window.heldReadings?.()") == tables,
                 timeout=30, message="the page did not ask for the readings")  # fmt: skip
        assert browser.execute_script(CHART_STATES_JS) == dict.fromkeys(
            served.seeded.charts, "loading…"
        )
        browser.execute_script("window.releaseReadings()")
        wait_for(lambda: browser.execute_script(DRAWN_JS), timeout=30,
                 message="the fleet and the charts of edge-1 were not drawn")  # fmt: skip
        assert browser.execute_script(CHART_STATES_JS) == {
            name: "data" if lines else "no data in this range"
            for name, lines in served.seeded.charts.items()
        }
        assert console_errors(browser) == []
    finally:
        browser.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": hold["identifier"]}
        )


@pytest.mark.parametrize("served", ["silent"], indirect=True)
def test_text_from_the_api_is_shown_as_text_and_silent_agents_are_marked(
    served: Served, browser: WebDriver
) -> None:
    hostile = "<img src=x onerror=window.pwned=1>"
    data = {"readings": [{"sensor": hostile, "value": 30.0}]}
    run(served.env.pipeline(), [served.env.record(served.env.envelope(data, seq=9))])
    wait_for(lambda: len(api(served.url + "api/v1/agents?silent=true")["agents"]) == 3,
             timeout=30, message="the agents did not go silent")  # fmt: skip
    browser.get(served.url + "#agent=edge-1")
    wait_for(lambda: browser.execute_script(DRAWN_JS), timeout=30,
             message="the fleet and the charts of edge-1 were not drawn")  # fmt: skip
    assert hostile in charts(browser)[TEMPERATURE_CHART]
    assert hostile in browser.find_element(By.CSS_SELECTOR, TEMPERATURE_CSS).text
    assert browser.execute_script("return window.pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "img")
    assert set(browser.execute_script(ROW_CLASSES_JS)) == {"silent", "silent selected"}
    for row in browser.execute_script(ROW_TEXT_JS):  # the state said once, by its cell
        assert row.split().count("silent") == 1, row
    assert "3 agents, 3 silent" in browser.find_element(By.ID, "fleet-summary").text
    assert console_errors(browser) == [], json.dumps(console_errors(browser))


#: Markup an agent could name a sensor; hypothesis adds any storable text.
MARKUP = (
    "<script>window.pwned=1</script>",
    "<svg onload=window.pwned=1>",
    '"><iframe src=javascript:window.pwned=1>',
    "&lt;b&gt;&amp;",
    "\u202eevil",
)
#: The temperature chart's legend labels, as the page shows them.
LEGEND_JS = f"""return [...document.querySelectorAll('{TEMPERATURE_CSS} .u-legend .u-label')]
    .map(e => e.textContent)"""
#: Elements the page never makes: any of them would come from markup in API text.
FOREIGN_JS = "return document.querySelectorAll('img, iframe, svg, object, embed').length"


def test_sensor_names_from_the_stream_are_shown_as_text(served: Served, browser: WebDriver) -> None:
    """Any storable sensor name an agent sends reaches the open page's chart and legend as
    that exact text, and no markup in it becomes an element or runs."""
    browser.get(served.url + "#agent=edge-1")
    wait_for(lambda: browser.execute_script(DRAWN_JS), timeout=30,
             message="the fleet and the charts of edge-1 were not drawn")  # fmt: skip
    wait_for(lambda: browser.execute_script("return window.sparklem.stream.state") == "live",
             timeout=30, message="the stream did not open")  # fmt: skip
    pipeline = served.env.pipeline()
    seqs = itertools.count(10)

    @settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(name=st.sampled_from(MARKUP) | st.text(min_size=1, max_size=40))
    def shown_as_text(name: str) -> None:
        try:
            check_text(name, "sensor", MAX_SENSOR_CHARS)
        except ValueError:
            assume(False)  # the plugin rejects it: never stored, never streamed
        ts = now_ms()
        data = {"readings": [{"sensor": name, "value": 30.0, "ts": ts}]}
        run(pipeline, [served.env.record(served.env.envelope(data, seq=next(seqs), ts=ts))])
        wait_for(lambda: [ts / 1000, 30.0] in charts(browser)[TEMPERATURE_CHART].get(name, []),
                 timeout=30, message=f"{name!r} did not reach the chart")  # fmt: skip
        wait_for(lambda: name in browser.execute_script(LEGEND_JS),
                 timeout=30, message=f"{name!r} is not in the legend")  # fmt: skip
        assert browser.execute_script(FOREIGN_JS) == 0
        assert browser.execute_script("return window.pwned") is None

    shown_as_text()
    assert console_errors(browser) == []
