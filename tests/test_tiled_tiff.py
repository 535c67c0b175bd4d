"""Tiled TIFF levels read from decoded tiles give exactly OpenSlide's pixels, faster."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from cases.deepzoom import BoundedDeepZoomGenerator
from inference.engine.patches import PatchDataset, sharded_batches
from slides import Scale, open_slide, read_region, thumbnail
from slides.tiled_tiff import ABSENT, TileCache, _whole_jpeg

WIDTH, HEIGHT = 1100, 900  # not a multiple of the tile size: edge tiles are partial


def _pixels() -> np.ndarray:
    """Texture with fine detail (JPEG decoders that differ would show it) on a gradient."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    base = np.stack([xx * 255 // WIDTH, yy * 255 // HEIGHT, (xx + yy) % 256], axis=2)
    return (base * 0.7 + rng.integers(0, 76, (HEIGHT, WIDTH, 3))).astype(np.uint8)


def _write(path: Path, compression: str, photometric: str) -> Path:
    rgb = _pixels()
    with tifffile.TiffWriter(path) as tiff:
        for level in range(3):
            tiff.write(
                rgb,
                tile=(256, 256),
                compression=compression,
                photometric=photometric,
                subfiletype=0 if level == 0 else 1,
            )
            h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
            rgb = rgb[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).astype(np.uint8)
    return path


@pytest.fixture(
    scope="module",
    params=[("jpeg", "ycbcr"), ("jpeg", "rgb"), ("lzw", "rgb"), ("adobe_deflate", "rgb")],
    ids=lambda p: "-".join(p),
)
def tiled_tiff(request, tmp_path_factory) -> Path:
    compression, photometric = request.param
    return _write(tmp_path_factory.mktemp("tiled") / "slide.tiff", compression, photometric)


READS = [
    ((0, 0), 0, (256, 256)),  # one whole tile
    ((130, 250), 0, (320, 320)),  # across four tiles
    ((1000, 800), 0, (300, 300)),  # past the right and bottom edges
    ((-40, -20), 0, (100, 100)),  # before the slide
    ((2000, 2000), 0, (50, 50)),  # wholly outside
    ((512, 256), 1, (200, 150)),  # level 1 at whole level pixels
    ((513, 256), 1, (200, 150)),  # half a level-1 pixel: OpenSlide interpolates
    ((0, 0), 2, (275, 225)),  # a whole level
]


def test_regions_match_openslide(tiled_tiff: Path) -> None:
    with open_slide(tiled_tiff) as ours, openslide.OpenSlide(tiled_tiff) as theirs:
        assert sorted(ours._grids) == [0, 1, 2], "every level read from its tiles"
        for location, level, size in READS:
            mine = np.asarray(ours.read_region(location, level, size))
            reference = np.asarray(theirs.read_region(location, level, size))
            assert np.array_equal(mine, reference), (location, level, size)
        assert np.array_equal(np.asarray(thumbnail(ours, 300)), np.asarray(thumbnail(theirs, 300)))


def test_rgb_reads_are_white_where_there_is_no_image(tiled_tiff: Path) -> None:
    with open_slide(tiled_tiff) as slide:
        region = slide.read_rgb((1000, 800), 0, (300, 300))
        inside = np.asarray(slide.read_region((1000, 800), 0, (100, 100)))[..., :3]
        assert slide.read_rgb((513, 256), 1, (10, 10)) is None  # left to OpenSlide
    assert np.array_equal(region[:100, :100], inside)
    assert (region[100:] == 255).all() and (region[:, 100:] == 255).all()


def test_resampled_reads_match_openslide(tiled_tiff: Path) -> None:
    scale = Scale(0.5, 0.5)  # a 20x slide read at 40x: upsampled from level 0
    with open_slide(tiled_tiff) as ours, openslide.OpenSlide(tiled_tiff) as theirs:
        for origin in [(0, 0), (333, 517), (1000, 850)]:
            mine = np.asarray(read_region(ours, origin, (160, 160), scale))
            assert np.array_equal(mine, np.asarray(read_region(theirs, origin, (160, 160), scale)))


def test_every_deep_zoom_tile_matches_openslides_generator(tiled_tiff: Path) -> None:
    # tiles come from the decoded RGB pixels, not OpenSlide's RGBA composited on white
    with open_slide(tiled_tiff) as ours, openslide.OpenSlide(tiled_tiff) as theirs:
        mine = BoundedDeepZoomGenerator(ours, 254, 1, limit_bounds=False)
        reference = DeepZoomGenerator(theirs, 254, 1, limit_bounds=False)
        assert mine._read_rgb is not None and not mine._chunked
        for level in range(mine.level_count):
            cols, rows = mine.level_tiles[level]
            for address in ((c, r) for c in range(cols) for r in range(rows)):
                tile = mine.get_tile(level, address)
                assert tile.mode == "RGB"
                expected = np.asarray(reference.get_tile(level, address))
                assert np.array_equal(np.asarray(tile), expected), (level, address)


