"""Everything that changes the record is audited, with before/after values, in the same
transaction: admin edits (cases, assignments, slides, model versions) and slide
registration by the upload page, the API and import_slides."""

import pytest
from django.contrib.admin import ModelAdmin
from django.contrib.auth.models import User
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.forms import CheckboxInput

from cases.models import AuditEvent, Case, CaseAssignment, Slide

pytestmark = pytest.mark.django_db


def admin_form_data(client, url: str) -> dict:
    """What the admin change page would post back unchanged: the object's form, and each
    inline's management form and rows (from the page's own forms)."""
    context = client.get(url).context
    forms = [context["adminform"].form]
    for inline in context["inline_admin_formsets"]:
        forms += [inline.formset.management_form, *inline.formset.forms]
    data = {}
    for form in forms:
        for name, field in form.fields.items():
            value = form[name].value()
            if isinstance(field.widget, CheckboxInput):
                if value:
                    data[form.add_prefix(name)] = "on"
            else:
                data[form.add_prefix(name)] = "" if value is None else value
    return data


def post_change(client, url: str, **changes):
    data = {**admin_form_data(client, url), **changes}
    return client.post(url, {k: v for k, v in data.items() if v is not None})


def case_url(case) -> str:
    return f"/admin/cases/case/{case.pk}/change/"


def test_a_case_edit_in_admin_is_audited_with_before_and_after(client_for, lab_admin, case):
    client = client_for(lab_admin)
    response = post_change(client, case_url(case), blinded="on", status="awaiting_review")
    assert response.status_code == 302
    event = AuditEvent.objects.get(action="case_changed")
    assert event.details["changes"] == {
        "blinded": [False, True],
        "status": ["registered", "awaiting_review"],
    }
    assert (event.actor, event.case, event.object_id) == (lab_admin, case, str(case.pk))
    assert event.client_ip == "127.0.0.1"
    case.refresh_from_db()
    assert case.blinded and case.status == "awaiting_review"


def test_a_case_cannot_be_reopened_or_signed_out_by_editing_its_status(
    client_for, lab_admin, case, pathologist
):
    client = client_for(lab_admin)
    refused = post_change(client, case_url(case), status="signed_out")
    assert refused.status_code == 200 and b"signed out from its case page" in refused.content
    Case.objects.filter(pk=case.pk).update(
        status="signed_out", final_mitotic_count=7, final_grade="High", signed_out_by=pathologist
    )
    refused = post_change(client, case_url(case), status="in_review")
    assert refused.status_code == 200 and b"Reopen button on its case page" in refused.content
    case.refresh_from_db()
    assert (case.status, case.final_mitotic_count, case.final_grade) == ("signed_out", 7, "High")
    assert not changes_recorded().exists()


def test_assignments_added_and_removed_through_the_inline_are_audited(
    client_for, case, pathologist, other_pathologist
):
    superuser = User.objects.create_superuser("root", password="x")  # lab admins cannot delete
    client = client_for(superuser)
    post_change(client, case_url(case), **{"assignments-1-pathologist": other_pathologist.pk})
    added = AuditEvent.objects.get(action="caseassignment_added")
    assert added.case == case and added.details["after"]["pathologist"] == other_pathologist.pk
    assert CaseAssignment.objects.get(pk=added.object_id).assigned_by == superuser

    kept = CaseAssignment.objects.get(case=case, pathologist=pathologist)
    form = admin_form_data(client, case_url(case))
    row = next(k for k, v in form.items() if k.endswith("-id") and v == kept.pk)
    post_change(client, case_url(case), **{row.replace("-id", "-DELETE"): "on"})
    removed = AuditEvent.objects.get(action="caseassignment_deleted")
    assert removed.object_id == str(kept.pk) and removed.case == case
    assert removed.details["before"]["pathologist"] == pathologist.pk
    assert not CaseAssignment.objects.filter(pk=kept.pk).exists()


