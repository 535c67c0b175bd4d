"""Slide reading, tissue mask, patch grid and whole-slide runs on tiny synthetic TIFFs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import DataLoader

from inference.engine.detect import Detections
from inference.engine.model_io import (
    CLASSIFIER_DEFAULTS,
    ModelSpec,
    PhaseClassifier,
    load_classifier,
    load_detector,
)
from inference.engine.networks import build_classifier
from inference.engine.patches import PatchDataset, patch_grid
from inference.engine.pipeline import reader_processes, run_slide
from inference.engine.tissue import _morphology, detect_tissue, overview, tissue_mask_from_rgb
from inference.tools.synth import generate_slide
from slides import MissingMppError, Scale, open_slide, read_region, slide_mpp

WIDTH, HEIGHT = 1536, 1024
BLOB = (300, 200, 1100, 800)  # x0, y0, x1, y1 of the pink tissue rectangle (level 0)
DOTS = [(420.5, 330.5), (700.5, 512.5), (1013.5, 701.5)]  # dark nuclei centres, level-0 px
DOT_RADIUS = 6
SHIPPED = Path(__file__).resolve().parent.parent / "models"


def _slide_pixels() -> np.ndarray:
    rgb = np.full((HEIGHT, WIDTH, 3), 250, np.uint8)
    x0, y0, x1, y1 = BLOB
    rgb[y0:y1, x0:x1] = (225, 140, 190)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH] + 0.5
    for cx, cy in DOTS:
        rgb[(xx - cx) ** 2 + (yy - cy) ** 2 <= DOT_RADIUS**2] = (40, 20, 70)
    return rgb


def write_pyramid(path: Path, rgb: np.ndarray, mpp: float | None, levels: int = 3) -> Path:
    """A tiled JPEG pyramid TIFF that OpenSlide reads as generic-tiff."""
    resolution = {}
    with tifffile.TiffWriter(path) as tiff:
        for level in range(levels):
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2**level)
                resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tiff.write(
                rgb,
                tile=(256, 256),
                compression="jpeg",
                photometric="rgb",
                subfiletype=0 if level == 0 else 1,
                **resolution,
            )
            h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
            rgb = rgb[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).mean((1, 3)).astype(np.uint8)
    return path


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 0.5 µm/px (20x) slide with a pink tissue block and three dark dots."""
    return write_pyramid(tmp_path_factory.mktemp("slides") / "s20x.tiff", _slide_pixels(), 0.5)


@pytest.fixture(scope="module")
def slide_without_mpp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pyramid(
        tmp_path_factory.mktemp("slides") / "nompp.tiff", _slide_pixels(), None, levels=1
    )


