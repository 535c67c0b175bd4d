"""Tissue detection on a slide thumbnail: HSV saturation (Otsu threshold) or optical density
against the glass, then morphology."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import openslide
from numpy.typing import ArrayLike, NDArray
from PIL import Image
from scipy import ndimage

from slides.io import THUMBNAIL_PX_MAX, downscaled_region, thumbnail

WHITE_FILL = 254  # every channel at least this: filled white by the scanner or reader
GLASS_SHARE = 0.1  # glass: at least this share of the other pixels, within 4 of its brightness


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask and the level-0 pixels covered by one mask pixel."""

    mask: NDArray[np.bool_]
    scale_x: float
    scale_y: float
    _integral: NDArray[np.int64] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        integral = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
        inner = integral[1:, 1:]  # rows first, in place: 4-8x faster than cumsum(0) on bools
        np.cumsum(self.mask, axis=1, dtype=np.int64, out=inner)
        np.cumsum(inner, axis=0, out=inner)
        object.__setattr__(self, "_integral", integral)

    def fraction(self, x: ArrayLike, y: ArrayLike, width: float, height: float) -> NDArray:
        """Tissue fraction of level-0 rectangle(s) ``[x, x+width) x [y, y+height)``.

        ``x``/``y`` may be scalars or arrays; mask pixels touched by the rectangle count,
        and area outside the slide counts as background.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        c0 = np.floor(x / self.scale_x).astype(np.int64)
        r0 = np.floor(y / self.scale_y).astype(np.int64)
        c1 = np.maximum(np.ceil((x + width) / self.scale_x).astype(np.int64), c0 + 1)
        r1 = np.maximum(np.ceil((y + height) / self.scale_y).astype(np.int64), r0 + 1)
        area = (c1 - c0) * (r1 - r0)
        rows, cols = self.mask.shape
        c0, c1 = np.clip(c0, 0, cols), np.clip(c1, 0, cols)
        r0, r1 = np.clip(r0, 0, rows), np.clip(r1, 0, rows)
        ii = self._integral
        inside = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return inside / area


def otsu_threshold(values: NDArray[np.uint8]) -> int:
    """Otsu's threshold of 8-bit values (the first level counted as foreground)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    weight_bg = np.cumsum(hist)
    weight_fg = weight_bg[-1] - weight_bg
    cum_mean = np.cumsum(hist * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_bg = cum_mean / weight_bg
        mean_fg = (cum_mean[-1] - cum_mean) / weight_fg
        between = np.nan_to_num(weight_bg * weight_fg * (mean_bg - mean_fg) ** 2)
    return int(np.argmax(between)) + 1


def tissue_mask_from_rgb(
    rgb: NDArray[np.uint8],
    *,
    min_saturation: int = 20,
    max_saturation: int = 50,
    min_optical_density: float = 0.1,
    closing_px: int = 2,
    opening_px: int = 1,
    min_object_px: int = 32,
) -> NDArray[np.bool_]:
    """Tissue mask of an RGB image: pixels that are stained (HSV saturation at or above its
    Otsu threshold) or absorb light (optical density against the glass at least
    ``min_optical_density``), cleaned up.

    Saturation alone misses pale, greyish tissue (a bluer haematoxylin with little eosin
    makes cellular tumour as unsaturated as the glass), so the optical density counts too.
    The saturation threshold is clipped to ``[min_saturation, max_saturation]`` (0-255) so
    that a blank slide is not thresholded into noise and a slide covered in tissue is not
    split into two kinds of tissue. Then closing and opening with disks of the given radii,
    objects smaller than ``min_object_px`` pixels removed, holes filled.
    """
    saturation = np.asarray(Image.fromarray(rgb).convert("HSV"))[..., 1]
    threshold = np.clip(otsu_threshold(saturation), min_saturation, max_saturation)
    mask = (saturation >= threshold) | (optical_density(rgb) >= min_optical_density)
    mask = _morphology(mask, closing_px, closing=True)
    mask = _morphology(mask, opening_px, closing=False)
    mask = _remove_small_objects(mask, min_object_px)
    return _fill_holes(mask)


def optical_density(rgb: NDArray[np.uint8], dark: int = 64) -> NDArray[np.float32]:
    """Optical density (summed over R, G, B) of each pixel against the glass. The glass is
    the median colour of the brightest 2 % of pixels that are not pure white (areas a
    scanner or reader fills white are not the glass), if those colours are a peak holding
    at least GLASS_SHARE of the pixels, as glass is; otherwise (glass clipped to white, no
    glass at all: the brightest tissue is the tail of a broad spread) white. Near-black
    pixels (every channel below ``dark``: a scanner's unscanned area) get 0.
    """
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]  # channel by channel: numpy
    brightness = red.astype(np.int16) + green + blue  # reduces a length-3 axis slowly
    unfilled = np.minimum(np.minimum(red, green), blue) < WHITE_FILL
    counts = np.bincount(brightness[unfilled], minlength=3 * 255 + 1)
    glass = np.full(3, 255.0)
    if counts.sum():
        cutoff = np.searchsorted(np.cumsum(counts), 0.98 * counts.sum())  # the brightest 2 %
        brightest = np.median(rgb[unfilled & (brightness >= cutoff)], axis=0)
        level = int(brightest.sum())
        if counts[max(level - 4, 0) : level + 5].sum() >= GLASS_SHARE * counts.sum():
            glass = brightest
    # per channel, the density of each of the 256 values: three lookups a pixel
    levels = np.maximum(np.arange(256, dtype=np.float32), 1)
    table = np.log10(np.maximum(glass, 1)[:, None] / levels).clip(min=0).astype(np.float32)
    density = table[0].take(red) + table[1].take(green) + table[2].take(blue)
    density[np.maximum(np.maximum(red, green), blue) < dark] = 0.0
    return density