def test_mpp_override_in_the_slide_admin_and_the_case_inline_is_audited(
    client_for, lab_admin, slide
):
    client = client_for(lab_admin)
    post_change(client, f"/admin/cases/slide/{slide.pk}/change/", mpp_override="0.3")
    event = AuditEvent.objects.get(action="slide_changed")
    assert event.details["changes"] == {"mpp_override": [None, 0.3]}
    assert event.case == slide.case

    form = admin_form_data(client, case_url(slide.case))
    row = next(
        k
        for k, v in form.items()
        if k.startswith("slides-") and k.endswith("-id") and v == slide.pk
    )
    post_change(client, case_url(slide.case), **{row.replace("-id", "-mpp_override"): "0.26"})
    latest = AuditEvent.objects.filter(action="slide_changed").last()
    assert latest.details["changes"] == {"mpp_override": [0.3, 0.26]}
    assert not AuditEvent.objects.filter(action="case_changed").exists()  # nothing else moved


def test_activating_a_model_version_by_its_field_is_audited(client_for, lab_admin, model_versions):
    from inference.models import ModelVersion

    detector, _ = model_versions
    candidate = ModelVersion.objects.create(
        name="det", version="2", task="detector", weights="d2.pt", sha256="e" * 64, spec={}
    )
    client = client_for(lab_admin)
    url = f"/admin/inference/modelversion/{candidate.pk}/change/"
    assert post_change(client, url, is_active="on").status_code == 302
    activated = AuditEvent.objects.get(action="model_activated")
    assert activated.details["active"] == "det 2" and activated.details["replaced"] == "det 1"
    detector.refresh_from_db()
    candidate.refresh_from_db()
    assert candidate.is_active and not detector.is_active

    post_change(client, url, is_active=None, training_note="withdrawn: drifts on 20x")
    changed = AuditEvent.objects.get(action="modelversion_changed")
    assert changed.details["changes"] == {
        "is_active": [True, False],
        "training_note": ["", "withdrawn: drifts on 20x"],
    }


def test_an_admin_edit_and_its_event_roll_back_together(client_for, lab_admin, case, monkeypatch):
    """A failure after the event is written, still inside the admin's transaction."""

    def fail(*args, **kwargs):
        raise RuntimeError("after the record")

    monkeypatch.setattr(ModelAdmin, "log_change", fail)
    client = client_for(lab_admin)
    data = {**admin_form_data(client, case_url(case)), "blinded": "on"}
    with pytest.raises(RuntimeError):
        client.post(case_url(case), data)
    case.refresh_from_db()
    assert not case.blinded and not changes_recorded().exists()


def changes_recorded():
    """Events other than the test client's sign-in."""
    return AuditEvent.objects.exclude(action="login")


def registered_events():
    return list(AuditEvent.objects.filter(action="slide_registered"))


def test_a_slide_uploaded_on_the_page_is_audited(client_for, lab_admin, case, synthetic_slide):
    upload = SimpleUploadedFile("upload.tiff", synthetic_slide.read_bytes())
    client_for(lab_admin).post(f"/cases/{case.pk}/slides/upload/", {"file": upload, "label": "A1"})
    slide = Slide.objects.get()
    (event,) = registered_events()
    assert (event.actor, event.case, event.object_id) == (lab_admin, case, str(slide.pk))
    assert event.details == {
        "name": "upload.tiff",
        "label": "A1",
        "sha256": slide.sha256,
        "size_bytes": slide.size_bytes,
        "vendor": slide.vendor,
        "width": slide.width,
        "height": slide.height,
        "mpp_x": slide.mpp_x,
        "mpp_y": slide.mpp_y,
        "uploaded_by": "admin1",
    }


def test_a_slide_uploaded_through_the_api_is_audited(client_for, lab_admin, case, synthetic_slide):
    with open(synthetic_slide, "rb") as handle:
        response = client_for(lab_admin).post(f"/api/cases/{case.pk}/slides/", {"file": handle})
    assert response.status_code == 201
    (event,) = registered_events()
    assert event.object_id == str(response.json()["id"]) and event.client_ip == "127.0.0.1"
    assert event.details["sha256"] == response.json()["sha256"]


