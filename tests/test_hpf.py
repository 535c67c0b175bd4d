"""Mitotic count per 10 HPF: exact window counts, edges, physical scale, hotspot, grades."""

import json

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from inference.engine.hpf import count_in_rectangle, hpf_counts, window_px
from inference.engine.tissue import TissueMask
from inference.grading import grade
from inference.tools.synth import build_slide_world, ground_truth


def test_ten_hpf_is_a_4_by_3_rectangle_of_2_37_mm2():
    width, height = window_px(0.25, 2.37)
    assert width / height == pytest.approx(4 / 3)
    assert width * height * 0.25**2 / 1e6 == pytest.approx(2.37)
    with pytest.raises(ValueError, match="no µm/px"):
        window_px(None, 2.37)


def test_hotspot_count_equals_a_brute_force_count_on_a_synthetic_slide(synthetic_truth):
    points = [(m["x"], m["y"]) for m in synthetic_truth["mitoses"]]
    size = (synthetic_truth["width"], synthetic_truth["height"])
    result = hpf_counts(points, size, synthetic_truth["mpp"])
    assert result.hotspot_count > 0
    assert result.hotspot_count == count_in_rectangle(points, result.hotspot)
    best = max(  # every window of the grid that lies inside the slide
        count_in_rectangle(points, (i * result.step, j * result.step, *result.window))
        for i in range(result.counts.shape[1] - 31)
        for j in range(result.counts.shape[0] - 23)
    )
    assert result.hotspot_count == best


def edge_points(size, near, rng, n=9) -> dict[str, np.ndarray]:
    """n points within 200 px of each edge, each set within ``near`` px of the top-left."""
    w, h = size
    return {
        "left": np.column_stack([rng.uniform(0, 200, n), rng.uniform(0, near[1], n)]),
        "top": np.column_stack([rng.uniform(0, near[0], n), rng.uniform(0, 200, n)]),
        "right": np.column_stack([rng.uniform(w - 200, w, n), rng.uniform(0, near[1], n)]),
        "bottom": np.column_stack([rng.uniform(0, near[0], n), rng.uniform(h - 200, h, n)]),
    }


def test_mitoses_in_the_outermost_200_px_of_each_edge_are_counted():
    mpp = 0.25
    width, height = window_px(mpp, 2.37)
    rng = np.random.default_rng(1)
    size = (int(width) * 3, int(height) * 3)
    for name, points in edge_points(size, (width, height), rng).items():
        assert hpf_counts(points, size, mpp).hotspot_count == 9, name
    one_window = (int(width), int(height))
    everything = np.concatenate(list(edge_points(one_window, one_window, rng).values()))
    assert hpf_counts(everything, one_window, mpp).hotspot_count == len(everything) == 36


def test_the_same_tissue_at_20x_and_40x_gives_the_same_count_per_mm2():
    rng = np.random.default_rng(2)
    microns = np.concatenate(
        [rng.uniform(0, 5000, (300, 2)), rng.normal(2500, 250, (80, 2))]
    )  # physical positions in a 5 x 5 mm field
    at_40x = hpf_counts(microns / 0.25, (20000, 20000), 0.25)
    at_20x = hpf_counts(microns / 0.5, (10000, 10000), 0.5)
    assert at_40x.hotspot_count == at_20x.hotspot_count > 40
    assert at_40x.hotspot_per_mm2 == pytest.approx(at_20x.hotspot_per_mm2)


def test_the_hotspot_keeps_to_windows_that_are_mostly_tissue():
    mpp = 0.25
    width, height = window_px(mpp, 2.37)
    size = (int(width * 3), int(height * 2))
    mask = np.ones((20, 30), bool)
    mask[:, 20:] = False  # the right third of the slide is glass
    tissue = TissueMask(mask, size[0] / 30, size[1] / 20)
    crowd_on_glass = np.column_stack([np.full(50, size[0] - 500.0), np.full(50, 1000.0)])
    sparse = np.column_stack([np.linspace(100, width - 100, 5), np.full(5, 500.0)])
    result = hpf_counts(np.concatenate([crowd_on_glass, sparse]), size, mpp, tissue=tissue)
    assert result.hotspot_count == 5 and not result.relaxed
    assert result.hotspot[0] + result.window[0] <= size[0] * 2 / 3 + result.step