def test_patch_dataset_reads_the_same_pixels(tiled_tiff: Path) -> None:
    origins = np.array([[0, 0], [700, 500], [900, 700]])
    dataset = PatchDataset(tiled_tiff, origins, 320, Scale(1.0, 1.0))
    with openslide.OpenSlide(tiled_tiff) as reference:
        for i, (x, y) in enumerate(origins):
            expected = np.asarray(read_region(reference, (x, y), (320, 320), Scale(1.0, 1.0)))
            assert np.array_equal(dataset[i][0].numpy(), expected)
    dataset.close()


def test_other_tiles_are_left_to_openslide(tmp_path: Path) -> None:
    path = _write(tmp_path / "packbits.tiff", "packbits", "rgb")  # a codec not on our list
    with open_slide(path) as slide, openslide.OpenSlide(path) as reference:
        assert slide._grids == {}
        assert slide.read_rgb((0, 0), 0, (10, 10)) is None
        assert np.array_equal(
            np.asarray(slide.read_region((5, 5), 0, (64, 64))),
            np.asarray(reference.read_region((5, 5), 0, (64, 64))),
        )


def test_a_corrupt_tile_fails_as_openslide_fails(tmp_path: Path) -> None:
    path = _write(tmp_path / "corrupt.tiff", "jpeg", "ycbcr")
    with tifffile.TiffFile(path) as tiff:
        offset = tiff.pages[0].dataoffsets[0]  # the first tile (the centre one is checked)
    with path.open("r+b") as file:
        file.seek(offset)
        file.write(b"\0" * 64)
    with open_slide(path) as slide:
        assert slide.read_rgb((0, 0), 0, (10, 10)) is None  # left to OpenSlide
    with open_slide(path) as slide, pytest.raises(openslide.OpenSlideError):
        slide.read_region((0, 0), 0, (10, 10))


@pytest.mark.parametrize(("length", "batch", "shares"), [(10, 3, 2), (100, 16, 2), (5, 4, 3)])
def test_sharded_batches_give_each_worker_one_contiguous_share(
    length: int, batch: int, shares: int
) -> None:
    batches = sharded_batches(length, batch, shares)
    assert sorted(i for b in batches for i in b) == list(range(length))
    for worker in range(shares):
        indices = [i for b in batches[worker::shares] for i in b]
        assert indices == list(range(indices[0], indices[-1] + 1))


def test_reads_from_many_threads_match_one_thread(tiled_tiff: Path) -> None:
    origins = [(x, y) for x in range(0, 1000, 90) for y in (0, 400)]
    reads = [(origin, level, (200, 200)) for origin in origins for level in (0, 1)]
    with openslide.OpenSlide(tiled_tiff) as reference:
        expected = [np.asarray(reference.read_region(*read)) for read in reads]
    with open_slide(tiled_tiff) as slide, ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda read: np.asarray(slide.read_region(*read)), reads * 3))
    assert all(np.array_equal(g, e) for g, e in zip(got, expected * 3, strict=True))


def test_tile_cache_keeps_to_its_budget() -> None:
    cache = TileCache(max_bytes=3 * 100)
    for i in range(5):
        cache.put((0, i, 0), np.zeros(100, np.uint8))
    assert cache.get((0, 0, 0)) is ABSENT and cache.get((0, 1, 0)) is ABSENT
    assert all(cache.get((0, i, 0)) is not ABSENT for i in (2, 3, 4))


def test_tiles_sent_as_stored_are_the_files_jpegs_with_openslides_pixels(
    tiled_tiff: Path,
) -> None:
    """With 256 px tiles and no overlap, inner tiles of the slide's own levels are the
    file's JPEG streams (decoding to OpenSlide's pixels); edge tiles, levels in between
    and tiles that are not JPEG streams a browser reads as they are, are rendered."""
    with open_slide(tiled_tiff) as ours, openslide.OpenSlide(tiled_tiff) as theirs:
        mine = BoundedDeepZoomGenerator(ours, 256, 0, limit_bounds=False)
        reference = DeepZoomGenerator(theirs, 256, 0, limit_bounds=False)
        photometric = tifffile.TiffFile(tiled_tiff).pages[0].photometric
        sent = set()
        for level in range(mine.level_count):
            cols, rows = mine.level_tiles[level]
            for address in ((c, r) for c in range(cols) for r in range(rows)):
                data = mine.file_jpeg(level, address)
                if data is None:
                    continue
                sent.add((level, *address))
                with Image.open(BytesIO(data)) as image:
                    decoded = np.asarray(image.convert("RGB"))
                expected = np.asarray(reference.get_tile(level, address))
                assert np.array_equal(decoded, expected), (level, address)
    top = mine.level_count - 1
    if photometric == tifffile.PHOTOMETRIC.YCBCR:  # the inner tiles of levels 0 and 1
        inner = {(top, c, r) for c in range(4) for r in range(3)}
        assert sent == inner | {(top - 1, 0, 0), (top - 1, 1, 0)}
    else:
        assert not sent


