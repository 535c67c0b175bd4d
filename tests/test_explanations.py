"""Attribution maps: shape and sanity, the cache, permissions, the explain command, and
whether the maps point at the mitotic figure."""

import json

import numpy as np
import pytest
from django.core.management import call_command

from inference import explain
from inference.engine.attribution import METHODS, CropClassifier, explain_crop, randomisation_check
from inference.management.commands.check_explanations import peak_in_box
from inference.models import Explanation
from inference.registry import CLASSIFIER_NAME, load_version
from inference.tools.synth import render_figure_crop
from tests.conftest import run_worker_burst


@pytest.fixture
def crop_model(shipped_models):
    version = shipped_models["phase_classifier"]
    classifier = load_version(version)
    spec = classifier.spec
    return CropClassifier(classifier.module, spec.network_px, spec.mean, spec.std), spec


def test_each_map_has_the_crops_size_is_finite_and_not_constant(crop_model):
    model, spec = crop_model
    crop, _ = render_figure_crop(seed=70001, kind="metaphase", size=spec.patch_px)
    target, probs, maps = explain_crop(model, crop)
    assert probs.sum() == pytest.approx(1.0, abs=1e-4) and target == int(np.argmax(probs))
    assert [m.method for m in maps] == list(METHODS)
    for m in maps:
        assert m.values.shape == (spec.patch_px, spec.patch_px), m.method
        assert np.isfinite(m.values).all() and m.values.std() > 0, m.method
        assert 0 <= m.quality["deletion_auc"] <= 1 and m.ms > 0
    ig = maps[1]
    # IG's completeness: its attributions add up to the score difference within 5 %
    assert ig.quality["relative_delta_black"] < 0.05 and ig.quality["relative_delta_blurred"] < 0.05


def test_maps_are_reproducible(crop_model):
    model, spec = crop_model
    crop, _ = render_figure_crop(seed=70002, kind="anaphase", size=spec.patch_px)
    methods = ["integrated_gradients", "gradient_shap"]
    _, _, first = explain_crop(model, crop, methods)
    _, _, again = explain_crop(model, crop, methods)
    for a, b in zip(first, again, strict=True):  # GradientSHAP draws from a seeded generator
        assert np.array_equal(a.values, b.values), a.method
    _, _, (alone,) = explain_crop(model, crop, ["gradient_shap"])  # as the worker asks
    assert np.array_equal(alone.values, first[1].values)
    assert alone.quality == first[1].quality


def test_bfloat16_maps_stay_close_to_float32_ones(crop_model):
    import torch

    from inference.engine.attribution import AttributionSettings, _precision, spearman

    if _precision(torch.zeros(1), AttributionSettings()) != "bfloat16":
        pytest.skip("this CPU has no native bfloat16: the maps are computed in float32")
    model, spec = crop_model
    crop, _ = render_figure_crop(seed=70002, kind="anaphase", size=spec.patch_px)
    methods = ["integrated_gradients", "gradient_shap"]
    _, _, reduced = explain_crop(model, crop, methods)
    _, _, full = explain_crop(model, crop, methods, settings=AttributionSettings(bfloat16=False))
    for a, b in zip(reduced, full, strict=True):
        assert (a.parameters["precision"], b.parameters["precision"]) == ("bfloat16", "float32")
        assert spearman(a.values, b.values) > 0.9, a.method


def test_a_chosen_target_class_is_explained(crop_model):
    model, spec = crop_model
    crop, _ = render_figure_crop(seed=70002, kind="anaphase", size=spec.patch_px)
    target, _, _ = explain_crop(model, crop, ["saliency"], target=4)
    assert target == 4
    with pytest.raises(ValueError, match="target class 9"):
        explain_crop(model, crop, ["saliency"], target=9)
    with pytest.raises(ValueError, match="unknown attribution"):
        explain_crop(model, crop, ["lime"])


def test_grad_cam_and_ig_point_at_the_mitotic_figure(crop_model):
    """Pointing game on held-out synthetic crops, the figure up to 2 µm off centre (as
    far as a detection's centre strays)."""
    model, spec = crop_model
    hits = {"grad_cam": 0, "integrated_gradients": 0}
    seeds = range(71000, 71040)
    for seed in seeds:
        phase = ("prophase", "metaphase", "anaphase", "telophase")[seed % 4]
        crop, truth = render_figure_crop(seed, phase, size=spec.patch_px, jitter_um=2.0)
        _, _, maps = explain_crop(model, crop, list(hits))
        for m in maps:
            hits[m.method] += peak_in_box(m.values, truth["box"], margin=2.0)
    rates = {k: v / len(seeds) for k, v in hits.items()}
    print(rates)  # docs/models.md, "Explanations"
    assert rates["grad_cam"] >= 0.8 and rates["integrated_gradients"] >= 0.9, rates


