"""OpenSlide, with the levels of plain tiled TIFF slides read from tiles decoded by tifffile.

OpenSlide pastes every tile into a region with cairo's SATURATE operator, which sends
pixman down its floating-point path: ~24 ns per output pixel even when the tile is
cached (openslide/openslide#440, #719), more than decoding the JPEG tile costs. For
slides whose levels OpenSlide itself reads as plain grids of tiles (generic tiled TIFF,
Aperio SVS), decoding the same tiles with tifffile (libjpeg-turbo, like OpenSlide) and
copying them gives the same pixels at a fraction of the cost. Reads that would need
OpenSlide's interpolation (level coordinates that are not whole pixels), other formats
and levels that do not match a plain tiled page stay with OpenSlide.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections import OrderedDict
from io import BytesIO
from os import PathLike

import numpy as np
import openslide
import tifffile
from numpy.typing import NDArray
from PIL import Image

log = logging.getLogger(__name__)

# OpenSlide formats whose levels are TIFF pages read as plain grids of tiles.
PLAIN_GRID_VENDORS = {"generic-tiff", "aperio"}
DECODABLE = {
    (tifffile.COMPRESSION.JPEG, tifffile.PHOTOMETRIC.YCBCR),
    (tifffile.COMPRESSION.JPEG, tifffile.PHOTOMETRIC.RGB),
    (tifffile.COMPRESSION.NONE, tifffile.PHOTOMETRIC.RGB),
    (tifffile.COMPRESSION.LZW, tifffile.PHOTOMETRIC.RGB),
    (tifffile.COMPRESSION.ADOBE_DEFLATE, tifffile.PHOTOMETRIC.RGB),
}
# JPEG tiles whose streams a browser decodes as they are (YCbCr, the JPEG default).
SENDABLE = (tifffile.COMPRESSION.JPEG, tifffile.PHOTOMETRIC.YCBCR)
SOI, EOI, SOS, DHT = b"\xff\xd8", b"\xff\xd9", 0xDA, 0xC4
FRAME_MARKERS = {0xC0, 0xC1, 0xC2}  # baseline, extended, progressive
BROWSER_APPLIED = {0xE1, 0xE2}  # EXIF (orientation) and ICC profiles: Pillow ignores them
WHITE = 255
ABSENT = object()  # not in the cache (None is a tile the file leaves out)
Rgb = NDArray[np.uint8]
# The most pixels one read may ask for: OpenSlide allocates 4 bytes a pixel for the
# region (128 MiB here), Pillow and NumPy copies about as much again. Enough for the
# largest finding crop (512 px at 2 µm/px: 4097 px a side from a 0.25 µm/px slide without
# a pyramid); larger regions (thumbnails, zoomed-out Deep Zoom tiles) are read in chunks
# (io.downscaled_region), and anything else larger is refused.
READ_PIXELS_MAX = 1 << 25


class TileUnreadable(ValueError):
    """A tile tifffile cannot read or decode (the read is left to OpenSlide)."""


class ReadTooLarge(openslide.OpenSlideError):
    """A read that would need more memory than a read may take; the message says how much."""


def check_read(size: tuple[int, int], limit: int = READ_PIXELS_MAX) -> None:
    """Raise ReadTooLarge when a region of ``size`` (width, height) px exceeds ``limit``
    pixels (OpenSlide's RGBA: 4 bytes each)."""
    width, height = size
    if width * height > limit:
        raise ReadTooLarge(
            f"a read of {width}×{height} px ({width * height / 1e6:,.0f} Mpx) is over the"
            f" {limit / 1e6:,.0f} Mpx one read may take"
        )


class TileCache:
    """Decoded tiles (keyed by level and position), the least recently used dropped past
    ``max_bytes``. Thread-safe: a web process reads one slide from many threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._tiles: OrderedDict[tuple[int, int, int], Rgb | None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int, int]) -> Rgb | None | object:
        """The tile (None for a tile the file leaves out), or ``ABSENT``."""
        with self._lock:
            if key not in self._tiles:
                return ABSENT
            self._tiles.move_to_end(key)
            return self._tiles[key]

    def put(self, key: tuple[int, int, int], tile: Rgb | None) -> None:
        """Keep ``tile``, dropping the least recently used past the budget."""
        with self._lock:
            if key in self._tiles:
                return
            self._tiles[key] = tile
            self._bytes += 0 if tile is None else tile.nbytes
            while self._bytes > self.max_bytes and len(self._tiles) > 1:
                _, dropped = self._tiles.popitem(last=False)
                self._bytes -= 0 if dropped is None else dropped.nbytes


class TileGrid:
    """The tiles of one TIFF page (one pyramid level), read with ``pread`` from ``fd`` and
    decoded on demand into ``cache``."""

    def __init__(self, page: tifffile.TiffPage, level: int, fd: int, cache: TileCache) -> None:
        self._page = page
        self._decode_tile = page.decode  # built once: building it moves tifffile's handle
        self._level = level
        self._fd = fd
        self._cache = cache
        self.width, self.height = page.imagewidth, page.imagelength
        self.tile_w, self.tile_h = page.tilewidth, page.tilelength
        self._columns = -(-self.width // self.tile_w)
        # Set when the slide is opened, after one tile's stream decoded to its pixels.
        self.sends_jpeg = False

    def read_rgb(self, x: int, y: int, width: int, height: int) -> tuple[Rgb, bool]:
        """The ``height x width x 3`` region at ``(x, y)`` of this page, white where there
        is no image, and whether every pixel came from the image (no edge, no missing tile)."""
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + width, self.width), min(y + height, self.height)
        complete = (x0, y0, x1, y1) == (x, y, x + width, y + height)
        out = np.empty((height, width, 3), np.uint8)
        if not complete:
            out.fill(WHITE)
        if x1 <= x0 or y1 <= y0:
            return out, False
        for ty in range(y0 // self.tile_h, -(-y1 // self.tile_h)):
            for tx in range(x0 // self.tile_w, -(-x1 // self.tile_w)):
                left, top = tx * self.tile_w, ty * self.tile_h
                sx0, sy0 = max(x0, left), max(y0, top)
                sx1, sy1 = min(x1, left + self.tile_w), min(y1, top + self.tile_h)
                target = out[sy0 - y : sy1 - y, sx0 - x : sx1 - x]
                tile = self._tile(tx, ty)
                if tile is None:  # a tile the file leaves out
                    target[...] = WHITE
                    complete = False
                else:
                    target[...] = tile[sy0 - top : sy1 - top, sx0 - left : sx1 - left]
        return out, complete

    def _tile(self, tx: int, ty: int) -> Rgb | None:
        key = (self._level, tx, ty)
        tile = self._cache.get(key)
        if tile is ABSENT:
            tile = self._decode(ty * self._columns + tx)
            self._cache.put(key, tile)
        return tile

    def jpeg(self, tx: int, ty: int) -> bytes | None:
        """Tile ``(tx, ty)`` as the file stores it, made a complete JPEG file (the page's
        shared tables put in); None where the file leaves it out or its stream is not a
        whole JPEG of the tile's size."""
        index = ty * self._columns + tx
        offset, size = self._page.dataoffsets[index], self._page.databytecounts[index]
        if not offset or not 0 < size <= 3 * self.tile_w * self.tile_h:  # more than raw pixels
            return None
        data = os.pread(self._fd, size, offset)
        tables = self._page.jpegtables
        if tables and tables.startswith(SOI) and tables.endswith(EOI):
            data = tables[:-2] + data[2:] if data.startswith(SOI) else b""
        return data if _whole_jpeg(data, self.tile_w, self.tile_h) else None

    def centre_tile(self) -> tuple[int, int]:
        """(column, row) of the tile at the page's centre: tissue, where reads that differ
        would show it."""
        return self.width // 2 // self.tile_w, self.height // 2 // self.tile_h

    def jpeg_agrees(self) -> bool:
        """Whether this page's JPEG streams, sent as they are, decode (with Pillow, as a
        browser would) to the pixels read here: checked on its centre tile."""
        if (self._page.compression, self._page.photometric) != SENDABLE:
            return False
        tx, ty = self.centre_tile()
        try:
            data = self.jpeg(tx, ty)
            ours = self._tile(tx, ty)
            with Image.open(BytesIO(data or b"")) as image:
                sent = np.asarray(image.convert("RGB"))
        except (TileUnreadable, OSError):
            return False
        return ours is not None and np.array_equal(sent, ours)

    def _decode(self, index: int) -> Rgb | None:
        """Tile ``index``, or None for a tile the file leaves out (OpenSlide reads those as
        transparent)."""
        page = self._page
        offset, size = page.dataoffsets[index], page.databytecounts[index]
        if not offset or not size:
            return None
        try:
            encoded = os.pread(self._fd, size, offset)
            data, _, _ = self._decode_tile(encoded, index, jpegtables=page.jpegtables)
            return data.reshape(self.tile_h, self.tile_w, 3)
        except Exception as error:  # truncated file, corrupt data: whatever the codec raises
            raise TileUnreadable(f"tile {index} of level {self._level}: {error}") from error


class TiledTiffSlide(openslide.OpenSlide):
    """An OpenSlide handle whose reads of plain tiled TIFF levels come from decoded tiles.

    Same pixels as OpenSlide (the centre tile of level 0 is compared when the slide is
    opened; any difference and every read goes to OpenSlide). Decoded tiles are kept up
    to ``cache_bytes``. Safe to read from several threads, like OpenSlide.
    """

    def __init__(self, filename: str | PathLike[str], cache_bytes: int = 64 << 20) -> None:
        super().__init__(filename)
        self._downsamples = super().level_downsamples
        self._cache = TileCache(cache_bytes)
        self._tiff: tifffile.TiffFile | None = None
        self._fd: int | None = None
        self._grids: dict[int, TileGrid] = {}
        if self.properties.get(openslide.PROPERTY_NAME_VENDOR) in PLAIN_GRID_VENDORS:
            self._open_grids(filename)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample factor of each level (asked of OpenSlide once, not on every read)."""
        return self._downsamples

    def read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Rgb | None:
        """Region as in :meth:`read_region`, as RGB with white where there is no image; None
        when this read must go through OpenSlide. Raises ReadTooLarge past READ_PIXELS_MAX."""
        check_read(size)
        read = self._read_grid(location, level, size)
        return None if read is None else read[0]

    def reads_plain(self, location: tuple[int, int], level: int) -> bool:
        """Whether reads of ``level`` at level-0 ``location`` come from decoded tiles (a
        plain tiled level, at whole pixels of it) rather than from OpenSlide."""
        downsample = self._downsamples[level]
        return level in self._grids and all((value / downsample).is_integer() for value in location)

    def sends_jpeg_tiles(self, level: int, tile_px: int) -> bool:
        """Whether ``level``'s tiles are ``tile_px`` square JPEGs a browser decodes, as they
        are, to the pixels read here (see :meth:`jpeg_tile`)."""
        grid = self._grids.get(level)
        return grid is not None and grid.sends_jpeg and grid.tile_w == grid.tile_h == tile_px

    def jpeg_tile(self, level: int, tx: int, ty: int, tile_px: int) -> bytes | None:
        """The file's own JPEG for tile ``(tx, ty)`` of ``level``, when that level
        :meth:`sends_jpeg_tiles` and this tile lies wholly inside the level (edge tiles are
        padded in the file); None otherwise, or where its stream is not a whole JPEG:
        decode the tile then. Its compressed data is not decoded."""
        if not self.sends_jpeg_tiles(level, tile_px):
            return None
        grid = self._grids[level]
        if (tx + 1) * tile_px > grid.width or (ty + 1) * tile_px > grid.height:
            return None
        return grid.jpeg(tx, ty)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> Image.Image:
        """OpenSlide's ``read_region``: RGBA, transparent where there is no image. Raises
        ReadTooLarge past READ_PIXELS_MAX (so does ``get_thumbnail``, which reads a whole level)."""
        check_read(size)
        read = self._read_grid(location, level, size)
        if read is None or not read[1]:
            return super().read_region(location, level, size)
        return Image.fromarray(read[0]).convert("RGBA")

    def close(self) -> None:
        """Close the TIFF file and the OpenSlide handle."""
        self._grids.clear()
        self._close_tiff()
        super().close()

    def _close_tiff(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _read_grid(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> tuple[Rgb, bool] | None:
        if not self.reads_plain(location, level):
            return None  # no plain grid, or OpenSlide would interpolate between pixels
        downsample = self._downsamples[level]
        x, y = location[0] / downsample, location[1] / downsample  # whole: reads_plain
        try:
            return self._grids[level].read_rgb(int(x), int(y), *size)
        except TileUnreadable as error:  # OpenSlide reads it, or reports the error its way
            log.warning("%s: %s; reading with OpenSlide", self._tiff.filename, error)
            return None

    def _open_grids(self, filename: str | PathLike[str]) -> None:
        try:
            self._tiff = tifffile.TiffFile(filename)
            pages = [p for p in self._tiff.pages if _is_plain_grid(p)]
            self._fd = os.open(filename, os.O_RDONLY)
            for level, dimensions in enumerate(self.level_dimensions):
                same_size = (p for p in pages if (p.imagewidth, p.imagelength) == dimensions)
                page = next(same_size, None)
                if page is not None:
                    self._grids[level] = TileGrid(page, level, self._fd, self._cache)
        except (OSError, ValueError, tifffile.TiffFileError):
            log.debug("tifffile cannot read %s; reading with OpenSlide", filename)
            self._grids.clear()
        if 0 not in self._grids or not self._level0_agrees():
            self._grids.clear()
            self._close_tiff()
        for grid in self._grids.values():
            grid.sends_jpeg = grid.jpeg_agrees()

    def _level0_agrees(self) -> bool:
        grid = self._grids[0]
        tx, ty = grid.centre_tile()
        x, y = tx * grid.tile_w, ty * grid.tile_h
        size = (min(grid.tile_w, grid.width - x), min(grid.tile_h, grid.height - y))
        try:
            ours, _ = grid.read_rgb(x, y, *size)
        except TileUnreadable:
            log.debug("tifffile cannot decode %s; reading with OpenSlide", self._tiff.filename)
            return False
        theirs = np.asarray(super().read_region((x, y), 0, size))
        return bool(np.array_equal(ours, theirs[..., :3]) and theirs[..., 3].min() == 255)


def _whole_jpeg(data: bytes, width: int, height: int) -> bool:
    """Whether ``data`` is an 8-bit JPEG file of ``width`` x ``height`` px with three
    components that a browser shows as Pillow decodes it: SOI, marker segments up to the
    scan with a frame of that size, no EXIF (orientation) or ICC profile segment, EOI at
    the end. The entropy-coded data is not decoded."""
    if not (data.startswith(SOI) and data.endswith(EOI)):
        return False
    position, frame = 2, None
    while position + 4 <= len(data) and data[position] == 0xFF:
        marker = data[position + 1]
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == SOS:
            return frame == (8, height, width, 3)
        if marker in BROWSER_APPLIED:
            return False
        if marker == DHT and not _huffman_tables_fit(data[position + 4 : position + 2 + length]):
            return False
        if marker in FRAME_MARKERS and length >= 8 and position + 10 <= len(data):
            frame = struct.unpack(">BHHB", data[position + 4 : position + 10])
        position += 2 + length
    return False


def _huffman_tables_fit(segment: bytes) -> bool:
    """Whether a DHT segment holds whole Huffman tables (class and id, 16 code counts, at
    most 256 symbols) that fill it exactly: what a decoder checks before the scan."""
    position = 0
    while position < len(segment):
        kind, counts = segment[position], segment[position + 1 : position + 17]
        if kind >> 4 > 1 or kind & 0x0F > 3 or len(counts) < 16 or sum(counts) > 256:
            return False
        position += 17 + sum(counts)
    return position == len(segment)


def _is_plain_grid(page: tifffile.TiffPage) -> bool:
    return bool(
        page.is_tiled
        and page.tiledepth == 1
        and page.samplesperpixel == 3
        and page.bitspersample == 8
        and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
        and (page.compression, page.photometric) in DECODABLE
    )
