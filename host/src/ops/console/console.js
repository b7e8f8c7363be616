// The iniesta operator console: polls /api/state (the chart points it has not seen yet), draws
// the charts, searches and pages the dead letters and sends redrive and delete actions (POST
// with the page's CSRF token). Data is always inserted as text.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
const HOUR = 60 * 60 * 1000;
const PAGE = 50;
const PALETTE = ["#2f6fde", "#1f9d55", "#e07b00", "#8e44ad", "#c9302c", "#16a2b8", "#7f8c8d", "#b8860b"];
let peekable = false; // the local broker can list dead letters without touching them

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) { const td = el("td"); td.appendChild(c); tr.appendChild(td); }
    else if (Array.isArray(c)) tr.appendChild(el("td", c[0], c[1]));
    else tr.appendChild(el("td", c));
  }
  return tr;
}

function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren(...rows);
}

function time(ms) {
  if (!ms) return "-";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function duration(secs) {
  const h = Math.floor(secs / 3600), m = Math.floor(secs / 60) % 60, s = secs % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + s + "s";
}

function ms(v) {
  if (v == null) return "-";
  return v >= 1000 ? Number((v / 1000).toPrecision(3)) + " s" : Number(v.toPrecision(3)) + " ms";
}

function percent(v) {
  return v == null ? "-" : (v * 100).toFixed(v && v < 0.1 ? 1 : 0) + "%";
}

async function getJSON(url) {
  const r = await fetch(url, {
    credentials: "same-origin", cache: "no-store", headers: { "X-CSRF-Token": csrf },
  });
  if (!r.ok) throw new Error(url + ": HTTP " + r.status + " " + (await r.text()));
  return r.json();
}

async function post(url, body) {
  const r = await fetch(url, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
  });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
  return data;
}

// The top of a y axis for values up to `v`: four grid steps of 1, 2 or 5 times a power of ten.
function niceTop(v) {
  const rough = Math.max(v, 1e-9) * 1.05 / 4;
  const power = Math.pow(10, Math.floor(Math.log10(rough)));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= rough);
  return step * 4;
}

// One chart: lines of {t, v} points over the last hour (the window grows with the data, at
// least a minute), a y axis from 0 to at least `minMax` (at most `maxMax`) in four grid steps
// labelled by `label`.
function drawLines(id, lines, label, minMax, maxMax) {
  const canvas = document.getElementById(id);
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const pad = { l: 52, r: 10, t: 8, b: 18 };
  const now = Date.now();
  let oldest = now;
  for (const line of lines) if (line.points.length) oldest = Math.min(oldest, line.points[0].t);
  const span = Math.min(HOUR, Math.max(60 * 1000, now - oldest));
  let max = minMax;
  for (const line of lines) for (const p of line.points) if (p.v != null) max = Math.max(max, p.v);
  max = Math.min(niceTop(max), maxMax || Infinity);
  g.strokeStyle = "#e3e6ec"; g.fillStyle = "#6b7385"; g.font = "11px system-ui"; g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const y = pad.t + (h - pad.t - pad.b) * k / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(label(max * (4 - k) / 4), 4, y + 4);
  }
  for (let k = 0; k <= 5; k++) {
    const ago = span * k / 5 / 1000;
    const text = k === 0 ? "now" : ago >= 120 ? "-" + Math.round(ago / 60) + "m" : "-" + Math.round(ago) + "s";
    const x = pad.l + (w - pad.l - pad.r) * (1 - k / 5);
    g.fillText(text, x - 12, h - 4);
  }
  const x = (t) => Math.max(pad.l + (w - pad.l - pad.r) * (1 - (now - t) / span), pad.l);
  const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - v / max);
  for (const line of lines) {
    g.strokeStyle = line.color; g.lineWidth = 2; g.beginPath();
    // A gap (no calls) breaks the line.
    let drawing = false;
    for (const p of line.points) {
      if (p.v == null) { drawing = false; continue; }
      drawing ? g.lineTo(x(p.t), y(p.v)) : g.moveTo(x(p.t), y(p.v));
      drawing = true;
    }
    g.stroke();
  }
}

// What the page has seen: the throughput samples and each binding's points, kept for an hour.
let pid = null, lastT = 0, series = [], bindingSeries = {};

function keepHour(points) {
  const from = Date.now() - HOUR;
  let i = 0;
  while (i < points.length && points[i].t < from) i++;
  return i ? points.slice(i) : points;
}

function merge(s) {
  if (s.pid !== pid) { pid = s.pid; lastT = 0; series = []; bindingSeries = {}; }
  series = keepHour(series.concat(s.series));
  for (const name of Object.keys(bindingSeries)) if (!(name in s.binding_series)) delete bindingSeries[name];
  for (const [name, points] of Object.entries(s.binding_series)) {
    bindingSeries[name] = keepHour((bindingSeries[name] || []).concat(points));
  }
  for (const p of s.series) lastT = Math.max(lastT, p.t);
}

