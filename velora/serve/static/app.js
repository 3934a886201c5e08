// The velora page: pick/drop/paste an image, type premise + hypothesis, POST /check, draw the three probabilities.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "velora.apiKey";
let imageFile = null;

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function describeError(status, body) {
  if (Array.isArray(body && body.detail)) {  // FastAPI 422: [{loc, msg}, ...]
    return body.detail.map((e) => `${e.loc.filter((p) => p !== "body").join(".")}: ${e.msg}`).join("\n");
  }
  if (body && body.detail) return body.detail;
  return `the server answered ${status}`;
}

function setImage(file) {
  if (!file) return;
  imageFile = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.onerror = () => {  // not something the browser can show; the server will say whether it can read it
    preview.hidden = true;
    $("drop-hint").hidden = false;
    $("drop-hint").textContent = "No preview for this file";
  };
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  $("file-name").textContent = `${file.name || "pasted image"} · ${(file.size / 1024).toFixed(1)} KB`;
  showError("");
}

function showResult(result) {
  $("relation").textContent = result.relation;
  $("score").textContent = `score ${result.score.toFixed(3)}`;
  for (const bar of document.querySelectorAll(".bar")) {
    const p = result.probs[bar.dataset.label];
    bar.dataset.value = String(p);
    bar.classList.toggle("top", bar.dataset.label === result.relation);
    bar.querySelector(".fill").style.width = `${(100 * p).toFixed(1)}%`;
    bar.querySelector("output").textContent = `${(100 * p).toFixed(1)}%`;
  }
  $("meta").textContent = `adapter ${result.adapter} · ${result.latency_ms.toFixed(0)} ms on the server` +
    ` · scored in a batch of ${result.batch_size}`;
  $("result").hidden = false;
}

async function check(event) {
  event.preventDefault();
  if (!imageFile) return showError("image: choose, drop or paste an image first");
  if (!$("hypothesis").value.trim()) return showError("hypothesis: type the statement to check");
  const form = new FormData();
  form.append("image", imageFile, imageFile.name || "pasted.png");
  if ($("premise").value.trim()) form.append("premise", $("premise").value);
  form.append("hypothesis", $("hypothesis").value);
  form.append("adapter", $("adapter").value);
  const headers = {};
  const key = $("key").value.trim();
  if (key) {
    headers["X-API-Key"] = key;
    localStorage.setItem(KEY_STORE, key);
  }
  $("check").disabled = true;
  showError("");
  try {
    const response = await fetch("/check", { method: "POST", body: form, headers });
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      $("result").hidden = true;
      return showError(describeError(response.status, body));
    }
    showResult(body);
  } catch (err) {
    showError(`could not reach the server (${err.message})`);
  } finally {
    $("check").disabled = false;
  }
}

async function loadInfo() {
  const response = await fetch("/info");
  if (!response.ok) {
    $("model").textContent = "server not ready: reload in a moment";
    return;
  }
  const info = await response.json();
  $("model").textContent = `model ${info.model} · max ${info.limits.max_upload_mb} MB per image`;
  const select = $("adapter");
  select.replaceChildren(...info.adapters.map((name) => {
    const label = name === info.default_adapter ? `${name} (default)` : name === "base" ? "base (adapters off)" : name;
    return new Option(label, name);
  }));
  $("key-row").hidden = !info.auth;
}

function initKey() {
  // ?key=... fills the field once and leaves the address bar (and history) without it
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get("key");
  if (fromUrl) {
    localStorage.setItem(KEY_STORE, fromUrl);
    url.searchParams.delete("key");
    history.replaceState(null, "", url);
  }
  $("key").value = fromUrl || localStorage.getItem(KEY_STORE) || "";
}

function initImageInputs() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => setImage(e.target.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    setImage(e.dataTransfer.files[0]);
  });
  document.addEventListener("paste", (e) => {
    const item = [...e.clipboardData.items].find((i) => i.type.startsWith("image/"));
    if (item) setImage(item.getAsFile());
  });
}

initKey();
initImageInputs();
$("form").addEventListener("submit", check);
loadInfo();