def _morphology(mask: NDArray[np.bool_], radius: int, closing: bool) -> NDArray[np.bool_]:
    """Binary closing (dilation, then erosion) or opening (erosion, then dilation) with a
    disk of ``radius``, the border treated as continuing. The same pixels as
    ``scipy.ndimage.binary_closing``/``binary_opening`` on the edge-padded mask (tested),
    from one shifted copy per disk pixel: 6-16x faster on a 2,000 px mask."""
    if not radius:
        return mask
    padded = np.pad(mask, radius, mode="edge")
    first, second = (_dilate, _erode) if closing else (_erode, _dilate)
    return second(first(padded, radius), radius)[radius:-radius, radius:-radius]


def _dilate(mask: NDArray[np.bool_], radius: int) -> NDArray[np.bool_]:
    """Pixels with a set pixel within the disk of ``radius`` (none outside the image)."""
    out = np.zeros_like(mask)
    for target, source in _disk_shifts(mask.shape, radius):
        out[target] |= mask[source]
    return out


def _erode(mask: NDArray[np.bool_], radius: int) -> NDArray[np.bool_]:
    """Pixels whose whole disk of ``radius`` is set; outside the image counts as unset, so
    the frame of ``radius`` px (whose disks reach outside) is unset."""
    out = np.ones_like(mask)
    for target, source in _disk_shifts(mask.shape, radius):
        out[target] &= mask[source]
    out[:radius], out[-radius:], out[:, :radius], out[:, -radius:] = False, False, False, False
    return out


def _disk_shifts(shape: tuple[int, ...], radius: int) -> Iterator[tuple[tuple, tuple]]:
    """For each offset (dy, dx) of the disk of ``radius``: the slices of pixels p and of
    p + (dy, dx), wherever both lie in an image of ``shape``."""
    height, width = shape
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = xx**2 + yy**2 <= radius**2
    for dy, dx in zip(yy[disk], xx[disk], strict=True):
        target = slice(max(-dy, 0), height - max(dy, 0)), slice(max(-dx, 0), width - max(dx, 0))
        source = slice(max(dy, 0), height - max(-dy, 0)), slice(max(dx, 0), width - max(-dx, 0))
        yield target, source


def _remove_small_objects(mask: NDArray[np.bool_], min_px: int) -> NDArray[np.bool_]:
    labels, count = ndimage.label(mask)
    if not count:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _fill_holes(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """``ndimage.binary_fill_holes`` in one labelling pass instead of repeated dilations:
    background components that do not touch the border are holes."""
    background, _ = ndimage.label(~mask)
    edges = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    outside = np.zeros(background.max() + 1, bool)
    outside[edges] = True
    return mask | ~outside[background]


def detect_tissue(
    slide: openslide.OpenSlide, max_size: int = THUMBNAIL_PX_MAX, **options: int
) -> TissueMask:
    """Tissue mask of a slide from an overview of at most ``max_size`` px
    (:func:`overview`; registration keeps the levels it reads within bounds).

    ``options`` are passed to :func:`tissue_mask_from_rgb`.
    """
    mask = tissue_mask_from_rgb(np.asarray(overview(slide, max_size)), **options)
    width, height = slide.dimensions
    return TissueMask(mask, width / mask.shape[1], height / mask.shape[0])


def overview(slide: openslide.OpenSlide, max_size: int = THUMBNAIL_PX_MAX) -> Image.Image:
    """The slide's largest pyramid level whose longer side lies within ``[0.75 * max_size,
    max_size]``, as it is; else a thumbnail of at most ``max_size`` px (slides.io.thumbnail,
    read in bounded chunks). A level read as it is costs no resampling: 12 ms for the
    2,000 px level of a 16,000 px slide, against 0.35 s for the thumbnail resampled from its
    4,000 px level. The bound keeps the mask's scale within a third of the thumbnail's, as
    the mask's pixel settings (closing, opening, smallest object) assume."""
    for level, (width, height) in enumerate(slide.level_dimensions):
        if 0.75 * max_size <= max(width, height) <= max_size:
            return downscaled_region(slide, (0, 0), level, (width, height), (width, height))
    return thumbnail(slide, max_size)
