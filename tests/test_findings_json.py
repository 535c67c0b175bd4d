"""The viewer's findings (findings.json): cached by what they show, so every new run,
added mitosis and decision shows at once, and no reader gets another's view."""

import pytest
from django.test import Client
from django.utils import timezone

from cases.models import CaseAssignment
from inference.models import Finding, InferenceRun


def columns(client, slide) -> dict:
    response = client.get(f"/slides/{slide.pk}/findings.json")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
    return response.json()


@pytest.mark.django_db
def test_an_added_mitosis_and_a_new_run_show_at_once(client_for, pathologist, reviewed_slide):
    client = client_for(pathologist)
    before = columns(client, reviewed_slide)
    assert len(before["findings"]["id"]) == 5 and columns(client, reviewed_slide) == before
    added = client.post(
        f"/slides/{reviewed_slide.pk}/findings/add/", {"x": 1500, "y": 1200, "phase": "anaphase"}
    )
    assert added.status_code in (200, 201), added.content
    after = columns(client, reviewed_slide)
    assert len(after["findings"]["id"]) == 6 and "pathologist" in after["findings"]["source"]

    old = InferenceRun.objects.get(slide=reviewed_slide)
    rerun = InferenceRun.objects.create(
        slide=reviewed_slide,
        detector=old.detector,
        classifier=old.classifier,
        status="succeeded",
        progress=100,
        finished_at=timezone.now(),
        counts={"findings": 1},
    )
    Finding.objects.create(
        slide=reviewed_slide, run=rerun, x=900, y=900, box_x0=880, box_y0=880, box_x1=920,
        box_y1=920, score=0.95, phase="metaphase", phase_probs={},
    )  # fmt: skip
    latest = columns(client, reviewed_slide)
    assert latest["run"]["id"] == rerun.pk
    assert set(latest["findings"]["run"]) == {rerun.pk, None}  # the new run's and the added


@pytest.mark.django_db
def test_blinded_readers_each_see_their_own_reveals(
    pathologist, other_pathologist, lab_admin, reviewed_slide
):
    case = reviewed_slide.case
    case.blinded = True
    case.save()
    CaseAssignment.objects.create(case=case, pathologist=other_pathologist)
    admin, reader, other = (Client(), Client(), Client())  # each its own session
    for client, user in ((admin, lab_admin), (reader, pathologist), (other, other_pathologist)):
        client.force_login(user)
    everything = columns(admin, reviewed_slide)
    assert set(columns(reader, reviewed_slide)["findings"]["phase"]) == {"hidden"}
    finding = Finding.objects.filter(slide=reviewed_slide).order_by("y", "x").first()
    decided = reader.post(f"/findings/{finding.pk}/decide/", {"verdict": "agree"})
    assert decided.status_code == 200
    shown = columns(reader, reviewed_slide)["findings"]
    assert shown["phase"].count("hidden") == 4
    assert shown["phase"][shown["id"].index(finding.pk)] == finding.phase
    assert set(columns(other, reviewed_slide)["findings"]["phase"]) == {"hidden"}
    assert columns(admin, reviewed_slide) == everything  # all calls, unchanged
    assert "hidden" not in everything["findings"]["phase"]


@pytest.mark.django_db
def test_review_progress_follows_added_mitoses_and_decisions(
    client_for, pathologist, reviewed_slide
):
    client = client_for(pathologist)

    def progress() -> dict:
        return client.get(f"/slides/{reviewed_slide.pk}/review.json").json()["progress"]

    before = progress()
    assert before == {"decided": 0, "carried": 0, "total": before["total"], "kept": 0}
    finding = Finding.objects.filter(slide=reviewed_slide).order_by("-score").first()
    decided = client.post(f"/findings/{finding.pk}/decide/", {"verdict": "agree"})
    assert decided.json()["progress"]["decided"] == 1 == progress()["decided"]
    again = client.post(f"/findings/{finding.pk}/decide/", {"verdict": "disagree"})
    assert again.status_code == 200 and progress()["decided"] == 1  # the latest counts once
    client.post(
        f"/slides/{reviewed_slide.pk}/findings/add/", {"x": 1500, "y": 1200, "phase": "anaphase"}
    )
    assert progress()["total"] == before["total"] + 1
    decisions = client.get(f"/slides/{reviewed_slide.pk}/review.json").json()["decisions"]
    assert decisions[str(finding.pk)]["verdict"] == "disagree" and len(decisions) == 1
