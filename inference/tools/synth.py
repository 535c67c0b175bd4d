"""Synthetic H&E whole-slide images with mitotic-figure ground truth.

A slide is a deterministic function of its arguments and seed:

1. *Fields*: smooth maps on an 8 um grid (tissue, holes, tumour, stroma density, fibre
   orientation, focus), each scaled so that its value is roughly the signed distance in
   microns to its outline; interpolated to pixels and roughened by fine textures.
2. *Objects*: every nucleus, mitotic figure and look-alike is placed once for the whole
   slide (``World``), with its parameters drawn in bulk from the seed.
3. *Rendering*: a region is painted in optical density (hematoxylin, eosin), objects are
   stamped into it (``synth_figures``), a mild, spatially varying blur is applied, and
   Beer-Lambert mixing with the slide's stain vectors gives RGB.  Textures are periodic
   maps sampled at absolute coordinates, so any region renders the same pixels no matter
   how the slide is cut into regions.
4. *Writing*: level 0 is rendered in 512-row stripes and streamed as 256x256 JPEG tiles
   into a pyramidal (Big)TIFF; lower levels are halved on the fly into temporary raw
   files next to the output, then streamed in turn.  Memory stays at a few stripes.

Two domains (``DOMAINS``): "default", the slides the shipped models learnt from, and
"shifted", another lab's stain, another scanner (blur, colour response) and figures of
another build, laid out identically from the same seed (docs/synthetic.md, "Domains").

Plain NumPy/SciPy/tifffile; no Django.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage
from scipy.spatial import cKDTree

from . import synth_figures as fig

GENERATOR = "mitolens-synth"
GENERATOR_VERSION = 1
PHASES = ("prophase", "metaphase", "anaphase", "telophase")
NEGATIVE_KINDS = ("pyknotic", "lymphocyte", "overlap")
FIGURE_KINDS = (*PHASES, *NEGATIVE_KINDS, "normal")

DOMAINS = ("default", "shifted")  # see docs/synthetic.md, "Domains"

DEFAULT_MITOSES_PER_MM2 = 4.0
PHASE_WEIGHTS = (0.27, 0.35, 0.19, 0.19)
NEGATIVE_WEIGHTS = (0.4, 0.3, 0.3)

TILE = 256
STRIPE = 512  # level-0 rows rendered at a time (two tile rows)
BLOCK = 1024  # level-0 columns per rendered region
JPEG_LEVEL = 85
CELL_UM = 8.0  # field grid spacing
PAD = 3  # field grid cells beyond the slide on each side
TEX_BANK = 4  # distinct texture sets used by in-memory patches

_H_REF = (0.5626, 0.7201, 0.4062)  # Macenko's reference stain vectors (OD, RGB)
_E_REF = (0.2159, 0.8012, 0.5581)
# The shifted domain's stains: a bluer hematoxylin, a more orange eosin.
_H_SHIFT = (0.70, 0.66, 0.27)
_E_SHIFT = (0.12, 0.70, 0.70)

Progress = Callable[[int, int], None]


# =========================================================================== textures

FIBRE_PERIOD = 1019
# name: (period in px, recipe); sizes in microns unless the recipe says px.
_TEXTURES: dict[str, tuple[int, tuple]] = {
    "grain": (509, ("gauss", 0.3)),
    "chrom": (521, ("gauss", 0.6)),
    "clump": (523, ("gauss", 0.9)),
    "thread": (541, ("dog", 0.6, 1.2)),
    "cells": (1033, ("dog", 2.2, 4.4)),
    "mottle": (1031, ("gauss", 2.5)),
    "edge": (1021, ("gauss", 5.0)),
    "pix": (257, ("px", 0.6)),
    **{f"fibre{k}": (FIBRE_PERIOD, ("aniso", 6.0, 0.45, k * math.pi / 4)) for k in range(4)},
}
# Made only for the shifted domain (their own random stream, so default textures stay).
_SHIFTED_TEXTURES: dict[str, tuple[int, tuple]] = {
    "coarse": (527, ("gauss", 1.3)),
    "thread2": (547, ("dog", 0.9, 1.8)),
}
# Texture names the figure stamps ask for, and what the shifted domain gives them instead:
# coarser chromatin everywhere, thicker prophase threads.
_SHIFTED_CHROMATIN = {"grain": "chrom", "chrom": "clump", "clump": "coarse", "thread": "thread2"}


def _gauss_spectrum(fx: np.ndarray, fy: np.ndarray, su: float, sv: float, ang: float) -> np.ndarray:
    """Fourier transform of an (anisotropic) Gaussian with sigmas in px."""
    fu = fx * math.cos(ang) + fy * math.sin(ang)
    fv = fy * math.cos(ang) - fx * math.sin(ang)
    return np.exp(-2 * math.pi**2 * (su**2 * fu**2 + sv**2 * fv**2))


def _periodic_noise(rng: np.random.Generator, period: int, recipe: tuple, mpp: float) -> np.ndarray:
    """A seamless (period x period) zero-mean, unit-variance noise texture."""
    spec = np.fft.rfft2(rng.standard_normal((period, period)))
    fy = np.fft.fftfreq(period)[:, None]
    fx = np.fft.rfftfreq(period)[None, :]
    kind, *args = recipe
    if kind == "gauss":
        g = _gauss_spectrum(fx, fy, args[0] / mpp, args[0] / mpp, 0.0)
    elif kind == "px":
        g = _gauss_spectrum(fx, fy, args[0], args[0], 0.0)
    elif kind == "dog":
        g = _gauss_spectrum(fx, fy, args[0] / mpp, args[0] / mpp, 0.0)
        g = g - _gauss_spectrum(fx, fy, args[1] / mpp, args[1] / mpp, 0.0)
    else:  # aniso: long sigma, short sigma, angle
        g = _gauss_spectrum(fx, fy, args[0] / mpp, args[1] / mpp, args[2])
    out = np.fft.irfft2(spec * g, s=(period, period))
    out -= out.mean()
    out /= out.std() + 1e-12
    return out.astype(np.float32)


class Textures:
    """Periodic noise maps, sampled at absolute pixel coordinates (plus an offset)."""

    def __init__(self, seed: int, mpp: float, domain: str = "default"):
        rng = np.random.default_rng([seed, 0x7E7])
        self.maps = {n: _periodic_noise(rng, p, r, mpp) for n, (p, r) in _TEXTURES.items()}
        if domain == "shifted":
            rng = np.random.default_rng([seed, 0x7E8])
            for n, (p, r) in _SHIFTED_TEXTURES.items():
                self.maps[n] = _periodic_noise(rng, p, r, mpp)

    def window(self, name: str, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """The (h, w) window of texture ``name`` whose top-left pixel is (x0, y0)."""
        t = self.maps[name]
        rows = t.take(np.arange(y0, y0 + h), axis=0, mode="wrap")
        return rows.take(np.arange(x0, x0 + w), axis=1, mode="wrap")

    def points(self, name: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Texture ``name`` at the (rounded) pixel positions ``xs``, ``ys``."""
        t = self.maps[name]
        p = t.shape[0]
        return t[np.rint(ys).astype(np.int64) % p, np.rint(xs).astype(np.int64) % p]


@lru_cache(maxsize=TEX_BANK + 2)
def _textures(seed: int, mpp: float, domain: str = "default") -> Textures:
    return Textures(seed, mpp, domain)


# =========================================================================== fields


