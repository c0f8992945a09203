// corral's dashboard: polls /api/status and /api/events, keeps the last minutes of figures itself, and draws
// them as SVG polylines (no library, nothing fetched from elsewhere). The admin token, when the listener needs
// one, comes from the address's fragment (#token=...), which browsers never send to the server, or the form;
// it is kept in sessionStorage and sent as `Authorization: Bearer` on every API request.
"use strict";

const WINDOW = 300; // seconds of samples shown
const POLL = 1000;
const RATE_SPAN = 5;
const COLORS = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#0891b2", "#db2777", "#65a30d", "#dc2626"];
const SVG = "http://www.w3.org/2000/svg";

const samples = []; // {t, workers: Map(pid -> {id, rate, p50, p99, cpu, mem}), total: {...}, quota, budget}
let lastEventSeq = 0;

function token() { return sessionStorage.getItem("corral-token"); }

function takeTokenFromAddress() {
  const match = /(?:^|&)token=([^&]*)/.exec(location.hash.slice(1));
  if (match) {
    sessionStorage.setItem("corral-token", decodeURIComponent(match[1]));
    window.history.replaceState(null, "", location.pathname);
  }
}

async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { ...options, headers, cache: "no-store" });
  if (response.status === 401) {
    document.getElementById("login").hidden = false;
    throw new Error("this listener needs the admin token");
  }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${response.status}`);
  return body;
}

function notice(text, error = false) {
  const element = document.getElementById("notice");
  element.textContent = text;
  element.className = error ? "error" : "";
}

const fmt = {
  rate: (v) => (v == null ? "-" : v.toFixed(1)),
  ms: (s) => (s == null ? "-" : `${(s * 1000).toFixed(1)} ms`),
  pct: (v) => (v == null ? "-" : `${v.toFixed(0)}%`),
  bytes: (b) => {
    if (b == null) return "-";
    if (b >= 2 ** 30) return `${(b / 2 ** 30).toFixed(1)} GiB`;
    if (b >= 2 ** 20) return `${(b / 2 ** 20).toFixed(0)} MiB`;
    return `${(b / 1024).toFixed(0)} KiB`;
  },
  uptime: (started) => {
    const s = Math.max(0, Math.floor(Date.now() / 1000 - started));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
    return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, "0")}h`;
  },
};

function sample(status) {
  const now = Date.now() / 1000;
  const workers = new Map();
  // requests/s over the last RATE_SPAN seconds: the workers publish their counts about once a second
  const base = samples.find((h) => h.t >= now - RATE_SPAN) || samples[samples.length - 1];
  for (const w of status.workers) {
    if (!w.pid) continue;
    let rate = w.requests_per_second;
    const before = base && base.workers.get(w.pid);
    if (rate == null && before && now > base.t) rate = Math.max(0, w.requests - before.requests) / (now - base.t);
    workers.set(w.pid, {
      id: w.id, requests: w.requests, rate: rate ?? null, p50: w.latency_p50_seconds ?? null,
      p99: w.latency_p99_seconds ?? null, cpu: w.cpu_percent ?? null, mem: w.memory_uss ?? null,
    });
  }
  const pool = status.pool || {};
  const rates = [...workers.values()].map((w) => w.rate).filter((r) => r != null);
  const total = {
    rate: rates.length ? rates.reduce((a, b) => a + b, 0) : null,
    p50: status.latency_p50_seconds ?? pool.latency_p50_seconds ?? null,
    p99: status.latency_p99_seconds ?? pool.latency_p99_seconds ?? null,
    cpu: pool.cpu_percent ?? null,
    mem: pool.memory_used ?? null,
  };
  samples.push({ t: now, workers, total, quota: pool.cpu_quota ?? null, budget: pool.memory_budget ?? null });
  while (samples.length && samples[0].t < now - WINDOW) samples.shift();
  return { now, workers, total, pool };
}

function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.appendChild(td);
}

function renderWorkers(status, current) {
  const body = document.querySelector("#workers tbody");
  body.replaceChildren();
  for (const w of status.workers) {
    const row = document.createElement("tr");
    const figures = current.workers.get(w.pid) || {};
    cell(row, w.id);
    cell(row, w.pid ?? "-", "pid");
    cell(row, w.state, w.state);
    cell(row, w.generation);
    cell(row, fmt.rate(figures.rate), "rate");
    cell(row, fmt.ms(w.latency_p50_seconds));
    cell(row, fmt.ms(w.latency_p99_seconds));
    cell(row, fmt.pct(w.cpu_percent));
    cell(row, fmt.bytes(w.memory_uss));
    cell(row, w.restarts);
    cell(row, fmt.uptime(w.started_at));
    body.appendChild(row);
  }
}

