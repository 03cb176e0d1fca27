// The Operations tab: rates, latency quantiles, queue, errors and refusals, and per
// model the class distribution, confidence histogram and input-drift signals. It polls
// /v1/stats (the service's metrics as JSON) and works on the difference between two
// polls, as Prometheus's rate() does.
"use strict";

const POLL_MS = 2000;
let previous = null;
let timer = null;

const samples = (stats, name, where = () => true) =>
  (stats.metrics[name] || []).filter((s) => where(s.labels));
const total = (list) => list.reduce((a, s) => a + s.value, 0);
const INFERENCE = (l) => l.route === "/v1/classify" || l.route === "/v1/detect"
  || /^\/v2\/models\/.*\/infer$/.test(l.route || "");

function delta(name, where) {
  const now = total(samples(previous.now, name, where));
  return now - total(samples(previous.before, name, where));
}

// histogram_quantile over the buckets' increase between the two polls.
function quantile(q, name, where) {
  const byLe = new Map();
  for (const [stats, sign] of [[previous.now, 1], [previous.before, -1]]) {
    for (const s of samples(stats, `${name}_bucket`, where)) {
      const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
      byLe.set(le, (byLe.get(le) || 0) + sign * s.value);
    }
  }
  const buckets = [...byLe].sort((a, b) => a[0] - b[0]);
  const count = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (count <= 0) return null;
  let lower = 0, below = 0;
  for (const [le, n] of buckets) {
    if (n >= q * count) {
      if (le === Infinity) return lower;
      return lower + (le - lower) * ((q * count - below) / Math.max(n - below, 1e-9));
    }
    lower = le; below = n;
  }
  return lower;
}

function tile(label, value) {
  return el("div", { class: "tile" }, el("div", { class: "value" }, value),
    el("div", { class: "label" }, label));
}

const mean = (stats, name, model) => {
  const sum = total(samples(stats, `${name}_sum`, (l) => l.model === model));
  const count = total(samples(stats, `${name}_count`, (l) => l.model === model));
  return count ? sum / count : null;
};

function modelPart(stats, model) {
  const predictions = samples(stats, "ocellus_predictions_total", (l) => l.model === model)
    .sort((a, b) => b.value - a.value);
  const counted = total(predictions) || 1;
  const buckets = samples(stats, "ocellus_prediction_confidence_bucket", (l) => l.model === model)
    .map((s) => [s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), s.value])
    .sort((a, b) => a[0] - b[0]);
  const perBucket = buckets.map(([le, n], i) => [le, n - (i ? buckets[i - 1][1] : 0)]);
  const most = Math.max(1, ...perBucket.map(([, n]) => n));
  const drift = [["mean brightness (0-1)", mean(stats, "ocellus_image_mean_brightness_ratio", model)],
    ["mean width (px)", mean(stats, "ocellus_image_width_pixels", model)],
    ["mean height (px)", mean(stats, "ocellus_image_height_pixels", model)],
    ["mean file size (KiB)", (mean(stats, "ocellus_image_size_bytes", model) ?? NaN) / 1024]];
  return el("article", { class: "card", "data-model": model },
    el("h2", {}, model),
    el("h3", {}, "Predicted classes since start (top 10)"),
    predictions.length ? el("ol", { class: "bars" }, predictions.slice(0, 10).map((p) =>
      el("li", {}, el("span", {}, p.labels.label), el("span", {}, `${p.value} (${pct(p.value / counted)})`),
        el("span", { class: "bar", "aria-hidden": "true" },
          el("span", { style: `width:${(100 * p.value / counted).toFixed(1)}%` })))))
      : el("p", { class: "hint" }, "No predictions yet."),
    el("h3", {}, "Confidence histogram"),
    el("div", { class: "hist", role: "img", "aria-label": `confidence histogram: ${perBucket
      .map(([le, n]) => `${n} up to ${le}`).join(", ")}` },
    perBucket.map(([le, n]) => el("span", { title: `≤ ${le}: ${n}`,
      style: `height:${(100 * n / most).toFixed(1)}%` }))),
    el("div", { class: "axis", "aria-hidden": "true" }, el("span", {}, "score 0"),
      el("span", {}, "1")),
    el("h3", {}, "Input drift signals (since start)"),
    table(["signal", "value"], drift.map(([k, v]) => [k, v === null || Number.isNaN(v) ? "–"
      : v.toFixed(k.includes("brightness") ? 3 : 1)])));
}

function renderStats() {
  const seconds = (previous.now.time - previous.before.time) || 1;
  const stats = previous.now;
  const requests = delta("ocellus_http_requests_total", INFERENCE);
  // 503s are refusals (overloaded, timeout, loading), counted under "refused" instead.
  const errors = delta("ocellus_http_requests_total",
    (l) => INFERENCE(l) && Number(l.status) >= 500 && Number(l.status) !== 503);
  const p50 = quantile(0.5, "ocellus_http_request_duration_seconds", INFERENCE);
  const p99 = quantile(0.99, "ocellus_http_request_duration_seconds", INFERENCE);
  const ms = (x) => (x === null ? "–" : `${(1000 * x).toFixed(0)} ms`);
  const rejected = samples(stats, "ocellus_rejected_requests_total").map((s) => [s.labels.reason,
    s.value - total(samples(previous.before, "ocellus_rejected_requests_total",
      (l) => l.reason === s.labels.reason))]);
  $("#window").textContent = seconds.toFixed(0);
  $("#tiles").replaceChildren(
    tile("inference requests/s", (requests / seconds).toFixed(1)),
    tile("inference requests since start",
      total(samples(stats, "ocellus_http_requests_total", INFERENCE))),
    tile("latency p50", ms(p50)), tile("latency p99", ms(p99)),
    tile("in flight", total(samples(stats, "ocellus_requests_in_flight"))),
    tile("queued images", total(samples(stats, "ocellus_queue_depth"))),
    tile("server errors/s (5xx but 503)", (errors / seconds).toFixed(2)),
    tile("refused/s", (rejected.reduce((a, [, n]) => a + n, 0) / seconds).toFixed(2)),
    ...rejected.filter(([, n]) => n > 0).map(([reason, n]) =>
      tile(`refused: ${reason}/s`, (n / seconds).toFixed(2))));
  const names = [...new Set(samples(stats, "ocellus_model_info").map((s) => s.labels.model))];
  $("#ops-models").replaceChildren(...names.map((m) => modelPart(stats, m)));
}

async function pollStats() {
  clearTimeout(timer);
  if ($("#ops").hidden) return;
  const r = await api("/v1/stats");
  if (!r.ok) showError("#ops-error", r.error);
  else {
    showError("#ops-error", "");
    previous = { before: previous ? previous.now : r.data, now: r.data };
    renderStats();
  }
  timer = setTimeout(pollStats, POLL_MS);
}
