"""Decisions survive AI re-runs.

When a run becomes a slide's shown run, every reader's current decision on an AI finding
of an earlier run moves to the new run's finding within 7.5 µm of it (the MIDOG match
radius), as a new Decision that names the one it was carried from and is audited like any
other. A decided finding the new run did not find again stays shown, marked as kept
("from run N"), so no decision drops out of view and none is counted twice.
"""

from __future__ import annotations

import numpy as np
from django.db.models import QuerySet

from cases import audit
from inference.models import Finding, InferenceRun
from inference.tools.scoring import MIDOG_RADIUS_UM, match_points

from . import integrity
from .models import Decision
from .services import current_decisions

CARRY_RADIUS_UM = MIDOG_RADIUS_UM


def _pending_decisions(run: InferenceRun) -> QuerySet:
    """Current decisions on the slide's AI findings of other runs not yet carried onward."""
    earlier = Finding.objects.filter(slide_id=run.slide_id, source=Finding.Source.AI).exclude(
        run=run
    )
    return (
        current_decisions(earlier)
        .filter(carried_to=None)
        .select_related("finding", "reviewer")
        .order_by("id")
    )


def _matches(old: list[Finding], new: list[Finding], radius_px: float) -> dict[int, Finding]:
    """Old finding id → the new finding it was found again as (one-to-one, nearest first,
    the more confident old finding choosing first)."""
    if not old or not new:
        return {}
    pairs = match_points(
        [(f.x, f.y) for f in old],
        [f.score or 0.0 for f in old],
        [(f.x, f.y) for f in new],
        radius_px,
    )
    return {old[i].pk: new[j] for i, j in pairs}


def _carried_phase(decision: Decision, target: Finding) -> str:
    """The phase correction on ``target`` that keeps the reader's call: an agreement carries
    the phase they agreed with, which may differ from the new finding's."""
    phase = decision.corrected_phase
    if decision.verdict == Decision.Verdict.AGREE:
        phase = phase or decision.finding.phase
    return "" if phase == target.phase else phase


def _carry(decision: Decision, target: Finding, run: InferenceRun, distance_um: float):
    carried = Decision.objects.create(
        finding=target,
        reviewer=decision.reviewer,
        verdict=decision.verdict,
        corrected_phase=_carried_phase(decision, target),
        reason=decision.reason,
        comment=decision.comment,
        blinded=decision.blinded,
        carried_from=decision,
    )
    audit.record(
        "decision_carried",
        obj=carried,
        case=run.slide.case,
        details={
            **integrity.decision_record(carried),
            "run": run.pk,
            "from_finding": decision.finding_id,
            "from_run": decision.finding.run_id,
            "distance_um": round(distance_um, 2),
            "ai_phase": target.phase,
            "ai_score": target.score,
        },
    )


def carry_decisions(run: InferenceRun) -> dict[str, int]:
    """Carry the slide's pending decisions to ``run``'s findings (call in the transaction
    that makes ``run`` the shown run); returns how many decisions were carried and how many
    decided findings stay shown from earlier runs."""
    pending = list(_pending_decisions(run))
    if not pending:
        return {"decisions_carried": 0, "findings_kept": 0}
    mpp = run.slide.mpp
    old = list({d.finding_id: d.finding for d in pending}.values())
    new = list(Finding.objects.filter(run=run))
    found_again = _matches(old, new, CARRY_RADIUS_UM / mpp)
    for decision in pending:
        target = found_again.get(decision.finding_id)
        if target is not None:
            offset = np.hypot(target.x - decision.finding.x, target.y - decision.finding.y)
            _carry(decision, target, run, float(offset) * mpp)
    kept = [f.pk for f in old if f.pk not in found_again]
    Finding.objects.filter(pk__in=found_again).update(kept=False)
    Finding.objects.filter(pk__in=kept).update(kept=True)
    carried = sum(d.finding_id in found_again for d in pending)
    return {"decisions_carried": carried, "findings_kept": len(kept)}


def on_run_succeeded(sender, run: InferenceRun, **kwargs) -> dict[str, int]:
    """``inference.signals.run_succeeded`` receiver."""
    return carry_decisions(run)
