// Live status: WebSocket /ws/status (falls back to Server-Sent Events /api/status/stream); alerts, cameras
// and the metrics explorer read the REST routes with the same token.
"use strict";
const STALE_AFTER_MS = 3000;
const REFRESH_MS = 5000;
const LAG_WARNING = 1000; // messages behind from which a consumer group is listed as a problem
const RANK = { down: 3, degraded: 2, unknown: 1, healthy: 0 };
const state = {
  messages: 0, transport: null, generation: null, connected: false, lastUpdate: 0, openAlerts: null,
  alerts: null, // the feed's latest answer (null until loaded or when the caller may not read alerts)
  vector: null,
};
window.itsmeshConsole = state; // read by the browser test and handy in the devtools console

function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) { sessionStorage.setItem("itsmesh-token", fromHash); history.replaceState(null, "", "/"); }
  return sessionStorage.getItem("itsmesh-token");
}

function text(value) { return value === null || value === undefined ? "n/a" : String(value); }
function fixed(value, digits) { return value === null || value === undefined ? "n/a" : Number(value).toFixed(digits); }
function $(id) { return document.getElementById(id); }

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => { if (k === "dataset") Object.assign(node.dataset, v); else node[k] = v; });
  (children || []).forEach((c) => node.append(c));
  return node;
}

// fetch with the token; resolves to the Response (callers look at status), rejects on network errors.
function api(path, options) {
  const headers = Object.assign({ Authorization: `Bearer ${token()}` }, (options || {}).headers || {});
  return fetch(path, Object.assign({}, options || {}, { headers }));
}

async function problemOf(response) {
  try { const body = await response.json(); return body.error_description || body.error || response.statusText; }
  catch (e) { return response.statusText; }
}

// --- charts ------------------------------------------------------------------------------------------------

const charts = {
  rps: new RollingChart($("chart-rps"), $("legend-rps"), { format: (v) => v.toFixed(v < 10 ? 1 : 0) }),
  errors: new RollingChart($("chart-errors"), $("legend-errors"), { format: (v) => `${v.toFixed(1)}%`, axisFormat: (v) => `${v}%` }),
  latency: new RollingChart($("chart-latency"), $("legend-latency"), { format: (v) => v.toFixed(v < 10 ? 1 : 0) }),
  lag: new RollingChart($("chart-lag"), $("legend-lag"), { format: (v) => v.toFixed(0) }),
  frames: new RollingChart($("chart-frames"), $("legend-frames"), { format: (v) => v.toFixed(1) }),
};

function kafkaLag(vector) {
  const kafka = vector.components.find((c) => c.type === "kafka");
  const lag = kafka && kafka.details.consumer_lag;
  const perGroup = {};
  if (lag) for (const [group, topics] of Object.entries(lag)) perGroup[group] = Object.values(topics).reduce((a, b) => a + b, 0);
  return perGroup;
}

function feedCharts(vector) {
  const t = vector.meta.generated_at;
  const services = vector.services || {};
  const pick = (field, scale) => Object.fromEntries(Object.entries(services).map(([name, s]) =>
    [name, s[field] === null || s[field] === undefined ? null : s[field] * scale]));
  charts.rps.push(t, pick("rps", 1));
  charts.errors.push(t, pick("error_rate", 100));
  charts.latency.push(t, pick("latency_p99_ms", 1));
  charts.lag.push(t, kafkaLag(vector));
  charts.frames.push(t, { "all cameras": vector.traffic.frames_per_second });
}

// --- the verdict: is anything wrong, and what, worst first ---------------------------------------------------

