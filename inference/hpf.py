"""HPF maps of runs: computing, storing and summarising mitotic counts per 10 HPF."""

from __future__ import annotations

import hashlib

import numpy as np
from django.conf import settings

from cases.services import shared_slide

from .engine.hpf import HpfResult, hpf_counts
from .engine.tissue import detect_tissue
from .engine.vocabulary import MITOTIC_PHASES
from .grading import grade
from .models import HpfMap, InferenceRun


class MissingScale(ValueError):
    """The slide has no µm/px, so an HPF has no size in pixels."""


def _points(findings) -> np.ndarray:
    return np.array(list(findings.values_list("x", "y")), np.float64).reshape(-1, 2)


def counted_ai_findings(run: InferenceRun):
    """AI findings the AI count includes: at the run's operating point, a mitotic phase."""
    threshold = run.parameters.get("score_threshold") or run.detector.spec["score_threshold"]
    return run.findings.filter(score__gte=threshold, phase__in=MITOTIC_PHASES)


def _save(
    run: InferenceRun, basis: str, result: HpfResult, mpp: float, n: int, digest: str = ""
) -> HpfMap:
    values = {
        "counts": result.counts.tolist(),
        "tissue": np.round(result.tissue, 3).tolist(),
        "step_px": result.step,
        "window_w_px": result.window[0],
        "window_h_px": result.window[1],
        "hpf_area_mm2": round(result.area_mm2 / 10, 9),
        "mpp": mpp,
        "min_tissue": result.min_tissue,
        "hotspot_x": result.hotspot[0],
        "hotspot_y": result.hotspot[1],
        "hotspot_count": result.hotspot_count,
        "tissue_rule_relaxed": result.relaxed,
        "findings_counted": n,
        "inputs_digest": digest,
    }
    hpf_map, _ = HpfMap.objects.update_or_create(run=run, basis=basis, defaults=values)
    return hpf_map


def compute_ai_map(run: InferenceRun) -> HpfMap:
    """The AI count map of a successful run (tissue from the slide's thumbnail)."""
    slide = run.slide
    if not slide.mpp:
        raise MissingScale(f"{slide.original_name} has no µm/px; an admin must set it")
    points = _points(counted_ai_findings(run))
    result = hpf_counts(
        points,
        (slide.width, slide.height),
        slide.mpp,
        tissue=detect_tissue(shared_slide(slide)),
        hpf_area_mm2=settings.HPF_AREA_MM2,
        min_tissue=settings.HPF_MIN_TISSUE,
    )
    return _save(run, HpfMap.Basis.AI, result, slide.mpp, len(points))


def compute_reviewed_map(run: InferenceRun, findings) -> HpfMap:
    """The reviewed count map of a run from the reviewed ``findings`` (a queryset), on
    the tissue of the run's AI map."""
    ai_map = run.hpf_maps.filter(basis=HpfMap.Basis.AI).first() or compute_ai_map(run)
    slide = run.slide
    points = _points(findings)
    digest = _inputs_digest(points, ai_map)
    stored = run.hpf_maps.filter(basis=HpfMap.Basis.REVIEWED, inputs_digest=digest).first()
    if stored is not None:  # nothing decided since: no recount, no write on a page view
        return stored
    result = hpf_counts(
        points,
        (slide.width, slide.height),
        ai_map.mpp,
        window_tissue=np.asarray(ai_map.tissue),
        hpf_area_mm2=ai_map.hpf_area_mm2,
        min_tissue=ai_map.min_tissue,
    )
    return _save(run, HpfMap.Basis.REVIEWED, result, ai_map.mpp, len(points), digest)


def _inputs_digest(points: np.ndarray, ai_map: HpfMap) -> str:
    """What a reviewed map depends on: the reviewed points and the AI map (its tissue and
    scale) as last computed."""
    ordered = points[np.lexsort(points.T[::-1])]  # a queryset's order is not the point
    digest = hashlib.blake2b(np.ascontiguousarray(ordered).tobytes(), digest_size=16)
    digest.update(f"{ai_map.pk}:{ai_map.updated_at.isoformat()}".encode())
    return digest.hexdigest()


def summary(hpf_map: HpfMap, tumour_type: str) -> dict:
    """What the case page, the viewer, the API and ``manage.py hpf`` report."""
    label, rule = grade(tumour_type, hpf_map.hotspot_count, hpf_map.per_mm2)
    return {
        "run": hpf_map.run_id,
        "basis": hpf_map.basis,
        "hotspot": {
            "x": round(hpf_map.hotspot_x, 1),
            "y": round(hpf_map.hotspot_y, 1),
            "w": round(hpf_map.window_w_px, 1),
            "h": round(hpf_map.window_h_px, 1),
        },
        "count_per_10_hpf": hpf_map.hotspot_count,
        "count_per_mm2": round(hpf_map.per_mm2, 3),
        "area_mm2": round(hpf_map.area_mm2, 4),
        "hpf_area_mm2": hpf_map.hpf_area_mm2,
        "mpp": hpf_map.mpp,
        "min_tissue": hpf_map.min_tissue,
        "tissue_rule_relaxed": hpf_map.tissue_rule_relaxed,
        "findings_counted": hpf_map.findings_counted,
        "grade": label,
        "grade_rule": rule,
    }
