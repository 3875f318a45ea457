// Live dashboard: polls /dashboard/stats every second and draws Grafana-like panels.
// Every panel is a small spec (what to read from a stats document, how to show it);
// history is kept here, in the page, so the server stays stateless apart from its
// rate window.
"use strict";

const POLL_MS = 1000;
const KEEP_POINTS = 300; // five minutes at one point a second
const C = {
  green: "#73bf69", yellow: "#fade2a", orange: "#ff9830", red: "#f2495c",
  blue: "#5794f2", purple: "#b877d9", teal: "#6ed0e0", pink: "#ff7383",
};
const PALETTE = [C.green, C.yellow, C.blue, C.orange, C.red, C.purple, C.teal, C.pink];
const SEMANTIC = {
  p50: C.green, p95: C.yellow, p99: C.red,
  "2xx": C.green, "3xx": C.blue, "4xx": C.orange, "5xx": C.red,
  accepted: C.green, duplicate: C.blue, sold_out: C.orange, limit_exceeded: C.yellow,
  rejected: C.purple, failed: C.red,
  hit: C.green, near_hit: C.teal, negative_hit: C.blue, miss: C.orange,
  running: C.green, runnable: C.yellow, syscall: C.orange, waiting: C.blue, idle: "#8e8e8e",
  spinning: C.purple, global: C.red,
};

