// The Sparkle-M dashboard: reads only /api/v1 (agents, rejections, readings, stream).
// Every string from the API is untrusted: it reaches the page through textContent only.
import uPlot from "./vendor/uplot/uPlot.esm.js";

const API = "api/v1"; // relative: the page works under any prefix the server sits behind
const FLEET_REFRESH_MS = 10_000;
const FLEET_ROWS = 500; // a table of 10,000 rows takes seconds to lay out, and nobody reads it
const CLOCK_TICK_MS = 5_000;
const HISTORY_PAGE = 1000;
const HISTORY_MAX_PAGES = 50;
const MAX_POINTS_PER_SERIES = 20_000;
const RENDER_DELAY_MS = 200;
const STREAM_WAIT_MS = 2000;
const RAW_UP_TO_S = 3600; // longer ranges are drawn from /aggregate: one average a minute
// The plugins the charts draw: the series keys, and the values read with the series filter
// each needs (memory is on the cpu and gpu rows only).
const PLUGINS = {
  temperature: { series: ["sensor"], values: { celsius: {} } },
  pu_workload: {
    series: ["unit", "unit_index"],
    values: {
      utilization_pct: {},
      mem_used_bytes: { unit: ["cpu", "gpu"] },
      mem_total_bytes: { unit: ["cpu", "gpu"] },
    },
  },
};
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
  "#4b5563", "#65a30d", "#9333ea"];

const $ = (id) => document.getElementById(id);

class AuthNeeded extends Error {}

/** One chart: points per series label, drawn by uPlot; snapshot() is the data behind it. */
class Chart {
  constructor(name, el) {
    this.name = name;
    this.el = el;
    this.series = new Map(); // label -> Map(time in s -> value)
    this.labels = [];
    this.data = [[]];
    this.plot = null;
    this.timer = null;
  }

  add(label, t, value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    let points = this.series.get(label);
    if (!points) this.series.set(label, (points = new Map()));
    points.set(t, value);
    if (points.size > MAX_POINTS_PER_SERIES) points.delete(points.keys().next().value);
    this.schedule();
  }

  clear() {
    this.series.clear();
    this.render();
  }

  /** Drop points older than ``since`` (seconds): a live chart shows a moving window. */
  trim(since) {
    for (const points of this.series.values()) {
      for (const t of points.keys()) if (t < since) points.delete(t);
    }
  }

  schedule() {
    if (this.timer === null) this.timer = setTimeout(() => this.render(), RENDER_DELAY_MS);
  }

  /** {label: [[time in s, value], ...]} sorted by time: what the chart shows. */
  snapshot() {
    const out = {};
    for (const label of this.labels) {
      out[label] = [...this.series.get(label).entries()].sort((a, b) => a[0] - b[0]);
    }
    return out;
  }

  render() {
    clearTimeout(this.timer);
    this.timer = null;
    const labels = [...this.series.keys()].sort(naturalOrder);
    const times = new Set();
    for (const points of this.series.values()) for (const t of points.keys()) times.add(t);
    const xs = [...times].sort((a, b) => a - b);
    this.data = [xs, ...labels.map((l) => xs.map((t) => this.series.get(l).get(t) ?? null))];
    this.el.dataset.points = String(labels.reduce((n, l) => n + this.series.get(l).size, 0));
    if (xs.length === 0) {
      this.destroy();
      this.labels = labels;
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "no data in this range";
      this.el.replaceChildren(empty);
      return;
    }
    if (this.plot && sameList(labels, this.labels)) {
      this.plot.setData(this.data);
      return;
    }
    this.destroy();
    this.labels = labels;
    this.el.replaceChildren();
    this.plot = new uPlot(
      {
        width: Math.max(this.el.clientWidth, 300),
        height: 220,
        scales: {
          x: { time: true },
          y: this.el.hasAttribute("data-percent") ? { range: [0, 100] } : {},
        },
        series: [
          {},
          ...labels.map((label, i) => ({
            label,
            stroke: COLORS[i % COLORS.length],
            width: 1.5,
            spanGaps: true,
            points: { show: xs.length < 60 },
          })),
        ],
      },
      this.data,
      this.el,
    );
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: Math.max(this.el.clientWidth, 300), height: 220 });
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

const charts = {};
for (const el of document.querySelectorAll("[data-chart]")) {
  charts[el.dataset.chart] = new Chart(el.dataset.chart, el);
}

// For tests and the curious: the data behind each chart and the page's state.
window.sparklem = {
  charts,
  agents: [],
  rejections: {},
  selected: null,
  loaded: null, // the agent whose history is on the charts
  stream: { state: "off", events: 0 },
  ready: false, // the fleet was loaded once
};

const state = { selected: null, generation: 0, source: null, fleetTimer: null };

