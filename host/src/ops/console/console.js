// The iniesta operator console: polls /api/state, draws the chart, lists dead letters and
// sends redrive actions (POST with the page's CSRF token). Data is always inserted as text.
"use strict";

const csrf = document.querySelector('meta[name="csrf-token"]').content;
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

function drawChart(series) {
  const canvas = document.getElementById("chart");
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  canvas.width = w * ratio; canvas.height = h * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, h);
  const pad = { l: 40, r: 10, t: 8, b: 18 };
  const rates = [];
  for (let i = 1; i < series.length; i++) {
    const a = series[i - 1], b = series[i], dt = Math.max((b.t - a.t) / 1000, 0.001);
    rates.push({ t: b.t, received: Math.max(b.received - a.received, 0) / dt,
      acked: Math.max(b.acked - a.acked, 0) / dt, in_flight: b.in_flight });
  }
  // The window grows with the data: at least a minute, at most the hour kept.
  const now = Date.now();
  const oldest = series.length ? series[0].t : now;
  const span = Math.min(60 * 60 * 1000, Math.max(60 * 1000, now - oldest));
  let max = 1;
  for (const p of rates) max = Math.max(max, p.received, p.acked, p.in_flight);
  max = Math.max(4, Math.ceil(max * 1.1 / 4) * 4); // four whole-number grid steps
  g.strokeStyle = "#e3e6ec"; g.fillStyle = "#6b7385"; g.font = "11px system-ui"; g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const y = pad.t + (h - pad.t - pad.b) * k / 4;
    g.beginPath(); g.moveTo(pad.l, y); g.lineTo(w - pad.r, y); g.stroke();
    g.fillText(String(Math.round(max * (4 - k) / 4)), 4, y + 4);
  }
  for (let k = 0; k <= 5; k++) {
    const ago = span * k / 5 / 1000;
    const label = k === 0 ? "now" : ago >= 120 ? "-" + Math.round(ago / 60) + "m" : "-" + Math.round(ago) + "s";
    const x = pad.l + (w - pad.l - pad.r) * (1 - k / 5);
    g.fillText(label, x - 12, h - 4);
  }
  const x = (t) => pad.l + (w - pad.l - pad.r) * (1 - (now - t) / span);
  const y = (v) => pad.t + (h - pad.t - pad.b) * (1 - v / max);
  for (const [key, color] of [["received", "#2f6fde"], ["acked", "#1f9d55"], ["in_flight", "#e07b00"]]) {
    g.strokeStyle = color; g.lineWidth = 2; g.beginPath();
    rates.forEach((p, i) => { const px = Math.max(x(p.t), pad.l); i ? g.lineTo(px, y(p[key])) : g.moveTo(px, y(p[key])); });
    g.stroke();
  }
}

async function refreshState() {
  let s;
  try { s = await getJSON("/api/state"); }
  catch (e) { document.getElementById("health").textContent = "unreachable"; return; }
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
  fill("bindings", s.bindings.map((b) => row([[b.name + "  " + b.label, "mono"], b.plugin + " " + b.version,
    [b.acked, "num"], [b.retried, "num"], [b.failed, "num"], [b.dead_lettered, "num"]])));
  fill("failures", s.failures.map((f) => row([[time(f.at_ms), "when"], f.kind.replace("_", " "), [f.binding || "-", "mono"],
    f.event || "-", [f.message_id, "mono"], [f.receive_count, "num"], [f.reason, "reason"]])));
  document.getElementById("no-failures").hidden = s.failures.length > 0;
  drawChart(s.series);
}

async function redrive(body, button) {
  const status = document.getElementById("dlq-status");
  if (button) button.disabled = true;
  try {
    const r = await post("/api/dlq/redrive", body);
    status.textContent = "redriven " + r.redriven + (r.failed.length ? ", failed: " + r.failed.join("; ") : "");
  } catch (e) {
    status.textContent = "redrive failed: " + e.message;
  }
  await refreshDlq();
}

// The DLQ's count: its true depth when the depth reader has one, else what a listing saw.
let dlqDepth = null, listed = null, listedLimit = 0;
function showDlqCount() {
  const count = document.getElementById("dlq-count");
  const n = dlqDepth != null ? dlqDepth : listed;
  if (n == null) return;
  count.textContent = String(n) + (dlqDepth == null && listed >= listedLimit ? "+" : "");
  count.className = "badge " + (n ? "bad" : "ok");
}

async function refreshDlq() {
  const count = document.getElementById("dlq-count");
  let d;
  try { d = await getJSON("/api/dlq?limit=100"); }
  catch (e) { document.getElementById("dlq-status").textContent = e.message; return; }
  if (!d.configured) {
    count.textContent = "-";
    fill("dlq", []);
    document.getElementById("dlq-redrive-all").disabled = true;
    return;
  }
  listed = d.messages.length;
  listedLimit = d.limit;
  showDlqCount();
  document.getElementById("dlq-redrive-all").disabled = d.messages.length === 0;
  fill("dlq", d.messages.map((m) => {
    const b = el("button", "Redrive", "redrive");
    b.type = "button";
    b.dataset.id = m.id;
    b.addEventListener("click", () => redrive({ ids: [m.id] }, b));
    const tr = row([[m.id, "mono"], m.event || "-", [m.receive_count, "num"], [time(m.first_seen_ms), "when"],
      [time(m.last_seen_ms), "when"], [m.reason || "-", "reason"], [m.body, "mono"], b]);
    tr.dataset.id = m.id;
    return tr;
  }));
  document.getElementById("dlq-note").textContent = peekable ? "" :
    "SQS has no peek: listing receives the dead letters and makes them visible again at once; refresh by hand.";
}

document.getElementById("dlq-refresh").addEventListener("click", refreshDlq);
document.getElementById("dlq-redrive-all").addEventListener("click", (e) => {
  if (window.confirm("Send every message in the dead-letter queue back to the main queue?")) {
    redrive({ all: true }, e.target);
  }
});

refreshState().then(refreshDlq);
setInterval(refreshState, 2000);
setInterval(() => { if (peekable) refreshDlq(); }, 5000);
