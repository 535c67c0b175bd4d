"""Validating a slide file: accept only what OpenSlide reads and what can be read within
bounds, and say why not in words a user understands (never the file's server path)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import openslide

from .io import SCAN_PIXELS_MAX, THUMBNAIL_PX_MAX, coarsest_level
from .mpp import declared_mpp, positive_number

# TIFF and BigTIFF, both byte orders: the container of SVS, NDPI, SCN, BIF and generic TIFF.
TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
# The largest region, in output px a side, any reader asks for at once (a Deep Zoom tile
# with its overlap, a detection patch, a finding crop, a MIL bag), with room to spare.
REGION_PX = 512
# JPEG, deflate and LZW of a blank RGB tile reach a few hundred pixels a byte; a file that
# declares far more pixels than that per byte is forged or broken, whatever its levels say.
PIXELS_PER_BYTE_MAX = 10_000
PYRAMID_ADVICE = "save the slide as a pyramidal TIFF, with a level every 2× or 4×"


class SlideRejected(Exception):
    """A file that cannot become a slide; the message says why, for the user."""


@dataclass(frozen=True)
class SlideInfo:
    """What a slide file says about itself (µm/px and power None when not declared)."""

    vendor: str
    width: int
    height: int
    level_count: int
    mpp_x: float | None
    mpp_y: float | None
    objective_power: float | None


def inspect_slide(path: Path, name: str | None = None) -> SlideInfo:
    """Open a file with OpenSlide and read its geometry; refuse it if its reads cannot be
    bounded in memory (read_bounds_problem); decode its corners to catch truncation.
    Raises SlideRejected.

    ``name`` is how the file is called in messages (an upload's original name); they never
    show the path it has on the server.
    """
    name = name or path.name
    if openslide.OpenSlide.detect_format(path) is None:
        with open(path, "rb") as handle:
            if handle.read(4) in TIFF_SIGNATURES:
                raise SlideRejected(f"{name}: the slide is damaged or incomplete (unreadable TIFF)")
        raise SlideRejected(f"{name}: not a whole-slide image format OpenSlide can read")
    try:
        with openslide.OpenSlide(path) as slide:
            problem = read_bounds_problem(
                slide.level_dimensions, slide.level_downsamples, path.stat().st_size
            )
            if problem:
                raise SlideRejected(f"{name}: refused because {problem}")
            _decode_samples(slide)
            props = slide.properties
            width, height = slide.dimensions
            mpp_x, mpp_y = declared_mpp(props)
            return SlideInfo(
                vendor=props.get(openslide.PROPERTY_NAME_VENDOR, "unknown"),
                width=width,
                height=height,
                level_count=slide.level_count,
                mpp_x=mpp_x,
                mpp_y=mpp_y,
                objective_power=positive_number(props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)),
            )
    except openslide.OpenSlideError as error:
        reason = _without_path(str(error), path, name)
        raise SlideRejected(f"{name}: the slide is damaged or incomplete ({reason})") from None


def _without_path(message: str, path: Path, name: str) -> str:
    """The library's message with the file's server path (which OpenSlide's messages may
    include) replaced by the name the user knows it by."""
    for server_name in (str(path.resolve()), str(path), path.name):
        message = message.replace(server_name, name)
    return message


def _decode_samples(slide: openslide.OpenSlide) -> None:
    """Read the last tile of every level: a truncated file fails here, not in the viewer."""
    for level, (width, height) in enumerate(slide.level_dimensions):
        size = (min(256, width), min(256, height))
        scale = slide.level_downsamples[level]
        corner = (int((width - size[0]) * scale), int((height - size[1]) * scale))
        slide.read_region(corner, level, size)
        slide.read_region((0, 0), level, size)


def read_bounds_problem(
    level_dimensions: tuple[tuple[int, int], ...],
    level_downsamples: tuple[float, ...],
    file_bytes: int,
) -> str | None:
    """Why reads of a slide with these levels cannot be bounded, or None when they can.

    A thumbnail reads the level OpenSlide picks for it whole (up to THUMBNAIL_PX_MAX), the
    zoomed-out Deep Zoom levels the smallest level, and a view between two levels up to
    ``REGION_PX`` times their downsample ratio a side of the finer one: all must stay
    within SCAN_PIXELS_MAX. The file must also hold at least a byte per
    PIXELS_PER_BYTE_MAX pixels it declares.
    """
    width, height = level_dimensions[0]
    if width * height > PIXELS_PER_BYTE_MAX * max(file_bytes, 1):
        return (
            f"it declares {width}×{height} px in {file_bytes / 1024:,.0f} KB, more pixels per"
            " byte than any image compression gives: the file is damaged or forged"
        )
    for_thumbnail = coarsest_level(level_downsamples, max(width, height) / THUMBNAIL_PX_MAX)
    for level in sorted({for_thumbnail, len(level_dimensions) - 1}):
        w, h = level_dimensions[level]
        if w * h > SCAN_PIXELS_MAX:
            return (
                f"thumbnails and the zoomed-out view would read its {w}×{h} px level {level}"
                f" whole (at most {SCAN_PIXELS_MAX / 1e6:.0f} Mpx); {PYRAMID_ADVICE}"
            )
    for level in range(len(level_dimensions) - 1):
        gap = level_downsamples[level + 1] / level_downsamples[level]
        w, h = level_dimensions[level]
        read = min(w, math.ceil(REGION_PX * gap)) * min(h, math.ceil(REGION_PX * gap))
        if read > SCAN_PIXELS_MAX:
            return (
                f"its levels {level} and {level + 1} are {gap:,.0f}× apart, so a view between"
                f" them would read {read / 1e6:,.0f} Mpx at once (at most"
                f" {SCAN_PIXELS_MAX / 1e6:.0f}); {PYRAMID_ADVICE}"
            )
    return None
