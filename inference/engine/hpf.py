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
# tissue shares tried after min_tissue when no window reaches it (see tissue_bars)
LOWER_BARS = (0.75, 0.5, 0.25)


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
    such window's tissue fraction of its area inside the slide. ``hotspot`` is the window
    chosen by :func:`hotspot_cell` (at the tissue bar ``tissue_bar``) clipped to the slide,
    and ``counted_area_mm2`` its area: less than ``area_mm2`` on a slide smaller than the
    window, and by under one grid cell where a window overhangs the slide's last cells.
    """

    counts: NDArray[np.int32]
    tissue: NDArray[np.float32]
    step: float
    window: tuple[float, float]
    area_mm2: float
    hotspot: tuple[float, float, float, float]
    hotspot_count: int
    min_tissue: float
    tissue_bar: float
    counted_area_mm2: float
    smaller_than_window: bool

    @property
    def relaxed(self) -> bool:
        """No window reached ``min_tissue``: the bar was lowered."""
        return self.tissue_bar < self.min_tissue

    @property
    def partial(self) -> bool:
        """The count covers less than 10 HPF of tissue: the slide is smaller than the
        window (which is clipped to it), or no window reached ``min_tissue``."""
        return self.relaxed or self.smaller_than_window

    @property
    def hotspot_per_mm2(self) -> float:
        """The hotspot count per mm² of the area counted."""
        return self.hotspot_count / self.counted_area_mm2


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


def _cell_inside(size: tuple[int, int], nx: int, ny: int, step: float) -> NDArray:
    """Share of every grid cell that lies inside the slide (the last row/column may not)."""
    fx = np.clip((size[0] - np.arange(nx) * step) / step, 0, 1)
    fy = np.clip((size[1] - np.arange(ny) * step) / step, 0, 1)
    return np.outer(fy, fx)


def _cell_tissue(tissue: TissueMask | None, in_slide: NDArray, step: float) -> NDArray:
    """Tissue fraction of every grid cell (all of it inside the slide without a mask)."""
    if tissue is None:
        return in_slide
    ny, nx = in_slide.shape
    xs, ys = np.meshgrid(np.arange(nx) * step, np.arange(ny) * step)
    return tissue.fraction(xs.ravel(), ys.ravel(), step, step).reshape(ny, nx)


def _window_tissue(
    tissue: TissueMask | None, size: tuple[int, int], nx: int, ny: int, step: float
) -> NDArray:
    """Tissue share of every window's area inside the slide, rounded as it is stored (so
    a recount from the stored grid picks the same hotspot)."""
    in_slide = _cell_inside(size, nx, ny, step)
    area = np.maximum(_box_sums(in_slide, CELLS_X, CELLS_Y), 1e-9)
    shares = _box_sums(_cell_tissue(tissue, in_slide, step), CELLS_X, CELLS_Y) / area
    return np.round(np.clip(shares, 0, 1), 3)


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
    if window_tissue is None:
        window_tissue = _window_tissue(tissue, size, nx, ny, step)
    window_tissue = np.asarray(window_tissue, np.float32)
    j, i, bar = hotspot_cell(counts, window_tissue, min_tissue)
    x0, y0, w, h = window_rectangle(j, i, step, size)
    return HpfResult(
        counts=counts,
        tissue=window_tissue,
        step=step,
        window=(width, height),
        area_mm2=area,
        hotspot=(x0, y0, w, h),
        hotspot_count=int(counts[j, i]),
        min_tissue=min_tissue,
        tissue_bar=bar,
        counted_area_mm2=w * h * mpp**2 / 1e6,
        smaller_than_window=size[0] < width or size[1] < height,
    )


def window_rectangle(
    j: int, i: int, step: float, size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Level-0 (x, y, w, h) of the window centred on cell (i, j), clipped to the slide."""
    x0, y0 = max((i - CELLS_X // 2) * step, 0.0), max((j - CELLS_Y // 2) * step, 0.0)
    x1 = min((i + CELLS_X - CELLS_X // 2) * step, size[0])
    y1 = min((j + CELLS_Y - CELLS_Y // 2) * step, size[1])
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def tissue_bars(min_tissue: float) -> tuple[float, ...]:
    """The tissue shares a hotspot window must reach, tried in order until one admits a
    window: ``min_tissue``, then each of :data:`LOWER_BARS` below it, then 0 (any)."""
    return (min_tissue, *(bar for bar in LOWER_BARS if bar < min_tissue), 0.0)


def hotspot_cell(
    counts: NDArray, window_tissue: NDArray, min_tissue: float
) -> tuple[int, int, float]:
    """(row, col) of the hotspot window's centre cell, and the tissue bar that applied.

    Admissible windows lie inside the slide (on a slide smaller than a window, the one
    window covering it all) with a tissue share of at least the first bar of
    :func:`tissue_bars` that some window reaches; the hotspot is the admissible window
    with the highest count, ties going to more tissue, then to the first in raster order.
    """
    ny, nx = counts.shape
    inside = _fits(ny, CELLS_Y)[:, None] & _fits(nx, CELLS_X)[None, :]
    for bar in tissue_bars(min_tissue):
        admissible = np.flatnonzero(inside & (window_tissue >= bar - 1e-6))
        if admissible.size:
            break
    count, share = counts.ravel()[admissible], window_tissue.ravel()[admissible]
    best = admissible[np.lexsort((-admissible, share, count))[-1]]
    j, i = divmod(int(best), nx)
    return j, i, bar


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