def test_a_damaged_jpeg_stream_is_not_sent_as_it_is() -> None:
    whole = BytesIO()
    Image.new("RGB", (256, 256), "pink").save(whole, "jpeg")
    data = whole.getvalue()
    assert _whole_jpeg(data, 256, 256)
    assert not _whole_jpeg(data, 254, 256)  # another size
    assert not _whole_jpeg(data[: len(data) // 2], 256, 256)  # truncated
    assert not _whole_jpeg(b"\0" * 100 + data[100:], 256, 256)
    broken = bytearray(data)
    broken[4:6] = b"\xff\xff"  # a segment length pointing past the header
    assert not _whole_jpeg(bytes(broken), 256, 256)
    bogus = bytearray(data)
    counts = data.index(b"\xff\xc4") + 5
    bogus[counts : counts + 16] = b"\xff" * 16  # libjpeg: "Bogus Huffman table definition"
    assert not _whole_jpeg(bytes(bogus), 256, 256)
    with_exif = BytesIO()  # a browser would turn it as its orientation says
    Image.new("RGB", (256, 256), "pink").save(with_exif, "jpeg", exif=Image.Exif())
    assert not _whole_jpeg(with_exif.getvalue(), 256, 256)


def _abbreviated_jpeg(tile: np.ndarray) -> tuple[bytes, bytes]:
    """(tables, stream): a JPEG of ``tile`` split as libtiff and Aperio store tiles, the
    quantisation and Huffman tables once in the page's JPEGTables, each tile without them."""
    buffer = BytesIO()
    Image.fromarray(tile).save(buffer, "jpeg", quality=90)
    data, position, segments = buffer.getvalue(), 2, []
    while data[position + 1] != 0xDA:  # up to the scan
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        segments.append((data[position + 1], data[position : position + 2 + length]))
        position += 2 + length
    tables = b"".join(segment for marker, segment in segments if marker in (0xDB, 0xC4))
    header = b"".join(segment for marker, segment in segments if marker not in (0xDB, 0xC4, 0xE0))
    return b"\xff\xd8" + tables + b"\xff\xd9", b"\xff\xd8" + header + data[position:]


def test_tiles_whose_tables_the_page_shares_are_sent_with_them_put_in(tmp_path: Path) -> None:
    rgb = _pixels()
    padded = np.zeros((1024, 1280, 3), np.uint8)
    padded[:HEIGHT, :WIDTH] = rgb
    split = [
        _abbreviated_jpeg(padded[y : y + 256, x : x + 256])
        for y in range(0, 1024, 256)
        for x in range(0, 1280, 256)
    ]
    tables = split[0][0]
    assert all(t == tables for t, _ in split)  # same quality: the same tables
    path = tmp_path / "shared-tables.tiff"
    with tifffile.TiffWriter(path) as tiff:  # the streams as they are, tables in tag 347
        tiff.write(
            iter(stream for _, stream in split),
            shape=rgb.shape,
            dtype=np.uint8,
            tile=(256, 256),
            compression="jpeg",
            photometric="ycbcr",
            subsampling=(2, 2),
            extratags=[(347, 7, len(tables), tables, True)],
        )
    with open_slide(path) as ours, openslide.OpenSlide(path) as theirs:
        data = ours.jpeg_tile(0, 2, 1, 256)
        assert data is not None and data.count(b"\xff\xc4") == split[0][0].count(b"\xff\xc4")
        with Image.open(BytesIO(data)) as image:
            sent = np.asarray(image.convert("RGB"))
        expected = np.asarray(theirs.read_region((512, 256), 0, (256, 256)))[..., :3]
    assert np.array_equal(sent, expected)


def test_a_level_deep_zoom_would_resample_is_rendered(tmp_path: Path) -> None:
    """Odd sizes rounded up: level 1 is Deep Zoom's size, but not exactly half of level 0,
    so OpenSlide's generator resamples it and none of its tiles is sent as stored."""
    rgb = np.ascontiguousarray(np.pad(_pixels(), ((0, 1), (0, 1), (0, 0)), mode="edge"))
    path = tmp_path / "odd.tiff"
    with tifffile.TiffWriter(path) as tiff:
        for level, image in enumerate((rgb, rgb[::2, ::2])):  # 1101 x 901, then 551 x 451
            tiff.write(image, tile=(256, 256), compression="jpeg", subfiletype=int(level > 0))
    with open_slide(path) as ours:
        mine = BoundedDeepZoomGenerator(ours, 256, 0, limit_bounds=False)
        top = mine.level_count - 1
        assert ours.level_dimensions[1] == mine.level_dimensions[top - 1] == (551, 451)
        assert ours.sends_jpeg_tiles(1, 256) and mine.file_jpeg(top - 1, (0, 0)) is None
        assert mine.file_jpeg(top, (0, 0)) is not None  # level 0 is read 1:1
