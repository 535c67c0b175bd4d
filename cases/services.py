"""What other apps may use of the clinical record: who may see which case and slide."""

from collections.abc import Iterator
from contextlib import contextmanager

import openslide
from django.db import transaction
from django.shortcuts import get_object_or_404

from . import deepzoom
from .audit import record as record_audit
from .models import Case, Slide, is_lab_admin
from .registration import file_sha256

__all__ = [
    "Case",
    "Slide",
    "file_sha256",
    "is_lab_admin",
    "record_audit",
    "shared_slide",
    "visible_case",
    "visible_cases",
    "visible_slide",
]


def change_status(case_id: int, new: str, allowed: set[str], why: str) -> bool:
    """Move a case to ``new`` if its status is one of ``allowed`` (the application's own
    transitions: AI runs, a first decision), recorded as ``case_changed`` with before and
    after in the same transaction; False when nothing changed."""
    with transaction.atomic():
        case = Case.objects.select_for_update().get(pk=case_id)
        if case.status == new or case.status not in allowed:
            return False
        before = case.status
        Case.objects.filter(pk=case_id).update(status=new)
        record_audit(
            "case_changed",
            obj=case,
            case=case,
            details={"changes": {"status": [before, new]}, "name": str(case), "why": why},
        )
    return True


@contextmanager
def shared_slide(slide: Slide) -> Iterator[openslide.OpenSlide]:
    """The slide's shared open handle (from the tile server's bounded LRU), to read within
    the ``with`` block and never close. A read that fails drops the handle: OpenSlide fails
    every later read of a handle once one has failed. A fresh reader of one's own is
    slides.open_slide(slide.path)."""
    opened = deepzoom.handles.get(slide.path)
    try:
        yield opened.slide
    except openslide.OpenSlideError:
        deepzoom.handles.forget(slide.path, opened)
        raise


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
