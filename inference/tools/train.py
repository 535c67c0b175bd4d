"""Training the shipped detector and phase classifier on synthetic slides.

Examples are read back from synthetic slides through OpenSlide, exactly as inference
reads them (``slides.read_region`` at the model's µm/px, then the model's resize), so
the networks learn from the pixels they will see. Everything is seeded: the same
settings give the same data and, on one machine, the same weights.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn
from tqdm import tqdm

from slides import Scale, open_slide, read_region, slide_mpp

from ..engine.model_io import CLASSIFIER_DEFAULTS, DETECTOR_DEFAULTS, ModelSpec
from ..engine.networks import CenterNet, build_classifier
from ..engine.vocabulary import PHASES
from . import synth
from .centernet import centernet_loss, centernet_targets

NON_MITOTIC = PHASES.index("non_mitotic")


@dataclass(frozen=True)
class SlideSet:
    """A family of synthetic slides: one per seed, all with the same settings."""

    seeds: tuple[int, ...]
    size: tuple[int, int] = (6000, 6000)
    mpp: float = 0.25
    mitoses_per_mm2: float = 100.0
    negatives_per_mm2: float | None = 180.0
    tumour_fraction: float = 0.6

    def paths(self, directory: Path) -> list[Path]:
        """Where the slides of this set live in ``directory``."""
        w, h = self.size
        return [directory / f"synth-{s}-{w}x{h}-{self.mpp}.tiff" for s in self.seeds]


def _generate_one(args: tuple[Path, int, SlideSet]) -> Path:
    path, seed, slides = args
    synth.generate_slide(
        path,
        seed=seed,
        size=slides.size,
        mpp=slides.mpp,
        mitoses_per_mm2=slides.mitoses_per_mm2,
        tumour_fraction=slides.tumour_fraction,
        hard_negatives_per_mm2=slides.negatives_per_mm2,
    )
    return path


def make_slides(slides: SlideSet, directory: Path, processes: int = 2) -> list[Path]:
    """Generate the set's slides (with ground truth) into ``directory``, skipping those
    already there; returns their paths in seed order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = slides.paths(directory)
    todo = [
        (p, s, slides)
        for p, s in zip(paths, slides.seeds, strict=True)
        if not (p.exists() and p.with_suffix(".json").exists())
    ]
    if todo:
        with ProcessPoolExecutor(processes) as pool:
            done = pool.map(_generate_one, todo)
            for _ in tqdm(done, total=len(todo), desc="Synthesising slides", unit="slide"):
                pass
    return paths


def load_truth(slide_path: Path) -> dict[str, Any]:
    """The ground truth written next to a synthetic slide."""
    return json.loads(slide_path.with_suffix(".json").read_text())


# --------------------------------------------------------------------------- reading


def resize_batch(images: Tensor, size: int) -> Tensor:
    """uint8 NCHW images resized as the model wrappers resize their input."""
    if images.shape[-1] == size:
        return images
    resized = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8)


def _read(slide, centre: tuple[float, float], patch_px: int, scale: Scale) -> np.ndarray:
    """A ``patch_px`` square at the model's µm/px centred on a level-0 point (HWC uint8)."""
    origin = (round(centre[0] - patch_px * scale.x / 2), round(centre[1] - patch_px * scale.y / 2))
    return np.asarray(read_region(slide, origin, (patch_px, patch_px), scale)), origin


