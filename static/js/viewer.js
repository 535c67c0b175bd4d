// Slide viewer: OpenSeadragon with navigator, full-resolution zoom and a µm scale bar.
(function () {
  "use strict";
  const element = document.getElementById("viewer");
  if (!element) return;

  const mpp = parseFloat(element.dataset.mpp) || null;
  const viewer = OpenSeadragon({
    element: element,
    prefixUrl: element.dataset.prefix,
    tileSources: element.dataset.dzi,
    showNavigator: true,
    navigatorPosition: "BOTTOM_RIGHT",
    maxZoomPixelRatio: 2,
    visibilityRatio: 0.5,
    animationTime: 0.4,
    crossOriginPolicy: false,
    gestureSettingsMouse: { clickToZoom: false },
  });
  window.mitolensViewer = viewer;

  // Our review keys must not also pan, rotate or flip the slide (OpenSeadragon's own keys).
  const REVIEW_KEYS = new Set(["a", "d", "u", "n", "p", "z", "h", "m", "g", "f", "1", "2", "3", "4"]);
  viewer.addHandler("canvas-key", (event) => {
    if (REVIEW_KEYS.has((event.originalEvent.key || "").toLowerCase())) event.preventDefaultAction = true;
  });

  // Scale bar: a round length in µm that is 80–200 screen pixels long.
  const NICE_LENGTHS = [1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000, 2000, 5000, 10000];
  const bar = document.createElement("div");
  bar.className = "scalebar";
  element.appendChild(bar);

  function updateScaleBar() {
    if (!mpp || !viewer.world.getItemCount()) {
      bar.hidden = true;
      return;
    }
    const imageZoom = viewer.viewport.viewportToImageZoom(viewer.viewport.getZoom(true));
    const micronsPerScreenPx = mpp / imageZoom;
    const length = NICE_LENGTHS.find((um) => um / micronsPerScreenPx >= 80) || NICE_LENGTHS.at(-1);
    bar.hidden = false;
    bar.style.width = Math.round(length / micronsPerScreenPx) + "px";
    bar.textContent = length >= 1000 ? length / 1000 + " mm" : length + " µm";
  }
  viewer.addHandler("animation", updateScaleBar);
  viewer.addHandler("open", updateScaleBar);
  viewer.addHandler("resize", updateScaleBar);

  // F: zoom to full resolution (one image pixel per screen pixel) at the centre.
  document.addEventListener("keydown", (event) => {
    if (event.target.closest("input, textarea, select")) return;
    if (event.key === "f" || event.key === "F") {
      viewer.viewport.zoomTo(viewer.viewport.imageToViewportZoom(1));
    }
  });
})();