// ---- formatting -------------------------------------------------------------------------
const isNum = (v) => typeof v === "number" && Number.isFinite(v);
function short(v) {
  if (!isNum(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 100 || Number.isInteger(v)) return v.toFixed(0);
  return v.toFixed(a >= 10 ? 1 : 2);
}
const UNITS = {
  short,
  ops: (v) => (isNum(v) ? short(v) + "/s" : "–"),
  ms: (v) => (!isNum(v) ? "–" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : short(v) + " ms"),
  percent: (v) => (isNum(v) ? (v * 100).toFixed(1) + "%" : "–"),
};

// ---- reading a stats document -----------------------------------------------------------
const pick = (obj, keys) => Object.fromEntries(keys.map((k) => [k, obj ? obj[k] : undefined]));
const statusClass = (byStatus) => {
  const out = {};
  for (const [code, v] of Object.entries(byStatus || {})) {
    const k = String(code)[0] + "xx";
    out[k] = (out[k] || 0) + v;
  }
  return out;
};
const sum = (obj) => {
  const vals = Object.values(obj || {}).filter(isNum);
  return vals.length ? vals.reduce((a, b) => a + b, 0) : undefined;
};
const alive = (gs) => sum(pick(gs, ["runnable", "running", "syscall", "waiting"]));

// ---- panel specs ------------------------------------------------------------------------
// stat: {value(s), unit, thresholds [[from, colour]...]}; ts: {series(s) -> {name: value}}.
const HIGH_BAD = [[0, C.green], [1000, C.orange], [10000, C.red]];
const LAYOUT = [
  { row: "Flash sale · at a glance" },
  { id: "rps", kind: "stat", title: "Requests / s", w: 3, unit: "ops", value: (s) => s.api.requests_per_s },
  { id: "p99", kind: "stat", title: "p99 latency", w: 3, unit: "ms", value: (s) => s.api.latency_ms.p99,
    thresholds: [[0, C.green], [100, C.orange], [500, C.red]] },
  { id: "hit", kind: "stat", title: "Cache hit ratio", w: 3, unit: "percent", value: (s) => s.api.cache.hit_ratio,
    thresholds: [[0, C.red], [0.8, C.orange], [0.95, C.green]] },
  { id: "accepted", kind: "stat", title: "Orders accepted / s", w: 3, unit: "ops",
    value: (s) => s.api.orders.per_s.accepted ?? (s.api.orders.totals.accepted !== undefined ? 0 : undefined) },
  { id: "depth", kind: "stat", title: "Queue depth", w: 3, value: (s) => s.queue.depth_total, thresholds: HIGH_BAD },
  { id: "pending", kind: "stat", title: "Pending orders", w: 3, value: (s) => s.queue.pending, thresholds: HIGH_BAD },
  { id: "stock", kind: "stat", title: "Stock left", w: 3, value: (s) => s.stock.remaining,
    thresholds: [[0, C.red], [1, C.blue]] },
  { id: "lag99", kind: "stat", title: "Persist lag p99", w: 3, unit: "ms", value: (s) => s.worker.lag_ms.p99,
    thresholds: [[0, C.green], [1000, C.orange], [5000, C.red]] },

  { row: "Traffic" },
  { id: "status", kind: "ts", title: "Responses by status", w: 8, unit: "ops", stack: true,
    series: (s) => statusClass(s.api.by_status_per_s) },
  { id: "latency", kind: "ts", title: "Latency percentiles", w: 8, unit: "ms", series: (s) => s.api.latency_ms },
  { id: "routes", kind: "ts", title: "Requests by route", w: 8, unit: "ops", series: (s) => s.api.by_route_per_s },

  { row: "Cache and orders" },
  { id: "lookups", kind: "ts", title: "Cache lookups by result", w: 6, unit: "ops", stack: true,
    series: (s) => s.api.cache.lookups_per_s },
  { id: "misses", kind: "ts", title: "Misses: single-flight waits and DB loads", w: 6, unit: "ops",
    series: (s) => ({ "single-flight waits": s.api.cache.single_flight_waits_per_s, "DB loads": s.api.cache.db_loads_per_s }) },
  { id: "hitratio", kind: "ts", title: "Cache hit ratio", w: 6, unit: "percent",
    series: (s) => ({ "hit ratio": s.api.cache.hit_ratio }) },
  { id: "orders", kind: "ts", title: "Orders by outcome", w: 6, unit: "ops", stack: true,
    series: (s) => s.api.orders.per_s },

  { row: "Queue and persistence" },
  { id: "queue", kind: "ts", title: "Queue depth and pending orders", w: 8,
    series: (s) => ({ ...s.queue.depth, pending: s.queue.pending }) },
  { id: "worker", kind: "ts", title: "Worker throughput", w: 8, unit: "ops",
    series: (s) => ({ persisted: s.worker.persisted_per_s, ...s.worker.tasks_per_s }) },
  { id: "lag", kind: "ts", title: "Accept-to-persist lag", w: 8, unit: "ms", series: (s) => s.worker.lag_ms },
  { id: "commit", kind: "ts", title: "Batch commit latency", w: 8, unit: "ms", series: (s) => s.worker.commit_ms },
  { id: "batch", kind: "ts", title: "Mean batch size", w: 8, series: (s) => ({ "orders / batch": s.worker.batch_size_mean }) },
  { id: "stockts", kind: "ts", title: "Stock left", w: 8, series: (s) => ({ stock: s.stock.remaining }) },

  { row: "G-M-P runtime (worker)" },
  { id: "gomaxprocs", kind: "stat", title: "GOMAXPROCS", w: 4, value: (s) => s.gmp.gomaxprocs, thresholds: [[0, C.blue]] },
  { id: "galive", kind: "stat", title: "Gs alive", w: 4, value: (s) => alive(s.gmp.goroutines), thresholds: [[0, C.purple]] },
  { id: "mcount", kind: "stat", title: "Ms (threads)", w: 4, value: (s) => sum(s.gmp.threads), thresholds: [[0, C.blue]] },
  { id: "grunq", kind: "stat", title: "Global run queue", w: 4, value: (s) => s.gmp.global_runqueue, thresholds: HIGH_BAD },
  { id: "steals", kind: "stat", title: "Steals / s", w: 4, unit: "ops", value: (s) => s.gmp.per_s.steals, thresholds: [[0, C.teal]] },
  { id: "handoffs", kind: "stat", title: "Hand-offs / s", w: 4, unit: "ops", value: (s) => s.gmp.per_s.handoffs, thresholds: [[0, C.orange]] },
  { id: "gstates", kind: "ts", title: "Gs by state", w: 12, stack: true,
    series: (s) => pick(s.gmp.goroutines, ["running", "runnable", "syscall", "waiting"]) },
  { id: "runq", kind: "ts", title: "Run queue per P and global", w: 12,
    series: (s) => ({
      ...Object.fromEntries((s.gmp.runqueue_per_p || []).map((v, i) => ["P" + i, v])),
      global: s.gmp.global_runqueue,
    }) },
  { id: "mstates", kind: "ts", title: "Ms by state", w: 8, stack: true, series: (s) => s.gmp.threads },
  { id: "events", kind: "ts", title: "Steals, hand-offs, retakes, preemptions", w: 8, unit: "ops",
    series: (s) => pick(s.gmp.per_s, ["steals", "handoffs", "retakes", "preemptions"]) },
  { id: "syscalls", kind: "ts", title: "Syscalls and context switches", w: 8, unit: "ops",
    series: (s) => pick(s.gmp.per_s, ["syscalls", "context_switches"]) },
  { id: "procs", kind: "procs", title: "Processors: local run queues now", w: 10, h: 230 },
  { id: "sched", kind: "sched", title: "schedtrace", hint: "GODEBUG=schedtrace=1000", w: 14, h: 230 },
];

// ---- DOM --------------------------------------------------------------------------------
const el = (tag, cls, text) => {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
};

function buildPanel(spec) {
  const root = el("section", "panel " + spec.kind);
  root.dataset.panel = spec.id;
  root.dataset.hasData = "false";
  root.style.gridColumn = "span " + spec.w;
  root.style.height = (spec.h || (spec.kind === "stat" ? 110 : 250)) + "px";
  const head = el("div", "panel-head");
  head.append(el("span", "", spec.title));
  if (spec.hint) head.append(el("span", "hint", spec.hint));
  const body = el("div", "panel-body");
  body.append(el("div", "empty", "No data"));
  root.append(head, body);
  spec.root = root;
  spec.body = body;
  if (spec.kind === "stat") {
    spec.fill = el("div", "stat-fill");
    spec.spark = el("canvas", "spark");
    spec.text = el("div", "stat-value", "–");
    body.append(spec.fill, spec.spark, spec.text);
  } else if (spec.kind === "procs") {
    spec.ms = el("div", "ms");
    spec.list = el("div", "procs");
    body.append(spec.ms, spec.list);
  } else if (spec.kind === "sched") {
    spec.pre = el("pre", "schedtrace");
    body.append(spec.pre);
  }
  return root;
}

function thresholdColour(spec, v) {
  let colour = (spec.thresholds || [[0, C.green]])[0][1];
  for (const [from, c] of spec.thresholds || []) if (isNum(v) && v >= from) colour = c;
  return colour;
}

// ---- stat panels ------------------------------------------------------------------------
function drawSpark(canvas, values) {
  const w = (canvas.width = canvas.clientWidth * devicePixelRatio);
  const h = (canvas.height = canvas.clientHeight * devicePixelRatio);
  const pts = values.slice(-90);
  const nums = pts.filter(isNum);
  const ctx = canvas.getContext("2d");
  if (nums.length < 2) return;
  const max = Math.max(...nums), min = Math.min(0, ...nums);
  const y = (v) => h - ((v - min) / (max - min || 1)) * h * 0.9;
  ctx.beginPath();
  pts.forEach((v, i) => ctx.lineTo((i / (pts.length - 1)) * w, y(isNum(v) ? v : 0)));
  ctx.strokeStyle = "rgba(255,255,255,0.55)";
  ctx.lineWidth = 1.5 * devicePixelRatio;
  ctx.stroke();
  ctx.lineTo(w, h);
  ctx.lineTo(0, h);
  ctx.fillStyle = "rgba(255,255,255,0.12)";
  ctx.fill();
}

function updateStat(spec, docs) {
  const values = docs.map((d) => safe(() => spec.value(d)));
  // Grafana's "last not null" reduction: an idle window keeps showing the last figure.
  const v = values.filter(isNum).pop();
  spec.text.textContent = (UNITS[spec.unit] || short)(v);
  const colour = thresholdColour(spec, v);
  spec.fill.style.background = isNum(v)
    ? `linear-gradient(120deg, ${colour}cc, ${colour}77)`
    : "transparent";
  drawSpark(spec.spark, values);
  return isNum(v);
}

// ---- time series (uPlot) ----------------------------------------------------------------
function safe(f) {
  try {
    return f();
  } catch {
    return undefined;
  }
}

function seriesKeys(docs, spec) {
  const keys = new Set();
  for (const d of docs) for (const k of Object.keys(safe(() => spec.series(d)) || {})) keys.add(k);
  return [...keys].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
}

// Stacked charts plot running sums and fill the band between neighbours (uPlot's stack recipe).
function stackData(raw) {
  const acc = raw[0].map(() => 0);
  return [raw[0], ...raw.slice(1).map((s) => s.map((v, i) => (acc[i] += isNum(v) ? v : 0)))];
}

function makeChart(spec, keys) {
  const fmt = UNITS[spec.unit] || short;
  const colour = (k, i) => SEMANTIC[k] || PALETTE[i % PALETTE.length];
  const series = [{}].concat(
    keys.map((k, i) => ({
      label: k,
      stroke: colour(k, i),
      width: 2,
      fill: colour(k, i) + (spec.stack ? "55" : "1a"),
      points: { show: false },
      spanGaps: true,
      // Off the chart the legend shows the latest figure, as Grafana's legend does.
      value: (u, v, si, idx) => fmt(spec.raw[si][idx == null ? spec.raw[si].length - 1 : idx]),
    })),
  );
  const axis = {
    stroke: "rgba(204,204,220,0.65)",
    grid: { stroke: "rgba(204,204,220,0.07)", width: 1 },
    ticks: { stroke: "rgba(204,204,220,0.07)", width: 1 },
    font: "11px Inter, Arial, sans-serif",
  };
  const opts = {
    width: spec.body.clientWidth - 8,
    height: spec.body.clientHeight - 48,
    series,
    cursor: { points: { size: 6 } },
    legend: { live: true },
    scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
    axes: [
      { ...axis, values: (u, vals) => vals.map((t) => new Date(t * 1000).toTimeString().slice(0, 8)) },
      { ...axis, size: 56, values: (u, vals) => vals.map(fmt) },
    ],
    bands: spec.stack ? keys.slice(1).map((_, i) => ({ series: [i + 2, i + 1] })) : [],
  };
  spec.chart && spec.chart.destroy();
  spec.chart = new uPlot(opts, [[], ...keys.map(() => [])], spec.body);
  spec.keys = keys.join("\u0000");
}

function updateSeries(spec, docs) {
  const keys = seriesKeys(docs, spec);
  if (!spec.chart || spec.keys !== keys.join("\u0000")) makeChart(spec, keys);
  const rows = docs.map((d) => safe(() => spec.series(d)) || {});
  spec.raw = [docs.map((d) => d.time), ...keys.map((k) => rows.map((r) => (isNum(r[k]) ? r[k] : null)))];
  spec.chart.setData(spec.stack ? stackData(spec.raw) : spec.raw);
  return keys.some((k) => { const v = rows[rows.length - 1][k]; return isNum(v); });
}

// ---- G-M-P views ------------------------------------------------------------------------
function updateProcs(spec, docs) {
  const g = docs[docs.length - 1].gmp;
  const runq = g.runqueue_per_p || [];
  const threads = g.threads || {};
  spec.ms.replaceChildren(
    ...["running", "syscall", "spinning", "idle"].map((k) => {
      const s = el("span", "", k + " Ms ");
      s.append(el("b", "", short(threads[k])));
      return s;
    }),
  );
  spec.list.replaceChildren(
    ...runq.map((n, i) => {
      const row = el("div", "proc");
      row.append(el("span", "pid", "P" + i), el("span", "pstate", n > 0 ? "Gs queued" : "queue empty"));
      const q = el("div", "queue");
      for (let k = 0; k < Math.min(n, 48); k++) q.append(el("span", "g"));
      if (n > 48) q.append(el("span", "g more", "+" + (n - 48)));
      row.append(q, el("span", "n", String(n)));
      return row;
    }),
  );
  return runq.length > 0;
}

const started = Date.now();
function schedLine(d) {
  const g = d.gmp;
  const t = g.threads || {};
  const procs = g.procs || {};
  const threads = sum(t);
  if (!isNum(g.gomaxprocs)) return null;
  return (
    `SCHED ${Math.round(d.time * 1000 - started)}ms: gomaxprocs=${g.gomaxprocs} ` +
    `idleprocs=${procs.idle ?? 0} threads=${threads ?? 0} spinningthreads=${t.spinning ?? 0} ` +
    `idlethreads=${t.idle ?? 0} runqueue=${g.global_runqueue ?? 0} [${(g.runqueue_per_p || []).join(" ")}]`
  );
}

function updateSched(spec, docs) {
  const lines = docs.slice(-11).map(schedLine).filter(Boolean);
  spec.pre.replaceChildren(
    ...lines.map((l, i) => el("div", i === lines.length - 1 ? "last" : "", l)),
  );
  return lines.length > 0;
}

// ---- header -----------------------------------------------------------------------------
function updateStatus(d) {
  const pills = Object.entries(d.up).map(([name, up]) => [name, up ? "ok" : "bad"]);
  const degraded = Object.entries(d.api.degraded || {}).filter(([, v]) => v > 0).map(([k]) => k);
  pills.push([degraded.length ? "degraded: " + degraded.join(", ") : "not degraded", degraded.length ? "bad" : "ok"]);
  for (const [src, v] of Object.entries(d.swap_forbidden || {})) {
    pills.push([`${src} swap ${v === 1 ? "off" : v === 0 ? "ON" : "?"}`, v === 1 ? "ok" : v === 0 ? "bad" : "warn"]);
  }
  document.getElementById("status").replaceChildren(...pills.map(([t, c]) => el("span", "pill " + c, t)));
}

// ---- loop -------------------------------------------------------------------------------
const UPDATE = { stat: updateStat, ts: updateSeries, procs: updateProcs, sched: updateSched };
const docs = [];

async function poll() {
  const pulse = document.getElementById("pulse");
  try {
    const res = await fetch("/dashboard/stats", { cache: "no-store" });
    if (!res.ok) throw new Error("HTTP " + res.status);
    docs.push(await res.json());
    if (docs.length > KEEP_POINTS) docs.shift();
    for (const spec of LAYOUT) {
      if (spec.kind) spec.root.dataset.hasData = String(Boolean(UPDATE[spec.kind](spec, docs)) || spec.root.dataset.hasData === "true");
    }
    updateStatus(docs[docs.length - 1]);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
    pulse.className = "dot live";
  } catch (err) {
    pulse.className = "dot stale";
    document.getElementById("updated").textContent = "stats unavailable (" + err.message + ")";
  }
  setTimeout(poll, POLL_MS);
}

function init() {
  const board = document.getElementById("board");
  for (const spec of LAYOUT) board.append(spec.row ? el("h2", "row-title", spec.row) : buildPanel(spec));
  window.addEventListener("resize", () => {
    for (const spec of LAYOUT) {
      if (spec.chart) spec.chart.setSize({ width: spec.body.clientWidth - 8, height: spec.body.clientHeight - 48 });
    }
  });
  poll();
}

init();
