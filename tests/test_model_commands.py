"""A lab brings its models by command: register_model (the admin form's checks) and
activate_model (promotion and rollback), both audited; refusals store nothing."""

import json

import pytest
import torch
from django.core.management import CommandError, call_command

from cases.models import AuditEvent
from inference.models import ModelVersion
from tests.test_model_registry import TinyYolo, store_files

SPEC = {"class_names": ["mitotic_figure"], "patch_px": 320}


@pytest.fixture
def yolo_file(tmp_path):
    path = tmp_path / "yolov7-tiny.torchscript"
    torch.jit.script(TinyYolo()).save(str(path))
    return path


def register(path, version, *extra):
    call_command(
        "register_model", str(path), "--name", "lab-yolo", "--version", version,
        "--task", "detector", "--format", "yolo-torchscript", "--spec", json.dumps(SPEC), *extra,
    )  # fmt: skip


@pytest.mark.django_db
def test_register_then_promote_and_roll_back_with_audit_events(yolo_file, capsys):
    register(yolo_file, "7")
    first = ModelVersion.objects.get(name="lab-yolo", version="7")
    assert not first.is_active and first.path.exists() and first.spec["patch_px"] == 320
    assert "inactive" in capsys.readouterr().out
    register(yolo_file, "8", "--activate")
    second = ModelVersion.objects.get(name="lab-yolo", version="8")
    assert second.is_active

    call_command("activate_model", "lab-yolo", "7")  # rollback
    assert "lab-yolo 8 is now inactive" in capsys.readouterr().out
    active = ModelVersion.objects.filter(task="detector", is_active=True)
    assert list(active) == [first]
    registered = AuditEvent.objects.filter(action="model_registered").values_list(
        "details", flat=True
    )
    assert [d["version"] for d in registered] == ["7", "8"]
    activated = AuditEvent.objects.get(action="model_activated")
    assert activated.details["active"] == "lab-yolo 7"
    assert activated.details["replaced"] == "lab-yolo 8"


@pytest.mark.django_db
def test_refusals_store_nothing(yolo_file, tmp_path):
    before = (ModelVersion.objects.count(), store_files(), AuditEvent.objects.count())
    junk = tmp_path / "weights.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(CommandError, match="Model refused"):
        register(junk, "1")
    with pytest.raises(CommandError, match="spec is not readable JSON"):
        call_command("register_model", str(yolo_file), "--name", "x", "--version", "1",
                     "--task", "detector", "--format", "yolo-torchscript",
                     "--spec", "{oops")  # fmt: skip
    with pytest.raises(CommandError, match="does not match"):
        call_command("register_model", str(yolo_file), "--name", "x", "--version", "2",
                     "--task", "detector", "--format", "yolo-torchscript",
                     "--spec", '{"class_names": ["a", "b"]}')  # fmt: skip
    with pytest.raises(CommandError, match="No model version nope 1"):
        call_command("activate_model", "nope", "1")
    assert (ModelVersion.objects.count(), store_files(), AuditEvent.objects.count()) == before


@pytest.mark.django_db
def test_the_admin_action_activates_through_the_same_audited_path(client_for, lab_admin, yolo_file):
    register(yolo_file, "7")
    version = ModelVersion.objects.get(name="lab-yolo")
    response = client_for(lab_admin).post(
        "/admin/inference/modelversion/",
        {"action": "make_active", "_selected_action": [version.pk]},
    )
    assert response.status_code == 302
    version.refresh_from_db()
    assert version.is_active
    assert AuditEvent.objects.get(action="model_activated").actor == lab_admin