function renderCertificates(status) {
  const body = document.querySelector("#certificates tbody");
  body.replaceChildren();
  const certificates = status.certificates || [];
  if (!certificates.length) {
    const row = document.createElement("tr");
    cell(row, "no HTTPS certificates (plain HTTP)");
    body.appendChild(row);
    return;
  }
  for (const c of certificates) {
    const row = document.createElement("tr");
    const expires = c.not_after ? new Date(c.not_after) : null;
    cell(row, c.names.join(", "));
    cell(row, c.source + (c.temporary ? " (stand-in)" : ""));
    cell(row, expires ? expires.toISOString().replace("T", " ").slice(0, 16) : "-");
    cell(row, expires ? ((expires - Date.now()) / 86400000).toFixed(1) : "-");
    cell(row, c.next_renewal ? c.next_renewal.replace("T", " ").slice(0, 16) : "-");
    cell(row, c.failures + (c.last_error ? `: ${c.last_error}` : ""));
    body.appendChild(row);
  }
}

// before the first workers (the admin listener answers during the pre-start steps): what the instance does
function starting(status) {
  const step = status.prestart;
  if (!step) return "";
  if (step.waiting_for) return ` · pre-start steps waiting for the ${step.waiting_for}`;
  return ` · pre-start step ${step.step} of ${step.steps} running for ${fmt.uptime(Date.now() / 1000 - step.seconds)}: ` +
    step.command;
}

function renderSummary(status, current) {
  const pool = current.pool;
  const ready = status.workers.filter((w) => w.state === "ready").length;
  document.getElementById("summary").textContent =
    `manager pid ${status.manager_pid} · generation ${status.generation} · ${ready}/${status.target_workers} ` +
    `workers ready · ${status.restarts} restarts${status.stopping ? " · stopping" : ""}${starting(status)}`;
  document.getElementById("total-rate").textContent = fmt.rate(current.total.rate);
  document.getElementById("total-latency").textContent =
    `${fmt.ms(current.total.p50)} / ${fmt.ms(current.total.p99)}`;
  document.getElementById("total-cpu").textContent = pool.cpu_quota
    ? `${fmt.pct(pool.cpu_percent)} of ${(pool.cpu_quota * 100).toFixed(0)}%` : "-";
  document.getElementById("total-memory").textContent = pool.memory_budget
    ? `${fmt.bytes(pool.memory_used)} of ${fmt.bytes(pool.memory_budget)}` : "-";
}

function node(name, attributes, parent) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  if (parent) parent.appendChild(element);
  return element;
}

// series: [{label, color, cls, points: [[t, v]]}]; limit: a dashed line (quota, budget) or null
function chart(id, series, limit, limitLabel = "") {
  const svg = document.getElementById(id);
  const width = svg.clientWidth || 600;
  const height = svg.clientHeight || 180;
  const pad = { left: 44, right: 8, top: 8, bottom: 18 };
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.replaceChildren();
  const now = Date.now() / 1000;
  // the time axis grows from one minute to WINDOW as samples accumulate
  const first = samples.length ? samples[0].t : now;
  const span = Math.min(WINDOW, Math.max(60, now - first));
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  const highest = Math.max(0, ...values);
  // a limit far above the figures (a budget of gigabytes for workers of megabytes) is named, not drawn
  const drawLimit = limit != null && (highest === 0 || limit <= 4 * highest);
  if (drawLimit) values.push(limit);
  const top = values.some((v) => v > 0) ? Math.max(...values) * 1.1 : 1;
  const x = (t) => pad.left + ((t - (now - span)) / span) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / top) * (height - pad.top - pad.bottom);
  for (let i = 0; i <= 4; i++) {
    const value = (top * i) / 4;
    const py = height - pad.bottom - (i / 4) * (height - pad.top - pad.bottom);
    node("line", { x1: pad.left, x2: width - pad.right, y1: py, y2: py, class: "grid" }, svg);
    node("text", { x: 2, y: py + 3 }, svg).textContent = value >= 100 ? value.toFixed(0) : value.toPrecision(2);
  }
  const step = span > 120 ? 60 : 15;
  for (let ago = 0; ago <= span; ago += step) {
    const label = ago === 0 ? "now" : ago % 60 ? `-${ago}s` : `-${ago / 60}m`;
    node("text", { x: x(now - ago) - 10, y: height - 4 }, svg).textContent = label;
  }
  if (drawLimit) node("line", { x1: pad.left, x2: width - pad.right, y1: y(limit), y2: y(limit), class: "budget" }, svg);
  if (limit != null && limitLabel) {
    const text = node("text", { x: width - pad.right - 4, y: pad.top + 10, "text-anchor": "end" }, svg);
    text.textContent = `${limitLabel}${drawLimit ? "" : " (off scale)"}`;
  }
  if (!series.some((s) => s.points.length)) {
    node("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, svg).textContent = "no figures yet";
  }
  for (const s of series) {
    if (!s.points.length) continue;
    const points = s.points.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    node("polyline", { points, stroke: s.color, class: s.cls || "" }, svg);
  }
  let legend = svg.nextElementSibling;
  if (!legend) {
    legend = document.createElement("div");
    legend.className = "legend";
    svg.after(legend);
  }
  legend.replaceChildren(...series.map((s) => {
    const span = document.createElement("span");
    span.textContent = `■ ${s.label}`;
    span.style.color = s.color;
    return span;
  }));
}

