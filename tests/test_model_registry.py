"""The model registry: the shipped models, and refusals that store nothing."""

from pathlib import Path

import pytest
import torch
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from torch import nn

from inference.engine.model_io import DETECTOR_DEFAULTS, ModelSpec, save_native
from inference.engine.networks import CenterNet
from inference.models import ModelVersion
from inference.registry import ModelRejected, file_sha256, register_model


def store_files() -> set[Path]:
    return {p for p in Path(settings.MODEL_STORE).rglob("*") if p.is_file()}


@pytest.fixture
def unchanged(db):
    before = (ModelVersion.objects.count(), store_files())
    yield
    assert (ModelVersion.objects.count(), store_files()) == before


def test_shipped_models_are_registered_active_with_their_hashes(shipped_models):
    detector, classifier = shipped_models["detector"], shipped_models["phase_classifier"]
    assert detector.is_active and classifier.is_active
    assert detector.sha256 == file_sha256(detector.path)
    assert detector.spec["target_mpp"] == 0.25 and detector.spec["patch_px"] == 320
    assert 0 < detector.spec["score_threshold"] < 1
    assert classifier.spec["class_names"][-1] == "non_mitotic"
    assert detector.metrics["detection"]["f1"] > 0  # measured on held-out slides


def test_a_file_that_is_not_a_model_is_refused(tmp_path, unchanged):
    junk = tmp_path / "weights.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelRejected, match="does not load"):
        register_model(junk, name="junk", version="1", task="detector", fmt="native")


def test_an_unknown_format_is_refused(tmp_path, unchanged):
    with pytest.raises(ModelRejected, match="unknown model format 'onnx'"):
        register_model(tmp_path / "x.onnx", name="x", version="1", task="detector", fmt="onnx")


def test_a_spec_that_does_not_match_the_output_is_refused(tmp_path, unchanged):
    weights = tmp_path / "det.pt"
    save_native(CenterNet(num_classes=2), ModelSpec.from_dict(DETECTOR_DEFAULTS), weights)
    scripted = tmp_path / "det.torchscript"
    torch.jit.script(CenterNet(num_classes=2).eval()).save(str(scripted))
    three = {"class_names": ["mitotic_figure", "lookalike", "other"]}
    with pytest.raises(ModelRejected, match="does not match"):
        register_model(
            scripted, name="d", version="1", task="detector", fmt="torchscript", spec=three
        )
    with pytest.raises(ModelRejected, match="does not load"):
        register_model(weights, name="d", version="1", task="detector", fmt="native", spec=three)


class TinyYolo(nn.Module):
    """YOLOv7-shaped output: (N, anchors, 5 + C) in input pixels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.tensor([[40.0, 50.0, 20.0, 20.0, 0.9, 0.8]])
        return rows.expand(x.shape[0], 1, 6) + 0 * x.mean()


def test_a_lab_yolo_detector_registers_and_activates(tmp_path, db):
    weights = tmp_path / "yolo.torchscript"
    torch.jit.script(TinyYolo()).save(str(weights))
    spec = {"class_names": ["mitotic_figure"], "patch_px": 320}
    version = register_model(
        weights,
        name="lab-yolo",
        version="7",
        task="detector",
        fmt="yolo-torchscript",
        spec=spec,
        activate=True,
    )
    assert version.is_active and version.path.exists()
    assert version.sha256 == file_sha256(weights)
    with pytest.raises(ModelRejected, match="does not match"):
        register_model(
            weights,
            name="lab-yolo",
            version="8",
            task="detector",
            fmt="yolo-torchscript",
            spec={"class_names": ["a", "b"]},
        )


def test_admin_upload_form_refuses_a_bad_file(client_for, lab_admin, unchanged):
    upload = SimpleUploadedFile("model.pt", b"garbage" * 100)
    response = client_for(lab_admin).post(
        "/admin/inference/modelversion/add/",
        {
            "name": "bad",
            "version": "1",
            "task": "detector",
            "format": "native",
            "upload": upload,
            "spec": "",
            "training_note": "",
        },
    )
    assert response.status_code == 200
    assert b"Model refused" in response.content


def test_admin_upload_form_registers_a_model(client_for, lab_admin, tmp_path):
    weights = tmp_path / "det.pt"
    save_native(CenterNet(), ModelSpec.from_dict(DETECTOR_DEFAULTS), weights)
    upload = SimpleUploadedFile("det.pt", weights.read_bytes())
    response = client_for(lab_admin).post(
        "/admin/inference/modelversion/add/",
        {
            "name": "lab",
            "version": "2",
            "task": "detector",
            "format": "native",
            "upload": upload,
            "spec": "",
            "training_note": "ours",
            "activate": "on",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    version = ModelVersion.objects.get(name="lab")
    assert version.is_active and version.registered_by == lab_admin
    assert version.sha256 == file_sha256(weights)


def test_pathologist_cannot_open_the_registry(client_for, pathologist):
    response = client_for(pathologist).get("/admin/inference/modelversion/add/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
