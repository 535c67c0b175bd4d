"""The out-of-domain guard as readers see it: a run's domain status in words.

The measurement itself is the engine's (inference/engine/domain.py), on the detector's
forward pass; a run records ``domain_status``, ``domain_distance`` and ``domain_threshold``.
"""

from __future__ import annotations

from .models import InferenceRun


def run_domain(run: InferenceRun) -> dict:
    """The run's domain status, distance and threshold, with a sentence for a reader."""
    status = run.domain_status
    if status == InferenceRun.Domain.OUT_OF_DOMAIN:
        message = (
            "the AI is out of its domain on this slide: its tissue does not resemble the "
            "data the detector was trained on (distance "
            f"{run.domain_distance:.1f}, threshold {run.domain_threshold:.1f}). Its findings "
            "and count are unverified; count the mitoses yourself"
        )
    elif status == InferenceRun.Domain.IN_DOMAIN:
        message = (
            "the slide's tissue lies within the detector's training data (distance "
            f"{run.domain_distance:.1f}, threshold {run.domain_threshold:.1f})"
        )
    else:
        message = (
            "whether the slide resembles the detector's training data is unknown: the "
            "detector carries no description of it (or the run predates the check)"
        )
    return {
        "status": status,
        "distance": run.domain_distance,
        "threshold": run.domain_threshold,
        "message": message,
    }