function seriesOf(field, withTotal, scale = (v) => v) {
  const pids = new Map();
  for (const h of samples) for (const [pid, w] of h.workers) pids.set(pid, w.id);
  const series = [...pids].map(([pid, id]) => ({
    label: `worker ${id} (pid ${pid})`,
    color: COLORS[(id - 1) % COLORS.length],
    points: samples.filter((h) => h.workers.get(pid)?.[field] != null).map((h) => [h.t, scale(h.workers.get(pid)[field])]),
  }));
  if (withTotal) {
    series.push({
      label: "total", color: "#111827", cls: "total",
      points: samples.filter((h) => h.total[field] != null).map((h) => [h.t, scale(h.total[field])]),
    });
  }
  return series;
}

function renderCharts() {
  const last = samples[samples.length - 1];
  const mib = (b) => b / 2 ** 20;
  chart("chart-rate", seriesOf("rate", true), null);
  const latency = [
    ...seriesOf("p99", false, (s) => s * 1000).map((s) => ({ ...s, label: `p99 ${s.label}` })),
    { label: "pool p50", color: "#6b7280", points: samples.filter((h) => h.total.p50 != null).map((h) => [h.t, h.total.p50 * 1000]) },
    { label: "pool p99", color: "#111827", cls: "total", points: samples.filter((h) => h.total.p99 != null).map((h) => [h.t, h.total.p99 * 1000]) },
  ];
  chart("chart-latency", latency, null);
  const quota = last && last.quota ? last.quota * 100 : null;
  chart("chart-cpu", seriesOf("cpu", true), quota, quota ? `quota ${quota.toFixed(0)}%` : "");
  const budget = last && last.budget ? mib(last.budget) : null;
  chart("chart-memory", seriesOf("mem", true, mib), budget, budget ? `budget ${fmt.bytes(last.budget)}` : "");
}

async function refreshEvents() {
  const answer = await api(`/api/events?since=${lastEventSeq}&limit=100`);
  const list = document.getElementById("events");
  for (const e of answer.events) {
    const item = document.createElement("li");
    item.className = e.kind;
    const when = new Date(e.time * 1000).toLocaleTimeString();
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = e.kind;
    item.append(`${when} `, kind, e.message + (e.waiting_in ? ` (waiting in ${e.waiting_in})` : ""));
    list.prepend(item);
    lastEventSeq = Math.max(lastEventSeq, e.seq);
  }
  while (list.children.length > 200) list.lastChild.remove();
}

async function refresh() {
  try {
    const status = await api("/api/status");
    const current = sample(status);
    renderSummary(status, current);
    renderWorkers(status, current);
    renderCertificates(status);
    renderCharts();
    await refreshEvents();
    document.getElementById("login").hidden = true;
  } catch (error) {
    notice(String(error.message || error), true);
  }
}

async function act(path, body, label) {
  notice(`${label}…`);
  try {
    const answer = await api(path, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    notice(answer.message || "done");
  } catch (error) {
    notice(`${label} refused: ${error.message || error}`, true);
  }
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  takeTokenFromAddress();
  document.getElementById("reload").addEventListener("click", () => act("/api/reload", {}, "reloading"));
  document.getElementById("scale-up").addEventListener("click", () => act("/api/scale", { to: "+1" }, "scaling up"));
  document.getElementById("scale-down").addEventListener("click", () => act("/api/scale", { to: "-1" }, "scaling down"));
  document.getElementById("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("corral-token", document.getElementById("token").value);
    notice("");
    refresh();
  });
  refresh();
  setInterval(refresh, POLL);
});
