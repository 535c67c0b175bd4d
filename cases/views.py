"""A slide's images: Deep Zoom descriptor and tiles, thumbnail, label and macro."""

from pathlib import Path

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.views import redirect_to_login
from django.http import (
    FileResponse,
    Http404,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseNotModified,
)
from django.shortcuts import get_object_or_404
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET

from slides import associated_image, thumbnail

from . import deepzoom, tiles
from .decorators import slide_file_errors, unavailable
from .forms import ThumbnailForm, error_sentences
from .models import Slide
from .services import shared_slide

TILE_CACHE_SECONDS = 7 * 24 * 3600


def _cached_image_response(request, etag: str, render_bytes, rendered: Path | None = None):
    """Answer If-None-Match with 304; otherwise send the ``rendered`` file if it is there,
    else render, with private caching headers."""
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponseNotModified()
    else:
        response = _file_response(rendered) if rendered else None
        if response is None:
            data = render_bytes()
            if data is None:
                raise Http404("No such tile")
            response = HttpResponse(data, content_type="image/jpeg")
    response["ETag"] = etag
    patch_cache_control(response, private=True, max_age=TILE_CACHE_SECONDS, immutable=True)
    return response


def _file_response(file: Path) -> HttpResponse | None:
    """A rendered JPEG under TILE_CACHE_DIR, or None if it is not there: handed to the front
    web server (X-Accel-Redirect to TILE_ACCEL_REDIRECT) when one serves the cache, else
    sent by the WSGI server's file wrapper (gunicorn: sendfile, no copy through Python)."""
    if settings.TILE_ACCEL_REDIRECT:
        if not file.is_file():
            return None
        response = HttpResponse(content_type="image/jpeg")
        relative = file.relative_to(settings.TILE_CACHE_DIR).as_posix()
        response["X-Accel-Redirect"] = settings.TILE_ACCEL_REDIRECT + relative
        return response
    try:
        return FileResponse(file.open("rb"), content_type="image/jpeg")
    except OSError:  # not rendered yet, or an unusable cache
        return None


def _tile_slide(request, slide_id: int) -> Slide:
    """Only the columns tile serving needs, with the permission check in the same query."""
    return get_object_or_404(
        Slide.objects.visible_to(request.user).only("file", "sha256"), pk=slide_id
    )


def _granted_tile_source(request, slide_id: int) -> deepzoom.TileSource | None:
    """The slide's tile source if this session may see it; None for a signed-out visitor.

    A recent grant for the session answers without touching the database; otherwise
    the full check runs (session, user, assignment) and its answer is remembered.
    """
    cookie = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    source = deepzoom.tile_grants.get(cookie, slide_id)
    if source is not None:
        return source
    return _checked_tile_source(request, slide_id)


def _checked_tile_source(request, slide_id: int) -> deepzoom.TileSource | None:
    """The full check (session, user, assignment), remembered as a fresh grant; None for a
    signed-out visitor, 404 for a slide the user may not see."""
    if not request.user.is_authenticated:
        return None
    slide = _tile_slide(request, slide_id)
    source = deepzoom.TileSource(slide.path, slide.sha256)
    deepzoom.tile_grants.put(request.session.session_key, slide_id, source)
    deepzoom.mark_viewed(slide.sha256)
    return source


@require_GET
@slide_file_errors
def slide_dzi(request, slide_id: int):
    slide = _tile_slide(request, slide_id)
    response = HttpResponse(deepzoom.dzi_xml(slide.path), content_type="application/xml")
    patch_cache_control(response, private=True, max_age=TILE_CACHE_SECONDS)
    return response


@login_not_required  # checked below, through the grant cache
@require_GET
@slide_file_errors
def slide_tile(request, slide_id: int, level: int, col: int, row: int):
    slide = _granted_tile_source(request, slide_id)
    if slide is None:
        return redirect_to_login(request.get_full_path())
    etag = deepzoom.tile_etag(slide.sha256, level, col, row)
    try:
        return _cached_image_response(
            request,
            etag,
            lambda: deepzoom.render_tile(slide, level, col, row),
            deepzoom.tile_file(slide.sha256, level, col, row),
        )
    except deepzoom.TileUndecodable:
        tiles.note_undecodable(slide.sha256, level, col, row)
        return unavailable("This part of the slide cannot be decoded: the slide file is damaged.")


@login_not_required  # checked below, through the grant cache
@require_GET
def slide_tile_grant(request, slide_id: int):
    """For the front web server's auth_request (deploy/nginx.conf): 200 with the slide's
    tile-cache folder when this session may see the slide's tiles, which the server then
    sends itself and may trust for TILE_GRANT_SECONDS from this full check (never from
    an older grant); 403 otherwise (never cached there: the portal then answers the tile
    request itself)."""
    try:
        source = _checked_tile_source(request, slide_id)
    except Http404:
        source = None
    if source is None:
        return HttpResponse(status=403)
    response = HttpResponse()
    response["X-Tile-Folder"] = deepzoom.slide_cache_dir(source.sha256).name
    response["X-Accel-Expires"] = str(int(settings.TILE_GRANT_SECONDS))
    patch_cache_control(response, private=True, no_store=True)
    return response


@require_GET
@slide_file_errors
def slide_thumbnail(request, slide_id: int):
    slide = _tile_slide(request, slide_id)
    form = ThumbnailForm(request.GET)
    if not form.is_valid():
        return HttpResponseBadRequest(error_sentences(form)[0], content_type="text/plain")
    size = 160 if form.cleaned_data["size"] == "small" else 400
    etag = f'"{slide.sha256[:24]}-thumb-{size}"'

    def render_thumbnail():
        with shared_slide(slide) as opened:
            return deepzoom.encode_jpeg(thumbnail(opened, size))

    return _cached_image_response(request, etag, render_thumbnail)


@require_GET
@slide_file_errors
def slide_associated_image(request, slide_id: int, name: str):
    slide = _tile_slide(request, slide_id)
    if name not in deepzoom.handles.get(slide.path).slide.associated_images:
        raise Http404(f"This slide has no {name} image")
    etag = f'"{slide.sha256[:24]}-{name}"'

    def render_image():
        with shared_slide(slide) as opened:
            return deepzoom.encode_jpeg(associated_image(opened, name))

    return _cached_image_response(request, etag, render_image)
