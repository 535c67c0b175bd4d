"""Hostile and damaged slides: a slide whose reads cannot be bounded in memory is refused
at registration and every read has a bound; undecodable tiles mark a slide damaged;
messages name the user's file, never a server path."""

import shutil
import struct
import subprocess
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from openslide.deepzoom import DeepZoomGenerator

from cases import deepzoom
from cases.models import Slide
from cases.registration import register_slide
from inference import services
from inference.models import InferenceRun
from slides import ReadTooLarge, Scale, open_slide, read_region, thumbnail
from slides.validate import read_bounds_problem
from tests.conftest import run_worker_burst, subprocess_env
from tests.test_tiles import expected_tile, tile_span
from tests.test_tiles import generator as portal_generator

GIB = 1024**3


def write_forged_tiff(path: Path, side: int = 200_000, tile: int = 1024) -> None:
    """A classic little-endian TIFF, written field by field, that declares ``side`` x
    ``side`` RGB px in ``tile`` px deflate tiles without any pyramid, and holds a single
    real tile: every TileOffsets / TileByteCounts entry points at it. With the defaults
    the file is 310 KB (the tables are most of it) and OpenSlide opens it as a
    200,000 x 200,000 px generic TIFF."""
    data = zlib.compress(np.full((tile, tile, 3), 230, np.uint8).tobytes(), 9)
    tiles = (-(-side // tile)) ** 2
    entries = 11
    bits_at = 8 + 2 + 12 * entries + 4  # after the header and the IFD
    data_at = bits_at + 6
    offsets_at = data_at + len(data)
    counts_at = offsets_at + 4 * tiles
    short, long_ = 3, 4
    fields = [  # (tag, type, count, value or offset), in tag order as TIFF requires
        (256, long_, 1, side),  # ImageWidth
        (257, long_, 1, side),  # ImageLength
        (258, short, 3, bits_at),  # BitsPerSample: 8, 8, 8
        (259, short, 1, 8),  # Compression: deflate
        (262, short, 1, 2),  # PhotometricInterpretation: RGB
        (277, short, 1, 3),  # SamplesPerPixel
        (284, short, 1, 1),  # PlanarConfiguration: contiguous
        (322, short, 1, tile),  # TileWidth
        (323, short, 1, tile),  # TileLength
        (324, long_, tiles, offsets_at),  # TileOffsets
        (325, long_, tiles, counts_at),  # TileByteCounts
    ]
    out = bytearray(b"II*\0" + struct.pack("<IH", 8, entries))
    for tag, kind, count, value in fields:
        inline = struct.pack("<HH", value, 0) if kind == short and count == 1 else None
        out += struct.pack("<HHI", tag, kind, count) + (inline or struct.pack("<I", value))
    out += struct.pack("<I", 0)  # no next IFD
    out += struct.pack("<3H", 8, 8, 8) + data
    out += np.full(tiles, data_at, "<u4").tobytes() + np.full(tiles, len(data), "<u4").tobytes()
    path.write_bytes(bytes(out))


@pytest.fixture
def forged(import_dir) -> Path:
    path = import_dir / "forged-200k.tiff"
    write_forged_tiff(path)
    return path


def write_svs_with_label(path: Path, label_size: tuple[int, int]) -> None:
    """A small Aperio SVS (one tiled 1024 px level, a thumbnail) whose label image declares
    ``label_size`` (width, height) px: blank and LZW-compressed, so a label far too large to
    decode costs a few hundred KB on disk. NewSubfileType 1 marks it as the label."""
    aperio = "Aperio Image Library v10.0.50"
    level = f"{aperio}\r\n1024x1024 [0,0 1024x1024] (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.25"
    width, height = label_size
    with tifffile.TiffWriter(path) as tif:
        rgb = {"photometric": "rgb", "metadata": None}
        tif.write(
            np.full((1024, 1024, 3), 220, np.uint8),
            tile=(256, 256),
            compression="jpeg",
            description=level,
            **rgb,
        )
        tif.write(
            np.full((256, 256, 3), 220, np.uint8),
            compression="jpeg",
            description=f"{aperio}\r\n1024x1024 -> 256x256 - |MPP = 0.25",
            **rgb,
        )
        tif.write(
            np.full((height, width, 3), 255, np.uint8),
            compression="lzw",
            rowsperstrip=64,
            subfiletype=1,
            description=f"{aperio}\nlabel {width}x{height}",
            **rgb,
        )


@pytest.mark.django_db
def test_a_label_image_too_large_to_decode_answers_503_not_memory(
    import_dir, case, client_for, pathologist
):
    """OpenSlide decodes an associated image whole: a label declaring 48 Mpx is refused
    before it is read, with the reason; an ordinary label is served."""
    for name, size in (("big-label.svs", (8000, 6000)), ("label.svs", (400, 300))):
        write_svs_with_label(import_dir / name, size)
    big = register_slide(import_dir / "big-label.svs", case, "big-label.svs")
    small = register_slide(import_dir / "label.svs", case, "label.svs")
    client = client_for(pathologist)
    refused = client.get(f"/slides/{big.pk}/associated/label.jpeg")
    assert refused.status_code == 503
    assert b"8000\xc3\x976000 px" in refused.content and b"Mpx" in refused.content
    served = client.get(f"/slides/{small.pk}/associated/label.jpeg")
    assert served.status_code == 200 and served["Content-Type"] == "image/jpeg"


@pytest.fixture
def tile_dir(settings, tmp_path):
    settings.TILE_CACHE_DIR = tmp_path / "tiles"
    return settings.TILE_CACHE_DIR


# --------------------------------------------------------------------- the rule


def test_the_bound_rule_refuses_forged_flat_and_gapped_slides_only():
    assert "pixels per byte" in read_bounds_problem(((200_000, 200_000),), (1.0,), 310_552)
    flat = read_bounds_problem(((200_000, 200_000),), (1.0,), 60 * GIB)
    assert "read its 200000×200000 px level 0 whole" in flat and "pyramidal" in flat
    gapped = ((200_000, 200_000), (6250, 6250), (195, 195))
    problem = read_bounds_problem(gapped, (1.0, 32.0, 1024.0), 60 * GIB)
    assert "levels 0 and 1 are 32× apart" in problem
    # A 2048 px thumbnail (tissue detection) would read level 1 whole: 156 Mpx.
    sparse = ((200_000, 200_000), (12_500, 12_500), (781, 781))
    assert "12500×12500 px level 1" in read_bounds_problem(sparse, (1.0, 16.0, 256.0), 60 * GIB)
    svs = ((200_000, 150_000), (50_000, 37_500), (12_500, 9_375))  # a 3-level 40x scan
    assert read_bounds_problem(svs, (1.0, 4.0, 16.0), 3 * GIB) is None
    assert read_bounds_problem(((3000, 2400),), (1.0,), 1_000_000) is None  # small, flat


def test_the_forged_file_is_what_the_issue_describes(forged):
    assert forged.stat().st_size == 310_552
    with openslide.OpenSlide(forged) as slide:  # OpenSlide itself takes it
        assert slide.level_dimensions == ((200_000, 200_000),)
        pixel = slide.read_region((150_000, 150_000), 0, (8, 8)).getpixel((0, 0))
        assert pixel == (230, 230, 230, 255)


# --------------------------------------------------------------- registration


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("tile", "reason"),
    [(1024, "more pixels per byte than any image compression gives"), (256, "px level 0 whole")],
)
def test_import_refuses_a_slide_whose_reads_cannot_be_bounded(
    import_dir, tile, reason, no_slide_stored, capsys
):
    # 256 px tiles make the tables big enough (4.9 MB) to pass the pixels-per-byte
    # check: the missing pyramid refuses it.
    path = import_dir / f"flat-{tile}.tiff"
    write_forged_tiff(path, tile=tile)
    with pytest.raises(CommandError, match="refused"):
        call_command("import_slides", str(path), "--case", "H-1", "--patient", "P-H1")
    error = capsys.readouterr().err
    assert f"flat-{tile}.tiff: refused because" in error and reason in error


@pytest.mark.django_db
def test_upload_page_and_api_refuse_it_with_the_reason(
    client, lab_admin, case, forged, no_slide_stored
):
    client.force_login(lab_admin)
    upload = SimpleUploadedFile("scan 12.tiff", forged.read_bytes())
    page = client.post(f"/cases/{case.pk}/slides/upload/", {"file": upload})
    assert page.status_code == 400
    assert "Slide refused: scan 12.tiff: refused because it declares 200000×200000 px" in (
        page.content.decode()
    )
    upload = SimpleUploadedFile("scan 12.tiff", forged.read_bytes())
    api = client.post(f"/api/cases/{case.pk}/slides/", {"file": upload})
    assert api.status_code == 400
    assert api.json()["file"].startswith("scan 12.tiff: refused because it declares")


# ------------------------------------------------------------ every read bounded


def test_reads_past_the_bound_raise_before_allocating(forged):
    with open_slide(forged) as slide:
        started = time.perf_counter()
        for read in (
            lambda: thumbnail(slide, 400),  # chunked, but 40,000 Mpx to decode
            lambda: slide.get_thumbnail((400, 400)),  # OpenSlide's: the whole level at once
            lambda: slide.read_region((0, 0), 0, (20_000, 20_000)),
            lambda: read_region(slide, (0, 0), (320, 320), Scale(500.0, 500.0)),
        ):
            with pytest.raises(ReadTooLarge, match="Mpx one read may take"):
                read()
        generator = deepzoom.BoundedDeepZoomGenerator(slide, 254, 1, limit_bounds=False)
        with pytest.raises(ReadTooLarge):
            generator.get_tile(0, (0, 0))
        assert generator.get_tile(generator.level_count - 1, (400, 400)).size == (256, 256)
        assert time.perf_counter() - started < 5  # refused by arithmetic, not after reading


def test_chunked_reads_give_openslides_pixels(synthetic_slide, tmp_path):
    """Thumbnails and zoomed-out tiles read in chunks match OpenSlide's whole-level reads
    (but for tiles of a few pixels, where the box factor is capped at a chunk)."""
    with open_slide(synthetic_slide) as slide:  # level 0 (7.2 Mpx) is read for 2048 px
        ours = np.asarray(thumbnail(slide, 2048))
        assert np.array_equal(ours, np.asarray(slide.get_thumbnail((2048, 2048)).convert("RGB")))
    flat = tmp_path / "flat.tiff"
    write_plain_slide(flat, 3072, synthetic_slide)
    with open_slide(flat) as slide, openslide.OpenSlide(flat) as reference:
        ours = deepzoom.BoundedDeepZoomGenerator(slide, 254, 1, limit_bounds=False)
        theirs = DeepZoomGenerator(reference, 254, 1, limit_bounds=False)
        assert ours._chunked == set(range(10))  # tiles reading 2048 px a side and more
        for level in range(1, 10):  # level 0's 1 px tile is 3072 px box-averaged
            for row in range(ours.level_tiles[level][1]):
                for col in range(ours.level_tiles[level][0]):
                    tile = np.asarray(ours.get_tile(level, (col, row)))
                    assert np.array_equal(tile, np.asarray(theirs.get_tile(level, (col, row))))


@pytest.mark.django_db
def test_a_forged_slide_stored_before_the_rule_answers_503_not_memory(
    client_for, pathologist, case, forged, tile_dir
):
    stored = Path(settings.SLIDE_STORE) / "forged" / "forged.tiff"
    stored.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(forged, stored)
    slide = Slide.objects.create(
        case=case,
        file="forged/forged.tiff",
        original_name="forged.tiff",
        sha256="f" * 64,
        size_bytes=forged.stat().st_size,
        vendor="generic-tiff",
        width=200_000,
        height=200_000,
        level_count=1,
    )
    client = client_for(pathologist)
    for url in (f"/slides/{slide.pk}/thumbnail.jpeg", f"/slides/{slide.pk}_files/3/0_0.jpeg"):
        response = client.get(url)
        assert response.status_code == 503
        body = response.content.decode()
        assert "The slide cannot be shown" in body and str(settings.SLIDE_STORE) not in body


def write_plain_slide(path: Path, side: int, source: Path) -> None:
    """A ``side`` px square single-level tiled JPEG TIFF (no pyramid) from the source
    slide's tiles repeated: large in pixels, small on disk."""
    with tifffile.TiffFile(source) as tiff:
        image = tiff.pages[0].asarray()
    rows, cols = image.shape[0] // 256, image.shape[1] // 256

    def tiles():
        for ty in range(-(-side // 256)):
            for tx in range(-(-side // 256)):
                r, c = ty % rows * 256, tx % cols * 256
                yield image[r : r + 256, c : c + 256]

    tifffile.imwrite(
        path,
        tiles(),
        shape=(side, side, 3),
        dtype=np.uint8,
        tile=(256, 256),
        compression="jpeg",
        photometric="rgb",
    )


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_the_web_process_stays_under_1_gb_serving_every_tile(
    pathologist, case, synthetic_slide, tmp_path
):
    """A real web process (runserver) serves every Deep Zoom tile and both thumbnails of a
    6144 px square slide with no pyramid: its zoomed-out tiles and thumbnails read the
    whole 38 Mpx level (600+ MB at once through OpenSlide's generator), now in chunks."""
    source = tmp_path / "flat-6144.tiff"
    write_plain_slide(source, 6144, synthetic_slide)
    slide = register_slide(source, case, source.name)
    with openslide.OpenSlide(slide.path) as opened:
        generator = portal_generator(opened)
        urls = [
            f"/slides/{slide.pk}_files/{level}/{col}_{row}.jpeg"
            for level in range(generator.level_count)
            for row in range(generator.level_tiles[level][1])
            for col in range(generator.level_tiles[level][0])
        ]
    urls += [f"/slides/{slide.pk}/thumbnail.jpeg", f"/slides/{slide.pk}/thumbnail.jpeg?size=small"]
    viewer = Client()
    viewer.force_login(pathologist)
    cookie = f"{settings.SESSION_COOKIE_NAME}={viewer.cookies[settings.SESSION_COOKIE_NAME].value}"

    port = free_port()
    env = {**subprocess_env(), "TILE_CACHE_DIR": str(tmp_path / "tiles"), "DEBUG": "1"}
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=settings.BASE_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until_up(base, server)

        def fetch(url: str) -> int:
            request = urllib.request.Request(base + url, headers={"Cookie": cookie})
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
                return response.status

        with ThreadPoolExecutor(4) as pool:  # a viewer's parallel tile requests
            statuses = list(pool.map(fetch, reversed(urls)))  # zoomed out first
        peak = peak_rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert statuses == [200] * len(urls)
    print(f"web process peak RSS {peak / 2**20:.0f} MiB over {len(urls)} requests")
    assert peak < GIB


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(base: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert server.poll() is None, "the web process exited"
        assert time.monotonic() < deadline, "the web process never answered"
        try:
            urllib.request.urlopen(base + "/accounts/login/", timeout=5).read()
            return
        except OSError:
            time.sleep(0.2)


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


# ------------------------------------------------------------------ damaged slides


def zero_tile_data(source: Path, out: Path) -> tuple[int, int]:
    """Copy ``source`` with 64 KiB zeroed inside level 0's tile data, starting 100 bytes
    into its middle tile (IFDs and the other levels untouched); the zeroed byte range."""
    with tifffile.TiffFile(source) as tiff:
        page = tiff.pages[0]
        start = page.dataoffsets[len(page.dataoffsets) // 2] + 100
        end = start + 64 * 1024
        assert end <= page.dataoffsets[-1] + page.databytecounts[-1]
        assert all(p.offset < start or p.offset > end for p in tiff.pages)
    data = bytearray(source.read_bytes())
    data[start:end] = bytes(end - start)
    out.write_bytes(bytes(data))
    return start, end


def openslide_failures(path: Path) -> list[tuple[int, int, int]]:
    """The Deep Zoom tiles OpenSlide's own generator cannot render (reopening the slide
    after each failure: OpenSlide refuses every read after one has failed)."""
    failures = []
    slide = openslide.OpenSlide(path)
    generator = portal_generator(slide)
    for level in range(generator.level_count):
        for row in range(generator.level_tiles[level][1]):
            for col in range(generator.level_tiles[level][0]):
                try:
                    generator.get_tile(level, (col, row))
                except openslide.OpenSlideError:
                    failures.append((level, col, row))
                    slide = openslide.OpenSlide(path)
                    generator = portal_generator(slide)
    return failures


@pytest.fixture(scope="module")
def damaged(synthetic_slide, tmp_path_factory) -> tuple[Path, list[tuple[int, int, int]]]:
    path = tmp_path_factory.mktemp("damaged") / "damaged.tiff"
    zero_tile_data(synthetic_slide, path)
    failures = openslide_failures(path)
    assert failures, "the zeroed bytes must break some tiles"
    return path, failures


@pytest.mark.django_db(transaction=True)
def test_prerendering_marks_a_damaged_slide_and_the_ai_refuses_it(
    client_for, lab_admin, case, damaged, tile_dir, settings, rq_queues
):
    path, failures = damaged
    settings.TILE_PRERENDER = "all"
    slide = register_slide(path, case, "damaged.tiff")  # its corners decode: accepted
    assert slide.damaged_tiles == 0
    run_worker_burst("tiles")  # the pre-render job registration queued
    slide.refresh_from_db()
    assert slide.damaged_tiles == len(failures)

    client = client_for(lab_admin)
    page = client.get(f"/cases/{case.pk}/").content.decode()
    assert f"Damaged slide: {len(failures)} tiles cannot be decoded" in page
    assert client.get(f"/api/slides/{slide.pk}/").json()["damaged_tiles"] == len(failures)

    reason = f"damaged.tiff is damaged ({len(failures)} tiles cannot be decoded)"
    with pytest.raises(services.RunRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        services.start_run(slide)
    api = client.post("/api/runs/", {"slide": slide.pk}, content_type="application/json")
    assert api.status_code == 400 and reason in api.content.decode()
    page = client.post(f"/slides/{slide.pk}/runs/start/", follow=True).content.decode()
    assert reason in page
    assert not InferenceRun.objects.filter(slide=slide).exists()


@pytest.mark.django_db
def test_the_viewer_records_bad_tiles_once_and_keeps_serving(
    client_for, pathologist, case, damaged, tile_dir, monkeypatch
):
    path, failures = damaged
    monkeypatch.setattr(deepzoom, "damage_log", deepzoom.DamageLog())
    slide = register_slide(path, case, "damaged.tiff")
    client = client_for(pathologist)

    def tile(level, col, row):
        return client.get(f"/slides/{slide.pk}_files/{level}/{col}_{row}.jpeg")

    first = tile(*failures[0])
    assert first.status_code == 503
    assert "cannot be decoded: the slide file is damaged" in first.content.decode()
    assert str(settings.SLIDE_STORE) not in first.content.decode()
    slide.refresh_from_db()
    assert slide.damaged_tiles == 1
    with CaptureQueriesContext(connection) as queries:
        assert tile(*failures[0]).status_code == 503  # the same bad tile again
    assert not [q for q in queries if q["sql"].startswith("UPDATE")]
    assert tile(*failures[1]).status_code == 503
    slide.refresh_from_db()
    assert slide.damaged_tiles == 2
    # OpenSlide refuses every read of a handle after one failed: the portal reopened it.
    handle = deepzoom.handles.get(slide.path).slide
    openslide.OpenSlide.read_region(handle, (0, 0), 0, (16, 16))
    assert tile(0, 0, 0).status_code == 200


@pytest.mark.django_db
def test_a_good_tile_beside_a_damaged_one_in_its_block_is_served(
    client_for, pathologist, case, damaged, tile_dir, settings
):
    """Tiles with overlap are all rendered, a block at a time (none is the file's own)."""
    path, _ = damaged
    settings.DEEPZOOM_TILE_SIZE, settings.DEEPZOOM_OVERLAP = 254, 1
    failures = openslide_failures(path)
    slide = register_slide(path, case, "damaged.tiff")
    deepzoom.handles.forget(slide.path, deepzoom.handles.get(slide.path))  # opened with 256/0
    generator = deepzoom.handles.get(slide.path).deepzoom
    assert (generator._z_t_downsample, generator._z_overlap) == (254, 1)
    bad = set(failures)
    level, col, row = next(
        (level, *address)
        for level, col, row in failures
        for address in generator.block(level, (col, row))
        if (level, *address) not in bad and len(generator.block(level, (col, row))) > 1
    )
    response = client_for(pathologist).get(f"/slides/{slide.pk}_files/{level}/{col}_{row}.jpeg")
    deepzoom.handles.forget(slide.path, deepzoom.handles.get(slide.path))  # for later tests
    assert response.status_code == 200
    assert response.content == expected_tile(path, level, col, row)


# ------------------------------------------------------- messages without paths


def corrupt_copy(source: Path, out: Path) -> None:
    """``source`` with its smallest level's last tile pointing past the end of the file:
    OpenSlide refuses to open it with a message that names the file's path."""
    data = bytearray(source.read_bytes())
    with tifffile.TiffFile(source) as tiff:
        smallest = min(tiff.pages, key=lambda page: page.imagewidth * page.imagelength)
        offsets = smallest.tags["TileOffsets"]
        at = offsets.valueoffset + 4 * (offsets.count - 1)
    data[at : at + 4] = struct.pack("<I", len(data) * 10)
    out.write_bytes(bytes(data))


@pytest.mark.django_db
def test_upload_errors_name_the_users_file_never_a_server_path(
    client, lab_admin, case, synthetic_slide, tmp_path, no_slide_stored
):
    corrupt = tmp_path / "corrupt.tiff"
    corrupt_copy(synthetic_slide, corrupt)
    with pytest.raises(openslide.OpenSlideError, match=str(corrupt)):
        openslide.OpenSlide(corrupt)  # the library's own message carries the path

    client.force_login(lab_admin)
    upload = SimpleUploadedFile("Biopsy 7.tiff", corrupt.read_bytes())
    page = client.post(f"/cases/{case.pk}/slides/upload/", {"file": upload})
    upload = SimpleUploadedFile("Biopsy 7.tiff", corrupt.read_bytes())
    api = client.post(f"/api/cases/{case.pk}/slides/", {"file": upload})
    assert page.status_code == api.status_code == 400
    message = api.json()["file"]
    assert message.startswith("Biopsy 7.tiff: the slide is damaged or incomplete")
    assert "Short read of file Biopsy 7.tiff" in message
    for body in (page.content.decode(), message):
        assert "Biopsy 7.tiff" in body
        assert str(settings.SLIDE_STORE) not in body and ".incoming-" not in body


@pytest.mark.django_db
def test_a_crop_of_an_unreadable_slide_answers_503_without_paths(
    client_for, pathologist, reviewed_slide, tmp_path
):
    """The finding crop reads the slide in the web process: a file gone bad is a 503."""
    from cases import deepzoom

    finding = reviewed_slide.findings.first()
    path = reviewed_slide.path
    saved = tmp_path / "kept.tiff"
    deepzoom.handles.forget(path, deepzoom.handles.get(path))  # no handle left open on it
    path.rename(saved)
    path.write_bytes(b"II*\0" + b"\0" * 4096)  # a TIFF header with nothing behind it
    try:
        response = client_for(pathologist).get(f"/findings/{finding.pk}/crop.jpeg")
    finally:
        saved.replace(path)
    assert response.status_code == 503
    assert str(settings.SLIDE_STORE) not in response.content.decode()


@pytest.mark.django_db
def test_a_crop_on_damaged_data_does_not_poison_the_shared_handle(
    client_for, pathologist, case, damaged, model_versions
):
    """OpenSlide refuses every read of a handle after one failed: the crop that failed
    drops the shared handle, so the next crop (on good data) is served."""
    from inference.models import Finding, InferenceRun

    path, failures = damaged
    slide = register_slide(path, case, "damaged.tiff")
    deepest = max(level for level, _, _ in failures)
    _, col, row = next(f for f in failures if f[0] == deepest)
    run = InferenceRun.objects.create(
        slide=slide, detector=model_versions[0], classifier=model_versions[1], status="succeeded"
    )

    def finding_at(x: float, y: float) -> Finding:
        return Finding.objects.create(
            slide=slide, run=run, x=x, y=y, box_x0=x - 9, box_y0=y - 9, box_x1=x + 9,
            box_y1=y + 9, score=0.9, phase="metaphase",
        )  # fmt: skip

    side = settings.DEEPZOOM_TILE_SIZE  # the deepest level is level 0
    bad = finding_at(col * side + side // 2, row * side + side // 2)
    good = finding_at(40.0, 40.0)
    client = client_for(pathologist)
    handle = deepzoom.handles.get(slide.path)
    failed = client.get(f"/findings/{bad.pk}/crop.jpeg?px=64")
    assert failed.status_code == 503 and b"cannot be read" in failed.content
    assert deepzoom.handles.get(slide.path) is not handle  # reopened, not poisoned
    served = client.get(f"/findings/{good.pk}/crop.jpeg?px=64")
    assert served.status_code == 200 and served["Content-Type"] == "image/jpeg"


def break_huffman_table(source: Path, out: Path, col: int, row: int) -> None:
    """Copy ``source`` with the first Huffman table of level 0's tile (col, row) made bogus
    (code counts over 256): the tile's framing stays whole, its data cannot be decoded."""
    offset, size = tile_span(source, 0, col, row)
    data = bytearray(source.read_bytes())
    counts = offset + bytes(data[offset : offset + size]).index(b"\xff\xc4") + 5
    data[counts : counts + 16] = b"\xff" * 16
    out.write_bytes(bytes(data))


@pytest.mark.django_db
def test_a_tile_whose_tables_are_damaged_is_never_sent_as_the_file_has_it(
    client_for, pathologist, case, synthetic_slide, tmp_path, tile_dir, monkeypatch
):
    monkeypatch.setattr(deepzoom, "damage_log", deepzoom.DamageLog())
    path = tmp_path / "bogus.tiff"
    break_huffman_table(synthetic_slide, path, 5, 4)
    slide = register_slide(path, case, "bogus.tiff")
    top = deepzoom.handles.get(slide.path).deepzoom.level_count - 1
    client = client_for(pathologist)
    assert client.get(f"/slides/{slide.pk}_files/{top}/4_4.jpeg").status_code == 200
    response = client.get(f"/slides/{slide.pk}_files/{top}/5_4.jpeg")
    assert response.status_code == 503
    assert "cannot be decoded: the slide file is damaged" in response.content.decode()
    slide.refresh_from_db()
    assert slide.damaged_tiles == 1
