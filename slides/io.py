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

from .tiled_tiff import TiledTiffSlide, check_read

WHITE = (255, 255, 255)
# Regions larger than this side squared (thumbnails, coarse Deep Zoom tiles) are read in
# chunks of it, each box-averaged as soon as it is read. A little over the 1024 px a Deep
# Zoom tile reads between levels 4x apart, so those stay single reads.
CHUNK_PX = 1280
# The most pixels one downscaled read may decode: it bounds work, not memory. A slide is
# registered only if every level a thumbnail or the zoomed-out Deep Zoom levels read whole
# fits, and so does any region read between two levels (read_bounds_problem).
SCAN_PIXELS_MAX = 1 << 27
# The largest thumbnail any reader asks for (tissue detection's).
THUMBNAIL_PX_MAX = 2048
# The largest region, in output px a side, any reader asks for at once (a Deep Zoom tile
# with its overlap, a detection patch, a finding crop, a MIL bag), with room to spare.
REGION_PX = 512
# JPEG, deflate and LZW of a blank RGB tile reach a few hundred pixels a byte; a file that
# declares far more pixels than that per byte is forged or broken, whatever its levels say.
PIXELS_PER_BYTE_MAX = 10_000
PYRAMID_ADVICE = "save the slide as a pyramidal TIFF, with a level every 2× or 4×"


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
    return _coarsest_within(slide.level_downsamples, downsample)


def _coarsest_within(level_downsamples: tuple[float, ...], downsample: float) -> int:
    eligible = [
        (ds, level) for level, ds in enumerate(level_downsamples) if ds <= downsample * (1 + 1e-6)
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
    Raises ReadTooLarge (tiled_tiff) past its READ_PIXELS_MAX: only an absurd scale gets there.
    """
    level = best_level(slide, min(scale.x, scale.y))
    ds = slide.level_downsamples[level]
    src_w, src_h = size[0] * scale.x / ds, size[1] * scale.y / ds
    exact = (src_w, src_h) == tuple(size)
    read_size = tuple(size) if exact else (math.ceil(src_w) + 1, math.ceil(src_h) + 1)
    check_read(read_size)
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
    """An RGB thumbnail whose longer side is at most ``max_size`` pixels: OpenSlide's
    ``get_thumbnail``, but a level larger than a chunk is read in chunks
    (:func:`downscaled_region`)."""
    width, height = slide.dimensions
    downsample = max(width / max_size, height / max_size)
    level = slide.get_best_level_for_downsample(downsample)
    level_size = slide.level_dimensions[level]
    if level_size[0] * level_size[1] <= CHUNK_PX * CHUNK_PX:
        return slide.get_thumbnail((max_size, max_size)).convert("RGB")
    return downscaled_region(slide, (0, 0), level, level_size, (max_size, max_size))


def downscaled_region(
    slide: openslide.OpenSlide,
    location: tuple[int, int],
    level: int,
    size: tuple[int, int],
    bounds: tuple[int, int],
) -> Image.Image:
    """The ``size`` px region of ``level`` at level-0 ``location`` on the slide's
    background colour, shrunk to fit ``bounds`` as Pillow's ``Image.thumbnail`` shrinks
    it (what OpenSlide's thumbnails and Deep Zoom tiles do with a whole region).

    Read in chunks of at most ``CHUNK_PX`` squared, each box-averaged by Pillow's whole
    factors as soon as it is read, so memory stays bounded however large the region. The
    pixels are Pillow's where the level's downsample is a whole number and the factors at
    most ``CHUNK_PX`` (not so for outputs of a few pixels). Raises ReadTooLarge past
    SCAN_PIXELS_MAX.
    """
    check_read(size, SCAN_PIXELS_MAX)
    width, height = size
    out = _fitted(size, bounds)
    # Image.thumbnail's reducing_gap of 2: whole factors leaving twice the output size.
    fx = min(max(1, width // (2 * out[0])), CHUNK_PX)
    fy = min(max(1, height // (2 * out[1])), CHUNK_PX)
    step_x, step_y = CHUNK_PX // fx * fx, CHUNK_PX // fy * fy
    downsample = slide.level_downsamples[level]
    background = "#" + slide.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
    reduced = Image.new("RGB", (-(-width // fx), -(-height // fy)), background)
    for top in range(0, height, step_y):
        for left in range(0, width, step_x):
            chunk_size = (min(step_x, width - left), min(step_y, height - top))
            origin = (location[0] + round(left * downsample), location[1] + round(top * downsample))
            rgba = slide.read_region(origin, level, chunk_size)
            chunk = Image.new("RGB", chunk_size, background)
            chunk.paste(rgba, mask=rgba)
            reduced.paste(chunk.reduce((fx, fy)), (left // fx, top // fy))
    box = (0, 0, width / fx, height / fy)
    return reduced.resize(out, Image.Resampling.LANCZOS, box=box)


def _fitted(size: tuple[int, int], bounds: tuple[int, int]) -> tuple[int, int]:
    """The size ``Image.thumbnail(bounds)`` gives an image of ``size``: never enlarged;
    otherwise one side at its bound and the other rounded (up or down) to the nearer aspect
    ratio, at least 1."""
    (width, height), (bound_x, bound_y) = size, bounds
    if bound_x >= width and bound_y >= height:
        return size
    aspect = width / height
    if bound_x / bound_y >= aspect:
        x = bound_y * aspect
        x = min(math.floor(x), math.ceil(x), key=lambda n: abs(aspect - n / bound_y))
        return max(x, 1), bound_y
    y = bound_x / aspect
    y = min(math.floor(y), math.ceil(y), key=lambda n: abs(aspect - bound_x / n) if n else 0)
    return bound_x, max(y, 1)


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
    for_thumbnail = _coarsest_within(level_downsamples, max(width, height) / THUMBNAIL_PX_MAX)
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
