"""Decoding detector outputs and merging patch detections."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor
from torchvision.ops import batched_nms, box_convert


@dataclass
class Detections:
    """Boxes ``(K, 4)`` as x0, y0, x1, y1; scores ``(K,)``; class indices ``(K,)``."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls, device: torch.device | str = "cpu") -> Detections:
        """No detections."""
        return cls(
            torch.zeros(0, 4, device=device),
            torch.zeros(0, device=device),
            torch.zeros(0, dtype=torch.int64, device=device),
        )

    @classmethod
    def cat(cls, parts: list[Detections]) -> Detections:
        """Concatenate detections (all on one device)."""
        if not parts:
            return cls.empty()
        return cls(
            torch.cat([p.boxes for p in parts]),
            torch.cat([p.scores for p in parts]),
            torch.cat([p.labels for p in parts]),
        )

    def select(self, index: Tensor) -> Detections:
        """The detections at ``index`` (indices or a boolean mask)."""
        return Detections(self.boxes[index], self.scores[index], self.labels[index])

    def centers(self) -> Tensor:
        """Box centres ``(K, 2)``."""
        return (self.boxes[:, :2] + self.boxes[:, 2:]) / 2

    def to(self, device: torch.device | str) -> Detections:
        """The same detections on ``device``."""
        return Detections(self.boxes.to(device), self.scores.to(device), self.labels.to(device))

    def shifted(self, origin: tuple[float, float], scale: tuple[float, float]) -> Detections:
        """Map patch coordinates ``u`` to ``origin + u * scale`` (e.g. to level-0 px)."""
        factor = self.boxes.new_tensor([scale[0], scale[1], scale[0], scale[1]])
        offset = self.boxes.new_tensor([origin[0], origin[1], origin[0], origin[1]])
        return Detections(self.boxes * factor + offset, self.scores, self.labels)


def decode_heatmap(
    output: Tensor,
    num_classes: int,
    *,
    stride: int,
    score_threshold: float,
    max_per_image: int = 256,
    kernel: int = 3,
) -> list[Detections]:
    """Decode centre-heatmap output ``(N, C + 4, h, w)`` into per-image detections.

    Peaks are cells equal to the max of their ``kernel`` neighbourhood with sigmoid score
    at least ``score_threshold``; boxes come from the size and offset channels, in input
    pixels (cell ``i`` with offset ``d`` is centred at ``(i + d) * stride``).
    """
    output = output.float()
    heat = torch.sigmoid(output[:, :num_classes])
    peaks = heat == F.max_pool2d(heat, kernel, stride=1, padding=kernel // 2)
    heat = torch.where(peaks & (heat >= score_threshold), heat, torch.zeros_like(heat))
    n, _, height, width = heat.shape
    scores, index = heat.flatten(1).topk(min(max_per_image, heat[0].numel()), dim=1)
    image = torch.arange(n, device=heat.device)[:, None].expand_as(index)
    labels, cell = index // (height * width), index % (height * width)
    cy, cx = cell // width, cell % width
    regression = output[:, num_classes : num_classes + 4].permute(0, 2, 3, 1)[image, cy, cx]
    centre_x = (cx + regression[..., 2]) * stride
    centre_y = (cy + regression[..., 3]) * stride
    half_w = regression[..., 0].clamp(min=0) * stride / 2
    half_h = regression[..., 1].clamp(min=0) * stride / 2
    boxes = torch.stack(
        [centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], -1
    )
    keep = scores > 0
    counts = keep.sum(1).tolist()
    return [
        Detections(*parts)
        for parts in zip(
            boxes[keep].split(counts),
            scores[keep].split(counts),
            labels[keep].split(counts),
            strict=True,
        )
    ]


def decode_yolo(
    raw: Tensor,
    *,
    score_threshold: float,
    iou_threshold: float,
    max_per_image: int = 300,
) -> list[Detections]:
    """Decode YOLOv7-style raw output ``(N, anchors, 5 + C)`` into per-image detections.

    Rows are ``[cx, cy, w, h, objectness, class scores...]`` in input pixels (already
    sigmoid-activated, as YOLOv7 exports them). Confidence is objectness times the best
    class score; rows below ``score_threshold`` are dropped, then per-class NMS.
    """
    raw = raw.float()
    results = []
    for image in raw:
        scores, labels = (image[:, 5:] * image[:, 4:5]).max(dim=1)
        keep = scores >= score_threshold
        boxes = box_convert(image[keep, :4], "cxcywh", "xyxy")
        scores, labels = scores[keep], labels[keep]
        kept = batched_nms(boxes, scores, labels, iou_threshold)[:max_per_image]
        results.append(Detections(boxes[kept], scores[kept], labels[kept]))
    return results


def merge_detections(
    detections: Detections, *, iou_threshold: float = 0.3, min_distance: float = 0.0
) -> Detections:
    """Remove duplicates from overlapping patches (class-agnostic), highest score first.

    A detection is dropped when a kept, higher-scoring one overlaps it with IoU above
    ``iou_threshold`` or has its centre within ``min_distance``. Candidate pairs come from
    a k-d tree, so this scales to whole-slide counts. Returns detections sorted by
    descending score.
    """
    ranked = detections.select(detections.scores.argsort(descending=True, stable=True))
    if len(ranked) < 2:
        return ranked
    boxes = ranked.boxes.detach().cpu().double().numpy()
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    reach = max(min_distance, float((boxes[:, 2:] - boxes[:, :2]).max()))
    pairs = cKDTree(centres).query_pairs(reach, p=np.inf, output_type="ndarray")
    low, high = pairs.min(1), pairs.max(1)  # lower index = higher score
    conflict = (_pair_iou(boxes[low], boxes[high]) > iou_threshold) | (
        np.hypot(*(centres[low] - centres[high]).T) < min_distance
    )
    keep = _greedy_keep(len(ranked), low[conflict], high[conflict])
    return ranked.select(torch.from_numpy(np.flatnonzero(keep)).to(ranked.boxes.device))


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box pairs ``a[i]``, ``b[i]`` (xyxy)."""
    inter = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)
    inter_area = inter.prod(1)
    area = (a[:, 2:] - a[:, :2]).prod(1) + (b[:, 2:] - b[:, :2]).prod(1) - inter_area
    return np.divide(inter_area, area, out=np.zeros_like(area), where=area > 0)


def _greedy_keep(count: int, winner: np.ndarray, loser: np.ndarray) -> np.ndarray:
    """Keep mask after greedy suppression in index order: a kept ``winner`` drops ``loser``."""
    order = np.argsort(winner, kind="stable")
    winner, loser = winner[order], loser[order]
    starts = np.searchsorted(winner, np.arange(count + 1))
    keep = np.ones(count, dtype=bool)
    for i in np.unique(winner):
        if keep[i]:
            keep[loser[starts[i] : starts[i + 1]]] = False
    return keep
