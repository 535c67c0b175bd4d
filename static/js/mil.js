// Viewer: the attention-MIL heatmap (where the region model looked) and its prediction.
(function () {
  "use strict";
  const element = document.getElementById("viewer");
  const viewer = window.mitolensViewer;
  if (!element || !viewer || !element.dataset.mil) return;
  const $ = (id) => document.getElementById(id);
  let layer = null;

  async function load() {
    const response = await fetch(element.dataset.mil);
    if (!response.ok) return;
    const data = await response.json();
    if (!data.available) return;
    const width = viewer.world.getItemAt(0).getContentSize().x;
    $("mil-summary").textContent = `${data.model}: tumour in ${data.tumour_regions} of ${data.regions} regions of ${data.region_um} µm`;
    $("mil-controls").hidden = false;
    $("show-mil").addEventListener("change", (event) => {
      if (!event.target.checked) {
        if (layer) { viewer.world.removeItem(layer); layer = null; }
        return;
      }
      viewer.addTiledImage({
        tileSource: { type: "image", url: data.image_url, buildPyramid: false },
        x: 0, y: 0, width: data.width_px / width, opacity: 0.55,
        success: (added) => { layer = added.item; },
      });
    });
  }
  viewer.addHandler("open", function once() { viewer.removeHandler("open", once); load(); });
})();
