/* fewshot serve page: classes. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { api, busy } from "./api.js";
import { showThumbnails } from "./auth.js";
import { closeWebcam, openWebcam, uploadImages } from "./uploads.js";
import { $, $$, API, el, plural, projectHooks, setStatus, showError, state } from "./util.js";

// ------------------------------------------------------------------ classes
export function classWord(n) {
  return `${n} ${n === 1 ? "class" : "classes"}`;
}

/* Remembers which control in which class card has the focus, so a re-render can put it back. */
export function focusKey() {
  const active = document.activeElement;
  if (!active || !active.closest) return null;
  const card = active.closest(".class-card");
  if (!card) return null;
  const role = ["rename-class", "delete-class", "dropzone", "webcam", "delete-image"]
    .find((c) => active.classList.contains(c));
  const index = role === "delete-image" ? $$(".delete-image", card).indexOf(active) : 0;
  return { classId: card.dataset.classId, role: role || "dropzone", index };
}

export function restoreFocus(key) {
  if (!key) return;
  const card = $(`.class-card[data-class-id="${CSS.escape(String(key.classId))}"]`);
  if (!card) {
    $("#new-class-name").focus();
    return;
  }
  let target = card.querySelector("." + key.role);
  if (key.role === "delete-image") {
    const buttons = $$(".delete-image", card);
    target = buttons[Math.min(key.index, buttons.length - 1)];
  }
  (target || card.querySelector(".dropzone")).focus();
}

export function renderClasses() {
  const container = $("#classes");
  const key = container.contains(document.activeElement) ? focusKey() : null;
  container.replaceChildren();
  const classes = state.project ? state.project.classes : [];
  if (!classes.length) {
    container.append(el("p", {
      className: "empty",
      text: "No classes yet. Type a name above (for example “cat”), press Add class, then add images to it.",
    }));
  }
  for (const cls of classes) container.append(classCard(cls));
  showThumbnails(container);
  restoreFocus(key);
  updateHints();
}

export function updateHints() {
  const classes = state.project ? state.project.classes : [];
  const filled = classes.filter((c) => c.images.length > 0).length;
  const hint = $("#classes-hint");
  let message = "";
  if (classes.length === 0) message = "Start by adding two or more classes.";
  else if (classes.length === 1) message = "Add a second class: the model needs at least two classes to tell apart.";
  else if (filled < 2) message = `Add images to at least two classes (now ${classWord(filled)} with images).`;
  else if (classes.some((c) => c.images.length < 2))
    message = "Tip: give every class at least 2 images so that the accuracy can be checked.";
  hint.textContent = message;
  hint.hidden = !message;
  $$(".needs-classes").forEach((p) => { p.hidden = filled >= 2; });
}

