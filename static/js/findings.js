// Findings over the slide: one canvas redrawn per frame, markers grouped into a few
// paths (by phase shape and score colour) so 10,000 findings stay smooth.
(function () {
  "use strict";
  const element = document.getElementById("viewer");
  const viewer = window.mitolensViewer;
  if (!element || !viewer) return;

  // Phase names, labels, shapes and keys come from the server (review/vocabulary.py).
  const VOCABULARY = JSON.parse(document.getElementById("mitolens-vocabulary").textContent);
  const PHASES = Object.fromEntries(VOCABULARY.phases.map((p) => [p.name, p]));
  PHASES.hidden = { label: "Blinded", shape: "circle", key: "", mitotic: true }; // reader study: not yet decided
  // A phase's colour as CSS (none for the blinded sign: the dot's grey), and its dot.
  const phaseColour = (name) => (PHASES[name] && PHASES[name].rgb ? `background:rgb(${PHASES[name].rgb.join(",")})` : "");
  const phaseDot = (name) =>
    `<span class="phase-dot shape-${PHASES[name] ? PHASES[name].shape : "circle"}" style="${phaseColour(name)}"></span>`;
  const VERDICT_COLOURS = { agree: "#00c853", disagree: "#ff1744", uncertain: "#ffab00" };
  const LOW = [255, 145, 0]; // score colour ramp: orange (at the threshold) to green (1.0)
  const HIGH = [0, 200, 83];
  const BUCKETS = 8;
  const PAGE = 200;

  const state = {
    findings: null, // columns from findings.json
    run: null, // the shown run (findings.json's "run")
    visible: [], // indices that pass the filters, in list order
    selected: -1,
    threshold: 0.5,
    phases: new Set(Object.keys(PHASES).filter((name) => PHASES[name].mitotic)), // shown at first
    verdicts: new Map(), // finding id -> this reader's verdict (filled by review.js)
    show: true,
    listed: PAGE,
  };
  const $ = (id) => document.getElementById(id);

  const canvas = document.createElement("canvas");
  canvas.className = "finding-overlay";
  viewer.canvas.appendChild(canvas);

  function colourFor(score) {
    const t = score == null ? 1 : Math.max(0, Math.min(1, (score - state.threshold) / (1 - state.threshold || 1)));
    const bucket = Math.round(t * (BUCKETS - 1)) / (BUCKETS - 1);
    const c = LOW.map((low, i) => Math.round(low + (HIGH[i] - low) * bucket));
    return `rgb(${c[0]},${c[1]},${c[2]})`;
  }

  function addShape(path, shape, x, y, r) {
    if (shape === "circle") {
      path.moveTo(x + r, y);
      path.arc(x, y, r, 0, 2 * Math.PI);
    } else if (shape === "square") {
      path.rect(x - r, y - r, 2 * r, 2 * r);
    } else if (shape === "diamond") {
      path.moveTo(x, y - r); path.lineTo(x + r, y); path.lineTo(x, y + r); path.lineTo(x - r, y); path.closePath();
    } else if (shape === "triangle") {
      path.moveTo(x, y - r); path.lineTo(x + r, y + r * 0.8); path.lineTo(x - r, y + r * 0.8); path.closePath();
    } else if (shape === "plus") {
      path.moveTo(x - r, y); path.lineTo(x + r, y); path.moveTo(x, y - r); path.lineTo(x, y + r);
    } else {
      path.moveTo(x - r, y - r); path.lineTo(x + r, y + r); path.moveTo(x + r, y - r); path.lineTo(x - r, y + r);
    }
  }

  // Image (level-0) px to canvas px: one affine map per frame instead of one call per finding.
  function imageToCanvas() {
    const item = viewer.world.getItemAt(0);
    const origin = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(0, 0));
    const unit = item.imageToViewerElementCoordinates(new OpenSeadragon.Point(1, 0));
    const ratio = window.devicePixelRatio || 1;
    return { x0: origin.x * ratio, y0: origin.y * ratio, s: (unit.x - origin.x) * ratio, ratio };
  }

  function draw() {
    const ratio = window.devicePixelRatio || 1;
    const width = viewer.canvas.clientWidth, height = viewer.canvas.clientHeight;
    if (canvas.width !== width * ratio || canvas.height !== height * ratio) {
      canvas.width = width * ratio; canvas.height = height * ratio;
      canvas.style.width = width + "px"; canvas.style.height = height + "px";
    }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    const f = state.findings;
    if (!f || !state.show || !viewer.world.getItemCount()) return;
    const m = imageToCanvas();
    const groups = new Map();
    const minRadius = 7 * ratio, margin = 40 * ratio;
    for (const i of state.visible) {
      const x = m.x0 + f.x[i] * m.s, y = m.y0 + f.y[i] * m.s;
      if (x < -margin || y < -margin || x > canvas.width + margin || y > canvas.height + margin) continue;
      const r = Math.max(minRadius, 0.6 * Math.max(f.x1[i] - f.x0[i], f.y1[i] - f.y0[i]) * m.s);
      const shape = f.source[i] === "pathologist" ? "plus" : PHASES[f.phase[i]].shape;
      const key = shape + "|" + colourFor(f.score[i]);
      if (!groups.has(key)) groups.set(key, new Path2D());
      addShape(groups.get(key), shape, x, y, r);
    }
    for (const [key, path] of groups) {
      ctx.lineWidth = 4 * ratio; ctx.strokeStyle = "rgba(0,0,0,0.75)"; ctx.stroke(path);
      ctx.lineWidth = 2 * ratio; ctx.strokeStyle = key.split("|")[1]; ctx.stroke(path);
    }
    drawVerdicts(ctx, m, minRadius, margin);
    if (state.selected >= 0) {
      const i = state.selected;
      const x = m.x0 + f.x[i] * m.s, y = m.y0 + f.y[i] * m.s;
      const r = Math.max(14 * ratio, 0.8 * (f.x1[i] - f.x0[i]) * m.s);
      ctx.lineWidth = 2 * ratio; ctx.strokeStyle = "#00e5ff"; ctx.setLineDash([6 * ratio, 4 * ratio]);
      ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.stroke(); ctx.setLineDash([]);
    }
  }

  // A small square at each decided finding's upper right, coloured by this reader's verdict.
  function drawVerdicts(ctx, m, minRadius, margin) {
    if (!state.verdicts.size) return;
    const f = state.findings, side = 7 * m.ratio;
    for (const i of state.visible) {
      const verdict = state.verdicts.get(f.id[i]);
      if (!verdict) continue;
      const x = m.x0 + f.x[i] * m.s + minRadius, y = m.y0 + f.y[i] * m.s - minRadius - side;
      if (x < -margin || y < -margin || x > canvas.width + margin || y > canvas.height + margin) continue;
      ctx.fillStyle = "#000"; ctx.fillRect(x - m.ratio, y - m.ratio, side + 2 * m.ratio, side + 2 * m.ratio);
      ctx.fillStyle = VERDICT_COLOURS[verdict]; ctx.fillRect(x, y, side, side);
    }
  }

  function applyFilters() {
    const f = state.findings;
    state.visible = [];
    if (!f) return;
    for (let i = 0; i < f.id.length; i++) {
      const ai = f.source[i] === "ai" && !fromEarlierRun(i); // decided ones always show
      const belowThreshold = f.score[i] != null && f.score[i] < state.threshold;
      if (ai && (belowThreshold || !state.phases.has(f.phase[i]))) continue;
      state.visible.push(i);
    }
    $("finding-count").textContent = `${state.visible.length} of ${f.id.length} shown`;
    state.listed = PAGE;
    renderList();
    viewer.forceRedraw();
    draw();
  }

  // A decided finding of an earlier run that the shown run did not find again.
  function fromEarlierRun(i) {
    const f = state.findings;
    return Boolean(state.run && f.run[i] && f.run[i] !== state.run.id);
  }

  function renderList() {
    const list = $("finding-list");
    const f = state.findings;
    const rows = state.visible.slice(0, state.listed).map((i, n) => {
      const phase = PHASES[f.phase[i]] ? PHASES[f.phase[i]].label : f.phase[i];
      const verdict = state.verdicts.get(f.id[i]);
      const mark = verdict ? `<span class="verdict verdict-${verdict}" title="${verdict}"></span>` : "";
      const score = f.score[i] == null ? (f.source[i] === "ai" ? "–" : "added")
        : f.score[i].toFixed(2);
      const origin = fromEarlierRun(i)
        ? ` <span class="muted" title="Decided on an earlier run; the latest run did not find it again">from run ${f.run[i]}</span>` : "";
      const current = i === state.selected ? ' aria-current="true"' : "";
      return `<li data-index="${i}"${current}>${phaseDot(f.phase[i])}` +
        `<span>${phase}${mark}${origin}</span><span class="num">${score}</span><span class="muted">#${n + 1}</span></li>`;
    });
    list.innerHTML = rows.join("");
    $("more-findings").hidden = state.visible.length <= state.listed;
  }

  function zoomTo(i, animate) {
    const f = state.findings;
    const half = Math.max(300, 2 * (f.x1[i] - f.x0[i]));
    const rect = viewer.world.getItemAt(0).imageToViewportRectangle(f.x[i] - half, f.y[i] - half, 2 * half, 2 * half);
    viewer.viewport.fitBounds(rect, !animate);
  }

  async function select(i, zoom) {
    const f = state.findings;
    state.selected = i;
    renderList();
    const item = $("finding-list").querySelector(`[data-index="${i}"]`);
    if (item) item.scrollIntoView({ block: "nearest" });
    if (zoom) zoomTo(i, true);
    draw();
    const url = element.dataset.findingUrl.replace(/0\.json$/, `${f.id[i]}.json`);
    const response = await fetch(url);
    if (!response.ok || state.selected !== i) return;
    showFinding(await response.json(), i);
  }

  function showFinding(finding, i) {
    $("finding-panel").hidden = false;
    $("finding-crop").src = finding.crop_url;
    const position = state.visible.indexOf(i);
    $("finding-position").textContent = position >= 0 ? `${position + 1} of ${state.visible.length}` : "";
    const facts = [
      ["Source", finding.source === "ai" ? (finding.kept ? `AI, from run ${finding.run} (decided there; the latest run did not find it again)` : "AI") : "Pathologist"],
      ["Phase", finding.phase_label],
      ["Score", finding.score == null ? "–" : finding.score.toFixed(3)],
      ["Centre", `${Math.round(finding.x)}, ${Math.round(finding.y)} px`],
    ];
    if (finding.models) facts.push(["Models", `${finding.models.detector} · ${finding.models.classifier}`]);
    $("finding-facts").innerHTML = facts.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join("");
    const probs = Object.entries(finding.phase_probs || {}).sort((a, b) => b[1] - a[1]);
    $("phase-probs").innerHTML = probs.map(([phase, p]) =>
      `<div class="prob"><span>${PHASES[phase] ? PHASES[phase].label : phase}</span>` +
      `<span class="bar"><span style="width:${(100 * p).toFixed(1)}%;${phaseColour(phase)}"></span></span>` +
      `<span class="num">${(100 * p).toFixed(0)} %</span></div>`).join("");
    document.dispatchEvent(new CustomEvent("mitolens:finding", { detail: finding }));
  }

  // Next (delta 1) goes to the next undecided finding in list order, or the next one when
  // every finding after this one is decided; previous (-1) to the one before.
  function step(delta) {
    if (!state.visible.length) return;
    const at = state.visible.indexOf(state.selected);
    let next = at < 0 ? (delta > 0 ? 0 : state.visible.length - 1)
      : Math.max(0, Math.min(state.visible.length - 1, at + delta));
    if (delta > 0) {
      const undecided = state.visible.findIndex((i, n) => n >= next && !state.verdicts.has(state.findings.id[i]));
      if (undecided >= 0) next = undecided;
    }
    if (next >= state.listed) { state.listed = next + PAGE; }
    select(state.visible[next], true);
  }

  function nearestTo(point) {
    const f = state.findings, m = imageToCanvas();
    let best = -1, bestDistance = (16 * m.ratio) ** 2;
    for (const i of state.visible) {
      const dx = m.x0 + f.x[i] * m.s - point.x * m.ratio, dy = m.y0 + f.y[i] * m.s - point.y * m.ratio;
      const d = dx * dx + dy * dy;
      if (d < bestDistance) { best = i; bestDistance = d; }
    }
    return best;
  }

  function buildFilters() {
    $("phase-filters").innerHTML = Object.entries(PHASES).filter(([phase]) => phase !== "hidden").map(([phase, p]) =>
      `<label class="chip"><input type="checkbox" value="${phase}" ${state.phases.has(phase) ? "checked" : ""}>` +
      `${phaseDot(phase)}${p.label}</label>`).join("");
    $("phase-filters").addEventListener("change", (event) => {
      const box = event.target;
      if (box.checked) state.phases.add(box.value); else state.phases.delete(box.value);
      applyFilters();
    });
    const slider = $("score-threshold");
    slider.value = state.threshold;
    $("score-threshold-value").textContent = state.threshold.toFixed(2);
    slider.addEventListener("input", () => {
      state.threshold = parseFloat(slider.value);
      $("score-threshold-value").textContent = state.threshold.toFixed(2);
      applyFilters();
    });
    $("show-findings").addEventListener("change", (event) => { state.show = event.target.checked; draw(); });
  }

  // Loads (or reloads, keeping the selection and filters) the slide's findings.
  async function load() {
    const response = await fetch(element.dataset.findings);
    if (!response.ok) return;
    const data = await response.json();
    const selectedId = state.selected >= 0 ? state.findings.id[state.selected] : null;
    const first = state.findings === null;
    state.findings = data.findings;
    state.run = data.run;
    state.selected = selectedId === null ? -1 : data.findings.id.indexOf(selectedId);
    if (data.run && first) state.threshold = data.run.score_threshold;
    if (data.run) $("run-label").textContent = `run ${data.run.id}`;
    $("no-findings").hidden = Boolean(data.run) || data.findings.id.length > 0;
    $("finding-controls").hidden = false;
    if (first) buildFilters();
    applyFilters();
    window.mitolensFindings = { state, select, reload: load, applyFilters, step, zoomTo, draw };
    document.dispatchEvent(new CustomEvent("mitolens:findings-loaded"));
  }

  $("finding-list").addEventListener("click", (event) => {
    const row = event.target.closest("[data-index]");
    if (row) select(parseInt(row.dataset.index, 10), true);
  });
  $("more-findings").addEventListener("click", () => { state.listed += PAGE; renderList(); });
  viewer.addHandler("update-viewport", draw);
  viewer.addHandler("canvas-click", (event) => {
    if (!event.quick || !state.findings) return;
    const i = nearestTo(event.position);
    if (i >= 0) { event.preventDefaultAction = true; select(i, false); }
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (key === "n") step(1);
    else if (key === "p") step(-1);
    else if (key === "z" && state.selected >= 0) zoomTo(state.selected, true);
    else if (key === "h") { state.show = !state.show; $("show-findings").checked = state.show; draw(); }
    else return;
    event.preventDefault();
  });
  viewer.addHandler("open", load);
})();