@pytest.mark.django_db
def test_check_explanations_writes_only_the_measured_versions_card(
    shipped_models, settings, tmp_path, capsys
):
    version = shipped_models["phase_classifier"]
    card = tmp_path / f"{version.name}-{version.version}.json"
    card.write_text((settings.SHIPPED_MODELS / card.name).read_text())
    settings.SHIPPED_MODELS = tmp_path
    call_command("check_explanations", "--crops", "2")
    checks = json.loads(card.read_text())["explanation_checks"]
    assert checks["crops"] == 2 and checks["model"] == str(version)
    assert set(checks["pointing_game"]) == set(METHODS) == set(checks["randomisation"])
    # another version of the same name (a fine-tuned candidate) has no card here: its
    # figures are printed, and the shipped card keeps its own
    version.version = "1.0-candidate"
    version.save()
    call_command("check_explanations", "--crops", "1")
    assert '"crops": 1' in capsys.readouterr().out
    assert json.loads(card.read_text())["explanation_checks"]["crops"] == 2


@pytest.mark.django_db
def test_maps_come_from_an_explain_worker_and_are_cached(
    client_for, pathologist, reviewed_run, rq_queues
):
    client = client_for(pathologist)
    finding = reviewed_run.findings.order_by("-score").first()
    first = client.post(f"/findings/{finding.pk}/explain/")
    assert first.status_code == 202 and rq_queues.get_queue("explain").count == 1
    waiting = client.get(f"/findings/{finding.pk}/explanations.json").json()
    assert waiting["pending"] == list(METHODS) and waiting["maps"] == []
    run_worker_burst("explain")
    done = client.get(f"/findings/{finding.pk}/explanations.json").json()
    assert [m["method"] for m in done["maps"]] == list(METHODS) and done["pending"] == []
    assert done["target"] == finding.phase and done["crop"]["size"] == 128
    again = client.post(f"/findings/{finding.pk}/explain/")
    assert again.status_code == 200 and again.json()["pending"] is False
    assert rq_queues.get_queue("explain").count == 0
    saved = Explanation.objects.filter(finding=finding).order_by("pk")
    assert [e.method for e in saved] == list(explain.COMPUTE_ORDER)  # cheapest first
    assert sorted(explain.COMPUTE_ORDER) == sorted(METHODS)
    image = client.get(done["maps"][0]["url"])
    assert image.status_code == 200 and image["Content-Type"] == "image/png"


@pytest.mark.django_db
def test_a_pathologist_who_may_not_see_the_case_gets_no_maps(
    client_for, other_pathologist, reviewed_run
):
    finding = reviewed_run.findings.first()
    (explanation,) = explain.compute(finding, ["grad_cam"])
    client = client_for(other_pathologist)
    for response in (
        client.post(f"/findings/{finding.pk}/explain/"),
        client.get(f"/findings/{finding.pk}/explanations.json"),
        client.get(f"/explanations/{explanation.pk}.png"),
    ):
        assert response.status_code == 404
        assert b"grad_cam" not in response.content and b"PNG" not in response.content[:8]


@pytest.mark.django_db
def test_the_explain_command_writes_maps_and_reports(reviewed_run, tmp_path, capsys):
    finding = reviewed_run.findings.first()
    call_command("explain", "--finding", str(finding.pk), "--out", str(tmp_path), "--json")
    report = json.loads(capsys.readouterr().out)
    assert set(report["methods"]) == set(METHODS)
    assert report["crop"]["width"] == 128 and report["crop"]["mpp"] == 0.25
    for method in METHODS:
        values = np.load(tmp_path / f"{method}.npy")
        assert values.shape == (128, 128)
        assert (tmp_path / f"{method}.png").read_bytes()[:4] == b"\x89PNG"
        assert report["methods"][method]["ms"] > 0
    call_command("explain", "--finding", str(finding.pk), "--method", "saliency")
    assert "saliency" in capsys.readouterr().out
    assert Explanation.objects.filter(finding=finding).count() == len(METHODS)  # reused


@pytest.fixture
def reviewed_run(reviewed_slide, shipped_models):
    """The reviewed slide's run, switched to the shipped classifier (explanations load it)."""
    run = reviewed_slide.runs.get()
    run.classifier = shipped_models["phase_classifier"]
    run.save()
    assert run.classifier.name == CLASSIFIER_NAME
    return run


