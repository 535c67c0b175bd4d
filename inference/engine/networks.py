"""Networks: a compact centre-heatmap mitosis detector and ResNet phase classifiers built
from torchvision.

Both return raw outputs (logits / regression maps) so training code (``inference.tools``,
which holds the detector's targets and losses) can reuse them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, ResNet

from .vocabulary import PHASES

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
    x/y offset. Decode with ``detect.decode_heatmap``; ``tools.centernet`` trains it.
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


def _resnet10(num_classes: int) -> ResNet:
    return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)


def _resnet8_os8(num_classes: int) -> ResNet:
    """ResNet-10 without its last stage and with its third at stride 1 (output stride 8):
    its last block is 8 x 8 on a 64 px crop, fine enough for Grad-CAM to point at a figure,
    for 1.4x ResNet-10's multiply-adds."""
    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=num_classes)
    first = model.layer3[0]
    first.conv1.stride = first.downsample[0].stride = (1, 1)
    model.layer4 = nn.Identity()
    model.fc = nn.Linear(256, num_classes)
    return model


CLASSIFIER_ARCHS: dict[str, Callable[[int], nn.Module]] = {
    "resnet8_os8": _resnet8_os8,
    "resnet10": _resnet10,
    "resnet18": lambda n: resnet.resnet18(weights=None, num_classes=n),
    "resnet34": lambda n: resnet.resnet34(weights=None, num_classes=n),
    "resnet50": lambda n: resnet.resnet50(weights=None, num_classes=n),
}


def build_classifier(arch: str = "resnet18", num_classes: int = len(PHASES)) -> nn.Module:
    """A torchvision ResNet phase classifier with a ``num_classes``-way ``fc`` (logits).

    ``resnet50`` matches a lab's torchvision ResNet-50 checkpoint whose ``fc`` was
    replaced by ``Linear(2048, num_classes)``; ``resnet10`` is a one-block-per-stage
    ResNet for fast CPU use, ``resnet8_os8`` the shipped one (see _resnet8_os8).
    """
    try:
        return CLASSIFIER_ARCHS[arch](num_classes)
    except KeyError:
        raise ValueError(
            f"unknown classifier arch {arch!r}; one of {sorted(CLASSIFIER_ARCHS)}"
        ) from None
