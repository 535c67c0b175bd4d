"""Mitotic count per 10 high-power fields at every position of a slide, and its hotspot.

Ten HPF are one 4:3 rectangle of ``10 × hpf_area`` mm² (2.37 mm² for the usual 0.237 mm²
field). Finding centroids are binned on a grid whose cells tile that rectangle exactly
(32 × 24 cells), so a box filter over the cell counts is the exact count inside each
window, and an integral image gives every window at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .tissue import TissueMask

HPF_AREA_MM2 = 0.237
FIELDS = 10
CELLS_X, CELLS_Y = 32, 24  # cells per window side; 32:24 is the 4:3 of the window


def window_px(mpp: float, area_mm2: float) -> tuple[float, float]:
    """Width and height in level-0 px of a 4:3 rectangle of ``area_mm2`` at ``mpp`` µm/px."""
    if not (mpp and mpp > 0):
        raise ValueError("the slide has no µm/px: the HPF area cannot be converted to pixels")
    width_um = math.sqrt(area_mm2 * 4 / 3) * 1000
    height_um = math.sqrt(area_mm2 * 3 / 4) * 1000
    return width_um / mpp, height_um / mpp


@dataclass(frozen=True)
class HpfResult:
    """Counts of the window centred on every grid cell, and the hotspot window.

    ``counts[j, i]`` is the number of points in the window centred on cell (i, j), whose
    level-0 box is ``[i * step, (i + 1) * step) x [j * step, ...)``; ``tissue`` is each
    such window's tissue fraction (area outside the slide is not tissue). The hotspot is
    the highest count among windows inside the slide with at least ``min_tissue`` tissue
    (``relaxed``: no window had that much, so the most-tissue windows were used).
    """

    counts: NDArray[np.int32]
    tissue: NDArray[np.float32]
    step: float
    window: tuple[float, float]
    area_mm2: float
    hotspot: tuple[float, float, float, float]
    hotspot_count: int
    min_tissue: float
    relaxed: bool

    @property
    def hotspot_per_mm2(self) -> float:
        """The hotspot count per mm²."""
        return self.hotspot_count / self.area_mm2


def _box_sums(values: NDArray, kx: int, ky: int) -> NDArray:
    """Sums of ``values`` over every (ky, kx) window centred on each cell, zero outside."""
    ny, nx = values.shape
    left, top = kx // 2, ky // 2
    padded = np.zeros((ny + ky, nx + kx), np.float64)
    padded[top : top + ny, left : left + nx] = values
    integral = np.zeros((padded.shape[0] + 1, padded.shape[1] + 1), np.float64)
    integral[1:, 1:] = padded.cumsum(0).cumsum(1)
    return (
        integral[ky : ky + ny, kx : kx + nx]
        - integral[:ny, kx : kx + nx]
        - integral[ky : ky + ny, :nx]
        + integral[:ny, :nx]
    )


def _cell_tissue(tissue: TissueMask | None, nx: int, ny: int, step: float) -> NDArray:
    """Tissue fraction of every grid cell (1 everywhere without a mask)."""
    if tissue is None:
        return np.ones((ny, nx))
    xs, ys = np.meshgrid(np.arange(nx) * step, np.arange(ny) * step)
    return tissue.fraction(xs.ravel(), ys.ravel(), step, step).reshape(ny, nx)


def hpf_counts(
    points: ArrayLike,
    size: tuple[int, int],
    mpp: float,
    *,
    tissue: TissueMask | None = None,
    window_tissue: NDArray | None = None,
    hpf_area_mm2: float = HPF_AREA_MM2,
    min_tissue: float = 0.95,
) -> HpfResult:
    """Count level-0 ``points`` (N, 2) per 10 HPF over a slide of ``size`` (width, height)
    px at ``mpp`` µm/px and find the hotspot window.

    Tissue comes from ``tissue`` (a mask), or ``window_tissue`` (the ``tissue`` grid of an
    earlier result for the same slide and scale), or is assumed everywhere.
    """
    area = FIELDS * hpf_area_mm2
    width, height = window_px(mpp, area)
    step = width / CELLS_X
    nx, ny = max(1, math.ceil(size[0] / step)), max(1, math.ceil(size[1] / step))
    xy = np.asarray(points, np.float64).reshape(-1, 2)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < size[0]) & (xy[:, 1] >= 0) & (xy[:, 1] < size[1])
    cx = np.minimum((xy[inside, 0] // step).astype(np.int64), nx - 1)
    cy = np.minimum((xy[inside, 1] // step).astype(np.int64), ny - 1)
    cells = np.bincount(cy * nx + cx, minlength=nx * ny).reshape(ny, nx)
    counts = np.rint(_box_sums(cells, CELLS_X, CELLS_Y)).astype(np.int32)
    window_tissue = (
        _box_sums(_cell_tissue(tissue, nx, ny, step), CELLS_X, CELLS_Y) / (CELLS_X * CELLS_Y)
    ).astype(np.float32)
    best, relaxed = _hotspot(counts, window_tissue, nx, ny, min_tissue)
    j, i = best
    x0, y0 = (i - CELLS_X // 2) * step, (j - CELLS_Y // 2) * step
    return HpfResult(
        counts=counts,
        tissue=window_tissue,
        step=step,
        window=(width, height),
        area_mm2=area,
        hotspot=(float(max(x0, 0.0)), float(max(y0, 0.0)), width, height),
        hotspot_count=int(counts[j, i]),
        min_tissue=min_tissue,
        relaxed=relaxed,
    )


def _hotspot(counts, window_tissue, nx: int, ny: int, min_tissue: float):
    """(row, col) of the best window centre, and whether the tissue rule was relaxed.

    Only windows that lie inside the slide qualify; a slide smaller than a window has
    one candidate, the window at its top-left corner.
    """
    inside = _fits(ny, CELLS_Y)[:, None] & _fits(nx, CELLS_X)[None, :]
    eligible = inside & (window_tissue >= min_tissue - 1e-6)
    relaxed = not eligible.any()
    if relaxed:
        best_tissue = window_tissue[inside].max()
        eligible = inside & (window_tissue >= best_tissue - 1e-6)
    ranked = np.where(eligible, counts, -1)
    return np.unravel_index(int(np.argmax(ranked)), ranked.shape), relaxed


def _fits(cells: int, span: int) -> NDArray[np.bool_]:
    """Centre cells whose window lies inside ``cells``; when the slide is narrower than a
    window, the one centre whose window covers it all."""
    centres = np.arange(cells)
    if cells < span:
        return centres == min(span // 2, cells - 1)
    left = centres - span // 2
    return (left >= 0) & (left + span <= cells)


def count_in_rectangle(points: ArrayLike, rectangle: tuple[float, float, float, float]) -> int:
    """Brute-force count of points in ``[x, x + w) x [y, y + h)``."""
    xy = np.asarray(points, np.float64).reshape(-1, 2)
    x, y, w, h = rectangle
    return int(np.sum((xy[:, 0] >= x) & (xy[:, 0] < x + w) & (xy[:, 1] >= y) & (xy[:, 1] < y + h)))
