// The Sparkle-M dashboard: reads only /api/v1 (plugins, agents, rejections, readings, stream).
// Every string from the API is untrusted: it reaches the page through textContent only.
// The charts come from /plugins: one per value column of each table of each plugin the
// agent sends, a line per series; no plugin is known here by name.
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
const CHART_HEIGHT = 220;
const AXIS_FONT = "11px system-ui, sans-serif";
// Units a plugin declares for a value column (register(..., units=)) that get their own
// axis; any other unit is named in the chart's caption.
const PERCENT = "%"; // drawn from 0 to 100
const BYTES = "B"; // ticks in KiB, MiB, GiB...
const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
// Byte ticks fall on whole units: 1, 2, 5, 10, ... 500 of B, KiB, MiB...
const BYTE_STEPS = BYTE_UNITS.flatMap((_, n) =>
  [1, 2, 5, 10, 20, 50, 100, 200, 500].map((m) => m * 1024 ** n));
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777",
  "#4b5563", "#65a30d", "#9333ea"];

const $ = (id) => document.getElementById(id);

class AuthNeeded extends Error {}

/** One chart: points per series label, drawn by uPlot; snapshot() is the data behind it. */
class Chart {
  constructor(name, el, unit) {
    this.name = name;
    this.el = el;
    this.unit = unit; // the value column's declared unit ("" for none): it picks the y axis
    this.series = new Map(); // label -> Map(time in s -> value)
    this.labels = [];
    this.data = [[]];
    this.plot = null;
    this.timer = null;
    this.loading = false; // the range is being read: "loading", not "no data", until done
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
    this.el.dataset.state = xs.length ? "data" : this.loading ? "loading" : "empty";
    if (xs.length === 0) {
      this.destroy();
      this.labels = labels;
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = this.loading ? "loading…" : "no data in this range";
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
        height: CHART_HEIGHT,
        scales: {
          x: { time: true },
          y: this.unit === PERCENT ? { range: [0, 100] } : {},
        },
        axes: [
          { font: AXIS_FONT, space: 70, size: 30, values: timeTicks },
          this.unit === BYTES
            ? { font: AXIS_FONT, values: byteTicks, incrs: BYTE_STEPS, size: axisWidth }
            : { font: AXIS_FONT, values: numberTicks, size: axisWidth },
        ],
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
    if (this.plot) {
      this.plot.setSize({ width: Math.max(this.el.clientWidth, 300), height: CHART_HEIGHT });
    }
  }

  destroy() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

/* ---------- axes ---------- */

const measure = document.createElement("canvas").getContext("2d");

/** Tick labels of a time axis: to the second, the minute or the day, as the ticks are apart. */
function timeTicks(_u, splits, _axis, _space, incr) {
  return splits.map((t) => {
    const d = new Date(t * 1000);
    const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
    if (incr < 60) return `${hm}:${pad(d.getSeconds())}`;
    if (incr < 86400) return hm;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  });
}

/** Numbers with the decimals the tick step needs; 10,000 and more in k, M, G... */
function numberTicks(_u, splits, _axis, _space, incr) {
  const decimals = Math.min(6, Math.max(0, -Math.floor(Math.log10(incr || 1))));
  const plain = new Intl.NumberFormat("en", { maximumFractionDigits: decimals });
  const compact = new Intl.NumberFormat("en", { notation: "compact", maximumSignificantDigits: 3 });
  return splits.map((v) => (v == null ? "" : Math.abs(v) >= 10_000 ? compact : plain).format(v));
}

/** Byte counts in the unit of the largest tick: "4 GiB", "512 MiB". */
function byteTicks(_u, splits) {
  const largest = Math.max(...splits.map((v) => Math.abs(v ?? 0)));
  const unit = largest > 0 ? Math.min(BYTE_UNITS.length - 1, Math.floor(Math.log2(largest) / 10)) : 0;
  const format = new Intl.NumberFormat("en", { maximumSignificantDigits: 3 });
  return splits.map((v) => (v == null ? "" : `${format.format(v / 1024 ** unit)} ${BYTE_UNITS[unit]}`));
}

/** A y axis as wide as its longest tick label: labels never run into the plot or each other. */
function axisWidth(_u, values) {
  if (!values) return 50;
  measure.font = AXIS_FONT;
  const widest = Math.max(0, ...values.map((v) => measure.measureText(String(v ?? "")).width));
  return Math.ceil(widest) + 18; // the tick and the gap beside it
}

function pad(n) {
  return String(n).padStart(2, "0");
}

/* ---------- charts from the plugins' declarations ---------- */

const charts = {}; // "plugin/table/value" -> Chart, those of the selected agent

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

const state = {
  selected: null, generation: 0, source: null, fleetTimer: null,
  catalog: new Map(), // plugin -> its tables, from /plugins (loadCatalog)
};

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
    const error = new Error(`${path.split("?")[0]}: ${response.status} ${detail}`);
    error.status = response.status;
    throw error;
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
    // The state word is the API's (fleet/state.py's one vocabulary), shown once; a
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

/** /plugins as Map(plugin -> [{table, series (without agent_id), values, units}]), checked. */
async function loadCatalog() {
  const body = await api("plugins");
  const catalog = new Map();
  const plugins = isObject(body) && isObject(body.plugins) ? body.plugins : {};
  for (const [plugin, tables] of Object.entries(plugins)) {
    if (!Array.isArray(tables)) continue;
    const usable = tables
      .filter((t) => isObject(t) && typeof t.table === "string" && Array.isArray(t.series) &&
        Array.isArray(t.values))
      .map((t) => ({
        table: t.table,
        series: t.series.filter((s) => typeof s === "string" && s !== "agent_id"),
        values: t.values.filter((v) => typeof v === "string"),
        units: new Map(Object.entries(isObject(t.units) ? t.units : {})
          .filter(([, unit]) => typeof unit === "string")),
      }));
    if (usable.length) catalog.set(plugin, usable);
  }
  state.catalog = catalog;
}

function chartKey(plugin, table, value) {
  return `${plugin}/${table}/${value}`;
}

/** The charts of ``plugins``, in place of any before; ``loading`` until their data is in. */
function showCharts(plugins, loading) {
  for (const chart of Object.values(charts)) chart.destroy();
  for (const key of Object.keys(charts)) delete charts[key];
  $("charts").replaceChildren();
  for (const plugin of plugins) addCharts(plugin, loading);
  $("no-charts").hidden = loading || plugins.length > 0;
}

/** A chart per value column of each of the plugin's tables, drawn (empty) at once. */
function addCharts(plugin, loading) {
  const tables = state.catalog.get(plugin) || [];
  for (const table of tables) {
    for (const value of table.values) {
      const key = chartKey(plugin, table.table, value);
      const figure = document.createElement("figure");
      const caption = document.createElement("figcaption");
      const unit = table.units.get(value) ?? "";
      const named = unit && unit !== BYTES ? `${value} (${unit})` : value; // bytes: in the ticks
      caption.textContent = tables.length > 1
        ? `${plugin} ${table.table}: ${named}` : `${plugin}: ${named}`;
      const el = document.createElement("div");
      el.className = "chart";
      el.dataset.chart = key;
      figure.append(caption, el);
      $("charts").append(figure);
      charts[key] = new Chart(key, el, unit);
      charts[key].loading = loading;
      charts[key].render();
    }
  }
  $("no-charts").hidden = true;
}

/** The plugins ``agent`` has sent readings of (the fleet's ``plugins``) that can be drawn. */
async function agentPlugins(agent) {
  const body = await api(`agents?${new URLSearchParams({ agent })}`);
  const found = isObject(body) && Array.isArray(body.agents)
    ? body.agents.find((a) => isObject(a) && a.agent_id === agent) : null;
  const sent = found && isObject(found.plugins) ? Object.keys(found.plugins) : [];
  return sent.filter((p) => state.catalog.has(p)).sort(naturalOrder);
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
  showCharts([], true);
  $("agent-section").hidden = agent === null;
  if (agent === null) return;
  $("agent-name").textContent = agent;
  let plugins;
  try {
    await loadCatalog(); // again at each selection: a plugin installed since shows up
    plugins = await agentPlugins(agent);
  } catch (error) {
    if (generation === state.generation) showError(error);
    return;
  }
  if (generation !== state.generation) return;
  showCharts(plugins, true);
  // The stream first, then the history: a reading stored in between is on one or the other,
  // and a point seen twice is the same point (one value per series and time). The history
  // waits for the stream to open (or STREAM_WAIT_MS, when a proxy holds the stream back).
  await opened(openStream(agent), STREAM_WAIT_MS);
  if (generation !== state.generation) return;
  const to = new Date(Date.now() + 300_000); // agents' clocks run a little ahead, too
  const from = new Date(Date.now() - rangeSeconds() * 1000);
  const load = rangeSeconds() <= RAW_UP_TO_S ? loadHistory : loadAverages;
  try {
    await Promise.all(plugins.flatMap((plugin) =>
      state.catalog.get(plugin).map((table) => load(agent, plugin, table, from, to, generation))));
  } catch (error) {
    if (generation === state.generation) showError(error);
  }
  if (generation !== state.generation) return;
  for (const chart of Object.values(charts)) {
    chart.loading = false;
    chart.render();
  }
  window.sparklem.loaded = agent;
}

async function loadHistory(agent, plugin, table, from, to, generation) {
  let cursor = null;
  for (let page = 0; page < HISTORY_MAX_PAGES; page++) {
    const query = new URLSearchParams({
      table: table.table,
      agent,
      from: from.toISOString(),
      to: to.toISOString(),
      limit: String(HISTORY_PAGE),
    });
    if (cursor) query.set("cursor", cursor);
    const body = await api(`readings/${encodeURIComponent(plugin)}?${query}`);
    if (generation !== state.generation) return;
    const readings = Array.isArray(body.readings) ? body.readings : [];
    for (const reading of readings) ingest(plugin, table.table, reading);
    cursor = typeof body.next === "string" && body.next ? body.next : null;
    if (!cursor) return;
  }
}

/** The range in 1-minute averages of each value, per series: bounded whatever the rate. */
async function loadAverages(agent, plugin, table, from, to, generation) {
  const readings = new Map(); // series and minute -> {series, values, time}
  await Promise.all(table.values.map(async (name) => {
    const query = new URLSearchParams({
      table: table.table,
      field: name,
      agg: "avg",
      bucket: "1m",
      agent,
      from: from.toISOString(),
      to: to.toISOString(),
    });
    for (const key of table.series) query.append("group_by", key);
    let body;
    try {
      body = await api(`aggregate/${encodeURIComponent(plugin)}?${query}`);
    } catch (error) {
      if (error.status === 400) return; // a value that is not a number has no average
      throw error;
    }
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
  for (const reading of readings.values()) ingest(plugin, table.table, reading);
}

function rangeSeconds() {
  return Number($("range").value) || 3600;
}

/** A reading from /readings ({series, values, time}) or the stream (the row itself): each
 * value on its chart, on the line of its series (the series keys' values). */
function ingest(plugin, tableName, reading) {
  if (!isObject(reading)) return;
  const t = seconds(reading.time);
  const table = (state.catalog.get(plugin) || []).find((x) => x.table === tableName);
  if (t === null || !table) return;
  const label = table.series.map((key) => String(field(reading, key))).join(" ");
  for (const value of table.values) {
    const chart = charts[chartKey(plugin, tableName, value)];
    if (chart) chart.add(label || value, t, field(reading, value));
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
    if (!state.catalog.has(event.plugin)) return; // not in /plugins when the agent was chosen
    if (!Object.keys(charts).some((key) => key.startsWith(`${event.plugin}/`))) {
      addCharts(event.plugin, false); // the agent's first reading of this plugin
    }
    // ``at`` is the reading's time whatever the plugin calls its time column.
    ingest(event.plugin, event.table, { ...row, time: event.at });
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
