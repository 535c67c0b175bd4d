// The finding panel's evidence: five attribution maps over the crop, requested from the
// explain workers when a finding opens and shown one by one as they finish.
(function () {
  "use strict";
  const box = document.getElementById("evidence");
  if (!box) return;
  const $ = (id) => document.getElementById(id);
  const csrf = () => (document.cookie.match(/(?:^|; )csrftoken=([^;]+)/) || [])[1] || "";
  const LABELS = {
    saliency: "Saliency", integrated_gradients: "Integrated Gradients", occlusion: "Occlusion",
    gradient_shap: "GradientSHAP", grad_cam: "Grad-CAM",
  };
  let current = null; // {finding, target, timer}

  const url = (template, id) => template.replace(/\/0\//, `/${id}/`);

  async function request(findingId, target) {
    const body = new URLSearchParams(target ? { target } : {});
    const response = await fetch(url(box.dataset.request, findingId), {
      method: "POST", body, headers: { "X-CSRFToken": csrf() },
    });
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error || `HTTP ${response.status}`);
    }
    return (await response.json()).target;
  }

  function tile(map, cropUrl) {
    const auc = map.quality.deletion_auc, random = map.quality.random_deletion_auc;
    const delta = map.quality.convergence_delta_black;
    const figures = [`${map.ms} ms`, `deletion AUC ${auc.toFixed(3)} (random ${random.toFixed(3)})`];
    if (delta !== undefined) figures.push(`IG δ ${delta.toExponential(1)} / ${map.quality.convergence_delta_blurred.toExponential(1)}`);
    return `<figure class="evidence-map" title="${map.note}">
      <div class="stack"><img src="${cropUrl}" alt=""><img class="map" src="${map.url}" alt="${LABELS[map.method]} map"
        style="opacity:${$("evidence-opacity").value}"></div>
      <figcaption><strong>${LABELS[map.method]}</strong>${map.signed ? " <span class='muted'>±</span>" : ""}
        <span class="muted">${figures.join(" · ")}</span><span class="note">${map.note}</span></figcaption>
    </figure>`;
  }

  async function poll(findingId, target, started) {
    if (!current || current.finding !== findingId) return;
    const query = target ? `?target=${encodeURIComponent(target)}` : "";
    const response = await fetch(url(box.dataset.fetch, findingId) + query);
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      $("evidence-status").textContent = data.error || "The evidence cannot be shown.";
      return;
    }
    const data = await response.json();
    if (!current || current.finding !== findingId) return;
    const select = $("evidence-target");
    if (!select.options.length) {
      select.innerHTML = data.classes.map((c) => `<option value="${c}">${c.replace("_", " ")}</option>`).join("");
    }
    select.value = data.target;
    $("evidence-maps").innerHTML = data.maps.map((m) => tile(m, data.crop_url)).join("");
    const waiting = data.pending.length;
    if (data.failed) $("evidence-status").textContent = `Could not compute: ${data.failed}`;
    else if (waiting && Date.now() - started > 120000) $("evidence-status").textContent = "No explain worker answered; is one running?";
    else $("evidence-status").textContent = waiting ? `Computing ${waiting} of 5 maps with ${data.model}…` : `${data.model}, class ${data.target}`;
    if (waiting && !data.failed && Date.now() - started <= 120000) {
      current.timer = setTimeout(() => poll(findingId, target, started), 500);
    }
  }

  async function show(findingId, target) {
    if (current && current.timer) clearTimeout(current.timer);
    current = { finding: findingId, target };
    $("evidence-maps").innerHTML = "";
    $("evidence-status").textContent = "Requesting evidence…";
    try {
      const chosen = await request(findingId, target);
      poll(findingId, chosen, Date.now());
    } catch (error) {
      $("evidence-status").textContent = error.message;
    }
  }

  document.addEventListener("mitolens:finding", (event) => {
    const finding = event.detail;
    box.hidden = false;
    $("evidence-target").innerHTML = "";
    if (finding.blinded) {
      if (current && current.timer) clearTimeout(current.timer);
      current = null;
      $("evidence-maps").innerHTML = "";
      $("evidence-status").textContent = "Blinded case: the AI's evidence appears once you decide.";
      return;
    }
    show(finding.id, null);
  });
  $("evidence-target").addEventListener("change", (event) => {
    if (current) show(current.finding, event.target.value);
  });
  $("evidence-opacity").addEventListener("input", (event) => {
    box.querySelectorAll("img.map").forEach((img) => { img.style.opacity = event.target.value; });
  });
})();
