"""Deep Zoom through the portal: same pixels as OpenSlide, caching, bounds, permission."""

from io import BytesIO

import numpy as np
import openslide
import pytest
import tifffile
from django.conf import settings
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from cases import deepzoom


def generator(source) -> DeepZoomGenerator:
    """OpenSlide's own Deep Zoom generator with the portal's tile settings."""
    return DeepZoomGenerator(
        source, settings.DEEPZOOM_TILE_SIZE, settings.DEEPZOOM_OVERLAP, limit_bounds=False
    )


def expected_tile(path, level, col, row) -> bytes:
    """The tile OpenSlide's example server would send (rendered, JPEG at quality 75)."""
    with openslide.OpenSlide(path) as source:
        tile = generator(source).get_tile(level, (col, row))
        buffer = BytesIO()
        tile.save(buffer, "jpeg", quality=75)
        return buffer.getvalue()


def tile_span(path, level_index, col, row) -> tuple[int, int]:
    """(offset, byte count) of tile (col, row) of the TIFF's page ``level_index``."""
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[level_index]
        index = row * -(-page.imagewidth // page.tilewidth) + col
        return page.dataoffsets[index], page.databytecounts[index]


def file_tile(path, level_index, col, row) -> bytes:
    """Tile (col, row) of the TIFF's page ``level_index`` exactly as the file stores it."""
    offset, size = tile_span(path, level_index, col, row)
    with open(path, "rb") as file:
        file.seek(offset)
        return file.read(size)


def served(response) -> bytes:
    # a tile rendered with an earlier one's block is sent as a file
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.django_db
def test_dzi_describes_the_slide(client_for, pathologist, slide):
    response = client_for(pathologist).get(f"/slides/{slide.pk}.dzi")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/xml"
    body = response.content.decode()
    assert 'TileSize="256"' in body and 'Overlap="0"' in body and 'Format="jpeg"' in body
    assert f'Width="{slide.width}"' in body and f'Height="{slide.height}"' in body


@pytest.mark.django_db
def test_tiles_are_pixel_identical_to_openslide_deepzoom(client_for, pathologist, slide):
    """A tile is the slide file's own JPEG, decoding to OpenSlide's pixels, or rendered
    as OpenSlide's example server renders it (quality 75), to the byte."""
    client = client_for(pathologist)
    with openslide.OpenSlide(slide.path) as source:
        deepzoom_levels = generator(source)
        top = deepzoom_levels.level_count - 1
        last_col = deepzoom_levels.level_tiles[top][0] - 1
        own = [(top, 0, 0), (top, 3, 2), (top - 2, 1, 0)]
        expected = {a: np.asarray(deepzoom_levels.get_tile(a[0], a[1:])) for a in own}
    for level, col, row in own + [(top, last_col, 0), (top - 4, 0, 0), (0, 0, 0)]:
        response = client.get(f"/slides/{slide.pk}_files/{level}/{col}_{row}.jpeg")
        assert response.status_code == 200, (level, col, row)
        assert response["Content-Type"] == "image/jpeg"
        image = Image.open(BytesIO(served(response)))
        assert image.mode == "RGB"
        if (level, col, row) in expected:
            assert np.array_equal(np.asarray(image), expected[(level, col, row)])
        else:
            assert served(response) == expected_tile(slide.path, level, col, row)


@pytest.mark.django_db
def test_the_slides_own_levels_send_its_jpegs_and_other_tiles_are_rendered(
    client_for, pathologist, slide
):
    """Inner tiles of Deep Zoom levels that are the slide's own levels are the file's JPEG
    bytes; edge tiles (padded in the file) and levels between are rendered."""
    client = client_for(pathologist)
    with openslide.OpenSlide(slide.path) as source:
        deepzoom_levels = generator(source)
        top = deepzoom_levels.level_count - 1
        last_col = deepzoom_levels.level_tiles[top][0] - 1

    def tile(level, col, row) -> bytes:
        return served(client.get(f"/slides/{slide.pk}_files/{level}/{col}_{row}.jpeg"))

    assert tile(top, 1, 1) == file_tile(slide.path, 0, 1, 1)
    assert tile(top - 1, 2, 1) == file_tile(slide.path, 1, 2, 1)
    assert tile(top, last_col, 1) == expected_tile(slide.path, top, last_col, 1)
    assert tile(top - 4, 0, 0) == expected_tile(slide.path, top - 4, 0, 0)


@pytest.mark.django_db
def test_tiles_carry_http_cache_headers_and_answer_revalidation(client_for, pathologist, slide):
    client = client_for(pathologist)
    url = f"/slides/{slide.pk}_files/8/0_0.jpeg"
    first = client.get(url)
    assert "private" in first["Cache-Control"] and "max-age=" in first["Cache-Control"]
    etag = first["ETag"]
    again = client.get(url, HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b""


@pytest.mark.django_db
@pytest.mark.parametrize(
    "suffix",
    [
        "_files/99/0_0.jpeg",  # level beyond the pyramid
        "_files/12/999_0.jpeg",  # column beyond the level
        "_files/12/0_999.jpeg",  # row beyond the level
        "_files/-1/0_0.jpeg",
        "_files/12/0_0.png",
        "_files/12/../0_0.jpeg",
        "_files/12/a_b.jpeg",
        "_files/..%2F..%2Fetc/passwd",
    ],
)
def test_malformed_or_out_of_range_tiles_are_404(client_for, pathologist, slide, suffix):
    response = client_for(pathologist).get(f"/slides/{slide.pk}{suffix}")
    assert response.status_code == 404


@pytest.mark.django_db
def test_unassigned_pathologist_gets_no_tiles(client_for, other_pathologist, slide):
    client = client_for(other_pathologist)
    for url in (
        f"/slides/{slide.pk}.dzi",
        f"/slides/{slide.pk}_files/12/0_0.jpeg",
        f"/slides/{slide.pk}/thumbnail.jpeg",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert response["Content-Type"] != "image/jpeg"


@pytest.mark.django_db
def test_thumbnail_and_missing_associated_image(client_for, pathologist, slide):
    client = client_for(pathologist)
    thumbnail = client.get(f"/slides/{slide.pk}/thumbnail.jpeg")
    assert thumbnail.status_code == 200
    assert max(Image.open(BytesIO(thumbnail.content)).size) == 400
    missing = client.get(f"/slides/{slide.pk}/associated/label.jpeg")
    assert missing.status_code == 404
    assert b"no label image" in missing.content


@pytest.mark.django_db
def test_unreadable_slide_file_answers_503(client_for, pathologist, slide, tmp_path):
    slide.file = "missing/nowhere.tiff"
    slide.save()
    response = client_for(pathologist).get(f"/slides/{slide.pk}.dzi")
    assert response.status_code == 503
    assert b"cannot be read" in response.content


@pytest.mark.django_db
def test_the_tile_grant_names_the_cache_folder_only_to_sessions_that_may_see_the_slide(
    client, client_for, pathologist, other_pathologist, slide, settings
):
    url = f"/slides/{slide.pk}/tile-grant"
    granted = client_for(pathologist).get(url)
    assert granted.status_code == 200
    assert granted["X-Tile-Folder"] == deepzoom.slide_cache_dir(slide.sha256).name
    assert granted["X-Accel-Expires"] == str(int(settings.TILE_GRANT_SECONDS))
    for refused in (client_for(other_pathologist).get(url), client.get(url)):
        assert refused.status_code == 403 and "X-Tile-Folder" not in refused
        assert refused.content == b""
    assert client_for(pathologist).get("/slides/999999/tile-grant").status_code == 403


@pytest.mark.django_db
def test_the_viewer_names_the_tile_settings_in_the_descriptors_url(client_for, pathologist, slide):
    """Tiles are cached as immutable: other tile settings must give other URLs (OpenSeadragon
    carries the descriptor's query over to every tile's URL)."""
    page = client_for(pathologist).get(f"/slides/{slide.pk}/").content.decode()
    assert f'data-dzi="/slides/{slide.pk}.dzi?v={deepzoom.tile_settings_key()}"' in page
    assert deepzoom.tile_settings_key() == "256-0-q75"
    tile = client_for(pathologist).get(f"/slides/{slide.pk}_files/12/1_1.jpeg?v=256-0-q75")
    assert tile.status_code == 200 and tile["Content-Type"] == "image/jpeg"