def _objects(truth: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Centres (K, 2), boxes (K, 4) and names (phase or look-alike kind) of all labelled objects."""
    items = truth["mitoses"] + truth["hard_negatives"]
    centres = np.array([[o["x"], o["y"]] for o in items], np.float64).reshape(-1, 2)
    boxes = np.array([o["box"] for o in items], np.float64).reshape(-1, 4)
    names = [o.get("phase") or o["kind"] for o in items]
    return centres, boxes, names


def _tissue_points(slide, rng: np.random.Generator, count: int) -> np.ndarray:
    """Random level-0 points on tissue (from a low-resolution saturation mask)."""
    thumb = np.asarray(slide.get_thumbnail((512, 512)).convert("HSV"))[..., 1] > 25
    ys, xs = np.nonzero(thumb)
    if not len(xs) or count <= 0:
        return np.zeros((0, 2))
    pick = rng.choice(len(xs), count)
    sx, sy = slide.dimensions[0] / thumb.shape[1], slide.dimensions[1] / thumb.shape[0]
    return np.column_stack(
        [(xs[pick] + rng.random(count)) * sx, (ys[pick] + rng.random(count)) * sy]
    )


# --------------------------------------------------------------------------- detector data


@dataclass
class DetectorData:
    """Network-sized uint8 patches with their boxes (input px) and detector labels."""

    images: Tensor
    boxes: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def detector_examples(
    slide_path: Path, spec: ModelSpec, rng: np.random.Generator, random_patches: int = 24
) -> DetectorData:
    """Patches around every mitosis and look-alike (off centre) plus random tissue patches."""
    truth = load_truth(slide_path)
    centres, boxes, names = _objects(truth)
    with open_slide(slide_path) as slide:
        scale = Scale.between(slide_mpp(slide), spec.target_mpp)
        span = np.array([spec.patch_px * scale.x, spec.patch_px * scale.y])
        jitter = rng.uniform(-0.35, 0.35, (len(centres), 2)) * span
        sites = np.concatenate([centres + jitter, _tissue_points(slide, rng, random_patches)])
        patches, all_boxes, all_labels = [], [], []
        for site in sites:
            pixels, origin = _read(slide, tuple(site), spec.patch_px, scale)
            patches.append(pixels)
            b, lab = _boxes_in_patch(boxes, names, origin, scale, spec)
            all_boxes.append(b)
            all_labels.append(lab)
    images = torch.from_numpy(np.stack(patches)).permute(0, 3, 1, 2)
    return DetectorData(resize_batch(images, spec.network_px), all_boxes, all_labels)


def _boxes_in_patch(boxes, names, origin, scale: Scale, spec: ModelSpec):
    """Boxes (network px) and labels of the objects whose centre lies in the patch."""
    factor = spec.network_px / spec.patch_px
    shift = np.array([origin[0], origin[1], origin[0], origin[1]], np.float64)
    per_px = np.array([scale.x, scale.y, scale.x, scale.y]) / factor
    local = ((boxes - shift) / per_px).reshape(-1, 4)
    centre = (local[:, :2] + local[:, 2:]) / 2
    inside = np.all((centre >= 0) & (centre < spec.network_px), axis=1)
    labels = [0 if names[i] in synth.PHASES else 1 for i in np.flatnonzero(inside)]
    return (
        torch.tensor(local[inside], dtype=torch.float32).reshape(-1, 4),
        torch.tensor(labels, dtype=torch.int64),
    )


# --------------------------------------------------------------------------- classifier data


@dataclass
class ClassifierData:
    """Network-sized uint8 crops, their phase-class index, and what each one shows."""

    images: Tensor
    labels: Tensor
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.images)


def classifier_examples(
    slide_path: Path, spec: ModelSpec, rng: np.random.Generator, normals: int = 40
) -> ClassifierData:
    """Crops centred (with a little jitter, as a detector centres them) on every mitosis
    and look-alike, and on ordinary nuclei found as dark blobs away from labelled objects."""
    truth = load_truth(slide_path)
    centres, _, names = _objects(truth)
    with open_slide(slide_path) as slide:
        scale = Scale.between(slide_mpp(slide), spec.target_mpp)
        normal_sites = _ordinary_nuclei(slide, rng, centres, normals, truth["mpp"])
        sites = np.concatenate([centres, normal_sites])
        kinds = names + ["normal"] * len(normal_sites)
        jitter = rng.normal(0.0, 1.0 / truth["mpp"], sites.shape)  # ~1 µm
        crops = [_read(slide, tuple(s), spec.patch_px, scale)[0] for s in sites + jitter]
    images = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2)
    labels = torch.tensor([PHASES.index(k) if k in PHASES else NON_MITOTIC for k in kinds])
    return ClassifierData(resize_batch(images, spec.network_px), labels, kinds)


def _ordinary_nuclei(slide, rng, labelled: np.ndarray, count: int, mpp: float) -> np.ndarray:
    """Level-0 centres of unlabelled nuclei: local darkness maxima in random tissue fields."""
    found: list[np.ndarray] = []
    for point in _tissue_points(slide, rng, max(count // 4, 1)):
        origin = (int(point[0]) - 256, int(point[1]) - 256)
        gray = np.asarray(slide.read_region(origin, 0, (512, 512)).convert("L"), np.float32)
        dark = ndimage.gaussian_filter(255 - gray, 2.0 / mpp)
        peaks = (dark == ndimage.maximum_filter(dark, size=int(6 / mpp))) & (dark > 90)
        ys, xs = np.nonzero(peaks)
        found.append(np.column_stack([xs + origin[0], ys + origin[1]]).astype(np.float64))
    points = np.concatenate(found) if found else np.zeros((0, 2))
    if len(labelled) and len(points):
        nearest = np.min(np.hypot(*(points[:, None] - labelled[None]).transpose(2, 0, 1)), axis=1)
        points = points[nearest > 12 / mpp]
    return points[rng.permutation(len(points))[:count]]


# --------------------------------------------------------------------------- augmentation


def augment(images: Tensor, rng: torch.Generator) -> tuple[Tensor, int]:
    """A random dihedral transform (index 0-7) and colour jitter of a float [0, 1] batch.

    Returns the images and the transform index (see :func:`dihedral_boxes`).
    """
    k = int(torch.randint(0, 8, (1,), generator=rng))
    images = torch.rot90(images, k % 4, dims=(2, 3))
    if k >= 4:
        images = images.flip(3)
    n = images.shape[0]
    gain = 1 + 0.06 * torch.randn(n, 3, 1, 1, generator=rng)
    bias = 0.03 * torch.randn(n, 1, 1, 1, generator=rng)
    gray = images.mean(1, keepdim=True)
    saturation = 1 + 0.15 * torch.randn(n, 1, 1, 1, generator=rng)
    images = gray + (images - gray) * saturation
    return (images * gain + bias).clamp(0, 1), k


def dihedral_boxes(boxes: Tensor, k: int, size: int) -> Tensor:
    """Boxes (xyxy, px) moved as :func:`augment`'s transform ``k`` moves an image of ``size``."""
    x0, y0, x1, y1 = boxes.unbind(1)
    for _ in range(k % 4):  # rot90 counter-clockwise: (x, y) -> (y, size - x)
        x0, y0, x1, y1 = y0, size - x1, y1, size - x0
    if k >= 4:
        x0, x1 = size - x1, size - x0
    return torch.stack([x0, y0, x1, y1], 1)


# --------------------------------------------------------------------------- training loops


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser settings shared by both networks."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 1e-4
    seed: int = 0


def _optimiser(model: nn.Module, settings: TrainSettings, steps: int):
    optimiser = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=settings.learning_rate, total_steps=max(steps, 1), pct_start=0.15
    )
    return optimiser, schedule