export function classCard(cls) {
  const id = cls.id;
  const count = cls.images.length;
  const inputId = `class-files-${id}`;
  const nameId = `class-name-${id}`;

  const rename = el("button", { type: "button", className: "rename-class small", "aria-label": `Rename class ${cls.name}`, text: "Rename" });
  rename.addEventListener("click", () => onRenameClass(cls));
  const remove = el("button", { type: "button", className: "delete-class small danger", "aria-label": `Delete class ${cls.name}`, text: "Delete" });
  remove.addEventListener("click", () => onDeleteClass(cls));

  const head = el("div", { className: "class-head" }, [
    el("h3", { className: "class-name", id: nameId, text: cls.name }),
    el("span", { className: "image-count", text: plural(count, "image") }),
    el("div", { className: "button-group class-actions" }, [rename, remove]),
  ]);

  const input = el("input", {
    type: "file", className: "class-files visually-hidden", id: inputId, multiple: true, accept: "image/*", tabindex: "-1",
  });
  const label = el("label", { for: inputId, className: "visually-hidden", text: `Choose images for ${cls.name}` });
  input.addEventListener("change", () => {
    const files = Array.from(input.files || []);
    input.value = "";
    if (files.length) uploadImages(cls, files);
  });

  const zone = el("div", {
    className: "dropzone", tabindex: "0", role: "button",
    "aria-label": `Add images to ${cls.name}: drop image files here, or press Enter to choose files`,
  }, [
    el("span", { className: "dropzone-icon", "aria-hidden": "true", text: "+" }),
    el("span", { text: "Drop images here or click to choose" }),
  ]);
  wireDropZone(zone, input, (files) => uploadImages(cls, files));

  const tools = el("div", { className: "class-tools" }, [zone]);
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    const cam = el("button", { type: "button", className: "webcam small", "aria-label": `Webcam: capture images for ${cls.name}`, text: "Webcam" });
    cam.addEventListener("click", () => openWebcam(cls));
    tools.append(cam);
  }

  const thumbs = el("ul", { className: "thumbs", "aria-label": `Images of ${cls.name}` });
  for (const image of cls.images) {
    const img = el("img", {
      alt: image.name, loading: "lazy", decoding: "async", dataset: { thumb: image.thumbnail_url },
      title: image.width && image.height ? `${image.name} (${image.width} × ${image.height})` : image.name,
    });
    const del = el("button", { type: "button", className: "delete-image", "aria-label": `Delete image ${image.name}`, text: "×" });
    del.addEventListener("click", () => onDeleteImage(image));
    thumbs.append(el("li", { className: "thumb" }, [img, del]));
  }
  if (!count) thumbs.append(el("li", { className: "thumbs-empty muted", text: "No images yet." }));

  return el("section", { className: "class-card", dataset: { classId: String(id) }, "aria-labelledby": nameId },
    [head, tools, label, input, thumbs]);
}

export async function onAddClass(event) {
  event.preventDefault();
  const input = $("#new-class-name");
  const name = input.value.trim();
  if (!name) {
    setStatus("Type a name for the new class first.", "error");
    input.focus();
    return;
  }
  if (!state.project) return;
  const button = $("#add-class");
  try {
    await busy([button], async () => {
      const created = await api(`${API}/projects/${state.project.id}/classes`, { method: "POST", json: { name } });
      input.value = "";
      await projectHooks.refresh();
      setStatus(`Added class '${created.name || name}'. Now add a few images to it.`, "ok");
    });
  } catch (err) {
    showError(err);
  }
  input.focus();
}

export async function onRenameClass(cls) {
  const name = window.prompt(`New name for class '${cls.name}':`, cls.name);
  if (name === null || name.trim() === cls.name) return;
  if (!name.trim()) {
    setStatus("A class needs a name.", "error");
    return;
  }
  try {
    await api(`${API}/projects/${state.project.id}/classes/${cls.id}`, { method: "PATCH", json: { name: name.trim() } });
    await projectHooks.refresh();
    setStatus(`Renamed class '${cls.name}' to '${name.trim()}'.`, "ok");
  } catch (err) {
    showError(err);
  }
}

export async function onDeleteClass(cls) {
  if (!window.confirm(`Delete class '${cls.name}' and its ${plural(cls.images.length, "image")}?`)) return;
  try {
    await api(`${API}/projects/${state.project.id}/classes/${cls.id}`, { method: "DELETE" });
    if (state.webcam.classId === cls.id) closeWebcam();
    await projectHooks.refresh();
    setStatus(`Deleted class '${cls.name}'.`, "ok");
  } catch (err) {
    showError(err);
  }
}

export async function onDeleteImage(image) {
  try {
    await api(`${API}/projects/${state.project.id}/images/${image.id}`, { method: "DELETE" });
    await projectHooks.refresh();
    setStatus(`Deleted image ${image.name}.`, "ok");
  } catch (err) {
    showError(err);
  }
}
// ------------------------------------------------------------------ drop zones
export function wireDropZone(zone, input, onFiles) {
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " " || event.key === "Spacebar") {
      event.preventDefault();
      input.click();
    }
  });
  zone.addEventListener("dragenter", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", (event) => {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("dragging");
  });
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = Array.from((event.dataTransfer && event.dataTransfer.files) || []);
    if (files.length) onFiles(files);
    else setStatus("Nothing to add: drop image files (not links or text).", "error");
  });
}
