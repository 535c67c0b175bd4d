"""Deep Zoom tiles from OpenSlide: open slides in a bounded LRU, rendered tiles on disk.

Open slides come from slides.cache.SlideHandles, whose one memory budget for decoded
source tiles holds however many slides are open. Plain tiled TIFF slides (generic TIFF,
Aperio SVS) have their source tiles decoded by tifffile instead of composited by
OpenSlide (same pixels, a fraction of the CPU: see slides/tiled_tiff.py).
Rendered JPEG tiles are kept as files under TILE_CACHE_DIR, keyed by the slide's
sha256 and the tile settings, so every web process (and a pre-rendering worker)
shares them and they outlive restarts; the operating system's page cache keeps
the busy ones in memory.
"""

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import openslide
from django.conf import settings
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from slides import ReadTooLarge, SlideHandles, TiledTiffSlide
from slides.io import CHUNK_PX, downscaled_region

log = logging.getLogger(__name__)

# A tile that is not rendered yet is rendered with the other tiles of its block (a viewer
# asks for its neighbours next): one read of their shared source region, at most
# BLOCK_SOURCE_PX a side, for up to BLOCK_TILES x BLOCK_TILES tiles.
BLOCK_TILES = 4
BLOCK_SOURCE_PX = 1024


class BoundedDeepZoomGenerator(DeepZoomGenerator):
    """OpenSlide's DeepZoomGenerator, except that the tiles of Deep Zoom levels zoomed out
    past the slide's levels, whose source regions are larger than a chunk, are read in
    chunks (same pixels: slides.io.downscaled_region), and that tiles of plain tiled TIFF
    slides come straight from their decoded RGB pixels (same pixels, without OpenSlide's
    RGBA region composited onto the background).

    Where a Deep Zoom level is one of the slide's own levels and its tiles are the slide
    file's (same size, no overlap, JPEG a browser decodes as it is), :meth:`file_jpeg`
    hands over the file's JPEG itself: nothing decoded or encoded again, and the pixels
    the scanner wrote, not a second lossy copy."""

    def __init__(self, osr: openslide.AbstractSlide, *args, **kwargs) -> None:
        super().__init__(osr, *args, **kwargs)
        # Decided once per level, so serving a tile costs a set lookup.
        self._chunked = {
            level for level in range(self.level_count) if self._largest_read(level) > CHUNK_PX**2
        }
        self._read_rgb = osr.read_rgb if _reads_plain_rgb(osr) else None
        self._file_levels = self._levels_sent_as_stored()
        self._block_sides = [self._block_side(level) for level in range(self.level_count)]

    def get_tile(self, level: int, address: tuple[int, int]) -> Image.Image:
        """The RGB tile at ``address`` (col, row) of Deep Zoom ``level``."""
        if level in self._chunked:
            (location, slide_level, size), tile_size = self._get_tile_info(level, address)
            return downscaled_region(self._osr, location, slide_level, size, tile_size)
        tiles = self.get_tiles(level, [address])
        return tiles[address] if tiles else super().get_tile(level, address)

    def file_jpeg(self, level: int, address: tuple[int, int]) -> bytes | None:
        """The slide file's own JPEG for the tile at ``address`` of ``level``, where the
        level's tiles are the file's; None where it must be rendered (another level, an
        edge tile, a stream found damaged)."""
        slide_level = self._file_levels.get(level)
        if slide_level is None:
            return None
        return self._osr.jpeg_tile(slide_level, *address, self._z_t_downsample)

    def _levels_sent_as_stored(self) -> dict[int, int]:
        """Deep Zoom level -> the slide level it is read 1:1 from (same size, no offset, no
        resampling), where that level's tiles can be sent as stored."""
        if self._read_rgb is None or self._z_overlap or any(self._l0_offset):
            return {}
        sizes = self._osr.level_dimensions
        return {
            level: slide_level
            for level, slide_level in enumerate(self._slide_from_dz_level)
            if sizes[slide_level] == self.level_dimensions[level]
            and self._l_z_downsamples[level] == 1.0
            and self._osr.sends_jpeg_tiles(slide_level, self._z_t_downsample)
        }

    def block(self, level: int, address: tuple[int, int]) -> list[tuple[int, int]]:
        """The addresses of the aligned block of tiles of ``level`` that ``address`` is
        rendered with (itself alone where its source cannot be read as one region)."""
        side = self._block_sides[level]
        cols, rows = self.level_tiles[level]
        col0, row0 = address[0] // side * side, address[1] // side * side
        return [
            (col, row)
            for row in range(row0, min(row0 + side, rows))
            for col in range(col0, min(col0 + side, cols))
        ]

    def get_tiles(
        self, level: int, addresses: list[tuple[int, int]]
    ) -> dict[tuple[int, int], Image.Image] | None:
        """The RGB tiles at ``addresses`` of ``level``, cut from one read of the source
        region they share (each source tile decoded once, the same pixels as one by one);
        None when that region cannot be read as plain RGB (read them one by one)."""
        if self._read_rgb is None or level in self._chunked:
            return None
        infos = {address: self._get_tile_info(level, address) for address in addresses}
        slide_level = next(iter(infos.values()))[0][1]
        downsample = self._osr.level_downsamples[slide_level]
        boxes = {}
        for address, ((location, _, (width, height)), _) in infos.items():
            x, y = location[0] / downsample, location[1] / downsample
            if not (x.is_integer() and y.is_integer()):
                return None
            boxes[address] = (int(x), int(y), width, height)
        left = min(x for x, _, _, _ in boxes.values())
        top = min(y for _, y, _, _ in boxes.values())
        right = max(x + w for x, _, w, _ in boxes.values())
        bottom = max(y + h for _, y, _, h in boxes.values())
        origin = (round(left * downsample), round(top * downsample))
        region = self._read_rgb(origin, slide_level, (right - left, bottom - top))
        if region is None:
            return None
        tiles = {}
        for address, (x, y, width, height) in boxes.items():
            tile = Image.fromarray(region[y - top : y - top + height, x - left : x - left + width])
            tile_size = infos[address][1]
            if tile.size != tile_size:
                tile.thumbnail(tile_size, Image.Resampling.LANCZOS)
            tiles[address] = tile
        return tiles

    def _block_side(self, level: int) -> int:
        """Tiles a side of ``level``'s blocks: up to BLOCK_TILES, while a block's source
        region stays within BLOCK_SOURCE_PX a side."""
        if self._read_rgb is None or level in self._chunked or level in self._file_levels:
            return 1  # a level sent as stored renders only its edge tiles
        location, slide_level, size = self._get_tile_info(level, self._inner_tile(level))[0]
        if not self._osr.reads_plain(location, slide_level):
            return 1  # OpenSlide reads it: one tile at a time, in parallel
        return max(1, min(BLOCK_TILES, BLOCK_SOURCE_PX // max(size)))

    def _largest_read(self, level: int) -> int:
        """Pixels of the largest source region a tile of ``level`` reads: the first tile's
        or an inner one's (overlap on every side)."""
        addresses = ((0, 0), self._inner_tile(level))
        sizes = [self._get_tile_info(level, address)[0][2] for address in addresses]
        return max(width * height for width, height in sizes)

    def _inner_tile(self, level: int) -> tuple[int, int]:
        """A tile of ``level`` with overlap on every side, where the level has one."""
        cols, rows = self.level_tiles[level]
        return min(1, cols - 1), min(1, rows - 1)


def _reads_plain_rgb(osr: openslide.AbstractSlide) -> bool:
    """Whether the slide can hand over RGB regions that equal OpenSlide's composited onto
    the Deep Zoom background: a TiledTiffSlide (white where there is no image) on a white
    background, without a colour profile to attach."""
    background = osr.properties.get(openslide.PROPERTY_NAME_BACKGROUND_COLOR, "ffffff")
    return (
        isinstance(osr, TiledTiffSlide)
        and background.lower() == "ffffff"
        and getattr(osr, "color_profile", None) is None
    )


class TileUndecodable(Exception):
    """The slide file's data for this tile cannot be decoded: the file is damaged."""


@dataclass(frozen=True)
class OpenedSlide:
    slide: openslide.OpenSlide
    deepzoom: DeepZoomGenerator


def _with_deepzoom(slide: TiledTiffSlide) -> OpenedSlide:
    """The slide with its Deep Zoom generator, for the open-slide cache to keep."""
    deepzoom = BoundedDeepZoomGenerator(
        slide,
        tile_size=settings.DEEPZOOM_TILE_SIZE,
        overlap=settings.DEEPZOOM_OVERLAP,
        limit_bounds=False,
    )
    return OpenedSlide(slide, deepzoom)


@dataclass(frozen=True)
class TileSource:
    """What serving a slide's tiles needs: its file and the content hash that keys them."""

    path: Path
    sha256: str


class TileGrants:
    """Which slides a session was allowed to see, remembered for a few seconds.

    A viewer asks for dozens of tiles a second; checking session, user and case
    assignment in the database for each costs more than serving a cached tile. A
    grant is re-checked after ``ttl`` seconds, so a revoked assignment or a session
    ended in another process stops getting tiles within that time.
    """

    def __init__(self, ttl: float, max_entries: int = 10_000):
        self.ttl = ttl
        self.max_entries = max_entries
        self._grants: dict[tuple[str, int], tuple[float, TileSource]] = {}
        # Sessions signed out here, kept for a ttl so a tile request that checked the
        # session just before the sign-out cannot store a grant just after it.
        self._ended: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, session_key: str | None, slide_id: int) -> TileSource | None:
        if not session_key:
            return None
        entry = self._grants.get((session_key, slide_id))
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, session_key: str, slide_id: int, source: TileSource) -> None:
        now = time.monotonic()
        with self._lock:
            if self._ended.get(session_key, 0.0) >= now:
                return
            if len(self._grants) >= self.max_entries:
                self._grants = {k: v for k, v in self._grants.items() if v[0] >= now}
                if len(self._grants) >= self.max_entries:
                    self._grants.clear()
            self._grants[(session_key, slide_id)] = (now + self.ttl, source)

    def forget_session(self, session_key: str | None) -> None:
        if not session_key:
            return
        now = time.monotonic()
        with self._lock:
            self._grants = {k: v for k, v in self._grants.items() if k[0] != session_key}
            self._ended = {k: until for k, until in self._ended.items() if until >= now}
            self._ended[session_key] = now + self.ttl


