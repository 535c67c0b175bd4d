"""The out-of-domain guard (issue 15 §1): every run says whether the slide's tissue lies
within the detector's training data; a real H&E slide is out of domain and the portal says
so where a reader looks, proposes no grade and prefills no count from it.

The real H&E is the 240 px skin crop shipped in the ``wsidicom-data`` package (Apache-2.0,
a dev extra), never used to calibrate the guard; it is mirror-tiled to a 720 px slide at
0.5 µm/px (a 20x scan), written as a pyramidal TIFF.
"""

import csv
import io
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
from django.conf import settings
from django.core.management import call_command
from PIL import Image

from cases.models import AuditEvent, Case, CaseAssignment, Patient
from cases.registration import register_slide
from inference import services
from inference.engine.domain import DomainDescription, fit_description, measure
from inference.engine.domain_probe import DomainProbe
from inference.engine.model_io import load_detector
from inference.engine.pipeline import run_slide
from inference.jobs import execute_run
from inference.models import Finding, InferenceRun, ModelVersion
from inference.registry import ModelRejected, register_model, register_shipped_models
from inference.tools.domain import slide_from_image

REAL_HE = "data/encoded/JPEG_Baseline_(Process_1)-RGB-8.jpg"
CARD = json.loads((settings.SHIPPED_MODELS / "mitolens-detector-1.0.json").read_text())


def test_the_probe_measures_each_input_channels_mean_and_std() -> None:
    network = _detector().module
    batch = torch.rand(3, 3, 64, 64) * 4 - 1
    with DomainProbe(network) as probe, torch.no_grad():
        network(batch)
    colour = probe.features()[:, -6:]
    expected = torch.cat([batch.mean((2, 3)), batch.std((2, 3))], 1).double().numpy()
    assert np.allclose(colour, expected, atol=1e-5)


def _detector():
    return load_detector(settings.SHIPPED_MODELS / CARD["weights"], "native", CARD["spec"])


@pytest.fixture(scope="session")
def real_slide(import_dir) -> Path:
    """Real H&E as a small 20x slide (mirror tiles keep the tissue's own texture)."""
    crop = np.asarray(Image.open(resources.files("wsidicom_data") / REAL_HE).convert("RGB"))
    row = np.concatenate([crop, crop[:, ::-1], crop], axis=1)
    mosaic = np.concatenate([row, row[::-1], row], axis=0)
    return slide_from_image(mosaic, import_dir / "real-he-skin.tiff", mpp=0.5)


@pytest.fixture
def real_case(db, pathologist, real_slide):
    patient = Patient.objects.create(external_ref="MRN-REAL")
    case = Case.objects.create(accession="S-REAL", patient=patient, tumour_type="canine_mct")
    CaseAssignment.objects.create(case=case, pathologist=pathologist)
    register_slide(real_slide, case, "real-he-skin.tiff")
    return case


def _run(slide) -> InferenceRun:
    run = services.start_run(slide, enqueue_job=False)
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == InferenceRun.Status.SUCCEEDED, run.error
    return run


@pytest.fixture
def real_run(real_case, shipped_models) -> InferenceRun:
    """A run of the shipped models on the real slide, with one AI finding to decide on
    (added here: what the AI finds on real tissue is no part of these tests)."""
    run = _run(real_case.slides.get())
    if not run.findings.exists():
        Finding.objects.create(
            slide=run.slide, run=run, x=300, y=300, box_x0=290, box_y0=290, box_x1=310,
            box_y1=310, score=0.9, phase="metaphase", phase_probs={"metaphase": 0.9},
        )  # fmt: skip
    return run


def test_card_describes_the_detector_domain_with_its_calibration():
    domain = CARD["domain"]
    description = DomainDescription.from_dict(domain)
    assert description.threshold > 0 and domain["fit"]["patches"] > 500
    calibration = domain["calibration"]
    assert {r["status"] for r in calibration["held_out_synthetic"]} == {"in_domain"}
    assert {r["status"] for r in calibration["real"]} == {"out_of_domain"}
    assert {r["status"] for r in domain["held_out_real"]} == {"out_of_domain"}


def test_held_out_synthetic_in_domain_and_real_he_out_of_domain(
    synthetic_slide, mitotic_slides, real_slide
):
    """Seeds 7 and 9102 were never used in training (1001-1060); the real crop never
    calibrated the threshold."""
    detector = _detector()
    for path in (synthetic_slide, mitotic_slides["20x"]):
        stats = run_slide(path, detector, device="cpu", num_workers=0, domain=CARD["domain"])
        assert stats.stats["domain"]["status"] == "in_domain", (path.name, stats.stats["domain"])
    real = run_slide(real_slide, detector, device="cpu", num_workers=0, domain=CARD["domain"])
    domain = real.stats["domain"]
    assert domain["status"] == "out_of_domain" and domain["distance"] > domain["threshold"]
    assert domain["patches"] > 0


def test_without_description_the_status_is_unknown(synthetic_slide):
    result = run_slide(synthetic_slide, _detector(), device="cpu", num_workers=0)
    assert result.stats["domain"]["status"] == "unknown"
    assert result.stats["domain"]["distance"] is None
    assert measure(None, np.zeros((0, 0)))["status"] == "unknown"


