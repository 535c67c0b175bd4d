"""Review: decisions on findings, findings the AI missed, sign-out and reopening.

Every change here is recorded in the audit log in the same transaction.
"""

from __future__ import annotations

from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Count, Max, Q, QuerySet
from django.utils import timezone

from cases import audit
from cases.models import Case, CaseAssignment, Slide
from cases.services import change_status
from inference import services as ai
from inference.blinding import blinded_for
from inference.engine.vocabulary import MITOTIC_PHASES
from inference.models import Finding

from . import integrity
from .models import Decision

ADDED_FINDING_RADIUS_UM = 5.0
COMMENT_MAX_CHARS = Decision._meta.get_field("comment").max_length
FINAL_GRADE_MAX_CHARS = Case._meta.get_field("final_grade").max_length
MAX_FINAL_COUNT = 100_000  # per 10 HPF; far above any real count, well inside the column


class ReviewRefused(Exception):
    """A review action that is not allowed; the message says why, ``status`` is the HTTP
    status that fits (400 bad input, 403 not allowed, 409 the case is signed out)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def validate_comment(comment: str) -> None:
    """The one rule for a decision's comment, shared by the page form, the API and
    ``decide``: too long is refused, never cut."""
    if len(comment) > COMMENT_MAX_CHARS:
        raise ValidationError(
            f"The comment is {len(comment):,} characters long; the limit is {COMMENT_MAX_CHARS:,}."
        )


def may_review(user, case: Case) -> bool:
    """Only pathologists assigned to the case decide on its findings."""
    return CaseAssignment.objects.filter(case=case, pathologist=user).exists()


def current_decisions(findings: QuerySet, reviewer=None) -> QuerySet:
    """The latest decision per (finding, reviewer) on ``findings`` (of one reviewer if given)."""
    decisions = Decision.objects.filter(finding__in=findings)
    if reviewer is not None:
        decisions = decisions.filter(reviewer=reviewer)
    latest = decisions.values("finding", "reviewer").annotate(last=Max("id")).values("last")
    return Decision.objects.filter(pk__in=latest)


def reviewer_decisions(findings: QuerySet, slide: Slide, reviewer) -> QuerySet:
    """The reviewer's current decision on each of ``findings`` (some of ``slide``'s), found
    from the reviewer's own decisions on the slide: a few rows to group, however many
    findings the slide has (current_decisions starts from the findings)."""
    mine = Decision.objects.filter(reviewer=reviewer, finding__slide=slide)
    latest = mine.values("finding").annotate(last=Max("id")).values("last")
    return Decision.objects.filter(
        pk__in=latest, finding__in=findings.filter(pk__in=mine.values("finding"))
    )


def latest_decisions(findings: QuerySet, reviewer=None) -> dict[int, Decision]:
    """Each finding's latest decision (by anyone, or by ``reviewer``), by finding id."""
    latest: dict[int, Decision] = {}
    for decision in current_decisions(findings, reviewer).order_by("finding", "-id"):
        latest.setdefault(decision.finding_id, decision)
    return latest


def _locked_open_case(case_id: int) -> Case:
    case = Case.objects.select_for_update().get(pk=case_id)
    if case.status == Case.Status.SIGNED_OUT:
        raise ReviewRefused(f"Case {case.accession} is signed out; it is read-only.", 409)
    return case


def _start_review(case: Case) -> None:
    waiting = {Case.Status.AWAITING_REVIEW, Case.Status.REGISTERED}
    change_status(case.pk, Case.Status.IN_REVIEW, waiting, "the first review action")


def decide(
    finding: Finding,
    reviewer,
    verdict: str,
    *,
    corrected_phase: str = "",
    reason: str = "",
    comment: str = "",
    request=None,
) -> Decision:
    """Record a reviewer's decision on a finding (a new row; earlier ones stay)."""
    if verdict not in Decision.Verdict.values:
        raise ReviewRefused(f"Unknown verdict {verdict!r}: agree, disagree or uncertain.")
    if corrected_phase and corrected_phase not in Finding.Phase.values:
        raise ReviewRefused(f"Unknown phase {corrected_phase!r}.")
    if reason not in Decision.Reason.values:
        raise ReviewRefused(f"Unknown reason {reason!r}.")
    comment = comment.strip()
    try:
        validate_comment(comment)
    except ValidationError as error:
        raise ReviewRefused(error.messages[0]) from None
    if corrected_phase == finding.phase:
        corrected_phase = ""
    with transaction.atomic():
        case = _locked_open_case(finding.slide.case_id)
        if not may_review(reviewer, case):
            raise ReviewRefused("Only pathologists assigned to this case can decide on it.", 403)
        decision = Decision.objects.create(
            finding=finding,
            reviewer=reviewer,
            verdict=verdict,
            corrected_phase=corrected_phase,
            reason=reason,
            comment=comment,
            blinded=case.blinded,
        )
        _start_review(case)
        audit.record(
            "decision",
            actor=reviewer,
            obj=decision,
            case=case,
            request=request,
            details={
                **integrity.decision_record(decision),
                "run": finding.run_id,
                "ai_phase": finding.phase,
                "ai_score": finding.score,
            },
        )
    return decision


