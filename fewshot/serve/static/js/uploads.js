/* fewshot serve page: uploads. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { api, busy } from "./api.js";
import { $, API, plural, projectHooks, setStatus, showError, state } from "./util.js";

// ------------------------------------------------------------------ uploads
export function limits() {
  return (state.info && state.info.limits) || {};
}

/* Splits files into those worth sending and those skipped here already (not images, too large). */
export function screenFiles(files) {
  const maxBytes = limits().max_file_bytes;
  const ok = [];
  const skipped = [];
  for (const file of files) {
    if (file.type && !file.type.startsWith("image/")) {
      skipped.push({ name: file.name, reason: "not an image" });
    } else if (maxBytes && file.size > maxBytes) {
      skipped.push({ name: file.name, reason: `larger than ${(maxBytes / 1e6).toFixed(0)} MB` });
    } else {
      ok.push(file);
    }
  }
  return { ok, skipped };
}

export function describeSkipped(skipped) {
  return skipped.map((s) => `${s.name} (${s.reason})`).join("; ");
}

export async function uploadImages(cls, files) {
  if (!state.project) return;
  const project = state.project;
  const { ok, skipped } = screenFiles(files);
  if (!ok.length) {
    setStatus(`No images added to '${cls.name}'. Skipped: ${describeSkipped(skipped)}.`, "error");
    return;
  }
  const batch = Math.max(1, limits().max_files_per_request || 20);
  const total = ok.length;
  let added = 0;
  setStatus(`Uploading ${plural(total, "image")} to '${cls.name}'...`, "busy");
  try {
    for (let start = 0; start < total; start += batch) {
      const form = new FormData();
      for (const file of ok.slice(start, start + batch)) form.append("files", file, file.name);
      const result = await api(`${API}/projects/${project.id}/classes/${cls.id}/images`, { method: "POST", form });
      added += ((result && result.added) || []).length;
      skipped.push(...((result && result.skipped) || []));
      if (start + batch < total) {
        setStatus(`Uploading ${plural(total, "image")} to '${cls.name}'... (${start + batch} of ${total} sent)`, "busy");
      }
    }
  } catch (err) {
    if (added) await projectHooks.refresh().catch(() => {});
    const prefix = added ? `Added ${plural(added, "image")} to '${cls.name}', then: ` : "";
    setStatus(prefix + err.message, "error");
    return;
  }
  try {
    await projectHooks.refresh();
  } catch (err) {
    showError(err);
    return;
  }
  let message = `Added ${plural(added, "image")} to '${cls.name}'.`;
  if (skipped.length) message += ` Skipped ${skipped.length}: ${describeSkipped(skipped)}.`;
  setStatus(message, skipped.length ? "warn" : "ok");
}
// ------------------------------------------------------------------ webcam
export async function openWebcam(cls) {
  const panel = $("#webcam-panel");
  const video = $("#webcam-video");
  if (state.webcam.stream) stopStream();
  state.webcam.classId = cls.id;
  $("#webcam-title").textContent = `Webcam: adding images to '${cls.name}'`;
  panel.hidden = false;
  setStatus("Starting the webcam… allow the browser to use it if it asks.", "busy");
  try {
    const stream = await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 640 }, height: { ideal: 480 } }, audio: false });
    if (state.webcam.classId !== cls.id || panel.hidden) { // closed meanwhile
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    state.webcam.stream = stream;
    video.srcObject = stream;
    await video.play().catch(() => {});
    setStatus(`Webcam on. Press Capture to add a picture to '${cls.name}'.`, "ok");
    $("#webcam-capture").focus();
  } catch (err) {
    closeWebcam(false);
    setStatus(`Cannot use the webcam: ${err && err.message ? err.message : err}`, "error");
  }
}

export function stopStream() {
  const stream = state.webcam.stream;
  if (stream) stream.getTracks().forEach((track) => track.stop());
  state.webcam.stream = null;
  const video = $("#webcam-video");
  video.srcObject = null;
}

export function closeWebcam(returnFocus) {
  const classId = state.webcam.classId;
  stopStream();
  state.webcam.classId = null;
  $("#webcam-panel").hidden = true;
  if (returnFocus && classId !== null) {
    const button = $(`.class-card[data-class-id="${CSS.escape(String(classId))}"] .webcam`);
    if (button) button.focus();
  }
}

export async function captureWebcam() {
  const video = $("#webcam-video");
  const canvas = $("#webcam-canvas");
  const cls = state.project && state.project.classes.find((c) => c.id === state.webcam.classId);
  if (!cls) {
    closeWebcam(false);
    setStatus("That class no longer exists.", "error");
    return;
  }
  if (!state.webcam.stream || !video.videoWidth) {
    setStatus("The webcam is not ready yet: wait a moment and press Capture again.", "error");
    return;
  }
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
  if (!blob) {
    setStatus("Could not capture a picture from the webcam.", "error");
    return;
  }
  const stamp = new Date().toISOString().replace(/[:.]/g, "-");
  const file = new File([blob], `webcam-${stamp}.png`, { type: "image/png" });
  await busy([$("#webcam-capture")], () => uploadImages(cls, [file]));
}
