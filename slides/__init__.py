"""Slide reading with no Django: open and validate a slide, the tiled-TIFF fast path,
µm/px, and the open-slide cache. Registration, the tile server and the engine use it alike.

- ``io``: open a slide (a fresh reader), read regions at a target µm/px, thumbnails;
- ``tiled_tiff``: TiledTiffSlide, OpenSlide with plain tiled TIFF levels read by tifffile;
- ``mpp``: the slide's µm/px, never guessed;
- ``validate``: what a slide file must pass to be registered;
- ``cache``: slides kept open for a process's threads.
"""

from .cache import SlideHandles
from .io import Scale, associated_image, open_slide, read_region, thumbnail
from .mpp import MissingMppError, slide_mpp
from .tiled_tiff import ReadTooLarge, TiledTiffSlide
from .validate import SlideInfo, SlideRejected, inspect_slide

__all__ = [
    "MissingMppError",
    "ReadTooLarge",
    "Scale",
    "SlideHandles",
    "SlideInfo",
    "SlideRejected",
    "TiledTiffSlide",
    "associated_image",
    "inspect_slide",
    "open_slide",
    "read_region",
    "slide_mpp",
    "thumbnail",
]