def test_description_fits_a_gaussian_and_scores_far_points_far():
    rng = np.random.default_rng(0)
    near = rng.normal(size=(400, 10))
    description = fit_description(near, components=3)
    assert description.slide_distance(near) < description.slide_distance(near + 5)
    again = DomainDescription.from_dict({**description.to_dict(), "threshold": 1.0})
    assert np.allclose(again.distances(near[:5]), description.distances(near[:5]), rtol=1e-4)


@pytest.mark.django_db
def test_real_slide_run_is_out_of_domain_in_the_record_and_the_api(
    client_for, pathologist, real_run
):
    assert real_run.domain_status == "out_of_domain"
    assert real_run.domain_distance > real_run.domain_threshold > 0
    body = client_for(pathologist).get(f"/api/runs/{real_run.pk}/").json()
    assert body["domain_status"] == "out_of_domain"
    assert body["domain_distance"] == pytest.approx(real_run.domain_distance)
    assert body["domain_threshold"] == pytest.approx(real_run.domain_threshold)
    hpf = client_for(pathologist).get(f"/api/slides/{real_run.slide_id}/hpf/").json()
    assert hpf["grade"] is None and hpf["unverified"] is True  # no grade, and why
    assert hpf["grade_rule"].startswith("No grade proposed: the AI is out of its domain")
    assert hpf["domain"]["status"] == "out_of_domain"
    out = io.StringIO()
    call_command("hpf", "--slide", str(real_run.slide_id), stdout=out)
    assert "domain: out_of_domain (count unverified)" in out.getvalue()


@pytest.mark.django_db
def test_case_page_and_viewer_say_plainly_the_ai_is_out_of_its_domain(
    client_for, pathologist, real_run
):
    client = client_for(pathologist)
    page = client.get(f"/cases/{real_run.slide.case_id}/").content.decode()
    assert "The AI is out of its domain on real-he-skin.tiff" in page
    assert "unverified" in page
    assert "Not prefilled from real-he-skin.tiff" in page
    assert 'name="final_mitotic_count" min="0" required value=""' in page
    assert "No grade proposed" in page
    viewer = client.get(f"/slides/{real_run.slide_id}/").content.decode()
    assert "The AI is out of its domain on this slide" in viewer


@pytest.mark.django_db
def test_in_domain_run_has_no_banner_and_prefills_the_form(client_for, pathologist, finished_run):
    assert finished_run.domain_status == "in_domain"
    assert finished_run.domain_distance <= finished_run.domain_threshold
    page = client_for(pathologist).get(f"/cases/{finished_run.slide.case_id}/").content.decode()
    assert "out of its domain" not in page and "domain-banner" not in page
    assert "Prefilled from the reviewed count" in page


@pytest.mark.django_db
def test_audit_csv_has_the_runs_domain_status(client_for, pathologist, lab_admin, real_run):
    finding = real_run.findings.first()
    decision = {"verdict": "disagree", "reason": "lookalike"}
    client_for(pathologist).post(f"/findings/{finding.pk}/decide/", decision)
    response = client_for(lab_admin).get("/audit/export/", {"download": "1"})
    text = b"".join(response.streaming_content).decode("utf-8").lstrip("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["ai_domain_status"] for r in rows] == ["out_of_domain"]


@pytest.mark.django_db
def test_lab_model_without_description_gives_unknown(real_case, shipped_models):
    """A lab's detector registered without a description: its runs are 'unknown'."""
    register_model(
        settings.SHIPPED_MODELS / CARD["weights"],
        name="lab-detector", version="1", task="detector", fmt="native", spec=CARD["spec"],
        activate=True,
    )  # fmt: skip
    run = _run(real_case.slides.get())
    assert run.detector.name == "lab-detector" and run.detector.domain == {}
    assert run.domain_status == "unknown" and run.domain_distance is None
    summary = services.slide_hpf(run.slide)[1]
    assert summary["domain"]["status"] == "unknown" and not summary["unverified"]


@pytest.mark.django_db
def test_registry_refuses_an_unreadable_description(shipped_models):
    weights = settings.SHIPPED_MODELS / CARD["weights"]
    with pytest.raises(ModelRejected, match="domain description"):
        register_model(weights, name="d", version="2", task="detector", fmt="native",
                       spec=CARD["spec"], domain={"method": "guesswork"})  # fmt: skip
    assert shipped_models["detector"].domain["threshold"] == CARD["domain"]["threshold"]


@pytest.mark.django_db
def test_a_shipped_detector_registered_before_the_guard_gets_its_description(shipped_models):
    """An install whose shipped detector was registered before the card described its
    training data gets the description (same weights), audited; runs are then measured."""
    detector = shipped_models["detector"]
    ModelVersion.objects.filter(pk=detector.pk).update(domain={})
    assert register_shipped_models() == []
    detector.refresh_from_db()
    assert detector.domain == CARD["domain"]
    event = AuditEvent.objects.get(action="modelversion_changed", object_id=str(detector.pk))
    assert "domain" in event.details["changes"]
    assert register_shipped_models() == []  # once
    assert AuditEvent.objects.filter(action="modelversion_changed").count() == 1