def add_finding(slide: Slide, user, x: float, y: float, phase: str, request=None) -> Finding:
    """A mitosis the AI missed, added by a pathologist at level-0 (x, y)."""
    if phase not in MITOTIC_PHASES:
        raise ReviewRefused(f"An added mitosis needs a phase: one of {', '.join(MITOTIC_PHASES)}.")
    if not (0 <= x < slide.width and 0 <= y < slide.height):
        raise ReviewRefused("That point is outside the slide.")
    half = ADDED_FINDING_RADIUS_UM / (slide.mpp or 0.25)
    with transaction.atomic():
        case = _locked_open_case(slide.case_id)
        if not may_review(user, case):
            raise ReviewRefused("Only pathologists assigned to this case can add findings.", 403)
        finding = Finding.objects.create(
            slide=slide,
            source=Finding.Source.PATHOLOGIST,
            x=x,
            y=y,
            box_x0=x - half,
            box_y0=y - half,
            box_x1=x + half,
            box_y1=y + half,
            phase=phase,
            created_by=user,
        )
        _start_review(case)
        audit.record(
            "finding_added",
            actor=user,
            obj=finding,
            case=case,
            request=request,
            details={"slide": slide.pk, "x": round(x, 1), "y": round(y, 1), "phase": phase},
        )
    return finding


def reviewed_findings(slide: Slide, reader=None) -> QuerySet:
    """Findings the reviewed count includes: shown AI findings whose latest decision is
    agree, plus pathologist-added ones nobody disagreed with. On a blinded case a reader's
    count is built from their own decisions only (``reader``; readers read independently)."""
    run, findings = ai.slide_findings(slide)
    own = reader if reader is not None and blinded_for(reader, slide.case) else None
    latest = latest_decisions(findings, own)
    agreed = [f for f, d in latest.items() if d.verdict == Decision.Verdict.AGREE]
    disagreed = [f for f, d in latest.items() if d.verdict == Decision.Verdict.DISAGREE]
    added = findings.filter(source=Finding.Source.PATHOLOGIST).exclude(pk__in=disagreed)
    return findings.filter(pk__in=agreed) | added


def reviewed_counts(slides, reader=None) -> list[tuple[Slide, dict | None]]:
    """Each slide's HPF summary of its reviewed findings (the reader's own on a blinded
    case; None before a run has finished); slides without a µm/px are left out."""
    counted = []
    for slide in slides:
        try:
            counted.append((slide, ai.reviewed_hpf(slide, reviewed_findings(slide, reader))))
        except ai.MissingScale:
            continue
    return counted


def highest_count(summaries) -> dict | None:
    """The summary with the highest count per 10 HPF (the first of equals), None if none."""
    present = [s for s in summaries if s]
    return max(present, key=lambda s: s["count_per_10_hpf"], default=None)


def review_progress(slide: Slide, reviewer) -> dict[str, int]:
    """How many of the findings to review the reviewer has decided: counted AI findings and
    added ones, or every AI finding for a blinded reader (inference.blinding); of those
    decisions, how many were carried from an earlier run, and how many decided findings of
    earlier runs the latest run did not find again (kept, shown "from run N")."""
    key = f"review-totals:{ai.findings_revision(slide)}:{int(blinded_for(reviewer, slide.case))}"
    to_review = ai.findings_to_review(slide, reviewer)  # after the key: never older than it
    mine = reviewer_decisions(to_review, slide, reviewer).aggregate(
        decided=Count("pk"), carried=Count("pk", filter=Q(carried_from__isnull=False))
    )
    # The totals change only with the findings shown (findings never change once stored):
    # kept per what the slide shows and whether the reader is blinded.
    totals = cache.get(key)
    if totals is None:
        totals = to_review.aggregate(total=Count("pk"), kept=Count("pk", filter=Q(kept=True)))
        cache.set(key, totals, ai.REVISION_CACHE_SECONDS)
    return {**mine, **totals}


def sign_out(case: Case, user, final_count: int, final_grade: str, request=None) -> None:
    """Sign the case out with its final count and grade; it becomes read-only."""
    if final_count < 0:
        raise ReviewRefused("The final mitotic count cannot be negative.")
    if final_count > MAX_FINAL_COUNT:
        raise ReviewRefused(f"The final mitotic count cannot be over {MAX_FINAL_COUNT:,}.")
    if len(final_grade) > FINAL_GRADE_MAX_CHARS:
        raise ReviewRefused(f"The grade can be at most {FINAL_GRADE_MAX_CHARS} characters.")
    with transaction.atomic():
        locked = _locked_open_case(case.pk)
        if not may_review(user, locked):
            raise ReviewRefused("Only a pathologist assigned to this case can sign it out.", 403)
        locked.status = Case.Status.SIGNED_OUT
        locked.signed_out_by, locked.signed_out_at = user, timezone.now()
        locked.final_mitotic_count, locked.final_grade = final_count, final_grade
        locked.save()
        audit.record(
            "sign_out",
            actor=user,
            obj=locked,
            case=locked,
            request=request,
            details=integrity.sign_out_record(locked),
        )


def reopen(case: Case, admin, reason: str, request=None) -> None:
    """An admin reopens a signed-out case for review, with a reason on record."""
    if not reason.strip():
        raise ReviewRefused("Give a reason for reopening the case.")
    with transaction.atomic():
        locked = Case.objects.select_for_update().get(pk=case.pk)
        if locked.status != Case.Status.SIGNED_OUT:
            raise ReviewRefused(f"Case {locked.accession} is not signed out.")
        previous = {
            "final_mitotic_count": locked.final_mitotic_count,
            "final_grade": locked.final_grade,
            "signed_out_by": locked.signed_out_by.get_username() if locked.signed_out_by else "",
        }
        locked.status = Case.Status.IN_REVIEW
        locked.signed_out_by = locked.signed_out_at = locked.final_mitotic_count = None
        locked.final_grade = ""
        locked.save()
        audit.record(
            "reopen",
            actor=admin,
            obj=locked,
            case=locked,
            request=request,
            details={"reason": reason.strip(), **previous},
        )
