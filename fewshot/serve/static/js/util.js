/* fewshot serve page: util. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */

export const API = "/api/v1";
export const TOKEN_KEY = "fewshot-token";
export const PROJECT_KEY = "fewshot-project";
export const EXPORT_EXT = { torchscript: ".pt", onnx: ".onnx", "onnx-int8": ".int8.onnx" };
export const EXPORT_LABEL = { torchscript: "TorchScript", onnx: "ONNX", "onnx-int8": "ONNX INT8" };

export const state = {
  info: null,
  projects: [],
  project: null,        // {id, name, classes: [...]}
  loadSeq: 0,
  webcam: { stream: null, classId: null },
  estimateShown: false,
  previewUrl: null,
  manualThreshold: null, // {pid, value}: the user's own "none of these" threshold where auto is refused
  placeholderProject: null, // the id of the "My project" the page made to start in (projects.js)
};

/* Who reloads the open project after a change: set by projects.js, called by classes.js and uploads.js, so that
   those panels need not import projects.js (which imports them: the page's modules form no circle). */
export const projectHooks = { refresh: async () => {} };

export const $ = (sel, root) => (root || document).querySelector(sel);
export const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
// ------------------------------------------------------------------ small DOM helpers
export function el(tag, props, children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "hidden") node.hidden = Boolean(value);
      else if (key === "disabled") node.disabled = Boolean(value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
  }
  for (const child of children || []) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

export function pct(value, digits = 1) {
  const n = Number(value);
  return Number.isFinite(n) ? n.toFixed(digits) : "–";
}

export function storageGet(store, key) {
  try { return store.getItem(key); } catch (e) { return null; }
}

export function storageSet(store, key, value) {
  try {
    if (value === null || value === undefined) store.removeItem(key);
    else store.setItem(key, String(value));
  } catch (e) { /* private mode: keep going without storage */ }
}
// ------------------------------------------------------------------ status messages
export let statusTimer = null;

export function setStatus(message, kind) {
  const box = $("#status");
  if (!box) return;
  clearTimeout(statusTimer);
  box.textContent = message || "";
  box.classList.toggle("error", kind === "error");
  box.classList.toggle("busy", kind === "busy");
  box.classList.toggle("ok", kind === "ok");
  box.classList.toggle("warn", kind === "warn");
  if (kind === "error") box.setAttribute("role", "alert");
  else box.removeAttribute("role");
}

export function showError(err) {
  const message = err && err.message ? err.message : String(err);
  setStatus(message, "error");
}
