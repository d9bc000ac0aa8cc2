/* fewshot serve page: info. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { api } from "./api.js";
import { $, $$, API, EXPORT_LABEL, state } from "./util.js";

// ------------------------------------------------------------------ model info
export async function loadInfo() {
  const info = await api(`${API}/info`);
  state.info = info;
  const parts = [];
  if (info.model) parts.push(`Model: ${info.model}`);
  if (info.head) parts.push(`head: ${info.head}`);
  if (info.image_size) parts.push(`images resized to ${info.image_size} × ${info.image_size} px`);
  $("#model-info").textContent = parts.join(" · ") || "Model information unavailable";

  const explain = $("#explain");
  const note = $("#explain-note");
  if (info.explainable === false) {
    explain.checked = false;
    explain.disabled = true;
    note.textContent = `(not available: ${info.explain_note || "this model cannot be explained"})`;
    note.hidden = false;
  } else {
    explain.disabled = false;
    note.hidden = true;
  }
  $("#int8-note").textContent = info.int8_note || "";
  $("#adapt-row").hidden = info.adaptable === false;
  const single = $("#single-image-note");
  single.textContent = info.single_image_note ? `Note: ${info.single_image_note}.` : "";
  single.hidden = !info.single_image_note;

  const formats = Array.isArray(info.export_formats) ? info.export_formats : [];
  const exportNote = $("#export-note");
  $$(".export").forEach((button) => {
    const ok = info.exportable !== false && formats.includes(button.dataset.format);
    button.hidden = !ok;
    button.disabled = !ok;
  });
  if (info.exportable === false) {
    exportNote.textContent = `Export is not available: ${info.export_note || "this model cannot be exported"}.`;
    exportNote.hidden = false;
  } else {
    const missing = Object.keys(EXPORT_LABEL).filter((f) => !formats.includes(f));
    if (missing.length) {
      exportNote.textContent = `Not available on this server: ${missing.map((f) => EXPORT_LABEL[f]).join(", ")} ` +
        "(the server lacks the package it needs).";
      exportNote.hidden = false;
    } else {
      exportNote.hidden = true;
    }
  }
}