class DamageLog:
    """Tiles found undecodable while serving, per slide file (sha256), in this process;
    ``add`` answers the slide's new count only when it grows, so a viewer retrying a bad
    tile does not write to the database on every request."""

    def __init__(self) -> None:
        self._bad: dict[str, set[tuple[int, int, int]]] = {}
        self._lock = threading.Lock()

    def add(self, sha256: str, level: int, col: int, row: int) -> int | None:
        with self._lock:
            bad = self._bad.setdefault(sha256, set())
            if (level, col, row) in bad:
                return None
            bad.add((level, col, row))
            return len(bad)


class AskedBefore:
    """The tiles this process has sent lately (up to ``max_entries``): ``again`` answers
    whether a tile was asked for before, and notes it."""

    def __init__(self, max_entries: int = 20_000) -> None:
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, int, int, int], None] = OrderedDict()
        self._lock = threading.Lock()

    def again(self, key: tuple[str, int, int, int]) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return True
            self._seen[key] = None
            if len(self._seen) > self.max_entries:
                self._seen.popitem(last=False)
            return False


handles = SlideHandles(settings.SLIDE_CACHE_SLIDES, settings.SLIDE_CACHE_BYTES, _with_deepzoom)
tile_grants = TileGrants(settings.TILE_GRANT_SECONDS)
damage_log = DamageLog()
asked_before = AskedBefore()


