"""Training targets and losses of the engine's CenterNet detector
(:class:`inference.engine.networks.CenterNet`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine.networks import CenterNet


@dataclass
class CenterNetTargets:
    """Dense training targets matching :class:`CenterNet` output."""

    heatmap: Tensor  # (N, C, h, w) Gaussian peaks, exactly 1 at object centres
    regression: Tensor  # (N, 4, h, w) width, height (cells), x/y sub-cell offset
    mask: Tensor  # (N, 1, h, w) bool, True at object centres


def centernet_targets(
    boxes: Sequence[Tensor],
    labels: Sequence[Tensor],
    *,
    num_classes: int,
    input_size: tuple[int, int],
    stride: int = CenterNet.stride,
    min_sigma: float = 1.0,
) -> CenterNetTargets:
    """Encode per-image boxes (xyxy, input px) and class labels as dense targets.

    Each object is a Gaussian on its class heatmap with sigma
    ``max(min_sigma, sqrt(w * h) / (6 * stride))`` cells.
    """
    out_h, out_w = input_size[0] // stride, input_size[1] // stride
    n = len(boxes)
    heatmap = torch.zeros(n, num_classes, out_h, out_w)
    regression = torch.zeros(n, 4, out_h, out_w)
    mask = torch.zeros(n, 1, out_h, out_w, dtype=torch.bool)
    gy, gx = torch.meshgrid(
        torch.arange(out_h, dtype=torch.float32),
        torch.arange(out_w, dtype=torch.float32),
        indexing="ij",
    )
    for i, (image_boxes, image_labels) in enumerate(zip(boxes, labels, strict=True)):
        for box, label in zip(image_boxes.tolist(), image_labels.tolist(), strict=True):
            cx, cy = (box[0] + box[2]) / 2 / stride, (box[1] + box[3]) / 2 / stride
            w, h = (box[2] - box[0]) / stride, (box[3] - box[1]) / stride
            ix, iy = int(cx), int(cy)
            if not (0 <= ix < out_w and 0 <= iy < out_h):
                continue
            sigma = max(min_sigma, math.sqrt(max(w * h, 0.0)) / 6)
            peak = torch.exp(-((gx - ix) ** 2 + (gy - iy) ** 2) / (2 * sigma**2))
            heatmap[i, label] = torch.maximum(heatmap[i, label], peak)
            regression[i, :, iy, ix] = torch.tensor([w, h, cx - ix, cy - iy])
            mask[i, 0, iy, ix] = True
    return CenterNetTargets(heatmap, regression, mask)


def heatmap_focal_loss(
    logits: Tensor, target: Tensor, alpha: float = 2.0, beta: float = 4.0
) -> Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of centres."""
    prob = torch.sigmoid(logits)
    positive = target.eq(1).float()
    pos_loss = F.logsigmoid(logits) * (1 - prob) ** alpha * positive
    neg_loss = F.logsigmoid(-logits) * prob**alpha * (1 - target) ** beta * (1 - positive)
    return -(pos_loss.sum() + neg_loss.sum()) / positive.sum().clamp(min=1)


def centernet_loss(
    output: Tensor,
    targets: CenterNetTargets,
    *,
    size_weight: float = 0.1,
    offset_weight: float = 1.0,
) -> dict[str, Tensor]:
    """Focal heatmap loss plus L1 size and offset losses at object centres.

    Returns the parts and their weighted sum under ``"total"``.
    """
    num_classes = targets.heatmap.shape[1]
    heatmap = heatmap_focal_loss(output[:, :num_classes].float(), targets.heatmap)
    mask = targets.mask.expand(-1, 2, -1, -1)
    count = targets.mask.sum().clamp(min=1)
    regression = output[:, num_classes:].float()
    size = F.l1_loss(regression[:, :2][mask], targets.regression[:, :2][mask], reduction="sum")
    offset = F.l1_loss(regression[:, 2:][mask], targets.regression[:, 2:][mask], reduction="sum")
    size, offset = size / count, offset / count
    total = heatmap + size_weight * size + offset_weight * offset
    return {"heatmap": heatmap, "size": size, "offset": offset, "total": total}
