"""The one rule for reader studies: on a blinded case, a pathologist does not see the AI's
call (score, phase, evidence) on a finding until they have decided it, nor the AI's
totals (counts by phase, the AI's HPF count, grade and hotspot) at all. Lab admins see
all. Every page, JSON view, API endpoint, export and filter asks this module.

Decisions belong to the review app; this module asks for them through the findings'
reverse relation (``decisions``) so that the AI side never imports review.
"""

from django.db.models import F, QuerySet

from cases.models import Case, Slide, is_lab_admin

from .models import Finding

HIDDEN_FILTERS = (
    "This case is blinded: filtering by the AI's phase or score would reveal the calls "
    "you have not decided yet. Filter by source, or decide the findings first."
)
HIDDEN_TOTALS = (
    "This case is blinded: the AI's count, grade and hotspot stay hidden from its readers; "
    "your reviewed count is in the viewer's review panel."
)
RUN_COUNTS_BY_CALL = ("by_phase", "to_review")  # totals of the AI's phase calls


def blinded_for(user, case: Case) -> bool:
    """Whether the AI's calls are hidden from this user on this case."""
    return case.blinded and not is_lab_admin(user)


def hides_totals(user, case: Case) -> bool:
    """Whether the AI's totals on this case are hidden from this user: whenever its calls
    are, signed out or not (a reopened case is read again by the same readers)."""
    return blinded_for(user, case)


def revealed_finding_ids(user, slide: Slide) -> set[int]:
    """Findings of the slide whose AI call this user has earned by deciding them."""
    return set(
        Finding.objects.filter(slide=slide, decisions__reviewer=user).values_list("pk", flat=True)
    )


def hidden_finding_ids(user, slide: Slide) -> set[int]:
    """The slide's AI findings whose call is hidden from this user (none unless blinded)."""
    if not blinded_for(user, slide.case):
        return set()
    return set(
        slide.findings.filter(source=Finding.Source.AI)
        .exclude(pk__in=revealed_finding_ids(user, slide))
        .values_list("pk", flat=True)
    )


def hides(user, finding: Finding) -> bool:
    """Whether this finding's AI call is hidden from this user."""
    return (
        finding.source == Finding.Source.AI
        and blinded_for(user, finding.slide.case)
        and not finding.decisions.filter(reviewer=user).exists()
    )


def ordered(findings: QuerySet, user, case: Case) -> QuerySet:
    """Findings by the AI's score, best first; for a blinded reader by position (top to
    bottom, left to right), so that the order ranks nothing."""
    if blinded_for(user, case):
        return findings.order_by("y", "x", "pk")
    return findings.order_by(F("score").desc(nulls_last=True), "pk")


def run_counts(user, case: Case, counts: dict) -> dict:
    """A run's counts as this user may see them (without the phase totals if hidden)."""
    if not hides_totals(user, case):
        return counts
    return {k: v for k, v in counts.items() if k not in RUN_COUNTS_BY_CALL}