/* ---------- API ---------- */

async function api(path, init = {}) {
  const response = await fetch(`${API}/${path}`, {
    credentials: "same-origin",
    headers: { Accept: "application/json", ...(init.headers || {}) },
    ...init,
  });
  if (response.status === 401) {
    showLogin();
    throw new AuthNeeded();
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok) {
    const detail = body && typeof body.error === "string" ? body.error : response.statusText;
    throw new Error(`${path.split("?")[0]}: ${response.status} ${detail}`);
  }
  return body;
}

function showError(error) {
  if (error instanceof AuthNeeded) return;
  const el = $("error");
  el.textContent = String(error.message || error);
  el.hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

/* ---------- sign in ---------- */

function showLogin() {
  $("login").hidden = false;
  $("main").hidden = true;
  closeStream();
  clearTimeout(state.fleetTimer);
  state.fleetTimer = null;
  $("token").focus();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  const response = await fetch(`${API}/session`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ token: $("token").value }),
  });
  if (!response.ok) {
    $("login-error").textContent = response.status === 401
      ? "That token is not accepted."
      : `Sign-in failed (${response.status}).`;
    return;
  }
  $("token").value = "";
  $("login").hidden = true;
  $("main").hidden = false;
  start();
});

/* ---------- fleet ---------- */

async function loadRejections() {
  const body = await api("rejections?limit=1");
  window.sparklem.rejections = isObject(body) && isObject(body.counts) ? body.counts : {};
  renderRejections();
}

async function loadAgents() {
  const body = await api("agents");
  window.sparklem.agents = isObject(body) && Array.isArray(body.agents) ? body.agents : [];
  renderFleet();
  window.sparklem.ready = true;
}

/** The fleet and the rejections again, FLEET_REFRESH_MS after the last refresh ended (a
 * large fleet's answer may take longer than that: refreshes never pile up). */
function scheduleRefresh() {
  clearTimeout(state.fleetTimer);
  state.fleetTimer = setTimeout(async () => {
    try {
      await Promise.all([loadAgents(), loadRejections()]);
      clearError();
    } catch (error) {
      showError(error);
      if (error instanceof AuthNeeded) return; // signing in starts again
    }
    scheduleRefresh();
  }, FLEET_REFRESH_MS);
}

/** Silent agents first, then by id; at most FLEET_ROWS rows (the filter finds the rest). */
function renderFleet() {
  const agents = window.sparklem.agents;
  const wanted = $("fleet-filter").value.trim().toLowerCase();
  const shown = agents
    .filter((a) => !wanted || `${a.agent_id} ${a.state}`.toLowerCase().includes(wanted))
    .sort((a, b) => Number(Boolean(b.silent)) - Number(Boolean(a.silent)) ||
      naturalOrder(String(a.agent_id), String(b.agent_id)));
  const rows = shown.slice(0, FLEET_ROWS).map((agent) => {
    const id = String(agent.agent_id);
    const tr = document.createElement("tr");
    tr.dataset.agent = id;
    tr.classList.toggle("silent", Boolean(agent.silent));
    tr.classList.toggle("selected", id === state.selected);
    // The state word is the API's (fleet_state.py's one vocabulary), shown once; a
    // refused key's reason is in its tooltip.
    const stateName = String(agent.state ?? "");
    const lastRejection = agent.last_rejection_reason
      ? `${agent.last_rejection_reason} ${relative(agent.last_rejection_at)}`
      : "";
    const cells = [
      [id],
      [stateName, `state-${stateName.replace(/[^a-z_]/g, "")}`, null, agent.problem],
      [relative(agent.last_seen), "ago", agent.last_seen],
      [count(agent.messages), "num"],
      [count(agent.rejections), "num"],
      [lastRejection],
    ];
    for (const [text, cls, time, why] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      if (time) {
        td.dataset.time = String(time);
        td.title = String(time);
      }
      if (why) td.title = String(why);
      tr.append(td);
    }
    return tr;
  });
  $("fleet").tBodies[0].replaceChildren(...rows);
  const silent = agents.filter((a) => a.silent).length;
  const plural = agents.length === 1 ? "" : "s";
  const more = shown.length > FLEET_ROWS ? `; the first ${FLEET_ROWS} of ${count(shown.length)}` +
    " shown, filter to find others" : "";
  $("fleet-summary").textContent =
    `${count(agents.length)} agent${plural}` + (silent ? `, ${count(silent)} silent` : "") + more;
}

$("fleet-filter").addEventListener("input", () => renderFleet());

