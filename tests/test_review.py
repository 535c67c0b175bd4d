"""Review in the viewer: decisions, history, missed mitoses, blinding, sign-out, reopening."""

import threading

import pytest
from django.db import connection
from django.test import Client

from cases.models import AuditEvent, Case, CaseAssignment
from inference.models import Finding
from review.models import Decision


def findings(slide):
    return list(Finding.objects.filter(slide=slide).order_by("-score"))


def decide(client, finding, verdict, **fields):
    return client.post(f"/findings/{finding.pk}/decide/", {"verdict": verdict, **fields})


@pytest.mark.django_db
def test_a_decision_saves_and_a_changed_mind_is_a_new_row(client_for, pathologist, reviewed_slide):
    client = client_for(pathologist)
    first = findings(reviewed_slide)[0]
    response = decide(client, first, "agree", corrected_phase="anaphase", reason="", comment="ok")
    assert response.status_code == 200
    assert response.json()["progress"] == {"decided": 1, "total": 5, "carried": 0, "kept": 0}
    decide(client, first, "disagree", reason="lookalike")
    rows = Decision.objects.filter(finding=first).order_by("id")
    assert [d.verdict for d in rows] == ["agree", "disagree"]
    assert rows[0].corrected_phase == "anaphase"
    state = client.get(f"/slides/{reviewed_slide.pk}/review.json").json()
    assert state["decisions"][str(first.pk)]["verdict"] == "disagree"
    assert state["progress"] == {"decided": 1, "total": 5, "carried": 0, "kept": 0}
    history = client.get(f"/findings/{first.pk}/decisions.json").json()["decisions"]
    assert [d["verdict"] for d in history] == ["agree", "disagree"]
    case = Case.objects.get(pk=reviewed_slide.case_id)
    assert case.status == Case.Status.IN_REVIEW
    assert AuditEvent.objects.filter(action="decision", case=case).count() == 2


@pytest.mark.django_db
def test_bad_input_is_refused_and_changes_nothing(client_for, pathologist, reviewed_slide):
    client = client_for(pathologist)
    first = findings(reviewed_slide)[0]
    for fields in (
        {"verdict": "maybe"},
        {"verdict": "agree", "corrected_phase": "interphase"},
        {"verdict": "agree", "reason": "<script>"},
    ):
        response = client.post(f"/findings/{first.pk}/decide/", fields)
        assert response.status_code == 400 and "error" in response.json()
    assert not Decision.objects.exists()