function problems(vector) {
  const found = [];
  for (const c of vector.components) {
    if (c.status === "healthy") continue;
    const why = c.error || (c.details.breaker === "open" ? "a client's circuit breaker is open" : c.details.health || "");
    found.push({ rank: RANK[c.status], text: `${c.name} is ${c.status.toUpperCase()}${why ? " — " + why : ""}` });
  }
  if (vector.traffic.mode !== "normal") {
    found.push({ rank: vector.traffic.mode === "isolated" ? 3 : 2,
      text: `Traffic ${vector.traffic.mode}: error rate ${fixed((vector.traffic.error_rate || 0) * 100, 1)}%` });
  }
  // Firing alerts by severity once the feed has loaded (critical pages the on-call: red); else the count.
  const firing = state.alerts ? state.alerts.filter((a) => a.status === "ALERT_STATUS_FIRING") : null;
  if (firing) {
    const critical = firing.filter((a) => a.severity === "SEVERITY_CRITICAL").length;
    const high = firing.filter((a) => a.severity === "SEVERITY_HIGH").length;
    const other = firing.length - critical - high;
    if (critical) found.push({ rank: 3, text: `${critical} critical alert${critical === 1 ? "" : "s"} firing` });
    if (high) found.push({ rank: 2, text: `${high} high-severity alert${high === 1 ? "" : "s"} firing` });
    if (other) found.push({ rank: 1, text: `${other} other alert${other === 1 ? "" : "s"} firing` });
  } else if (vector.overview.firing_alerts) {
    const count = vector.overview.firing_alerts;
    found.push({ rank: 2, text: `${count} alert${count === 1 ? "" : "s"} firing` });
  }
  for (const [group, lag] of Object.entries(kafkaLag(vector))) {
    if (lag >= LAG_WARNING) found.push({ rank: 2, text: `Kafka consumer group ${group} is ${lag} messages behind` });
  }
  return found.sort((a, b) => b.rank - a.rank);
}

function renderVerdict(vector) {
  const found = problems(vector);
  const worst = found.length ? found[0].rank : 0;
  const level = worst >= 3 ? "down" : worst >= 1 ? "degraded" : "healthy";
  $("verdict").className = `verdict ${level}`;
  $("verdict").dataset.level = level;
  const downCount = found.filter((p) => p.rank >= 3).length;
  $("verdict-title").textContent = level === "healthy" ? "All systems operational"
    : level === "down" ? `Outage — ${downCount} problem${downCount === 1 ? "" : "s"} need action now`
    : `Degraded — ${found.length} thing${found.length === 1 ? "" : "s"} to look at`;
  $("problems").replaceChildren(...found.map((p) => el("li", { textContent: p.text })));
}

// --- the rest of the status vector -----------------------------------------------------------------------------

function card(id, status) { $(id).className = `card ${status}`; }

function renderOverview(vector) {
  const ov = vector.overview;
  $("ov-services").textContent = `${ov.services_up} / ${ov.services_total}`;
  card("card-services", ov.services_total === 0 ? "unknown" : ov.services_up === ov.services_total ? "healthy" : ov.services_up ? "degraded" : "down");
  $("ov-infra").textContent = `${ov.infrastructure_up} / ${ov.infrastructure_total}`;
  card("card-infra", ov.infrastructure_up === ov.infrastructure_total ? "healthy" : "down");
  $("ov-alerts").textContent = ov.firing_alerts === null || ov.firing_alerts === undefined ? "n/a" : `${ov.firing_alerts} (${ov.open_alerts} open)`;
  card("card-alerts", ov.firing_alerts === null || ov.firing_alerts === undefined ? "unknown" : ov.firing_alerts ? "down" : "healthy");
  $("ov-cameras").textContent = ov.cameras_streaming === null || ov.cameras_streaming === undefined ? "n/a" : `${ov.cameras_streaming} / ${ov.cameras_registered}`;
  card("card-cameras", ov.cameras_streaming === null || ov.cameras_streaming === undefined ? "unknown"
    : ov.cameras_streaming < ov.cameras_registered ? "degraded" : "healthy");
  const t = vector.traffic;
  $("ov-traffic").textContent = `${t.mode} · ${text(t.rps)} rps`;
  card("card-traffic", t.mode === "normal" ? "healthy" : t.mode === "degraded" ? "degraded" : "down");
  $("ov-frames").textContent = fixed(t.frames_per_second, 1);
  card("card-frames", t.frames_per_second === null || t.frames_per_second === undefined ? "unknown" : "healthy");
}

