// The Ocellus console: try the models, read about them, watch the service.
// Plain JavaScript, no build step and nothing fetched from elsewhere: every call
// goes to this service's own API (/v1/models, /v1/classify, /v1/detect, /v1/stats).
"use strict";

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : String(c));
  return node;
};
const pct = (x) => `${(100 * x).toFixed(1)}%`;

// A table whose first column heads its rows; `head` null: no header row.
function table(head, rows) {
  const cell = (c, i) => (i === 0 ? el("th", { scope: "row" }, c)
    : el("td", /^-?[0-9.]+%?$/.test(String(c)) ? { class: "num" } : {}, c));
  return el("div", { class: "scroll" }, el("table", {},
    head ? el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))) : "",
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map(cell))))));
}

// ---- credentials and the API ----------------------------------------------------------
const keys = { api: "ocellus.apiKey", admin: "ocellus.adminToken" };
for (const [name, id] of [["api", "#api-key"], ["admin", "#admin-token"]]) {
  const input = $(id);
  input.value = sessionStorage.getItem(keys[name]) || "";
  input.addEventListener("change", () => {
    sessionStorage.setItem(keys[name], input.value.trim());
    loadModels();
  });
}

// Plain words first, the service's own message after.
const PLAIN = {
  bad_image: "This file could not be read as an image.",
  unsupported_media_type: "This kind of file is not supported (send JPEG, PNG, WebP, BMP, TIFF or GIF).",
  too_large: "This is too large for the service.",
  too_many_files: "Too many files in one request.",
  unauthorized: "An API key is needed: enter it under Keys.",
  forbidden: "The admin token is missing or wrong: enter it under Keys.",
  overloaded: "The service is busy; try again in a moment.",
  timeout: "The service took too long; try again in a moment.",
  loading: "The models are still loading; try again in a moment.",
  model_not_found: "That model is not served.",
  invalid_request: "A setting is not valid.",
};

function explain(status, body) {
  const err = body && body.error;
  const code = err && typeof err === "object" ? err.code : "";
  const message = err && typeof err === "object" ? err.message : (err || `HTTP ${status}`);
  return `${PLAIN[code] || `The service answered ${status}.`} (${message})`;
}

async function api(path, { method = "GET", body, admin = false } = {}) {
  const headers = {};
  const key = sessionStorage.getItem(keys.api);
  const token = sessionStorage.getItem(keys.admin);
  if (admin && token) headers.Authorization = `Bearer ${token}`;
  else if (key) headers["X-API-Key"] = key;
  const started = performance.now();
  let response;
  try {
    response = await fetch(path, { method, body, headers });
  } catch (exc) {
    return { ok: false, status: 0, ms: 0, error: `The service cannot be reached (${exc.message}).` };
  }
  const ms = performance.now() - started;
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : null;
  const id = response.headers.get("x-request-id");  // to quote, or to find in the logs
  return response.ok ? { ok: true, status: response.status, ms, data, id }
    : { ok: false, status: response.status, ms, data, id,
        error: `${explain(response.status, data)}${id ? ` Request ID: ${id}.` : ""}` };
}

function showError(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

// ---- tabs -----------------------------------------------------------------------------
const tabs = [...document.querySelectorAll("[role=tab]")];
function select(tab) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", on);
    t.tabIndex = on ? 0 : -1;
    $(`#${t.getAttribute("aria-controls")}`).hidden = !on;
  }
  tab.focus();
  if (tab.id === "tab-models") loadModels();
  if (tab.id === "tab-ops") pollStats();
}
tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => select(tab));
  tab.addEventListener("keydown", (e) => {
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[e.key];
    if (to !== undefined) {
      e.preventDefault();
      select(tabs[(to + tabs.length) % tabs.length]);
    }
  });
});

// ---- models ---------------------------------------------------------------------------
let models = [];
async function loadModels() {
  const r = await api("/v1/models", { admin: true });
  if (!r.ok) {
    showError("#try-error", r.error);
    showError("#models-error", r.error);
    return;
  }
  showError("#try-error", "");
  showError("#models-error", "");
  models = r.data.models;
  const picker = $("#model");
  const chosen = picker.value;
  picker.replaceChildren(...models.map((m) => el("option", { value: m.name },
    `${m.name} (${m.task})`)));
  if (models.some((m) => m.name === chosen)) picker.value = chosen;
  showOptions();
  renderModels(r.data);
}

function currentModel() {
  return models.find((m) => m.name === $("#model").value);
}
function showOptions() {
  const task = (currentModel() || {}).task;
  $("#classify-options").hidden = task !== "classify";
  $("#detect-options").hidden = task !== "detect";
}
$("#model").addEventListener("change", showOptions);

