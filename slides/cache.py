"""Slides kept open for a process's threads: a bounded LRU keyed by file path."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from os import PathLike
from typing import Generic, TypeVar

import openslide

from .tiled_tiff import TiledTiffSlide

T = TypeVar("T")


class SlideHandles(Generic[T]):
    """A bounded, thread-safe LRU of open slides keyed by file path.

    Each slide is opened as a TiledTiffSlide and handed to ``prepare`` (which may wrap it,
    e.g. with a Deep Zoom generator); ``get`` answers what ``prepare`` returned. One
    OpenSlideCache of ``cache_bytes`` is shared by every open slide, and each slide's
    decoded tifffile tiles get an equal share of the same budget, so memory stays bounded
    however many slides are open.
    """

    def __init__(
        self, max_slides: int, cache_bytes: int, prepare: Callable[[TiledTiffSlide], T]
    ) -> None:
        self.max_slides = max_slides
        self.shared_cache = openslide.OpenSlideCache(cache_bytes)
        self.tile_cache_bytes = cache_bytes // max_slides
        self._prepare = prepare
        self._open: OrderedDict[str, T] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str | PathLike[str]) -> T:
        """The open slide at ``path``, opened (and the least recently used dropped) if need be."""
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
                # Closing would break a read still going on another thread;
                # dropping the reference lets the handle close once unused.
                self._open.popitem(last=False)
        return opened

    def forget(self, path: str | PathLike[str], opened: T) -> None:
        """Drop ``opened`` (if still the open handle of ``path``): the next read reopens."""
        with self._lock:
            if self._open.get(str(path)) is opened:
                del self._open[str(path)]

    def _open_slide(self, path: str | PathLike[str]) -> T:
        slide = TiledTiffSlide(path, cache_bytes=self.tile_cache_bytes)
        slide.set_cache(self.shared_cache)
        return self._prepare(slide)
