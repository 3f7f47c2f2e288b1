// Live status: WebSocket /ws/status, falling back to Server-Sent Events /api/status/stream.
"use strict";
const STALE_AFTER_MS = 3000;
let lastUpdate = 0;
let connected = false;

function token() {
  const fromHash = new URLSearchParams(location.hash.slice(1)).get("token");
  if (fromHash) { sessionStorage.setItem("itsmesh-token", fromHash); history.replaceState(null, "", "/"); }
  return sessionStorage.getItem("itsmesh-token");
}

function text(value) { return value === null || value === undefined ? "n/a" : String(value); }

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => { node[k] = v; });
  (children || []).forEach((c) => node.append(c));
  return node;
}

function render(vector) {
  lastUpdate = Date.now();
  const ov = vector.overview;
  document.getElementById("ov-services").textContent = `${ov.services_up} / ${ov.services_total}`;
  document.getElementById("ov-infra").textContent = `${ov.infrastructure_up} / ${ov.infrastructure_total}`;
  document.getElementById("ov-cameras").textContent = text(ov.cameras_streaming);
  document.getElementById("ov-alerts").textContent = text(ov.open_alerts);
  const t = vector.traffic;
  document.getElementById("ov-traffic").textContent = `${t.mode} · ${text(t.rps)} rps`;
  const cards = vector.components.map((c) => {
    const details = Object.entries(c.details).filter(([, v]) => typeof v !== "object" || v === null);
    const dl = el("dl", {}, details.flatMap(([k, v]) => [el("dt", { textContent: k }), el("dd", { textContent: text(v) })]));
    const latency = c.latency_ms === null ? "" : ` · ${c.latency_ms.toFixed(1)} ms`;
    return el("div", { className: `card ${c.status}` }, [
      el("h3", { textContent: c.name }),
      el("span", { className: "status", textContent: c.status + latency }),
      c.error ? el("div", { textContent: c.error }) : "",
      dl,
    ]);
  });
  document.getElementById("components").replaceChildren(...cards);
  const items = (vector.history || []).slice().reverse().map((h) =>
    el("li", { textContent: `${new Date(h.at * 1000).toLocaleTimeString()} ${h.name}: ${text(h.previous)} → ${text(h.current)}` }));
  document.getElementById("history").replaceChildren(...items);
  document.getElementById("meta").textContent =
    `v${vector.meta.version} · generated ${new Date(vector.meta.generated_at * 1000).toLocaleTimeString()}`;
}

function setConnected(value) { connected = value; refreshBanner(); }

function refreshBanner() {
  const stale = !connected || Date.now() - lastUpdate > STALE_AFTER_MS;
  document.getElementById("banner").hidden = !stale;
}

function askForToken(message) {
  const form = document.getElementById("login");
  form.hidden = false;
  document.getElementById("login-error").textContent = message || "";
}

function connectSse(tok) {
  const source = new EventSource(`/api/status/stream?token=${encodeURIComponent(tok)}`);
  source.addEventListener("open", () => setConnected(true));
  source.addEventListener("status", (e) => render(JSON.parse(e.data)));
  source.addEventListener("error", () => { setConnected(false); });
}

function connect() {
  const tok = token();
  if (!tok) { askForToken(); return; }
  fetch("/api/status", { headers: { Authorization: `Bearer ${tok}` } }).then((r) => {
    if (r.status === 401 || r.status === 403) { askForToken("token refused"); return null; }
    return r.ok ? r.json() : null;
  }).then((vector) => {
    if (vector === null) return;
    render(vector);
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws/status?token=${encodeURIComponent(tok)}`);
    let opened = false;
    ws.onopen = () => { opened = true; setConnected(true); };
    ws.onmessage = (e) => render(JSON.parse(e.data));
    ws.onclose = () => {
      setConnected(false);
      if (!opened) { connectSse(tok); } else { setTimeout(connect, 1000); }
    };
  }).catch(() => { setConnected(false); setTimeout(connect, 2000); });
}

document.getElementById("login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("itsmesh-token", document.getElementById("token").value);
  document.getElementById("login").hidden = true;
  connect();
});
setInterval(refreshBanner, 500);
connect();
