"""Starting and watching AI runs, and a slide's findings for the viewer."""

import json
from io import BytesIO

import numpy as np
from django.contrib import messages
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.core.serializers.json import DjangoJSONEncoder as JSON
from django.db.models import Count, Max
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_GET, require_POST

from cases.decorators import slide_file_errors
from cases.forms import form_refusal
from cases.services import (
    is_lab_admin,
    shared_slide,
    visible_case,
    visible_cases,
    visible_slide,
)

from . import explain, services
from .api import FindingSerializer, RunSerializer
from .blinding import HIDDEN_TOTALS, blinded_for, hidden_finding_ids, hides, hides_totals, ordered
from .crops import finding_crop_image
from .forms import CropForm
from .heatmap import heatmap_png
from .models import Explanation, Finding, InferenceRun, MilMap


def _admin_only(request) -> None:
    if not is_lab_admin(request.user):
        raise PermissionDenied("Only lab admins can start or stop AI runs.")


def _visible_run(request, run_id: int) -> InferenceRun:
    return get_object_or_404(
        InferenceRun.objects.filter(slide__case__in=visible_cases(request.user)).select_related(
            "slide__case"
        ),
        pk=run_id,
    )


def _queue_unavailable(request, message: str, back: str) -> HttpResponse:
    """503 with the sentence saying what was not done (Redis is down)."""
    return render(request, "503.html", {"message": message, "back": back}, status=503)


@require_POST
def start_run(request, slide_id: int):
    _admin_only(request)
    slide = visible_slide(request, slide_id)
    try:
        services.start_run(slide, request.user)
    except services.QueueUnavailable as error:
        return _queue_unavailable(request, str(error), slide.case.get_absolute_url())
    except services.RunRefused as refusal:
        messages.error(request, str(refusal))
    else:
        messages.success(request, f"AI run queued for {slide.original_name}.")
    return redirect(slide.case)


@require_POST
def cancel_run(request, run_id: int):
    _admin_only(request)
    run = _visible_run(request, run_id)
    services.cancel_run(run, request.user)
    messages.info(request, f"Run {run.pk} cancelled.")
    return redirect(run.slide.case)


@require_POST
def retry_run(request, run_id: int):
    _admin_only(request)
    run = _visible_run(request, run_id)
    try:
        new = services.retry_run(run, request.user)
    except services.QueueUnavailable as error:
        return _queue_unavailable(request, str(error), run.slide.case.get_absolute_url())
    except services.RunRefused as refusal:
        messages.error(request, str(refusal))
    else:
        messages.success(request, f"Run {run.pk} retried as run {new.pk}.")
    return redirect(run.slide.case)


@require_GET
def case_runs(request, case_id: int):
    """Progress of a case's runs, polled by the case page while any is queued or running."""
    case = visible_case(request, case_id)
    runs = [run for slide_runs in services.runs_for_case(case).values() for run in slide_runs]
    data = RunSerializer(runs, many=True, context={"request": request}).data
    return JsonResponse({"runs": data})


@require_GET
def slide_findings(request, slide_id: int):
    """The slide's findings as columns (compact for 10,000 findings), level-0 px.

    The body is cached per slide and what it shows (the shown run, how many findings and
    the newest one; for a blinded reader also their own decisions, which reveal calls), so
    a new run, finding or decision makes a new entry and nothing is ever invalidated by
    hand; the permission check runs on every request."""
    slide = visible_slide(request, slide_id)
    reader = request.user if blinded_for(request.user, slide.case) else None
    key = _findings_cache_key(slide, reader)  # first: a body can only be newer than its key
    body = cache.get(key)
    if body is None:
        run, findings = services.slide_findings(slide)
        body = json.dumps(_findings_payload(run, findings, request.user, slide), cls=JSON)
        cache.set(key, body, services.REVISION_CACHE_SECONDS)
    return HttpResponse(body, content_type="application/json")


def _findings_cache_key(slide, reader) -> str:
    key = f"findings:{services.findings_revision(slide)}"
    if reader is None:
        return key
    decided = Finding.objects.filter(slide=slide, decisions__reviewer=reader).aggregate(
        count=Count("decisions"), newest=Max("decisions")
    )
    return f"{key}:{reader.pk}:{decided['count']}:{decided['newest']}"


