"""Cell stamps for the synthetic H&E generator: nuclei, mitotic figures, look-alikes.

Every object is drawn from a row of parameters (``NPARAM`` floats, sampled in bulk by
``sample_params``) into optical-density layers of a canvas window (a ``Stamp``):
``h`` (hematoxylin, added), ``e`` (eosin, added) and ``clear`` (a multiplier on the
tissue's own stain, < 1 makes a clear halo).  Sizes are in microns, converted with the
canvas' pixels-per-micron, so a slide at 0.5 um/px shows the same cells at half size.

Parameters depend only on the object, and textures are sampled at absolute slide
coordinates, so an object cut by a region border renders the same in both regions.
Plain NumPy; no Django.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NPARAM = 16

# Object kind codes.  Figures (>= PROPHASE) are labelled in the ground truth.
TUMOUR, STROMAL, PROPHASE, METAPHASE, ANAPHASE, TELOPHASE, PYKNOTIC, LYMPHOCYTE, OVERLAP = range(9)
KIND_NAMES = {
    TUMOUR: "tumour",
    STROMAL: "stromal",
    PROPHASE: "prophase",
    METAPHASE: "metaphase",
    ANAPHASE: "anaphase",
    TELOPHASE: "telophase",
    PYKNOTIC: "pyknotic",
    LYMPHOCYTE: "lymphocyte",
    OVERLAP: "overlap",
}
KIND_CODES = {name: code for code, name in KIND_NAMES.items()}
MITOSIS_KINDS = (PROPHASE, METAPHASE, ANAPHASE, TELOPHASE)


@dataclass
class Stamp:
    """One object's window on a canvas.

    ``dx`` (1, w) and ``dy`` (h, 1) are pixel offsets from the object centre; ``h``,
    ``e`` and ``clear`` are views into the canvas layers; ``tex(name)`` returns the
    named texture over the same window; ``s`` is pixels per micron; ``edge`` the
    width of a soft edge in pixels.
    """

    dx: np.ndarray
    dy: np.ndarray
    s: float
    edge: float
    h: np.ndarray
    e: np.ndarray
    clear: np.ndarray
    tex: Callable[[str], np.ndarray]


# --------------------------------------------------------------------------- helpers


def _rot(dx: np.ndarray, dy: np.ndarray, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates along (u) and across (v) the direction ``theta``."""
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    return dx * c + dy * s, dy * c - dx * s


def _soft(dist: np.ndarray, edge: float) -> np.ndarray:
    """Coverage from a signed distance in px (negative inside), ramp ``edge`` px wide."""
    return np.clip(0.5 - dist / np.float32(edge), 0.0, 1.0)


def _ring(dist: np.ndarray, width: float) -> np.ndarray:
    """A soft line along ``dist == 0``."""
    return np.exp(-((dist / np.float32(width)) ** 2))


def _wave(t: np.ndarray, f1: float, p1: float, f2: float, p2: float) -> np.ndarray:
    """Two-sine wobble in [-1, 1] along ``t`` (microns)."""
    return 0.6 * np.sin(t * f1 + p1) + 0.4 * np.sin(t * f2 + p2)


