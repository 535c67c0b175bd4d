// Viewer: the mitotic-count heatmap as a translucent image over the slide, the hotspot
// rectangle, and a button (G) that goes to it.
(function () {
  "use strict";
  const element = document.getElementById("viewer");
  const viewer = window.mitolensViewer;
  if (!element || !viewer || !element.dataset.hpf) return;
  const $ = (id) => document.getElementById(id);
  let hotspotRect = null, heatmap = null;

  async function load() {
    const response = await fetch(element.dataset.hpf);
    if (!response.ok) return;
    const data = await response.json();
    if (!data.available) return;
    const slide = viewer.world.getItemAt(0);
    const h = data.hotspot;
    hotspotRect = slide.imageToViewportRectangle(h.x, h.y, h.w, h.h);
    const box = document.createElement("div");
    box.className = "hotspot-box";
    box.title = `Hotspot: ${data.count_per_10_hpf} mitoses over ${data.counted_area_mm2} mm²`;
    viewer.addOverlay({ element: box, location: hotspotRect });
    const grade = data.grade ? ` · ${data.grade}` : "";
    // an out-of-domain run's count is the AI's guess on tissue it does not know
    const unverified = data.unverified ? ' · <span class="warn">unverified</span>' : "";
    const count = data.count_per_10_hpf_extrapolated === null
      ? `<strong>${data.count_per_10_hpf}</strong> per 10 HPF`
      : `<strong>${data.count_per_10_hpf}</strong> in ${data.counted_area_mm2} mm² (partial; ` +
        `${data.count_per_10_hpf_extrapolated} per 10 HPF extrapolated)`;
    $("hpf-count").innerHTML = count + grade + unverified;
    $("hpf-count").title = `${data.count_per_mm2} per mm² over ${data.counted_area_mm2} mm². ` +
      `${data.hotspot_rule} ${data.grade_rule}`;
    $("hpf-controls").hidden = false;
    const columns = data.grid.counts[0].length;
    const widthPx = columns * data.grid.step_px;
    $("show-heatmap").addEventListener("change", (event) => {
      if (!event.target.checked) {
        if (heatmap) { viewer.world.removeItem(heatmap); heatmap = null; }
        return;
      }
      viewer.addTiledImage({
        tileSource: { type: "image", url: data.grid.image_url, buildPyramid: false },
        x: 0, y: 0, width: widthPx / data.slide.width,
        opacity: parseFloat($("heatmap-opacity").value),
        success: (event) => { heatmap = event.item; },
      });
    });
    $("heatmap-opacity").addEventListener("input", (event) => {
      if (heatmap) heatmap.setOpacity(parseFloat(event.target.value));
    });
    $("goto-hotspot").addEventListener("click", goToHotspot);
    if (new URLSearchParams(window.location.search).has("hotspot")) goToHotspot();
  }

  function goToHotspot() {
    if (hotspotRect) viewer.viewport.fitBounds(hotspotRect);
  }

  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select") || event.ctrlKey || event.metaKey) return;
    if (event.key === "g" || event.key === "G") { goToHotspot(); event.preventDefault(); }
  });
  viewer.addHandler("open", function once() { viewer.removeHandler("open", once); load(); });
})();
