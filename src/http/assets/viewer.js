// The pages' one script. It formats times in the browser's time zone and keeps relative times
// and durations ticking; on a run page it follows /v1/runs/{id}/live (the sign-in cookie
// authenticates it), on the list it refreshes the rows of active runs from /v1/runs/{id}.
// Every value from the data is written with textContent (or as an element's property), never
// parsed as HTML.
"use strict";
// The sign-in choice page: its address holds the link's token; replace it in the history by
// the same address without it (the "stay" link's).
(function () {
  const stay = document.getElementById("stay");
  if (stay && document.getElementById("switch")) history.replaceState(null, "", stay.getAttribute("href"));
})();

const text = (id, value) => { const el = document.getElementById(id); if (el) el.textContent = value; };
const shortDuration = (s) => {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min";
  if (s < 86400) return Math.floor(s / 3600) + " h";
  return Math.floor(s / 86400) + " d";
};
const duration = (s) => {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
};
const secondsSince = (iso) => (Date.now() - Date.parse(iso)) / 1000;
const badge = (el, kind, value) => {
  if (!el) return;
  el.textContent = value;
  el.className = "badge " + kind + "-" + value;
};
function progressOf(counts) {
  const n = (k) => (typeof counts[k] === "number" ? counts[k] : null);
  let processed = n("processed");
  if (processed === null) processed = (n("succeeded") || 0) + (n("failed") || 0) + (n("skipped") || 0);
  const total = n("total");
  const percent = total && total > 0 ? Math.min(100, Math.round((processed / total) * 1000) / 10) : null;
  const label = total !== null ? processed + " / " + total + (percent !== null ? " (" + percent + "%)" : "") : String(processed);
  return { processed, total, percent, label };
}
function failuresOf(run) {
  const byCode = new Map();
  (run.failure_summary || []).forEach((f) => byCode.set(f.code, (byCode.get(f.code) || 0) + 1));
  Object.entries(run.failure_overflow || {}).forEach(([c, n]) => byCode.set(c, (byCode.get(c) || 0) + n));
  const codes = [...byCode.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
  return { codes, total: codes.reduce((t, [, n]) => t + n, 0) };
}
const codeCell = (row, value) => {
  const td = document.createElement("td"), code = document.createElement("code");
  code.textContent = value;
  td.appendChild(code);
  row.appendChild(td);
};
const cell = (row, value, tag) => {
  const el = document.createElement(tag || "td");
  el.textContent = value;
  row.appendChild(el);
  return el;
};

// Times: exact ones in the browser's time zone, relative ones and running durations ticking.
(function () {
  document.querySelectorAll("time[data-local]").forEach((t) => {
    const at = new Date(t.getAttribute("datetime"));
    if (!isNaN(at)) { t.title = t.textContent; t.textContent = at.toLocaleString(); }
  });
  const tick = () => {
    document.querySelectorAll("time[data-relative]").forEach((t) => {
      t.textContent = shortDuration(secondsSince(t.getAttribute("datetime"))) + " ago";
    });
    document.querySelectorAll("[data-elapsed-since]").forEach((el) => {
      el.textContent = duration(secondsSince(el.dataset.elapsedSince));
    });
    const body = document.body.dataset;
    const banner = document.getElementById("stalled");
    if (banner && body.updatedAt && body.expectedSeconds) {
      const idle = secondsSince(body.updatedAt), expected = Number(body.expectedSeconds);
      const stalled = body.status === "running" && idle > expected;
      banner.hidden = !stalled;
      banner.textContent = stalled ? "No progress for " + shortDuration(idle) + " (usually takes about " + shortDuration(expected) + ")" : "";
    }
  };
  tick();
  setInterval(tick, 1000);
})();

// A run page: live updates.
(function () {
  const body = document.body;
  const runId = body.dataset.runId;
  if (!runId || body.dataset.live !== "true") return;
  const after = body.dataset.lastSequence || "0";
  const outcomeBadge = document.getElementById("run-outcome");
  let previous = { counts: {}, failures: 0, status: body.dataset.status, outcome: outcomeBadge ? outcomeBadge.textContent : "pending" };
  try { previous.counts = JSON.parse(body.dataset.counts || "{}"); } catch (_) { /* keep {} */ }
  previous.failures = Number(body.dataset.failures || 0);
  const source = new EventSource("/v1/runs/" + encodeURIComponent(runId) + "/live?after=" + encodeURIComponent(after));
  function rows(tableId, items, fill) {
    const tbody = document.querySelector("#" + tableId + " tbody");
    if (!tbody) return;
    tbody.replaceChildren();
    items.forEach((item) => { const tr = document.createElement("tr"); fill(tr, item); tbody.appendChild(tr); });
  }
  function changes(run) {
    const out = [];
    if (run.status !== previous.status) out.push("status " + run.status);
    const counts = run.summary_counts || {};
    Object.keys(counts).forEach((k) => {
      const d = counts[k] - (previous.counts[k] || 0);
      if (d !== 0) out.push((d > 0 ? "+" : "") + d + " " + k);
    });
    const failures = failuresOf(run).total;
    const added = failures - previous.failures;
    if (added !== 0) out.push((added > 0 ? "+" : "") + added + (Math.abs(added) === 1 ? " failure" : " failures"));
    if (run.outcome !== previous.outcome && run.outcome !== "pending") out.push("outcome " + run.outcome);
    previous = { counts, failures, status: run.status, outcome: run.outcome };
    return out.join(", ");
  }
  function onEvent(e) {
    let ce;
    try { ce = JSON.parse(e.data); } catch (_) { return; }
    const run = ce.data && ce.data.run;
    if (!run) return;
    badge(document.getElementById("run-status"), "status", run.status);
    badge(document.getElementById("run-outcome"), "outcome", run.outcome);
    body.dataset.status = run.status;
    body.dataset.updatedAt = run.updated_at;
    const counts = run.summary_counts || {};
    const p = progressOf(counts);
    text("progress-text", p.label);
    const bar = document.getElementById("progress-bar");
    if (bar && p.percent !== null) bar.value = p.percent;
    const started = run.started_at && Date.parse(run.started_at);
    const left = run.status === "running" && started && p.total && p.processed > 0 && p.processed < p.total
      ? ((Date.now() - started) / 1000) * (p.total - p.processed) / p.processed : null;
    text("eta", left !== null ? "about " + shortDuration(left) + " left" : "");
    rows("run-counts", Object.entries(counts), (tr, [k, v]) => { cell(tr, k, "th").scope = "row"; cell(tr, String(v)); });
    const f = failuresOf(run);
    const stored = (run.failure_summary || []).length;
    text("failures-total", f.total + (f.total === 1 ? " failure" : " failures") + (f.total > stored ? " (" + stored + " stored below, the rest counted by code)" : ""));
    rows("failures-by-code", f.codes, (tr, [code, n]) => { codeCell(tr, code); cell(tr, String(n)); });
    rows("run-failures", run.failure_summary || [], (tr, x) => {
      codeCell(tr, x.code);
      cell(tr, x.message);
      cell(tr, x.item === undefined ? "" : typeof x.item === "string" ? x.item : JSON.stringify(x.item));
    });
    const last = document.querySelector("#last-change time");
    if (last && run.updated_at) last.setAttribute("datetime", run.updated_at);
    const list = document.getElementById("timeline");
    if (list) {
      const li = document.createElement("li");
      li.value = ce.data.sequence;
      const t = document.createElement("time");
      t.setAttribute("datetime", ce.time);
      t.textContent = new Date(ce.time).toLocaleString();
      li.appendChild(t);
      li.appendChild(document.createTextNode(" "));
      const ev = document.createElement("span");
      ev.className = "event";
      ev.textContent = "#" + ce.data.sequence + " " + ce.type;
      li.appendChild(ev);
      li.appendChild(document.createTextNode(" "));
      const ch = document.createElement("span");
      ch.className = "changes";
      ch.textContent = changes(run);
      li.appendChild(ch);
      list.appendChild(li);
    }
    if (ce.type === "operation_run.completed") {
      source.close();
      const elapsed = document.getElementById("elapsed");
      if (elapsed) delete elapsed.dataset.elapsedSince;
      text("live", "completed");
    }
  }
  // A stream that ends (its lifetime) is reopened by the browser with Last-Event-ID; a refused
  // reopening (the token expired, too many streams) closes the source for good.
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) text("live", "not live: reload the page");
  });
  ["operation_run.queued", "operation_run.started", "operation_run.progressed", "operation_run.completed"]
    .forEach((t) => source.addEventListener(t, onEvent));
  text("live", "live");
})();