def _findings_payload(run, findings, user, slide) -> dict:
    rows = list(
        ordered(findings, user, slide.case).values_list(
            "pk",
            "x",
            "y",
            "box_x0",
            "box_y0",
            "box_x1",
            "box_y1",
            "score",
            "phase",
            "source",
            "run",
        )
    )
    columns = ["id", "x", "y", "x0", "y0", "x1", "y1", "score", "phase", "source", "run"]
    transposed = zip(*rows, strict=True) if rows else ([] for _ in columns)
    data = {name: list(values) for name, values in zip(columns, transposed, strict=True)}
    for name in ("x", "y", "x0", "y0", "x1", "y1"):  # numpy: 10,000 round() calls add up
        data[name] = np.round(np.asarray(data[name], np.float64), 1).tolist()
    data["score"] = [None if v is None else round(v, 4) for v in data["score"]]
    hidden = hidden_finding_ids(user, slide)
    for i, finding_id in enumerate(data["id"]):  # reader study: hidden until decided
        if finding_id in hidden:
            data["score"][i], data["phase"][i] = None, "hidden"
    return {
        "run": None
        if run is None
        else {
            "id": run.pk,
            "detector": str(run.detector),
            "classifier": str(run.classifier),
            "score_threshold": run.detector.spec.get("score_threshold", 0.5),
            "finished_at": run.finished_at,
        },
        "findings": data,
        "blinded": blinded_for(user, slide.case),
    }


def _visible_finding(request, finding_id: int) -> Finding:
    return get_object_or_404(
        services.visible_findings(request.user).select_related("run__detector", "run__classifier"),
        pk=finding_id,
    )


@require_GET
def finding_detail(request, finding_id: int):
    """One finding for the viewer's panel: where it is, what the AI said, with which models."""
    finding = _visible_finding(request, finding_id)
    run = finding.run
    hidden = hides(request.user, finding)
    data = FindingSerializer(finding, context={"hidden_ids": {finding.pk} if hidden else ()}).data
    return JsonResponse(
        {
            **data,  # the API's shape, blinded the API's way; then what the panel shows
            "phase_label": "hidden until you decide" if hidden else finding.get_phase_display(),
            "blinded": hidden,
            "models": run and {"detector": str(run.detector), "classifier": str(run.classifier)},
            "crop_url": reverse("inference:finding_crop", args=[finding.pk]),
        }
    )


@require_GET
@slide_file_errors
def finding_crop(request, finding_id: int):
    """A square around the finding as JPEG: ``px`` pixels (32-512, default 256) at
    ``mpp`` µm/px (0.1-2, default 0.25)."""
    finding = _visible_finding(request, finding_id)
    slide = finding.slide
    if not slide.mpp:
        raise Http404("The slide has no µm/px, so no crop at a known scale")
    form = CropForm(request.GET)
    if not form.is_valid():
        return form_refusal(form)
    size, mpp = form.size_and_scale()
    with shared_slide(slide) as opened:
        image = finding_crop_image(opened, slide.mpp, finding.x, finding.y, size, mpp)
    buffer = BytesIO()
    image.save(buffer, "jpeg", quality=90)
    response = HttpResponse(buffer.getvalue(), content_type="image/jpeg")
    patch_cache_control(response, private=True, max_age=3600)
    return response


def _slide_hpf(request, slide_id: int):
    slide = visible_slide(request, slide_id)
    if hides_totals(request.user, slide.case):
        return slide, None, {"available": False, "error": HIDDEN_TOTALS}
    try:
        hpf_map, hpf_summary = services.slide_hpf(slide)
    except services.MissingScale as error:
        return slide, None, {"available": False, "error": str(error)}
    if hpf_map is None:
        return slide, None, {"available": False, "error": "No AI run has finished yet."}
    return slide, hpf_map, {"available": True, **hpf_summary}


@require_GET
def slide_hpf(request, slide_id: int):
    """The slide's HPF summary and its count grid (for the case page's Plotly heatmap);
    ``available`` is false, with the reason, before a run or without a µm/px."""
    slide, hpf_map, body = _slide_hpf(request, slide_id)
    if hpf_map is None:
        return JsonResponse(body)
    grid = {
        "step_px": hpf_map.step_px,
        "counts": hpf_map.counts,
        "image_url": reverse("inference:hpf_png", args=[slide.pk]),
    }
    return JsonResponse(
        {**body, "grid": grid, "slide": {"width": slide.width, "height": slide.height}}
    )


@require_GET
def slide_hpf_png(request, slide_id: int):
    """The count grid as a translucent heatmap image, one pixel per grid cell."""
    _, hpf_map, body = _slide_hpf(request, slide_id)
    if hpf_map is None:
        raise Http404(body["error"])
    response = HttpResponse(heatmap_png(hpf_map.counts), content_type="image/png")
    patch_cache_control(response, private=True, no_cache=True)
    return response


METHOD_NOTES = {
    "saliency": "How much each pixel's colour changes the class score, locally (gradient size).",
    "integrated_gradients": "Each pixel's share of the score, summed along a path from a "
    "black and a blurred image; red for, blue against.",
    "occlusion": "How much the score drops when a 4 µm patch is blurred out; red for, blue "
    "against.",
    "gradient_shap": "Expected gradients over several reference images (a SHAP estimate); "
    "red for, blue against.",
    "grad_cam": "Which regions the network's last convolutional block looked at (coarse).",
}


