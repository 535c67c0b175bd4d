// Case page: while an AI run is queued or running, poll its progress and reload when it ends.
(function () {
  "use strict";
  const list = document.querySelector("[data-runs-url]");
  if (!list || !list.querySelector('[data-finished="0"]')) return;

  async function poll() {
    let data;
    try {
      const response = await fetch(list.dataset.runsUrl, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(response.status);
      data = await response.json();
    } catch (error) {
      setTimeout(poll, 5000);
      return;
    }
    let finishedOne = false;
    for (const run of data.runs) {
      const row = list.querySelector(`[data-run="${run.id}"]`);
      if (!row) continue;
      if (run.finished && row.dataset.finished === "0") finishedOne = true;
      const bar = row.querySelector("progress");
      if (bar) bar.value = run.progress;
      const stage = row.querySelector(".run-stage");
      if (stage) stage.textContent = `${run.stage || "waiting for a worker"} · ${run.progress} %`;
      const badge = row.querySelector(".status");
      if (badge) badge.textContent = "AI " + run.status_label.toLowerCase();
    }
    if (finishedOne) window.location.reload();
    else setTimeout(poll, 2000);
  }
  setTimeout(poll, 1500);
})();
