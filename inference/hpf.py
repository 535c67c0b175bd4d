"""HPF maps of runs: computing, storing and summarising mitotic counts per 10 HPF."""

from __future__ import annotations

import hashlib

import numpy as np
from django.conf import settings

from cases.services import shared_slide

from .domain import run_domain
from .engine.hpf import LOWER_BARS, HpfResult, hotspot_cell, hpf_counts, window_rectangle
from .engine.tissue import TissueMask, detect_tissue
from .engine.vocabulary import MITOTIC_PHASES
from .grading import UNITS, grade
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


def compute_ai_map(run: InferenceRun, tissue: TissueMask | None = None) -> HpfMap:
    """The AI count map of a successful run, on ``tissue`` (the mask the run was found on)
    or on the slide's tissue detected again from its thumbnail."""
    slide = run.slide
    if not slide.mpp:
        raise MissingScale(f"{slide.original_name} has no µm/px; an admin must set it")
    points = _points(counted_ai_findings(run))
    if tissue is None:
        with shared_slide(slide) as opened:
            tissue = detect_tissue(opened)
    result = hpf_counts(
        points,
        (slide.width, slide.height),
        slide.mpp,
        tissue=tissue,
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
    """What the case page, the viewer, the API and ``manage.py hpf`` report.

    The hotspot is chosen again from the stored grids by the engine's rule, so the
    summary always states the rule that picked it (``hotspot_rule``). On a slide smaller
    than 10 HPF the count is over ``counted_area_mm2`` (``partial``); the grade then uses
    the count extrapolated to 10 HPF, and says so.
    """
    slide = hpf_map.run.slide
    tissue = np.asarray(hpf_map.tissue, np.float32)
    j, i, bar = hotspot_cell(np.asarray(hpf_map.counts), tissue, hpf_map.min_tissue)
    count = int(hpf_map.counts[j][i])
    x, y, w, h = window_rectangle(j, i, hpf_map.step_px, (slide.width, slide.height))
    counted_mm2 = w * h * hpf_map.mpp**2 / 1e6
    smaller = slide.width < hpf_map.window_w_px or slide.height < hpf_map.window_h_px
    per_mm2 = count / counted_mm2
    extrapolated = round(per_mm2 * hpf_map.area_mm2, 1) if smaller else None
    label, rule = grade(tumour_type, count if extrapolated is None else extrapolated, per_mm2)
    if label and extrapolated is not None and UNITS["per_10_hpf"] in rule:
        rule += f", on the count extrapolated from {counted_mm2:.2f} mm² to 10 HPF"
    domain = run_domain(hpf_map.run)
    if hpf_map.run.out_of_domain:  # a count the AI cannot vouch for proposes no grade
        label, rule = None, f"No grade proposed: {domain['message']}"
    return {
        "run": hpf_map.run_id,
        "basis": hpf_map.basis,
        "hotspot": {"x": round(x, 1), "y": round(y, 1), "w": round(w, 1), "h": round(h, 1)},
        "count_per_10_hpf": count,
        "count_per_mm2": round(per_mm2, 3),
        "area_mm2": round(hpf_map.area_mm2, 4),
        "hpf_area_mm2": hpf_map.hpf_area_mm2,
        "mpp": hpf_map.mpp,
        "min_tissue": hpf_map.min_tissue,
        "tissue_rule_relaxed": bool(bar < hpf_map.min_tissue),
        "tissue_threshold": bar,
        "hotspot_tissue": round(float(tissue[j, i]), 3),
        "hotspot_rule": hotspot_rule(hpf_map.min_tissue, bar, counted_mm2 if smaller else None),
        "partial": bool(smaller or bar < hpf_map.min_tissue),
        "counted_area_mm2": round(counted_mm2, 4),
        "count_per_10_hpf_extrapolated": extrapolated,
        "findings_counted": hpf_map.findings_counted,
        "grade": label,
        "grade_rule": rule,
        "unverified": hpf_map.run.out_of_domain,
        "domain": domain,
    }


def _percent(share: float) -> str:
    return f"{share * 100:.0f} %"


def hotspot_rule(min_tissue: float, bar: float, clipped_mm2: float | None = None) -> str:
    """The sentence that says how the hotspot was chosen at tissue ``bar``, and
    (``clipped_mm2``) that the slide is smaller than one 10-HPF window."""
    if bar >= min_tissue:
        rule = (
            "Hotspot: the highest count among 10-HPF windows that are at least "
            f"{_percent(min_tissue)} tissue (ties: more tissue)."
        )
    elif bar > 0:
        rule = (
            f"No 10-HPF window is {_percent(min_tissue)} tissue, so the bar was lowered "
            f"step by step to {_percent(bar)}: hotspot = the highest count among windows "
            f"at least {_percent(bar)} tissue (ties: more tissue)."
        )
    else:
        rule = (
            f"No 10-HPF window is even {_percent(min(LOWER_BARS))} tissue: hotspot = the "
            "highest count among all windows on the slide (ties: more tissue)."
        )
    if clipped_mm2 is not None:
        rule += (
            " The slide is smaller than one 10-HPF window: the window is clipped to the "
            f"slide and counts {clipped_mm2:.2f} mm² (partial)."
        )
    return rule
