// velora review: one example at a time, a decision per key press, each saved by the server before it is shown as
// saved. The undo stack (this tab's decision ids) lives in sessionStorage, so a reload keeps it.
"use strict";

const $ = (id) => document.getElementById(id);
const LABEL_KEYS = { "1": "entailment", "2": "contradiction", "3": "neutral" };
const UNDO_KEY = "velora-review-undo:" + location.host;
let current = null;        // the example shown
let failed = null;         // the last decision that did not reach the server: retried with the same id
let busy = false;

function setBusy(value) {
  busy = value;
  document.body.dataset.state = value ? "busy" : "ready";
}

function undoStack() {
  try { return JSON.parse(sessionStorage.getItem(UNDO_KEY) || "[]"); } catch (e) { return []; }
}

function saveUndoStack(stack) { sessionStorage.setItem(UNDO_KEY, JSON.stringify(stack.slice(-500))); }

function newId() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID().replace(/-/g, "");
  return Array.from({ length: 32 }, () => Math.floor(Math.random() * 16).toString(16)).join("");
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new Error("cannot reach the server (is `velora review` still running?); nothing was saved: press the " +
                    "key again once it is back");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
    throw new Error(detail || `HTTP ${response.status}`);
  }
  return data;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function renderSummary(summary) {
  $("source").textContent = `${summary.source}` + (summary.origin !== summary.source ? ` (from ${summary.origin})` : "");
  $("progress-text").textContent = `${summary.done} done · ${summary.left} left of ${summary.total}`;
  $("progress-fill").style.width = `${summary.total ? (100 * summary.done) / summary.total : 0}%`;
  $("reasons").replaceChildren(...Object.entries(summary.by_reason).map(([reason, counts]) => {
    const li = document.createElement("li");
    li.dataset.reason = reason;
    li.textContent = `${reason.replace(/_/g, " ")}: ${counts.done} done / ${counts.left} left`;
    li.title = counts.why || "";
    return li;
  }));
  $("decisions-file").textContent = summary.decisions_file;
  $("apply-command").textContent = `velora review ${summary.source} --apply`;
  $("shortcuts").textContent = summary.shortcuts.map(([keys, what]) => `${keys}: ${what}`).join(" · ");
  if (!$("reviewer").value) $("reviewer").value = localStorage.getItem("velora-reviewer") || summary.reviewer || "";
}

function renderExample(example) {
  current = example;
  $("finished").hidden = example !== null;
  $("card").hidden = example === null;
  $("edit").hidden = true;
  if (!example) return;
  document.body.dataset.example = example.id;
  $("image").src = `/api/examples/${encodeURIComponent(example.id)}/image`;
  $("where").textContent = `#${example.position} · source row ${example.id}` + (example.split ? ` · ${example.split} split` : "") +
    (example.translated_by ? ` · translated by ${example.translated_by}` : "");
  $("why").textContent = example.why + (example.predicted && example.predicted !== example.label
    ? ` (predicted ${example.predicted})` : "");
  $("why").className = `why ${example.reason}`;
  $("premise").textContent = example.premise || "(none)";
  $("hypothesis").textContent = example.hypothesis;
  for (const name of ["premise", "hypothesis"]) showOriginal(name, example);
  $("label").textContent = example.label;
  const d = example.decision;
  $("decided").textContent = d ? `decided: ${d.action}${d.label ? " → " + d.label : ""}${d.reviewer ? " by " + d.reviewer : ""}` : "";
  $("probs").hidden = !example.probs;
  for (const bar of document.querySelectorAll(".bar")) {
    const p = example.probs ? example.probs[bar.dataset.label] : 0;
    bar.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    bar.querySelector("output").textContent = `${(100 * p).toFixed(1)}%`;
    bar.dataset.value = String(p);
    bar.classList.toggle("given", bar.dataset.label === example.label);
  }
  for (const button of document.querySelectorAll("#actions [data-label]")) {
    button.classList.toggle("current", button.dataset.label === example.label);
  }
}

// A translated row (--translate): the text as the user wrote it, under the English the model scored.
function showOriginal(name, example) {
  const original = example[`${name}_original`];
  const element = $(`${name}-original`);
  element.hidden = !original || original === example[name];
  element.textContent = element.hidden ? "" : `original: ${original}`;
  element.title = example.translated_by ? `translated by ${example.translated_by}` : "";
}