// ---- try it ---------------------------------------------------------------------------
let files = [];
function choose(list) {
  files = [...list];
  $("#chosen").textContent = files.length
    ? `${files.length} file${files.length > 1 ? "s" : ""}: ${files.map((f) => f.name).join(", ")}`
    : "";
}
$("#files").addEventListener("change", (e) => choose(e.target.files));
const drop = $("#drop");
drop.addEventListener("keydown", (e) => {
  if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("#files").click(); }
});
for (const type of ["dragenter", "dragover"]) {
  drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
}
for (const type of ["dragleave", "drop"]) {
  drop.addEventListener(type, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (e) => { e.preventDefault(); choose(e.dataTransfer.files); });

const COLORS = (id) => `hsl(${(id * 67) % 360} 85% 45%)`;
const hidden = new Set();  // class ids not drawn
const shown = [];  // object URLs of the photos on the page, revoked when replaced
const drawn = [];  // redraw functions of the detection cards

function query(model) {
  const q = new URLSearchParams({ model: model.name });
  if (model.task === "classify") q.set("top_k", $("#top-k").value || "5");
  else {
    q.set("conf", $("#conf").value || "0.25");
    q.set("iou", $("#iou").value || "0.45");
    const classes = $("#classes").value.trim();
    if (classes) q.set("classes", classes);
  }
  return q;
}

function classifyCard(card, result) {
  card.append(el("ol", { class: "bars", "aria-label": "top classes" },
    result.predictions.map((p) => el("li", {},
      el("span", { class: "label" }, p.label), el("span", {}, pct(p.score)),
      el("span", { class: "bar", "aria-hidden": "true" },
        el("span", { style: `width:${(100 * p.score).toFixed(1)}%` }))))));
}

function detectCard(card, img, result) {
  const canvas = el("canvas", { "aria-label": `${result.detections.length} boxes drawn` });
  img.after(canvas);
  const list = el("ul", { class: "detections" });
  card.append(list);
  const draw = () => {
    const w = img.clientWidth, h = img.clientHeight;
    if (!w) return;
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    const sx = w / result.width, sy = h / result.height;
    ctx.lineWidth = 2; ctx.font = "12px system-ui, sans-serif";
    const shown = result.detections.filter((d) => !hidden.has(d.class_id));
    for (const d of shown.slice().reverse()) {  // the best last: its label on top
      const [x1, y1, x2, y2] = d.box;
      ctx.strokeStyle = ctx.fillStyle = COLORS(d.class_id);
      ctx.strokeRect(x1 * sx, y1 * sy, (x2 - x1) * sx, (y2 - y1) * sy);
      const text = `${d.label} ${pct(d.score)}`;
      const tw = ctx.measureText(text).width + 6;
      ctx.fillRect(x1 * sx, Math.max(0, y1 * sy - 16), tw, 16);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, x1 * sx + 3, Math.max(12, y1 * sy - 4));
    }
    canvas.dataset.boxes = String(shown.length);
    list.replaceChildren(...shown.map((d) => el("li", {}, `${d.label} ${pct(d.score)}`)));
  };
  img.addEventListener("load", draw);
  new ResizeObserver(draw).observe(img);
  drawn.push(draw);
}

function renderToggles(results) {
  const seen = new Map();
  for (const r of results) for (const d of r.detections || []) seen.set(d.class_id, d.label);
  $("#class-toggles").hidden = seen.size === 0;
  $("#toggles").replaceChildren(...[...seen].sort((a, b) => a[0] - b[0]).map(([id, label]) => {
    const box = el("input", { type: "checkbox", id: `show-${id}` });
    box.checked = !hidden.has(id);
    box.addEventListener("change", () => {
      if (box.checked) hidden.delete(id); else hidden.add(id);
      drawn.forEach((f) => f());
    });
    return el("label", { for: `show-${id}`, style: `color:${COLORS(id)}` }, box, ` ${label}`);
  }));
}

async function runOne(file, model, q) {
  const form = new FormData();
  form.append("file", file, file.name);
  const r = await api(`${model.task === "classify" ? "/v1/classify" : "/v1/detect"}?${q}`,
                      { method: "POST", body: form });
  const img = el("img", { src: URL.createObjectURL(file), alt: file.name });
  shown.push(img.src);
  const card = el("article", { class: "card", "data-file": file.name },
    el("h2", {}, file.name), el("div", { class: "stage" }, img));
  if (!r.ok || !r.data) {
    img.remove();
    card.append(el("p", { class: "error", role: "alert" },
                   r.error || `The service answered ${r.status} without a JSON body.`));
  } else {
    const result = r.data.results[0];
    card.append(el("p", { class: "meta" },
      `${result.width}×${result.height} px · ${Math.round(r.ms)} ms · ${r.data.model.name}, version ${r.data.model.version} · request ${r.id}`));
    if (model.task === "classify") classifyCard(card, result); else detectCard(card, img, result);
  }
  card.dataset.latencyMs = String(Math.round(r.ms));
  if (r.id) card.dataset.requestId = r.id;
  return { card, result: r.ok && r.data ? r.data.results[0] : null };
}

$("#try-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const model = currentModel();
  if (!files.length || !model) {
    showError("#try-error", files.length ? "No model is loaded yet." : "Choose one or more images first.");
    return;
  }
  showError("#try-error", "");
  $("#run").disabled = true;
  drawn.length = 0;
  shown.splice(0).forEach((url) => URL.revokeObjectURL(url));
  const q = query(model);
  const results = $("#results");
  results.replaceChildren();
  const done = [];
  try {
    for (let i = 0; i < files.length; i += 4) {  // four requests at a time
      const batch = await Promise.all(files.slice(i, i + 4).map((f) => runOne(f, model, q)));
      for (const b of batch) { results.append(b.card); done.push(b.result); }
    }
    renderToggles(done.filter(Boolean));
  } catch (exc) {
    showError("#try-error", `Something went wrong showing the answer (${exc.message}).`);
  } finally {
    $("#run").disabled = false;
  }
});

// models.js and ops.js (deferred, after this file) define renderModels and pollStats.
document.addEventListener("DOMContentLoaded", loadModels);