def _normalise(images: Tensor, spec: ModelSpec) -> Tensor:
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return (images - mean) / std


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 NCHW images, on the [0, 1] scale."""
    values = images.float().div(255).transpose(0, 1).reshape(3, -1)
    return values.mean(1).tolist(), values.std(1).tolist()


def train_detector(
    data: DetectorData, spec: ModelSpec, settings: TrainSettings, log: Callable[[str], None]
) -> CenterNet:
    """Train a :class:`CenterNet` on ``data`` (network-sized patches) with augmentation."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = CenterNet(num_classes=len(spec.class_names))
    batches = math.ceil(len(data) / settings.batch_size)
    optimiser, schedule = _optimiser(model, settings, batches * settings.epochs)
    size = spec.network_px
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(data), generator=generator)
        total = 0.0
        bar = tqdm(order.split(settings.batch_size), desc=f"detector {epoch + 1}/{settings.epochs}")
        for index in bar:
            images, k = augment(data.images[index].float() / 255, generator)
            boxes = [dihedral_boxes(data.boxes[i], k, size) for i in index.tolist()]
            labels = [data.labels[i] for i in index.tolist()]
            targets = centernet_targets(
                boxes, labels, num_classes=len(spec.class_names), input_size=(size, size)
            )
            loss = centernet_loss(model(_normalise(images, spec)), targets)["total"]
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        log(f"detector epoch {epoch + 1}: mean loss {total / batches:.4f}")
    return model.eval()


