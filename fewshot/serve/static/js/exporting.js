/* fewshot serve page: exporting. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { api, busy } from "./api.js";
import { $, $$, API, EXPORT_EXT, EXPORT_LABEL, el, setStatus, showError, state } from "./util.js";

// ------------------------------------------------------------------ export
export function filenameFrom(disposition, fallback) {
  if (!disposition) return fallback;
  const star = /filename\*\s*=\s*([^']*)'[^']*'([^;]+)/i.exec(disposition);
  if (star) {
    try {
      return decodeURIComponent(star[2].trim().replace(/^"|"$/g, ""));
    } catch (e) { /* fall through */ }
  }
  const plain = /filename\s*=\s*("([^"]*)"|[^;]+)/i.exec(disposition);
  if (plain) {
    const name = (plain[2] !== undefined ? plain[2] : plain[1]).trim();
    if (name) return name;
  }
  return fallback;
}

export async function onExport(event) {
  const button = event.currentTarget;
  const format = button.dataset.format;
  if (!state.project || !format) return;
  const fallback = "model" + (EXPORT_EXT[format] || "." + format);
  setStatus(`Exporting ${EXPORT_LABEL[format] || format}… this can take a minute.`, "busy");
  try {
    await busy($$(".export"), async () => {
      const response = await api(`${API}/projects/${state.project.id}/export?format=${encodeURIComponent(format)}`, { raw: true });
      const name = filenameFrom(response.headers.get("Content-Disposition"), fallback);
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: name, className: "visually-hidden" });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60000);
      setStatus(`Downloaded ${name} (${(blob.size / 1e6).toFixed(1)} MB).`, "ok");
    });
  } catch (err) {
    showError(err);
  }
}
