// Rolling-window line charts on a plain <canvas>, fed one point per series per status push.
"use strict";

const PALETTE = ["#1a73e8", "#e8710a", "#188038", "#a142f4", "#d01884", "#12b5cb", "#f9ab00", "#5f6368"];

function colourOf(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

// 0..max rounded up to 1, 2 or 5 times a power of ten, so the gridlines read well.
function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = Math.pow(10, Math.floor(Math.log10(value)));
  for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

class RollingChart {
  // canvas: the <canvas>; legend: a <ul> for names and latest values; options: windowS, format(value).
  constructor(canvas, legend, options) {
    this.canvas = canvas;
    this.legend = legend;
    this.windowS = options.windowS || 300;
    this.format = options.format || ((v) => v.toFixed(1));
    this.axisFormat = options.axisFormat || ((v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)));
    this.series = new Map(); // name -> [[t, value|null], ...]
  }

  // values: {name: number|null}; a null is a gap (the source did not answer), never a zero.
  push(t, values) {
    for (const [name, value] of Object.entries(values)) {
      if (!this.series.has(name)) this.series.set(name, []);
      this.series.get(name).push([t, value === undefined ? null : value]);
    }
    for (const [name, points] of this.series) {
      if (!(name in values)) points.push([t, null]);
      while (points.length && points[0][0] < t - this.windowS) points.shift();
      if (points.every(([, v]) => v === null)) this.series.delete(name);
    }
    this.now = t;
    this.draw();
    this.drawLegend();
  }

  latest(name) {
    const points = this.series.get(name) || [];
    return points.length ? points[points.length - 1][1] : null;
  }

  draw() {
    const ratio = window.devicePixelRatio || 1;
    const width = this.canvas.clientWidth || 300;
    const height = this.canvas.clientHeight || 140;
    if (this.canvas.width !== width * ratio) this.canvas.width = width * ratio;
    if (this.canvas.height !== height * ratio) this.canvas.height = height * ratio;
    const ctx = this.canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const left = 44, right = 6, top = 6, bottom = 18;
    const plotW = width - left - right, plotH = height - top - bottom;
    let max = 0;
    for (const points of this.series.values()) for (const [, v] of points) if (v !== null && v > max) max = v;
    max = niceMax(max);
    ctx.font = "11px system-ui, sans-serif";
    ctx.fillStyle = "#5b6570";
    ctx.strokeStyle = "#e3e6ea";
    ctx.lineWidth = 1;
    for (let i = 0; i <= 2; i++) {
      const y = top + plotH - (plotH * i) / 2;
      ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(left + plotW, y); ctx.stroke();
      ctx.textAlign = "right"; ctx.textBaseline = "middle";
      ctx.fillText(this.axisFormat((max * i) / 2), left - 4, y);
    }
    ctx.textAlign = "center"; ctx.textBaseline = "top";
    const minutes = Math.round(this.windowS / 60);
    ctx.fillText(`−${minutes} min`, left + 18, top + plotH + 4);
    ctx.fillText("now", left + plotW - 12, top + plotH + 4);
    const now = this.now || 0;
    const x = (t) => left + plotW - ((now - t) / this.windowS) * plotW;
    const y = (v) => top + plotH - (v / max) * plotH;
    for (const [name, points] of this.series) {
      ctx.strokeStyle = colourOf(name);
      ctx.lineWidth = 2;
      ctx.beginPath();
      let pen = false;
      for (const [t, v] of points) {
        if (v === null) { pen = false; continue; }
        if (pen) ctx.lineTo(x(t), y(v)); else ctx.moveTo(x(t), y(v));
        pen = true;
      }
      ctx.stroke();
    }
  }

  drawLegend() {
    const items = [...this.series.keys()].sort().map((name) => {
      const li = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colourOf(name);
      const value = this.latest(name);
      const label = document.createElement("span");
      label.textContent = `${name} ${value === null ? "n/a" : this.format(value)}`;
      li.dataset.series = name;
      li.dataset.value = value === null ? "" : String(value);
      li.append(swatch, label);
      return li;
    });
    if (!items.length) {
      const li = document.createElement("li");
      li.className = "muted";
      li.textContent = "no data yet";
      items.push(li);
    }
    this.legend.replaceChildren(...items);
  }
}

window.RollingChart = RollingChart;
