"""Decoding, cross-patch merging and MIDOG scoring on hand-built inputs."""

from __future__ import annotations

import math

import pytest
import torch

from inference.engine.detect import Detections, decode_heatmap, decode_yolo, merge_detections
from inference.tools.centernet import centernet_targets
from inference.tools.scoring import DetectionScore, match_points, midog_score


def _yolo_row(cx: float, cy: float, w: float, h: float, obj: float, *cls: float) -> list[float]:
    return [cx, cy, w, h, obj, *cls]


def test_decode_yolo_thresholds_and_suppresses() -> None:
    raw = torch.tensor(
        [
            [
                _yolo_row(100, 100, 20, 20, 0.9, 0.9, 0.1),  # conf 0.81, class 0
                _yolo_row(102, 101, 20, 20, 0.8, 0.9, 0.1),  # duplicate of the first, 0.72
                _yolo_row(200, 50, 30, 30, 0.9, 0.2, 0.8),  # conf 0.72, class 1
                _yolo_row(250, 250, 30, 30, 0.3, 0.5, 0.5),  # conf 0.15: below threshold
            ],
            [_yolo_row(10, 10, 5, 5, 0.1, 0.1, 0.1)] * 4,  # nothing in this image
        ]
    )
    first, second = decode_yolo(raw, score_threshold=0.25, iou_threshold=0.45)
    assert len(second) == 0
    order = first.scores.argsort(descending=True)
    assert first.scores[order].tolist() == pytest.approx([0.81, 0.72])
    assert first.labels[order].tolist() == [0, 1]
    assert first.boxes[order].tolist() == [[90, 90, 110, 110], [185, 35, 215, 65]]


def test_decode_heatmap_inverts_targets() -> None:
    boxes = torch.tensor([[40.0, 60.0, 90.0, 100.0], [200.0, 210.0, 230.0, 250.0]])
    labels = torch.tensor([0, 1])
    targets = centernet_targets([boxes], [labels], num_classes=2, input_size=(320, 320))
    probs = targets.heatmap.clamp(1e-4, 1 - 1e-4)
    output = torch.cat([torch.logit(probs), targets.regression], dim=1)
    (found,) = decode_heatmap(output, 2, stride=4, score_threshold=0.5)
    order = found.labels.argsort()
    assert found.labels[order].tolist() == [0, 1]
    assert torch.allclose(found.boxes[order], boxes, atol=1e-4)


def test_merge_detections_across_overlapping_patches() -> None:
    # one mitosis seen by two overlapping patches, plus a distinct one in the second
    first = Detections(
        torch.tensor([[290.0, 100.0, 310.0, 120.0]]), torch.tensor([0.9]), torch.tensor([0])
    )
    second = Detections(
        torch.tensor([[34.0, 101.0, 54.0, 121.0], [150.0, 150.0, 170.0, 170.0]]),
        torch.tensor([0.7, 0.8]),
        torch.tensor([0, 0]),
    )
    level0 = Detections.cat(
        [first.shifted((1000, 2000), (1.0, 1.0)), second.shifted((1256, 2000), (1.0, 1.0))]
    )
    merged = merge_detections(level0, iou_threshold=0.3)
    assert merged.scores.tolist() == pytest.approx([0.9, 0.8])
    assert merged.boxes.tolist() == [[1290, 2100, 1310, 2120], [1406, 2150, 1426, 2170]]


def test_merge_detections_distance_suppression() -> None:
    boxes = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [6.0, 0.0, 40.0, 10.0], [100.0, 0.0, 110.0, 10.0]]
    )  # first two barely overlap, but their centres are 18 px apart
    detections = Detections(boxes, torch.tensor([0.9, 0.6, 0.5]), torch.tensor([0, 1, 0]))
    assert len(merge_detections(detections, iou_threshold=0.3)) == 3
    merged = merge_detections(detections, iou_threshold=0.3, min_distance=20)
    assert merged.scores.tolist() == pytest.approx([0.9, 0.5])


def test_midog_matching_and_f1() -> None:
    truth = [(0, 0), (100, 0), (200, 0)]
    predicted = [(10, 0), (5, 5), (100, 29), (300, 0)]
    scores = [0.9, 0.8, 0.7, 0.6]
    # 0.25 µm/px: 7.5 µm is 30 px
    score = midog_score(predicted, scores, truth, mpp=0.25)
    assert score == DetectionScore(tp=2, fp=2, fn=1)
    assert score.f1 == pytest.approx(4 / 7)
    # at 0.5 µm/px the radius is 15 px, so (100, 29) no longer matches
    assert midog_score(predicted, scores, truth, mpp=0.5) == DetectionScore(tp=1, fp=3, fn=2)


def test_matching_prefers_higher_score_and_nearest() -> None:
    truth = [(0, 0), (20, 0)]
    pairs = match_points([(12, 0), (9, 0)], [0.5, 0.9], truth, radius=30)
    # the best-scoring prediction takes its nearest truth; the other gets what is left
    assert pairs == [(1, 0), (0, 1)]


def test_detection_score_edge_cases_and_pooling() -> None:
    assert midog_score([], [], [], mpp=0.25).f1 == 1.0
    assert midog_score([], [], [(0, 0)], mpp=0.25).f1 == 0.0
    pooled = DetectionScore(1, 0, 1) + DetectionScore(1, 2, 0)
    assert pooled == DetectionScore(2, 2, 1)
    assert pooled.precision == 0.5 and pooled.recall == pytest.approx(2 / 3)
    assert math.isclose(pooled.f1, 4 / 7)
