"""Reading slides: open one, read regions resampled to a target µm/px, thumbnails.

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
# fits, and so does any region read between two levels (validate.read_bounds_problem).
SCAN_PIXELS_MAX = 1 << 27
# The largest thumbnail any reader asks for (tissue detection's).
THUMBNAIL_PX_MAX = 2048


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
    """A fresh reader of the whole-slide image at ``path``, the caller's to close: OpenSlide
    (raises OpenSlideError if unreadable), with plain tiled TIFF levels read from their
    decoded tiles (same pixels, less CPU)."""
    return TiledTiffSlide(str(path))


def best_level(slide: openslide.OpenSlide, downsample: float) -> int:
    """The coarsest level whose downsample does not exceed ``downsample``."""
    return coarsest_level(slide.level_downsamples, downsample)


def coarsest_level(level_downsamples: tuple[float, ...], downsample: float) -> int:
    """Of levels with these downsamples, the coarsest not exceeding ``downsample`` (else 0)."""
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


def associated_image(slide: openslide.OpenSlide, name: str) -> Image.Image:
    """The slide's ``name`` image (label, macro, thumbnail) as RGB. Raises KeyError when the
    slide has none, ReadTooLarge when its declared size is past one read's bound (OpenSlide
    decodes an associated image whole: a forged label could otherwise take gigabytes)."""
    if name not in slide.associated_images:
        raise KeyError(name)
    prefix = f"openslide.associated.{name}"
    size = (int(slide.properties[f"{prefix}.width"]), int(slide.properties[f"{prefix}.height"]))
    check_read(size)
    return slide.associated_images[name].convert("RGB")


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
