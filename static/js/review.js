// Review in the viewer: A / D / U decide on the open finding (with the phase chosen by
// 1-4, a reason and a comment), the decision saves without a reload and the next
// undecided finding opens; M then a click adds a mitosis the AI missed.
(function () {
  "use strict";
  const panel = document.getElementById("review-panel");
  const viewer = window.mitolensViewer;
  if (!panel || !viewer) return;
  const $ = (id) => document.getElementById(id);
  const csrf = () => (document.cookie.match(/(?:^|; )csrftoken=([^;]+)/) || [])[1] || "";
  const review = { current: null, phase: "", canDecide: false, adding: false, busy: false };

  async function post(url, fields) {
    const body = new URLSearchParams(fields);
    const response = await fetch(url, {
      method: "POST", body, headers: { "X-CSRFToken": csrf(), Accept: "application/json" },
    });
    const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    return data;
  }

  function showError(message) {
    $("review-error").hidden = !message;
    $("review-error").textContent = message || "";
  }

  function showProgress(progress) {
    $("review-progress").max = Math.max(progress.total, 1);
    $("review-progress").value = progress.decided;
    const notes = [];
    if (progress.carried) notes.push(`${progress.carried} carried from an earlier run`);
    if (progress.kept) notes.push(`${progress.kept} decided ${progress.kept === 1 ? "finding" : "findings"} kept from earlier runs`);
    $("review-progress-text").textContent = `${progress.decided} of ${progress.total} decided` +
      (notes.length ? ` (${notes.join("; ")})` : "");
  }

  function showReviewed(reviewed) {
    const box = $("reviewed-count");
    if (!reviewed) { box.textContent = ""; return; }
    if (reviewed.error) { box.textContent = reviewed.error; return; }
    box.innerHTML = `Reviewed count: <strong>${reviewed.count_per_10_hpf}</strong> per 10 HPF` +
      ` (${reviewed.count_per_mm2.toFixed(2)} per mm²)` + (reviewed.grade ? ` · ${reviewed.grade}` : "");
    box.title = reviewed.grade_rule;
  }

  function choosePhase(phase) {
    review.phase = phase;
    panel.querySelectorAll("[data-phase]").forEach((b) => b.setAttribute("aria-pressed", b.dataset.phase === phase));
  }

  async function loadState() {
    const response = await fetch(panel.dataset.state);
    if (!response.ok) return;
    const data = await response.json();
    const findings = window.mitolensFindings;
    findings.state.verdicts = new Map(Object.values(data.decisions).map((d) => [d.finding, d.verdict]));
    review.decisions = data.decisions;
    review.canDecide = data.can_decide;
    $("decision-reason").innerHTML = VOCABULARY.reasons.map((r) => `<option value="${r.value}">${r.label}</option>`).join("");
    $("review-controls").hidden = !data.can_decide;
    $("review-note").hidden = data.can_decide;
    $("review-note").textContent = data.signed_out ? "This case is signed out: read-only."
      : "Only pathologists assigned to this case can decide.";
    panel.hidden = false;
    showProgress(data.progress);
    showReviewed(data.reviewed);
    findings.applyFilters();
  }

  async function showHistory(findingId) {
    const response = await fetch(panel.dataset.history.replace(/0\/decisions\.json$/, `${findingId}/decisions.json`));
    if (!response.ok) return;
    const data = await response.json();
    $("decision-history").innerHTML = data.decisions.map((d) =>
      `<li><strong>${d.reviewer}</strong> ${d.verdict}${d.corrected_phase ? " → " + d.corrected_phase : ""}` +
      `${d.carried_from ? ` · carried from decision ${d.carried_from} (earlier run)` : ""}` +
      `${d.reason ? " · " + d.reason : ""}${d.comment ? " · “" + escapeHtml(d.comment) + "”" : ""}` +
      ` <span class="muted">${new Date(d.created_at).toLocaleString()}</span></li>`).join("") || "<li class='muted'>None yet.</li>";
  }

  function escapeHtml(text) {
    const div = document.createElement("div");
    div.textContent = text;
    return div.innerHTML;
  }

  document.addEventListener("mitolens:finding", (event) => {
    const finding = event.detail;
    review.current = finding;
    const mine = review.decisions && review.decisions[finding.id];
    choosePhase(mine && mine.corrected_phase ? mine.corrected_phase : "");
    $("decision-comment").value = "";
    $("decision-reason").value = "";
    $("decision-current").textContent = mine ? `Your decision: ${mine.verdict}` +
      (mine.corrected_phase ? ` (${mine.corrected_phase})` : "") : "Not decided by you yet.";
    showError("");
    showHistory(finding.id);
  });

  async function decide(verdict) {
    if (!review.current || !review.canDecide || review.busy) return;
    review.busy = true;
    const finding = review.current;
    try {
      const data = await post(panel.dataset.decide.replace(/0\/decide\/$/, `${finding.id}/decide/`), {
        verdict, corrected_phase: review.phase, reason: $("decision-reason").value,
        comment: $("decision-comment").value,
      });
      review.decisions[finding.id] = data.decision;
      window.mitolensFindings.state.verdicts.set(finding.id, verdict);
      showProgress(data.progress);
      showReviewed(data.reviewed);
      if (finding.blinded) await window.mitolensFindings.reload();
      window.mitolensFindings.step(1);
    } catch (error) {
      showError(error.message);
    } finally {
      review.busy = false;
    }
  }

  function setAdding(on) {
    review.adding = on && review.canDecide;
    $("add-mode").setAttribute("aria-pressed", review.adding);
    viewer.canvas.style.cursor = review.adding ? "crosshair" : "";
  }

  viewer.addHandler("canvas-click", async (event) => {
    if (!review.adding || !event.quick) return;
    event.preventDefaultAction = true;
    const point = viewer.world.getItemAt(0).viewerElementToImageCoordinates(event.position);
    setAdding(false);
    try {
      const data = await post(panel.dataset.add, {
        x: point.x.toFixed(1), y: point.y.toFixed(1), phase: review.phase || "metaphase",
      });
      showProgress(data.progress);
      showReviewed(data.reviewed);
      await window.mitolensFindings.reload();
    } catch (error) {
      showError(error.message);
    }
  });

  panel.addEventListener("click", (event) => {
    const button = event.target.closest("button");
    if (!button) return;
    if (button.dataset.verdict) decide(button.dataset.verdict);
    else if (button.dataset.phase) choosePhase(review.phase === button.dataset.phase ? "" : button.dataset.phase);
    else if (button.id === "add-mode") setAdding(!review.adding);
  });

  const VOCABULARY = JSON.parse(document.getElementById("mitolens-vocabulary").textContent);
  const PHASE_KEYS = Object.fromEntries(VOCABULARY.phases.filter((p) => p.key).map((p) => [p.key, p.name]));
  const VERDICT_KEYS = Object.fromEntries(VOCABULARY.verdicts.map((v) => [v.key, v.value]));
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (VERDICT_KEYS[key]) decide(VERDICT_KEYS[key]);
    else if (PHASE_KEYS[key]) choosePhase(PHASE_KEYS[key]);
    else if (key === "m") setAdding(!review.adding);
    else if (key === "escape") setAdding(false);
    else return;
    event.preventDefault();
  });
  document.addEventListener("mitolens:findings-loaded", function once() {
    document.removeEventListener("mitolens:findings-loaded", once);
    loadState();
  });
})();
