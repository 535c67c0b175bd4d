"""The HPF hotspot on real tissue shapes: the densest admissible window (checked against
every window position by brute force), the tissue bar lowered step by step when tissue is
scarce, and slides smaller than 10 HPF counted whole and reported as partial."""

import json

import numpy as np
import pytest
from django.core.management import call_command
from scipy import ndimage

from inference.engine.hpf import (
    CELLS_X,
    CELLS_Y,
    FIELDS,
    HPF_AREA_MM2,
    count_in_rectangle,
    hpf_counts,
    tissue_bars,
    window_px,
)
from inference.engine.tissue import TissueMask
from inference.hpf import hotspot_rule

# µm/px at which a 10-HPF window is exactly 2048 px wide: grid cells of 64 px, 4 x 4 mask
# pixels of 16 px each, so the brute force below needs no rounding at cell borders
MPP = window_px(1.0, FIELDS * HPF_AREA_MM2)[0] / 2048
STEP, MASK_PX = 64, 16
WINDOW_W, WINDOW_H = CELLS_X * STEP, CELLS_Y * STEP


def irregular_tissue(rng, cells: tuple[int, int], cover: float) -> np.ndarray:
    """A blobby tissue mask (one pixel per 16 px) covering about ``cover`` of the slide."""
    noise = ndimage.gaussian_filter(rng.normal(size=(cells[1] * 4, cells[0] * 4)), 12)
    return noise > np.quantile(noise, 1 - cover)


