"""Training from reviews, the reading-room side: the labelled dataset that pathologists'
decisions on signed-out cases make, split by case, handed to ``inference.learning``.

Labels, from each finding's current decision (the latest by anyone; a decision carried to
a later run's finding counts once, on that finding):

- an agreed AI finding is a mitosis, in the phase the pathologist corrected it to (an AI
  finding agreed as non-mitotic is a look-alike: a hard negative);
- a disagreed finding is a hard negative;
- a mitosis a pathologist added is a mitosis in their phase (a hard negative if a later
  decision disagreed with it);
- uncertain decisions and undecided findings give no label. Random tissue patches away
  from every finding are drawn as negatives by the training job.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from cases.models import Case, Slide
from inference import learning
from inference.engine.vocabulary import MITOTIC_PHASES
from inference.learning import TrainingRefused
from inference.models import Finding, TrainingRun

from .models import Decision
from .services import latest_decisions

MIN_CASES = 2  # at least one to train on and one to evaluate on
MIN_TRAIN_MITOSES = 10
MIN_HOLDOUT_MITOSES = 3
DEFAULT_HOLDOUT_FRACTION = 0.3
NON_MITOTIC = "non_mitotic"


class NotEnoughData(TrainingRefused):
    """Too few reviewed cases or labels to train and evaluate; the message says how many
    are needed and how many there are."""


def signed_out_cases(accessions: Sequence[str] | None = None) -> list[Case]:
    """Signed-out cases, all of them or those named (each must exist and be signed out)."""
    cases = Case.objects.filter(status=Case.Status.SIGNED_OUT)
    if not accessions:
        return list(cases.order_by("accession"))
    found = {c.accession: c for c in Case.objects.filter(accession__in=accessions)}
    unknown = [a for a in accessions if a not in found]
    if unknown:
        raise TrainingRefused(f"No case with accession {', '.join(unknown)}.")
    open_cases = [a for a in accessions if found[a].status != Case.Status.SIGNED_OUT]
    if open_cases:
        raise TrainingRefused(
            f"Only signed-out cases are used for training; not signed out: {', '.join(open_cases)}."
        )
    return sorted({found[a] for a in accessions}, key=lambda c: c.accession)


def _point(finding: Finding, phase: str, kind: str) -> dict:
    return {
        "x": finding.x,
        "y": finding.y,
        "phase": phase,
        "box": [finding.box_x0, finding.box_y0, finding.box_x1, finding.box_y1],
        "kind": kind,
        "finding": finding.pk,
    }


def label_for(finding: Finding, decision: Decision | None) -> tuple[str, str] | None:
    """(phase, kind) a finding teaches, or None when it teaches nothing."""
    verdict = decision.verdict if decision else None
    if finding.source == Finding.Source.PATHOLOGIST:
        if verdict == Decision.Verdict.DISAGREE:
            return NON_MITOTIC, "disagree"
        phase = (decision.corrected_phase if decision else "") or finding.phase
        return phase, "added"
    if verdict == Decision.Verdict.AGREE:
        return (decision.corrected_phase or finding.phase), "agree"
    if verdict == Decision.Verdict.DISAGREE:
        return NON_MITOTIC, "disagree"
    return None


def slide_labels(slide: Slide) -> dict:
    """The slide's labelled points and every finding position on it (plain data)."""
    findings = Finding.objects.filter(slide=slide)
    latest = latest_decisions(findings)
    carried_on = set(
        Decision.objects.filter(finding__slide=slide, carried_from__isnull=False).values_list(
            "carried_from__finding", flat=True
        )
    )
    points, positions = [], []
    for finding in findings.order_by("id"):
        positions.append([finding.x, finding.y])
        if finding.pk in carried_on:
            continue  # its object is labelled on the finding the decision was carried to
        label = label_for(finding, latest.get(finding.pk))
        if label is not None:
            points.append(_point(finding, *label))
    return {
        "case": slide.case.accession,
        "slide": slide.pk,
        "name": slide.original_name,
        "path": str(slide.path),
        "mpp": slide.mpp,
        "mpp_override": slide.mpp_override,
        "points": points,
        "findings": positions,
    }