def encode_jpeg(image) -> bytes:
    """JPEG at the configured quality, as OpenSlide's example server writes tiles."""
    buffer = BytesIO()
    image.save(buffer, "jpeg", quality=settings.DEEPZOOM_JPEG_QUALITY)
    return buffer.getvalue()


def tile_etag(sha256: str, level: int, col: int, row: int) -> str:
    """A strong ETag: the slide's content hash fixes every tile's pixels."""
    params = f"{sha256}:{tile_settings_key()}:{level}:{col}:{row}"
    return '"' + hashlib.blake2b(params.encode(), digest_size=12).hexdigest() + '"'


def tile_settings_key() -> str:
    """The rendering settings a cached tile depends on (besides the slide's content)."""
    return (
        f"{settings.DEEPZOOM_TILE_SIZE}-{settings.DEEPZOOM_OVERLAP}-"
        f"q{settings.DEEPZOOM_JPEG_QUALITY}"
    )


CACHE_FOLDER_NAME = re.compile(r"[0-9a-f]{64}-\d+-\d+-q\d+")


def slide_cache_dir(sha256: str) -> Path:
    return Path(settings.TILE_CACHE_DIR) / f"{sha256}-{tile_settings_key()}"


def tile_file(sha256: str, level: int, col: int, row: int) -> Path:
    return slide_cache_dir(sha256) / str(level) / f"{col}_{row}.jpeg"


