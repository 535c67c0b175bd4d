"""MIDOG-rule detection scoring: predicted mitoses matched to true ones within 7.5 µm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.spatial import cKDTree

MIDOG_RADIUS_UM = 7.5


@dataclass(frozen=True)
class DetectionScore:
    """True/false positives and false negatives; add scores to pool slides."""

    tp: int
    fp: int
    fn: int

    def __add__(self, other: DetectionScore) -> DetectionScore:
        return DetectionScore(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def precision(self) -> float:
        """TP / (TP + FP), 1.0 when nothing was detected."""
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        """TP / (TP + FN), 1.0 when there was nothing to find."""
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        """2TP / (2TP + FP + FN); 1.0 when nothing was to be found and nothing was found."""
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0


def match_points(
    predicted: ArrayLike, scores: ArrayLike, truth: ArrayLike, radius: float
) -> list[tuple[int, int]]:
    """Greedy MIDOG matching: by descending score, each prediction takes the nearest
    still-unmatched truth point within ``radius``. Returns (prediction, truth) index pairs.
    """
    predicted = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    truth = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    if not len(predicted) or not len(truth):
        return []
    tree = cKDTree(truth)
    taken = np.zeros(len(truth), dtype=bool)
    pairs = []
    for p in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"):
        candidates = [t for t in tree.query_ball_point(predicted[p], radius) if not taken[t]]
        if candidates:
            best = min(candidates, key=lambda t: np.hypot(*(truth[t] - predicted[p])))
            taken[best] = True
            pairs.append((int(p), int(best)))
    return pairs


def midog_score(
    predicted: ArrayLike,
    scores: ArrayLike,
    truth: ArrayLike,
    *,
    mpp: float,
    radius_um: float = MIDOG_RADIUS_UM,
) -> DetectionScore:
    """MIDOG rule on level-0 points: a prediction within ``radius_um`` µm of an
    unmatched ground-truth mitosis is a TP; slide µm/px ``mpp`` converts the radius.
    """
    n_pred = len(np.asarray(predicted).reshape(-1, 2))
    n_truth = len(np.asarray(truth).reshape(-1, 2))
    tp = len(match_points(predicted, scores, truth, radius_um / mpp))
    return DetectionScore(tp=tp, fp=n_pred - tp, fn=n_truth - tp)
