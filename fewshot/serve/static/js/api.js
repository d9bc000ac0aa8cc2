/* fewshot serve page: api. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { askForToken, getToken } from "./auth.js";
import { $ } from "./util.js";

// ------------------------------------------------------------------ the one fetch helper
/* api(path, {method, json, form, raw}): JSON in and out; throws Error(server's `error`) on non-2xx;
   asks for the access token and retries on 401. With raw: true the Response itself is returned. */
export async function api(path, options) {
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
export async function busy(buttons, fn) {
  const list = buttons.filter(Boolean);
  const before = list.map((b) => b.disabled);
  list.forEach((b) => { b.disabled = true; b.setAttribute("aria-busy", "true"); });
  try {
    return await fn();
  } finally {
    list.forEach((b, i) => { b.disabled = before[i]; b.removeAttribute("aria-busy"); });
  }
}
