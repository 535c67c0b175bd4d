"""The compose front server (deploy/nginx.conf, real nginx) in front of the portal:
granted sessions get rendered tiles from disk, everything else gets the portal's answer."""

import http.client
import shutil
import subprocess
import time

import pytest

from cases import deepzoom
from cases.models import CaseAssignment
from tests.front import front_command
from tests.test_tiles import file_tile

pytestmark = [
    pytest.mark.skipif(not shutil.which("nginx"), reason="nginx is not installed here"),
    pytest.mark.django_db(transaction=True),
]
PORT = 8791


@pytest.fixture
def front(live_server, settings, tmp_path):
    """nginx on PORT in front of the live server, sending tiles from its tile cache."""
    settings.TILE_CACHE_DIR = tmp_path / "tiles"
    settings.TILE_ACCEL_REDIRECT = "/_tiles/"
    portal_port = int(live_server.url.rsplit(":", 1)[1])
    command = front_command(tmp_path, PORT, portal_port, settings.TILE_CACHE_DIR)
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read().decode()
        try:
            http.client.HTTPConnection("127.0.0.1", PORT, timeout=2).connect()
            break
        except OSError:
            time.sleep(0.1)
    yield
    process.terminate()
    process.wait(timeout=10)


def get(path: str, session: str | None = None) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    connection.request("GET", path, headers={"Cookie": f"sessionid={session}"} if session else {})
    response = connection.getresponse()
    return response.status, dict(response.getheaders()), response.read()


def session_of(client, user) -> str:
    client.force_login(user)
    return client.cookies["sessionid"].value


def test_a_granted_session_gets_rendered_tiles_from_disk(
    front, client, pathologist, slide, settings
):
    source = deepzoom.TileSource(slide.path, slide.sha256)
    deepzoom.render_tile(source, 9, 0, 0)  # a level between the slide's: rendered and stored
    cached = deepzoom.tile_file(slide.sha256, 9, 0, 0)
    cached.write_bytes(b"\xff\xd8 from the tile cache")
    session = session_of(client, pathologist)
    url = f"/slides/{slide.pk}_files/9/0_0.jpeg"
    django_etag = deepzoom.tile_etag(slide.sha256, 9, 0, 0)
    for _ in range(2):  # the second with the grant nginx kept
        status, headers, body = get(url, session)
        assert status == 200 and body == b"\xff\xd8 from the tile cache"
        assert headers["Content-Type"] == "image/jpeg"
        assert headers["Cache-Control"] == "private, max-age=604800, immutable"
        # sent by nginx from disk: its own ETag, not the portal's (which the portal's
        # X-Accel-Redirect answer would carry)
        assert headers["ETag"] != django_etag and "Content-Security-Policy" not in headers

    # Not rendered yet: the portal renders it, stores it, and sends it.
    status, headers, body = get(f"/slides/{slide.pk}_files/9/1_0.jpeg", session)
    assert status == 200 and body == deepzoom.tile_file(slide.sha256, 9, 1, 0).read_bytes()
    # The slide's own level, not pre-rendered: the portal sends the file's JPEG.
    status, headers, body = get(f"/slides/{slide.pk}_files/12/1_1.jpeg", session)
    assert status == 200 and body == file_tile(slide.path, 0, 1, 1)
    assert get(f"/slides/{slide.pk}_files/99/0_0.jpeg", session)[0] == 404
    assert get(f"/_tiles/{cached.relative_to(settings.TILE_CACHE_DIR)}", session)[0] == 404


def test_sessions_that_may_not_see_the_slide_get_the_portals_refusal(
    front, client, other_pathologist, slide
):
    deepzoom.render_tile(deepzoom.TileSource(slide.path, slide.sha256), 9, 0, 0)
    url = f"/slides/{slide.pk}_files/9/0_0.jpeg"
    session = session_of(client, other_pathologist)
    status, headers, body = get(url, session)
    assert status == 404 and headers["Content-Type"] != "image/jpeg"
    status, headers, _ = get(url)  # signed out
    assert status == 302 and "/accounts/login/" in headers["Location"]

    CaseAssignment.objects.create(case=slide.case, pathologist=other_pathologist)
    status, headers, _ = get(url, session)  # the same session: a refusal is not kept
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
