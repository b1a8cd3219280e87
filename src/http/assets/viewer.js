// Live updates of a run page: follows /v1/runs/{id}/live (the sign-in cookie authenticates it)
// and updates the page with textContent only, so no value from the data is ever parsed as HTML.
"use strict";
// The sign-in choice page: its address holds the link's token; replace it in the history by
// the same address without it (the "stay" link's).
(function () {
  const stay = document.getElementById("stay");
  if (stay && document.getElementById("switch")) history.replaceState(null, "", stay.getAttribute("href"));
})();
(function () {
  const body = document.body;
  const runId = body.dataset.runId;
  if (!runId || body.dataset.live !== "true") return;
  const after = body.dataset.lastSequence || "0";
  const source = new EventSource("/v1/runs/" + encodeURIComponent(runId) + "/live?after=" + encodeURIComponent(after));
  const text = (id, value) => { const el = document.getElementById(id); if (el) el.textContent = value; };
  const badge = (id, kind, value) => {
    const el = document.getElementById(id);
    if (!el) return;
    el.textContent = value;
    el.className = "badge " + kind + "-" + value;
  };
  function progress(counts) {
    const n = (k) => (typeof counts[k] === "number" ? counts[k] : null);
    let processed = n("processed");
    if (processed === null) processed = (n("succeeded") || 0) + (n("failed") || 0) + (n("skipped") || 0);
    const total = n("total");
    const percent = total && total > 0 ? Math.min(100, Math.round((processed / total) * 1000) / 10) : null;
    text("progress-text", total !== null ? processed + " / " + total + (percent !== null ? " (" + percent + "%)" : "") : String(processed));
    const bar = document.getElementById("progress-bar");
    if (bar && percent !== null) bar.value = percent;
  }
  function onEvent(e) {
    let ce;
    try { ce = JSON.parse(e.data); } catch (_) { return; }
    const run = ce.data && ce.data.run;
    if (!run) return;
    badge("run-status", "status", run.status);
    badge("run-outcome", "outcome", run.outcome);
    progress(run.summary_counts || {});
    text("run-counts", JSON.stringify(run.summary_counts || {}, null, 2));
    text("run-failures", JSON.stringify(run.failure_summary || [], null, 2));
    const list = document.getElementById("timeline");
    if (list) {
      const li = document.createElement("li");
      li.textContent = "#" + ce.data.sequence + " " + ce.type + " · " + ce.time;
      list.appendChild(li);
    }
    if (ce.type === "operation_run.completed") {
      source.close();
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
