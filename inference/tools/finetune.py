"""Fine-tuning the active detector and phase classifier on a lab's reviewed slides.

Django-free: the portal hands over a plain dataset (slides with labelled level-0 points,
split by case) and gets back the fine-tuned networks and both versions' held-out metrics.
Patches and crops are read exactly as :mod:`.train` reads them (its readers, losses and
augmentation), so the networks see the pixels inference will show them; training starts
from the given weights and keeps their input spec (normalisation included).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn

from slides import Scale, open_slide, slide_mpp

from ..engine.model_io import CenterNetDetector, ModelSpec, PhaseClassifier
from ..engine.networks import CenterNet
from ..engine.pipeline import pick_device, run_slide
from ..engine.vocabulary import MITOTIC_PHASES, PHASES
from . import train
from .centernet import centernet_loss, centernet_targets
from .evaluate import SlideEvaluation, best_threshold, evaluate_slide, report
from .train import (
    ClassifierData,
    DetectorData,
    TrainSettings,
    _boxes_in_patch,
    _normalise,
    _optimiser,
    _ordinary_nuclei,
    _read,
    _tissue_points,
    augment,
    class_counts,
    concat_classifier,
    concat_detector,
    dihedral_boxes,
    resize_batch,
)

NON_MITOTIC = PHASES.index("non_mitotic")
REPLAY_STREAM = 7  # replay slides draw from their own random streams
# Random tissue patches are centred at least this far from every finding on the slide.
AWAY_FROM_FINDINGS_UM = 15.0

# progress(stage, fraction of that stage); it may raise to stop the training (cancel).
Progress = Callable[[str, float], None]


def _no_progress(stage: str, fraction: float) -> None:
    """Default progress callback: ignore."""


# --------------------------------------------------------------------------- the dataset


@dataclass(frozen=True)
class LabelledPoint:
    """A reviewed object: a mitosis (``phase`` one of the mitotic phases) or a hard
    negative (``phase`` ``non_mitotic``); ``kind`` says which decision made it."""

    x: float
    y: float
    phase: str
    box: tuple[float, float, float, float]
    kind: str

    @property
    def is_mitosis(self) -> bool:
        """Whether the point is a confirmed mitosis."""
        return self.phase in MITOTIC_PHASES


@dataclass
class LabelledSlide:
    """One slide of a reviewed case: its labelled points and every finding shown on it
    (random negative patches keep away from all of them)."""

    case: str
    path: Path
    mpp: float
    points: list[LabelledPoint]
    findings: list[tuple[float, float]] = field(default_factory=list)
    mpp_override: float | None = None
    name: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabelledSlide:
        """From the JSON form the portal stores (see :meth:`to_dict`)."""
        return cls(
            case=data["case"],
            path=Path(data["path"]),
            mpp=float(data["mpp"]),
            points=[
                LabelledPoint(p["x"], p["y"], p["phase"], tuple(p["box"]), p["kind"])
                for p in data["points"]
            ],
            findings=[tuple(f) for f in data.get("findings", [])],
            mpp_override=data.get("mpp_override"),
            name=data.get("name", ""),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "case": self.case,
            "path": str(self.path),
            "mpp": self.mpp,
            "mpp_override": self.mpp_override,
            "name": self.name,
            "points": [asdict(p) for p in self.points],
            "findings": [list(f) for f in self.findings],
        }

    @property
    def mitoses(self) -> list[LabelledPoint]:
        """The confirmed mitoses."""
        return [p for p in self.points if p.is_mitosis]

    def truth(self) -> dict[str, Any]:
        """Ground truth in the form :mod:`.evaluate` scores against."""
        return {
            "mpp": self.mpp,
            "mitoses": [{"x": p.x, "y": p.y, "phase": p.phase} for p in self.mitoses],
        }


@dataclass
class Dataset:
    """Training and held-out slides; no case has slides on both sides."""

    train: list[LabelledSlide]
    holdout: list[LabelledSlide]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Dataset:
        """From the portal's JSON form: ``{"train": [slide...], "holdout": [slide...]}``."""
        return cls(
            [LabelledSlide.from_dict(s) for s in data["train"]],
            [LabelledSlide.from_dict(s) for s in data["holdout"]],
        )

    def check_split(self) -> None:
        """Raise ValueError when a case is on both sides or a side is empty."""
        shared = {s.case for s in self.train} & {s.case for s in self.holdout}
        if shared:
            raise ValueError(f"cases in both training and evaluation: {sorted(shared)}")
        if not self.train or not self.holdout:
            raise ValueError("the dataset needs training and held-out slides")


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FinetuneSettings:
    """How much data is drawn per slide and how long each network is fine-tuned."""

    detector: TrainSettings = TrainSettings(epochs=6, batch_size=16, learning_rate=1.5e-3)
    classifier: TrainSettings = TrainSettings(epochs=6, batch_size=32, learning_rate=5e-4)
    copies: int = 2  # jittered patches/crops per labelled point
    # detector patches per mitosis a pathologist added: the base model's false negatives,
    # the examples it most needs
    missed_copies: int = 6
    random_patches: int = 16  # tissue patches away from every finding, per slide
    normals: int = 30  # ordinary nuclei (non-mitotic crops), per slide
    max_points: int | None = 60  # labelled points drawn per slide (bounds the time)
    pick_threshold: bool = True  # the candidate's operating point from the training slides
    # Keep the base networks' batch-norm statistics: batches of the lab's slides only would
    # move them to that domain and break the slides the base version read well.
    freeze_norm_stats: bool = True
    # The candidate detector's weights are this share of the base version's plus the rest of
    # the fine-tuned ones (weight-space ensembling, WiSE-FT: Wortsman et al., CVPR 2022):
    # most of the gain on the lab's slides, much less lost on the slides the base read well.
    detector_base_share: float = 0.4
    # The base version's own training slides, regenerated from its recipe, mixed in
    # (rehearsal): a lab's slides alone teach the networks to fire on look-alikes of the
    # slides the base read well. Only for versions that descend from the shipped recipe.
    replay_slides: int = 2
    seed: int = 0

    @classmethod
    def quick(cls) -> FinetuneSettings:
        """A few steps on a few examples: checks the loop end to end in seconds."""
        return cls(
            detector=TrainSettings(epochs=1, batch_size=8, learning_rate=2e-4),
            classifier=TrainSettings(epochs=1, batch_size=16, learning_rate=2e-4),
            copies=1,
            missed_copies=1,
            random_patches=1,
            normals=3,
            max_points=3,
            pick_threshold=False,
            detector_base_share=0.0,
            replay_slides=0,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FinetuneSettings:
        """From :meth:`to_dict`'s form."""
        data = dict(data)
        for key in ("detector", "classifier"):
            if isinstance(data.get(key), dict):
                data[key] = TrainSettings(**data[key])
        return cls(**data)


# --------------------------------------------------------------------------- examples


def _points(slide: LabelledSlide, settings: FinetuneSettings, rng) -> list[LabelledPoint]:
    points = slide.points
    if settings.max_points is not None and len(points) > settings.max_points:
        points = [points[i] for i in sorted(rng.permutation(len(points))[: settings.max_points])]
    return points


def _away_from(points: np.ndarray, avoid: np.ndarray, distance: float) -> np.ndarray:
    """The points at least ``distance`` from every point of ``avoid``."""
    if not len(avoid) or not len(points):
        return points
    nearest, _ = cKDTree(avoid).query(points)
    return points[nearest >= distance]


def _coords(points: Sequence[LabelledPoint]) -> np.ndarray:
    return np.array([[p.x, p.y] for p in points], np.float64).reshape(-1, 2)


def _avoid(slide: LabelledSlide) -> np.ndarray:
    coords = list(slide.findings) + [(p.x, p.y) for p in slide.points]
    return np.array(coords, np.float64).reshape(-1, 2)


def detector_examples(
    slide: LabelledSlide, spec: ModelSpec, settings: FinetuneSettings, rng: np.random.Generator
) -> DetectorData:
    """Patches around each labelled point (off centre, ``copies`` of each) and random
    tissue patches away from every finding. Every labelled object inside a patch is a box:
    mitoses in the detector's first class, hard negatives in its look-alike class."""
    points = _points(slide, settings, rng)
    boxes = np.array([p.box for p in slide.points], np.float64).reshape(-1, 4)
    names = [p.phase if p.is_mitosis else "lookalike" for p in slide.points]
    with open_slide(slide.path) as reader:
        scale = Scale.between(slide_mpp(reader, slide.mpp_override), spec.target_mpp)
        span = np.array([spec.patch_px * scale.x, spec.patch_px * scale.y])
        repeats = [settings.missed_copies if p.kind == "added" else settings.copies for p in points]
        around = np.repeat(_coords(points), repeats, 0)
        around = around + rng.uniform(-0.35, 0.35, around.shape) * span
        tissue = _tissue_points(reader, rng, settings.random_patches * 4)
        tissue = _away_from(tissue, _avoid(slide), AWAY_FROM_FINDINGS_UM / slide.mpp)
        sites = np.concatenate([around, tissue[: settings.random_patches]])
        patches, all_boxes, all_labels = [], [], []
        for site in sites:
            pixels, origin = _read(reader, tuple(site), spec.patch_px, scale)
            patches.append(pixels)
            b, lab = _boxes_in_patch(boxes, names, origin, scale, spec)
            all_boxes.append(b)
            all_labels.append(lab)
    if not patches:
        size = spec.network_px
        return DetectorData(torch.zeros(0, 3, size, size, dtype=torch.uint8), [], [])
    images = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2)
    return DetectorData(resize_batch(images, spec.network_px), all_boxes, all_labels)


