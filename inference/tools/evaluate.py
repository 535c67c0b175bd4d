"""Scoring whole-slide results against synthetic ground truth: MIDOG F1 and phase accuracy."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ..engine.model_io import Detector, PhaseClassifier
from ..engine.pipeline import run_slide
from ..engine.vocabulary import MITOTIC_PHASES, PHASES
from .scoring import DetectionScore, match_points, midog_score


def counted(findings: list[dict[str, Any]], threshold: float) -> list[dict[str, Any]]:
    """Findings that count as mitoses: score at least ``threshold`` and a mitotic phase
    (a finding the classifier calls a look-alike is shown but not counted)."""
    return [
        f
        for f in findings
        if f["score"] >= threshold and (f.get("phase") is None or f["phase"] in MITOTIC_PHASES)
    ]


@dataclass
class SlideEvaluation:
    """One slide's findings scored against its ground truth."""

    name: str
    mpp: float
    findings: list[dict[str, Any]]
    truth: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)

    def score(self, threshold: float) -> DetectionScore:
        """MIDOG detection score of the findings counted at ``threshold``."""
        kept = counted(self.findings, threshold)
        return midog_score(
            [(f["x"], f["y"]) for f in kept],
            [f["score"] for f in kept],
            [(t["x"], t["y"]) for t in self.truth],
            mpp=self.mpp,
        )

    def phase_pairs(self, threshold: float) -> list[tuple[str, str]]:
        """(true phase, predicted phase) of each counted finding matched to a mitosis."""
        kept = counted(self.findings, threshold)
        pairs = match_points(
            [(f["x"], f["y"]) for f in kept],
            [f["score"] for f in kept],
            [(t["x"], t["y"]) for t in self.truth],
            radius=7.5 / self.mpp,
        )
        return [(self.truth[t]["phase"], kept[p]["phase"]) for p, t in pairs]


def pooled_score(evaluations: list[SlideEvaluation], threshold: float) -> DetectionScore:
    """Detection counts summed over slides."""
    return sum((e.score(threshold) for e in evaluations), DetectionScore(0, 0, 0))


def best_threshold(
    evaluations: list[SlideEvaluation], candidates: np.ndarray | None = None
) -> tuple[float, DetectionScore]:
    """The score threshold with the highest pooled F1 (ties: the lower threshold)."""
    grid = np.round(np.arange(0.1, 0.951, 0.025), 3) if candidates is None else candidates
    scored = [(float(t), pooled_score(evaluations, float(t))) for t in grid]
    return max(scored, key=lambda item: (item[1].f1, -item[0]))


def confusion_matrix(pairs: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    """Counts of predicted class (columns, all phase classes) per true phase (rows)."""
    matrix = {truth: dict.fromkeys(PHASES, 0) for truth in MITOTIC_PHASES}
    for truth, predicted in pairs:
        matrix[truth][predicted] += 1
    return matrix


def phase_accuracy(pairs: list[tuple[str, str]]) -> float:
    """Share of pairs whose predicted phase equals the true one (1.0 when there are none)."""
    return sum(t == p for t, p in pairs) / len(pairs) if pairs else 1.0


def report(evaluations: list[SlideEvaluation], threshold: float) -> dict[str, Any]:
    """Per-slide and pooled detection and phase figures at ``threshold``, JSON-ready."""
    slides = []
    pairs: list[tuple[str, str]] = []
    for e in evaluations:
        s, p = e.score(threshold), e.phase_pairs(threshold)
        pairs += p
        slides.append(
            {
                "slide": e.name,
                "mpp": e.mpp,
                "mitoses": len(e.truth),
                **_score_dict(s),
                "phase_accuracy": round(phase_accuracy(p), 4),
                "seconds": round(e.stats.get("seconds", {}).get("total", 0.0), 2),
            }
        )
    pooled = pooled_score(evaluations, threshold)
    return {
        "score_threshold": threshold,
        "slides": slides,
        "detection": _score_dict(pooled),
        "phase_accuracy": round(phase_accuracy(pairs), 4),
        "phase_pairs": len(pairs),
        "phase_confusion": confusion_matrix(pairs),
    }


def _score_dict(score: DetectionScore) -> dict[str, Any]:
    return {
        "tp": score.tp,
        "fp": score.fp,
        "fn": score.fn,
        "precision": round(score.precision, 4),
        "recall": round(score.recall, 4),
        "f1": round(score.f1, 4),
    }


def evaluate_slide(
    slide_path: str | PathLike[str], truth: dict[str, Any], run: Any, **options: Any
) -> SlideEvaluation:
    """Run ``run(slide_path, **options)`` (e.g. a bound ``pipeline.run_slide``) and keep its
    findings with the slide's ground-truth mitoses."""
    result = run(slide_path, **options)
    name = str(slide_path).rsplit("/", 1)[-1]
    return SlideEvaluation(name, truth["mpp"], result.findings, truth["mitoses"], result.stats)


def evaluate_paths(
    slide_paths: list[Path],
    detector: Detector,
    classifier: PhaseClassifier | None,
    *,
    score_threshold: float | None = None,
    num_workers: int | None = None,
    device: str | None = None,
) -> list[SlideEvaluation]:
    """Run the pipeline on synthetic slides (ground truth in ``<slide>.json``) and keep each
    slide's findings with its truth. ``score_threshold`` below the operating point lets
    :func:`best_threshold` sweep it."""
    evaluations = []
    for path in tqdm(slide_paths, desc="Evaluating", unit="slide"):
        truth = json.loads(Path(path).with_suffix(".json").read_text())
        evaluations.append(
            evaluate_slide(
                path,
                truth,
                run_slide,
                detector=detector,
                classifier=classifier,
                score_threshold=score_threshold,
                num_workers=num_workers,
                device=device,
            )
        )
    return evaluations