function drawCharts(bindings) {
  const rates = [];
  for (let i = 1; i < series.length; i++) {
    const a = series[i - 1], b = series[i], dt = Math.max((b.t - a.t) / 1000, 0.001);
    rates.push({ t: b.t, received: Math.max(b.received - a.received, 0) / dt,
      acked: Math.max(b.acked - a.acked, 0) / dt, in_flight: b.in_flight });
  }
  const whole = (v) => String(Math.round(v * 100) / 100);
  drawLines("chart", [["received", "#2f6fde"], ["acked", "#1f9d55"], ["in_flight", "#e07b00"]].map(([key, color]) =>
    ({ color, points: rates.map((p) => ({ t: p.t, v: p[key] })) })), whole, 4);
  const lines = (value) => bindings.map((b, i) => ({
    color: PALETTE[i % PALETTE.length],
    points: (bindingSeries[b.name] || []).map((p) => ({ t: p.t, v: p.calls ? value(p) : null })),
  }));
  drawLines("latency-chart", lines((p) => p.p95_ms), ms, 1);
  drawLines("failure-chart", lines((p) => 100 * p.failed / p.calls), (v) => Math.round(v) + "%", 100, 100);
}

async function refreshState() {
  let s;
  try { s = await getJSON("/api/state?since=" + (pid === null ? 0 : lastT)); }
  catch (e) { document.getElementById("health").textContent = "unreachable"; return; }
  merge(s);
  peekable = s.broker === "local";
  document.getElementById("service").textContent =
    s.service + " · queue " + s.queue + " · " + s.broker + " broker · pid " + s.pid;
  const health = document.getElementById("health");
  health.textContent = s.health;
  health.className = "badge " + (s.health === "ready" ? "ok" : "bad");
  document.getElementById("uptime").textContent = "up " + duration(s.uptime_secs);
  document.getElementById("dlq-name").textContent = s.dead_letter_queue || "(none configured)";
  // True depths from the queue-depth reader (GetQueueAttributes on SQS), when it has read.
  const depths = s.depths || {};
  const q = depths.queue;
  document.getElementById("queue-depth").textContent = q ?
    "queue: " + q.visible + " visible, " + q.in_flight + " in flight, " + q.delayed + " delayed" : "";
  dlqDepth = depths.dead_letter_queue ? depths.dead_letter_queue.visible : null;
  showDlqCount();
  fill("plugins", s.plugins.map((p) => row([[p.name, "mono"], p.version, [p.generation, "num"], [p.reloads, "num"], [p.file, "mono"]])));
  const failed = s.load_failures || [];
  fill("load-failures", failed.map((f) => row([[f.plugin, "mono"], f.reason,
    f.serving_generation == null ? "-" : "gen " + f.serving_generation, [f.error, "reason"]])));
  document.getElementById("load-failures").hidden = failed.length === 0;
  fill("bindings", s.bindings.map((b, i) => {
    const key = el("span", null, "key");
    key.style.background = PALETTE[i % PALETTE.length];
    const name = el("span", b.name + "  " + b.label);
    const cell = el("td", null, "mono"); cell.append(key, name);
    if (b.circuit && b.circuit !== "closed") cell.append(" ", el("span", "circuit " + b.circuit, "badge bad circuit"));
    const m = b.last_minute || {};
    const tr = row([b.plugin + " " + b.version, [b.acked, "num"], [b.retried, "num"], [b.failed, "num"],
      [b.dead_lettered, "num"], [m.calls == null ? "-" : m.calls, "num"], [percent(m.failure_rate), "num rate"],
      [ms(m.p50_ms), "num"], [ms(m.p95_ms), "num p95"]]);
    tr.prepend(cell);
    tr.dataset.binding = b.name;
    return tr;
  }));
  fill("failures", s.failures.map((f) => row([[time(f.at_ms), "when"], f.kind.replace("_", " "), [f.binding || "-", "mono"],
    f.event || "-", [f.message_id, "mono"], [f.receive_count, "num"], [f.reason, "reason"]])));
  document.getElementById("no-failures").hidden = s.failures.length > 0;
  drawCharts(s.bindings);
}

// --- dead letters ---------------------------------------------------------------------------

// The search the table shows: an event glob, a reason text, and the page's first row.
let search = { event: "", reason: "" }, offset = 0;

function filtered() { return search.event !== "" || search.reason !== ""; }

function selection() {
  const s = {};
  if (search.event) s.events = [search.event];
  if (search.reason) s.reasons = [search.reason];
  return s;
}

async function act(action, body, button, question) {
  if (question && !window.confirm(question)) return;
  const status = document.getElementById("dlq-status");
  if (button) button.disabled = true;
  try {
    const r = await post("/api/dlq/" + action, body);
    status.textContent = (action === "redrive" ? "redriven " : "deleted ") + r.done +
      (r.failed.length ? ", failed: " + r.failed.join("; ") : "") +
      (r.missing && r.missing.length ? ", not found (gone, or held by another listing): " + r.missing.join(", ") : "");
  } catch (e) {
    status.textContent = action + " failed: " + e.message;
  }
  await refreshDlq();
}

