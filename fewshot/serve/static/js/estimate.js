/* fewshot serve page: estimate. Plain ES2020 module, no framework, no external resources; user data is only
   inserted with textContent or attribute setters. */
import { api, busy } from "./api.js";
import { $, API, el, pct, plural, setStatus, showError, state } from "./util.js";

// ------------------------------------------------------------------ estimate
export function clearEstimate() {
  $("#estimate-result").replaceChildren();
  state.estimateShown = false;
}

export function markEstimateStale() {
  const box = $("#estimate-result");
  if (!state.estimateShown || box.querySelector(".stale-note")) return;
  box.prepend(el("p", { className: "notice stale-note", text: "Your images changed since this check: run it again for an up-to-date result." }));
}

/* per_class as {name: scores} or as [{class: name, ...scores}]: the map name -> scores either way. */
export function perClassMap(perClass) {
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
export function scoreScale(perClass) {
  const values = [];
  for (const scores of Object.values(perClass || {})) {
    for (const k of ["precision", "recall", "f1"]) if (Number.isFinite(Number(scores[k]))) values.push(Number(scores[k]));
  }
  return values.length && values.every((v) => v <= 1) ? 100 : 1;
}

export async function onEstimate() {
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

/** "60 % (44–74 %)": a promise with its interval; the interval is left out only when an older server sent none. */
function promise(value, low, high) {
  const shown = `${Number(value).toFixed(0)} %`;
  return Number.isFinite(Number(low)) && Number.isFinite(Number(high))
    ? `${shown} (${Number(low).toFixed(0)}–${Number(high).toFixed(0)} %)` : shown;
}

export function renderEstimate(r) {
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
    text: "Measured by holding out some of your images and classifying them with the rest. The accuracy on new, " +
      "similar images lay inside this interval for at least 9 support sets in 10 in our checks; the figure itself " +
      "was on average within 3 points of it, more often a little low (each test learns from one image fewer per " +
      "class than the classifier). More images per class make the interval narrower.",
  }));
  const tested = [];
  if (Number.isFinite(Number(r.images))) tested.push(`Tested on ${plural(Number(r.images), "held-out image")}`);
  if (Number.isFinite(Number(r.repeats))) tested.push(`over ${plural(Number(r.repeats), "random split")}`);
  if (tested.length) box.append(el("p", { className: "held-out", text: tested.join(" ") + "." }));
  if (r.adaptation) {
    const how = r.adaptation.adapted ? "Adapted to your images" : "Not adapted to your images";
    box.append(el("p", { id: "adaptation-estimate", text: `${how}: ${r.adaptation.reason || ""}` }));
  }

  if (r.shots && Object.keys(r.shots).length) {
    const names = r.class_names || Object.keys(r.shots);
    box.append(el("p", {
      className: "muted shots",
      text: "Images learned from in each split: " + names.filter((n) => n in r.shots).map((n) => `${n}: ${r.shots[n]}`).join(" · "),
    }));
  }

  const open = r.open_set;
  if (open && typeof open.auroc === "number") {
    box.append(el("p", {
      id: "open-set-estimate",
      text: `“None of these”: an image of a class you did not add scores above one of yours ${open.auroc.toFixed(1)} % ` +
        `of the time (95% interval ${open.low.toFixed(1)}–${open.high.toFixed(1)} %). The page answers “none of these” ` +
        `for ${promise(open.unknown_rejected, open.unknown_rejected_low, open.unknown_rejected_high)} of images of ` +
        `classes you did not add and keeps ${promise(open.known_kept, open.known_kept_low, open.known_kept_high)} ` +
        `of new images of yours (95% intervals, measured by holding each class out in turn).`,
    }));
  } else if (open && open.refused) {
    box.append(el("p", { id: "open-set-estimate", className: "muted", text: `No “none of these” estimate: ${open.refused}` }));
  }
  const openWarnings = open && Array.isArray(open.warnings) ? open.warnings : [];
  const warnings = (Array.isArray(r.warnings) ? r.warnings : []).concat(openWarnings);
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

export function confusionTable(matrix, names) {
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