async function loadNext(after) {
  const data = await api(`/api/next${after ? "?after=" + encodeURIComponent(after) : ""}`);
  renderSummary(data.summary);
  renderExample(data.example);
}

function describe(decision) {
  const what = { keep: "kept", relabel: `relabelled → ${decision.label}`, edit: "edited", drop: "dropped",
                 skip: "skipped", undo: "undone" }[decision.action];
  return `Saved: source row ${decision.example} ${what}`;
}

async function decide(action, extra = {}) {
  if (busy || !current) return;
  const body = { example: current.id, action, ...extra, seen: current.decision ? current.decision.id : null,
                 reviewer: $("reviewer").value.trim() || null };
  const same = failed && JSON.stringify({ ...failed, id: undefined }) === JSON.stringify({ ...body, id: undefined });
  body.id = same ? failed.id : newId();
  setBusy(true);
  try {
    const data = await api("/api/decisions", body);
    failed = null;
    showError("");
    saveUndoStack([...undoStack(), data.decision.id]);
    let status = describe(data.decision);
    if (data.overtaken) status += ` (it replaces a decision made meanwhile: ${data.overtaken.action}` +
      `${data.overtaken.reviewer ? " by " + data.overtaken.reviewer : ""})`;
    $("status").textContent = status;
    await loadNext(current.id);
  } catch (e) {
    failed = body;
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

async function undo() {
  if (busy) return;
  const stack = undoStack();
  const last = stack.pop();
  if (!last) { $("status").textContent = "Nothing to undo in this tab"; return; }
  setBusy(true);
  try {
    const data = await api("/api/decisions", { id: newId(), action: "undo", undoes: last });
    saveUndoStack(stack);
    showError("");
    $("status").textContent = `Undone: source row ${data.decision.example} is back to ` +
      (data.example.decision ? data.example.decision.action : "undecided");
    renderSummary(data.summary);
    renderExample(data.example);
  } catch (e) {
    showError(e.message);
  } finally {
    setBusy(false);
  }
}

function relabel(label) {
  return label === current.label ? decide("keep") : decide("relabel", { label });
}

function openEdit() {
  if (!current) return;
  $("edit-premise").value = current.premise;
  $("edit-hypothesis").value = current.hypothesis;
  $("edit-label").value = current.label;
  $("edit").hidden = false;
  $("edit-hypothesis").focus();
}

function saveEdit() {
  $("edit").hidden = true;
  const label = $("edit-label").value;
  return decide("edit", { premise: $("edit-premise").value, hypothesis: $("edit-hypothesis").value,
                          ...(label !== current.label ? { label } : {}) });
}

document.addEventListener("keydown", (event) => {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(event.target.tagName);
  if (!$("edit").hidden && typing) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); saveEdit(); }
    if (event.key === "Escape") { $("edit").hidden = true; event.target.blur(); }
    return;
  }
  if (typing || event.altKey || (event.target.tagName === "BUTTON" && [" ", "Enter"].includes(event.key))) return;
  const key = event.key.toLowerCase();
  if ((key === "z" && event.ctrlKey) || (key === "u" && !event.ctrlKey)) { event.preventDefault(); undo(); return; }
  if (event.ctrlKey || event.metaKey || !current) return;
  const actions = { k: () => decide("keep"), enter: () => decide("keep"), d: () => decide("drop"),
                    s: () => decide("skip"), e: openEdit };
  if (LABEL_KEYS[key]) { event.preventDefault(); relabel(LABEL_KEYS[key]); }
  else if (actions[key]) { event.preventDefault(); actions[key](); }
});

$("actions").addEventListener("click", (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  if (button.dataset.label) relabel(button.dataset.label);
  else if (button.dataset.action === "edit") openEdit();
  else if (button.dataset.action === "undo") undo();
  else decide(button.dataset.action);
});
$("edit").addEventListener("submit", (event) => { event.preventDefault(); saveEdit(); });
$("edit-cancel").addEventListener("click", () => { $("edit").hidden = true; });
$("reviewer").addEventListener("change", () => localStorage.setItem("velora-reviewer", $("reviewer").value.trim()));

setBusy(true);
loadNext(null).catch((e) => showError(e.message)).finally(() => setBusy(false));