class DarkestSpotDetector:
    """Test detector: one box per patch at the darkest smoothed spot."""

    spec = ModelSpec(arch="darkest", class_names=("mitotic_figure",))

    def to(self, device: torch.device) -> DarkestSpotDetector:
        return self

    def __call__(self, batch: torch.Tensor, score_threshold: float) -> list[Detections]:
        darkness = 1 - batch.mean(1, keepdim=True)
        for _ in range(2):  # a triangular blur peaks at the centre of a symmetric blob
            darkness = F.avg_pool2d(darkness, 9, stride=1, padding=4, count_include_pad=False)
        scores, index = darkness.flatten(1).max(1)
        width = batch.shape[-1]
        cx, cy = (index % width).float() + 0.5, (index // width).float() + 0.5
        boxes = torch.stack([cx - 8, cy - 8, cx + 8, cy + 8], 1)
        found = Detections(boxes, scores, torch.zeros_like(index))
        keep = scores >= score_threshold
        return [found.select(torch.arange(i, i + 1)[keep[i : i + 1]]) for i in range(len(batch))]


def test_slide_mpp_read_override_and_missing(slide_path: Path, slide_without_mpp: Path) -> None:
    with open_slide(slide_path) as slide:
        assert slide_mpp(slide) == pytest.approx((0.5, 0.5))
        assert slide_mpp(slide, 0.26) == (0.26, 0.26)
    with open_slide(slide_without_mpp) as slide, pytest.raises(MissingMppError):
        slide_mpp(slide)


def test_read_region_resamples_20x_to_40x(slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        scale = Scale.between(slide_mpp(slide), 0.25)
        cx, cy = DOTS[1]
        image = np.asarray(read_region(slide, (int(cx) - 80, int(cy) - 80), (320, 320), scale))
    assert image.shape == (320, 320, 3)
    dark = image.mean(2) < 100
    ys, xs = np.nonzero(dark)
    # a 6 px radius dot at 0.5 µm/px is 12 px in radius at 0.25 µm/px, centred in the crop
    assert xs.mean() == pytest.approx(160.5, abs=1.5)
    assert ys.mean() == pytest.approx(160.5, abs=1.5)
    assert dark.sum() == pytest.approx(np.pi * 12**2, rel=0.2)


def test_tissue_mask_finds_blob_not_background(slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide, max_size=256)
    x0, y0, x1, y1 = BLOB
    assert tissue.fraction(x0 + 20, y0 + 20, 300, 300) == pytest.approx(1.0)
    assert tissue.fraction(0, 0, 250, 150) == 0.0
    assert tissue.fraction(1200, 0, 300, 1000) == 0.0
    blob_area = (x1 - x0) * (y1 - y0) / (tissue.scale_x * tissue.scale_y)
    assert tissue.mask.sum() == pytest.approx(blob_area, rel=0.1)


@pytest.mark.parametrize("radius", [1, 2, 3])
@pytest.mark.parametrize("shape", [(97, 130), (1, 9), (2, 2)])
def test_closing_and_opening_are_scipys(radius: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(radius)
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = xx**2 + yy**2 <= radius**2
    for share in (0.1, 0.5, 0.9):
        mask = rng.random(shape) < share
        padded = np.pad(mask, radius, mode="edge")
        inner = (slice(radius, -radius), slice(radius, -radius))
        for closing, scipy_operation in (
            (True, ndimage.binary_closing),
            (False, ndimage.binary_opening),
        ):
            expected = scipy_operation(padded, structure=disk)[inner]
            assert np.array_equal(_morphology(mask, radius, closing), expected)


def test_the_tissue_overview_is_a_level_as_it_is_where_one_fits(slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        level = np.asarray(overview(slide, 1000))  # level 1, 768 px, needs no resampling
        assert level.shape == (512, 768, 3)
        expected = slide.read_region((0, 0), 1, (768, 512)).convert("RGB")
        assert np.array_equal(level, np.asarray(expected))
        # no level within [0.75, 1] of the bound (768 px is too coarse for 1,400): resampled
        assert max(overview(slide, 1400).size) == 1400
        assert max(overview(slide, 256).size) == 256


def test_blank_image_has_no_tissue_and_full_tissue_is_all_tissue() -> None:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 8, (128, 128, 3))
    assert not tissue_mask_from_rgb((245 + noise).astype(np.uint8)).any()
    tissue = np.full((128, 128, 3), (225, 140, 190)) + noise
    tissue[40:60, 40:60] = (40, 20, 70)  # dark nuclei must not split the tissue in two
    assert tissue_mask_from_rgb(tissue.astype(np.uint8)).all()


def test_glass_beside_a_white_filled_area_is_not_tissue() -> None:
    rng = np.random.default_rng(0)
    image = np.full((128, 128, 3), (236, 234, 232)) + rng.integers(0, 3, (128, 128, 3))
    image[:, 80:] = 255  # a reader's white fill where the scan has no tiles
    image[20:60, 20:60] = (212, 200, 215)
    mask = tissue_mask_from_rgb(image.astype(np.uint8))
    assert mask[22:58, 22:58].all()
    assert mask.sum() == pytest.approx(40 * 40, rel=0.05)


def test_pale_tissue_on_glass_clipped_to_white_is_tissue() -> None:
    rng = np.random.default_rng(0)
    image = np.full((128, 128, 3), 255)  # a scanner that clips the glass to white
    image[20:80, 20:80] = (230, 222, 232) + rng.integers(-12, 13, (60, 60, 3))
    mask = tissue_mask_from_rgb(image.astype(np.uint8))
    assert mask[22:78, 22:78].all()
    assert mask.sum() == pytest.approx(60 * 60, rel=0.05)


def test_pale_unsaturated_tissue_is_tissue_and_an_unscanned_black_area_is_not() -> None:
    rng = np.random.default_rng(0)
    image = np.full((128, 128, 3), (245, 242, 235)) + rng.integers(0, 4, (128, 128, 3))
    image[20:70, 20:70] = (212, 200, 215)  # greyish lavender: HSV saturation 18 of 255
    image[90:120, 90:120] = 0  # a scanner's unscanned corner
    mask = tissue_mask_from_rgb(image.astype(np.uint8))
    assert mask[22:68, 22:68].all()
    assert not mask[90:120, 90:120].any()
    assert mask.sum() == pytest.approx(50 * 50, rel=0.05)


def test_every_mitosis_of_a_shifted_stain_slide_lies_on_tissue(tmp_path: Path) -> None:
    # the shifted domain's bluer haematoxylin and pale eosin leave its tumour nearly as
    # unsaturated as the glass: a saturation-only mask dropped half its mitoses
    truth = generate_slide(
        tmp_path / "shifted.tiff",
        seed=9601,
        size=(3000, 3000),
        mitoses_per_mm2=100.0,
        tumour_fraction=0.6,
        domain="shifted",
    )
    with open_slide(tmp_path / "shifted.tiff") as slide:
        tissue = detect_tissue(slide)
    assert len(truth["mitoses"]) >= 5
    for mitosis in truth["mitoses"]:
        assert tissue.fraction(mitosis["x"] - 8, mitosis["y"] - 8, 16, 16) == 1.0, mitosis


def test_patch_grid_skips_background(slide_path: Path) -> None:
    with open_slide(slide_path) as slide:
        tissue = detect_tissue(slide, max_size=256)
        scale = Scale.between(slide_mpp(slide), 0.25)
        grid = patch_grid(slide.dimensions, scale, patch_px=320, overlap=64, tissue=tissue)
    assert grid.scale == Scale(0.5, 0.5)  # a 320 px patch at 0.25 µm/px spans 160 level-0 px
    side, step = 160, (320 - 64) // 2
    assert grid.total == (np.ceil((WIDTH - side) / step) + 1) * (
        np.ceil((HEIGHT - side) / step) + 1
    )
    assert 0 < len(grid) < grid.total
    x0, y0, x1, y1 = BLOB
    ox, oy = grid.origins[:, 0], grid.origins[:, 1]
    assert np.all((ox < x1) & (ox + side > x0) & (oy < y1) & (oy + side > y0))
    assert ox.max() + side >= x1 and oy.max() + side >= y1


def test_dataset_reads_in_worker_processes(slide_path: Path) -> None:
    origins = np.array([[200, 200], [400, 300], [900, 600]])
    dataset = PatchDataset(slide_path, origins, 320, Scale(0.5, 0.5))
    loader = DataLoader(dataset, batch_size=2, num_workers=1)
    images, batch_origins = next(iter(loader))
    assert images.shape == (2, 320, 320, 3) and images.dtype == torch.uint8
    assert batch_origins.tolist() == [[200, 200], [400, 300]]
    assert dataset._slide is None  # the parent never opened the slide


@pytest.mark.parametrize(("mpp_override", "num_workers"), [(None, 1), (0.25, 0)])
def test_run_slide_reports_level0_coordinates(
    slide_path: Path, mpp_override: float | None, num_workers: int
) -> None:
    torch.manual_seed(0)
    classifier = PhaseClassifier(
        build_classifier("resnet10"), ModelSpec.from_dict({**CLASSIFIER_DEFAULTS, "patch_px": 96})
    )
    stages: list[str] = []
    result = run_slide(
        slide_path,
        DarkestSpotDetector(),
        classifier,
        device="cpu",
        batch_size=8,
        num_workers=num_workers,
        mpp_override=mpp_override,
        score_threshold=0.5,
        progress=lambda stage, fraction: stages.append(stage),
    )
    found = sorted((f["x"], f["y"]) for f in result.findings)
    assert len(found) == len(DOTS)
    assert np.allclose(found, DOTS, atol=1.0)
    finding = result.findings[0]
    assert set(finding["phase_probs"]) == set(CLASSIFIER_DEFAULTS["class_names"])
    assert sum(finding["phase_probs"].values()) == pytest.approx(1.0, abs=1e-4)
    assert finding["phase"] == max(finding["phase_probs"], key=finding["phase_probs"].get)
    assert stages[0] == "tissue" and {"detect", "classify"} <= set(stages)
    stats = result.stats
    assert 0 < stats["patches_tissue"] < stats["patches_total"]
    expected_scale = 0.25 / (mpp_override or 0.5)
    assert stats["scale"] == [expected_scale, expected_scale]


def test_on_a_cpu_readers_only_take_the_cores_the_models_threads_leave() -> None:
    cores, threads = len(os.sched_getaffinity(0)), torch.get_num_threads()
    try:
        torch.set_num_threads(cores)
        assert reader_processes(torch.device("cpu"), 2) == 0  # read between batches
        torch.set_num_threads(1)
        assert reader_processes(torch.device("cpu"), 2) == min(2, cores - 1)
    finally:
        torch.set_num_threads(threads)
    assert reader_processes(torch.device("cuda"), 3) == 3  # reading overlaps the GPU's work


def test_run_slide_without_mpp_fails_clearly(slide_without_mpp: Path) -> None:
    with pytest.raises(MissingMppError):
        run_slide(slide_without_mpp, DarkestSpotDetector(), device="cpu", num_workers=0)


def test_each_finding_gets_its_own_crops_phase_with_parallel_readers(synthetic_slide) -> None:
    # readers deliver batches in their own order: each crop's phase must still go to the
    # finding it was cut around (they went to other findings' rows before)
    detector = load_detector(SHIPPED / "mitolens-detector-1.0.pt")
    classifier = load_classifier(SHIPPED / "mitolens-phase-1.1.pt")
    runs = [
        run_slide(
            synthetic_slide, detector, classifier, device="cpu", batch_size=2, num_workers=workers
        ).findings
        for workers in (0, 2)
    ]
    assert len(runs[0]) >= 8  # several batches for each reader
    alone_run, parallel_run = (sorted(run, key=lambda f: (f["x"], f["y"])) for run in runs)
    for alone, parallel in zip(alone_run, parallel_run, strict=True):
        assert (alone["x"], alone["y"]) == (parallel["x"], parallel["y"])
        assert alone["phase"] == parallel["phase"]
        for phase, probability in alone["phase_probs"].items():
            assert parallel["phase_probs"][phase] == pytest.approx(probability, abs=1e-5)