def _ellipse_dist(u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Approximate signed distance (px) to an ellipse with semi-axes ``a``, ``b`` (px)."""
    r = np.sqrt((u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2)
    return (r - 1.0) * np.float32(min(a, b))


def _band_dist(
    st: Stamp, u: np.ndarray, vc: np.ndarray, half_len: float, thick: np.ndarray
) -> np.ndarray:
    """Signed distance to a chromosome band: ``|vc| < thick`` for ``|u| < half_len``.

    The band's ends are rounded and its edges broken up by the fine texture, so the
    plate looks like a row of short, knobbly chromosome arms rather than a bar.
    """
    arms = (0.6 * st.tex("chrom") + 0.4 * st.tex("grain")) * np.float32(0.45 * st.s)
    taper = np.sqrt(np.clip(1.0 - (u / np.float32(half_len * st.s)) ** 4, 0.15, 1.0))
    across = np.abs(vc) - thick * taper - arms
    along = np.abs(u) - np.float32(half_len * st.s) - 0.6 * arms
    return np.where(along > 0, np.hypot(np.maximum(along, 0), np.maximum(across, 0)), across)


# --------------------------------------------------------------------------- nuclei


def _nucleus_od(st: Stamp, dx: np.ndarray, dy: np.ndarray, p: list[float]) -> np.ndarray:
    """Hematoxylin OD of an interphase nucleus (shared by tumour nuclei and overlaps).

    p: theta, a, b (um), intensity, pallor, rim, nucleolus x, y, size, wobble 1, 2, irregularity.
    """
    theta, a, b, inten, pallor, rim, nx, ny, nsize, w1, w2, irr = p[:12]
    u, v = _rot(dx, dy, theta)
    phi = np.arctan2(v, u)
    wobble = 1.0 + irr * (0.6 * np.sin(2 * phi + w1) + 0.4 * np.sin(3 * phi + w2))
    r = np.sqrt((u / np.float32(a * st.s)) ** 2 + (v / np.float32(b * st.s)) ** 2) / wobble
    cover = _soft((r - 1.0) * np.float32(b * st.s), st.edge)
    body = 0.62 + 0.2 * st.tex("chrom") + 0.1 * st.tex("grain")
    body += rim * np.exp(-(((r - 0.9) / 0.12) ** 2)) - pallor * np.exp(-((r / 0.6) ** 2))
    od = inten * cover * np.clip(body, 0.15, 1.8)
    if nsize > 0:
        nd = np.hypot(u - nx * a * st.s, v - ny * b * st.s) - nsize * st.s
        od += 0.7 * inten * _soft(nd, st.edge) * cover
    return od


def draw_tumour(st: Stamp, p: list[float]) -> None:
    """A tumour-cell nucleus: oval, vesicular or hyperchromatic, rim and nucleolus."""
    st.h += _nucleus_od(st, st.dx, st.dy, p)


def draw_stromal(st: Stamp, p: list[float]) -> None:
    """A fibroblast nucleus: thin, spindle-shaped, along the collagen fibres.

    p: theta, a, b (um), intensity, bend.
    """
    theta, a, b, inten, bend = p[:5]
    u, v = _rot(st.dx, st.dy, theta)
    v = v - np.float32(bend * st.s) * (u / np.float32(a * st.s)) ** 2
    cover = _soft(_ellipse_dist(u, v, a * st.s, b * st.s), st.edge)
    st.h += inten * cover * (0.8 + 0.12 * st.tex("chrom"))


# --------------------------------------------------------------------------- mitoses


def _halo(st: Stamp, u: np.ndarray, v: np.ndarray, ru: float, rv: float, strength: float) -> None:
    """Clear cytoplasm of a rounded-up mitotic cell (semi-axes in um)."""
    if strength <= 0:
        return
    d = _ellipse_dist(u, v, ru * st.s, rv * st.s)
    st.clear *= 1.0 - np.float32(strength) * _soft(d, 2.0 * st.s)


def draw_prophase(st: Stamp, p: list[float]) -> None:
    """Prophase: a round nucleus filled with condensed, thread-like chromatin.

    p: theta, radius, ellipticity, intensity, thread width, halo, membrane, wobble 1, 2.
    """
    theta, radius, ell, inten, width, halo, membrane, w1, w2 = p[:9]
    u, v = _rot(st.dx, st.dy, theta)
    phi = np.arctan2(v, u)
    rr = np.float32(radius * st.s) * (
        1.0 + 0.06 * np.sin(3 * phi + w1) + 0.04 * np.sin(5 * phi + w2)
    )
    d = np.hypot(u, v / np.float32(ell)) - rr
    cover = _soft(d, st.edge)
    threads = np.exp(-((st.tex("thread") / np.float32(width)) ** 2))
    knots = np.clip(0.7 + 0.3 * st.tex("grain") + 0.25 * st.tex("chrom"), 0.25, 1.3)
    ground = 0.35 + 0.12 * st.tex("chrom")
    od = cover * (ground + 0.9 * threads * knots) + membrane * _ring(d, 0.35 * st.s) * cover
    st.h += inten * od
    _halo(st, u, v, radius + 2.5, radius * ell + 2.5, halo)


def draw_metaphase(st: Stamp, p: list[float]) -> None:
    """Metaphase: a dense, knobbly chromosome plate (or a ring seen end-on) in a clear cell.

    p: theta, half length, half thickness, intensity, curvature, halo, cell radius,
    polar view (> 0.86), jag frequencies and phases (4), ring radius.
    """
    theta, half_len, half_thick, inten, curv, halo, cell_r, polar = p[:8]
    f1, p1, f2, p2, ring_r = p[8:13]
    u, v = _rot(st.dx, st.dy, theta)
    if polar > 0.86:
        r = np.hypot(u, v)
        phi = np.arctan2(v, u)
        target = np.float32(ring_r * st.s) * (1.0 + 0.15 * np.sin(5 * phi + p1))
        arms = st.tex("grain") * np.float32(0.35 * st.s)
        d = np.abs(r - target) - np.float32(half_thick * st.s) - arms
    else:
        ut = u / np.float32(st.s)
        vc = v - np.float32(curv * st.s) * (ut / np.float32(half_len)) ** 2
        jag = np.where(vc > 0, _wave(ut, f1, p1, f2, p2), _wave(ut, f2, p2 + 1.3, f1, p1 + 2.1))
        thick = np.float32(half_thick * st.s) * (1.0 + 0.3 * jag)
        d = _band_dist(st, u, vc, half_len, thick)
    od = _soft(d, st.edge) * (0.88 + 0.12 * st.tex("grain"))
    st.h += inten * od
    _halo(st, u, v, cell_r, cell_r * 0.95, halo)


def draw_anaphase(st: Stamp, p: list[float]) -> None:
    """Anaphase: two parallel chromosome bands moving apart inside an elongated cell.

    p: theta, half length, half thickness, intensity, half gap, bow, halo, cell radius,
    jag frequencies and phases (4), length ratio of the second band.
    """
    theta, half_len, half_thick, inten, gap, bow, halo, cell_r = p[:8]
    f1, p1, f2, p2, ratio = p[8:13]
    u, v = _rot(st.dx, st.dy, theta)
    ut = u / np.float32(st.s)
    od = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    for sign, length, phase in ((1.0, half_len, p1), (-1.0, half_len * ratio, p2)):
        # Band centre line bows so its ends trail back towards the equator.
        vc = sign * v - np.float32(gap * st.s) + np.float32(bow * st.s) * (ut / length) ** 2
        thick = np.float32(half_thick * st.s) * (1.0 + 0.3 * _wave(ut, f1, phase, f2, phase + 1.7))
        thick = thick + np.where(vc < 0, np.float32(0.25 * st.s), np.float32(0.0))
        od = np.maximum(od, _soft(_band_dist(st, u, vc, length, thick), st.edge))
    st.h += inten * od * (0.88 + 0.12 * st.tex("grain"))
    _halo(st, u, v, cell_r, cell_r + gap * 0.9, halo)


def draw_telophase(st: Stamp, p: list[float]) -> None:
    """Telophase: two dense chromatin clusters at opposite poles of a pinched cell.

    p: theta, cluster half width, cluster half depth, intensity, half separation, cell
    radius ratio, cytoplasm eosin, kidney curvature, halo, membrane, cluster 2 scale.
    """
    theta, cw, cd, inten, sep, cell_ratio, cyto, kidney, halo, membrane, scale2 = p[:11]
    u, v = _rot(st.dx, st.dy, theta)
    s = np.float32(st.s)
    od = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
    for sign, k in ((1.0, 1.0), (-1.0, scale2)):
        vc = sign * v - np.float32(sep) * s - np.float32(kidney) * s * (u / (cw * k * s)) ** 2
        d = _ellipse_dist(u, vc, cw * k * s, cd * k * s) - st.tex("grain") * 0.25 * s
        od = np.maximum(od, _soft(d, st.edge))
    st.h += inten * od * (0.85 + 0.15 * st.tex("chrom"))
    # Two daughter cells joined by a narrowing waist: the cleavage furrow.
    rc = np.float32(sep * cell_ratio) * s
    d1 = np.hypot(u, v - np.float32(sep) * s) - rc
    d2 = np.hypot(u, v + np.float32(sep) * s) - rc
    cell = np.minimum(d1, d2)
    mottle = st.tex("mottle")
    st.e += np.float32(cyto) * _soft(cell, st.edge * 2) * (0.8 + 0.25 * mottle)
    line = _ring(cell, 0.45 * s) * np.clip(0.6 + 0.5 * mottle, 0.0, 1.0)
    st.e += np.float32(membrane) * line
    st.h += np.float32(0.2 * membrane) * line
    st.clear *= 1.0 - np.float32(halo) * _soft(cell - 2.0 * s, 2.0 * s)


# --------------------------------------------------------------------------- look-alikes


def draw_pyknotic(st: Stamp, p: list[float]) -> None:
    """Apoptotic body: a small, smooth, very dark ball (or a few fragments) in a bright
    eosinophilic shrunken cell with a retraction halo.

    p: radius, intensity, body radius, body eosin, halo, halo width, fragments (> 0.75),
    ellipticity, fragment angle, fragment count, theta.
    """
    radius, inten, body_r, eosin, halo, halo_w, frag, ell, ang, count, theta = p[:11]
    halo = max(halo, 0.0)
    u, v = _rot(st.dx, st.dy, theta)
    s = np.float32(st.s)
    rb = np.hypot(u, v * np.float32(ell))
    body = _soft(rb - np.float32(body_r) * s, st.edge)
    st.e += np.float32(eosin) * body
    st.clear *= 1.0 - np.float32(halo) * _soft(rb - np.float32(body_r + halo_w) * s, st.edge)
    if frag > 0.75:
        n = int(count)
        od = np.zeros(np.broadcast_shapes(u.shape, v.shape), np.float32)
        for i in range(n):
            a = ang + 2 * np.pi * i / n
            cu, cv = 0.55 * body_r * np.cos(a) * s, 0.55 * body_r * np.sin(a) * s
            fr = np.float32(radius * (0.55 - 0.05 * i)) * s
            od = np.maximum(od, _soft(np.hypot(u - cu, v - cv) - fr, st.edge * 0.6))
    else:
        r = np.hypot(u, v)
        od = _soft(r - np.float32(radius) * s, st.edge * 0.6) * (
            1.0 - 0.12 * (r / (radius * s)) ** 2
        )
    st.h += np.float32(inten) * od


def draw_lymphocyte(st: Stamp, p: list[float]) -> None:
    """Lymphocyte: small, round, dark nucleus with clumped chromatin and scant cytoplasm.

    p: radius, intensity, ellipticity, theta, cytoplasm, clumping.
    """
    radius, inten, ell, theta, cyto, clump = p[:6]
    u, v = _rot(st.dx, st.dy, theta)
    s = np.float32(st.s)
    r = np.hypot(u, v * np.float32(ell))
    cover = _soft(r - np.float32(radius) * s, st.edge)
    chrom = np.clip(0.8 + clump * st.tex("clump") + 0.08 * st.tex("grain"), 0.35, 1.3)
    st.h += np.float32(inten) * cover * chrom
    st.h += np.float32(cyto) * _soft(r - np.float32(radius + 0.7) * s, st.edge) * (1 - cover)


def draw_overlap(st: Stamp, p: list[float]) -> None:
    """Two interphase nuclei overlapping: where they cross, the stain adds up darker.

    p: half separation (um), angle, then the two nuclei's (theta, a, b, intensity, pallor,
    rim) with shared texture settings.
    """
    half, ang, t1, a1, b1, i1, t2, a2, b2, i2, pallor, rim = p[:12]
    ox, oy = half * np.cos(ang) * st.s, half * np.sin(ang) * st.s
    for sx, (t, a, b, i) in ((1.0, (t1, a1, b1, i1)), (-1.0, (t2, a2, b2, i2))):
        q = [t, a, b, i, pallor, rim, 0.0, 0.0, 0.0, 0.0, 0.0, 0.05]
        st.h += _nucleus_od(st, st.dx - sx * ox, st.dy - sx * oy, q)


DRAW = {
    TUMOUR: draw_tumour,
    STROMAL: draw_stromal,
    PROPHASE: draw_prophase,
    METAPHASE: draw_metaphase,
    ANAPHASE: draw_anaphase,
    TELOPHASE: draw_telophase,
    PYKNOTIC: draw_pyknotic,
    LYMPHOCYTE: draw_lymphocyte,
    OVERLAP: draw_overlap,
}


# --------------------------------------------------------------------------- sampling


Spec = list[tuple[str, float, float]]  # (name, low, high): one uniform column each
TAU = 2 * np.pi
_NUCLEUS: Spec = [
    ("theta", 0, TAU),
    ("a_um", 3.6, 6.0),
    ("b_ratio", 0.62, 0.98),  # b = ratio * a after sampling
    ("intensity", 0.85, 1.7),
    ("pallor", 0.0, 0.35),
    ("rim", 0.0, 0.3),
    ("nucleolus_x", -0.5, 0.5),
    ("nucleolus_y", -0.5, 0.5),
    ("nucleolus_um", -0.6, 0.7),  # <= 0: none
    ("wobble_1", 0, TAU),
    ("wobble_2", 0, TAU),
    ("irregularity", 0.0, 0.08),
]
_STROMAL: Spec = [
    ("theta", 0, 0),  # set from the fibre orientation
    ("a_um", 4.0, 7.5),
    ("b_um", 0.9, 1.8),
    ("intensity", 1.0, 1.9),
    ("bend_um", -0.8, 0.8),
]
_PROPHASE: Spec = [
    ("theta", 0, TAU),
    ("radius_um", 4.2, 6.2),
    ("ellipticity", 0.85, 1.0),
    ("intensity", 1.5, 2.3),
    ("thread_width", 0.45, 0.8),
    ("halo", 0.0, 0.7),
    ("membrane", 0.0, 0.35),
    ("wobble_1", 0, TAU),
    ("wobble_2", 0, TAU),
]
_JAGS: Spec = [("jag_f1", 0.8, 2.2), ("jag_p1", 0, TAU), ("jag_f2", 1.5, 3.5), ("jag_p2", 0, TAU)]
_METAPHASE: Spec = [
    ("theta", 0, TAU),
    ("half_length_um", 3.5, 6.0),
    ("half_thickness_um", 0.9, 1.7),
    ("intensity", 2.1, 3.1),
    ("curvature_um", -1.2, 1.2),
    ("halo", 0.0, 0.85),
    ("cell_radius_um", 6.5, 9.5),
    ("polar_view", 0, 1),  # > 0.86: seen end-on, a ring
    *_JAGS,
    ("ring_radius_um", 2.2, 3.4),
]
_ANAPHASE: Spec = [
    ("theta", 0, TAU),
    ("half_length_um", 3.0, 5.0),
    ("half_thickness_um", 0.7, 1.3),
    ("intensity", 2.0, 3.0),
    ("half_gap_um", 1.6, 4.2),
    ("bow_um", 0.2, 1.0),
    ("halo", 0.0, 0.85),
    ("cell_radius_um", 5.5, 8.0),
    *_JAGS,
    ("second_band_ratio", 0.8, 1.0),
]
_TELOPHASE: Spec = [
    ("theta", 0, TAU),
    ("cluster_half_width_um", 2.2, 3.6),
    ("cluster_half_depth_um", 1.1, 1.9),
    ("intensity", 2.1, 3.1),
    ("half_separation_um", 4.5, 7.5),
    ("cell_radius_ratio", 1.05, 1.3),
    ("cytoplasm_eosin", 0.15, 0.45),
    ("kidney_um", -0.4, 0.8),
    ("halo", 0.0, 0.7),
    ("membrane", 0.0, 0.4),
    ("second_cluster_scale", 0.8, 1.0),
]
_PYKNOTIC: Spec = [
    ("radius_um", 1.5, 3.0),
    ("intensity", 2.3, 3.3),
    ("body_radius_um", 3.4, 5.2),
    ("body_eosin", 0.3, 1.1),
    ("halo", -0.5, 0.8),  # <= 0: none
    ("halo_width_um", 0.6, 2.2),
    ("fragments", 0, 1),  # > 0.75: karyorrhexis, 2-4 fragments
    ("ellipticity", 1.0, 1.25),
    ("fragment_angle", 0, TAU),
    ("fragment_count", 2, 4.99),
    ("theta", 0, TAU),
]
_LYMPHOCYTE: Spec = [
    ("radius_um", 2.7, 3.7),
    ("intensity", 1.7, 2.6),
    ("ellipticity", 1.0, 1.15),
    ("theta", 0, TAU),
    ("cytoplasm", 0.0, 0.3),
    ("clumping", 0.1, 0.3),
]
_OVERLAP: Spec = [
    ("half_separation_um", 2.2, 4.0),
    ("angle", 0, TAU),
    *[
        (f"{name}_{i}", lo, hi)
        for i in (1, 2)
        for name, lo, hi in (
            ("theta", 0, TAU),
            ("a_um", 3.6, 5.5),
            ("b_ratio", 0.65, 0.95),
            ("intensity", 1.2, 1.9),
        )
    ],
    ("pallor", 0.0, 0.2),
    ("rim", 0.0, 0.25),
]
SPECS: dict[int, Spec] = {
    TUMOUR: _NUCLEUS,
    STROMAL: _STROMAL,
    PROPHASE: _PROPHASE,
    METAPHASE: _METAPHASE,
    ANAPHASE: _ANAPHASE,
    TELOPHASE: _TELOPHASE,
    PYKNOTIC: _PYKNOTIC,
    LYMPHOCYTE: _LYMPHOCYTE,
    OVERLAP: _OVERLAP,
}


def _retune(spec: Spec, **ranges: tuple[float, float]) -> Spec:
    """``spec`` with some columns' ranges replaced (same columns, same order)."""
    unknown = set(ranges) - {name for name, _, _ in spec}
    if unknown:
        raise ValueError(f"no such parameter: {sorted(unknown)}")
    return [(name, *ranges.get(name, (lo, hi))) for name, lo, hi in spec]