def test_an_imported_slide_and_its_new_case_are_audited(synthetic_slide):
    call_command("import_slides", str(synthetic_slide), "--case", "S-77", "--patient", "P-77")
    case = Case.objects.get(accession="S-77")
    actions = list(changes_recorded().values_list("action", flat=True))
    assert actions == ["patient_added", "slide_registered", "case_added"]
    (event,) = registered_events()
    assert event.case == case and event.actor is None and event.details["uploaded_by"] == ""
    assert AuditEvent.objects.get(action="case_added").details["after"]["accession"] == "S-77"


def test_a_refused_upload_leaves_no_event(client_for, lab_admin, case, no_slide_stored):
    upload = SimpleUploadedFile("scan.svs", b"GIF89a not really a slide" * 100)
    response = client_for(lab_admin).post(f"/cases/{case.pk}/slides/upload/", {"file": upload})
    assert response.status_code == 400
    assert not changes_recorded().exists()


def test_deletions_in_admin_are_audited_with_what_was_deleted(client_for):
    from cases.models import Patient

    superuser = User.objects.create_superuser("root", password="x")
    client = client_for(superuser)
    one, two = (Patient.objects.create(external_ref=ref) for ref in ("MRN-8", "MRN-9"))
    client.post(f"/admin/cases/patient/{one.pk}/delete/", {"post": "yes"})
    bulk = {"action": "delete_selected", "_selected_action": [two.pk], "post": "yes"}
    client.post("/admin/cases/patient/", bulk)
    assert not Patient.objects.filter(external_ref__in=["MRN-8", "MRN-9"]).exists()
    deleted = AuditEvent.objects.filter(action="patient_deleted").order_by("id")
    assert [e.details["before"]["external_ref"] for e in deleted] == ["MRN-8", "MRN-9"]
    assert [e.object_id for e in deleted] == [str(one.pk), str(two.pk)]


def test_findings_cannot_be_deleted_in_admin(client_for, reviewed_slide):
    from inference.models import Finding

    client = client_for(User.objects.create_superuser("root", password="x"))
    finding = Finding.objects.filter(slide=reviewed_slide, decisions=None).first()
    assert (
        client.post(f"/admin/inference/finding/{finding.pk}/delete/", {"post": "yes"}).status_code
        == 403
    )
    bulk = {"action": "delete_selected", "_selected_action": [finding.pk], "post": "yes"}
    client.post("/admin/inference/finding/", bulk)
    assert Finding.objects.filter(pk=finding.pk).exists()


def test_the_applications_own_status_changes_are_recorded(reviewed_slide, pathologist):
    """AI runs move a case between registered / AI queued / running / awaiting review, and
    the first decision puts it in review: each move is a case_changed event with before and
    after, like an admin's edit."""
    from inference.models import InferenceRun
    from inference.services import refresh_case_status
    from review import services as review

    case = reviewed_slide.case
    InferenceRun.objects.filter(slide=reviewed_slide).update(status="running")
    refresh_case_status(case.pk)
    refresh_case_status(case.pk)  # no change: no event
    InferenceRun.objects.filter(slide=reviewed_slide).update(status="succeeded")
    refresh_case_status(case.pk)
    review.decide(reviewed_slide.findings.first(), pathologist, "agree")
    review.decide(reviewed_slide.findings.last(), pathologist, "agree")  # already in review
    events = AuditEvent.objects.filter(action="case_changed", case=case).order_by("id")
    assert [e.details["changes"]["status"] for e in events] == [
        ["registered", "ai_running"],
        ["ai_running", "awaiting_review"],
        ["awaiting_review", "in_review"],
    ]
    case.refresh_from_db()
    assert case.status == "in_review"
    call_command("verify_audit")