class TileCacheUnwritable(OSError):
    """Rendered tiles cannot be stored under TILE_CACHE_DIR."""


_unwritable_cache_reported = threading.Event()


def _store(file: Path, data: bytes) -> None:
    """Write atomically: readers in other processes (or machines sharing the volume) see
    the whole tile or none. Raises TileCacheUnwritable."""
    temporary = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=file.parent, prefix=f".{file.name}.")
        os.fchmod(handle, 0o644)  # mkstemp's 0600 would hide it from other users' processes
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temporary, file)
    except OSError as error:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise TileCacheUnwritable(f"Tiles cannot be cached at {file}: {error}") from error


def _tile_jpeg(path: Path, opened: OpenedSlide, level: int, col: int, row: int) -> bytes:
    """Render one tile of ``opened`` (the open handle of ``path``). Raises TileUndecodable
    when the file's data for it cannot be decoded (ReadTooLarge propagates as it is)."""
    return encode_jpeg(_tile_image(path, opened, level, col, row))


def _tile_image(path: Path, opened: OpenedSlide, level: int, col: int, row: int) -> Image.Image:
    """One tile's pixels; raises as :func:`_tile_jpeg`."""
    try:
        return opened.deepzoom.get_tile(level, (col, row))
    except ReadTooLarge:
        raise
    except openslide.OpenSlideError as error:
        # OpenSlide fails every later read of a handle once one has failed: reopen.
        handles.forget(path, opened)
        raise TileUndecodable(f"tile {col}_{row} of level {level}: {error}") from error


def _store_rendered(file: Path, data: bytes) -> bool:
    """Keep a rendered tile; whether it was kept. A cache that cannot be written is
    reported once per process (viewers still get their tiles)."""
    try:
        _store(file, data)
    except TileCacheUnwritable as error:
        if not _unwritable_cache_reported.is_set():
            _unwritable_cache_reported.set()
            log.warning("%s", error)
        return False
    return True


# Renders of one block wait for each other (striped: a bounded number of locks), so the
# tiles of a block being rendered are not rendered again by the next requests for them.
_block_locks = [threading.Lock() for _ in range(64)]


def render_tile(source: TileSource, level: int, col: int, row: int) -> bytes | None:
    """Render one Deep Zoom tile, with the tiles of its block not rendered yet, into the
    tile cache and return its JPEG bytes (the tile view sends a tile already there as a
    file, without calling this); None when the address is out of range. Raises
    TileUndecodable for a tile the file's data cannot give."""
    opened = handles.get(source.path)
    deepzoom = opened.deepzoom
    if not (0 <= level < deepzoom.level_count):
        return None
    cols, rows = deepzoom.level_tiles[level]
    if not (0 <= col < cols and 0 <= row < rows):
        return None
    data = deepzoom.file_jpeg(level, (col, row))
    if data is not None:
        # Reading it again costs less than writing a file, so it is kept (for the front
        # server to send) only once asked for twice: a tile others are viewing too. Decoded
        # first, so the cache never holds a tile whose data is damaged.
        if asked_before.again((source.sha256, level, col, row)):
            _tile_image(source.path, opened, level, col, row)
            _store_rendered(tile_file(source.sha256, level, col, row), data)
        return data
    block = deepzoom.block(level, (col, row))
    lock = _block_locks[hash((source.sha256, level, block[0])) % len(_block_locks)]
    with lock:
        with contextlib.suppress(OSError):  # rendered with its block meanwhile
            return tile_file(source.sha256, level, col, row).read_bytes()
        rendered = _render_block(opened, source, level, block, wanted=(col, row))
        if (col, row) in rendered:
            return rendered[(col, row)]
        data = _tile_jpeg(source.path, opened, level, col, row)
        _store_rendered(tile_file(source.sha256, level, col, row), data)
        return data


def _render_block(
    opened: OpenedSlide,
    source: TileSource,
    level: int,
    block: list[tuple[int, int]],
    wanted: tuple[int, int] | None = None,
    store: Callable[[Path, bytes], bool | None] = _store_rendered,
) -> dict[tuple[int, int], bytes]:
    """Render the tiles of ``block`` not cached yet (``wanted`` first, whether cached or
    not) from one read of their source and ``store`` them; their JPEG bytes, or nothing
    when the block's source cannot be read as one region (render tiles one by one then).
    When the cache does not keep ``wanted``, the others are not encoded for nothing."""
    missing = [
        address
        for address in block
        if address == wanted or not os.path.isfile(tile_file(source.sha256, level, *address))
    ]
    tiles = opened.deepzoom.get_tiles(level, missing) if len(missing) > 1 else None
    if tiles is None:
        return {}
    rendered = {}
    for address in sorted(tiles, key=lambda address: address != wanted):
        rendered[address] = data = encode_jpeg(tiles[address])
        if store(tile_file(source.sha256, level, *address), data) is False:
            break
    return rendered