function renderRejections() {
  const counts = Object.entries(window.sparklem.rejections)
    .filter(([, n]) => typeof n === "number")
    .sort((a, b) => b[1] - a[1] || naturalOrder(a[0], b[0]));
  const rows = counts.map(([reason, n]) => {
    const tr = document.createElement("tr");
    tr.dataset.reason = reason;
    const name = document.createElement("td");
    name.textContent = reason;
    const value = document.createElement("td");
    value.className = "num";
    value.textContent = count(n);
    tr.append(name, value);
    return tr;
  });
  $("rejections").tBodies[0].replaceChildren(...rows);
  $("no-rejections").hidden = rows.length > 0;
}

/** Last-seen cells count up between fleet refreshes. */
function tickClock() {
  for (const td of document.querySelectorAll("#fleet td[data-time]")) {
    td.textContent = relative(td.dataset.time);
  }
}

$("fleet").tBodies[0].addEventListener("click", (event) => {
  const row = event.target.closest("tr[data-agent]");
  if (row) location.hash = new URLSearchParams({ agent: row.dataset.agent }).toString();
});

/* ---------- one agent ---------- */

function agentFromHash() {
  return new URLSearchParams(location.hash.slice(1)).get("agent");
}

async function selectAgent(agent) {
  const generation = ++state.generation;
  state.selected = agent;
  window.sparklem.selected = agent;
  window.sparklem.loaded = null;
  for (const row of document.querySelectorAll("#fleet tbody tr")) {
    row.classList.toggle("selected", row.dataset.agent === agent);
  }
  closeStream();
  for (const chart of Object.values(charts)) chart.clear();
  $("agent-section").hidden = agent === null;
  if (agent === null) return;
  $("agent-name").textContent = agent;
  // The stream first, then the history: a reading stored in between is on one or the other,
  // and a point seen twice is the same point (one value per series and time). The history
  // waits for the stream to open (or STREAM_WAIT_MS, when a proxy holds the stream back).
  await opened(openStream(agent), STREAM_WAIT_MS);
  if (generation !== state.generation) return;
  const to = new Date(Date.now() + 300_000); // agents' clocks run a little ahead, too
  const from = new Date(Date.now() - rangeSeconds() * 1000);
  try {
    await Promise.all(
      Object.keys(PLUGINS).map((plugin) =>
        rangeSeconds() <= RAW_UP_TO_S
          ? loadHistory(agent, plugin, from, to, generation)
          : loadAverages(agent, plugin, from, to, generation)),
    );
  } catch (error) {
    if (generation === state.generation) showError(error);
    return;
  }
  if (generation !== state.generation) return;
  for (const chart of Object.values(charts)) chart.render();
  window.sparklem.loaded = agent;
}

async function loadHistory(agent, plugin, from, to, generation) {
  let cursor = null;
  for (let page = 0; page < HISTORY_MAX_PAGES; page++) {
    const query = new URLSearchParams({
      agent,
      from: from.toISOString(),
      to: to.toISOString(),
      limit: String(HISTORY_PAGE),
    });
    if (cursor) query.set("cursor", cursor);
    const body = await api(`readings/${encodeURIComponent(plugin)}?${query}`);
    if (generation !== state.generation) return;
    const readings = Array.isArray(body.readings) ? body.readings : [];
    for (const reading of readings) ingest(plugin, reading);
    cursor = typeof body.next === "string" && body.next ? body.next : null;
    if (!cursor) return;
  }
}

/** The range in 1-minute averages of each value, per series: bounded whatever the rate. */
async function loadAverages(agent, plugin, from, to, generation) {
  const { series, values } = PLUGINS[plugin];
  const readings = new Map(); // series and minute -> {series, values, time}
  await Promise.all(Object.entries(values).map(async ([name, only]) => {
    const query = new URLSearchParams({
      field: name,
      agg: "avg",
      bucket: "1m",
      agent,
      from: from.toISOString(),
      to: to.toISOString(),
    });
    for (const key of series) query.append("group_by", key);
    for (const [key, wanted] of Object.entries(only)) {
      for (const value of wanted) query.append(key, value);
    }
    const body = await api(`aggregate/${encodeURIComponent(plugin)}?${query}`);
    for (const group of Array.isArray(body.groups) ? body.groups : []) {
      if (!isObject(group) || !isObject(group.key) || !Array.isArray(group.points)) continue;
      for (const point of group.points) {
        if (!isObject(point)) continue;
        const id = JSON.stringify([group.key, point.t]);
        if (!readings.has(id)) readings.set(id, { series: group.key, values: {}, time: point.t });
        readings.get(id).values[name] = point.value;
      }
    }
  }));
  if (generation !== state.generation) return;
  for (const reading of readings.values()) ingest(plugin, reading);
}

function rangeSeconds() {
  return Number($("range").value) || 3600;
}

