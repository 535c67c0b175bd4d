"""Deep Zoom through the portal: same pixels as OpenSlide, caching, bounds, permission."""

from io import BytesIO

import openslide
import pytest
from openslide.deepzoom import DeepZoomGenerator
from PIL import Image

from cases import deepzoom


def expected_tile(path, level, col, row) -> bytes:
    with openslide.OpenSlide(path) as source:
        tile = DeepZoomGenerator(source, 254, 1).get_tile(level, (col, row))
        buffer = BytesIO()
        tile.save(buffer, "jpeg", quality=75)
        return buffer.getvalue()


@pytest.mark.django_db
def test_dzi_describes_the_slide(client_for, pathologist, slide):
    response = client_for(pathologist).get(f"/slides/{slide.pk}.dzi")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/xml"
    body = response.content.decode()
    assert 'TileSize="254"' in body and 'Overlap="1"' in body and 'Format="jpeg"' in body
    assert f'Width="{slide.width}"' in body and f'Height="{slide.height}"' in body


@pytest.mark.django_db
def test_tiles_are_pixel_identical_to_openslide_deepzoom(client_for, pathologist, slide):
    client = client_for(pathologist)
    with openslide.OpenSlide(slide.path) as source:
        generator = DeepZoomGenerator(source, 254, 1)
        top = generator.level_count - 1
        addresses = [(top, 0, 0), (top, 3, 2), (top - 2, 1, 0), (top - 4, 0, 0), (0, 0, 0)]
    for level, col, row in addresses:
        response = client.get(f"/slides/{slide.pk}_files/{level}/{col}_{row}.jpeg")
        assert response.status_code == 200, (level, col, row)
        assert response["Content-Type"] == "image/jpeg"
        # a tile rendered with an earlier one's block is sent as a file
        served = b"".join(response.streaming_content) if response.streaming else response.content
        assert served == expected_tile(slide.path, level, col, row)
        assert Image.open(BytesIO(served)).mode == "RGB"


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
