/* fewshot serve page: projects. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { api } from "./api.js";
import { refreshAdaptation } from "./adaptation.js";
import { classWord, renderClasses } from "./classes.js";
import { clearEstimate, markEstimateStale } from "./estimate.js";
import { clearPrediction } from "./predict.js";
import { closeWebcam } from "./uploads.js";
import { $, API, el, plural, projectHooks, PROJECT_KEY, setStatus, showError, state, storageGet, storageSet } from "./util.js";

// ------------------------------------------------------------------ projects
export function selectedProjectId() {
  return state.project ? state.project.id : null;
}

export function fillProjectSelect(selectedId) {
  const select = $("#project-select");
  select.replaceChildren();
  for (const project of state.projects) {
    const option = el("option", { value: project.id, text: project.name });
    if (project.id === selectedId) option.selected = true;
    select.append(option);
  }
}

export async function loadProjects(preferId) {
  const data = await api(`${API}/projects`);
  let projects = (data && data.projects) || [];
  if (!projects.length) {
    const created = await api(`${API}/projects`, { method: "POST", json: { name: "My project" } });
    projects = [{ id: created.id, name: created.name, classes: 0, images: 0 }];
    preferId = created.id;
    state.placeholderProject = created.id;  // made so the page has somewhere to start: a new project replaces it
  }
  state.projects = projects;
  const stored = Number(storageGet(localStorage, PROJECT_KEY));
  const wanted = [preferId, stored].find((id) => id && projects.some((p) => p.id === id));
  const id = wanted || projects[0].id;
  fillProjectSelect(id);
  await loadProject(id, { fresh: true });
}

export async function loadProject(id, opts) {
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
  refreshAdaptation().catch(() => {}); // its own status line; a failure there must not fail the project
}

export async function refreshProject() {
  if (state.project) await loadProject(state.project.id, { changed: true });
}

export async function onProjectChange(event) {
  const id = Number(event.target.value);
  try {
    await loadProject(id);
    setStatus(`Opened project '${state.project.name}'.`, "ok");
  } catch (err) {
    if (state.project) event.target.value = String(state.project.id);
    showError(err);
  }
}

export async function onNewProject() {
  const name = window.prompt("Name of the new project:", "");
  if (name === null) return;
  if (!name.trim()) {
    setStatus("A project needs a name.", "error");
    return;
  }
  try {
    // the page's own untouched "My project" (no class added) takes the new name instead of staying beside it, empty
    const placeholder = state.projects.find((p) => p.id === state.placeholderProject && !p.classes);
    const untouched = placeholder && !(state.project && state.project.id === placeholder.id && state.project.classes.length);
    const created = untouched
      ? await api(`${API}/projects/${placeholder.id}`, { method: "PATCH", json: { name: name.trim() } })
      : await api(`${API}/projects`, { method: "POST", json: { name: name.trim() } });
    state.placeholderProject = null;
    await loadProjects(created.id);
    setStatus(`Created project '${created.name}'. Now add classes to it.`, "ok");
    $("#new-class-name").focus();
  } catch (err) {
    showError(err);
  }
}

export async function onRenameProject() {
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

export async function onDeleteProject() {
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

projectHooks.refresh = refreshProject;