def train_classifier(
    data: ClassifierData, spec: ModelSpec, settings: TrainSettings, log: Callable[[str], None]
) -> nn.Module:
    """Train a ResNet phase classifier on class-balanced draws from ``data``."""
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model = build_classifier(spec.arch, len(spec.class_names))
    counts = torch.bincount(data.labels, minlength=len(spec.class_names)).clamp(min=1)
    weights = (1.0 / counts.float())[data.labels]
    per_epoch = len(data)
    batches = math.ceil(per_epoch / settings.batch_size)
    optimiser, schedule = _optimiser(model, settings, batches * settings.epochs)
    for epoch in range(settings.epochs):
        model.train()
        draw = torch.multinomial(weights, per_epoch, replacement=True, generator=generator)
        correct, total = 0, 0.0
        bar = tqdm(
            draw.split(settings.batch_size), desc=f"classifier {epoch + 1}/{settings.epochs}"
        )
        for index in bar:
            images, _ = augment(data.images[index].float() / 255, generator)
            logits = model(_normalise(images, spec))
            loss = F.cross_entropy(logits, data.labels[index], label_smoothing=0.05)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
            correct += int((logits.argmax(1) == data.labels[index]).sum())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        log(
            f"classifier epoch {epoch + 1}: mean loss {total / batches:.4f}, "
            f"train accuracy {correct / per_epoch:.3f}"
        )
    return model.eval()


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """Everything that fixes the shipped models: data, specs and optimiser settings."""

    train: SlideSet = SlideSet(seeds=tuple(range(1001, 1061)))
    validation: SlideSet = SlideSet(
        seeds=(8001, 8002, 8003), size=(8000, 8000), mitoses_per_mm2=25.0, negatives_per_mm2=None
    )
    detector: TrainSettings = TrainSettings(epochs=12, batch_size=32, learning_rate=2e-3)
    classifier: TrainSettings = TrainSettings(epochs=14, batch_size=64, learning_rate=2e-3)
    detector_spec: dict = field(
        default_factory=lambda: {**DETECTOR_DEFAULTS, "patch_px": 320, "input_px": 160}
    )
    classifier_spec: dict = field(
        default_factory=lambda: {**CLASSIFIER_DEFAULTS, "arch": "resnet8_os8", "input_px": 64}
    )
    test: tuple[SlideSet, ...] = (
        SlideSet(
            seeds=(9001, 9002, 9003, 9004),
            size=(8000, 8000),
            mitoses_per_mm2=25.0,
            negatives_per_mm2=None,
        ),
        SlideSet(
            seeds=(9005,), size=(4000, 4000), mpp=0.5, mitoses_per_mm2=25.0, negatives_per_mm2=None
        ),
    )
    mil_train: SlideSet = SlideSet(
        seeds=tuple(range(2001, 2017)),
        size=(10000, 10000),
        mitoses_per_mm2=4.0,
        negatives_per_mm2=None,
        tumour_fraction=0.3,
    )
    mil_validation: SlideSet = SlideSet(
        seeds=(8101, 8102, 8103),
        size=(10000, 10000),
        mitoses_per_mm2=4.0,
        negatives_per_mm2=None,
        tumour_fraction=0.3,
    )
    mil: TrainSettings = TrainSettings(epochs=16, batch_size=8, learning_rate=1e-3)
    seed: int = 0

    def test_paths(self, work_dir: Path, processes: int = 2) -> list[Path]:
        """Held-out slides (seeds never used in training or validation), made if missing."""
        return [p for s in self.test for p in make_slides(s, work_dir / "test", processes)]

    def quick(self) -> Recipe:
        """A tiny version of the recipe, for checking the command end to end."""
        return Recipe(
            train=SlideSet(seeds=(1001, 1002), size=(3000, 3000)),
            validation=SlideSet(seeds=(8001,), size=(3000, 3000), mitoses_per_mm2=25.0),
            detector=TrainSettings(epochs=1, batch_size=16, learning_rate=2e-3),
            classifier=TrainSettings(epochs=1, batch_size=32, learning_rate=2e-3),
            test=(SlideSet(seeds=(9001,), size=(3000, 3000), mitoses_per_mm2=25.0),),
            mil_train=SlideSet(seeds=(2001,), size=(6000, 6000), tumour_fraction=0.3),
            mil_validation=SlideSet(seeds=(8101,), size=(6000, 6000), tumour_fraction=0.3),
            mil=TrainSettings(epochs=1, batch_size=8, learning_rate=1e-3),
        )


