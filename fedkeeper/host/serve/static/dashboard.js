// fedkeeper's dashboard: polls this server's JSON API and redraws. No library, nothing from
// elsewhere: the plot is inline SVG, and every value reaches the page as text, never as markup.
"use strict";

const params = new URLSearchParams(location.search);
const REFRESH_MS = Math.max(250, 1000 * (parseFloat(params.get("refresh")) || 2));
const SVG = "http://www.w3.org/2000/svg";
let chosen = params.get("session"); // a session the user picked; otherwise follow the newest
let shown = null;

const $ = (id) => document.getElementById(id);

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${path}: HTTP ${response.status}`);
  return body;
}

function text(id, value) {
  $(id).textContent = value === null || value === undefined || value === "" ? "–" : String(value);
}

function cell(row, value, className) {
  const td = row.insertCell();
  td.textContent = value === null || value === undefined ? "–" : String(value);
  if (className) td.className = className;
  return td;
}

function fixed(value, digits) {
  return typeof value === "number" ? value.toFixed(digits) : "–";
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString() : "–";
}

function duration(seconds) {
  if (!(seconds >= 0)) return "–";
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
    : s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

// ------------------------------------------------------------------ session picker
function fillPicker(sessions) {
  const select = $("session");
  const names = sessions.map((s) => s.name);
  const labels = sessions.map((s) => `${s.name} (${s.phase})`).join(",");
  if (select.dataset.labels !== labels) {
    select.replaceChildren(...sessions.map((s) => {
      const option = document.createElement("option");
      option.value = s.name;
      option.textContent = `${s.name} (${s.phase})`;
      return option;
    }));
    select.dataset.labels = labels;
  }
  const name = chosen && names.includes(chosen) ? chosen : names[0] || null;
  if (name) select.value = name;
  return name;
}

$("session").addEventListener("change", (event) => {
  chosen = event.target.value;
  params.set("session", chosen);
  history.replaceState(null, "", `?${params}`);
  tick();
});

// ------------------------------------------------------------------ the plot
function svg(name, attributes, parent) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function drawPlot(rounds, maxRounds) {
  const plot = $("plot");
  const done = rounds.filter((r) => typeof r.accuracy === "number");
  const W = 640, H = 260, left = 44, right = 50, top = 12, bottom = 30;
  const lastRound = Math.max(maxRounds || 0, done.length ? done[done.length - 1].round + 1 : 1, 1);
  const maxLoss = Math.max(...done.map((r) => r.loss || 0), 0) * 1.1 || 1;
  const x = (round) => left + ((round - 0.5) / lastRound) * (W - left - right);
  const yAcc = (v) => top + (1 - v) * (H - top - bottom);
  const yLoss = (v) => top + (1 - v / maxLoss) * (H - top - bottom);
  plot.replaceChildren();
  for (let i = 0; i <= 4; i++) {
    const v = i / 4;
    svg("line", { class: "grid", x1: left, x2: W - right, y1: yAcc(v), y2: yAcc(v) }, plot);
    svg("text", { x: left - 6, y: yAcc(v) + 4, "text-anchor": "end" }, plot).textContent = v.toFixed(2);
    svg("text", { x: W - right + 6, y: yAcc(v) + 4 }, plot).textContent = (v * maxLoss).toPrecision(2);
  }
  svg("line", { class: "axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom }, plot);
  const step = Math.max(1, Math.ceil(lastRound / 12));
  for (let round = 1; round <= lastRound; round += step) {
    svg("text", { x: x(round), y: H - bottom + 16, "text-anchor": "middle" }, plot).textContent = round;
  }
  svg("text", { x: (W + left - right) / 2, y: H - 2, "text-anchor": "middle" }, plot).textContent = "round";
  for (const [series, y] of [["loss", yLoss], ["accuracy", yAcc]]) {
    const points = done.filter((r) => typeof r[series] === "number");
    svg("polyline", {
      class: `line ${series}`,
      points: points.map((r) => `${x(r.round + 1)},${y(r[series])}`).join(" "),
    }, plot);
    for (const r of points) {
      const dot = svg("circle", {
        class: `point ${series}`, cx: x(r.round + 1), cy: y(r[series]), r: 3.5, "data-round": r.round + 1,
      }, plot);
      svg("title", {}, dot).textContent = `round ${r.round + 1}: ${series} ${r[series].toFixed(4)}`;
    }
  }
  plot.dataset.points = String(done.length);
}

// ------------------------------------------------------------------ panels
function drawSummary(doc, rounds) {
  const status = doc.status, spec = doc.spec;
  const phase = $("phase");
  phase.textContent = status.phase;
  phase.className = `phase ${status.phase}`;
  text("aggregations", status.aggregations);
  text("max-rounds", spec.maxRounds);
  $("rounds-bar").style.width = `${100 * Math.min(1, status.aggregations / (spec.maxRounds || 1))}%`;
  const open = rounds.find((r) => r.status !== "aggregated");
  if (open && status.phase === "Running") {
    const delivered = status.nodes.filter(
      (n) => n.lastRound === open.round && n.state === "Succeeded" && open.selected.includes(n.client)).length;
    $("current-round").textContent =
      `round ${open.round + 1}: ${delivered} of ${open.selected.length} selected clients delivered`;
    $("clients-bar").style.width = `${100 * delivered / Math.max(open.selected.length, 1)}%`;
  } else {
    $("current-round").textContent = status.phase === "Running" ? "starting the next round" : "";
    $("clients-bar").style.width = "0";
  }
  text("accuracy", fixed(status.accuracy, 4));
  text("loss", fixed(status.loss, 4));
  text("started", when(status.startTime));
  const end = status.completionTime ? new Date(status.completionTime) : new Date();
  text("elapsed", status.startTime ? duration((end - new Date(status.startTime)) / 1000) : null);
  for (const key of ["active", "succeeded", "failed", "retries"]) text(key, status[key]);
  text("given-up", rounds.reduce((sum, r) => sum + (r.failedClients || 0), 0));
  text("rejected", rounds.reduce((sum, r) => sum + (r.rejected || 0), 0));
  const cost = status.cost;
  $("cost").textContent = cost === null ? "not recorded"
    : typeof cost === "number" ? cost.toFixed(4)
    : cost.total !== undefined ? `${cost.total} ${cost.currency || ""}` : JSON.stringify(cost);
  $("cost").classList.toggle("muted", cost === null);
  $("conditions").replaceChildren(...status.conditions.map((c) => {
    const li = document.createElement("li");
    li.textContent = `${when(c.lastTransitionTime)}  ${c.type}: ${c.reason}${c.message ? ` (${c.message})` : ""}`;
    return li;
  }));
}

function drawActivations(counts) {
  const table = $("activations");
  const statuses = [...new Set(counts.map((c) => c.status))].sort();
  const placeOf = (c) => `${c.platform}/${c.cluster}${c.via ? ` (via ${c.via})` : ""}`;
  const places = [...new Set(counts.map(placeOf))].sort();
  const head = document.createElement("tr");
  for (const name of ["platform / cluster", ...statuses, "retries"]) {
    const th = document.createElement("th");
    th.textContent = name;
    head.appendChild(th);
  }
  table.tHead.replaceChildren(head);
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const place of places) {
    const row = body.insertRow();
    row.dataset.place = place;
    cell(row, place);
    const here = counts.filter((c) => placeOf(c) === place);
    for (const status of statuses) {
      const found = here.find((c) => c.status === status);
      const kind = status === "success" ? "status-success" : status === "submitted" ? "status-submitted" : "status-bad";
      cell(row, found ? found.count : 0, `num ${found ? kind : ""}`).dataset.status = status;
    }
    cell(row, here.reduce((sum, c) => sum + c.retries, 0), "num");
  }
}

function drawNodes(nodes) {
  const body = $("nodes").tBodies[0];
  body.replaceChildren();
  for (const n of nodes) {
    const row = body.insertRow();
    cell(row, n.name);
    cell(row, `${n.platform}/${n.cluster}`);
    cell(row, n.sampleSize, "num");
    cell(row, n.state, `state-${n.state}`);
    cell(row, n.attempts, "num");
    cell(row, n.failed, "num");
    cell(row, n.lastRound === null ? null : n.lastRound + 1, "num");
  }
}

function prometheusText(readings) {
  if (!readings.length) return "not configured";
  return readings.map((r) => {
    if (!r.up) return `${r.source}: down`;
    const parts = [`${r.source}: up`];
    const targets = r.values.targets || {}, up = r.values.targets_up || {};
    if ("" in targets) parts.push(`${up[""] ?? 0}/${targets[""]} targets up`);
    for (const [instance, v] of Object.entries(r.values.cpu_busy_ratio || {})) {
      const memory = (r.values.memory_available_ratio || {})[instance];
      parts.push(`${instance} cpu ${(100 * v).toFixed(0)}%` +
        (memory === undefined ? "" : ` mem free ${(100 * memory).toFixed(0)}%`));
    }
    return parts.join(", ");
  }).join("; ");
}

function drawClusters(clusters) {
  const body = $("clusters").tBodies[0];
  body.replaceChildren();
  for (const c of clusters) {
    const row = body.insertRow();
    cell(row, `${c.platform}/${c.name}${c.runsManagingFunctions ? " (server)" : ""}`);
    cell(row, c.clients, "num");
    cell(row, c.activations, "num");
    cell(row, c.failed, "num");
    cell(row, c.lastStatus ? `${c.lastStatus}, ${when(c.lastActivityTime)}` : null,
      c.lastStatus === "success" ? "up" : c.lastStatus ? "" : "muted");
    const down = c.prometheus.some((r) => !r.up);
    cell(row, prometheusText(c.prometheus), c.prometheus.length ? (down ? "down" : "up") : "muted");
  }
}

function drawHosts(hosts) {
  const table = $("hosts");
  $("no-hosts").hidden = hosts.length > 0;
  table.hidden = hosts.length === 0;
  if (!hosts.length) return;
  const keys = ["name", "health", "status", "state", "address", "last_seen", "checked_at"]
    .filter((k) => hosts.some((h) => h[k] !== undefined && typeof h[k] !== "object"));
  const head = document.createElement("tr");
  for (const k of ["host", ...keys.filter((k) => k !== "name")]) {
    const th = document.createElement("th");
    th.textContent = k.replace("_", " ");
    head.appendChild(th);
  }
  table.tHead.replaceChildren(head);
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const h of hosts) {
    const row = body.insertRow();
    cell(row, h.name ?? h._id);
    for (const k of keys.filter((k) => k !== "name")) {
      const value = h[k];
      const healthy = ["up", "ok", "healthy", "ready", "running"].includes(String(value).toLowerCase());
      cell(row, value, healthy ? "up" : "");
    }
  }
}

// ------------------------------------------------------------------ polling
async function tick() {
  try {
    const [sessions, clusters, hosts] = await Promise.all([
      getJson("/api/v1/sessions"), getJson("/api/v1/clusters"), getJson("/api/v1/hosts"),
    ]);
    drawClusters(clusters);
    drawHosts(hosts);
    const name = fillPicker(sessions);
    if (name) {
      const encoded = encodeURIComponent(name);
      const [doc, rounds] = await Promise.all([
        getJson(`/api/v1/sessions/${encoded}`), getJson(`/api/v1/sessions/${encoded}/rounds`),
      ]);
      drawSummary(doc, rounds);
      drawPlot(rounds, doc.spec.maxRounds);
      drawActivations(doc.status.activations);
      drawNodes(doc.status.nodes);
      document.title = `fedkeeper · ${name} · ${doc.status.phase}`;
    }
    shown = name;
    $("problem").hidden = true;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.session = shown || "";
  } catch (error) {
    $("problem").textContent = `cannot update: ${error.message}`;
    $("problem").hidden = false;
  }
}

async function loop() {
  await tick();
  setTimeout(loop, REFRESH_MS);
}

loop();
