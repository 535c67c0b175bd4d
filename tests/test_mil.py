"""Attention MIL: the network, bags, the shipped model on held-out regions, the slide map."""

import json

import numpy as np
import pytest
import torch

from inference.engine.mil import (
    GRID,
    INSTANCE_PX,
    GatedAttentionMIL,
    slide_attention,
    to_instances,
    tumour_fractions,
)
from inference.engine.tissue import detect_tissue
from inference.models import MilMap
from inference.registry import load_version
from inference.tools.synth import generate_slide
from slides import open_slide


def test_gated_attention_weights_are_a_distribution_over_each_bag():
    network = GatedAttentionMIL().eval()
    logits, attention = network(torch.rand(3, GRID * GRID, 3, INSTANCE_PX, INSTANCE_PX))
    assert logits.shape == (3,) and attention.shape == (3, GRID * GRID)
    assert torch.allclose(attention.sum(1), torch.ones(3))


def test_a_region_becomes_a_grid_of_instances_in_reading_order():
    region = np.zeros((GRID * INSTANCE_PX, GRID * INSTANCE_PX, 3), np.uint8)
    region[:INSTANCE_PX, INSTANCE_PX : 2 * INSTANCE_PX] = 255  # row 0, column 1
    instances = to_instances(region)
    assert instances.shape == (GRID * GRID, 3, INSTANCE_PX, INSTANCE_PX)
    assert instances[1].min() == 1.0 and instances[0].max() == 0.0


def test_tumour_fractions_of_a_square_polygon():
    square = [[[0, 0], [400, 0], [400, 400], [0, 400]]]
    cells = tumour_fractions(square, (0, 0), mpp_ratio=8.0, cells=4, cell_px=25)
    assert cells[0, 0] == pytest.approx(1.0, abs=0.05) and cells[2:, 2:].max() < 0.01


@pytest.fixture(scope="module")
def tumour_slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("mil") / "mil.tiff"
    generate_slide(path, seed=8150, size=(12000, 12000), mpp=0.25, tumour_fraction=0.25)
    return path


@pytest.mark.django_db
def test_the_shipped_model_finds_the_tumour_regions_of_a_held_out_slide(
    shipped_models, tumour_slide
):
    model, spec = load_version(shipped_models["mil"])
    truth = json.loads(tumour_slide.with_suffix(".json").read_text())
    with open_slide(tumour_slide) as slide:
        result = slide_attention(slide, model, detect_tissue(slide))
    rows, cols = result.probability.shape
    tumour = np.array(
        [
            [
                tumour_fractions(
                    truth["tumour_regions"],
                    (c * result.bag_px, r * result.bag_px),
                    result.bag_px / (GRID * INSTANCE_PX),
                    GRID,
                    INSTANCE_PX,
                ).mean()
                for c in range(cols)
            ]
            for r in range(rows)
        ]
    )
    on = result.on_tissue
    clear_tumour, clear_stroma = on & (tumour >= 0.3), on & (tumour < 0.05)
    assert clear_tumour.any() and clear_stroma.any()
    assert result.probability[clear_tumour].mean() > result.probability[clear_stroma].mean() + 0.3
    assert np.allclose(
        result.attention[np.kron(on, np.ones((GRID, GRID), bool))].reshape(-1).sum() / on.sum(),
        GRID * GRID,
        rtol=1e-3,
    )
    card = shipped_models["mil"].metrics
    assert card["validation"]["bag_accuracy"] >= 0.85


@pytest.mark.django_db
def test_a_run_with_an_active_mil_model_maps_the_slide(
    client_for, pathologist, other_pathologist, slide, shipped_models
):
    from inference import services
    from inference.jobs import execute_run

    run = services.start_run(slide, enqueue_job=False)
    execute_run(run.pk)
    mil = MilMap.objects.get(run=run)
    assert np.asarray(mil.attention).shape == tuple(
        GRID * n for n in np.asarray(mil.probability).shape
    )
    data = client_for(pathologist).get(f"/slides/{slide.pk}/mil.json").json()
    assert data["regions"] > 0 and data["region_um"] == pytest.approx(512, abs=1)
    image = client_for(pathologist).get(data["image_url"])
    assert image.status_code == 200 and image["Content-Type"] == "image/png"
    for url in (f"/slides/{slide.pk}/mil.json", data["image_url"]):
        assert client_for(other_pathologist).get(url).status_code == 404