def gather(
    paths: Sequence[Path], collect: Callable[[Path, np.random.Generator], Any], seed: int, desc: str
) -> list[Any]:
    """Apply ``collect(path, rng)`` to each slide with a per-slide seeded generator."""
    return [
        collect(path, np.random.default_rng([seed, i]))
        for i, path in enumerate(tqdm(paths, desc=desc, unit="slide"))
    ]


def concat_detector(parts: Iterable[DetectorData]) -> DetectorData:
    parts = list(parts)
    return DetectorData(
        torch.cat([p.images for p in parts]),
        [b for p in parts for b in p.boxes],
        [lab for p in parts for lab in p.labels],
    )


def concat_classifier(parts: Iterable[ClassifierData]) -> ClassifierData:
    parts = list(parts)
    return ClassifierData(
        torch.cat([p.images for p in parts]),
        torch.cat([p.labels for p in parts]),
        [k for p in parts for k in p.kinds],
    )


def class_counts(data: ClassifierData) -> dict[str, int]:
    """How many crops of each phase class."""
    counts = torch.bincount(data.labels, minlength=len(PHASES)).tolist()
    return dict(zip(PHASES, counts, strict=True))


@dataclass
class TrainedModels:
    """The two trained networks with their final specs and what training measured."""

    detector: CenterNet
    detector_spec: ModelSpec
    classifier: nn.Module
    classifier_spec: ModelSpec
    facts: dict[str, Any]


def train_shipped_models(
    recipe: Recipe, work_dir: Path, log: Callable[[str], None], processes: int = 2
) -> TrainedModels:
    """Make the recipe's slides, train both networks, and pick the detector's operating
    point (best MIDOG F1 of the whole pipeline) on the validation slides."""
    from ..engine.model_io import CenterNetDetector, PhaseClassifier
    from .evaluate import best_threshold, evaluate_paths  # evaluate imports the pipeline

    train_paths = make_slides(recipe.train, work_dir / "train", processes)
    val_paths = make_slides(recipe.validation, work_dir / "validation", processes)

    det_spec = ModelSpec.from_dict(recipe.detector_spec)
    det_data = concat_detector(
        gather(train_paths, lambda p, r: detector_examples(p, det_spec, r), recipe.seed, "Patches")
    )
    mean, std = channel_stats(det_data.images)
    det_spec = ModelSpec.from_dict({**det_spec.to_dict(), "mean": mean, "std": std})
    objects = torch.cat(det_data.labels)
    log(
        f"detector data: {len(det_data)} patches, {int((objects == 0).sum())} mitoses, "
        f"{int((objects == 1).sum())} look-alikes (with repeats across patches)"
    )
    detector = train_detector(det_data, det_spec, recipe.detector, log)
    del det_data

    classifier, cls_spec, crops = _train_phase(recipe, train_paths, log)

    evaluations = evaluate_paths(
        val_paths,
        CenterNetDetector(detector, det_spec),
        PhaseClassifier(classifier, cls_spec),
        score_threshold=0.1,
    )
    threshold, score = best_threshold(evaluations)
    log(f"validation: operating point {threshold} gives F1 {score.f1:.3f}")
    det_spec = ModelSpec.from_dict({**det_spec.to_dict(), "score_threshold": threshold})
    facts = {
        "train_slides": _describe(recipe.train),
        "validation_slides": _describe(recipe.validation),
        "classifier_crops": crops,
        "validation_f1": round(score.f1, 4),
        "detector_settings": vars(recipe.detector),
        "classifier_settings": vars(recipe.classifier),
    }
    return TrainedModels(detector, det_spec, classifier, cls_spec, facts)


