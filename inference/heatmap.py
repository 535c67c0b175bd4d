"""Count grids as translucent colour images for the viewer overlay."""

from io import BytesIO

import numpy as np
from PIL import Image

# Colour stops (value fraction, RGBA): clear at zero, then blue, yellow, red.
STOPS = np.array(
    [
        [0.0, 0, 0, 0, 0],
        [0.01, 49, 54, 149, 90],
        [0.35, 69, 117, 180, 150],
        [0.6, 254, 224, 144, 190],
        [0.8, 244, 109, 67, 210],
        [1.0, 165, 0, 38, 230],
    ]
)


def heatmap_png(counts: list[list[int]]) -> bytes:
    """PNG of a count grid: one pixel per cell, coloured by count relative to its maximum."""
    grid = np.asarray(counts, np.float64)
    top = max(grid.max(), 1.0)
    fraction = (grid / top).ravel()
    rgba = np.stack([np.interp(fraction, STOPS[:, 0], STOPS[:, c]) for c in range(1, 5)], axis=1)
    rgba[fraction == 0] = 0
    image = Image.fromarray(rgba.reshape(*grid.shape, 4).round().astype(np.uint8), "RGBA")
    buffer = BytesIO()
    image.save(buffer, "png")
    return buffer.getvalue()
