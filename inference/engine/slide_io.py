"""Slide access: open with OpenSlide, physical scale, regions resampled to a target µm/px.

Coordinates are continuous level-0 pixel coordinates: pixel ``i`` spans ``[i, i + 1)``.
A region read at a target µm/px covers ``scale = target_mpp / slide_mpp`` level-0 pixels
per output pixel, so output pixel coordinate ``u`` maps to level-0 ``origin + u * scale``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from os import PathLike

import openslide
from PIL import Image

from .tiled_tiff import TiledTiffSlide

WHITE = (255, 255, 255)


class MissingMppError(ValueError):
    """The slide does not declare its µm/px and no override was given."""


@dataclass(frozen=True)
class Scale:
    """Level-0 pixels per output pixel along x and y."""

    x: float
    y: float

    @classmethod
    def between(cls, slide_mpp: tuple[float, float], target_mpp: float) -> Scale:
        """Scale for reading a slide of ``slide_mpp`` (x, y) at ``target_mpp``."""
        return cls(target_mpp / slide_mpp[0], target_mpp / slide_mpp[1])


def open_slide(path: str | PathLike[str]) -> TiledTiffSlide:
    """Open a whole-slide image with OpenSlide (raises OpenSlideError if unreadable); plain
    tiled TIFF levels are read from their decoded tiles (same pixels, less CPU)."""
    return TiledTiffSlide(str(path))


def slide_mpp(
    slide: openslide.OpenSlide, override: float | tuple[float, float] | None = None
) -> tuple[float, float]:
    """Return the slide's (x, y) µm/px; ``override`` wins; never guessed.

    Raises MissingMppError when the slide has no ``openslide.mpp-x``/``mpp-y`` and
    no override is given.
    """
    if override is not None:
        mpp = (override, override) if isinstance(override, int | float) else tuple(override)
        return _validated(mpp[0], mpp[1])
    props = slide.properties
    try:
        return _validated(
            float(props[openslide.PROPERTY_NAME_MPP_X]),
            float(props[openslide.PROPERTY_NAME_MPP_Y]),
        )
    except (KeyError, ValueError) as exc:
        raise MissingMppError(
            "slide has no openslide.mpp-x/mpp-y; give its µm/px explicitly (mpp override)"
        ) from exc


def _validated(mpp_x: float, mpp_y: float) -> tuple[float, float]:
    if not (math.isfinite(mpp_x) and math.isfinite(mpp_y) and mpp_x > 0 and mpp_y > 0):
        raise MissingMppError(f"invalid µm/px ({mpp_x}, {mpp_y})")
    return float(mpp_x), float(mpp_y)


def best_level(slide: openslide.OpenSlide, downsample: float) -> int:
    """The coarsest level whose downsample does not exceed ``downsample``."""
    eligible = [
        (ds, level)
        for level, ds in enumerate(slide.level_downsamples)
        if ds <= downsample * (1 + 1e-6)
    ]
    return max(eligible)[1] if eligible else 0


def read_region(
    slide: openslide.OpenSlide,
    origin: tuple[int, int],
    size: tuple[int, int],
    scale: Scale,
) -> Image.Image:
    """Read ``size`` output pixels starting at level-0 ``origin``, resampled by ``scale``.

    Reads from the coarsest level that still has at least the requested resolution and
    resamples with Pillow, mapping output pixel ``u`` exactly to level-0 ``origin + u*scale``.
    Area outside the slide (or transparent) comes back white. Returns an RGB image.
    """
    level = best_level(slide, min(scale.x, scale.y))
    ds = slide.level_downsamples[level]
    src_w, src_h = size[0] * scale.x / ds, size[1] * scale.y / ds
    exact = (src_w, src_h) == tuple(size)
    read_size = tuple(size) if exact else (math.ceil(src_w) + 1, math.ceil(src_h) + 1)
    location = (int(origin[0]), int(origin[1]))
    tiles = None
    if isinstance(slide, TiledTiffSlide):
        tiles = slide.read_rgb(location, level, read_size)
    if tiles is not None:
        rgb = Image.fromarray(tiles)
    else:
        rgb = _flatten_alpha(slide.read_region(location, level, read_size))
    if exact:
        return rgb
    return rgb.resize(size, Image.Resampling.BILINEAR, box=(0, 0, src_w, src_h))


def _flatten_alpha(rgba: Image.Image) -> Image.Image:
    if rgba.getextrema()[3][0] == 255:  # opaque, the usual case: just drop alpha
        return rgba.convert("RGB")
    rgb = Image.new("RGB", rgba.size, WHITE)
    rgb.paste(rgba, mask=rgba.getchannel("A"))
    return rgb


def thumbnail(slide: openslide.OpenSlide, max_size: int) -> Image.Image:
    """An RGB thumbnail whose longer side is at most ``max_size`` pixels."""
    return slide.get_thumbnail((max_size, max_size)).convert("RGB")
