"""Findings only where they can be: never outside the slide (detections in the padding of
edge patches) nor off the tissue, whatever the detector's format."""

import pytest
import torch
from torch import nn

from inference.engine.model_io import load_detector
from inference.engine.pipeline import run_slide
from inference.engine.tissue import detect_tissue
from slides import open_slide

SPEC = {"class_names": ["mitotic_figure"], "patch_px": 320, "score_threshold": 0.5}
CORNERS = [(6.0, 6.0), (160.0, 160.0), (314.0, 314.0)]  # in every 320 px patch


class YoloEverywhere(nn.Module):
    """YOLOv7-style rows: a confident detection at each corner of every patch."""

    def __init__(self) -> None:
        super().__init__()
        rows = torch.tensor([[cx, cy, 8.0, 8.0, 0.95, 0.95] for cx, cy in CORNERS])
        self.register_buffer("rows", rows)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows.expand(x.shape[0], -1, 6) + 0 * x.mean()


class CenterNetEverywhere(nn.Module):
    """CenterNet heads (heatmap, size, offset; stride 4): peaks at the same corners."""

    def __init__(self) -> None:
        super().__init__()
        heads = torch.zeros(1, 5, 80, 80)
        heads[:, 0] = -10.0
        for cx, cy in CORNERS:
            heads[:, 0, int(cy // 4), int(cx // 4)] = 10.0
        heads[:, 1:3] = 8.0  # box size, px
        heads[:, 3:5] = 0.5  # centre offset within the cell
        self.register_buffer("heads", heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads.expand(x.shape[0], -1, -1, -1) + 0 * x.mean()


@pytest.mark.parametrize(
    ("fmt", "module"), [("yolo-torchscript", YoloEverywhere), ("torchscript", CenterNetEverywhere)]
)
def test_findings_lie_on_the_slide_and_on_tissue(tmp_path, synthetic_slide, fmt, module):
    path = tmp_path / "detector.torchscript"
    torch.jit.script(module()).save(str(path))
    detector = load_detector(path, fmt, SPEC)
    # every patch, glass included, so edge patches (padded past the slide) are run too
    result = run_slide(synthetic_slide, detector, None, device="cpu", num_workers=0, min_tissue=0)
    with open_slide(synthetic_slide) as slide:
        width, height = slide.dimensions
        tissue = detect_tissue(slide)
    assert result.findings, "the detector answered nowhere on tissue"
    for finding in result.findings:
        x, y = finding["x"], finding["y"]
        assert 0 <= x < width and 0 <= y < height, (x, y)
        x0, y0, x1, y1 = finding["box"]
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height
        near = tissue.fraction(x - tissue.scale_x, y - tissue.scale_y, 2 * tissue.scale_x,
                               2 * tissue.scale_y)  # fmt: skip
        assert near > 0, (x, y)
    # the detector did answer in the padding and on glass: those were dropped, and counted
    assert result.stats["dropped_off_slide"] > 0
    assert result.stats["dropped_off_tissue"] > 0
