/* fewshot serve page: adapting the model to a project's images (the project's setting and its background job).
   Plain ES2020 module, no framework, no external resources; user data is only inserted with textContent. */
import { api } from "./api.js";
import { $, API, setStatus, showError, state } from "./util.js";

const POLL_MS = 1000;
let poll = null;

export function describeAdaptation(status) {
  if (!status || status.adapt === "none") return "The model is used as trained.";
  const steps = status.steps ? ` (${status.steps_done} of ${status.steps} steps)` : "";
  switch (status.state) {
    case "needs images": return "Adapts once two classes hold images.";
    case "waiting": return "Waiting for another project's adaptation; answers come from the unadapted model meanwhile.";
    case "adapting": return `Adapting to your images${steps}; answers come from the unadapted model meanwhile.`;
    case "adapted": return "Adapted to your images: answers and accuracy come from the adapted model.";
    case "not adapted": return `Not adapted: ${status.reason || "your images showed no gain"}.`;
    case "failed": return `Adapting failed: ${status.reason || "see the server's log"}; answers come from the unadapted model.`;
    default: return "";
  }
}

export function showAdaptation(status) {
  if (poll) { clearTimeout(poll); poll = null; }
  $("#adapt-select").value = status.adapt;
  $("#adapt-status").textContent = describeAdaptation(status);
  if (status.state === "waiting" || status.state === "adapting") {
    const id = state.project && state.project.id;
    poll = setTimeout(() => { if (state.project && state.project.id === id) refreshAdaptation().catch(() => {}); }, POLL_MS);
  }
}

export async function refreshAdaptation() {
  if (!state.project || $("#adapt-row").hidden) return;
  const id = state.project.id;
  const status = await api(`${API}/projects/${id}/adaptation`);
  if (state.project && state.project.id === id) showAdaptation(status);
}

export async function onAdaptChange(event) {
  if (!state.project) return;
  const select = event.currentTarget;
  select.disabled = true;
  try {
    const status = await api(`${API}/projects/${state.project.id}/adaptation`, { method: "PUT", json: { adapt: select.value } });
    state.project.adapt = status.adapt;
    showAdaptation(status);
    setStatus(status.adapt === "none" ? "Adapting is off for this project." : "Adapting runs in the background.", "ok");
  } catch (err) {
    showError(err);
    $("#adapt-select").value = state.project.adapt || "none";
  } finally {
    select.disabled = false;
  }
}
