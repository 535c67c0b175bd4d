"""Agreement statistics: per model version, Cohen's kappa between pathologists, phases."""

import pytest

from cases.models import CaseAssignment
from review.stats import cohen_kappa


def test_cohen_kappa_against_a_worked_example():
    # 50 items: both yes 20, both no 15, A yes/B no 5, A no/B yes 10 -> kappa 0.4
    pairs = [("y", "y")] * 20 + [("n", "n")] * 15 + [("y", "n")] * 5 + [("n", "y")] * 10
    assert cohen_kappa(pairs, ["y", "n"]) == pytest.approx(0.4)
    assert cohen_kappa([("y", "y")] * 3, ["y", "n"]) == 1.0
    assert cohen_kappa([], ["y"]) is None


@pytest.mark.django_db
def test_agreement_page(client_for, lab_admin, pathologist, other_pathologist, reviewed_slide):
    CaseAssignment.objects.create(case=reviewed_slide.case, pathologist=other_pathologist)
    findings = list(reviewed_slide.findings.order_by("-score"))
    verdicts = {
        pathologist: ["agree", "agree", "disagree", "uncertain"],
        other_pathologist: ["agree", "disagree", "disagree", "agree"],
    }
    for user, theirs in verdicts.items():
        client = client_for(user)
        for finding, verdict in zip(findings, theirs, strict=False):
            client.post(
                f"/findings/{finding.pk}/decide/",
                {"verdict": verdict, "corrected_phase": "anaphase" if user == pathologist else ""},
            )
    page = client_for(lab_admin).get("/agreement/")
    assert page.status_code == 200
    stats = page.context["stats"]
    (model,) = stats["models"]
    assert (model["agree"], model["disagree"], model["uncertain"]) == (4, 3, 1)
    assert model["precision"] == pytest.approx(4 / 7)
    (pair,) = stats["pairs"]
    assert pair["shared_findings"] == 4 and pair["observed_agreement"] == 0.5
    assert stats["phase_confusion"]["metaphase"]["anaphase"] == 1
    assert "Cohen" in page.content.decode()