// The DLQ's count: its true depth when the depth reader has one, else what a listing saw.
let dlqDepth = null, listed = null;
function showDlqCount() {
  const count = document.getElementById("dlq-count");
  const n = dlqDepth != null ? dlqDepth : listed;
  if (n == null) return;
  count.textContent = String(n);
  count.className = "badge " + (n ? "bad" : "ok");
}

// The last listing (for the confirmations) and a sequence number: only the latest request's
// answer is shown (a slow answer to an older one is dropped).
let lastListing = null, dlqSeq = 0;

async function refreshDlq() {
  const count = document.getElementById("dlq-count");
  const params = new URLSearchParams({ limit: PAGE, offset });
  if (search.event) params.set("event", search.event);
  if (search.reason) params.set("reason", search.reason);
  const mine = ++dlqSeq;
  let d;
  try { d = await getJSON("/api/dlq?" + params.toString().replace(/\+/g, "%20")); }
  catch (e) { if (mine === dlqSeq) document.getElementById("dlq-status").textContent = e.message; return; }
  if (mine !== dlqSeq) return;
  lastListing = d;
  const all = document.getElementById("dlq-redrive-all");
  const del = document.getElementById("dlq-delete-matching");
  if (!d.configured) {
    count.textContent = "-";
    fill("dlq", []);
    all.disabled = true; del.disabled = true;
    return;
  }
  if (!filtered()) { listed = d.complete ? d.matching : d.scanned + "+"; showDlqCount(); }
  // Past the end (the last page emptied by an action): to the last page there is.
  if (d.messages.length === 0 && offset > 0) {
    offset = d.matching > 0 ? Math.floor((d.matching - 1) / PAGE) * PAGE : 0;
    return refreshDlq();
  }
  all.textContent = filtered() ? "Redrive matching" : "Redrive all";
  all.disabled = d.matching === 0;
  del.hidden = !filtered();
  del.disabled = d.matching === 0;
  const first = d.messages.length ? offset + 1 : 0;
  document.getElementById("dlq-page").textContent = first + "–" + (offset + d.messages.length) + " of " +
    d.matching + (d.complete ? "" : "+") + (filtered() ? " matching" : "") +
    (d.complete || !filtered() ? "" : " (among the first " + d.scanned + " read)");
  document.getElementById("dlq-prev").disabled = offset === 0;
  // More may follow a page when the listing did not see the whole queue.
  document.getElementById("dlq-next").disabled = offset + d.messages.length >= d.matching && d.complete;
  fill("dlq", d.messages.map((m) => {
    const redrive = el("button", "Redrive", "redrive");
    redrive.type = "button";
    redrive.dataset.id = m.id;
    redrive.addEventListener("click", () => act("redrive", { ids: [m.id] }, redrive));
    const remove = el("button", "Delete", "delete");
    remove.type = "button";
    remove.dataset.id = m.id;
    remove.addEventListener("click", () =>
      act("delete", { ids: [m.id] }, remove, "Delete dead letter " + m.id + " for good?"));
    const buttons = el("span", null, "row-actions");
    buttons.append(redrive, remove);
    const tr = row([[m.id, "mono"], m.event || "-", [m.receive_count, "num"], [time(m.first_seen_ms), "when"],
      [time(m.last_seen_ms), "when"], [m.reason || "-", "reason"], [m.body, "mono"], buttons]);
    tr.dataset.id = m.id;
    return tr;
  }));
  document.getElementById("dlq-note").textContent = peekable ? "" :
    "SQS has no peek: listing receives the dead letters and makes them visible again at once; refresh by hand.";
}

document.getElementById("dlq-refresh").addEventListener("click", refreshDlq);
document.getElementById("dlq-search").addEventListener("submit", (e) => {
  e.preventDefault();
  search = {
    event: document.getElementById("dlq-event").value.trim(),
    reason: document.getElementById("dlq-reason").value.trim(),
  };
  offset = 0;
  refreshDlq();
});
document.getElementById("dlq-prev").addEventListener("click", () => { offset = Math.max(0, offset - PAGE); refreshDlq(); });
document.getElementById("dlq-next").addEventListener("click", () => { offset += PAGE; refreshDlq(); });
// What a confirmation says about how many an action over the search takes.
function howMany() {
  const d = lastListing;
  if (!d) return "";
  return d.complete ? " (" + d.matching + " now)" :
    " (" + d.matching + " among the " + d.scanned + " listed; the action searches the whole queue)";
}

document.getElementById("dlq-redrive-all").addEventListener("click", (e) => {
  if (filtered()) {
    act("redrive", selection(), e.target, "Send every dead letter that matches the search back to the main queue" + howMany() + "?");
  } else {
    act("redrive", { all: true }, e.target, "Send every message in the dead-letter queue back to the main queue" + howMany() + "?");
  }
});
document.getElementById("dlq-delete-matching").addEventListener("click", (e) => {
  act("delete", selection(), e.target, "Delete every dead letter that matches the search, for good" + howMany() + "?");
});

refreshState().then(refreshDlq);
setInterval(refreshState, 2000);
setInterval(() => { if (peekable) refreshDlq(); }, 5000);
