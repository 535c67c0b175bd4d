"""What other apps may use of the clinical record: who may see which case and slide."""

from django.shortcuts import get_object_or_404

from . import deepzoom
from .audit import record as record_audit
from .models import Case, Decision, Slide, is_lab_admin
from .registration import file_sha256

__all__ = [
    "Case",
    "Slide",
    "blinded_for",
    "decided_finding_ids",
    "file_sha256",
    "is_lab_admin",
    "open_slide",
    "record_audit",
    "visible_case",
    "visible_cases",
    "visible_slide",
]


def open_slide(slide: Slide):
    """The slide's shared OpenSlide handle (from the tile server's bounded LRU)."""
    return deepzoom.handles.get(slide.path).slide


def visible_cases(user):
    """Cases the user may see (all for lab admins, assigned ones for pathologists)."""
    return Case.objects.visible_to(user)


def visible_case(request, case_id: int) -> Case:
    """The case if the user may see it; 404 otherwise, so existence does not leak."""
    return get_object_or_404(visible_cases(request.user), pk=case_id)


def visible_slide(request, slide_id: int) -> Slide:
    """The slide (with its case) if the user may see its case; 404 otherwise."""
    return get_object_or_404(
        Slide.objects.visible_to(request.user).select_related("case"), pk=slide_id
    )


def blinded_for(user, case: Case) -> bool:
    """Whether the AI's score and phase are hidden from this user on this case."""
    return case.blinded and not is_lab_admin(user)


def decided_finding_ids(user, slide: Slide) -> set[int]:
    """Findings of the slide this user has decided (their AI output may be revealed)."""
    return set(
        Decision.objects.filter(reviewer=user, finding__slide=slide).values_list(
            "finding_id", flat=True
        )
    )
