// Case page: the mitotic count per 10 HPF over each slide as a Plotly heatmap, hotspot outlined.
(function () {
  "use strict";
  if (!window.Plotly) return;
  document.querySelectorAll("[data-hpf-url]").forEach(async (element) => {
    const response = await fetch(element.dataset.hpfUrl);
    if (!response.ok) return;
    const data = await response.json();
    if (!data.available) return;
    const step = data.grid.step_px;
    const mm = (px) => (px * step * data.mpp) / 1000; // cell index to mm
    const counts = data.grid.counts;
    const xs = counts[0].map((_, i) => mm(i + 0.5));
    const ys = counts.map((_, j) => mm(j + 0.5));
    const h = data.hotspot, toMm = (px) => (px * data.mpp) / 1000;
    Plotly.newPlot(element, [{
      type: "heatmap", z: counts, x: xs, y: ys, colorscale: "YlOrRd", zmin: 0,
      colorbar: { title: { text: "per 10 HPF", side: "right" }, thickness: 10 },
      hovertemplate: "%{z} per 10 HPF at (%{x:.2f}, %{y:.2f}) mm<extra></extra>",
    }], {
      height: 260, margin: { l: 40, r: 10, t: 10, b: 30 },
      xaxis: { title: { text: "mm" }, constrain: "domain" },
      yaxis: { autorange: "reversed", scaleanchor: "x", constrain: "domain" },
      shapes: [{ type: "rect", x0: toMm(h.x), y0: toMm(h.y), x1: toMm(h.x + h.w), y1: toMm(h.y + h.h),
                 line: { color: "#00a0ff", width: 2 } }],
    }, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["select2d", "lasso2d"] });
  });
})();