function renderServices(vector) {
  const rows = Object.entries(vector.services || {})
    .sort(([an, a], [bn, b]) => RANK[b.status] - RANK[a.status] || an.localeCompare(bn))
    .map(([name, s]) => el("tr", { className: s.status, dataset: { service: name } }, [
      el("td", { textContent: name }),
      el("td", { className: "status-cell", textContent: s.status }),
      el("td", { textContent: `${s.instances_up} / ${s.instances_total}` }),
      el("td", { textContent: fixed(s.rps, 1) }),
      el("td", { textContent: s.error_rate === null ? "n/a" : `${(s.error_rate * 100).toFixed(1)}%` }),
      el("td", { textContent: s.latency_p99_ms === null ? "n/a" : `${s.latency_p99_ms.toFixed(1)} ms` }),
    ]));
  $("services").tBodies[0].replaceChildren(...rows);
}

function renderComponents(vector) {
  const sorted = vector.components.slice().sort((a, b) => RANK[b.status] - RANK[a.status] || a.name.localeCompare(b.name));
  const cards = sorted.map((c) => {
    const details = Object.entries(c.details).filter(([, v]) => typeof v !== "object" || v === null);
    const dl = el("dl", {}, details.flatMap(([k, v]) => [el("dt", { textContent: k }), el("dd", { textContent: text(v) })]));
    const latency = c.latency_ms === null ? "" : ` · ${c.latency_ms.toFixed(1)} ms`;
    return el("div", { className: `card ${c.status}`, dataset: { component: c.name, status: c.status } }, [
      el("h3", { textContent: c.name }),
      el("span", { className: "status", textContent: c.status + latency }),
      c.error ? el("div", { className: "error-text", textContent: c.error }) : "",
      dl,
    ]);
  });
  $("components").replaceChildren(...cards);
}

function renderHistory(vector) {
  const items = (vector.history || []).slice().reverse().map((h) =>
    el("li", { textContent: `${new Date(h.at * 1000).toLocaleTimeString()} ${h.name}: ${text(h.previous)} → ${text(h.current)}` }));
  $("history").replaceChildren(...items);
}

function render(vector) {
  state.messages += 1;
  state.lastUpdate = Date.now();
  state.generation = vector.meta.generation;
  state.vector = vector;
  renderVerdict(vector);
  renderOverview(vector);
  renderServices(vector);
  renderComponents(vector);
  renderHistory(vector);
  feedCharts(vector);
  const meta = $("meta");
  meta.dataset.generation = String(vector.meta.generation);
  meta.textContent = `v${vector.meta.version} · generated ${new Date(vector.meta.generated_at * 1000).toLocaleTimeString()}`;
  // A change in the alert count refreshes the feed at once rather than at the next poll.
  const open = `${vector.overview.open_alerts}/${vector.overview.firing_alerts}`;
  if (state.openAlerts !== null && open !== state.openAlerts) loadAlerts();
  state.openAlerts = open;
}

// --- alerts ------------------------------------------------------------------------------------------------

const SEVERITY = { SEVERITY_CRITICAL: "critical", SEVERITY_HIGH: "high", SEVERITY_MEDIUM: "medium", SEVERITY_LOW: "low", SEVERITY_INFO: "info" };

async function acknowledge(alertId, button) {
  button.disabled = true;
  const response = await api(`/api/alerts/${encodeURIComponent(alertId)}/acknowledge`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ comment: "acknowledged from the console" }),
  });
  const note = $("ack-note");
  if (!response.ok) {
    note.textContent = response.status === 403 ? "Acknowledging needs the operator role." : await problemOf(response);
    note.hidden = false;
    button.disabled = false;
    return;
  }
  note.hidden = true;
  loadAlerts();
}

