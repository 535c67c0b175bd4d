"""The review pages: the case queue, the case page (runs, HPF summary, slide upload,
sign-out and reopening)."""

from pathlib import Path

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Count, Q
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from cases import audit, deepzoom
from cases.forms import SlideUploadForm, flash_errors
from cases.models import Case, is_lab_admin
from cases.registration import SlideRejected, register_slide
from cases.services import visible_case, visible_slide
from inference import services as inference_services
from inference.blinding import HIDDEN_TOTALS, hides_totals
from inference.domain import run_domain
from inference.models import Finding

from . import services as review
from . import vocabulary
from .forms import QueueFilterForm, ReopenForm, SignOutForm
from .models import Decision


@require_GET
def queue(request):
    form = QueueFilterForm(request.GET or None)
    cases = (
        Case.objects.visible_to(request.user)
        .select_related("patient")
        .annotate(slide_count=Count("slides", distinct=True))
        .with_pathologists()
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
        "review/queue.html",
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
        ai = status[case.pk]["findings" if hides_totals(user, case) else "to_review"]
        case.to_review = ai + added.get(case.pk, 0)  # blinded: every AI finding, not its calls
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
        slide.hpf = _hpf_summary(slide, request.user)
        slide.domain = _slide_domain(slide)
    context = {
        "case": case,
        "slides": slides,
        "out_of_domain": [s for s in slides if s.domain and s.domain["status"] == "out_of_domain"],
        "sign_out": _sign_out_defaults(case, slides, request.user),
        "may_review": review.may_review(request.user, case),
        "assigned": case.pathologists.order_by("username"),
        "is_admin": is_lab_admin(request.user),
        "upload_form": SlideUploadForm(),
    }
    return render(request, "review/case_detail.html", context, status=status)


def _sign_out_defaults(case: Case, slides, reader) -> dict:
    """Prefill the sign-out form from the highest reviewed count among the case's slides
    (a blinded reader's own; the AI count where nothing has been reviewed), never from a
    slide the AI was out of its domain on (those are listed as ``unverified``)."""
    counted = review.reviewed_counts(slides, reader)
    for slide, counts in counted:
        slide.reviewed = counts
    unverified = [slide.original_name for slide, c in counted if c and c["unverified"]]
    best = review.highest_count(c for _, c in counted if c and not c["unverified"])
    return {**(best or {}), "unverified": unverified}


def _slide_domain(slide) -> dict | None:
    """The domain status of the slide's latest successful run (None before one)."""
    run = inference_services.latest_run(slide)
    return run_domain(run) if run else None


def _hpf_summary(slide, user) -> dict | None:
    """The slide's HPF summary, or {"error": ...} saying why there is none; a blinded
    reader gets {"hidden": ...} saying why they see only their reviewed count."""
    if hides_totals(user, slide.case):
        return {"hidden": HIDDEN_TOTALS}
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
            request=request,
        )
    except SlideRejected as rejection:
        messages.error(request, f"Slide refused: {rejection}")
        return case_page(request, case, status=400)
    messages.success(
        request, f"Registered {slide.original_name} ({slide.width}×{slide.height} px)."
    )
    return redirect(case)


@require_POST
def sign_out(request, case_id: int):
    case = visible_case(request, case_id)
    form = SignOutForm(request.POST)
    if not form.is_valid():
        flash_errors(request, form)
        return case_page(request, case, status=400)
    try:
        review.sign_out(
            case,
            request.user,
            form.cleaned_data["final_mitotic_count"],
            form.cleaned_data["final_grade"],
            request=request,
        )
    except review.ReviewRefused as refusal:
        messages.error(request, str(refusal))
    else:
        messages.success(request, f"Case {case.accession} signed out.")
    return redirect(case)


@require_POST
def reopen(request, case_id: int):
    if not is_lab_admin(request.user):
        raise PermissionDenied("Only lab admins can reopen a signed-out case.")
    case = visible_case(request, case_id)
    form = ReopenForm(request.POST)
    if not form.is_valid():
        flash_errors(request, form)
        return case_page(request, case, status=400)
    try:
        review.reopen(case, request.user, form.cleaned_data["reason"], request=request)
    except review.ReviewRefused as refusal:
        messages.error(request, str(refusal))
    else:
        messages.success(request, f"Case {case.accession} reopened.")
    return redirect(case)


@require_GET
def viewer(request, slide_id: int):
    slide = visible_slide(request, slide_id)
    audit.record("slide_view", actor=request.user, obj=slide, case=slide.case, request=request)
    context = {
        "slide": slide,
        "case": slide.case,
        "vocabulary": vocabulary.for_pages(),
        "domain": _slide_domain(slide),
        # In the descriptor's URL, and so in every tile's (OpenSeadragon carries its query
        # over): tiles are cached as immutable, so new tile settings need new URLs.
        "tiles_version": deepzoom.tile_settings_key(),
    }
    return render(request, "review/viewer.html", context)