# The "shifted" domain (synth.DOMAINS): the same kinds drawn by the same functions, with
# other proportions. Ordinary nuclei are larger and more often hyperchromatic; prophase has
# coarser threads; metaphase plates are shorter and stubbier and more often seen end-on;
# anaphase bands sit further apart; telophase clusters are larger; look-alikes are larger
# and darker. Column counts are unchanged, so a seed lays out the same slide in both domains.
SHIFTED_SPECS: dict[int, Spec] = {
    TUMOUR: _retune(
        _NUCLEUS,
        a_um=(4.4, 6.8),
        intensity=(0.7, 1.35),
        rim=(0.1, 0.45),
        irregularity=(0.04, 0.16),
    ),
    STROMAL: _STROMAL,
    PROPHASE: _retune(_PROPHASE, radius_um=(5.0, 7.0), thread_width=(0.4, 0.6), halo=(0.0, 0.3)),
    METAPHASE: _retune(
        _METAPHASE,
        half_length_um=(2.8, 4.4),
        half_thickness_um=(1.5, 2.3),
        intensity=(1.7, 2.5),
        halo=(0.0, 0.35),
        polar_view=(0.4, 1.0),
        ring_radius_um=(2.8, 3.8),
    ),
    ANAPHASE: _retune(
        _ANAPHASE,
        half_length_um=(3.6, 5.6),
        half_thickness_um=(1.0, 1.6),
        intensity=(1.7, 2.5),
        half_gap_um=(3.0, 5.2),
        halo=(0.0, 0.35),
    ),
    TELOPHASE: _retune(
        _TELOPHASE,
        cluster_half_width_um=(2.8, 4.2),
        cluster_half_depth_um=(1.5, 2.4),
        intensity=(1.7, 2.5),
        half_separation_um=(5.5, 8.5),
        halo=(0.0, 0.3),
    ),
    PYKNOTIC: _retune(_PYKNOTIC, radius_um=(2.4, 3.8), body_eosin=(0.1, 0.5)),
    LYMPHOCYTE: _retune(_LYMPHOCYTE, radius_um=(3.2, 4.4), clumping=(0.25, 0.5)),
    OVERLAP: _retune(_OVERLAP, **{f"intensity_{i}": (1.6, 2.4) for i in (1, 2)}, pallor=(0.0, 0.1)),
}
DOMAIN_SPECS = {"default": SPECS, "shifted": SHIFTED_SPECS}
HYPERCHROMATIC = {"default": 0.12, "shifted": 0.3}  # share of dark ordinary tumour nuclei


