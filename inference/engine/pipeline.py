"""Whole-slide inference: tissue -> patches -> detection -> merge -> phase classification."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np
import torch

from slides import Scale, open_slide, slide_mpp

from .detect import Detections, merge_detections
from .domain import DEFAULT_LAYER, DomainDescription, measure, tissue_patches
from .domain_probe import DomainProbe
from .model_io import Detector, PhaseClassifier
from .patches import PatchDataset, make_loader, model_input, patch_grid
from .tissue import TissueMask, detect_tissue

ProgressFn = Callable[[str, float], None]


@dataclass
class SlideResult:
    """Findings (level-0 px) and run statistics of one slide, and the tissue mask they
    were found on (for the job's later steps, which need the same mask)."""

    findings: list[dict[str, Any]]
    stats: dict[str, Any] = field(default_factory=dict)
    domain_features: np.ndarray | None = None
    tissue: TissueMask | None = None


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def reader_processes(device: torch.device, most: int = 2) -> int:
    """How many processes should read a run's patches on ``device``, at most ``most``.

    On a GPU, all of them: reading overlaps the GPU's work. On a CPU, only as many as the
    cores the model's threads leave free, and none where it leaves none (patches are then
    read in the model's process between batches): a reader that preempts one of the
    model's threads stalls every thread of that operation, which costs more than reading
    in turn (docs/benchmarks.md: on 2 cores, 1.25x the pure compute against 1.45x with
    two readers)."""
    if device.type != "cpu":
        return most
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(most, (cores or 1) - torch.get_num_threads()))


def _no_progress(stage: str, fraction: float) -> None:
    """Default progress callback: ignore."""


