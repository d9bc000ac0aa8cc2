/* fewshot serve page: predict. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { api, busy } from "./api.js";
import { $, API, el, setStatus, showError, state } from "./util.js";

// ------------------------------------------------------------------ try it (predict)
export function clearPrediction() {
  $("#prediction").hidden = true;
  $("#prediction-label").textContent = "";
  $("#unknown-note").hidden = true;
  $("#probabilities").replaceChildren();
  const heat = $("#heatmap");
  heat.removeAttribute("src");
  $("#heatmap-figure").hidden = true;
  const preview = $("#test-preview");
  preview.removeAttribute("src");
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
}

export let predicting = false;

export async function predictFile(files) {
  if (!state.project || predicting) return;
  const file = files[0];
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    setStatus(`${file.name} is not an image.`, "error");
    return;
  }
  const pid = state.project.id;
  const explainBox = $("#explain");
  const explain = explainBox.checked && !explainBox.disabled;
  const zone = $("#test-drop");
  predicting = true;
  showPreview(file);
  zone.setAttribute("aria-disabled", "true");
  zone.classList.add("working");
  setStatus(`Looking at ${file.name}${files.length > 1 ? " (only the first dropped image is used)" : ""}…`, "busy");
  try {
    await busy([explainBox], async () => {
      const form = new FormData();
      form.append("files", file, file.name);
      const unknown = state.manualThreshold && state.manualThreshold.pid === pid ? state.manualThreshold.value : "auto";
      const result = await api(`${API}/projects/${pid}/predict?explain=${explain ? "true" : "false"}` +
        `&unknown=${encodeURIComponent(unknown)}`, { method: "POST", form });
      const prediction = result && result.predictions && result.predictions[0];
      if (!prediction) throw new Error("The server returned no prediction.");
      if (!state.project || state.project.id !== pid) return;
      renderPrediction(prediction);
      setStatus(`Prediction for ${file.name}: ${prediction.unknown ? NONE_OF_THESE : prediction.predicted}.`, "ok");
    });
  } catch (err) {
    $("#prediction").classList.remove("pending");
    showError(err);
  } finally {
    predicting = false;
    zone.removeAttribute("aria-disabled");
    zone.classList.remove("working");
  }
}

/* Shows the chosen image at once; the answer fills in when the server replies. */
export function showPreview(file) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = URL.createObjectURL(file);
  const preview = $("#test-preview");
  preview.src = state.previewUrl;
  preview.alt = `Your image: ${file.name}`;
  $("#prediction-label").textContent = "";
  $("#probabilities").replaceChildren();
  $("#heatmap").removeAttribute("src");
  $("#heatmap-figure").hidden = true;
  const box = $("#prediction");
  box.classList.add("pending");
  box.hidden = false;
}

const NONE_OF_THESE = "none of these";

/* The answer line: the class, or "none of these" (with the closest class) when the image's unknown score is past
   the project's threshold; the note says why there is no threshold (fewer than three classes). */
function renderAnswer(prediction) {
  const entries = Object.entries(prediction.probabilities || {}).sort((a, b) => b[1] - a[1]);
  const closest = entries.length ? entries[0][0] : "";
  $("#prediction-label").textContent = prediction.unknown ? NONE_OF_THESE : prediction.predicted;
  const note = $("#unknown-note");
  if (prediction.unknown) {
    note.textContent = `It is unlike every class you added (score ${Number(prediction.unknown_score).toFixed(3)} > ` +
      `threshold ${Number(prediction.unknown_threshold).toFixed(3)}); the closest is ${closest}.`;
  } else if (prediction.unknown_note) {
    note.textContent = `“None of these” is not available yet: ${prediction.unknown_note}`;
  } else {
    note.textContent = "";
  }
  note.hidden = !note.textContent;
  offerThreshold(prediction);
  $("#prediction").classList.toggle("unknown", Boolean(prediction.unknown));
  return prediction.unknown ? null : prediction.predicted;
}

/* Where the automatic threshold is refused (fewer than three classes), the page offers one of the user's own: the
   image's score is shown so a number can be chosen against it; it applies to this project's next predictions. */
function offerThreshold(prediction) {
  const form = $("#manual-threshold");
  const score = Number(prediction.unknown_score);
  const own = state.manualThreshold && state.project && state.manualThreshold.pid === state.project.id;
  form.hidden = !(prediction.unknown_note || own) || !Number.isFinite(score);
  if (form.hidden) return;
  const input = $("#threshold-input");
  input.placeholder = `this image scores ${score.toFixed(3)}`;
  if (own) input.value = String(state.manualThreshold.value);
}

export function onManualThreshold(event) {
  event.preventDefault();
  const value = Number($("#threshold-input").value);
  if (!state.project || !Number.isFinite(value)) {
    setStatus("Give the threshold as a number (an image scoring above it is answered “none of these”).", "error");
    return;
  }
  state.manualThreshold = { pid: state.project.id, value };
  setStatus(`Images scoring above ${value} are now answered “none of these” (your threshold). Try an image.`, "ok");
}

export function renderPrediction(prediction) {
  $("#prediction").classList.remove("pending");
  const top = renderAnswer(prediction);

  const bars = $("#probabilities");
  bars.replaceChildren();
  const entries = Object.entries(prediction.probabilities || {}).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of entries) {
    const percent = Math.max(0, Math.min(100, Number(p) * 100));
    const bar = el("div", { className: "prob-bar" });
    bar.style.width = `${percent.toFixed(1)}%`;
    const row = el("div", { className: "prob-row" + (name === top ? " top" : ""), role: "listitem" }, [
      el("span", { className: "prob-name", text: name }),
      el("div", { className: "prob-track", "aria-hidden": "true" }, [bar]),
      el("span", { className: "prob-value", text: `${percent.toFixed(1)} %` }),
    ]);
    bars.append(row);
  }

  const heat = $("#heatmap");
  const figure = $("#heatmap-figure");
  if (typeof prediction.heatmap === "string" && prediction.heatmap.startsWith("data:image/")) {
    heat.src = prediction.heatmap;
    figure.hidden = false;
  } else {
    heat.removeAttribute("src");
    figure.hidden = true;
  }
  $("#prediction").hidden = false;
}
