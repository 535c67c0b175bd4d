"""The one rule for reader studies: on a blinded case, a pathologist does not see the AI's
call (score, phase, evidence) on a finding until they have decided it. Lab admins see all.

Decisions belong to the review app; this module asks for them through the findings'
reverse relation (``decisions``) so that the AI side never imports review.
"""

from cases.models import Case, Slide, is_lab_admin

from .models import Finding


def blinded_for(user, case: Case) -> bool:
    """Whether the AI's calls are hidden from this user on this case."""
    return case.blinded and not is_lab_admin(user)


def revealed_finding_ids(user, slide: Slide) -> set[int]:
    """Findings of the slide whose AI call this user has earned by deciding them."""
    return set(
        Finding.objects.filter(slide=slide, decisions__reviewer=user).values_list("pk", flat=True)
    )


def hides(user, finding: Finding) -> bool:
    """Whether this finding's AI call is hidden from this user."""
    return (
        finding.source == Finding.Source.AI
        and blinded_for(user, finding.slide.case)
        and not finding.decisions.filter(reviewer=user).exists()
    )
