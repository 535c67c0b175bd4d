"""The shared tile cache on disk, pre-rendering, pruning, and the per-session tile grants."""

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core.management import CommandError, call_command

from cases import deepzoom, tiles
from cases.models import CaseAssignment, Slide
from tests.conftest import run_worker_burst
from tests.test_tiles import expected_tile, file_tile


@pytest.fixture
def tile_dir(settings, tmp_path):
    settings.TILE_CACHE_DIR = tmp_path / "tiles"
    return settings.TILE_CACHE_DIR


@pytest.fixture
def unwritable_tile_dir(settings, tmp_path):
    """A cache directory below a plain file: nothing can be created there."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    settings.TILE_CACHE_DIR = blocker / "tiles"
    return settings.TILE_CACHE_DIR


@pytest.fixture
def rendered_tiles(settings, slide):
    """OpenSlide's example geometry (254 px, overlap 1): no tile is the file's own JPEG,
    every one is rendered, a block at a time. The slide is reopened with it, and after."""
    settings.DEEPZOOM_TILE_SIZE, settings.DEEPZOOM_OVERLAP = 254, 1
    deepzoom.handles.forget(slide.path, deepzoom.handles.get(slide.path))
    yield
    deepzoom.handles.forget(slide.path, deepzoom.handles.get(slide.path))


def source_of(slide: Slide) -> deepzoom.TileSource:
    return deepzoom.TileSource(slide.path, slide.sha256)


def pyramid(slide: Slide) -> list[tuple[int, int, int]]:
    return deepzoom.pyramid_addresses(deepzoom.handles.get(slide.path).deepzoom)


@pytest.mark.django_db
def test_a_served_tile_is_kept_on_disk_and_served_from_there(
    client_for, pathologist, slide, tile_dir
):
    url = f"/slides/{slide.pk}_files/9/1_1.jpeg"  # a level between the slide's: rendered
    first = client_for(pathologist).get(url).content
    cached = deepzoom.tile_file(slide.sha256, 9, 1, 1)
    assert cached.read_bytes() == first
    cached.write_bytes(b"from the cache")  # proves the second answer is the file
    again = client_for(pathologist).get(url)
    assert again.streaming and again.getvalue() == b"from the cache"  # sent as a file
    assert again["Content-Type"] == "image/jpeg" and again["ETag"]


@pytest.mark.django_db
def test_a_front_web_server_sends_rendered_tiles_after_the_permission_check(
    client_for, pathologist, other_pathologist, slide, tile_dir, settings
):
    settings.TILE_ACCEL_REDIRECT = "/_tiles/"
    url = f"/slides/{slide.pk}_files/9/1_0.jpeg"
    first = client_for(pathologist).get(url)  # not rendered yet: Django renders and sends it
    assert "X-Accel-Redirect" not in first and first.content[:2] == b"\xff\xd8"
    cached = deepzoom.tile_file(slide.sha256, 9, 1, 0)
    again = client_for(pathologist).get(url)
    assert again.status_code == 200 and again.content == b""
    assert again["X-Accel-Redirect"] == f"/_tiles/{cached.relative_to(tile_dir).as_posix()}"
    assert again["Content-Type"] == "image/jpeg" and again["ETag"] == first["ETag"]
    assert "private" in again["Cache-Control"]
    refused = client_for(other_pathologist).get(url)
    assert refused.status_code == 404 and "X-Accel-Redirect" not in refused


@pytest.mark.django_db
def test_a_cold_tile_renders_its_block_with_it(slide, tile_dir, rendered_tiles):
    generator = deepzoom.handles.get(slide.path).deepzoom
    top = generator.level_count - 1
    block = generator.block(top, (5, 2))
    assert block[0] == (4, 0) and len(block) == 16  # 4 x 4 tiles, aligned
    data = deepzoom.render_tile(source_of(slide), top, 5, 2)
    assert data == expected_tile(slide.path, top, 5, 2)
    for col, row in block:  # every one as OpenSlide's generator gives it
        cached = deepzoom.tile_file(slide.sha256, top, col, row).read_bytes()
        assert cached == expected_tile(slide.path, top, col, row), (col, row)
    assert not deepzoom.tile_file(slide.sha256, top, 3, 0).exists()  # another block's


@pytest.mark.django_db
def test_a_cold_tile_of_the_slides_own_level_is_its_jpeg_stored_once_asked_for_again(
    slide, tile_dir, monkeypatch
):
    """Reading it from the slide again costs less than writing it to the cache, so it is
    kept for the front server only when asked for a second time (others view it too)."""
    monkeypatch.setattr(deepzoom, "encode_jpeg", lambda image: pytest.fail("encoded"))
    monkeypatch.setattr(deepzoom, "asked_before", deepzoom.AskedBefore(max_entries=2))
    top = deepzoom.handles.get(slide.path).deepzoom.level_count - 1
    data = deepzoom.render_tile(source_of(slide), top, 5, 2)
    assert data == file_tile(slide.path, 0, 5, 2)
    assert not tile_dir.exists()
    assert deepzoom.render_tile(source_of(slide), top, 5, 2) == data
    assert deepzoom.tile_file(slide.sha256, top, 5, 2).read_bytes() == data
    for col in (6, 7, 4, 6):  # (6, 2) forgotten past max_entries: asked anew, not kept
        deepzoom.render_tile(source_of(slide), top, col, 2)
    assert not deepzoom.tile_file(slide.sha256, top, 6, 2).exists()


@pytest.mark.django_db
def test_a_block_asked_for_by_many_viewers_at_once_is_rendered_once(
    slide, tile_dir, rendered_tiles, monkeypatch
):
    encoded = []
    encode = deepzoom.encode_jpeg
    monkeypatch.setattr(deepzoom, "encode_jpeg", lambda image: encoded.append(1) or encode(image))
    top = deepzoom.handles.get(slide.path).deepzoom.level_count - 1
    addresses = [(col, row) for col in range(4) for row in range(4)] * 2
    with ThreadPoolExecutor(8) as pool:
        tiles = list(pool.map(lambda a: deepzoom.render_tile(source_of(slide), top, *a), addresses))
    assert len(encoded) == 16
    assert tiles[:16] == tiles[16:]
    assert all(
        t == expected_tile(slide.path, top, *a) for t, a in zip(tiles, addresses, strict=True)
    )


@pytest.mark.django_db
def test_a_cache_that_cannot_be_written_still_serves_the_tile(
    client_for, pathologist, slide, unwritable_tile_dir
):
    response = client_for(pathologist).get(f"/slides/{slide.pk}_files/11/0_0.jpeg")
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"


@pytest.mark.django_db
def test_a_cache_that_cannot_be_written_gets_no_block_encoded_for_nothing(
    slide, unwritable_tile_dir, rendered_tiles, monkeypatch
):
    encoded = []
    encode = deepzoom.encode_jpeg
    monkeypatch.setattr(deepzoom, "encode_jpeg", lambda image: encoded.append(1) or encode(image))
    top = deepzoom.handles.get(slide.path).deepzoom.level_count - 1
    assert deepzoom.render_tile(source_of(slide), top, 1, 1) == expected_tile(slide.path, top, 1, 1)
    assert len(encoded) == 1


@pytest.mark.django_db
def test_prerender_renders_every_tile_once(slide, tile_dir):
    addresses = pyramid(slide)
    assert deepzoom.prerender(source_of(slide)) == deepzoom.Prerendered(len(addresses), 0)
    assert all(deepzoom.tile_file(slide.sha256, *address).is_file() for address in addresses)
    stored = deepzoom.tile_file(slide.sha256, addresses[-1][0], 1, 1)  # of the top level
    assert stored.read_bytes() == file_tile(slide.path, 0, 1, 1)
    assert deepzoom.prerender(source_of(slide)) == deepzoom.Prerendered(0, 0)


@pytest.mark.django_db
def test_overview_mode_leaves_the_two_top_levels_to_on_demand(slide, tile_dir, settings):
    settings.TILE_PRERENDER = "overview"
    rendered = tiles.prerender_slide(slide.pk).rendered
    top = deepzoom.handles.get(slide.path).deepzoom.level_count - 1
    assert rendered == len(pyramid(slide)) - sum(
        1 for level, _, _ in pyramid(slide) if level >= top - 1
    )
    assert not (deepzoom.slide_cache_dir(slide.sha256) / str(top)).exists()
    assert (deepzoom.slide_cache_dir(slide.sha256) / str(top - 2)).is_dir()


@pytest.mark.django_db(transaction=True)
def test_registering_a_slide_queues_prerendering_for_a_worker(
    case, synthetic_slide, tile_dir, settings, rq_queues
):
    from cases.registration import register_slide

    settings.TILE_PRERENDER = "all"
    slide = register_slide(synthetic_slide, case, synthetic_slide.name)
    queued = rq_queues.get_queue("tiles").job_ids
    assert queued == [f"tiles-{slide.pk}"]
    run_worker_burst("tiles")
    assert all(deepzoom.tile_file(slide.sha256, *address).is_file() for address in pyramid(slide))


@pytest.mark.django_db
def test_prune_drops_deleted_slides_then_the_least_recently_viewed(slide, tile_dir):
    deepzoom.prerender(source_of(slide))
    stale = deepzoom.slide_cache_dir("0" * 64)
    (stale / "0").mkdir(parents=True)
    (stale / "0" / "0_0.jpeg").write_bytes(b"x")
    other = deepzoom.slide_cache_dir("1" * 64)
    (other / "0").mkdir(parents=True)
    (other / "0" / "0_0.jpeg").write_bytes(b"y" * 10)
    os.utime(other, (0, 0))  # viewed long ago
    unrelated = tile_dir / "store"  # not a cache folder: never touched
    unrelated.mkdir()
    registered = {slide.sha256, "1" * 64}

    removed = deepzoom.prune(registered, max_bytes=10**9)
    assert removed == [stale] and other.is_dir()

    removed = deepzoom.prune(
        registered, max_bytes=deepzoom._folder_bytes(deepzoom.slide_cache_dir(slide.sha256))
    )
    assert removed == [other]
    assert deepzoom.slide_cache_dir(slide.sha256).is_dir() and unrelated.is_dir()


@pytest.mark.django_db
def test_prerender_command(slide, tile_dir, settings, capsys):
    settings.TILE_PRERENDER = "all"
    call_command("prerender_tiles", "--slide", str(slide.pk))
    assert f"Slide {slide.pk}: {len(pyramid(slide))} tiles rendered." in capsys.readouterr().out
    with pytest.raises(CommandError, match="No slide 999"):
        call_command("prerender_tiles", "--slide", "999")
    settings.TILE_PRERENDER = "off"
    with pytest.raises(CommandError, match="TILE_PRERENDER is off"):
        call_command("prerender_tiles", "--all")


@pytest.mark.django_db
def test_a_granted_session_gets_cached_tiles_without_database_queries(
    client_for, pathologist, slide, tile_dir, django_assert_num_queries
):
    client = client_for(pathologist)
    assert client.get(f"/slides/{slide.pk}_files/11/0_0.jpeg").status_code == 200
    with django_assert_num_queries(0):
        assert client.get(f"/slides/{slide.pk}_files/11/0_0.jpeg").status_code == 200


@pytest.mark.django_db
def test_a_revoked_assignment_stops_tiles_once_the_grant_expires(
    client_for, pathologist, slide, tile_dir, monkeypatch
):
    monkeypatch.setattr(deepzoom.tile_grants, "ttl", 0.0)  # every request re-checks
    client = client_for(pathologist)
    url = f"/slides/{slide.pk}_files/11/0_0.jpeg"
    assert client.get(url).status_code == 200
    CaseAssignment.objects.filter(case=slide.case, pathologist=pathologist).delete()
    response = client.get(url)
    assert response.status_code == 404 and response["Content-Type"] != "image/jpeg"


@pytest.mark.django_db
def test_a_grant_belongs_to_one_session(
    client_for, pathologist, other_pathologist, slide, tile_dir
):
    url = f"/slides/{slide.pk}_files/11/0_0.jpeg"
    assert client_for(pathologist).get(url).status_code == 200
    response = client_for(other_pathologist).get(url)
    assert response.status_code == 404 and response["Content-Type"] != "image/jpeg"


@pytest.mark.django_db
def test_signing_out_ends_tile_access_for_the_old_cookie(client_for, pathologist, slide, tile_dir):
    client = client_for(pathologist)
    url = f"/slides/{slide.pk}_files/11/0_0.jpeg"
    assert client.get(url).status_code == 200
    old_cookie = client.cookies["sessionid"].value
    client.post("/accounts/logout/")
    client.cookies["sessionid"] = old_cookie
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_a_grant_checked_before_a_sign_out_is_not_stored_after_it(slide_path_source):
    grants = deepzoom.TileGrants(ttl=30)
    grants.forget_session("signed-out")
    grants.put("signed-out", 1, slide_path_source)  # a request that raced the sign-out
    assert grants.get("signed-out", 1) is None
    grants.put("still-in", 1, slide_path_source)
    assert grants.get("still-in", 1) == slide_path_source


@pytest.fixture
def slide_path_source(tmp_path):
    return deepzoom.TileSource(tmp_path / "slide.tiff", "a" * 64)


@pytest.mark.django_db
def test_prerendering_into_an_unwritable_cache_fails_with_the_reason(slide, unwritable_tile_dir):
    with pytest.raises(deepzoom.TileCacheUnwritable, match="cannot be cached"):
        deepzoom.prerender(source_of(slide))


@pytest.mark.django_db(transaction=True)
def test_deleting_a_slide_removes_its_cached_tiles(slide, tile_dir, rq_queues):
    deepzoom.prerender(source_of(slide))
    folder = deepzoom.slide_cache_dir(slide.sha256)
    assert folder.is_dir()
    slide.delete()
    run_worker_burst("tiles")
    assert not folder.exists()
