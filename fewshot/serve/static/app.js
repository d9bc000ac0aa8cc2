/* fewshot serve: the browser front-end. Plain ES2020, no framework, no external resources.
   User data (project, class and file names) is only ever inserted with textContent or attribute setters. */
(function () {
  "use strict";

  const API = "/api/v1";
  const TOKEN_KEY = "fewshot-token";
  const PROJECT_KEY = "fewshot-project";
  const EXPORT_EXT = { torchscript: ".pt", onnx: ".onnx", "onnx-int8": ".int8.onnx" };
  const EXPORT_LABEL = { torchscript: "TorchScript", onnx: "ONNX", "onnx-int8": "ONNX INT8" };

  const state = {
    info: null,
    projects: [],
    project: null,        // {id, name, classes: [...]}
    loadSeq: 0,
    webcam: { stream: null, classId: null },
    estimateShown: false,
    previewUrl: null,
  };

  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));

  // ------------------------------------------------------------------ small DOM helpers
  function el(tag, props, children) {
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

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function pct(value, digits = 1) {
    const n = Number(value);
    return Number.isFinite(n) ? n.toFixed(digits) : "–";
  }

  function storageGet(store, key) {
    try { return store.getItem(key); } catch (e) { return null; }
  }

  function storageSet(store, key, value) {
    try {
      if (value === null || value === undefined) store.removeItem(key);
      else store.setItem(key, String(value));
    } catch (e) { /* private mode: keep going without storage */ }
  }

  // ------------------------------------------------------------------ status messages
  let statusTimer = null;

  function setStatus(message, kind) {
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

  function showError(err) {
    const message = err && err.message ? err.message : String(err);
    setStatus(message, "error");
  }

  // ------------------------------------------------------------------ access token
  function getToken() {
    return storageGet(sessionStorage, TOKEN_KEY) || "";
  }

  function takeTokenFromAddress() {
    const url = new URL(window.location.href);
    let token = url.searchParams.get("token");
    let changed = false;
    if (token !== null) {
      url.searchParams.delete("token");
      changed = true;
    }
    if (url.hash.length > 1) {
      const hashParams = new URLSearchParams(url.hash.slice(1));
      if (hashParams.has("token")) {
        if (token === null) token = hashParams.get("token");
        hashParams.delete("token");
        const rest = hashParams.toString();
        url.hash = rest ? "#" + rest : "";
        changed = true;
      }
    }
    if (token) storageSet(sessionStorage, TOKEN_KEY, token);
    if (changed) {
      try {
        const clean = url.pathname + url.search + url.hash;
        window.history.replaceState(window.history.state, document.title, clean);
      } catch (e) { /* keep the address as it is */ }
    }
  }

  // ------------------------------------------------------------------ thumbnails
  /* With a token, thumbnails are fetched with the Authorization header and shown as blob: URLs (a ?token= in
     an <img> address would land in access logs and proxies); without one, the browser loads them itself.
     A blob: URL is kept while its image is shown (an image id never changes its content) and revoked when a
     drawing of the classes no longer shows it. */
  const thumbnails = { blobs: new Map(), observer: null }; // thumbnail address -> blob: URL

  async function fetchThumbnail(img) {
    const address = img.dataset.thumb;
    let blob;
    try {
      const headers = { Authorization: "Bearer " + getToken() };
      const response = await fetch(address, { headers, credentials: "same-origin" });
      if (!response.ok) return; // the next action reports what is wrong (a 401 asks for the token)
      blob = await response.blob();
    } catch (e) {
      return;
    }
    if (!img.isConnected) return; // drawn again meanwhile
    if (!thumbnails.blobs.has(address)) thumbnails.blobs.set(address, URL.createObjectURL(blob));
    img.src = thumbnails.blobs.get(address);
  }

  /* Loads the thumbnails under root (directly without a token, else as each comes near the screen) and
     revokes the blob: URLs of thumbnails no longer shown. */
  function showThumbnails(root) {
    const images = $$("img[data-thumb]", root);
    const shown = new Set(images.map((img) => img.dataset.thumb));
    for (const [address, url] of thumbnails.blobs) {
      if (!shown.has(address)) {
        URL.revokeObjectURL(url);
        thumbnails.blobs.delete(address);
      }
    }
    if (thumbnails.observer) thumbnails.observer.disconnect();
    if (!getToken()) {
      images.forEach((img) => { img.src = img.dataset.thumb; });
      return;
    }
    if (!thumbnails.observer && "IntersectionObserver" in window) {
      thumbnails.observer = new IntersectionObserver((entries) => {
        for (const entry of entries) {
          if (!entry.isIntersecting) continue;
          thumbnails.observer.unobserve(entry.target);
          fetchThumbnail(entry.target);
        }
      }, { rootMargin: "300px" });
    }
    for (const img of images) {
      const known = thumbnails.blobs.get(img.dataset.thumb);
      if (known) img.src = known;
      else if (thumbnails.observer) thumbnails.observer.observe(img);
      else fetchThumbnail(img);
    }
  }

  let tokenWaiters = null;

  function askForToken(message) {
    const form = $("#token-form");
    const input = $("#token-input");
    if (!tokenWaiters) tokenWaiters = [];
    form.hidden = false;
    input.value = "";
    setStatus(message || "This server needs an access token: enter it in the form above.", "error");
    input.focus();
    return new Promise((resolve) => tokenWaiters.push(resolve));
  }

  function onTokenSubmit(event) {
    event.preventDefault();
    const input = $("#token-input");
    const token = input.value.trim();
    if (!token) {
      setStatus("Type the access token first.", "error");
      input.focus();
      return;
    }
    storageSet(sessionStorage, TOKEN_KEY, token);
    input.value = "";
    $("#token-form").hidden = true;
    setStatus("Token saved for this browser tab. Retrying…", "busy");
    const waiters = tokenWaiters || [];
    tokenWaiters = null;
    waiters.forEach((resolve) => resolve());
  }

  // ------------------------------------------------------------------ the one fetch helper
  /* api(path, {method, json, form, raw}): JSON in and out; throws Error(server's `error`) on non-2xx;
     asks for the access token and retries on 401. With raw: true the Response itself is returned. */
  async function api(path, options) {
    const opts = options || {};
    for (;;) {
      const headers = { Accept: "application/json" };
      const token = getToken();
      if (token) headers.Authorization = "Bearer " + token;
      let body;
      if (opts.json !== undefined) {
        headers["Content-Type"] = "application/json";
        body = JSON.stringify(opts.json);
      } else if (opts.form) {
        body = opts.form;
      }
      let response;
      try {
        response = await fetch(path, { method: opts.method || "GET", headers, body, credentials: "same-origin" });
      } catch (e) {
        throw new Error("Cannot reach the server: is `fewshot serve` still running?");
      }
      if (response.status === 401) {
        let message = "This server needs an access token.";
        try {
          const data = await response.json();
          if (data && data.error) message = data.error;
        } catch (e) { /* keep the default message */ }
        await askForToken(token ? "That access token was not accepted: " + message : message);
        continue;
      }
      if (!response.ok) {
        let message = response.statusText || `Request failed (HTTP ${response.status})`;
        try {
          const data = await response.json();
          if (data && typeof data.error === "string" && data.error) message = data.error;
        } catch (e) { /* not JSON */ }
        const error = new Error(message);
        error.status = response.status;
        throw error;
      }
      if (opts.raw) return response;
      if (response.status === 204) return null;
      const text = await response.text();
      if (!text) return null;
      try {
        return JSON.parse(text);
      } catch (e) {
        throw new Error("The server sent an answer that is not JSON.");
      }
    }
  }

  /* Runs fn with the given buttons disabled (and aria-busy on them). */
  async function busy(buttons, fn) {
    const list = buttons.filter(Boolean);
    const before = list.map((b) => b.disabled);
    list.forEach((b) => { b.disabled = true; b.setAttribute("aria-busy", "true"); });
    try {
      return await fn();
    } finally {
      list.forEach((b, i) => { b.disabled = before[i]; b.removeAttribute("aria-busy"); });
    }
  }

  // ------------------------------------------------------------------ model info
  async function loadInfo() {
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

  // ------------------------------------------------------------------ projects
  function selectedProjectId() {
    return state.project ? state.project.id : null;
  }

  function fillProjectSelect(selectedId) {
    const select = $("#project-select");
    select.replaceChildren();
    for (const project of state.projects) {
      const option = el("option", { value: project.id, text: project.name });
      if (project.id === selectedId) option.selected = true;
      select.append(option);
    }
  }

  async function loadProjects(preferId) {
    const data = await api(`${API}/projects`);
    let projects = (data && data.projects) || [];
    if (!projects.length) {
      const created = await api(`${API}/projects`, { method: "POST", json: { name: "My project" } });
      projects = [{ id: created.id, name: created.name, classes: 0, images: 0 }];
      preferId = created.id;
    }
    state.projects = projects;
    const stored = Number(storageGet(localStorage, PROJECT_KEY));
    const wanted = [preferId, stored].find((id) => id && projects.some((p) => p.id === id));
    const id = wanted || projects[0].id;
    fillProjectSelect(id);
    await loadProject(id, { fresh: true });
  }

  async function loadProject(id, opts) {
    const options = opts || {};
    const seq = ++state.loadSeq;
    const project = await api(`${API}/projects/${encodeURIComponent(id)}`);
    if (seq !== state.loadSeq) return; // a newer load started meanwhile
    const switched = !state.project || state.project.id !== project.id;
    state.project = project;
    storageSet(localStorage, PROJECT_KEY, project.id);
    const entry = state.projects.find((p) => p.id === project.id);
    if (entry && entry.name !== project.name) {
      entry.name = project.name;
      fillProjectSelect(project.id);
    }
    $("#project-select").value = String(project.id);
    if (switched || options.fresh) {
      clearEstimate();
      clearPrediction();
      if (state.webcam.stream) closeWebcam();
    } else if (options.changed) {
      markEstimateStale();
    }
    renderClasses();
  }

  async function refreshProject() {
    if (state.project) await loadProject(state.project.id, { changed: true });
  }

  async function onProjectChange(event) {
    const id = Number(event.target.value);
    try {
      await loadProject(id);
      setStatus(`Opened project '${state.project.name}'.`, "ok");
    } catch (err) {
      if (state.project) event.target.value = String(state.project.id);
      showError(err);
    }
  }

  async function onNewProject() {
    const name = window.prompt("Name of the new project:", "");
    if (name === null) return;
    if (!name.trim()) {
      setStatus("A project needs a name.", "error");
      return;
    }
    try {
      const created = await api(`${API}/projects`, { method: "POST", json: { name: name.trim() } });
      await loadProjects(created.id);
      setStatus(`Created project '${created.name}'. Now add classes to it.`, "ok");
      $("#new-class-name").focus();
    } catch (err) {
      showError(err);
    }
  }

  async function onRenameProject() {
    if (!state.project) return;
    const current = state.project.name;
    const name = window.prompt(`New name for project '${current}':`, current);
    if (name === null || name.trim() === current) return;
    if (!name.trim()) {
      setStatus("A project needs a name.", "error");
      return;
    }
    try {
      const updated = await api(`${API}/projects/${state.project.id}`, { method: "PATCH", json: { name: name.trim() } });
      await loadProjects(updated.id);
      setStatus(`Renamed the project to '${updated.name}'.`, "ok");
    } catch (err) {
      showError(err);
    }
  }

  async function onDeleteProject() {
    if (!state.project) return;
    const { id, name } = state.project;
    const images = state.project.classes.reduce((n, c) => n + c.images.length, 0);
    const what = `${classWord(state.project.classes.length)} and ${plural(images, "image")}`;
    if (!window.confirm(`Delete project '${name}' with its ${what}? This cannot be undone.`)) return;
    try {
      await api(`${API}/projects/${id}`, { method: "DELETE" });
      storageSet(localStorage, PROJECT_KEY, null);
      state.project = null;
      await loadProjects();
      setStatus(`Deleted project '${name}'.`, "ok");
    } catch (err) {
      showError(err);
    }
  }

  // ------------------------------------------------------------------ classes
  function classWord(n) {
    return `${n} ${n === 1 ? "class" : "classes"}`;
  }

  /* Remembers which control in which class card has the focus, so a re-render can put it back. */
  function focusKey() {
    const active = document.activeElement;
    if (!active || !active.closest) return null;
    const card = active.closest(".class-card");
    if (!card) return null;
    const role = ["rename-class", "delete-class", "dropzone", "webcam", "delete-image"]
      .find((c) => active.classList.contains(c));
    const index = role === "delete-image" ? $$(".delete-image", card).indexOf(active) : 0;
    return { classId: card.dataset.classId, role: role || "dropzone", index };
  }

  function restoreFocus(key) {
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

  function renderClasses() {
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

  function updateHints() {
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

  function classCard(cls) {
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

  async function onAddClass(event) {
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
        await refreshProject();
        setStatus(`Added class '${created.name || name}'. Now add a few images to it.`, "ok");
      });
    } catch (err) {
      showError(err);
    }
    input.focus();
  }

  async function onRenameClass(cls) {
    const name = window.prompt(`New name for class '${cls.name}':`, cls.name);
    if (name === null || name.trim() === cls.name) return;
    if (!name.trim()) {
      setStatus("A class needs a name.", "error");
      return;
    }
    try {
      await api(`${API}/projects/${state.project.id}/classes/${cls.id}`, { method: "PATCH", json: { name: name.trim() } });
      await refreshProject();
      setStatus(`Renamed class '${cls.name}' to '${name.trim()}'.`, "ok");
    } catch (err) {
      showError(err);
    }
  }

  async function onDeleteClass(cls) {
    if (!window.confirm(`Delete class '${cls.name}' and its ${plural(cls.images.length, "image")}?`)) return;
    try {
      await api(`${API}/projects/${state.project.id}/classes/${cls.id}`, { method: "DELETE" });
      if (state.webcam.classId === cls.id) closeWebcam();
      await refreshProject();
      setStatus(`Deleted class '${cls.name}'.`, "ok");
    } catch (err) {
      showError(err);
    }
  }

  async function onDeleteImage(image) {
    try {
      await api(`${API}/projects/${state.project.id}/images/${image.id}`, { method: "DELETE" });
      await refreshProject();
      setStatus(`Deleted image ${image.name}.`, "ok");
    } catch (err) {
      showError(err);
    }
  }

  // ------------------------------------------------------------------ drop zones
  function wireDropZone(zone, input, onFiles) {
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

  // ------------------------------------------------------------------ uploads
  function limits() {
    return (state.info && state.info.limits) || {};
  }

  /* Splits files into those worth sending and those skipped here already (not images, too large). */
  function screenFiles(files) {
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

  function describeSkipped(skipped) {
    return skipped.map((s) => `${s.name} (${s.reason})`).join("; ");
  }

  async function uploadImages(cls, files) {
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
      if (added) await refreshProject().catch(() => {});
      const prefix = added ? `Added ${plural(added, "image")} to '${cls.name}', then: ` : "";
      setStatus(prefix + err.message, "error");
      return;
    }
    try {
      await refreshProject();
    } catch (err) {
      showError(err);
      return;
    }
    let message = `Added ${plural(added, "image")} to '${cls.name}'.`;
    if (skipped.length) message += ` Skipped ${skipped.length}: ${describeSkipped(skipped)}.`;
    setStatus(message, skipped.length ? "warn" : "ok");
  }

  // ------------------------------------------------------------------ webcam
  async function openWebcam(cls) {
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

  function stopStream() {
    const stream = state.webcam.stream;
    if (stream) stream.getTracks().forEach((track) => track.stop());
    state.webcam.stream = null;
    const video = $("#webcam-video");
    video.srcObject = null;
  }

  function closeWebcam(returnFocus) {
    const classId = state.webcam.classId;
    stopStream();
    state.webcam.classId = null;
    $("#webcam-panel").hidden = true;
    if (returnFocus && classId !== null) {
      const button = $(`.class-card[data-class-id="${CSS.escape(String(classId))}"] .webcam`);
      if (button) button.focus();
    }
  }

  async function captureWebcam() {
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

  // ------------------------------------------------------------------ estimate
  function clearEstimate() {
    $("#estimate-result").replaceChildren();
    state.estimateShown = false;
  }

  function markEstimateStale() {
    const box = $("#estimate-result");
    if (!state.estimateShown || box.querySelector(".stale-note")) return;
    box.prepend(el("p", { className: "notice stale-note", text: "Your images changed since this check: run it again for an up-to-date result." }));
  }

  /* per_class as {name: scores} or as [{class: name, ...scores}]: the map name -> scores either way. */
  function perClassMap(perClass) {
    if (!perClass) return {};
    if (!Array.isArray(perClass)) return perClass;
    const map = {};
    for (const entry of perClass) {
      if (entry && entry.class !== undefined) map[String(entry.class)] = entry;
      else if (entry && entry.name !== undefined) map[String(entry.name)] = entry;
    }
    return map;
  }

  /* per-class scores may come as fractions (0..1) or percentages; decide once for the whole table. */
  function scoreScale(perClass) {
    const values = [];
    for (const scores of Object.values(perClass || {})) {
      for (const k of ["precision", "recall", "f1"]) if (Number.isFinite(Number(scores[k]))) values.push(Number(scores[k]));
    }
    return values.length && values.every((v) => v <= 1) ? 100 : 1;
  }

  async function onEstimate() {
    if (!state.project) return;
    const button = $("#estimate-button");
    const pid = state.project.id;
    setStatus("Checking accuracy… this can take a few seconds.", "busy");
    try {
      await busy([button], async () => {
        const result = await api(`${API}/projects/${pid}/estimate`, { method: "POST", json: { repeats: 50 } });
        if (!state.project || state.project.id !== pid) return;
        renderEstimate(result);
        setStatus(`Estimated accuracy: ${pct(result.accuracy)} %.`, "ok");
      });
    } catch (err) {
      showError(err);
    }
  }

  function renderEstimate(r) {
    const box = $("#estimate-result");
    box.replaceChildren();
    state.estimateShown = true;

    box.append(el("p", { className: "accuracy" }, [
      el("span", { id: "accuracy", className: "big-number", text: `${pct(r.accuracy)} %` }),
      " ",
      el("span", { className: "interval", text: `(95% interval ${pct(r.low)} – ${pct(r.high)} %)` }),
    ]));
    box.append(el("p", {
      className: "muted",
      text: "The true accuracy on new, similar images very likely lies inside the 95% interval; more images per class make it narrower.",
    }));
    const tested = [];
    if (Number.isFinite(Number(r.images))) tested.push(`Tested on ${plural(Number(r.images), "held-out image")}`);
    if (Number.isFinite(Number(r.repeats))) tested.push(`over ${plural(Number(r.repeats), "random split")}`);
    if (tested.length) box.append(el("p", { className: "held-out", text: tested.join(" ") + "." }));

    if (r.shots && Object.keys(r.shots).length) {
      const names = r.class_names || Object.keys(r.shots);
      box.append(el("p", {
        className: "muted shots",
        text: "Images learned from in each split: " + names.filter((n) => n in r.shots).map((n) => `${n}: ${r.shots[n]}`).join(" · "),
      }));
    }

    const warnings = Array.isArray(r.warnings) ? r.warnings : [];
    if (warnings.length) {
      box.append(el("h3", { text: "Warnings" }));
      box.append(el("ul", { className: "warnings" }, warnings.map((w) => el("li", { text: w }))));
    }

    const perClass = perClassMap(r.per_class);
    const names = Array.isArray(r.class_names) ? r.class_names : Object.keys(perClass);
    if (Object.keys(perClass).length && names.length) {
      const scale = scoreScale(perClass);
      const table = el("table", { id: "per-class", className: "data-table" }, [
        el("caption", { text: "How well each class is recognised" }),
        el("thead", null, [el("tr", null, ["Class", "Precision", "Recall", "F1", "Tested"].map((h) => el("th", { scope: "col", text: h })))]),
      ]);
      const body = el("tbody");
      for (const name of names) {
        const s = perClass[name];
        if (!s) continue;
        const support = [s.support, s.queries, s.images].find((v) => v !== undefined && v !== null);
        body.append(el("tr", null, [
          el("th", { scope: "row", text: name }),
          el("td", { text: `${pct(Number(s.precision) * scale)} %` }),
          el("td", { text: `${pct(Number(s.recall) * scale)} %` }),
          el("td", { text: `${pct(Number(s.f1) * scale)} %` }),
          el("td", { text: support === undefined ? "–" : String(support) }),
        ]));
      }
      table.append(body);
      box.append(el("div", { className: "table-wrap" }, [table]));
      box.append(el("p", {
        className: "muted",
        text: "Precision: when it says this class, how often it is right. Recall: how many images of this class it " +
          "finds. Tested: how many times an image of this class was held out and classified.",
      }));
    }

    if (Array.isArray(r.confusion) && r.confusion.length) box.append(confusionTable(r.confusion, names));

    if (r.summary) {
      box.append(el("details", { className: "summary" }, [
        el("summary", { text: "Text summary" }),
        el("pre", { text: r.summary }),
      ]));
    }
  }

  function confusionTable(matrix, names) {
    const label = (i) => (names[i] !== undefined ? names[i] : `class ${i + 1}`);
    const table = el("table", { id: "confusion", className: "data-table confusion" }, [
      el("caption", { text: "Confusion matrix: rows = true class, columns = predicted class (counts over all splits)" }),
    ]);
    const headRow = el("tr", null, [el("th", { scope: "col", className: "corner", text: "true ↓ / predicted →" })]);
    matrix[0].forEach((_, j) => headRow.append(el("th", { scope: "col", text: label(j) })));
    table.append(el("thead", null, [headRow]));
    const body = el("tbody");
    matrix.forEach((row, i) => {
      const total = row.reduce((a, b) => a + Number(b || 0), 0);
      const tr = el("tr", null, [el("th", { scope: "row", text: label(i) })]);
      row.forEach((count, j) => {
        const n = Number(count || 0);
        const fraction = total ? n / total : 0;
        const td = el("td", {
          text: String(n),
          title: `${n} of ${total} '${label(i)}' images predicted as '${label(j)}'`,
          className: i === j ? "diagonal" : "off-diagonal",
        });
        const alpha = (0.08 + 0.72 * fraction) * (n ? 1 : 0);
        td.style.backgroundColor = i === j ? `rgba(34, 160, 90, ${alpha.toFixed(3)})` : `rgba(220, 80, 60, ${alpha.toFixed(3)})`;
        if (alpha > 0.5) td.classList.add("strong");
        tr.append(td);
      });
      body.append(tr);
    });
    table.append(body);
    return el("div", { className: "table-wrap" }, [table]);
  }

  // ------------------------------------------------------------------ try it (predict)
  function clearPrediction() {
    $("#prediction").hidden = true;
    $("#prediction-label").textContent = "";
    $("#probabilities").replaceChildren();
    const heat = $("#heatmap");
    heat.removeAttribute("src");
    $("#heatmap-figure").hidden = true;
    const preview = $("#test-preview");
    preview.removeAttribute("src");
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = null;
  }

  let predicting = false;

  async function predictFile(files) {
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
        const result = await api(`${API}/projects/${pid}/predict?explain=${explain ? "true" : "false"}`, { method: "POST", form });
        const prediction = result && result.predictions && result.predictions[0];
        if (!prediction) throw new Error("The server returned no prediction.");
        if (!state.project || state.project.id !== pid) return;
        renderPrediction(prediction);
        setStatus(`Prediction for ${file.name}: ${prediction.predicted}.`, "ok");
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
  function showPreview(file) {
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

  function renderPrediction(prediction) {
    $("#prediction").classList.remove("pending");
    $("#prediction-label").textContent = prediction.predicted;

    const bars = $("#probabilities");
    bars.replaceChildren();
    const entries = Object.entries(prediction.probabilities || {}).sort((a, b) => b[1] - a[1]);
    for (const [name, p] of entries) {
      const percent = Math.max(0, Math.min(100, Number(p) * 100));
      const bar = el("div", { className: "prob-bar" });
      bar.style.width = `${percent.toFixed(1)}%`;
      const row = el("div", { className: "prob-row" + (name === prediction.predicted ? " top" : ""), role: "listitem" }, [
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

  // ------------------------------------------------------------------ export
  function filenameFrom(disposition, fallback) {
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

  async function onExport(event) {
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

  // ------------------------------------------------------------------ start
  function wire() {
    $("#token-form").addEventListener("submit", onTokenSubmit);
    $("#project-select").addEventListener("change", onProjectChange);
    $("#new-project").addEventListener("click", onNewProject);
    $("#rename-project").addEventListener("click", onRenameProject);
    $("#delete-project").addEventListener("click", onDeleteProject);
    $("#add-class-form").addEventListener("submit", onAddClass);
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

  async function start() {
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
})();