def test_the_randomisation_check_lowers_similarity_for_methods_that_pass(crop_model):
    model, spec = crop_model
    crops = [render_figure_crop(72000 + i, "metaphase", size=spec.patch_px)[0] for i in range(3)]
    result = randomisation_check(model, crops, ["grad_cam", "integrated_gradients"])
    for method, figures in result.items():
        assert figures["passes"] == (figures["similarity"] < 0.5), method
    assert result["grad_cam"]["passes"]


def test_the_fast_copy_computes_what_the_network_does_and_leaves_it_alone(shipped_models):
    import torch

    classifier = load_version(shipped_models["phase_classifier"])
    spec = classifier.spec
    network = classifier.module.eval()
    fast = CropClassifier(network, spec.network_px, spec.mean, spec.std).eval()
    plain = CropClassifier(network, spec.network_px, spec.mean, spec.std, fast=False).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.module.modules())
    crops = torch.rand(4, 3, spec.patch_px, spec.patch_px)
    with torch.no_grad():
        assert torch.allclose(fast(crops), plain(crops), atol=1e-4)
    assert plain.module is network and fast.module is not network
    weight = next(p for p in network.parameters() if p.dim() == 4)
    assert weight.is_contiguous()  # the shared network keeps torch's default order
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules())


def captums_occlusion(model, crop, target, window=16, stride=8):
    """The crop as a tensor, its blurred baseline, and Captum's own Occlusion map."""
    import torch
    from captum.attr import Occlusion

    from inference.engine.attribution import blurred

    image = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255
    baseline = blurred(image, 4.0)
    theirs = Occlusion(model).attribute(
        image,
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=baseline,
        target=target,
        perturbations_per_eval=32,
    )
    return image, baseline, theirs


@pytest.mark.parametrize(("precision", "tolerance"), [("float32", 1e-4), ("bfloat16", 0.01)])
def test_our_occlusion_is_captums(crop_model, precision, tolerance):
    """In bfloat16 the passes carry differences (on any CPU: where bfloat16 is not
    native, it is only slower), within 1 % of the map's peak."""
    import torch

    from inference.engine.attribution import occlusion

    model, spec = crop_model
    crop, _ = render_figure_crop(71000, "anaphase", size=spec.patch_px)
    image, baseline, theirs = captums_occlusion(model, crop, 1)
    ours, ran_in = occlusion(model, image, baseline, 1, 16, 8, 32, precision)
    assert ran_in == precision and ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=tolerance * float(theirs.abs().max()))


@pytest.mark.parametrize(
    ("side", "window", "stride"),
    [
        (100, 16, 8),  # windows that do not tile the crop: Captum's cut-off edges
        (96, 16, 8),  # 1.5 times the network's input: perturbed before resizing
        (128, 5, 3),  # windows off the 2 px cells of the resize: the same
        (48, 16, 8),  # smaller than the network's input
    ],
)
def test_our_occlusion_is_captums_on_any_crop_and_window(crop_model, side, window, stride):
    """Asked for bfloat16, these run whole float32 passes and say so: through Captum
    where the windows do not tile the crop, else the classifier resizes inside, which
    cannot be traced."""
    import torch

    from inference.engine.attribution import occlusion

    model, spec = crop_model
    crop, _ = render_figure_crop(71000, "anaphase", size=spec.patch_px)
    image, baseline, theirs = captums_occlusion(model, crop[:side, :side], 1, window, stride)
    ours, ran_in = occlusion(model, image, baseline, 1, window, stride, 32, "bfloat16")
    assert ran_in == "float32"
    assert torch.allclose(ours, theirs, atol=1e-4 * float(theirs.abs().max()))


def test_folding_leaves_a_convolution_used_twice_and_norms_without_statistics_alone():
    import torch
    from torch import nn

    from inference.engine.attribution import fold_batch_norms

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.norm = nn.BatchNorm2d(3)
            self.plain = nn.Conv2d(3, 3, 3, padding=1)
            self.live = nn.BatchNorm2d(3, track_running_stats=False)

        def forward(self, x):
            return self.norm(self.conv(x)) + self.conv(x) + self.live(self.plain(x))

    torch.manual_seed(0)
    network = Shared().eval()
    network.norm.running_mean.uniform_(-1, 1)
    folded = fold_batch_norms(network)
    assert isinstance(folded.norm, nn.BatchNorm2d) and isinstance(folded.live, nn.BatchNorm2d)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(folded(x), network(x), atol=1e-5)
