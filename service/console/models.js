// The Models tab: what each served model is, how well it was measured, where it came
// from, and (with the admin token) its registry history, reload and rollback.
"use strict";

const fmt = (v) => (typeof v === "number" ? (Number.isInteger(v) ? v : v.toFixed(4))
  : typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));

// One set of scores: its numbers, its per-class table, its confusion matrix.
function scoresPart(scores, labels) {
  const parts = [];
  const scalars = Object.entries(scores).filter(([, v]) => typeof v !== "object");
  if (scalars.length) parts.push(table(["metric", "value"], scalars.map(([k, v]) => [k, fmt(v)])));
  const perClass = scores.per_class;
  if (perClass && typeof perClass === "object") {
    const cols = [...new Set(Object.values(perClass).flatMap((v) => Object.keys(v || {})))];
    parts.push(el("h4", {}, "Per class"),
      table(["class", ...cols], Object.entries(perClass).map(([label, v]) =>
        [label, ...cols.map((c) => fmt((v || {})[c] ?? ""))])));
  }
  const confusion = scores.confusion_matrix;
  if (Array.isArray(confusion) && confusion.length <= 50) {
    const names = scores.labels || labels || confusion.map((_, i) => String(i));
    parts.push(el("h4", {}, "Confusion matrix (rows: true class; columns: predicted)"),
      table(["", ...names], confusion.map((row, i) => [names[i], ...row.map(String)])));
  }
  return parts;
}

// The manifest's metrics: numbers at the top, and each split's scores (``val``).
function metricsPart(manifest) {
  const metrics = manifest.metrics || {};
  const parts = [el("h3", {}, "Training metrics")];
  if (!Object.keys(metrics).length) parts.push(el("p", { class: "hint" }, "None recorded."));
  parts.push(...scoresPart(metrics, manifest.labels));
  for (const [split, scores] of Object.entries(metrics)) {
    if (scores && typeof scores === "object" && !Array.isArray(scores) && split !== "per_class") {
      parts.push(el("details", { open: "" }, el("summary", {}, `${split} split`),
        ...scoresPart(scores, manifest.labels)));
    }
  }
  return parts;
}

function provenancePart(manifest) {
  const rows = Object.entries({ ...(manifest.provenance || {}),
    created_at: manifest.created_at, dataset: manifest.dataset })
    .filter(([, v]) => v !== undefined && v !== null);
  return [el("h3", {}, "Provenance"), table(["field", "value"], rows.map(([k, v]) => [k, fmt(v)]))];
}

async function registryPart(model, box) {
  const token = sessionStorage.getItem(keys.admin);
  if (!token) {
    box.replaceChildren(el("p", { class: "hint" },
      "Enter the admin token under Keys to see the registry history, reload and roll back."));
    return;
  }
  const r = await api(`/v1/models/${encodeURIComponent(model.name)}/history`, { admin: true });
  if (!r.ok) {
    box.replaceChildren(el("p", { class: r.status === 409 ? "hint" : "error" },
      r.status === 409 ? "Not served from a model registry: no history." : r.error));
    return;
  }
  const h = r.data;
  const status = el("p", { role: "status" });
  const buttons = [];
  const act = (what) => async () => {
    if (what === "rollback" && !confirm(`Roll ${model.name} back to the version before ${h.current}?`)) return;
    buttons.forEach((b) => { b.disabled = true; });  // one action at a time
    status.textContent = `${what}…`;
    const res = await api(`/v1/models/${encodeURIComponent(model.name)}/${what}`,
                          { method: "POST", admin: true });
    status.textContent = res.ok ? `${what}: now serving version ${res.data.version} (${res.data.status})`
      : res.error;
    if (res.ok) loadModels(); else buttons.forEach((b) => { b.disabled = false; });
  };
  buttons.push(el("button", { type: "button", onclick: act("reload") }, "Reload"),
               el("button", { type: "button", onclick: act("rollback") }, "Roll back"));
  box.replaceChildren(
    el("p", {}, `Current: ${h.current ?? "none"} · versions: ${h.versions.join(", ") || "none"}`),
    table(["when", "action", "version", "reason"], h.events.slice().reverse().map((e) =>
      [e.at || "", e.action || "", e.version || "", e.reason || ""])),
    el("div", { class: "actions" }, buttons),
    status);
}

function renderModels(data) {
  const list = $("#model-list");
  list.replaceChildren(...data.models.map((m) => {
    const manifest = m.manifest || {};
    const labels = manifest.labels || [];
    const registry = el("div", {}, el("p", { class: "hint" }, "…"));
    const drop = m.accuracy_drop || m.agreement_with_fp32;
    const card = el("article", { class: "card", "data-model": m.name },
      el("h2", {}, `${m.name} `, el("small", {}, `version ${m.version}`)),
      table(null, [["task", m.task], ["backend", m.backend], ["precision", m.precision],
                      ["device", m.device], ["loaded", m.loaded_at],
                      ...(drop ? [[m.accuracy_drop ? "accuracy drop vs fp32" : "agreement with fp32",
                                   fmt(drop)]] : [])]),
      el("details", {}, el("summary", {}, `Labels (${labels.length})`),
        el("p", {}, labels.map((l, i) => `${i} ${l}`).join(" · "))),
      ...metricsPart(manifest), ...provenancePart(manifest),
      el("h3", {}, "Registry"), registry);
    registryPart(m, registry);
    return card;
  }), ...(data.refused || []).map((r) => el("article", { class: "card" },
    el("h2", {}, `${r.name} `, el("small", {}, "refused")), el("p", { class: "error" }, r.reason))));
}