def mitoses(rng, mask: np.ndarray, n: int) -> np.ndarray:
    """``n`` points in tissue, half of them in a cluster around one random tissue pixel,
    plus a few on glass and at the slide's edges (which must count too)."""
    rows, cols = np.nonzero(mask)
    pick = rng.integers(0, len(rows), n // 2)
    spread = np.column_stack([cols[pick], rows[pick]]) * MASK_PX + rng.uniform(0, 16, (n // 2, 2))
    centre = rng.integers(0, len(rows))
    near = np.abs(cols - cols[centre]) + np.abs(rows - rows[centre]) < 40
    pick = rng.choice(np.flatnonzero(near), n - n // 2)
    cluster = np.column_stack([cols[pick], rows[pick]]) * MASK_PX + rng.uniform(
        0, 16, (len(pick), 2)
    )
    width, height = mask.shape[1] * MASK_PX, mask.shape[0] * MASK_PX
    edges = [(0, 5), (width - 0.5, 700), (900, height - 0.5), (5, 0)]
    return np.concatenate([spread, cluster, edges, rng.uniform(0, width, (5, 2))])


def brute_force_hotspot(points, mask, min_tissue):
    """Every window position inside the slide, counted and measured directly: the tissue
    bar that applies, and (count, tissue share, rectangle) of the densest admissible window
    (ties: more tissue, then the first in raster order)."""
    height, width = mask.shape[0] * MASK_PX, mask.shape[1] * MASK_PX
    windows = []
    for top in range(0, max(height - WINDOW_H, 0) + 1, STEP):
        for left in range(0, max(width - WINDOW_W, 0) + 1, STEP):
            w, h = min(WINDOW_W, width), min(WINDOW_H, height)
            block = mask[
                top // MASK_PX : (top + h) // MASK_PX, left // MASK_PX : (left + w) // MASK_PX
            ]
            share = round(float(block.mean()), 3)  # rounded to 3 places as stored
            x, y = points[:, 0], points[:, 1]
            inside = (x >= left) & (x < left + w) & (y >= top) & (y < top + h)
            windows.append((int(inside.sum()), share, (left, top, w, h)))
    for bar in (*[b for b in (0.95, 0.75, 0.5, 0.25) if b <= min_tissue], 0.0):
        admissible = [window for window in windows if window[1] >= bar - 1e-6]
        if admissible:
            break
    best = max(admissible, key=lambda window: (window[0], window[1]))  # max keeps the first
    return bar, best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("cover", [0.9, 0.55, 0.3, 0.12])
def test_the_hotspot_is_the_densest_admissible_window_by_brute_force(seed, cover):
    rng = np.random.default_rng(seed)
    cells = (int(rng.integers(34, 60)), int(rng.integers(26, 48)))
    mask = irregular_tissue(rng, cells, cover)
    points = mitoses(rng, mask, 160)
    size = (cells[0] * STEP, cells[1] * STEP)
    tissue = TissueMask(mask, MASK_PX, MASK_PX)
    result = hpf_counts(points, size, MPP, tissue=tissue, min_tissue=0.95)
    bar, (count, share, rectangle) = brute_force_hotspot(points, mask, 0.95)
    assert result.tissue_bar == bar
    assert result.relaxed == (bar < 0.95) == result.partial
    assert result.hotspot_count == count == count_in_rectangle(points, result.hotspot)
    assert result.hotspot == pytest.approx(rectangle)
    assert result.counted_area_mm2 == pytest.approx(WINDOW_W * WINDOW_H * MPP**2 / 1e6)


def test_scarce_tissue_exercises_every_bar():
    bars = set()
    for seed in range(6):
        for cover in (0.9, 0.55, 0.3, 0.12):
            rng = np.random.default_rng(seed)
            cells = (int(rng.integers(34, 60)), int(rng.integers(26, 48)))
            mask = irregular_tissue(rng, cells, cover)
            bars.add(brute_force_hotspot(mitoses(rng, mask, 160), mask, 0.95)[0])
    assert {0.95, 0.75, 0.5, 0.25} <= bars  # the test above covers each step of the rule


def test_the_densest_window_wins_over_the_one_with_most_tissue():
    """No window is 95 % tissue: a 90 % tissue region holds 3 mitoses, an 80 % region 12."""
    size = (96 * STEP, 24 * STEP)  # three windows side by side
    mask = np.zeros((24 * 4, 96 * 4), bool)
    mask[:, : 32 * 4] = np.arange(24 * 4)[:, None] < 24 * 4 * 0.9  # left: 90 % tissue
    mask[:, 64 * 4 :] = np.arange(24 * 4)[:, None] < 24 * 4 * 0.8  # right: 80 % tissue
    left = np.column_stack([np.linspace(100, 1900, 3), np.full(3, 300.0)])
    right = np.column_stack([np.linspace(4200, 6000, 12), np.full(12, 300.0)])
    result = hpf_counts(
        np.concatenate([left, right]), size, MPP, tissue=TissueMask(mask, MASK_PX, MASK_PX)
    )
    assert result.tissue_bar == 0.75 and result.partial and not result.smaller_than_window
    assert result.hotspot_count == 12 and result.hotspot[0] == 64 * STEP


def test_a_slide_smaller_than_one_window_is_counted_whole_and_partial():
    size = (1000, 900)
    rng = np.random.default_rng(4)
    points = np.concatenate([rng.uniform(0, 900, (20, 2)), [(0, 0), (999.9, 899.9)]])
    result = hpf_counts(points, size, MPP)
    assert result.hotspot == (0.0, 0.0, 1000.0, 900.0)
    assert result.hotspot_count == len(points) == 22
    assert result.partial and result.smaller_than_window and not result.relaxed
    assert result.counted_area_mm2 == pytest.approx(1000 * 900 * MPP**2 / 1e6)
    assert result.hotspot_per_mm2 == pytest.approx(22 / result.counted_area_mm2)


def test_a_narrow_strip_slides_the_window_along_its_length():
    size = (1000, 6000)  # narrower than a window, four windows tall
    points = np.column_stack([np.full(8, 500.0), np.linspace(4700, 5900, 8)])
    result = hpf_counts(np.concatenate([points, [(10.0, 10.0)]]), size, MPP)
    assert result.hotspot_count == 8 and result.partial
    assert result.hotspot[2] == 1000 and result.hotspot[3] == pytest.approx(WINDOW_H)


def test_the_rule_sentence_names_the_bar_as_a_percentage():
    assert tissue_bars(0.95) == (0.95, 0.75, 0.5, 0.25, 0.0)
    assert "at least 95 % tissue" in hotspot_rule(0.95, 0.95)
    lowered = hotspot_rule(0.95, 0.5)
    assert "No 10-HPF window is 95 % tissue" in lowered and "at least 50 % tissue" in lowered
    assert "all windows" in hotspot_rule(0.95, 0.0)
    assert "1 %" not in lowered and "0.95" not in lowered
    assert "0.45 mm² (partial)" in hotspot_rule(0.95, 0.95, 0.45)


@pytest.mark.django_db
def test_a_small_slide_is_partial_in_the_command_the_api_and_the_case_page(
    reviewed_slide, client_for, pathologist, capsys
):
    """The test slide (3000 x 2400 px at 0.25 µm/px, 0.45 mm²) is smaller than 10 HPF."""
    call_command("hpf", "--slide", str(reviewed_slide.pk), "--json")
    summary = json.loads(capsys.readouterr().out)
    area = 3000 * 2400 * 0.25**2 / 1e6
    assert summary["partial"] is True
    assert summary["counted_area_mm2"] == pytest.approx(area, abs=1e-4)
    assert summary["count_per_10_hpf"] == 5  # every finding on the slide
    assert summary["hotspot"] == {"x": 0, "y": 0, "w": 3000, "h": 2400}
    assert summary["count_per_mm2"] == pytest.approx(5 / area, abs=1e-3)
    assert summary["count_per_10_hpf_extrapolated"] == pytest.approx(5 / area * 2.37, abs=0.05)
    assert summary["tissue_threshold"] <= summary["min_tissue"] == 0.95
    assert summary["hotspot_rule"].endswith("counts 0.45 mm² (partial).")
    assert "extrapolated" in summary["grade_rule"] and "Kiupel" in summary["grade_rule"]
    assert summary["grade"] == "High grade"  # 26 per 10 HPF extrapolated (5 counted)
    for key in ("run", "basis", "hotspot", "area_mm2", "hpf_area_mm2", "mpp", "grade"):
        assert key in summary  # the contract's keys stay
    call_command("hpf", "--slide", str(reviewed_slide.pk))
    text = capsys.readouterr().out
    assert "5 in 0.45 mm² (partial)" in text and "per 10 HPF extrapolated" in text

    client = client_for(pathologist)
    api = client.get(f"/api/slides/{reviewed_slide.pk}/hpf/").json()
    assert api["partial"] is True and api["counted_area_mm2"] == summary["counted_area_mm2"]
    page = client.get(f"/cases/{reviewed_slide.case_id}/").content.decode()
    assert "partial: the slide is smaller than 10 HPF" in page
    assert "per 10 HPF (2.37 mm²)" in page and "extrapolated" in page
    assert summary["hotspot_rule"].split(":")[0] in page
