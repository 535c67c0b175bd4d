"""Networks: a compact centre-heatmap mitosis detector (with its losses) and ResNet phase
classifiers built from torchvision.

Both return raw outputs (logits / regression maps) so training code can reuse them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, ResNet

PHASES = ("prophase", "metaphase", "anaphase", "telophase", "non_mitotic")
DETECTOR_CLASSES = ("mitotic_figure", "lookalike")
HEATMAP_PRIOR = 0.01


def _conv_bn(cin: int, cout: int, stride: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class _ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with a (projected when needed) identity shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_bn(cin, cout, stride),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class CenterNet(nn.Module):
    """Fully convolutional centre-heatmap detector at output stride 4 (~1.0 M params, 4 MB).

    A residual encoder to stride 32, a feature-pyramid decoder back to stride 4, and a
    shared head. ``forward`` returns one tensor ``(N, C + 4, H/4, W/4)``: C class-heatmap
    logits, then box width and height (in output cells) and the centre's sub-cell
    x/y offset. Use :func:`centernet_loss` to train and ``detect.decode_heatmap`` to decode.
    """

    stride = 4

    def __init__(
        self,
        num_classes: int = len(DETECTOR_CLASSES),
        widths: Sequence[int] = (32, 48, 96, 128),
        head_width: int = 48,
    ) -> None:
        super().__init__()
        w = list(widths)
        self.num_classes = num_classes
        self.stem = nn.Sequential(_conv_bn(3, 24, 2), _conv_bn(24, w[0], 2), _ResBlock(w[0], w[0]))
        self.stages = nn.ModuleList(
            nn.Sequential(_ResBlock(w[i], w[i + 1], 2), _ResBlock(w[i + 1], w[i + 1]))
            for i in range(len(w) - 1)
        )
        self.laterals = nn.ModuleList(nn.Conv2d(c, head_width, 1) for c in w)
        self.smooth = _conv_bn(head_width, head_width)
        self.head = _conv_bn(head_width, head_width)
        self.heatmap = nn.Conv2d(head_width, num_classes, 1)
        self.regression = nn.Conv2d(head_width, 4, 1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))

    def forward(self, x: Tensor) -> Tensor:
        """Raw heads ``(N, C + 4, H/4, W/4)`` for a normalised ``(N, 3, H, W)`` batch."""
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        laterals: list[Tensor] = []
        for i, lateral in enumerate(self.laterals):
            laterals.append(lateral(features[i]))
        top = laterals[-1]
        for i in range(len(laterals) - 2, -1, -1):
            top = laterals[i] + F.interpolate(top, size=laterals[i].shape[-2:], mode="nearest")
        shared = self.head(self.smooth(top))
        return torch.cat([self.heatmap(shared), self.regression(shared)], dim=1)


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


def _resnet10(num_classes: int) -> ResNet:
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)


CLASSIFIER_ARCHS: dict[str, Callable[[int], nn.Module]] = {
    "resnet10": _resnet10,
    "resnet18": lambda n: resnet.resnet18(weights=None, num_classes=n),
    "resnet34": lambda n: resnet.resnet34(weights=None, num_classes=n),
    "resnet50": lambda n: resnet.resnet50(weights=None, num_classes=n),
}


def build_classifier(arch: str = "resnet18", num_classes: int = len(PHASES)) -> nn.Module:
    """A torchvision ResNet phase classifier with a ``num_classes``-way ``fc`` (logits).

    ``resnet50`` matches a lab's torchvision ResNet-50 checkpoint whose ``fc`` was
    replaced by ``Linear(2048, num_classes)``; ``resnet10`` is a one-block-per-stage
    ResNet for fast CPU use.
    """
    try:
        return CLASSIFIER_ARCHS[arch](num_classes)
    except KeyError:
        raise ValueError(
            f"unknown classifier arch {arch!r}; one of {sorted(CLASSIFIER_ARCHS)}"
        ) from None