def classifier_examples(
    slide: LabelledSlide, spec: ModelSpec, settings: FinetuneSettings, rng: np.random.Generator
) -> ClassifierData:
    """Crops on each labelled point (``copies``, ~1 µm jitter as a detector centres them):
    mitoses with their phase, hard negatives as non-mitotic; and ordinary nuclei away from
    every finding as non-mitotic."""
    points = _points(slide, settings, rng)
    with open_slide(slide.path) as reader:
        scale = Scale.between(slide_mpp(reader, slide.mpp_override), spec.target_mpp)
        normals = _ordinary_nuclei(reader, rng, _avoid(slide), settings.normals, slide.mpp)
        sites = np.repeat(_coords(points), settings.copies, 0)
        sites = np.concatenate([sites, normals.reshape(-1, 2)])
        kinds = [p.phase for p in points for _ in range(settings.copies)]
        kinds += ["normal"] * len(normals)
        jitter = rng.normal(0.0, 1.0 / slide.mpp, sites.shape)
        crops = [_read(reader, tuple(s), spec.patch_px, scale)[0] for s in sites + jitter]
    if not crops:
        size = spec.network_px
        empty = torch.zeros(0, 3, size, size, dtype=torch.uint8)
        return ClassifierData(empty, torch.zeros(0, dtype=torch.int64), [])
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    labels = torch.tensor([PHASES.index(k) if k in PHASES else NON_MITOTIC for k in kinds])
    return ClassifierData(resize_batch(images, spec.network_px), labels, kinds)


