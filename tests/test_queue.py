"""The case queue: who sees what, ordering, filters, and a constant number of queries."""

from datetime import timedelta

import pytest
from django.utils import timezone

from cases.models import Case, CaseAssignment, Patient


def make_case(accession, priority=3, status="registered", age_days=0, readers=()):
    patient, _ = Patient.objects.get_or_create(external_ref=f"P-{accession}")
    case = Case.objects.create(
        accession=accession, patient=patient, priority=priority, status=status
    )
    Case.objects.filter(pk=case.pk).update(created_at=timezone.now() - timedelta(days=age_days))
    for reader in readers:
        CaseAssignment.objects.create(case=case, pathologist=reader)
    return case


def accessions(response):
    return [case.accession for case in response.context["page"]]


@pytest.mark.django_db
def test_pathologist_sees_only_assigned_cases(client_for, pathologist, other_pathologist):
    make_case("MINE-1", readers=[pathologist])
    make_case("THEIRS-1", readers=[other_pathologist])
    response = client_for(pathologist).get("/")
    assert accessions(response) == ["MINE-1"]
    assert b"THEIRS-1" not in response.content


@pytest.mark.django_db
def test_admin_sees_all_sorted_by_priority_then_age(client_for, lab_admin, pathologist):
    make_case("ROUTINE-OLD", priority=3, age_days=5)
    make_case("STAT-NEW", priority=1, age_days=0, readers=[pathologist])
    make_case("STAT-OLD", priority=1, age_days=2)
    make_case("URGENT", priority=2, age_days=1)
    response = client_for(lab_admin).get("/")
    assert accessions(response) == ["STAT-OLD", "STAT-NEW", "URGENT", "ROUTINE-OLD"]


@pytest.mark.django_db
def test_filter_by_status_and_search(client_for, lab_admin):
    make_case("S26-100", status="awaiting_review")
    make_case("S26-200", status="registered")
    make_case("S26-300", status="signed_out")
    client = client_for(lab_admin)
    assert accessions(client.get("/")) == ["S26-100", "S26-200"]  # signed-out hidden by default
    assert accessions(client.get("/?status=awaiting_review")) == ["S26-100"]
    assert accessions(client.get("/?status=all&q=300")) == ["S26-300"]
    assert accessions(client.get("/?q=P-S26-2")) == ["S26-200"]


@pytest.mark.django_db
def test_queue_queries_do_not_grow_with_cases(
    client_for, lab_admin, pathologist, django_assert_max_num_queries
):
    client = client_for(lab_admin)
    for index in range(3):
        make_case(f"A-{index}", readers=[pathologist])
    with django_assert_max_num_queries(12) as few:
        client.get("/")
    for index in range(40):
        make_case(f"B-{index}", readers=[pathologist])
    with django_assert_max_num_queries(len(few.captured_queries)):
        client.get("/")


@pytest.mark.django_db
def test_queue_shows_findings_decided_out_of_those_to_review(
    client_for, pathologist, reviewed_slide
):
    from inference.models import InferenceRun

    InferenceRun.objects.update(counts={"findings": 5, "to_review": 5})
    client = client_for(pathologist)
    first = reviewed_slide.findings.order_by("-score").first()
    client.post(f"/findings/{first.pk}/decide/", {"verdict": "agree"})
    response = client.get("/")
    (case,) = response.context["page"]
    assert (case.decided, case.to_review) == (1, 5)
    assert b"1 / 5" in response.content
