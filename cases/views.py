"""Pages and Deep Zoom endpoints for cases and slides."""

import logging
from functools import wraps
from pathlib import Path

import openslide
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.http import Http404, HttpResponse, HttpResponseBadRequest, HttpResponseNotModified
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET, require_POST

from inference import services as inference_services
from inference.engine.slide_io import thumbnail
from inference.engine.tiled_tiff import ReadTooLarge
from inference.models import Finding

from . import audit, deepzoom, review, tiles
from .forms import (
    QueueFilterForm,
    SlideUploadForm,
    ThumbnailForm,
    error_sentences,
    flash_errors,
)
from .models import Case, Decision, Slide, is_lab_admin
from .registration import SlideRejected, register_slide
from .services import visible_case, visible_slide

TILE_CACHE_SECONDS = 7 * 24 * 3600

log = logging.getLogger(__name__)


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
    status, query, page_number = "", "", 1
    if form.is_valid():
        status, query = form.cleaned_data["status"], form.cleaned_data["q"].strip()
        page_number = form.cleaned_data["page"] or 1
    elif form.is_bound:
        flash_errors(request, form)
    if status == "":
        cases = cases.exclude(status=Case.Status.SIGNED_OUT)
    elif status != "all":
        cases = cases.filter(status=status)
    if query:
        cases = cases.filter(
            Q(accession__icontains=query) | Q(patient__external_ref__icontains=query)
        )
    page = Paginator(cases, 50).get_page(page_number)
    _attach_review_status(list(page), request.user)
    return render(
        request,
        "cases/queue.html",
        {"form": form, "page": page, "is_admin": is_lab_admin(request.user)},
        status=400 if form.errors else 200,
    )


def _attach_review_status(cases: list[Case], user) -> None:
    """AI progress and findings decided / to review on each case of a queue page, in a
    fixed number of queries whatever the page holds."""
    status = inference_services.ai_status_by_case([c.pk for c in cases])
    runs = [r for s in status.values() for r in s["runs"]]
    added = dict(
        Finding.objects.filter(slide__case__in=cases, source=Finding.Source.PATHOLOGIST)
        .values_list("slide__case_id")
        .annotate(n=Count("pk"))
    )
    decided = dict(
        Decision.objects.filter(reviewer=user, finding__slide__case__in=cases)
        .filter(Q(finding__run_id__in=runs) | Q(finding__source=Finding.Source.PATHOLOGIST))
        .values_list("finding__slide__case_id")
        .annotate(n=Count("finding", distinct=True))
    )
    for case in cases:
        case.ai_progress = status[case.pk]["progress"]
        case.to_review = status[case.pk]["to_review"] + added.get(case.pk, 0)
        case.decided = decided.get(case.pk, 0)


@require_GET
def case_detail(request, case_id: int):
    return case_page(request, visible_case(request, case_id))


def case_page(request, case: Case, status: int = 200):
    """The case page; a refused form posted from it renders it again with status 400
    and the form's problems as messages."""
    runs = inference_services.runs_for_case(case)
    slides = list(case.slides.all())
    for slide in slides:
        slide.run_history = runs.get(slide.pk, [])
        slide.hpf = _hpf_summary(slide)
    context = {
        "case": case,
        "slides": slides,
        "sign_out": _sign_out_defaults(case, slides),
        "may_review": review.may_review(request.user, case),
        "assigned": case.pathologists.all(),
        "is_admin": is_lab_admin(request.user),
        "upload_form": SlideUploadForm(),
    }
    return render(request, "cases/case_detail.html", context, status=status)


def _sign_out_defaults(case: Case, slides) -> dict:
    """Prefill the sign-out form from the highest reviewed count among the case's slides
    (the AI count where nothing has been reviewed)."""
    best = None
    for slide in slides:
        try:
            counts = inference_services.reviewed_hpf(slide, review.reviewed_findings(slide))
        except inference_services.MissingScale:
            continue
        slide.reviewed = counts
        if counts and (best is None or counts["count_per_10_hpf"] > best["count_per_10_hpf"]):
            best = counts
    return best or {}


def _hpf_summary(slide) -> dict | None:
    """The slide's HPF summary, or {"error": ...} saying why there is none."""
    try:
        return inference_services.slide_hpf(slide)[1]
    except inference_services.MissingScale as error:
        return {"error": str(error)}


@require_POST
def upload_slide(request, case_id: int):
    if not is_lab_admin(request.user):
        raise PermissionDenied("Only lab admins can register slides.")
    case = visible_case(request, case_id)
    form = SlideUploadForm(request.POST, request.FILES)
    if not form.is_valid():
        flash_errors(request, form)
        return case_page(request, case, status=400)
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
        return case_page(request, case, status=400)
    messages.success(
        request, f"Registered {slide.original_name} ({slide.width}×{slide.height} px)."
    )
    return redirect(case)


@require_GET
def viewer(request, slide_id: int):
    slide = visible_slide(request, slide_id)
    audit.record("slide_view", actor=request.user, obj=slide, case=slide.case, request=request)
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
    """A slide file that went missing or unreadable on disk, or a read past the memory
    bound, answers 503, not a 500 (and never with the server's path to the file)."""

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        try:
            return view(request, *args, **kwargs)
        except ReadTooLarge as error:
            return _unavailable(f"The slide cannot be shown: {error}.")
        except (openslide.OpenSlideError, OSError) as error:
            log.warning("Slide file unreadable (%s): %s", request.path, error)
            return _unavailable("The slide file cannot be read.")

    return wrapper


def _unavailable(message: str) -> HttpResponse:
    return HttpResponse(message, status=503, content_type="text/plain")


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
            request, etag, lambda: deepzoom.render_tile(slide, level, col, row)
        )
    except deepzoom.TileUndecodable:
        tiles.note_undecodable(slide.sha256, level, col, row)
        return _unavailable("This part of the slide cannot be decoded: the slide file is damaged.")


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
        return deepzoom.encode_jpeg(thumbnail(deepzoom.handles.get(slide.path).slide, size))

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