class _Timer:
    """Accumulates wall time of named sections (synchronising CUDA when timing it)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


@dataclass
class _Run:
    """Settings and instruments shared by the stages of one slide run."""

    device: torch.device
    batch_size: int
    num_workers: int
    amp: bool
    progress: ProgressFn
    timer: _Timer

    def loader(self, dataset: PatchDataset) -> torch.utils.data.DataLoader:
        """A DataLoader with no more workers than there are batches."""
        workers = min(self.num_workers, -(-len(dataset) // self.batch_size))
        return make_loader(
            dataset, batch_size=self.batch_size, num_workers=workers, device=self.device
        )

    def batches(
        self, dataset: PatchDataset, stage: str
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, list[int]]]:
        """Yield (float [0, 1] images on the device, origins, their dataset indices),
        timing waits as ``<stage>_read_wait`` and reporting progress for ``stage``. Batches
        come in the readers' order, not the dataset's (see patches.sharded_batches)."""
        loader = self.loader(dataset)
        iterator = iter(loader)
        self.progress(stage, 0.0)
        try:
            for i, indices in enumerate(loader.batch_sampler):
                with self.timer.section(f"{stage}_read_wait"):
                    images, origins = next(iterator)
                    images = model_input(images, self.device)
                yield images, origins, indices
                self.progress(stage, (i + 1) / len(loader))
        finally:  # a cancelled run leaves no handle (readers may be this process)
            dataset.close()
        self.progress(stage, 1.0)

    def autocast(self) -> contextlib.AbstractContextManager:
        """float16 autocast on CUDA when enabled, else nothing."""
        if self.amp and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def run_slide(
    slide_path: str | PathLike[str],
    detector: Detector,
    classifier: PhaseClassifier | None = None,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 16,
    num_workers: int | None = None,
    progress: ProgressFn | None = None,
    mpp_override: float | None = None,
    score_threshold: float | None = None,
    overlap: int = 64,
    min_tissue: float = 0.02,
    merge_distance_um: float = 4.0,
    amp: bool = True,
    domain: Mapping[str, Any] | None = None,
    keep_domain_features: bool = False,
) -> SlideResult:
    """Detect and phase-classify mitotic figures on one slide.

    Patches of ``detector.spec.patch_px`` at its ``target_mpp`` over the tissue are read by
    ``num_workers`` DataLoader processes (default: :func:`reader_processes`) while the
    detector runs, or by this process between batches where it is 0 (CUDA when available,
    float16 autocast there when ``amp``). Detections above ``score_threshold`` (default:
    the detector spec's operating point) are mapped
    to level-0 px, merged across overlapping patches (NMS plus ``merge_distance_um``
    centre distance), restricted to the detector's finding classes, and classified on
    crops centred on them. ``progress(stage, fraction)`` is called with stages
    ``"tissue"``, ``"detect"``, ``"classify"``. Raises MissingMppError when the slide has
    no µm/px and no ``mpp_override``.

    Each finding is ``{x, y, box: [x0, y0, x1, y1], score, label, phase, phase_probs}``
    in continuous level-0 px (pixel i spans [i, i + 1)); ``phase`` is None without a
    classifier. ``stats`` holds patch counts, the device and ``seconds`` per section:
    ``tissue``, ``detect_read_wait`` (waiting for patches), ``detect_compute``, ``merge``,
    ``classify`` (with its ``classify_read_wait``) and ``total``.

    ``domain`` is the detector version's description of its training data
    (:mod:`.domain`): ``stats["domain"]`` then says whether the slide's tissue patches lie
    within it (measured on the detector's own forward pass); without one it is
    ``unknown``. ``keep_domain_features`` returns the patches' features in
    ``domain_features`` (for describing a domain).
    """
    device = pick_device(device)
    if num_workers is None:
        num_workers = reader_processes(device)
    run = _Run(device, batch_size, num_workers, amp, progress or _no_progress, _Timer(device))
    start = time.perf_counter()
    with run.timer.section("tissue"):
        run.progress("tissue", 0.0)
        slide = open_slide(slide_path)
        mpp = slide_mpp(slide, mpp_override)
        tissue = detect_tissue(slide)
        dimensions = slide.dimensions
        slide.close()
        run.progress("tissue", 1.0)
    scale = Scale.between(mpp, detector.spec.target_mpp)
    grid = patch_grid(
        dimensions,
        scale,
        patch_px=detector.spec.patch_px,
        overlap=overlap,
        tissue=tissue,
        min_tissue=min_tissue,
    )
    if score_threshold is None:
        score_threshold = detector.spec.score_threshold
    description = DomainDescription.from_dict(domain) if domain else None
    probe = _probe(detector, description, keep_domain_features)
    try:
        raw, seen = _detect(
            PatchDataset.from_grid(slide_path, grid), detector.to(device), run, score_threshold
        )
    finally:
        if probe is not None:
            probe.close()
    features = None
    if probe is not None:
        patch_l0 = (detector.spec.patch_px * scale.x, detector.spec.patch_px * scale.y)
        min_share = description.min_patch_tissue if description else 0.5
        features = probe.features()[tissue_patches(seen, patch_l0, tissue, min_share)]
    with run.timer.section("merge"):
        merged = merge_detections(raw, min_distance=merge_distance_um / min(mpp)).to("cpu")
    findings = merged.select(torch.isin(merged.labels, torch.tensor(detector.spec.finding_labels)))
    findings, dropped = _where_they_can_be(findings, dimensions, tissue)
    probs = None
    if classifier is not None:
        with run.timer.section("classify"):
            probs = _classify(slide_path, findings, classifier.to(device), mpp, run)
    run.timer.seconds["total"] = time.perf_counter() - start
    stats = {
        "device": str(device),
        "slide_mpp": list(mpp),
        "target_mpp": detector.spec.target_mpp,
        "scale": [scale.x, scale.y],
        "patches_total": grid.total,
        "patches_tissue": len(grid),
        "detections_raw": len(raw),
        "findings": len(findings),
        **dropped,
        "domain": _domain_record(description, probe, features),
        "seconds": run.timer.seconds,
    }
    return SlideResult(
        _finding_dicts(findings, probs, detector, classifier),
        stats,
        features if keep_domain_features else None,
        tissue,
    )


def _probe(
    detector: Detector, description: DomainDescription | None, keep: bool
) -> DomainProbe | None:
    """Hooks that collect domain features, when a description or the caller needs them
    and the detector's network allows hooks."""
    layer = description.layer if description else DEFAULT_LAYER
    network = getattr(detector, "module", None)
    if (description is None and not keep) or not DomainProbe.supports(network, layer):
        return None
    return DomainProbe(network, layer)


def _domain_record(
    description: DomainDescription | None, probe: DomainProbe | None, features
) -> dict[str, Any]:
    if description is not None and probe is None:
        return measure(None, np.zeros((0, 0)), "the detector's network cannot be probed")
    return measure(description, features if features is not None else np.zeros((0, 0)))


def _where_they_can_be(
    findings: Detections, dimensions: tuple[int, int], tissue: TissueMask
) -> tuple[Detections, dict[str, int]]:
    """Only findings whose centre lies on the slide (edge patches are padded: a detector
    can answer in the padding) and on tissue (within one tissue-mask pixel, as the mask is
    coarse), with boxes clipped to the slide; and how many were dropped for each reason."""
    width, height = dimensions
    centres = findings.centers().numpy()
    x, y = centres[:, 0], centres[:, 1]
    on_slide = (x >= 0) & (x < width) & (y >= 0) & (y < height)
    sx, sy = tissue.scale_x, tissue.scale_y
    on_tissue = tissue.fraction(x - sx, y - sy, 2 * sx, 2 * sy) > 0
    kept = findings.select(torch.from_numpy(on_slide & on_tissue))
    limit = torch.tensor([width, height, width, height], dtype=kept.boxes.dtype)
    boxes = torch.minimum(kept.boxes.clamp(min=0), limit)
    dropped = {
        "dropped_off_slide": int((~on_slide).sum()),
        "dropped_off_tissue": int((on_slide & ~on_tissue).sum()),
    }
    return Detections(boxes, kept.scores, kept.labels), dropped


def _detect(
    dataset: PatchDataset, detector: Detector, run: _Run, score_threshold: float
) -> tuple[Detections, np.ndarray]:
    """Run the detector over all patches; detections in level-0 px, on the run's device,
    and the patches' origins in the order the detector saw them."""
    parts: list[Detections] = [Detections.empty(run.device)]
    seen: list[np.ndarray] = [np.zeros((0, 2), np.int64)]
    scale = (dataset.scale.x, dataset.scale.y)
    with torch.inference_mode():
        for images, origins, _ in run.batches(dataset, "detect"):
            seen.append(origins.numpy())
            with run.timer.section("detect_compute"), run.autocast():
                per_patch = detector(images, score_threshold)
                parts.extend(
                    d.shifted(tuple(origin.tolist()), scale)
                    for d, origin in zip(per_patch, origins, strict=True)
                )
    return Detections.cat(parts), np.concatenate(seen)


def _classify(
    slide_path: str | PathLike[str],
    findings: Detections,
    classifier: PhaseClassifier,
    mpp: tuple[float, float],
    run: _Run,
) -> torch.Tensor:
    """Phase probabilities ``(K, C)`` for crops centred on each finding."""
    spec = classifier.spec
    scale = Scale.between(mpp, spec.target_mpp)
    half = np.array([spec.patch_px * scale.x / 2, spec.patch_px * scale.y / 2])
    origins = np.round(findings.centers().numpy() - half).astype(np.int64)
    dataset = PatchDataset(slide_path, origins, spec.patch_px, scale)
    probs = torch.zeros(len(dataset), len(spec.class_names))
    with torch.inference_mode():
        for images, _, indices in run.batches(dataset, "classify"):
            with run.autocast():
                probs[indices] = classifier(images).float().cpu()
    return probs


def _finding_dicts(
    findings: Detections,
    probs: torch.Tensor | None,
    detector: Detector,
    classifier: PhaseClassifier | None,
) -> list[dict[str, Any]]:
    centres = findings.centers().tolist()
    boxes = findings.boxes.tolist()
    scores = findings.scores.tolist()
    labels = findings.labels.tolist()
    results = []
    for i in range(len(findings)):
        phase, phase_probs = None, {}
        if probs is not None and classifier is not None:
            row = probs[i].tolist()
            phase_probs = dict(zip(classifier.spec.class_names, row, strict=True))
            phase = classifier.spec.class_names[int(np.argmax(row))]
        results.append(
            {
                "x": centres[i][0],
                "y": centres[i][1],
                "box": boxes[i],
                "score": scores[i],
                "label": detector.spec.class_names[labels[i]],
                "phase": phase,
                "phase_probs": phase_probs,
            }
        )
    return results
