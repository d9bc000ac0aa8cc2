/* fewshot serve page: main. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { onTokenSubmit, takeTokenFromAddress } from "./auth.js";
import { onAddClass, wireDropZone } from "./classes.js";
import { onAdaptChange } from "./adaptation.js";
import { onEstimate } from "./estimate.js";
import { onExport } from "./exporting.js";
import { loadInfo } from "./info.js";
import { onManualThreshold, predictFile } from "./predict.js";
import { loadProjects, onDeleteProject, onNewProject, onProjectChange, onRenameProject } from "./projects.js";
import { captureWebcam, closeWebcam, stopStream } from "./uploads.js";
import { $, $$, setStatus, showError, state } from "./util.js";

// ------------------------------------------------------------------ start
export function wire() {
  $("#token-form").addEventListener("submit", onTokenSubmit);
  $("#project-select").addEventListener("change", onProjectChange);
  $("#new-project").addEventListener("click", onNewProject);
  $("#rename-project").addEventListener("click", onRenameProject);
  $("#delete-project").addEventListener("click", onDeleteProject);
  $("#adapt-select").addEventListener("change", onAdaptChange);
  $("#add-class-form").addEventListener("submit", onAddClass);
  $("#manual-threshold").addEventListener("submit", onManualThreshold);
  $("#estimate-button").addEventListener("click", onEstimate);
  $$(".export").forEach((b) => b.addEventListener("click", onExport));
  $("#webcam-capture").addEventListener("click", () => captureWebcam().catch(showError));
  $("#webcam-close").addEventListener("click", () => { closeWebcam(true); setStatus("Webcam closed.", "ok"); });
  $("#webcam-panel").addEventListener("keydown", (event) => {
    if (event.key === "Escape") { closeWebcam(true); setStatus("Webcam closed.", "ok"); }
  });

  const testInput = $("#test-files");
  testInput.addEventListener("change", () => {
    const files = Array.from(testInput.files || []);
    testInput.value = "";
    if (files.length) predictFile(files);
  });
  wireDropZone($("#test-drop"), testInput, predictFile);

  // a file dropped next to a drop zone must not replace the page with the image
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  window.addEventListener("pagehide", () => stopStream());
}

export async function start() {
  takeTokenFromAddress();
  wire();
  setStatus("Loading…", "busy");
  try {
    await Promise.all([
      loadInfo().catch((err) => {
        $("#model-info").textContent = "Model information unavailable";
        throw err;
      }),
      loadProjects(),
    ]);
    setStatus(state.project && state.project.classes.length
      ? `Opened project '${state.project.name}'.`
      : "Ready. Step 1: add a class and a few images to it.", "ok");
  } catch (err) {
    showError(err);
  }
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
else start();