def _explainable_finding(request, finding_id: int) -> Finding:
    finding = _visible_finding(request, finding_id)
    if hides(request.user, finding):
        raise PermissionDenied("The AI's evidence stays hidden until you decide (blinded case).")
    return finding


@require_POST
def request_explanations(request, finding_id: int):
    """Queue the finding's attribution maps (all five) for a target class."""
    finding = _explainable_finding(request, finding_id)
    try:
        target, pending = explain.request(finding, request.POST.get("target") or None)
    except explain.ExplanationUnavailable as error:
        return JsonResponse({"error": str(error)}, status=503)
    except explain.ExplanationRefused as refusal:
        return JsonResponse({"error": str(refusal)}, status=400)
    return JsonResponse({"target": target, "pending": pending}, status=202 if pending else 200)


@require_GET
def finding_explanations(request, finding_id: int):
    """The finding's cached maps for a target class, and which are still being computed."""
    finding = _explainable_finding(request, finding_id)
    try:
        version = explain.classifier_version(finding)
        target = explain.target_name(version, finding, request.GET.get("target") or None)
    except explain.ExplanationRefused as refusal:
        return JsonResponse({"error": str(refusal)}, status=400)
    ready = {e.method: e for e in explain.cached(finding, version, target)}
    maps = [
        {
            "method": method,
            "note": METHOD_NOTES[method],
            "signed": method in explain.SIGNED,
            "url": reverse("inference:explanation_png", args=[ready[method].pk]),
            "ms": round(ready[method].compute_ms),
            "quality": ready[method].quality,
            "parameters": ready[method].parameters,
            "range": [ready[method].value_min, ready[method].value_max],
        }
        for method in explain.METHODS
        if method in ready
    ]
    some = next(iter(ready.values()), None)
    crop = None
    if some is not None:
        crop = {"x": some.crop_x, "y": some.crop_y, "size": some.width, "mpp": some.crop_mpp}
    return JsonResponse(
        {
            "target": target,
            "classes": version.spec["class_names"],
            "model": str(version),
            "maps": maps,
            "pending": [m for m in explain.METHODS if m not in ready],
            "failed": ""
            if len(ready) == len(explain.METHODS)
            else explain.failed_reason(finding, target),
            "crop": crop,
            "crop_url": reverse("inference:finding_crop", args=[finding.pk])
            + f"?px={version.spec['patch_px']}&mpp={version.spec['target_mpp']}",
        }
    )


@require_GET
def explanation_png(request, explanation_id: int):
    explanation = get_object_or_404(
        Explanation.objects.filter(finding__slide__case__in=visible_cases(request.user)),
        pk=explanation_id,
    )
    _explainable_finding(request, explanation.finding_id)
    response = HttpResponse(explain.map_png(explanation), content_type="image/png")
    patch_cache_control(response, private=True, max_age=24 * 3600, immutable=True)
    return response


def _slide_mil(request, slide_id: int):
    slide = visible_slide(request, slide_id)
    run = services.latest_run(slide)
    mil = MilMap.objects.filter(run=run).select_related("model_version").first() if run else None
    return slide, mil


@require_GET
def slide_mil(request, slide_id: int):
    """The attention-MIL summary: regions on tissue, regions called tumour, the image;
    ``available`` is false when no run used a MIL model."""
    slide, mil = _slide_mil(request, slide_id)
    if mil is None:
        return JsonResponse({"available": False})
    probability = np.asarray(mil.probability)
    on_tissue = np.asarray(mil.on_tissue, bool)
    columns = len(mil.probability[0])
    return JsonResponse(
        {
            "available": True,
            "model": str(mil.model_version),
            "regions": int(on_tissue.sum()),
            "tumour_regions": int((probability[on_tissue] >= 0.5).sum()),
            "max_probability": float(probability.max()),
            "region_um": round(mil.bag_px * slide.mpp, 1) if slide.mpp else None,
            "image_url": reverse("inference:mil_png", args=[slide.pk]),
            "width_px": columns * mil.bag_px,
        }
    )


@require_GET
def slide_mil_png(request, slide_id: int):
    """Attention per patch as a translucent heatmap, one pixel per 64 µm patch."""
    _, mil = _slide_mil(request, slide_id)
    if mil is None:
        raise Http404("No attention-MIL map for this slide.")
    response = HttpResponse(heatmap_png(mil.attention), content_type="image/png")
    patch_cache_control(response, private=True, max_age=3600)
    return response