async function loadAlerts() {
  let response;
  try { response = await api("/api/alerts?limit=50"); } catch (e) { return; }
  if (!response.ok) {
    state.alerts = null;
    $("alerts-note").textContent = `(${await problemOf(response)})`;
    $("alerts").replaceChildren(el("li", { className: "muted", textContent: "alert service not reachable" }));
    return;
  }
  $("alerts-note").textContent = "";
  const body = await response.json();
  state.alerts = body.alerts;
  if (state.vector) renderVerdict(state.vector);
  const items = body.alerts.map((a) => {
    const severity = SEVERITY[a.severity] || "info";
    const acked = a.status === "ALERT_STATUS_ACKNOWLEDGED";
    const labels = a.labels || {};
    const summary = (a.annotations || {}).summary || labels.kind || "alert";
    const subject = labels.camera_id || labels.device_id || labels.service || "";
    const li = el("li", { className: `sev-${severity}${acked ? " acknowledged" : ""}`, dataset: { alertId: a.alert_id } }, [
      el("span", { className: "sev", textContent: acked ? `${severity} · ack` : severity }),
      el("strong", { textContent: summary }),
      el("div", { className: "muted", textContent: `${subject} · since ${new Date(a.first_seen_time).toLocaleTimeString()} · ×${a.occurrence_count || 1}` }),
    ]);
    if (!acked) {
      const button = el("button", { type: "button", textContent: "Acknowledge" });
      button.addEventListener("click", () => acknowledge(a.alert_id, button));
      li.prepend(button);
    }
    return li;
  });
  $("alerts").replaceChildren(...(items.length ? items : [el("li", { className: "muted", textContent: "no open alerts" })]));
}

// --- camera thumbnails -------------------------------------------------------------------------------------

const thumbUrls = new Map(); // camera id -> object URL of its latest thumbnail

async function loadThumbnail(cameraId, img) {
  const response = await api(`/api/cameras/${encodeURIComponent(cameraId)}/thumbnail`);
  if (!response.ok) return false;
  const url = URL.createObjectURL(await response.blob());
  const previous = thumbUrls.get(cameraId);
  thumbUrls.set(cameraId, url);
  img.src = url;
  if (previous) URL.revokeObjectURL(previous);
  return true;
}

async function loadCameras() {
  let response;
  try { response = await api("/api/cameras?page_size=200"); } catch (e) { return; }
  if (!response.ok) {
    $("cameras-note").textContent = `(${await problemOf(response)})`;
    return;
  }
  const body = await response.json();
  $("cameras-note").textContent = `${body.online_count} of ${body.registered_count} online`;
  const tiles = body.cameras
    .sort((a, b) => (a.state === "CAMERA_CONNECTION_STATE_ONLINE") - (b.state === "CAMERA_CONNECTION_STATE_ONLINE") || a.camera_id.localeCompare(b.camera_id))
    .map((c) => {
      const online = c.state === "CAMERA_CONNECTION_STATE_ONLINE";
      const img = el("img", { alt: `latest frame of ${c.camera_id}` });
      const placeholder = el("div", { className: "noimg", textContent: "no recent frame" });
      const tile = el("div", { className: `thumb ${online ? "online" : "offline"}`, dataset: { camera: c.camera_id } }, [
        placeholder,
        el("strong", { textContent: c.camera_id }),
        el("div", { className: "muted", textContent: `${(c.state || "").replace("CAMERA_CONNECTION_STATE_", "").toLowerCase()} · ${fixed(c.frames_per_second || 0, 1)} fps` }),
      ]);
      loadThumbnail(c.camera_id, img).then((ok) => { if (ok) placeholder.replaceWith(img); }).catch(() => {});
      return tile;
    });
  $("thumbnails").replaceChildren(...tiles);
}