/** A reading from /readings ({series, values, time}) or the stream (the row itself). */
function ingest(plugin, reading) {
  if (!isObject(reading)) return;
  const t = seconds(reading.time);
  if (t === null) return;
  if (plugin === "temperature") {
    charts.temperature.add(String(field(reading, "sensor")), t, field(reading, "celsius"));
    return;
  }
  if (plugin !== "pu_workload") return;
  const unit = field(reading, "unit");
  const index = String(field(reading, "unit_index"));
  const load = field(reading, "utilization_pct");
  const memory = percent(field(reading, "mem_used_bytes"), field(reading, "mem_total_bytes"));
  if (unit === "cpu") {
    charts.cpu.add("cpu", t, load);
    charts.memory.add("memory", t, memory);
  } else if (unit === "core") {
    charts.cores.add(`core ${index}`, t, load);
  } else if (unit === "gpu") {
    charts.gpu.add(`gpu ${index}`, t, load);
    charts.memory.add(`gpu ${index} memory`, t, memory);
  }
}

function field(reading, name) {
  for (const part of [reading.series, reading.values]) {
    if (isObject(part) && name in part) return part[name];
  }
  return reading[name];
}

/* ---------- live stream ---------- */

/** Resolves when ``source`` opens, fails, or after ``ms``, whichever comes first. */
function opened(source, ms) {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(done, ms);
    source.addEventListener("open", done, { once: true });
    source.addEventListener("error", done, { once: true });
  });
}

function openStream(agent) {
  const query = new URLSearchParams({ agent, kind: "reading" });
  const source = new EventSource(`${API}/stream?${query}`);
  state.source = source;
  setStreamState("connecting");
  source.onopen = () => setStreamState("live");
  source.onerror = () => {
    if (source !== state.source) return;
    if (source.readyState !== EventSource.CLOSED) {
      setStreamState("connecting"); // the browser reconnects with Last-Event-ID by itself
      return;
    }
    setStreamState("error");
    // A refused stream (401 after the session ended, a restart): find out why, then retry.
    setTimeout(() => {
      if (source !== state.source) return;
      api("agents?agent=" + encodeURIComponent(agent))
        .then(() => source === state.source && openStream(agent))
        .catch(showError);
    }, 5000);
  };
  source.addEventListener("reading", (message) => {
    if (source !== state.source) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    if (!isObject(event) || event.agent_id !== agent) return;
    const data = isObject(event.data) ? event.data : {};
    const row = isObject(data.row) ? data.row : data;
    window.sparklem.stream.events += 1;
    // ``at`` is the reading's time whatever the plugin calls its time column.
    ingest(event.plugin, { ...row, time: event.at ?? field(row, "measured_at") });
    const since = Date.now() / 1000 - rangeSeconds();
    for (const chart of Object.values(charts)) chart.trim(since);
  });
  return source;
}

function closeStream() {
  if (state.source) state.source.close();
  state.source = null;
  setStreamState("off");
}

function setStreamState(name) {
  window.sparklem.stream.state = name;
  const el = $("stream-state");
  el.dataset.state = name;
  el.textContent = `live: ${name}`;
}

/* ---------- helpers ---------- */

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function seconds(time) {
  if (typeof time === "number") return Number.isFinite(time) ? time / 1000 : null;
  if (typeof time !== "string") return null;
  const ms = Date.parse(time);
  return Number.isNaN(ms) ? null : ms / 1000;
}

function percent(used, total) {
  if (typeof used !== "number" || typeof total !== "number" || !(total > 0)) return null;
  return (100 * used) / total;
}

function count(n) {
  return typeof n === "number" ? n.toLocaleString("en") : "";
}

function relative(time) {
  const t = seconds(time);
  if (t === null) return "never";
  const age = Math.round(Date.now() / 1000 - t);
  if (age < 0) return "just now";
  if (age < 60) return `${age} s ago`;
  if (age < 3600) return `${Math.floor(age / 60)} min ago`;
  if (age < 86400) return `${Math.floor(age / 3600)} h ago`;
  return `${Math.floor(age / 86400)} d ago`;
}

const collator = new Intl.Collator("en", { numeric: true }); // one: sorting 10,000 agents

function naturalOrder(a, b) {
  return collator.compare(a, b);
}

function sameList(a, b) {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/* ---------- start ---------- */

async function start() {
  try {
    await loadRejections(); // small and quick: whether a token is needed, before the rest
  } catch (error) {
    showError(error);
    return;
  }
  const fleet = loadAgents().then(clearError, showError);
  await Promise.all([fleet, selectAgent(agentFromHash())]);
  scheduleRefresh();
}

window.addEventListener("hashchange", () => selectAgent(agentFromHash()));
window.addEventListener("resize", () => Object.values(charts).forEach((c) => c.resize()));
$("range").addEventListener("change", () => selectAgent(state.selected));
setInterval(tickClock, CLOCK_TICK_MS);
start();