def count_labels(slides: Sequence[dict]) -> dict[str, int]:
    """Labelled points per kind and phase, and in all mitoses and hard negatives."""
    counts = {"slides": len(slides), "mitoses": 0, "hard_negatives": 0}
    for slide in slides:
        for point in slide["points"]:
            mitosis = point["phase"] in MITOTIC_PHASES
            counts["mitoses" if mitosis else "hard_negatives"] += 1
            for key in (f"kind:{point['kind']}", f"phase:{point['phase']}"):
                counts[key] = counts.get(key, 0) + 1
    return counts


def split_cases(
    accessions: Sequence[str], holdout_fraction: float, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(training, held-out) accessions: a seeded shuffle, at least one case on each side."""
    order = sorted(accessions)
    random.Random(seed).shuffle(order)
    held = min(max(1, round(len(order) * holdout_fraction)), len(order) - 1)
    return sorted(order[held:]), sorted(order[:held])


def build_dataset(
    accessions: Sequence[str] | None = None,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    seed: int = 0,
) -> dict:
    """The training dataset from signed-out cases (all, or those named), split by case.

    Raises NotEnoughData (how much is needed, how much there is) or TrainingRefused.
    """
    if not 0 < holdout_fraction < 1:
        raise TrainingRefused(
            f"The held-out fraction must be between 0 and 1 (exclusive); got {holdout_fraction}."
        )
    by_case: dict[str, list[dict]] = {}
    skipped = []
    for case in signed_out_cases(accessions):
        for slide in case.slides.order_by("id"):
            if not slide.mpp:
                skipped.append(slide.original_name)
                continue
            labels = slide_labels(slide)
            if labels["points"]:
                by_case.setdefault(case.accession, []).append(labels)
    if len(by_case) < MIN_CASES:
        raise NotEnoughData(
            f"Training from reviews needs at least {MIN_CASES} signed-out cases with decided "
            f"findings (one to train on, one to evaluate on); there are {len(by_case)}. "
            "Review and sign out more cases."
        )
    train_cases, holdout_cases = split_cases(list(by_case), holdout_fraction, seed)
    train = [s for a in train_cases for s in by_case[a]]
    holdout = [s for a in holdout_cases for s in by_case[a]]
    counts = {"train": count_labels(train), "holdout": count_labels(holdout)}
    _check_enough(counts, train_cases, holdout_cases)
    return {
        "train": train,
        "holdout": holdout,
        "cases": {"train": train_cases, "holdout": holdout_cases},
        "counts": counts,
        "holdout_fraction": holdout_fraction,
        "seed": seed,
        "skipped_slides_without_scale": skipped,
    }


def _check_enough(counts: dict, train_cases: list[str], holdout_cases: list[str]) -> None:
    train, held = counts["train"]["mitoses"], counts["holdout"]["mitoses"]
    if train < MIN_TRAIN_MITOSES or held < MIN_HOLDOUT_MITOSES:
        raise NotEnoughData(
            f"Training from reviews needs at least {MIN_TRAIN_MITOSES} confirmed mitoses in "
            f"the training cases and {MIN_HOLDOUT_MITOSES} in the held-out cases; the split "
            f"has {train} in {len(train_cases)} training case(s) and {held} in "
            f"{len(holdout_cases)} held-out case(s). Review and sign out more cases."
        )


def start_from_reviews(
    user=None,
    accessions: Sequence[str] | None = None,
    holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
    *,
    quick: bool = False,
    enqueue_job: bool = True,
) -> TrainingRun:
    """Build the dataset and start a training run on it (see inference.learning)."""
    dataset = build_dataset(accessions, holdout_fraction)
    return learning.start_training(dataset, user=user, quick=quick, enqueue_job=enqueue_job)