def _cols(n: int, rng: np.random.Generator, spec: Spec) -> np.ndarray:
    """An (n, NPARAM) array whose column i is uniform in ``spec[i]``'s range."""
    out = np.zeros((n, NPARAM), np.float32)
    for i, (_, lo, hi) in enumerate(spec):
        out[:, i] = rng.uniform(lo, hi, n)
    return out


def sample_params(
    kind: int, n: int, rng: np.random.Generator, domain: str = "default"
) -> np.ndarray:
    """Parameters for ``n`` objects of ``kind`` as an (n, NPARAM) float32 array, with the
    ranges of ``domain`` ("default" or "shifted")."""
    p = _cols(n, rng, DOMAIN_SPECS[domain][kind])
    if kind == TUMOUR:
        p[:, 2] *= p[:, 1]  # b = ratio * a
        hyper = rng.random(n) < HYPERCHROMATIC[domain]  # some as dark as mitoses
        p[hyper, 3] = rng.uniform(1.7, 2.3, int(hyper.sum()))
        p[:, 8] = np.maximum(p[:, 8], 0.0)  # size <= 0: no nucleolus
    elif kind == OVERLAP:
        p[:, 4] *= p[:, 3]
        p[:, 8] *= p[:, 7]
    return p


def half_extent(kind: int, p: np.ndarray) -> tuple[float, float, float]:
    """(half width u, half height v, theta) of the stained figure in microns, for boxes."""
    if kind in (TUMOUR, STROMAL):
        return float(p[1]), float(p[2]), float(p[0])
    if kind == PROPHASE:
        return float(p[1]), float(p[1] * p[2]), float(p[0])
    if kind == METAPHASE:
        if p[7] > 0.86:
            r = float(p[12] * 1.15 + p[2] + 0.4)
            return r, r, 0.0
        return float(p[1] + 0.3), float(p[2] * 1.3 + abs(p[4]) + 0.4), float(p[0])
    if kind == ANAPHASE:
        return float(p[1] + 0.3), float(p[4] + p[2] * 1.3 + 0.6), float(p[0])
    if kind == TELOPHASE:
        return float(p[1] + 0.3), float(p[4] + p[2] + abs(p[7]) + 0.3), float(p[0])
    if kind == PYKNOTIC:
        r = float(p[0] if p[6] <= 0.75 else 0.55 * p[2] + 0.55 * p[0])
        return r, r, 0.0
    if kind == LYMPHOCYTE:
        return float(p[0]), float(p[0]), 0.0
    if kind == OVERLAP:
        ox, oy = abs(p[0] * np.cos(p[1])), abs(p[0] * np.sin(p[1]))
        boxes = [_ellipse_box(p[3], p[4], p[2]), _ellipse_box(p[7], p[8], p[6])]
        return ox + max(b[0] for b in boxes), oy + max(b[1] for b in boxes), 0.0
    raise ValueError(f"unknown kind {kind}")