def label_counts(slides: Sequence[LabelledSlide]) -> dict[str, int]:
    """How many labelled points of each kind and phase."""
    counts: dict[str, int] = {}
    for slide in slides:
        for p in slide.points:
            for key in (f"kind:{p.kind}", f"phase:{p.phase}"):
                counts[key] = counts.get(key, 0) + 1
    counts["mitoses"] = sum(len(s.mitoses) for s in slides)
    counts["hard_negatives"] = sum(len(s.points) - len(s.mitoses) for s in slides)
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- fine-tuning


def _steps(data_len: int, settings: TrainSettings) -> int:
    return max(1, math.ceil(data_len / settings.batch_size)) * settings.epochs


def _train_mode(model: nn.Module, freeze_norm_stats: bool) -> None:
    """Training mode; with ``freeze_norm_stats`` the batch-norm layers keep normalising with
    (and do not update) the base network's running statistics."""
    model.train()
    if freeze_norm_stats:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def finetune_detector(
    network: CenterNet,
    data: DetectorData,
    spec: ModelSpec,
    settings: TrainSettings,
    device: torch.device,
    progress: Progress = _no_progress,
    log: Callable[[str], None] = print,
    freeze_norm_stats: bool = False,
) -> CenterNet:
    """Continue training a copy of ``network`` on ``data`` (CenterNet losses, dihedral and
    colour augmentation); the original is left untouched."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = copy.deepcopy(network).to(device)
    optimiser, schedule = _optimiser(model, settings, _steps(len(data), settings))
    size, classes = spec.network_px, len(spec.class_names)
    total_steps, step = _steps(len(data), settings), 0
    for epoch in range(settings.epochs):
        _train_mode(model, freeze_norm_stats)
        losses = []
        for index in torch.randperm(len(data), generator=generator).split(settings.batch_size):
            images, k = augment(data.images[index].float() / 255, generator)
            boxes = [dihedral_boxes(data.boxes[i], k, size) for i in index.tolist()]
            labels = [data.labels[i] for i in index.tolist()]
            targets = centernet_targets(boxes, labels, num_classes=classes, input_size=(size, size))
            targets = type(targets)(*(t.to(device) for t in vars(targets).values()))
            output = model(_normalise(images, spec).to(device))
            loss = centernet_loss(output, targets)["total"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            progress("detector", step / total_steps)
        log(f"detector epoch {epoch + 1}: mean loss {np.mean(losses):.4f}")
    return model.eval().cpu()


def interpolate(base: nn.Module, tuned: nn.Module, base_share: float) -> nn.Module:
    """A copy of ``tuned`` whose floating-point weights and statistics are ``base_share`` of
    ``base``'s plus the rest of its own (same architecture)."""
    if not 0.0 <= base_share < 1.0:
        raise ValueError(f"the base version's share must be in [0, 1); got {base_share}")
    mixed = copy.deepcopy(tuned)
    if base_share == 0.0:
        return mixed
    base_state = base.state_dict()
    state = {
        key: (1 - base_share) * value + base_share * base_state[key].to(value)
        if value.is_floating_point()
        else value
        for key, value in mixed.state_dict().items()
    }
    mixed.load_state_dict(state)
    return mixed


