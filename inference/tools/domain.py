"""Describing a detector's training domain and calibrating its out-of-domain threshold
(used by ``manage.py describe_domain``; see inference/engine/domain.py for the method)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from PIL import Image

from ..engine.domain import DomainDescription, fit_description
from ..engine.model_io import Detector
from ..engine.pipeline import run_slide
from .synth import TILE, level_shapes
from .train import SlideSet, make_slides

Log = Callable[[str], None]


def slide_from_image(image: np.ndarray | Image.Image, out: Path, mpp: float) -> Path:
    """Write an RGB image as a tiled pyramidal TIFF at ``mpp`` µm/px (what OpenSlide reads
    as a generic tiled TIFF with ``openslide.mpp-x``), e.g. a real H&E image to test on."""
    picture = (
        Image.fromarray(np.asarray(image)[..., :3]) if isinstance(image, np.ndarray) else image
    )
    picture = picture.convert("RGB")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(out) as tiff:
        for level, (w, h) in enumerate(level_shapes(*picture.size)):
            pixels = np.asarray(picture.resize((w, h), Image.Resampling.BOX))
            level_mpp = mpp * picture.size[0] / w
            tiff.write(
                pixels,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="rgb",
                resolution=(1e4 / level_mpp, 1e4 / level_mpp),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                metadata=None,
            )
    return out


def slide_features(path: Path, detector: Detector, workers: int = 1) -> np.ndarray:
    """Domain features of a slide's tissue patches, through the run's own pipeline."""
    result = run_slide(
        path, detector, None, device="cpu", num_workers=workers, keep_domain_features=True
    )
    return result.domain_features


def training_features(
    train: SlideSet, count: int, work: Path, detector: Detector, log: Log, processes: int = 1
) -> dict[str, np.ndarray]:
    """Features of the tissue patches of each of the first ``count`` training slides
    (synthesised again from their seeds: the same arguments give the same bytes)."""
    subset = dataclasses.replace(train, seeds=tuple(train.seeds[:count]))
    features = {}
    for path in make_slides(subset, work / "train", processes):
        features[path.name] = slide_features(path, detector)
        log(f"{path.name}: {len(features[path.name])} tissue patches")
    return features


def held_out_slides(seeds: Sequence[int], work: Path, processes: int = 1) -> list[Path]:
    """Synthetic slides from seeds never used in training: 4000 px squares at 0.25 µm/px,
    the last at 0.5 µm/px (20x), with the held-out test set's densities."""
    paths = []
    for i, seed in enumerate(seeds):
        mpp = 0.5 if i == len(seeds) - 1 and len(seeds) > 1 else 0.25
        size = (4000, 4000) if mpp == 0.25 else (2400, 2400)
        family = SlideSet(
            seeds=(seed,), size=size, mpp=mpp, mitoses_per_mm2=25.0, negatives_per_mm2=None
        )
        paths.extend(make_slides(family, work / "held-out", processes))
    return paths


def distances(
    description: DomainDescription, paths: Sequence[Path], detector: Detector, log: Log
) -> list[dict[str, Any]]:
    """Each slide's distance from the domain (median over its tissue patches)."""
    rows = []
    for path in paths:
        features = slide_features(path, detector)
        distance = description.slide_distance(features) if len(features) else math.nan
        rows.append({"slide": Path(path).name, "patches": len(features), "distance": distance})
        log(f"{Path(path).name}: {len(features)} patches, distance {distance:.2f}")
    return rows


def calibrate(synthetic: list[dict[str, Any]], real: list[dict[str, Any]]) -> float:
    """The threshold halfway (geometrically) between the farthest held-out synthetic slide
    and the nearest real one; refuses when they overlap."""
    far = max(row["distance"] for row in synthetic)
    near = min(row["distance"] for row in real)
    if not far < near:
        raise ValueError(
            f"held-out synthetic slides reach {far:.2f} but a real slide is at {near:.2f}: "
            "the features do not separate them"
        )
    return math.sqrt(far * near)


def rounded(rows: list[dict[str, Any]], threshold: float, source: str) -> list[dict[str, Any]]:
    """Rows for the card, with the status each slide gets."""
    return [
        {
            **row,
            "source": source,
            "distance": round(row["distance"], 3),
            "status": "out_of_domain" if row["distance"] > threshold else "in_domain",
        }
        for row in rows
    ]


def describe(
    detector: Detector,
    train: SlideSet,
    *,
    train_count: int,
    held_out_seeds: Sequence[int],
    real: Sequence[Path],
    real_holdout: Sequence[Path],
    work: Path,
    log: Log,
) -> dict[str, Any]:
    """Fit the description on training slides, calibrate its threshold on held-out synthetic
    slides and ``real`` H&E, and check it on ``real_holdout``; the card's ``domain``."""
    per_slide = training_features(train, train_count, work, detector, log)
    features = np.concatenate(list(per_slide.values()))
    description = fit_description(features)
    synthetic = distances(description, held_out_slides(held_out_seeds, work), detector, log)
    calibration_real = distances(description, real, detector, log)
    threshold = calibrate(synthetic, calibration_real)
    check = distances(description, real_holdout, detector, log)
    fitted = dataclasses.replace(description, threshold=threshold)
    train_distances = [
        {"slide": name, "patches": len(f), "distance": fitted.slide_distance(f)}
        for name, f in per_slide.items()
    ]
    return {
        **fitted.to_dict(),
        "references": [
            "Lee, Lee, Lee & Shin 2018, A simple unified framework for detecting "
            "out-of-distribution samples and adversarial attacks (NeurIPS)",
            "Tipping & Bishop 1999, Probabilistic principal component analysis",
        ],
        "fit": {"slides": list(per_slide), "patches": len(features)},
        "calibration": {
            "rule": "geometric mean of the farthest held-out synthetic slide and the nearest "
            "real calibration slide",
            "training": rounded(train_distances, threshold, "training (fit)"),
            "held_out_synthetic": rounded(synthetic, threshold, "synthetic, unseen seeds"),
            "real": rounded(calibration_real, threshold, "real H&E (calibration)"),
        },
        "held_out_real": rounded(check, threshold, "real H&E (never used to calibrate)"),
    }
