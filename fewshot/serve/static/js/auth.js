/* fewshot serve page: auth. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { $, $$, TOKEN_KEY, setStatus, storageGet, storageSet } from "./util.js";

// ------------------------------------------------------------------ access token
export function getToken() {
  return storageGet(sessionStorage, TOKEN_KEY) || "";
}

export function takeTokenFromAddress() {
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
export const thumbnails = { blobs: new Map(), observer: null }; // thumbnail address -> blob: URL

export async function fetchThumbnail(img) {
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
export function showThumbnails(root) {
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

export let tokenWaiters = null;

export function askForToken(message) {
  const form = $("#token-form");
  const input = $("#token-input");
  if (!tokenWaiters) tokenWaiters = [];
  form.hidden = false;
  input.value = "";
  setStatus(message || "This server needs an access token: enter it in the form above.", "error");
  input.focus();
  return new Promise((resolve) => tokenWaiters.push(resolve));
}

export function onTokenSubmit(event) {
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