def _interp_axis(start: int, n: int, cell: float, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Grid node index below each pixel start..start+n-1 and the weight of the next node."""
    pos = np.arange(start, start + n, dtype=np.float64) / cell + PAD
    i0 = np.clip(np.floor(pos).astype(np.int64), 0, size - 2)
    return i0, np.clip(pos - i0, 0.0, 1.0).astype(np.float32)


class Fields:
    """Smooth maps on a coarse grid (node i at pixel (i - PAD) * cell), read bilinearly."""

    def __init__(self, maps: dict[str, np.ndarray], cell: float):
        self.maps = {k: np.ascontiguousarray(v, np.float32) for k, v in maps.items()}
        self.cell = cell
        self.shape = next(iter(self.maps.values())).shape

    def grid(self, names: Sequence[str], x0: int, y0: int, w: int, h: int) -> list[np.ndarray]:
        """The named maps over the pixel window (x0, y0, w, h), each (h, w) float32.

        Separable bilinear interpolation by gathers (no BLAS: its threads crawl on a
        busy machine).
        """
        iy, ty = _interp_axis(y0, h, self.cell, self.shape[0])
        ix, tx = _interp_axis(x0, w, self.cell, self.shape[1])
        lo, hi = int(iy.min()), int(iy.max()) + 2
        ty, ry = ty[:, None], iy - lo
        out = []
        for n in names:
            f = self.maps[n][lo:hi]
            across = f[:, ix] * (1.0 - tx) + f[:, ix + 1] * tx
            out.append(across[ry] * (1.0 - ty) + across[ry + 1] * ty)
        return out

    def points(self, name: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """The named map at pixel positions ``xs``, ``ys``."""
        f = self.maps[name]
        fx = np.asarray(xs, np.float64) / self.cell + PAD
        fy = np.asarray(ys, np.float64) / self.cell + PAD
        ix = np.clip(np.floor(fx).astype(np.int64), 0, self.shape[1] - 2)
        iy = np.clip(np.floor(fy).astype(np.int64), 0, self.shape[0] - 2)
        tx, ty = np.clip(fx - ix, 0, 1), np.clip(fy - iy, 0, 1)
        top = f[iy, ix] * (1 - tx) + f[iy, ix + 1] * tx
        bottom = f[iy + 1, ix] * (1 - tx) + f[iy + 1, ix + 1] * tx
        return (top * (1 - ty) + bottom * ty).astype(np.float32)

    def max_over(self, name: str, x0: int, y0: int, w: int, h: int) -> float:
        """An upper bound of the named map over a pixel window."""
        c = self.cell
        i0, i1 = int(x0 // c) + PAD, int((x0 + w) // c) + PAD + 2
        j0, j1 = int(y0 // c) + PAD, int((y0 + h) // c) + PAD + 2
        sub = self.maps[name][max(j0, 0) : max(j1, 1), max(i0, 0) : max(i1, 1)]
        return float(sub.max()) if sub.size else -1e9


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (sigma in grid cells), zero mean, unit variance."""
    spec = np.fft.rfft2(rng.standard_normal(shape))
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    out = np.fft.irfft2(spec * _gauss_spectrum(fx, fy, sigma, sigma, 0.0), s=shape)
    out -= out.mean()
    return out / (out.std() + 1e-12)


def _to_microns(f: np.ndarray, cell_um: float) -> np.ndarray:
    """Rescale a field so that near its zero level it reads as signed distance in um."""
    gy, gx = np.gradient(f)
    grad = np.hypot(gx, gy) / cell_um
    near = np.abs(f) < 0.1 * (f.std() + 1e-12)
    g0 = float(np.median(grad[near])) if near.sum() > 8 else float(np.median(grad))
    return (f / max(g0, 1e-9)).astype(np.float32)


def _threshold(f: np.ndarray, where: np.ndarray, fraction: float) -> np.ndarray:
    """``f`` shifted so that ``fraction`` of the ``where`` nodes are positive."""
    if fraction >= 1.0 or not where.any():
        return f - f.min() + 1.0
    if fraction <= 0.0:
        return f - f.max() - 1.0
    return f - np.quantile(f[where], 1.0 - fraction)


@dataclass
class FieldPlan:
    """How a world's fields are made: area, cover, and structure scales (um)."""

    tissue_cover: float  # fraction of the area that is tissue (<= 0: tissue everywhere)
    tumour_fraction: float  # fraction of the tissue that is tumour
    hole_fraction: float
    sheet_um: float  # scale of tumour sheets
    shape_um: float  # scale of the tissue outline


def _make_fields(rng: np.random.Generator, width: int, height: int, mpp: float, plan: FieldPlan):
    """Coarse maps for a world of ``width`` x ``height`` px; returns (Fields, node masks)."""
    cell = CELL_UM / mpp
    # At least a 0.5 mm grid, so a small patch looks like a crop of a larger section.
    nx = max(math.ceil(width / cell) + 2 * PAD + 1, 64)
    ny = max(math.ceil(height / cell) + 2 * PAD + 1, 64)

    def noise(sigma_um: float) -> np.ndarray:
        return _smooth_noise(rng, (ny, nx), sigma_um / CELL_UM)

    xu = (np.arange(nx) - PAD) * CELL_UM
    yu = (np.arange(ny) - PAD) * CELL_UM
    w_um, h_um = width * mpp, height * mpp
    inside = ((yu >= 0) & (yu < h_um))[:, None] & ((xu >= 0) & (xu < w_um))[None, :]
    if plan.tissue_cover > 0:
        cx, cy = w_um * rng.uniform(0.4, 0.6), h_um * rng.uniform(0.4, 0.6)
        r2 = ((xu[None, :] - cx) / (0.5 * w_um)) ** 2 + ((yu[:, None] - cy) / (0.5 * h_um)) ** 2
        s = plan.shape_um
        raw = noise(s / 4) + 0.5 * noise(s / 9) + 0.3 * noise(45) - 2.5 * r2 - 2.0 * r2**2
        tissue = _to_microns(_threshold(raw, inside, plan.tissue_cover), CELL_UM)
    else:
        tissue = np.full((ny, nx), 500.0, np.float32)
    hole_raw = 0.75 * noise(14) + 0.25 * noise(45)
    hole = _to_microns(_threshold(hole_raw, inside, plan.hole_fraction), CELL_UM)
    in_tissue = inside & (tissue > 0) & (hole < 0)
    tum_raw = noise(plan.sheet_um) + 0.65 * noise(70) + 0.3 * noise(25)
    tumour = _to_microns(_threshold(tum_raw, in_tissue, plan.tumour_fraction), CELL_UM)
    ang = rng.uniform(0, math.pi) + 0.3 * math.pi * noise(90)
    maps = {
        "tissue": tissue,
        "hole": hole,
        "tumour": tumour,
        "density": np.clip(0.5 + 0.3 * noise(120), 0.0, 1.0),
        "c2": np.cos(2 * ang),
        "s2": np.sin(2 * ang),
        "focus": np.clip(0.6 + 0.3 * noise(max(plan.shape_um / 4, 100)), 0.1, 1.0),
    }
    return Fields(maps, cell), inside, in_tissue & (tumour > 0)


# =========================================================================== stain


def random_stain(rng: np.random.Generator | int) -> dict[str, Any]:
    """A per-slide stain: perturbed H and E OD vectors, strengths, glass colour, blur."""
    rng = np.random.default_rng(rng)

    def vec(ref: tuple[float, float, float]) -> list[float]:
        v = np.clip(np.asarray(ref) + rng.normal(0.0, 0.05, 3), 0.05, None)
        return [round(float(x), 4) for x in v / np.linalg.norm(v)]

    tint = rng.normal(0.0, 2.0, 3)
    return {
        "hematoxylin": vec(_H_REF),
        "eosin": vec(_E_REF),
        "h_scale": round(float(rng.uniform(0.82, 1.15)), 4),
        "e_scale": round(float(rng.uniform(0.7, 1.25)), 4),
        "background": [round(float(np.clip(243 + t, 232, 252)), 2) for t in tint],
        "blur_um": round(float(rng.uniform(0.12, 0.32)), 4),
    }


def shifted_stain(rng: np.random.Generator | int | Sequence[int]) -> dict[str, Any]:
    """A stain of the shifted domain: another lab's H&E on another scanner.

    Stronger, bluer hematoxylin; weaker, more orange eosin; warmer glass; softer optics
    (more blur, everywhere: ``focus_floor``); and a scanner colour response (channel
    cross-talk ``matrix`` and ``gamma`` on RGB in [0, 1]) that ``_to_rgb`` applies.
    """
    rng = np.random.default_rng(rng)

    def vec(ref: tuple[float, float, float]) -> list[float]:
        v = np.clip(np.asarray(ref) + rng.normal(0.0, 0.03, 3), 0.05, None)
        return [round(float(x), 4) for x in v / np.linalg.norm(v)]

    tint = rng.normal(0.0, 1.5, 3)
    cross = rng.uniform(0.04, 0.09, 3)
    matrix = [
        [1 - cross[0], cross[0], 0.0],
        [0.0, 1 - cross[1], cross[1]],
        [cross[2], 0.0, 1 - cross[2]],
    ]
    return {
        "hematoxylin": vec(_H_SHIFT),
        "eosin": vec(_E_SHIFT),
        "h_scale": round(float(rng.uniform(1.15, 1.35)), 4),
        "e_scale": round(float(rng.uniform(0.4, 0.6)), 4),
        "background": [round(float(c + t), 2) for c, t in zip((246, 238, 226), tint, strict=True)],
        "blur_um": round(float(rng.uniform(0.3, 0.42)), 4),
        "focus_floor": round(float(rng.uniform(0.55, 0.7)), 4),
        "response": {
            "matrix": [[round(float(v), 4) for v in row] for row in matrix],
            "gamma": round(float(rng.uniform(1.05, 1.2)), 4),
        },
    }


def check_domain(domain: str) -> None:
    """Refuse a domain name that is not one of ``DOMAINS``."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, not {domain!r}")


def domain_stain(domain: str, base: dict[str, Any], seed: int, stream: int) -> dict[str, Any]:
    """The stain a world of ``domain`` uses: ``base`` (drawn as for default, so the rest of
    the layout is the same) or a shifted stain from its own random stream."""
    check_domain(domain)
    return base if domain == "default" else shifted_stain([seed, 0x5F1, stream])


# =========================================================================== world


@dataclass
class World:
    """Everything that defines a slide or patch: fields, textures, stain and objects.

    Objects are sorted by y; ``labels[i]`` is the ground-truth record of object i, or None.
    """

    width: int
    height: int
    mpp: float
    stain: dict[str, Any]
    fields: Fields
    tex: Textures
    offset: tuple[int, int]
    kinds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    xs: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ys: np.ndarray = field(default_factory=lambda: np.zeros(0))
    params: np.ndarray = field(default_factory=lambda: np.zeros((0, fig.NPARAM), np.float32))
    reach_px: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    labels: list[dict | None] = field(default_factory=list)
    tumour_regions: list[list[list[float]]] = field(default_factory=list)
    domain: str = "default"

    @property
    def blur_px(self) -> float:
        return float(self.stain["blur_um"]) / self.mpp

    @property
    def margin(self) -> int:
        return int(math.ceil(3.0 * self.blur_px)) + 2

    def tex_window(self, name: str, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return self.tex.window(name, x0 + self.offset[0], y0 + self.offset[1], w, h)

    def tex_points(self, name: str, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return self.tex.points(name, xs + self.offset[0], ys + self.offset[1])

    def alphas_at(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tissue coverage, tumour coverage) at pixel positions, as rendered."""
        f = self.fields
        return _alphas(
            f.points("tissue", xs, ys),
            f.points("hole", xs, ys),
            f.points("tumour", xs, ys),
            self.tex_points("edge", xs, ys),
            self.tex_points("mottle", xs, ys),
        )


def _alphas(sd_t, sd_h, sd_u, edge, mottle) -> tuple[np.ndarray, np.ndarray]:
    """Tissue and tumour coverage from signed distances (um) and roughening textures."""
    tissue = np.clip(0.5 + (sd_t + 5.0 * edge) / 1.5, 0.0, 1.0)
    tissue *= np.clip(0.5 - (sd_h + 1.5 * mottle) / 1.0, 0.0, 1.0)
    tumour = np.clip(0.5 + (sd_u + 4.0 * edge) / 3.0, 0.0, 1.0)
    return tissue, tumour


def _add_objects(world: World, kind: int, xs, ys, params, labels=None) -> None:
    world.kinds = np.concatenate([world.kinds, np.full(len(xs), kind, np.int8)])
    world.xs = np.concatenate([world.xs, np.asarray(xs, np.float64)])
    world.ys = np.concatenate([world.ys, np.asarray(ys, np.float64)])
    world.params = np.concatenate([world.params, params.astype(np.float32)])
    r = fig.reach(kind, params) / world.mpp + 2.0
    world.reach_px = np.concatenate([world.reach_px, r.astype(np.float32)])
    world.labels.extend(labels if labels is not None else [None] * len(xs))


def _sort_objects(world: World) -> None:
    order = np.argsort(world.ys, kind="stable")
    world.kinds, world.xs, world.ys = world.kinds[order], world.xs[order], world.ys[order]
    world.params, world.reach_px = world.params[order], world.reach_px[order]
    world.labels = [world.labels[i] for i in order]


# --------------------------------------------------------------------------- placement


@dataclass
class Figure:
    """A labelled object before it joins the world."""

    kind: int
    x: float
    y: float
    params: np.ndarray


def _thin(xs: np.ndarray, ys: np.ndarray, radius: np.ndarray, factor: float) -> np.ndarray:
    """Keep-mask dropping the later of any two points closer than factor*(r_i + r_j)."""
    if len(xs) < 2:
        return np.ones(len(xs), bool)
    pts = np.column_stack([xs, ys])
    pairs = cKDTree(pts).query_pairs(2 * factor * float(radius.max()), output_type="ndarray")
    if len(pairs) == 0:
        return np.ones(len(xs), bool)
    d = np.hypot(*(pts[pairs[:, 0]] - pts[pairs[:, 1]]).T)
    close = d < factor * (radius[pairs[:, 0]] + radius[pairs[:, 1]])
    keep = np.ones(len(xs), bool)
    keep[np.maximum(pairs[close, 0], pairs[close, 1])] = False
    return keep


def _candidates(world: World, rng, density: np.ndarray, inside: np.ndarray):
    """Poisson points over grid cells with ``density`` per mm2 (array over nodes)."""
    cell = world.fields.cell
    lam = np.where(inside, density, 0.0) * (CELL_UM * CELL_UM) / 1e6
    counts = rng.poisson(lam).ravel()
    idx = np.repeat(np.arange(counts.size), counts)
    jj, ii = np.divmod(idx, world.fields.shape[1])
    xs = (ii - PAD + rng.uniform(-0.5, 0.5, idx.size)) * cell
    ys = (jj - PAD + rng.uniform(-0.5, 0.5, idx.size)) * cell
    ok = (xs >= 0) & (xs < world.width) & (ys >= 0) & (ys < world.height)
    return xs[ok], ys[ok]


def _place_nuclei(world: World, rng, inside: np.ndarray, figures: list[Figure]) -> None:
    """Tumour and stromal nuclei over the tissue, clear of each other and of figures."""
    f = world.fields.maps
    near = inside & (f["tissue"] > -10) & (f["hole"] < 10)
    xs, ys = _candidates(world, rng, np.full(f["tissue"].shape, 20000.0), near)
    tissue, tumour = world.alphas_at(xs, ys)
    dens = world.fields.points("density", xs, ys)
    is_tum = rng.random(xs.size) < tumour
    keep_p = np.where(is_tum, 1.0, 0.13 * (0.25 + 0.75 * dens)) * (tissue > 0.6)
    keep = rng.random(xs.size) < keep_p
    xs, ys, is_tum = xs[keep], ys[keep], is_tum[keep]
    n = xs.size
    tum_p = fig.sample_params(fig.TUMOUR, n, rng, world.domain)
    str_p = fig.sample_params(fig.STROMAL, n, rng, world.domain)
    c2, s2 = world.fields.points("c2", xs, ys), world.fields.points("s2", xs, ys)
    str_p[:, 0] = 0.5 * np.arctan2(s2, c2) + rng.normal(0, 0.15, n)
    radius = np.where(is_tum, np.sqrt(tum_p[:, 1] * tum_p[:, 2]), 2.2) / world.mpp
    keep = _thin(xs, ys, radius, 0.85) & _clear_of(world, xs, ys, figures)
    for kind, sel, p in ((fig.TUMOUR, is_tum, tum_p), (fig.STROMAL, ~is_tum, str_p)):
        m = keep & sel
        _add_objects(world, kind, xs[m], ys[m], p[m])


def _clear_of(world: World, xs: np.ndarray, ys: np.ndarray, figures: list[Figure]) -> np.ndarray:
    """Mask of points outside every figure's exclusion radius."""
    keep = np.ones(xs.size, bool)
    if not figures or not xs.size:
        return keep
    tree = cKDTree(np.column_stack([xs, ys]))
    for f in figures:
        r = float(fig.exclusion(f.kind, f.params[None, :])[0]) / world.mpp
        hit = tree.query_ball_point([f.x, f.y], r)
        keep[hit] = False
    return keep


def _sample_sites(world, rng, n, weights, valid, margin_um=10.0):
    """``n`` positions drawn over grid nodes with ``weights``, kept where ``valid``."""
    if n <= 0 or weights.sum() <= 0:
        return np.zeros(0), np.zeros(0)
    cell = world.fields.cell
    p = (weights / weights.sum()).ravel()
    idx = rng.choice(p.size, size=4 * n + 16, p=p)
    jj, ii = np.divmod(idx, world.fields.shape[1])
    xs = (ii - PAD + rng.uniform(-0.5, 0.5, idx.size)) * cell
    ys = (jj - PAD + rng.uniform(-0.5, 0.5, idx.size)) * cell
    m = margin_um / world.mpp
    ok = (xs >= m) & (xs < world.width - m) & (ys >= m) & (ys < world.height - m)
    ok &= valid(xs, ys)
    return xs[ok][:n], ys[ok][:n]


def _hotspot_weights(world: World, rng, tumour_nodes: np.ndarray) -> np.ndarray:
    """Relative mitotic activity over the grid: 1 plus one to three Gaussian hotspots."""
    jj, ii = np.nonzero(tumour_nodes)
    w = tumour_nodes.astype(np.float64)
    if jj.size == 0:
        return w
    area_mm2 = jj.size * CELL_UM**2 / 1e6
    n_hot = int(np.clip(round(area_mm2 / 8.0), 1, 3))
    side = min(world.width, world.height) * world.mpp
    r = float(np.clip(side / 10, 120.0, 500.0)) / CELL_UM
    yy, xx = np.indices(tumour_nodes.shape)
    boost = np.zeros_like(w)
    for k in rng.choice(jj.size, n_hot, replace=False):
        boost += np.exp(-((xx - ii[k]) ** 2 + (yy - jj[k]) ** 2) / (2 * r * r))
    return w * (1.0 + 10.0 * boost)


def _figures_at(kind_names: Sequence[str], xs, ys, rng, domain: str) -> list[Figure]:
    out = []
    for name, x, y in zip(kind_names, xs, ys, strict=True):
        code = fig.KIND_CODES[name]
        p = fig.sample_params(code, 1, rng, domain)[0]
        out.append(Figure(code, float(x), float(y), p))
    return out


def _lymph_clusters(world: World, rng, seeds: list[Figure]) -> list[Figure]:
    """Each seed lymphocyte brings a small cluster of neighbours (all labelled)."""
    out = []
    for s in seeds:
        out.append(s)
        k = int(rng.poisson(3.0))
        spread = rng.uniform(8.0, 16.0) / world.mpp
        xs = s.x + rng.normal(0, spread, k)
        ys = s.y + rng.normal(0, spread, k)
        tissue, _ = world.alphas_at(xs, ys)
        ok = (tissue > 0.9) & (xs > 0) & (ys > 0) & (xs < world.width) & (ys < world.height)
        lymph = ["lymphocyte"] * int(ok.sum())
        out.extend(_figures_at(lymph, xs[ok], ys[ok], rng, world.domain))
    return out


def _resolve(world: World, figures: list[Figure]) -> list[Figure]:
    """Drop figures that would collide with an earlier (higher-priority) one."""
    kept: list[Figure] = []
    radii: list[float] = []
    for f in figures:
        r = float(fig.exclusion(f.kind, f.params[None, :])[0]) * 0.75 / world.mpp
        if all(
            math.hypot(f.x - k.x, f.y - k.y) > r + rk for k, rk in zip(kept, radii, strict=True)
        ):
            kept.append(f)
            radii.append(r)
    return kept


def _resolve_fast(world: World, figures: list[Figure]) -> list[Figure]:
    """``_resolve`` with a spatial index, for many figures."""
    if len(figures) < 200:
        return _resolve(world, figures)
    pts = np.array([[f.x, f.y] for f in figures])
    rad = np.array([float(fig.exclusion(f.kind, f.params[None, :])[0]) for f in figures])
    rad = rad * 0.75 / world.mpp
    tree = cKDTree(pts)
    kept = np.zeros(len(figures), bool)
    for i in range(len(figures)):
        near = tree.query_ball_point(pts[i], rad[i] + rad.max())
        dist = np.hypot(*(pts[near] - pts[i]).T)
        kept[i] = not any(kept[j] and dist[n] < rad[i] + rad[j] for n, j in enumerate(near))
    return [f for f, k in zip(figures, kept, strict=True) if k]


def _commit_figures(world: World, figures: list[Figure]) -> None:
    """Add figures to the world with their ground-truth labels (ids in list order)."""
    for i, f in enumerate(figures, start=1):
        label = _label(world, f, i)
        _add_objects(world, f.kind, [f.x], [f.y], f.params[None, :], [label])


def _label(world: World, f: Figure, ident: int) -> dict[str, Any]:
    """Ground-truth record: id, centroid, box (level-0 px) and phase or kind."""
    hu, hv, th = fig.half_extent(f.kind, f.params)
    hu, hv, th = float(hu), float(hv), float(th)
    c, s = abs(math.cos(th)), abs(math.sin(th))
    hx, hy = (hu * c + hv * s) / world.mpp, (hu * s + hv * c) / world.mpp
    box = [
        round(max(f.x - hx, 0.0), 1),
        round(max(f.y - hy, 0.0), 1),
        round(min(f.x + hx, world.width - 1.0), 1),
        round(min(f.y + hy, world.height - 1.0), 1),
    ]
    name = fig.KIND_NAMES[f.kind]
    key = "phase" if f.kind in fig.MITOSIS_KINDS else "kind"
    return {"id": ident, "x": round(f.x, 2), "y": round(f.y, 2), "box": box, key: name}


# =========================================================================== slide world


def build_slide_world(
    seed: int,
    size: tuple[int, int],
    mpp: float = 0.25,
    mitoses_per_mm2: float = DEFAULT_MITOSES_PER_MM2,
    tumour_fraction: float = 0.5,
    hard_negatives_per_mm2: float | None = None,
    domain: str = "default",
) -> World:
    """Lay out a whole slide (fields, stain, every object) without rendering pixels.

    ``domain`` "shifted" changes the stain, the scanner and the figures' proportions and
    chromatin, not where anything is: a seed places the same objects in both domains (up
    to a few figures that collide differently at their other sizes)."""
    check_domain(domain)
    width, height = int(size[0]), int(size[1])
    rng = np.random.default_rng([seed, 1])
    side = min(width, height) * mpp
    plan = FieldPlan(
        tissue_cover=float(rng.uniform(0.4, 0.6)),
        tumour_fraction=float(np.clip(tumour_fraction, 0.0, 1.0)),
        hole_fraction=float(rng.uniform(0.01, 0.035)),
        sheet_um=max(250.0, side / 6),
        shape_um=side,
    )
    fields, inside, tumour_nodes = _make_fields(rng, width, height, mpp, plan)
    stain = domain_stain(domain, random_stain(rng), seed, 1)
    tex = _textures(seed, mpp, domain)
    world = World(width, height, mpp, stain, fields, tex, (0, 0), domain=domain)
    figures = _slide_figures(world, rng, tumour_nodes, mitoses_per_mm2, hard_negatives_per_mm2)
    _commit_figures(world, figures)
    _place_nuclei(world, rng, inside, figures)
    _sort_objects(world)
    world.tumour_regions = _regions(tumour_nodes, fields.cell, width, height)
    return world


def _slide_figures(world, rng, tumour_nodes, mitoses_per_mm2, negatives_per_mm2) -> list[Figure]:
    """Mitoses (hotspot-weighted, in tumour) then look-alikes, collisions resolved."""
    area = tumour_nodes.sum() * CELL_UM**2 / 1e6
    weights = _hotspot_weights(world, rng, tumour_nodes)

    def in_tumour(xs, ys):
        t, u = world.alphas_at(xs, ys)
        return (t > 0.95) & (u > 0.6)

    def in_stroma(xs, ys):
        t, u = world.alphas_at(xs, ys)
        return (t > 0.95) & (u < 0.2)

    n_mit = int(rng.poisson(max(mitoses_per_mm2, 0.0) * area))
    xs, ys = _sample_sites(world, rng, n_mit, weights, in_tumour)
    phases = rng.choice(PHASES, size=xs.size, p=PHASE_WEIGHTS)
    mitoses = _figures_at(phases, xs, ys, rng, world.domain)

    neg_rate = 2.0 * mitoses_per_mm2 if negatives_per_mm2 is None else negatives_per_mm2
    n_neg = int(rng.poisson(max(neg_rate, 0.0) * area))
    kinds = rng.choice(NEGATIVE_KINDS, size=n_neg, p=NEGATIVE_WEIGHTS)
    n_lym = int((kinds == "lymphocyte").sum())
    xs, ys = _sample_sites(world, rng, n_neg - n_lym, np.sqrt(weights), in_tumour)
    tum_kinds = [k for k in kinds if k != "lymphocyte"][: xs.size]
    negs = _figures_at(tum_kinds, xs, ys, rng, world.domain)
    n_til = int(rng.binomial(n_lym, 0.4))  # tumour-infiltrating; the rest in nearby stroma
    xs, ys = _sample_sites(world, rng, n_til, tumour_nodes.astype(float), in_tumour)
    xs2, ys2 = _sample_sites(
        world, rng, n_lym - n_til, _stroma_near_tumour(world, tumour_nodes), in_stroma
    )
    xs, ys = np.concatenate([xs, xs2]), np.concatenate([ys, ys2])
    lymph = _figures_at(["lymphocyte"] * xs.size, xs, ys, rng, world.domain)
    negs += _lymph_clusters(world, rng, lymph)
    return _resolve_fast(world, mitoses + negs)


def _stroma_near_tumour(world: World, tumour_nodes: np.ndarray) -> np.ndarray:
    """Grid weights for stroma within ~150 um of tumour (lymphocytes gather there)."""
    f = world.fields.maps
    stroma = (f["tissue"] > 5) & (f["hole"] < -5) & (f["tumour"] < -5)
    near = ndimage.binary_dilation(tumour_nodes, iterations=int(150 / CELL_UM))
    w = (stroma & near).astype(np.float64)
    return w if w.sum() > 0 else stroma.astype(np.float64)


# =========================================================================== polygons


def _trace_loops(mask: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops (cell-corner coordinates x, y) of a binary mask."""
    m = np.pad(mask.astype(bool), 1)
    edges: list[tuple[tuple[int, int], tuple[int, int]]] = []
    inside = m[1:-1, 1:-1]
    r, c = np.nonzero(inside & ~m[:-2, 1:-1])  # top
    edges += [((x, y), (x + 1, y)) for y, x in zip(r, c, strict=True)]
    r, c = np.nonzero(inside & ~m[1:-1, 2:])  # right
    edges += [((x + 1, y), (x + 1, y + 1)) for y, x in zip(r, c, strict=True)]
    r, c = np.nonzero(inside & ~m[2:, 1:-1])  # bottom
    edges += [((x + 1, y + 1), (x, y + 1)) for y, x in zip(r, c, strict=True)]
    r, c = np.nonzero(inside & ~m[1:-1, :-2])  # left
    edges += [((x, y + 1), (x, y)) for y, x in zip(r, c, strict=True)]
    out: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, b in edges:
        out.setdefault(a, []).append(b)
    loops = []
    while out:
        start = next(iter(out))
        loop, cur = [start], start
        while True:
            nxt = out[cur].pop()
            if not out[cur]:
                del out[cur]
            if nxt == start:
                break
            loop.append(nxt)
            cur = nxt
            if cur not in out:
                break
        loops.append(np.array(loop, np.float64))
    return loops


def _simplify(points: np.ndarray, tol: float) -> np.ndarray:
    """Ramer-Douglas-Peucker on an open polyline."""
    if len(points) < 3:
        return points
    a, b = points[0], points[-1]
    ab = b - a
    norm = math.hypot(*ab)
    rel = points - a
    d = np.abs(ab[0] * rel[:, 1] - ab[1] * rel[:, 0]) / norm if norm > 0 else np.hypot(*rel.T)
    i = int(np.argmax(d))
    if d[i] <= tol:
        return np.array([a, b])
    left = _simplify(points[: i + 1], tol)
    return np.vstack([left[:-1], _simplify(points[i:], tol)])


def _regions(mask: np.ndarray, cell: float, width: int, height: int) -> list[list[list[float]]]:
    """Outer outlines of the mask's regions as polygons in level-0 px."""
    filled = ndimage.binary_fill_holes(mask)
    polys = []
    for loop in _trace_loops(filled):
        if len(loop) < 8:
            continue
        mid = 0.5 * (loop + np.roll(loop, -1, axis=0))  # cut the staircase corners
        half = len(mid) // 2
        simple = np.vstack([_simplify(mid[: half + 1], 0.6)[:-1], _simplify(mid[half:], 0.6)[:-1]])
        px = (simple - 1.0 - 0.5 - PAD) * cell
        px[:, 0] = np.clip(px[:, 0], 0, width - 1)
        px[:, 1] = np.clip(px[:, 1], 0, height - 1)
        polys.append([[round(float(x), 1), round(float(y), 1)] for x, y in px])
    return polys


# =========================================================================== rendering


def _stamp_objects(world: World, layers, x0: int, y0: int, w: int, h: int) -> None:
    """Stamp every object whose reach overlaps the window into the OD layers."""
    hl, el, cl = layers
    lo = int(np.searchsorted(world.ys, y0 - 200.0 / world.mpp, side="left"))
    hi = int(np.searchsorted(world.ys, y0 + h + 200.0 / world.mpp, side="right"))
    xs, ys, rr = world.xs[lo:hi], world.ys[lo:hi], world.reach_px[lo:hi]
    hit = (xs + rr >= x0) & (xs - rr < x0 + w) & (ys + rr >= y0) & (ys - rr < y0 + h)
    s = 1.0 / world.mpp
    edge = max(0.8, 0.4 * s)
    alias = _SHIFTED_CHROMATIN if world.domain == "shifted" else {}
    for i in np.nonzero(hit)[0] + lo:
        x, y, r = float(world.xs[i]), float(world.ys[i]), float(world.reach_px[i])
        ax0, ax1 = max(int(x - r), x0), min(int(x + r) + 2, x0 + w)
        ay0, ay1 = max(int(y - r), y0), min(int(y + r) + 2, y0 + h)
        if ax0 >= ax1 or ay0 >= ay1:
            continue
        win = (slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0))
        st = fig.Stamp(
            dx=(np.arange(ax0, ax1, dtype=np.float32) - np.float32(x))[None, :],
            dy=(np.arange(ay0, ay1, dtype=np.float32) - np.float32(y))[:, None],
            s=s,
            edge=edge,
            h=hl[win],
            e=el[win],
            clear=cl[win],
            tex=lambda name, a=ax0, b=ay0, ww=ax1 - ax0, hh=ay1 - ay0: world.tex_window(
                alias.get(name, name), a, b, ww, hh
            ),
        )
        fig.DRAW[int(world.kinds[i])](st, world.params[i].tolist())


def _tissue_od(world: World, x0: int, y0: int, w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin OD of the window (tissue, then cells, then blur)."""
    sd_t, sd_h, sd_u, dens, c2, s2, focus = world.fields.grid(
        ("tissue", "hole", "tumour", "density", "c2", "s2", "focus"), x0, y0, w, h
    )
    tw = world.tex_window
    mottle = tw("mottle", x0, y0, w, h)
    tissue, tumour = _alphas(sd_t, sd_h, sd_u, tw("edge", x0, y0, w, h), mottle)
    fibres = _fibres(world, c2, s2, x0, y0, w, h)
    e_str = (0.45 + 0.5 * dens) * (0.55 + 0.5 * fibres)
    borders = np.exp(-((tw("cells", x0, y0, w, h) / 0.25) ** 2))
    e_tum = 0.4 * (0.85 + 0.12 * mottle) + 0.07 * borders
    h_str = 0.05 + 0.015 * mottle
    h_tum = 0.12 * (0.9 + 0.1 * mottle) + 0.025 * borders
    base_e = tissue * (e_str + tumour * (e_tum - e_str))
    base_h = tissue * (h_str + tumour * (h_tum - h_str))
    h_add = np.zeros((h, w), np.float32)
    e_add = np.zeros((h, w), np.float32)
    clear = np.ones((h, w), np.float32)
    _stamp_objects(world, (h_add, e_add, clear), x0, y0, w, h)
    hem = base_h * clear + h_add
    eos = base_e * clear + e_add
    return _blur(world, hem, focus), _blur(world, eos, focus)


def _fibres(world: World, c2, s2, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Collagen fibre texture in [0, 1]: streaks along the orientation field, made wavy
    by warping the lookup with a smooth displacement."""
    warp = np.float32(2.5 / world.mpp)
    ox, oy = world.offset
    dx = np.rint(world.tex_window("edge", x0 + 517, y0 + 131, w, h) * warp).astype(np.int64)
    dy = np.rint(world.tex_window("edge", x0 + 263, y0 + 709, w, h) * warp).astype(np.int64)
    xi = (dx + np.arange(x0 + ox, x0 + ox + w)[None, :]) % FIBRE_PERIOD
    yi = (dy + np.arange(y0 + oy, y0 + oy + h)[:, None]) % FIBRE_PERIOD
    flat = yi * FIBRE_PERIOD + xi
    weights = [np.maximum(c2, 0) ** 2, np.maximum(s2, 0) ** 2]
    weights += [np.maximum(-c2, 0) ** 2, np.maximum(-s2, 0) ** 2]
    total = np.zeros((h, w), np.float32)
    for k, wk in enumerate(weights):
        if wk.max() > 0:
            total += wk * world.tex.maps[f"fibre{k}"].ravel().take(flat)
    norm = np.sqrt(sum(wk * wk for wk in weights)) + 1e-6
    return np.clip(0.55 + 0.45 * total / norm, 0.0, 1.0)


def _blur(world: World, od: np.ndarray, focus: np.ndarray) -> np.ndarray:
    """Mild optical blur, stronger where the focus field is high (and at least the stain's
    ``focus_floor`` everywhere, where it has one: a soft scanner)."""
    sharp = od
    soft = ndimage.gaussian_filter(od, world.blur_px, truncate=3.0, mode="nearest")
    floor = world.stain.get("focus_floor")
    if floor is not None:
        focus = np.maximum(focus, np.float32(floor))
    return sharp + focus * (soft - sharp)


def _to_rgb(world: World, hem, eos, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """Beer-Lambert mixing of the OD layers over slightly mottled glass, to uint8 RGB."""
    st = world.stain
    kh = np.asarray(st["hematoxylin"], np.float32) * np.float32(st["h_scale"])
    ke = np.asarray(st["eosin"], np.float32) * np.float32(st["e_scale"])
    bg = np.asarray(st["background"], np.float32)
    glass = 1.0 + 0.003 * world.tex_window("edge", x0 + 300, y0 + 300, w, h)
    noise = 1.4 * world.tex_window("pix", x0, y0, w, h)
    if "response" in st:
        return _scanned_rgb(st, hem, eos, (kh, ke, bg), glass, noise)
    out = np.empty((h, w, 3), np.uint8)
    for c in range(3):
        chan = glass * bg[c]
        if hem is not None:
            chan = chan * np.exp(-(hem * kh[c] + eos * ke[c]))
        chan = chan + noise
        np.clip(chan, 0, 255, out=chan)
        out[..., c] = np.rint(chan)
    return out


def _scanned_rgb(st: dict, hem, eos, vectors, glass, noise) -> np.ndarray:
    """``_to_rgb`` through a scanner colour response: transmitted light, then channel
    cross-talk and gamma, then sensor noise."""
    kh, ke, bg = vectors
    light = np.stack([glass * bg[c] for c in range(3)], axis=-1) / np.float32(255)
    if hem is not None:
        od = hem[..., None] * kh + eos[..., None] * ke
        light *= np.exp(-od)
    matrix = np.asarray(st["response"]["matrix"], np.float32)
    seen = np.clip(light @ matrix.T, 0.0, 1.0) ** np.float32(st["response"]["gamma"])
    rgb = seen * np.float32(255) + noise[..., None]
    return np.rint(np.clip(rgb, 0, 255)).astype(np.uint8)


def render_region(world: World, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """RGB pixels (h, w, 3) uint8 of the world's window at (x0, y0), level-0 px."""
    m = world.margin
    if world.fields.max_over("tissue", x0 - m, y0 - m, w + 2 * m, h + 2 * m) < -50.0:
        return _to_rgb(world, None, None, x0, y0, w, h)
    hem, eos = _tissue_od(world, x0 - m, y0 - m, w + 2 * m, h + 2 * m)
    inner = (slice(m, m + h), slice(m, m + w))
    return _to_rgb(world, hem[inner], eos[inner], x0, y0, w, h)


# =========================================================================== ground truth


def ground_truth(world: World, seed: int, extra: dict | None = None) -> dict[str, Any]:
    """The ground-truth dictionary of a slide world (see module docs for the schema)."""
    labels = [lab for lab in world.labels if lab is not None]
    mitoses = sorted((lab for lab in labels if "phase" in lab), key=lambda d: d["id"])
    negatives = sorted((lab for lab in labels if "kind" in lab), key=lambda d: d["id"])
    gt: dict[str, Any] = {
        "generator": GENERATOR,
        "version": GENERATOR_VERSION,
        "seed": int(seed),
        "width": world.width,
        "height": world.height,
        "mpp": world.mpp,
        "stain": world.stain,
        "mitoses": mitoses,
        "hard_negatives": negatives,
        "tumour_regions": world.tumour_regions,
    }
    if world.domain != "default":  # absent means default: today's files stay byte-identical
        gt["domain"] = world.domain
    if extra:
        gt["params"] = extra
    return gt


# =========================================================================== TIFF


def level_shapes(width: int, height: int, smallest: int = 1024) -> list[tuple[int, int]]:
    """(width, height) of each pyramid level: halving until the long side <= ``smallest``."""
    shapes = [(width, height)]
    while max(shapes[-1]) > smallest and min(shapes[-1]) >= 2:
        w, h = shapes[-1]
        shapes.append((w // 2, h // 2))
    return shapes


class _Halver:
    """Receives rows of one level, writes the 2x2-mean rows of the next to a raw file."""

    def __init__(self, path: Path, width: int):
        self.path, self.width = path, width
        self.file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.carry: np.ndarray | None = None

    def push(self, rows: np.ndarray) -> None:
        if self.carry is not None:
            rows = np.concatenate([self.carry, rows])
        n = rows.shape[0] // 2 * 2
        self.carry = rows[n:] if n < rows.shape[0] else None
        if n == 0:
            return
        a = rows[:n, : 2 * self.width].astype(np.uint16)
        s = a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]
        ((s + 2) // 4).astype(np.uint8).tofile(self.file)

    def close(self) -> None:
        self.file.close()


def _tiles(stripe: np.ndarray) -> Iterator[np.ndarray]:
    """256x256 tiles of a stripe, row-major; edge tiles padded by repeating the edge."""
    h, w = stripe.shape[:2]
    for ty in range(0, h, TILE):
        for tx in range(0, w, TILE):
            t = stripe[ty : ty + TILE, tx : tx + TILE]
            if t.shape[0] < TILE or t.shape[1] < TILE:
                pad = ((0, TILE - t.shape[0]), (0, TILE - t.shape[1]), (0, 0))
                t = np.pad(t, pad, mode="edge")
            yield np.ascontiguousarray(t)


def _level0_tiles(world: World, halver: _Halver | None, tick: Callable[[], None]):
    for y0 in range(0, world.height, STRIPE):
        h = min(STRIPE, world.height - y0)
        stripe = np.empty((h, world.width, 3), np.uint8)
        for x0 in range(0, world.width, BLOCK):
            w = min(BLOCK, world.width - x0)
            stripe[:, x0 : x0 + w] = render_region(world, x0, y0, w, h)
            tick()
        if halver is not None:
            halver.push(stripe)
        yield from _tiles(stripe)


def _file_tiles(path: Path, shape: tuple[int, int], halver: _Halver | None):
    w, h = shape
    with open(path, "rb") as f:
        for y0 in range(0, h, STRIPE):
            n = min(STRIPE, h - y0)
            stripe = np.fromfile(f, np.uint8, count=n * w * 3).reshape(n, w, 3)
            if halver is not None:
                halver.push(stripe)
            yield from _tiles(stripe)


def _write_kwargs(mpp_x: float, mpp_y: float, reduced: bool) -> dict[str, Any]:
    return {
        "dtype": np.uint8,
        "tile": (TILE, TILE),
        "compression": "jpeg",
        "compressionargs": {"level": JPEG_LEVEL},
        "photometric": "rgb",
        "resolution": (1e4 / mpp_x, 1e4 / mpp_y),
        "resolutionunit": "CENTIMETER",
        "subfiletype": 1 if reduced else 0,
        "metadata": None,
        "software": GENERATOR,
    }


def write_pyramid(path: Path, world: World, progress: Progress | None = None) -> None:
    """Render the world into a tiled, JPEG-compressed pyramidal TIFF at ``path``."""
    shapes = level_shapes(world.width, world.height)
    n_blocks = math.ceil(world.height / STRIPE) * math.ceil(world.width / BLOCK)
    total, done = n_blocks + len(shapes) - 1, [0]

    def tick() -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    if progress is not None:
        progress(0, total)
    big = world.width * world.height * 3 * 4 // 3 > 2**31
    desc = f"{GENERATOR} v{GENERATOR_VERSION} synthetic H&E"
    with (
        tempfile.TemporaryDirectory(dir=path.parent, prefix=".synth-") as tmp,
        tifffile.TiffWriter(path, bigtiff=big) as tw,
    ):
        raw = [Path(tmp) / f"level{k}.raw" for k in range(len(shapes))]
        halver = _Halver(raw[1], shapes[1][0]) if len(shapes) > 1 else None
        tiles = _level0_tiles(world, halver, tick)
        kw = _write_kwargs(world.mpp, world.mpp, reduced=False)
        tw.write(tiles, shape=(world.height, world.width, 3), description=desc, **kw)
        for k in range(1, len(shapes)):
            halver.close()
            halver = _Halver(raw[k + 1], shapes[k + 1][0]) if k + 1 < len(shapes) else None
            w, h = shapes[k]
            kw = _write_kwargs(world.mpp * world.width / w, world.mpp * world.height / h, True)
            tw.write(_file_tiles(raw[k], shapes[k], halver), shape=(h, w, 3), **kw)
            raw[k].unlink()
            tick()


# =========================================================================== public API


def generate_slide(
    out_path: str | Path,
    seed: int,
    size: tuple[int, int],
    mpp: float = 0.25,
    mitoses_per_mm2: float = DEFAULT_MITOSES_PER_MM2,
    tumour_fraction: float = 0.5,
    progress: Progress | None = None,
    hard_negatives_per_mm2: float | None = None,
    domain: str = "default",
) -> dict[str, Any]:
    """Write a synthetic H&E slide to ``out_path`` (pyramidal TIFF) and its ground truth
    next to it (same name, ``.json``); return the ground-truth dict.

    ``size`` is (width, height) in level-0 pixels at ``mpp`` um/px.  Mitoses are placed in
    tumour at ``mitoses_per_mm2`` per mm2 of tumour on average, concentrated in hotspots;
    hard negatives default to twice that rate.  ``progress(done, total)`` is called as
    regions are rendered.  ``domain`` is "default" or "shifted" (another stain, scanner and
    figure appearance; see ``build_slide_world``).  The same arguments always give the
    same bytes.
    """
    out_path = Path(out_path)
    world = build_slide_world(
        seed, size, mpp, mitoses_per_mm2, tumour_fraction, hard_negatives_per_mm2, domain
    )
    write_pyramid(out_path, world, progress)
    extra = {
        "mitoses_per_mm2": mitoses_per_mm2,
        "tumour_fraction": tumour_fraction,
        "hard_negatives_per_mm2": hard_negatives_per_mm2,
    }
    gt = ground_truth(world, seed, extra)
    truth_path = out_path.with_suffix(".json")
    # written last and whole: a slide whose truth is there was finished (make_slides)
    partial = truth_path.with_name(f".{truth_path.name}.partial")
    partial.write_text(json.dumps(gt, indent=1), encoding="utf-8")
    os.replace(partial, truth_path)
    return gt


# --------------------------------------------------------------------------- patches


def _patch_world(
    rng: np.random.Generator,
    seed: int,
    size: tuple[int, int],
    mpp: float,
    stain,
    tumour=None,
    domain: str = "default",
) -> tuple[World, np.ndarray]:
    """A small world filled with tissue (no slide outline), for in-memory patches."""
    check_domain(domain)
    w, h = size
    plan = FieldPlan(
        tissue_cover=0.0,
        tumour_fraction=float(rng.uniform(0.35, 1.0) if tumour is None else tumour),
        hole_fraction=float(rng.uniform(0.0, 0.03)),
        sheet_um=float(rng.uniform(40, 120)),
        shape_um=max(w, h) * mpp,
    )
    fields, inside, _ = _make_fields(rng, w, h, mpp, plan)
    stain = domain_stain(domain, random_stain(rng), seed, 2) if stain is None else dict(stain)
    tex = _textures(seed % TEX_BANK, mpp, domain)
    offset = (int(rng.integers(0, 1 << 16)), int(rng.integers(0, 1 << 16)))
    return World(w, h, mpp, stain, fields, tex, offset, domain=domain), inside


def _patch_sites(world: World, rng, n: int, margin_px: float, prefer_tumour: bool):
    """``n`` random figure centres inside the patch, preferably in tumour."""
    xs = rng.uniform(margin_px, world.width - margin_px, 64 * max(n, 1))
    ys = rng.uniform(margin_px, world.height - margin_px, xs.size)
    tissue, tumour = world.alphas_at(xs, ys)
    p = tissue * ((tumour + 0.05) if prefer_tumour else np.ones_like(tumour)) + 1e-9
    idx = rng.choice(xs.size, size=n, replace=False, p=p / p.sum())
    return xs[idx], ys[idx]


def _finish_patch(world: World, rng, inside, figures: list[Figure], keep_clear=()) -> None:
    figures = _resolve(world, figures)
    _commit_figures(world, figures)
    _place_nuclei(world, rng, np.ones_like(inside), [*figures, *keep_clear])
    _sort_objects(world)


def _annotations(world: World) -> dict[str, Any]:
    labels = [lab for lab in world.labels if lab is not None]
    return {
        "width": world.width,
        "height": world.height,
        "mpp": world.mpp,
        "stain": world.stain,
        "mitoses": sorted((d for d in labels if "phase" in d), key=lambda d: d["id"]),
        "hard_negatives": sorted((d for d in labels if "kind" in d), key=lambda d: d["id"]),
    }


def render_patch(
    seed: int,
    size: int = 320,
    mpp: float = 0.25,
    n_mitoses: int | None = None,
    n_negatives: int | None = None,
    phases: Sequence[str] | None = None,
    stain: dict[str, Any] | None = None,
    negative_kinds: Sequence[str] | None = None,
    domain: str = "default",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render a labelled size x size tissue patch in memory.

    Returns (RGB uint8 array (size, size, 3), annotations).  Annotations have the slide
    ground truth's object schema ("mitoses", "hard_negatives", ids, x, y, box) in patch
    pixels, plus width, height, mpp and stain.  ``n_mitoses``/``n_negatives`` default to
    0-3 and 0-4; mitosis i gets ``phases[i % len(phases)]`` (random when None), and
    likewise look-alike i gets ``negative_kinds[i % len(...)]``.  A figure may be dropped
    if it cannot be placed without colliding with another.  ``stain`` (a dict like a
    slide's ``"stain"``) fixes the staining; by default it is random per seed (and
    ``domain``'s: "default" or "shifted").
    """
    unknown = set(phases or ()) - set(PHASES) | set(negative_kinds or ()) - set(NEGATIVE_KINDS)
    if unknown:
        raise ValueError(f"unknown phase or kind: {sorted(unknown)}")
    rng = np.random.default_rng([seed, 2])
    world, inside = _patch_world(rng, seed, (size, size), mpp, stain, domain=domain)
    n_mit = int(rng.integers(0, 4)) if n_mitoses is None else int(n_mitoses)
    n_neg = int(rng.integers(0, 5)) if n_negatives is None else int(n_negatives)
    ph = [
        phases[i % len(phases)] if phases else rng.choice(PHASES, p=PHASE_WEIGHTS)
        for i in range(n_mit)
    ]
    nk = [
        negative_kinds[i % len(negative_kinds)] if negative_kinds else rng.choice(NEGATIVE_KINDS)
        for i in range(n_neg)
    ]
    margin = 8.0 / mpp
    xs, ys = _patch_sites(world, rng, n_mit, margin, True)
    figures = _figures_at([str(p) for p in ph], xs, ys, rng, domain)
    xs, ys = _patch_sites(world, rng, n_neg, margin, False)
    figures += _figures_at([str(k) for k in nk], xs, ys, rng, domain)
    _finish_patch(world, rng, inside, figures)
    return render_region(world, 0, 0, size, size), _annotations(world)


def render_figure_crop(
    seed: int,
    kind: str,
    size: int = 96,
    mpp: float = 0.25,
    stain: dict[str, Any] | None = None,
    jitter_um: float = 0.0,
    domain: str = "default",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Render a size x size crop centred on one figure of ``kind`` (a phase, a look-alike
    kind, or "normal" for an ordinary tumour nucleus), for phase-classifier training.

    Returns (RGB uint8 (size, size, 3), the figure's annotation in crop pixels, with
    "phase" or "kind").  ``jitter_um`` shifts the figure randomly off centre; ``domain``
    as for ``render_patch``.
    """
    if kind not in FIGURE_KINDS:
        raise ValueError(f"kind must be one of {FIGURE_KINDS}, not {kind!r}")
    rng = np.random.default_rng([seed, 3])
    tumour = float(rng.uniform(0.5, 1))
    world, inside = _patch_world(rng, seed, (size, size), mpp, stain, tumour, domain)
    c = (size - 1) / 2.0
    x, y = (
        c + rng.uniform(-jitter_um, jitter_um) / mpp,
        c + rng.uniform(-jitter_um, jitter_um) / mpp,
    )
    code = fig.TUMOUR if kind == "normal" else fig.KIND_CODES[kind]
    f = Figure(code, x, y, fig.sample_params(code, 1, rng, domain)[0])
    if kind == "normal":
        _add_objects(world, code, [x], [y], f.params[None, :], [None])
        _finish_patch(world, rng, inside, [], keep_clear=[f])
        ann = {**_label(world, f, 1), "kind": "normal"}
        ann.pop("phase", None)
    else:
        _finish_patch(world, rng, inside, [f])
        ann = next(lab for lab in world.labels if lab is not None)
    return render_region(world, 0, 0, size, size), ann