// The list: the rows of active runs refresh themselves. Every 10 s while the tab is visible,
// each such row (at most 20 of the page) reads its run from /v1/runs/{id}; a row whose run
// completed stops; after 30 minutes the page stops refreshing (reload for more).
(function () {
  const EVERY_MS = 10000, MOST_ROWS = 20, FOR_MS = 30 * 60 * 1000;
  const rowsOf = () => [...document.querySelectorAll("tr[data-active-run]")].slice(0, MOST_ROWS);
  if (rowsOf().length === 0) return;
  const until = Date.now() + FOR_MS;
  async function refresh(tr) {
    const id = tr.dataset.activeRun;
    let run;
    try {
      const answer = await fetch("/v1/runs/" + encodeURIComponent(id), { credentials: "same-origin" });
      if (!answer.ok) return;
      run = await answer.json();
    } catch (_) { return; }
    badge(tr.querySelector(".run-status .badge"), "status", run.status);
    badge(tr.querySelector(".run-outcome .badge"), "outcome", run.outcome);
    const progress = tr.querySelector(".run-progress");
    if (progress) progress.textContent = progressOf(run.summary_counts || {}).label;
    const failures = tr.querySelector(".run-failures");
    if (failures) {
      const f = failuresOf(run);
      failures.textContent = f.total > 0 ? f.total + " " + f.codes.slice(0, 5).map(([c]) => c).join(", ") : "";
    }
    if (run.status === "completed") delete tr.dataset.activeRun;
  }
  const timer = setInterval(() => {
    if (Date.now() > until) { clearInterval(timer); return; }
    if (document.hidden) return;
    const rows = rowsOf();
    if (rows.length === 0) { clearInterval(timer); return; }
    rows.forEach(refresh);
  }, EVERY_MS);
})();