// --- metrics explorer ----------------------------------------------------------------------------------------

function explorerQuery() {
  const end = new Date();
  const start = new Date(end.getTime() - Number($("ex-range").value) * 1000);
  const params = new URLSearchParams({ camera_id: $("ex-camera").value.trim(), start: start.toISOString(), end: end.toISOString(), bucket_s: $("ex-bucket").value });
  return params.toString();
}

function drawBars(canvas, values) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || 600, height = canvas.clientHeight || 140;
  canvas.width = width * ratio; canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const max = Math.max(1, ...values);
  const barW = width / Math.max(1, values.length);
  ctx.fillStyle = "#1a73e8";
  values.forEach((v, i) => { const h = (v / max) * (height - 4); ctx.fillRect(i * barW, height - h, Math.max(1, barW - 1), h); });
}

async function explore(event) {
  event.preventDefault();
  $("ex-error").textContent = "";
  const response = await api(`/api/analytics/metrics?${explorerQuery()}`);
  if (!response.ok) { $("ex-error").textContent = await problemOf(response); return; }
  const body = await response.json();
  $("ex-figure").hidden = false;
  drawBars($("ex-chart"), (body.buckets || []).map((b) => Number(b.vehicle_count || 0)));
}

async function downloadCsv() {
  $("ex-error").textContent = "";
  if (!$("ex-camera").value.trim()) { $("ex-error").textContent = "camera: required"; return; }
  const response = await api(`/api/analytics/metrics/export?${explorerQuery()}`);
  if (!response.ok) { $("ex-error").textContent = await problemOf(response); return; }
  const url = URL.createObjectURL(await response.blob());
  const link = el("a", { href: url, download: "metrics.csv" });
  link.click();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- connection ----------------------------------------------------------------------------------------------

function setConnected(value, transport) {
  state.connected = value;
  if (transport) state.transport = transport;
  refreshBanner();
}

function refreshBanner() {
  const stale = !state.connected || Date.now() - state.lastUpdate > STALE_AFTER_MS;
  $("banner").hidden = !stale;
  $("live").className = `live ${stale ? "off" : "on"}`;
  $("live").textContent = stale ? "offline" : `live · ${state.transport}`;
}

function askForToken(message) {
  $("login").hidden = false;
  $("login-error").textContent = message || "";
}

function connectSse(tok) {
  const source = new EventSource(`/api/status/stream?token=${encodeURIComponent(tok)}`);
  source.addEventListener("open", () => setConnected(true, "sse"));
  source.addEventListener("status", (e) => render(JSON.parse(e.data)));
  source.addEventListener("error", () => { setConnected(false); });
}

function connect() {
  const tok = token();
  if (!tok) { askForToken(); return; }
  api("/api/status").then((r) => {
    if (r.status === 401 || r.status === 403) { askForToken("token refused"); return null; }
    return r.ok ? r.json() : null;
  }).then((vector) => {
    if (vector === null) { setTimeout(connect, 2000); return; }
    render(vector);
    loadAlerts();
    loadCameras();
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws/status?token=${encodeURIComponent(tok)}`);
    let opened = false;
    ws.onopen = () => { opened = true; setConnected(true, "websocket"); };
    ws.onmessage = (e) => render(JSON.parse(e.data));
    ws.onclose = () => {
      setConnected(false);
      if (!opened) { connectSse(tok); } else { setTimeout(connect, 1000); }
    };
  }).catch(() => { setConnected(false); setTimeout(connect, 2000); });
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("itsmesh-token", $("token").value);
  $("login").hidden = true;
  connect();
});
$("explorer").addEventListener("submit", explore);
$("ex-csv").addEventListener("click", downloadCsv);
setInterval(refreshBanner, 500);
setInterval(() => { if (state.connected) { loadAlerts(); loadCameras(); } }, REFRESH_MS);
connect();