def train_shipped_classifier(
    recipe: Recipe, work_dir: Path, log: Callable[[str], None], processes: int = 2
) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Make the recipe's training slides and train the phase classifier alone (the shipped
    detector and its operating point stay as they are)."""
    train_paths = make_slides(recipe.train, work_dir / "train", processes)
    classifier, spec, crops = _train_phase(recipe, train_paths, log)
    facts = {
        "train_slides": _describe(recipe.train),
        "classifier_crops": crops,
        "classifier_settings": vars(recipe.classifier),
    }
    return classifier, spec, facts


def _train_phase(
    recipe: Recipe, train_paths: list[Path], log: Callable[[str], None]
) -> tuple[nn.Module, ModelSpec, dict[str, int]]:
    spec = ModelSpec.from_dict(recipe.classifier_spec)
    data = concat_classifier(
        gather(train_paths, lambda p, r: classifier_examples(p, spec, r), recipe.seed, "Crops")
    )
    mean, std = channel_stats(data.images)
    spec = ModelSpec.from_dict({**spec.to_dict(), "mean": mean, "std": std})
    crops = class_counts(data)
    log(f"classifier data: {crops}")
    return train_classifier(data, spec, recipe.classifier, log), spec, crops


def _describe(slides: SlideSet) -> dict[str, Any]:
    return {
        "seeds": f"{slides.seeds[0]}-{slides.seeds[-1]}" if len(slides.seeds) > 1 else slides.seeds,
        "count": len(slides.seeds),
        "size_px": list(slides.size),
        "mpp": slides.mpp,
        "mitoses_per_mm2": slides.mitoses_per_mm2,
        "hard_negatives_per_mm2": slides.negatives_per_mm2,
    }


# --------------------------------------------------------------------------- attention MIL


@dataclass
class MilData:
    """Bags of instances (uint8), bag labels (tumour or not), instance tumour fractions."""

    bags: Tensor
    labels: Tensor
    instance_tumour: Tensor

    def __len__(self) -> int:
        return len(self.bags)


def mil_examples(slide_path: Path, rng: np.random.Generator, min_tissue: float = 0.3) -> MilData:
    """Every bag of the slide on tissue (grid at a random offset), labelled tumour when at
    least 15 % of it is tumour and non-tumour when under 1 %; bags in between are left out
    because their label is uncertain."""
    from ..engine.mil import GRID, INSTANCE_PX, MIL_MPP, to_instances, tumour_fractions
    from ..engine.tissue import detect_tissue

    truth = load_truth(slide_path)
    with open_slide(slide_path) as slide:
        mpp = slide_mpp(slide)
        scale = Scale.between(mpp, MIL_MPP)
        bag_px = GRID * INSTANCE_PX * MIL_MPP / mpp[0]
        tissue = detect_tissue(slide)
        offset = rng.uniform(0, bag_px, 2)
        width, height = slide.dimensions
        bags, labels, fractions = [], [], []
        for y in np.arange(offset[1] - bag_px, height, bag_px):
            for x in np.arange(offset[0] - bag_px, width, bag_px):
                if tissue.fraction(x, y, bag_px, bag_px) < min_tissue:
                    continue
                cells = tumour_fractions(
                    truth["tumour_regions"], (x, y), scale.x, GRID, INSTANCE_PX
                )
                share = float(cells.mean())
                if 0.01 <= share < 0.15:
                    continue
                region = read_region(slide, (round(x), round(y)), (GRID * INSTANCE_PX,) * 2, scale)
                bags.append((to_instances(np.asarray(region)) * 255).round().to(torch.uint8))
                labels.append(int(share >= 0.15))
                fractions.append(torch.from_numpy(cells.ravel()))
    if not bags:
        return MilData(
            torch.zeros(0, GRID * GRID, 3, INSTANCE_PX, INSTANCE_PX, dtype=torch.uint8),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0, GRID * GRID),
        )
    return MilData(torch.stack(bags), torch.tensor(labels), torch.stack(fractions))


def concat_mil(parts: Iterable[MilData]) -> MilData:
    parts = list(parts)
    return MilData(
        torch.cat([p.bags for p in parts]),
        torch.cat([p.labels for p in parts]),
        torch.cat([p.instance_tumour for p in parts]),
    )


def train_mil(data: MilData, settings: TrainSettings, log: Callable[[str], None]):
    """Train a gated-attention MIL network on bags (class-balanced draws, flips/rotations
    of whole bags). Returns the MilModel with the data's normalisation."""
    from ..engine.mil import GatedAttentionMIL, MilModel, bag_loss, normalise_bags

    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    flat = data.bags.flatten(0, 1)
    mean, std = channel_stats(flat[:: max(1, len(flat) // 20000)])
    network = GatedAttentionMIL()
    model = MilModel(network, tuple(mean), tuple(std))
    counts = torch.bincount(data.labels, minlength=2).clamp(min=1)
    weights = (1.0 / counts.float())[data.labels]
    batches = math.ceil(len(data) / settings.batch_size)
    optimiser, schedule = _optimiser(network, settings, batches * settings.epochs)
    for epoch in range(settings.epochs):
        network.train()
        draw = torch.multinomial(weights, len(data), replacement=True, generator=generator)
        total, correct = 0.0, 0
        for index in tqdm(
            draw.split(settings.batch_size), desc=f"MIL {epoch + 1}/{settings.epochs}"
        ):
            bags = data.bags[index].float() / 255  # (B, N, 3, h, w)
            flat, _ = augment(bags.flatten(0, 1), generator)
            logits, _ = network(normalise_bags(flat.view_as(bags), mean, std))
            loss = bag_loss(logits, data.labels[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item()
            correct += int(((logits > 0).long() == data.labels[index]).sum())
        log(
            f"MIL epoch {epoch + 1}: mean loss {total / batches:.4f}, "
            f"train accuracy {correct / len(data):.3f}"
        )
    network.eval()
    return model


def mil_metrics(model, data: MilData) -> dict[str, float]:
    """Bag accuracy, and how much of the attention in tumour bags falls on tumour
    instances compared with the tumour share of those bags."""
    with torch.inference_mode():
        probs, attention = [], []
        for start in range(0, len(data), 16):
            p, a = model(data.bags[start : start + 16].float() / 255)
            probs.append(p)
            attention.append(a)
    probs, attention = torch.cat(probs), torch.cat(attention)
    accuracy = float(((probs >= 0.5).long() == data.labels).float().mean())
    positive = data.labels == 1
    tumour = (data.instance_tumour[positive] >= 0.5).float()
    on_tumour = float((attention[positive] * tumour).sum(1).mean())
    share = float(tumour.mean(1).mean())
    return {
        "bags": len(data),
        "bag_accuracy": round(accuracy, 4),
        "attention_on_tumour": round(on_tumour, 4),
        "tumour_share": round(share, 4),
    }


def train_shipped_mil(
    recipe: Recipe, work_dir: Path, log: Callable[[str], None], processes: int = 2
):
    """Make the MIL slides, train the attention-MIL model, and measure it on the
    validation slides. Returns (MilModel, facts)."""
    train_paths = make_slides(recipe.mil_train, work_dir / "mil", processes)
    val_paths = make_slides(recipe.mil_validation, work_dir / "mil-validation", processes)
    train = concat_mil(gather(train_paths, mil_examples, recipe.seed, "Bags"))
    validation = concat_mil(gather(val_paths, mil_examples, recipe.seed + 1, "Validation bags"))
    log(f"MIL data: {len(train)} bags ({int(train.labels.sum())} with tumour)")
    model = train_mil(train, recipe.mil, log)
    measured = mil_metrics(model, validation)
    log(f"MIL validation: {measured}")
    facts = {
        "train_slides": _describe(recipe.mil_train),
        "validation_slides": _describe(recipe.mil_validation),
        "settings": vars(recipe.mil),
        "bag_label": "tumour when >= 15 % of the bag is inside the ground-truth tumour "
        "polygons, non-tumour when < 1 %; bags in between left out",
    }
    return model, facts, {"validation": measured, "train": mil_metrics(model, train)}