def test_grade_cut_offs_per_tumour_type(settings):
    assert grade("canine_mct", 7, 2.9)[0] == "High grade"
    label, rule = grade("canine_mct", 6, 2.5)
    assert (label, rule) == ("Low grade", "Kiupel 2011 two-tier (Low grade: < 7 per 10 HPF)")
    assert grade("canine_mct", 7, 2.9)[1].endswith("(High grade: ≥ 7 per 10 HPF)")
    assert grade("breast", 12, 5.0)[1].endswith("(Mitotic score 2: ≥ 9 and < 18 per 10 HPF)")
    assert grade("breast", 12, 5.0)[0] == "Mitotic score 2"
    assert grade("melanoma", 1, 0.4)[0] == "< 1 per mm²"
    assert grade("other", 30, 12.0) == ("", "no grading rule is configured for this tumour type")
    settings.MITOTIC_GRADE_RULES = {
        "canine_mct": {"name": "Lab rule", "unit": "per_10_hpf", "bands": [[0, "low"], [5, "high"]]}
    }
    assert grade("canine_mct", 6, 2.5) == ("high", "Lab rule (high: ≥ 5 per 10 HPF)")
    assert grade("canine_mct", 4, 1.7) == ("low", "Lab rule (low: < 5 per 10 HPF)")


@pytest.fixture(scope="session")
def synthetic_truth():
    """Ground truth of a 2.5 x 2 mm synthetic slide (laid out, not rendered)."""
    world = build_slide_world(seed=31, size=(10000, 8000), mpp=0.25, mitoses_per_mm2=20.0)
    return ground_truth(world, seed=31)


@pytest.mark.django_db
def test_hpf_command_reports_the_latest_run(finished_run, capsys):
    call_command("hpf", "--slide", str(finished_run.slide_id), "--json")
    summary = json.loads(capsys.readouterr().out)
    assert summary["run"] == finished_run.pk
    assert set(summary["hotspot"]) == {"x", "y", "w", "h"}
    per_mm2 = summary["count_per_10_hpf"] / summary["counted_area_mm2"]
    assert summary["count_per_mm2"] == pytest.approx(per_mm2, abs=1e-3)
    assert summary["hpf_area_mm2"] == 0.237 and summary["mpp"] == pytest.approx(0.25)
    assert summary["partial"] and summary["area_mm2"] == 2.37  # a 0.45 mm² slide
    assert summary["grade"] in ("Low grade", "High grade") and "Kiupel" in summary["grade_rule"]
    call_command("hpf", "--slide", str(finished_run.slide_id))
    assert "per 10 HPF" in capsys.readouterr().out


@pytest.mark.django_db
def test_a_slide_without_mpp_gets_a_clear_message(finished_run, client_for, pathologist):
    slide = finished_run.slide
    slide.mpp_x = slide.mpp_y = None
    slide.save()
    finished_run.hpf_maps.all().delete()
    with pytest.raises(CommandError, match="no µm/px"):
        call_command("hpf", "--slide", str(slide.pk))
    response = client_for(pathologist).get(f"/cases/{slide.case_id}/")
    assert "has no µm/px" in response.content.decode()


@pytest.mark.django_db
def test_hpf_json_and_heatmap_image_respect_permissions(
    finished_run, client_for, pathologist, other_pathologist
):
    url = f"/slides/{finished_run.slide_id}/hpf.json"
    data = client_for(pathologist).get(url).json()
    assert len(data["grid"]["counts"]) > 0
    image = client_for(pathologist).get(data["grid"]["image_url"])
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    other = client_for(other_pathologist)
    for address in (url, data["grid"]["image_url"]):
        response = other.get(address)
        assert response.status_code == 404 and b"count_per" not in response.content


def test_a_runs_map_is_counted_on_the_tissue_it_was_found_on(finished_run):
    """The job hands the run's tissue mask to the map (and to MIL) instead of detecting it
    twice more: the same map as detecting it again."""
    from inference.hpf import compute_ai_map
    from inference.models import HpfMap

    stored = HpfMap.objects.get(run=finished_run, basis=HpfMap.Basis.AI)
    tissue, counts = stored.tissue, stored.counts
    again = compute_ai_map(finished_run)  # detects the slide's tissue from its thumbnail
    assert again.tissue == tissue and again.counts == counts
    assert {"mil", "hpf_map"} <= set(finished_run.timings)