def finetune_classifier(
    network: nn.Module,
    data: ClassifierData,
    spec: ModelSpec,
    settings: TrainSettings,
    device: torch.device,
    progress: Progress = _no_progress,
    log: Callable[[str], None] = print,
    freeze_norm_stats: bool = False,
) -> nn.Module:
    """Continue training a copy of the phase classifier on class-balanced draws of
    ``data``; the original is left untouched."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = copy.deepcopy(network).to(device)
    counts = torch.bincount(data.labels, minlength=len(spec.class_names)).clamp(min=1)
    weights = (1.0 / counts.float())[data.labels]
    total_steps, step = _steps(len(data), settings), 0
    optimiser, schedule = _optimiser(model, settings, total_steps)
    for epoch in range(settings.epochs):
        _train_mode(model, freeze_norm_stats)
        draw = torch.multinomial(weights, len(data), replacement=True, generator=generator)
        losses, correct = [], 0
        for index in draw.split(settings.batch_size):
            images, _ = augment(data.images[index].float() / 255, generator)
            labels = data.labels[index].to(device)
            logits = model(_normalise(images, spec).to(device))
            loss = F.cross_entropy(logits, labels, label_smoothing=0.05)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            correct += int((logits.argmax(1) == labels).sum())
            step += 1
            progress("classifier", step / total_steps)
        log(
            f"classifier epoch {epoch + 1}: mean loss {np.mean(losses):.4f}, "
            f"train accuracy {correct / len(data):.3f}"
        )
    return model.eval().cpu()


# --------------------------------------------------------------------------- evaluation


def evaluate_on(
    slides: Sequence[LabelledSlide],
    detector: CenterNetDetector,
    classifier: PhaseClassifier,
    score_threshold: float,
    device: torch.device,
    progress: Callable[[float], None] = lambda fraction: None,
) -> list[SlideEvaluation]:
    """The whole-slide pipeline on each slide, scored against its reviewed mitoses (the
    code ``evaluate_models`` uses)."""
    evaluations = []
    for i, slide in enumerate(slides):
        evaluation = evaluate_slide(
            slide.path,
            slide.truth(),
            run_slide,
            detector=detector,
            classifier=classifier,
            score_threshold=score_threshold,
            num_workers=0,
            device=device,
            mpp_override=slide.mpp_override,
        )
        evaluation.name = f"{slide.case}/{slide.name or slide.path.name}"
        evaluations.append(evaluation)
        progress((i + 1) / len(slides))
    return evaluations


# --------------------------------------------------------------------------- the whole job


@dataclass
class FinetuneResult:
    """The candidate networks with their specs, what they were trained on, and the
    held-out metrics of the active (``active``) and candidate (``candidate``) versions."""

    detector: CenterNet
    detector_spec: ModelSpec
    classifier: nn.Module
    classifier_spec: ModelSpec
    facts: dict[str, Any]
    metrics: dict[str, Any]


def _stage(progress: Progress, stage: str) -> Callable[[float], None]:
    return lambda fraction: progress(stage, fraction)


def gather_examples(
    dataset: Dataset,
    detector_spec: ModelSpec,
    classifier_spec: ModelSpec,
    settings: FinetuneSettings,
    progress: Progress = _no_progress,
    replay: Sequence[Path] = (),
) -> tuple[DetectorData, ClassifierData]:
    """Detector patches and classifier crops from every training slide (seeded per slide),
    and from the ``replay`` slides (synthetic, with ground truth) as the shipped recipe
    draws them."""
    det_parts, cls_parts = [], []
    total = len(dataset.train) + len(replay)
    for i, slide in enumerate(dataset.train):
        rng = np.random.default_rng([settings.seed, i])
        det_parts.append(detector_examples(slide, detector_spec, settings, rng))
        cls_parts.append(classifier_examples(slide, classifier_spec, settings, rng))
        progress("data", (i + 1) / total)
    for i, path in enumerate(replay):
        rng = np.random.default_rng([settings.seed, REPLAY_STREAM, i])
        det_parts.append(train.detector_examples(path, detector_spec, rng))
        cls_parts.append(train.classifier_examples(path, classifier_spec, rng))
        progress("data", (len(dataset.train) + i + 1) / total)
    return concat_detector(det_parts), concat_classifier(cls_parts)


def finetune(
    dataset: Dataset,
    detector: CenterNetDetector,
    classifier: PhaseClassifier,
    settings: FinetuneSettings,
    *,
    device: str | torch.device | None = None,
    progress: Progress = _no_progress,
    log: Callable[[str], None] = print,
    replay: Sequence[Path] = (),
) -> FinetuneResult:
    """Fine-tune both networks on the training slides (and the ``replay`` slides: see
    FinetuneSettings.replay_slides), pick the candidate's operating point, and evaluate
    the given and the candidate versions on the held-out slides.

    ``detector`` and ``classifier`` are native models as the registry loads them (their
    module is a CenterNet and a classifier network); ``progress(stage, fraction)`` is
    called with stages ``data``, ``detector``, ``classifier``, ``evaluate``.
    """
    dataset.check_split()
    if not isinstance(detector.module, CenterNet):
        raise ValueError("only a native CenterNet detector can be fine-tuned here")
    device = pick_device(device)
    det_spec, cls_spec = detector.spec, classifier.spec
    seconds: dict[str, float] = {}
    with _timed(seconds, "data"):
        det_data, cls_data = gather_examples(
            dataset, det_spec, cls_spec, settings, progress, replay
        )
    boxes = torch.cat(det_data.labels) if det_data.labels else torch.zeros(0)
    log(
        f"detector data: {len(det_data)} patches with {int((boxes == 0).sum())} mitosis and "
        f"{int((boxes == 1).sum())} look-alike boxes; classifier data: {class_counts(cls_data)}"
    )
    with _timed(seconds, "detector"):
        det_settings = _seeded(settings.detector, settings.seed)
        det_net = finetune_detector(
            detector.module,
            det_data,
            det_spec,
            det_settings,
            device,
            progress,
            log,
            freeze_norm_stats=settings.freeze_norm_stats,
        )
        det_net = interpolate(detector.module, det_net, settings.detector_base_share)
    with _timed(seconds, "classifier"):
        cls_settings = _seeded(settings.classifier, settings.seed)
        cls_net = finetune_classifier(
            classifier.module,
            cls_data,
            cls_spec,
            cls_settings,
            device,
            progress,
            log,
            freeze_norm_stats=settings.freeze_norm_stats,
        )
    candidate_cls = PhaseClassifier(cls_net, cls_spec)
    evaluate = _stage(progress, "evaluate")
    with _timed(seconds, "operating_point"):
        threshold = det_spec.score_threshold
        if settings.pick_threshold:
            threshold = _operating_point(
                dataset.train,
                CenterNetDetector(det_net, det_spec),
                candidate_cls,
                device,
                lambda f: evaluate(f / 3),
                log,
            )
    det_spec = ModelSpec.from_dict({**det_spec.to_dict(), "score_threshold": threshold})
    done = 1 / 3 if settings.pick_threshold else 0.0
    with _timed(seconds, "evaluate"):
        half, before = (1 - done) / 2, detector.spec.score_threshold
        active = evaluate_on(
            dataset.holdout,
            detector,
            classifier,
            before,
            device,
            lambda f: evaluate(done + f * half),
        )
        candidate = evaluate_on(
            dataset.holdout,
            CenterNetDetector(det_net, det_spec),
            candidate_cls,
            threshold,
            device,
            lambda f: evaluate(done + half + f * half),
        )
    metrics = {"active": report(active, before), "candidate": report(candidate, threshold)}
    facts = {
        "train_cases": sorted({s.case for s in dataset.train}),
        "holdout_cases": sorted({s.case for s in dataset.holdout}),
        "train_labels": label_counts(dataset.train),
        "holdout_labels": label_counts(dataset.holdout),
        "replay_slides": [path.name for path in replay],
        "detector_patches": len(det_data),
        "classifier_crops": class_counts(cls_data),
        "settings": settings.to_dict(),
        "device": str(device),
        "seconds": {k: round(v, 2) for k, v in seconds.items()},
    }
    return FinetuneResult(det_net, det_spec, cls_net, cls_spec, facts, metrics)


def _operating_point(
    slides: Sequence[LabelledSlide],
    detector: CenterNetDetector,
    classifier: PhaseClassifier,
    device: torch.device,
    progress: Callable[[float], None],
    log: Callable[[str], None],
) -> float:
    """The score threshold with the best pooled F1 of the candidate on ``slides``."""
    evaluations = evaluate_on(slides, detector, classifier, 0.1, device, progress)
    threshold, score = best_threshold(evaluations)
    log(f"candidate operating point {threshold} (training-case F1 {score.f1:.3f})")
    return threshold


@contextmanager
def _timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def _seeded(settings: TrainSettings, seed: int) -> TrainSettings:
    return TrainSettings(**{**asdict(settings), "seed": seed})


def detection_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """F1, precision, recall and phase accuracy of an :func:`evaluate.report`."""
    return {
        **{k: metrics["detection"][k] for k in ("f1", "precision", "recall", "tp", "fp", "fn")},
        "phase_accuracy": metrics["phase_accuracy"],
        "score_threshold": metrics["score_threshold"],
    }
