"""The viewer's review panel (JSON): review state, decisions and their history, added
findings, and the findings as GeoJSON for QuPath."""

from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_GET, require_POST

from cases import audit
from cases.forms import form_refusal
from cases.services import visible_slide
from inference import services as ai
from inference.blinding import blinded_for, hidden_finding_ids, ordered
from inference.models import Finding

from . import services as review
from .api import DecisionSerializer
from .exports import findings_geojson
from .forms import AddedFindingForm, DecisionForm
from .models import Decision


def _visible_finding(request, finding_id: int) -> Finding:
    return get_object_or_404(ai.visible_findings(request.user), pk=finding_id)


def _refusal(message: str, status: int = 400) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


def _reviewed_count(slide, reader) -> dict | None:
    try:
        return ai.reviewed_hpf(slide, review.reviewed_findings(slide, reader))
    except ai.MissingScale as error:
        return {"error": str(error)}


@require_GET
def review_state(request, slide_id: int):
    """What the viewer needs to review a slide: this user's current decisions, progress,
    whether they may decide, and the reviewed count."""
    slide = visible_slide(request, slide_id)
    case = slide.case
    _, findings = ai.slide_findings(slide)
    mine = review.reviewer_decisions(findings, slide, request.user).select_related("reviewer")
    return JsonResponse(
        {
            "can_decide": review.may_review(request.user, case)
            and case.status != case.Status.SIGNED_OUT,
            "signed_out": case.status == case.Status.SIGNED_OUT,
            "blinded": blinded_for(request.user, case),
            "progress": review.review_progress(slide, request.user),
            "decisions": {d["finding"]: d for d in DecisionSerializer(mine, many=True).data},
            "reviewed": _reviewed_count(slide, request.user),
        }
    )


@require_POST
def decide(request, finding_id: int):
    """Record a decision (form fields verdict, corrected_phase, reason, comment)."""
    finding = _visible_finding(request, finding_id)
    form = DecisionForm(request.POST)
    if not form.is_valid():
        return form_refusal(form)
    try:
        decision = review.decide(finding, request.user, **form.cleaned_data, request=request)
    except review.ReviewRefused as refusal:
        return _refusal(str(refusal), refusal.status)
    return JsonResponse(
        {
            "decision": DecisionSerializer(decision).data,
            "progress": review.review_progress(finding.slide, request.user),
            "reviewed": _reviewed_count(finding.slide, request.user),
        }
    )


@require_GET
def decision_history(request, finding_id: int):
    """Every decision on a finding, oldest first (blinded readers see only their own)."""
    finding = _visible_finding(request, finding_id)
    decisions = finding.decisions.select_related("reviewer").order_by("id")
    if blinded_for(request.user, finding.slide.case):
        decisions = decisions.filter(reviewer=request.user)
    return JsonResponse({"decisions": DecisionSerializer(decisions, many=True).data})


@require_POST
def add_finding(request, slide_id: int):
    """Add a mitosis the AI missed at level-0 (x, y) with its phase."""
    slide = visible_slide(request, slide_id)
    form = AddedFindingForm(request.POST)
    if not form.is_valid():
        return form_refusal(form)
    try:
        finding = review.add_finding(slide, request.user, **form.cleaned_data, request=request)
    except review.ReviewRefused as refusal:
        return _refusal(str(refusal), refusal.status)
    return JsonResponse(
        {
            "finding": {"id": finding.pk, "x": finding.x, "y": finding.y, "phase": finding.phase},
            "progress": review.review_progress(slide, request.user),
            "reviewed": _reviewed_count(slide, request.user),
        },
        status=201,
    )


@require_GET
def slide_geojson(request, slide_id: int):
    """The slide's findings with their decisions as GeoJSON that QuPath imports."""
    slide = visible_slide(request, slide_id)
    _, findings = ai.slide_findings(slide)
    findings = list(ordered(findings, request.user, slide.case))
    decisions = Decision.objects.filter(finding__in=findings).select_related("reviewer")
    if blinded_for(request.user, slide.case):
        decisions = decisions.filter(reviewer=request.user)
    by_finding: dict[int, list[Decision]] = {}
    for decision in decisions.order_by("id"):
        by_finding.setdefault(decision.finding_id, []).append(decision)
    audit.record(
        "findings_export",
        actor=request.user,
        obj=slide,
        case=slide.case,
        request=request,
        details={"format": "geojson", "findings": len(findings)},
    )
    hidden = hidden_finding_ids(request.user, slide)
    response = JsonResponse(findings_geojson(findings, by_finding, hidden))
    name = slide.original_name.rsplit(".", 1)[0]
    # the name is the uploader's: quotes, newlines or non-ASCII are escaped, never pasted
    response["Content-Disposition"] = content_disposition_header(
        as_attachment=True, filename=f"{name}-findings.geojson"
    )
    return response
