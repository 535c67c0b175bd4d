"""Attention-based multiple-instance learning (Ilse et al. 2018, gated attention) over
slide regions: is there tumour in this region, and which patches say so?

A bag is a ``BAG_UM`` square region read at ``MIL_MPP`` µm/px and cut into a
``GRID`` x ``GRID`` grid of instances (``INSTANCE_PX`` px each). The network embeds each
instance, weighs the embeddings with gated attention, and classifies their weighted
mean. Over a slide, every bag on tissue gives a tumour probability and an attention
weight per instance: the heatmap the viewer overlays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from torch import Tensor, nn

from slides import Scale, read_region, slide_mpp

from .tissue import TissueMask

MIL_MPP = 2.0
INSTANCE_PX = 32  # 64 µm at 2 µm/px
GRID = 8  # instances per bag side: a bag is 512 µm square
BAG_UM = GRID * INSTANCE_PX * MIL_MPP


class GatedAttentionMIL(nn.Module):
    """Instance encoder, gated attention pooling, and a bag classifier (one logit)."""

    def __init__(self, embed_dim: int = 64, attention_dim: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.encoder = nn.Sequential(
            block(3, 24),
            block(24, 48),
            block(48, embed_dim),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.attention_v = nn.Linear(embed_dim, attention_dim)
        self.attention_u = nn.Linear(embed_dim, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(embed_dim, 1)

    def forward(self, bags: Tensor) -> tuple[Tensor, Tensor]:
        """``bags`` (B, N, 3, h, w) normalised -> (bag logits (B,), attention (B, N))."""
        b, n = bags.shape[:2]
        embedded = self.encoder(bags.flatten(0, 1)).view(b, n, -1)
        gate = torch.tanh(self.attention_v(embedded)) * torch.sigmoid(self.attention_u(embedded))
        attention = torch.softmax(self.attention_w(gate).squeeze(-1), dim=1)
        pooled = (attention.unsqueeze(-1) * embedded).sum(1)
        return self.classifier(pooled).squeeze(-1), attention


def to_instances(region: NDArray[np.uint8]) -> Tensor:
    """A (GRID*px, GRID*px, 3) uint8 region -> (GRID*GRID, 3, px, px) float [0, 1]."""
    x = torch.from_numpy(np.array(region)).float().div(255).permute(2, 0, 1)
    p = INSTANCE_PX
    tiles = x.unfold(1, p, p).unfold(2, p, p)  # (3, GRID, GRID, p, p)
    return tiles.permute(1, 2, 0, 3, 4).reshape(GRID * GRID, 3, p, p)


@dataclass(frozen=True)
class MilModel:
    """A trained network with its input normalisation."""

    network: GatedAttentionMIL
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, instances: Tensor) -> tuple[Tensor, Tensor]:
        """(B, N, 3, h, w) in [0, 1] -> (tumour probability (B,), attention (B, N))."""
        logits, attention = self.network(normalise_bags(instances, self.mean, self.std))
        return torch.sigmoid(logits), attention


def normalise_bags(bags: Tensor, mean, std) -> Tensor:
    """(B, N, 3, h, w) [0, 1] bags normalised per colour channel."""
    return (bags - torch.tensor(mean).view(1, 1, 3, 1, 1)) / torch.tensor(std).view(1, 1, 3, 1, 1)


def tumour_fractions(
    polygons: list[list[list[float]]],
    origin: tuple[float, float],
    mpp_ratio: float,
    cells: int,
    cell_px: int,
) -> NDArray[np.float32]:
    """Fraction of each cell of a (cells x cells) grid inside the tumour polygons (level-0
    coordinates; the grid starts at ``origin`` with cells of ``cell_px`` px at
    ``mpp_ratio`` level-0 px per px)."""
    size = cells * cell_px
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for polygon in polygons:
        points = [((x - origin[0]) / mpp_ratio, (y - origin[1]) / mpp_ratio) for x, y in polygon]
        if len(points) >= 3:
            draw.polygon(points, fill=255)
    mask = np.asarray(canvas, np.float32) / 255
    return mask.reshape(cells, cell_px, cells, cell_px).mean((1, 3))


@dataclass
class SlideAttention:
    """Bag probabilities (rows, cols) and instance attention (rows*GRID, cols*GRID) over a
    slide; a bag (r, c) covers level-0 [c*bag_px, (c+1)*bag_px) x [r*bag_px, ...)."""

    probability: NDArray[np.float32]
    attention: NDArray[np.float32]
    on_tissue: NDArray[np.bool_]
    bag_px: float


def slide_attention(
    slide,
    model: MilModel,
    tissue: TissueMask,
    mpp_override: float | None = None,
    min_tissue: float = 0.2,
    batch: int = 8,
) -> SlideAttention:
    """Run the MIL model over every bag of the slide that has tissue.

    Attention is scaled so that 1 is a uniform share (1 / GRID²) within its bag."""
    mpp = slide_mpp(slide, mpp_override)
    scale = Scale.between(mpp, MIL_MPP)
    bag_px = BAG_UM / mpp[0]
    width, height = slide.dimensions
    cols, rows = math.ceil(width / bag_px), math.ceil(height / bag_px)
    xs, ys = np.meshgrid(np.arange(cols) * bag_px, np.arange(rows) * bag_px)
    on_tissue = (tissue.fraction(xs.ravel(), ys.ravel(), bag_px, bag_px) >= min_tissue).reshape(
        rows, cols
    )
    probability = np.zeros((rows, cols), np.float32)
    attention = np.zeros((rows * GRID, cols * GRID), np.float32)
    cells = list(zip(*np.nonzero(on_tissue), strict=True))
    side = GRID * INSTANCE_PX
    with torch.inference_mode():
        for start in range(0, len(cells), batch):
            chunk = cells[start : start + batch]
            regions = [
                to_instances(
                    np.asarray(
                        read_region(
                            slide, (round(c * bag_px), round(r * bag_px)), (side, side), scale
                        )
                    )
                )
                for r, c in chunk
            ]
            probs, weights = model(torch.stack(regions))
            for (r, c), p, w in zip(chunk, probs, weights, strict=True):
                probability[r, c] = float(p)
                block = w.view(GRID, GRID).numpy() * GRID * GRID
                attention[r * GRID : (r + 1) * GRID, c * GRID : (c + 1) * GRID] = block
    return SlideAttention(probability, attention, on_tissue, bag_px)


def bag_loss(logits: Tensor, labels: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, labels.float())
