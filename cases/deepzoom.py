"""Deep Zoom tiles from OpenSlide, with open slides and rendered tiles kept in bounded LRUs.

One OpenSlideCache is shared by every open slide so decoded source tiles stay
within one memory budget however many slides are open. Rendered JPEG tiles are
cached by (slide sha256, level, col, row) because several viewers on one slide
ask for the same low-resolution and hotspot tiles.
"""

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import openslide
from django.conf import settings
from openslide.deepzoom import DeepZoomGenerator


@dataclass(frozen=True)
class OpenedSlide:
    slide: openslide.OpenSlide
    deepzoom: DeepZoomGenerator


class SlideHandles:
    """A bounded, thread-safe LRU of open slides keyed by file path."""

    def __init__(self, max_slides: int, cache_bytes: int):
        self.max_slides = max_slides
        self.shared_cache = openslide.OpenSlideCache(cache_bytes)
        self._open: OrderedDict[str, OpenedSlide] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> OpenedSlide:
        key = str(path)
        with self._lock:
            if key in self._open:
                self._open.move_to_end(key)
                return self._open[key]
        opened = self._open_slide(path)
        with self._lock:
            self._open[key] = opened
            self._open.move_to_end(key)
            while len(self._open) > self.max_slides:
                # Closing would break a tile still being read on another thread;
                # dropping the reference lets the handle close once unused.
                self._open.popitem(last=False)
        return opened

    def _open_slide(self, path: Path) -> OpenedSlide:
        slide = openslide.OpenSlide(path)
        slide.set_cache(self.shared_cache)
        deepzoom = DeepZoomGenerator(
            slide,
            tile_size=settings.DEEPZOOM_TILE_SIZE,
            overlap=settings.DEEPZOOM_OVERLAP,
            limit_bounds=False,
        )
        return OpenedSlide(slide, deepzoom)


class TileBytes:
    """A bounded LRU of encoded tiles, limited by total bytes."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[tuple, bytes] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._tiles.get(key)
            if data is not None:
                self._tiles.move_to_end(key)
            return data

    def put(self, key: tuple, data: bytes) -> None:
        with self._lock:
            if key in self._tiles:
                return
            self._tiles[key] = data
            self._size += len(data)
            while self._size > self.max_bytes and self._tiles:
                _, dropped = self._tiles.popitem(last=False)
                self._size -= len(dropped)


handles = SlideHandles(settings.SLIDE_CACHE_SLIDES, settings.SLIDE_CACHE_BYTES)
tile_cache = TileBytes(settings.TILE_CACHE_BYTES)


def encode_jpeg(image) -> bytes:
    """JPEG at the configured quality, as OpenSlide's example server writes tiles."""
    buffer = BytesIO()
    image.save(buffer, "jpeg", quality=settings.DEEPZOOM_JPEG_QUALITY)
    return buffer.getvalue()


def tile_etag(sha256: str, level: int, col: int, row: int) -> str:
    """A strong ETag: the slide's content hash fixes every tile's pixels."""
    params = (
        f"{sha256}:{settings.DEEPZOOM_TILE_SIZE}:{settings.DEEPZOOM_OVERLAP}:"
        f"{settings.DEEPZOOM_JPEG_QUALITY}:{level}:{col}:{row}"
    )
    return '"' + hashlib.blake2b(params.encode(), digest_size=12).hexdigest() + '"'


def render_tile(path: Path, sha256: str, level: int, col: int, row: int) -> bytes | None:
    """The JPEG bytes of one Deep Zoom tile, or None when the address is out of range."""
    key = (sha256, level, col, row)
    data = tile_cache.get(key)
    if data is not None:
        return data
    deepzoom = handles.get(path).deepzoom
    if not (0 <= level < deepzoom.level_count):
        return None
    cols, rows = deepzoom.level_tiles[level]
    if not (0 <= col < cols and 0 <= row < rows):
        return None
    data = encode_jpeg(deepzoom.get_tile(level, (col, row)))
    tile_cache.put(key, data)
    return data


def dzi_xml(path: Path) -> str:
    return handles.get(path).deepzoom.get_dzi("jpeg")
