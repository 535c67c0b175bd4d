"""Pages and Deep Zoom endpoints for cases and slides."""

from functools import wraps
from pathlib import Path

import openslide
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404, HttpResponse, HttpResponseNotModified
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET, require_POST

from . import deepzoom
from .forms import QueueFilterForm, SlideUploadForm
from .models import Case, Slide, is_lab_admin
from .registration import SlideRejected, register_slide

TILE_CACHE_SECONDS = 7 * 24 * 3600


def visible_case(request, case_id: int) -> Case:
    """The case if the user may see it; 404 otherwise, so existence does not leak."""
    return get_object_or_404(Case.objects.visible_to(request.user), pk=case_id)


def visible_slide(request, slide_id: int) -> Slide:
    return get_object_or_404(
        Slide.objects.visible_to(request.user).select_related("case"), pk=slide_id
    )


@require_GET
def queue(request):
    form = QueueFilterForm(request.GET or None)
    cases = (
        Case.objects.visible_to(request.user)
        .select_related("patient")
        .annotate(slide_count=Count("slides", distinct=True))
        .prefetch_related("pathologists")
        .order_by("priority", "created_at")
    )
    status, query = "", ""
    if form.is_valid():
        status, query = form.cleaned_data["status"], form.cleaned_data["q"].strip()
    if status == "":
        cases = cases.exclude(status=Case.Status.SIGNED_OUT)
    elif status != "all":
        cases = cases.filter(status=status)
    if query:
        cases = cases.filter(
            Q(accession__icontains=query) | Q(patient__external_ref__icontains=query)
        )
    page = Paginator(cases, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "cases/queue.html",
        {"form": form, "page": page, "is_admin": is_lab_admin(request.user)},
    )


@require_GET
def case_detail(request, case_id: int):
    case = visible_case(request, case_id)
    context = {
        "case": case,
        "slides": case.slides.all(),
        "assigned": case.pathologists.all(),
        "is_admin": is_lab_admin(request.user),
        "upload_form": SlideUploadForm(),
    }
    return render(request, "cases/case_detail.html", context)


@require_POST
def upload_slide(request, case_id: int):
    if not is_lab_admin(request.user):
        raise PermissionDenied("Only lab admins can register slides.")
    case = visible_case(request, case_id)
    form = SlideUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        for error in form.errors.get("file", []) + form.errors.get("label", []):
            messages.error(request, error)
        return redirect(case)
    upload = form.cleaned_data["file"]
    try:
        slide = register_slide(
            Path(upload.temporary_file_path()),  # uploads always stream to disk (settings)
            case,
            upload.name,
            request.user,
            form.cleaned_data["label"],
        )
    except SlideRejected as rejection:
        messages.error(request, f"Slide refused: {rejection}")
    else:
        messages.success(
            request, f"Registered {slide.original_name} ({slide.width}×{slide.height} px)."
        )
    return redirect(case)


@require_GET
def viewer(request, slide_id: int):
    slide = visible_slide(request, slide_id)
    return render(request, "cases/viewer.html", {"slide": slide, "case": slide.case})


def _cached_image_response(request, etag: str, render_bytes) -> HttpResponse:
    """Answer If-None-Match with 304; otherwise render, with private caching headers."""
    if etag in request.headers.get("If-None-Match", ""):
        response = HttpResponseNotModified()
    else:
        data = render_bytes()
        if data is None:
            raise Http404("No such tile")
        response = HttpResponse(data, content_type="image/jpeg")
    response["ETag"] = etag
    patch_cache_control(response, private=True, max_age=TILE_CACHE_SECONDS, immutable=True)
    return response


def slide_file_errors(view):
    """A slide file that went missing or unreadable on disk answers 503, not a 500."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except (openslide.OpenSlideError, OSError) as error:
            return HttpResponse(
                f"The slide file cannot be read: {error}", status=503, content_type="text/plain"
            )

    return wrapper


def _tile_slide(request, slide_id: int) -> Slide:
    """Only the columns tile serving needs, with the permission check in the same query."""
    return get_object_or_404(
        Slide.objects.visible_to(request.user).only("file", "sha256"), pk=slide_id
    )


@require_GET
@slide_file_errors
def slide_dzi(request, slide_id: int):
    slide = _tile_slide(request, slide_id)
    response = HttpResponse(deepzoom.dzi_xml(slide.path), content_type="application/xml")
    patch_cache_control(response, private=True, max_age=TILE_CACHE_SECONDS)
    return response


@require_GET
@slide_file_errors
def slide_tile(request, slide_id: int, level: int, col: int, row: int):
    slide = _tile_slide(request, slide_id)
    etag = deepzoom.tile_etag(slide.sha256, level, col, row)
    return _cached_image_response(
        request, etag, lambda: deepzoom.render_tile(slide.path, slide.sha256, level, col, row)
    )


@require_GET
@slide_file_errors
def slide_thumbnail(request, slide_id: int):
    slide = _tile_slide(request, slide_id)
    size = 400 if request.GET.get("size") != "small" else 160
    etag = f'"{slide.sha256[:24]}-thumb-{size}"'

    def render_thumbnail():
        image = deepzoom.handles.get(slide.path).slide.get_thumbnail((size, size))
        return deepzoom.encode_jpeg(image.convert("RGB"))

    return _cached_image_response(request, etag, render_thumbnail)


@require_GET
@slide_file_errors
def slide_associated_image(request, slide_id: int, name: str):
    slide = _tile_slide(request, slide_id)
    images = deepzoom.handles.get(slide.path).slide.associated_images
    if name not in images:
        raise Http404(f"This slide has no {name} image")
    etag = f'"{slide.sha256[:24]}-{name}"'
    return _cached_image_response(
        request, etag, lambda: deepzoom.encode_jpeg(images[name].convert("RGB"))
    )