@pytest.mark.django_db
def test_who_may_decide(client_for, lab_admin, other_pathologist, reviewed_slide):
    first = findings(reviewed_slide)[0]
    hidden = decide(client_for(other_pathologist), first, "agree")
    assert hidden.status_code == 404 and b"metaphase" not in hidden.content
    admin = decide(client_for(lab_admin), first, "agree")
    assert admin.status_code == 403 and "assigned" in admin.json()["error"]
    assert not Decision.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_two_pathologists_deciding_at_once_are_both_recorded(
    pathologist, other_pathologist, reviewed_slide
):
    CaseAssignment.objects.create(case=reviewed_slide.case, pathologist=other_pathologist)
    finding = findings(reviewed_slide)[0]
    barrier = threading.Barrier(2)
    statuses = []

    def review(user, verdict):
        client = Client()
        client.force_login(user)
        barrier.wait()
        statuses.append(decide(client, finding, verdict).status_code)
        connection.close()

    threads = [
        threading.Thread(target=review, args=(pathologist, "agree")),
        threading.Thread(target=review, args=(other_pathologist, "disagree")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200, 200]
    assert sorted(Decision.objects.values_list("reviewer__username", "verdict")) == [
        ("path_assigned", "agree"),
        ("path_other", "disagree"),
    ]
    from cases.audit import verify_chain

    assert verify_chain().ok


@pytest.mark.django_db
def test_a_missed_mitosis_counts_in_the_reviewed_hpf_count(client_for, pathologist, reviewed_slide):
    client = client_for(pathologist)
    before = client.get(f"/slides/{reviewed_slide.pk}/review.json").json()["reviewed"]
    response = client.post(
        f"/slides/{reviewed_slide.pk}/findings/add/", {"x": 1500, "y": 1200, "phase": "telophase"}
    )
    assert response.status_code == 201
    added = Finding.objects.get(pk=response.json()["finding"]["id"])
    assert added.source == "pathologist" and added.run is None and added.created_by == pathologist
    after = response.json()["reviewed"]
    assert after["count_per_10_hpf"] == before["count_per_10_hpf"] + 1
    assert response.json()["progress"]["total"] == 6
    outside = client.post(
        f"/slides/{reviewed_slide.pk}/findings/add/", {"x": 99999, "y": 5, "phase": "telophase"}
    )
    assert outside.status_code == 400 and "outside the slide" in outside.json()["error"]
    columns = client.get(f"/slides/{reviewed_slide.pk}/findings.json").json()["findings"]
    assert "pathologist" in columns["source"]


@pytest.mark.django_db
def test_the_reviewed_count_changes_when_a_finding_is_disagreed_with(
    client_for, pathologist, reviewed_slide
):
    client = client_for(pathologist)
    first, second = findings(reviewed_slide)[:2]
    decide(client, first, "agree")
    agreed = decide(client, second, "agree").json()["reviewed"]["count_per_10_hpf"]
    disagreed = decide(client, second, "disagree").json()["reviewed"]["count_per_10_hpf"]
    assert (agreed, disagreed) == (2, 1)


@pytest.mark.django_db
def test_viewing_the_review_does_not_rewrite_the_reviewed_count_map(
    client_for, pathologist, reviewed_slide
):
    from inference.models import HpfMap

    client = client_for(pathologist)
    client.get(f"/slides/{reviewed_slide.pk}/review.json")
    reviewed = HpfMap.objects.filter(basis="reviewed")
    stamp = reviewed.get().updated_at
    client.get(f"/slides/{reviewed_slide.pk}/review.json")
    client.get(f"/cases/{reviewed_slide.case_id}/")
    assert reviewed.get().updated_at == stamp
    decide(client, findings(reviewed_slide)[0], "agree")
    assert reviewed.get().updated_at > stamp and reviewed.get().findings_counted == 1


@pytest.mark.django_db
def test_blinded_mode_hides_the_ai_call_until_the_reader_decides(
    client_for, pathologist, reviewed_slide
):
    case = reviewed_slide.case
    case.blinded = True
    case.save()
    client = client_for(pathologist)
    first = findings(reviewed_slide)[0]
    columns = client.get(f"/slides/{reviewed_slide.pk}/findings.json").json()["findings"]
    assert set(columns["phase"]) == {"hidden"} and set(columns["score"]) == {None}
    detail = client.get(f"/findings/{first.pk}.json").json()
    assert detail["phase"] == "hidden" and detail["phase_probs"] == {} and detail["score"] is None
    decide(client, first, "agree")
    detail = client.get(f"/findings/{first.pk}.json").json()
    assert detail["phase"] == "metaphase" and detail["score"] == pytest.approx(0.9)
    assert Decision.objects.get().blinded


@pytest.mark.django_db
def test_sign_out_makes_the_case_read_only_and_reopen_needs_an_admin_and_a_reason(
    client_for, pathologist, lab_admin, reviewed_slide
):
    client = client_for(pathologist)
    case = reviewed_slide.case
    first = findings(reviewed_slide)[0]
    page = client.get(f"/cases/{case.pk}/").content.decode()
    assert 'name="final_mitotic_count"' in page
    response = client.post(
        f"/cases/{case.pk}/sign-out/",
        {"final_mitotic_count": "4", "final_grade": "Low grade", "confirm": "yes"},
    )
    assert response.status_code == 302
    case.refresh_from_db()
    assert case.status == Case.Status.SIGNED_OUT and case.final_mitotic_count == 4
    assert case.signed_out_by == pathologist
    refused = decide(client, first, "agree")
    assert refused.status_code == 409 and "signed out" in refused.json()["error"]
    added = client.post(
        f"/slides/{reviewed_slide.pk}/findings/add/", {"x": 10, "y": 10, "phase": "prophase"}
    )
    assert added.status_code == 409
    assert not Decision.objects.exists()
    assert client.post(f"/cases/{case.pk}/reopen/", {"reason": "x"}).status_code == 403
    admin = client_for(lab_admin)
    admin.post(f"/cases/{case.pk}/reopen/", {"reason": ""})
    case.refresh_from_db()
    assert case.status == Case.Status.SIGNED_OUT
    admin.post(f"/cases/{case.pk}/reopen/", {"reason": "Second opinion requested"})
    case.refresh_from_db()
    assert case.status == Case.Status.IN_REVIEW and case.final_mitotic_count is None
    reopened = AuditEvent.objects.get(action="reopen")
    assert reopened.details["reason"] == "Second opinion requested"
    assert reopened.details["final_mitotic_count"] == 4


@pytest.mark.django_db
def test_sign_out_needs_the_confirmation(client_for, pathologist, reviewed_slide):
    case = reviewed_slide.case
    client_for(pathologist).post(f"/cases/{case.pk}/sign-out/", {"final_mitotic_count": "4"})
    case.refresh_from_db()
    assert case.status != Case.Status.SIGNED_OUT