def pyramid_addresses(deepzoom: DeepZoomGenerator, skip_top: int = 0) -> list[tuple[int, int, int]]:
    """Every tile address, coarsest level first (the viewer opens there), leaving out the
    ``skip_top`` highest-resolution levels."""
    return [
        (level, col, row)
        for level in range(deepzoom.level_count - skip_top)
        for row in range(deepzoom.level_tiles[level][1])
        for col in range(deepzoom.level_tiles[level][0])
    ]


@dataclass(frozen=True)
class Prerendered:
    rendered: int  # tiles rendered and stored
    undecodable: int  # tiles the file's data cannot give (never cached: counted each pass)


def prerender(
    source: TileSource,
    skip_top: int = 0,
    progress: Callable[[Iterable], Iterable] = iter,
) -> Prerendered:
    """Render the slide's tiles that are not cached yet, a block at a time, counting those
    that cannot be decoded. Raises TileCacheUnwritable at the first tile it cannot store."""
    opened = handles.get(source.path)
    rendered = undecodable = 0
    for level, col, row in progress(pyramid_addresses(opened.deepzoom, skip_top)):
        file = tile_file(source.sha256, level, col, row)
        if file.exists():
            continue
        block = opened.deepzoom.block(level, (col, row))
        if (col, row) == block[0]:  # a block's first tile renders the block
            done = _render_block(opened, source, level, block, store=_store)
            if done:
                rendered += len(done)
                continue
        try:
            data = _checked_tile(source.path, handles.get(source.path), level, col, row)
        except TileUndecodable as error:
            log.warning("%s: %s", source.sha256[:12], error)
            undecodable += 1
            continue
        _store(file, data)
        rendered += 1
    mark_viewed(source.sha256)
    return Prerendered(rendered, undecodable)


def _checked_tile(path: Path, opened: OpenedSlide, level: int, col: int, row: int) -> bytes:
    """A tile's JPEG as pre-rendering stores it: the slide file's own where it sends that
    (decoded once all the same, so damage in its data marks the slide), else rendered.
    Raises as :func:`_tile_jpeg`."""
    image = _tile_image(path, opened, level, col, row)
    return opened.deepzoom.file_jpeg(level, (col, row)) or encode_jpeg(image)


def mark_viewed(sha256: str) -> None:
    """Note that a slide's tiles are in use, so pruning keeps them longest."""
    with contextlib.suppress(OSError):  # nothing cached yet, or no usable cache
        os.utime(slide_cache_dir(sha256))


def prune(registered_sha256s: set[str], max_bytes: int) -> list[Path]:
    """Delete cached tiles of slides no longer registered (or rendered with other
    settings), then of the least recently viewed slides until the cache fits
    ``max_bytes``. Returns the slide folders it removed."""
    root = Path(settings.TILE_CACHE_DIR)
    if not root.is_dir():
        return []
    current = {slide_cache_dir(sha).name for sha in registered_sha256s}
    # Only folders named like ours: a cache directory set to a shared path loses nothing else.
    folders = [
        folder
        for folder in root.iterdir()
        if folder.is_dir() and CACHE_FOLDER_NAME.fullmatch(folder.name)
    ]
    doomed = [folder for folder in folders if folder.name not in current]
    kept = sorted((folder for folder in folders if folder.name in current), key=_last_viewed)
    sizes = {folder: _folder_bytes(folder) for folder in kept}
    total = sum(sizes.values())
    while kept and total > max_bytes:
        oldest = kept.pop(0)
        total -= sizes[oldest]
        doomed.append(oldest)
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return doomed


# Another prune (a second worker, the command) may delete folders while this one scans.


def _last_viewed(folder: Path) -> float:
    try:
        return folder.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _folder_bytes(folder: Path) -> int:
    total = 0
    for directory, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(directory, name)).st_size
    return total


def dzi_xml(path: Path) -> str:
    return handles.get(path).deepzoom.get_dzi("jpeg")