def _ellipse_box(a: float, b: float, theta: float) -> tuple[float, float]:
    """Half width and height of the bounding box of a rotated ellipse."""
    c, s = np.cos(theta), np.sin(theta)
    return float(np.hypot(a * c, b * s)), float(np.hypot(a * s, b * c))


def reach(kind: int, p: np.ndarray) -> np.ndarray:
    """Radius (um) within which each object of ``kind`` (rows of ``p``) paints anything."""
    if kind in (TUMOUR, OVERLAP):
        base = (
            p[:, 1] * 1.15 + 0.5
            if kind == TUMOUR
            else p[:, 0] + np.maximum(p[:, 3], p[:, 7]) * 1.15
        )
        return base + 0.5
    table = {
        STROMAL: p[:, 1] + np.abs(p[:, 4]) + 0.5,
        PROPHASE: p[:, 1] + 4.5,
        METAPHASE: np.maximum(p[:, 6] + 3.0, p[:, 1] + 2.0),
        ANAPHASE: p[:, 7] + p[:, 4] + 3.5,
        TELOPHASE: p[:, 4] * (1 + p[:, 5]) + 3.5,
        PYKNOTIC: (p[:, 2] + p[:, 5]) * p[:, 7] + 1.0,
        LYMPHOCYTE: p[:, 0] * p[:, 2] + 1.5,
    }
    return table[kind]


def exclusion(kind: int, p: np.ndarray) -> np.ndarray:
    """Radius (um) around a figure that ordinary nuclei keep clear of."""
    return reach(kind, p) + 1.0
