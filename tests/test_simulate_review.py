"""manage.py simulate_review: a perfect reader's decisions from synthetic ground truth,
through the review services (same decisions, added findings, sign-out and audit events)."""

import json
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from cases.models import AuditEvent, Case
from inference import services as ai
from inference.grading import grade
from inference.models import Finding
from inference.tools.scoring import midog_score
from review import services as review
from review.models import Decision

MPP = 0.25


def simulate(slide, truth, reviewer, *extra: str) -> dict:
    """simulate_review's --json summary."""
    out = StringIO()
    args = ["--slide", str(slide.pk), "--truth", str(truth), "--reviewer", reviewer.username]
    call_command("simulate_review", *args, *extra, "--json", stdout=out)
    return json.loads(out.getvalue())


def _truth(slide, mitoses, hard_negatives=(), **overrides) -> dict:
    return {
        "width": slide.width,
        "height": slide.height,
        "mpp": MPP,
        "mitoses": [{"id": i, **m} for i, m in enumerate(mitoses, start=1)],
        "hard_negatives": [{"id": 100 + i, **n} for i, n in enumerate(hard_negatives)],
        **overrides,
    }


@pytest.fixture
def truth_file(tmp_path):
    def write(data: dict):
        path = tmp_path / "truth.json"
        path.write_text(json.dumps(data))
        return path

    return write


def _current(slide, reviewer) -> dict[int, Decision]:
    findings = Finding.objects.filter(slide=slide)
    return {d.finding_id: d for d in review.current_decisions(findings, reviewer)}


def test_decisions_follow_the_truth_one_to_one(reviewed_slide, pathologist, truth_file):
    """reviewed_slide's five AI findings (score 0.9 .. 0.5) at (600 + 400i, 700 + 250i)."""
    f = list(Finding.objects.filter(slide=reviewed_slide).order_by("-score"))
    um = 1 / MPP  # px per µm
    truth = _truth(
        reviewed_slide,
        [
            {"x": f[0].x + 3 * um, "y": f[0].y, "phase": "anaphase"},  # AI said metaphase
            {"x": f[1].x, "y": f[1].y - 7 * um, "phase": "prophase"},  # within 7.5 µm
            {"x": f[2].x + 8 * um, "y": f[2].y, "phase": "anaphase"},  # just outside: missed
            {"x": 2900.0, "y": 150.0, "phase": "telophase"},  # far from everything: missed
        ],
        hard_negatives=[{"x": f[3].x + 2 * um, "y": f[3].y, "kind": "pyknotic"}],
    )
    summary = simulate(reviewed_slide, truth_file(truth), pathologist)
    assert summary["shown"] == 5
    assert (summary["agreed"], summary["phase_corrected"]) == (2, 1)
    assert (summary["disagreed"], summary["added"]) == (3, 2)
    decisions = _current(reviewed_slide, pathologist)
    assert [decisions[x.pk].verdict for x in f] == ["agree"] * 2 + ["disagree"] * 3
    assert decisions[f[0].pk].corrected_phase == "anaphase"
    assert decisions[f[1].pk].corrected_phase == ""  # the AI's phase was right
    assert decisions[f[3].pk].reason == Decision.Reason.LOOKALIKE
    assert decisions[f[4].pk].reason == Decision.Reason.NONE
    added = Finding.objects.filter(slide=reviewed_slide, source=Finding.Source.PATHOLOGIST)
    assert sorted((a.x, a.y, a.phase, a.created_by) for a in added) == sorted(
        (m["x"], m["y"], m["phase"], pathologist) for m in truth["mitoses"][2:]
    )
    # The audit log has an event for each, written by the review services, and holds.
    events = AuditEvent.objects.filter(case=reviewed_slide.case, actor=pathologist)
    assert events.filter(action="decision").count() == 5
    assert events.filter(action="finding_added").count() == 2
    call_command("verify_audit", stdout=StringIO())
    assert Case.objects.get(pk=reviewed_slide.case_id).status == Case.Status.IN_REVIEW

    again = simulate(reviewed_slide, truth_file(truth), pathologist)
    assert (again["agreed"], again["disagreed"], again["added"]) == (0, 0, 0)
    assert again["unchanged"] == 5
    assert Decision.objects.filter(finding__slide=reviewed_slide).count() == 5


def test_a_duplicate_finding_of_a_true_mitosis_is_disagreed_as_a_duplicate(
    reviewed_slide, pathologist, truth_file
):
    f = list(Finding.objects.filter(slide=reviewed_slide).order_by("-score"))
    twin = Finding.objects.create(
        slide=reviewed_slide,
        run=f[0].run,
        x=f[0].x + 8,
        y=f[0].y,
        box_x0=0,
        box_y0=0,
        box_x1=1,
        box_y1=1,
        score=0.55,
        phase="metaphase",
    )
    truth = _truth(reviewed_slide, [{"x": f[0].x, "y": f[0].y, "phase": "metaphase"}])
    simulate(reviewed_slide, truth_file(truth), pathologist)
    decisions = _current(reviewed_slide, pathologist)
    assert decisions[f[0].pk].verdict == "agree"  # the higher score takes the mitosis
    assert (decisions[twin.pk].verdict, decisions[twin.pk].reason) == ("disagree", "duplicate")


def test_refusals(reviewed_slide, slide, pathologist, other_pathologist, truth_file, case):
    good = truth_file(_truth(reviewed_slide, []))

    def refused(match: str, *args: str) -> None:
        with pytest.raises(CommandError, match=match):
            call_command("simulate_review", *args, stdout=StringIO())

    base = ["--truth", str(good), "--reviewer", pathologist.username]
    refused("No slide with id 999999", "--slide", "999999", *base)
    refused(
        "No user 'nobody'", "--slide", str(slide.pk), "--truth", str(good), "--reviewer", "nobody"
    )
    refused(
        "not assigned",
        *["--slide", str(slide.pk), "--truth", str(good), "--reviewer", other_pathologist.username],
    )
    wrong = truth_file(_truth(reviewed_slide, [], width=reviewed_slide.width + 1))
    refused(
        "Is it the right file",
        "--slide",
        str(slide.pk),
        "--truth",
        str(wrong),
        "--reviewer",
        pathologist.username,
    )
    refused(
        "not JSON", "--slide", str(slide.pk), "--truth", __file__, "--reviewer", "path_assigned"
    )
    review.sign_out(case, pathologist, 3, "")
    refused("signed out", "--slide", str(slide.pk), *base)
    assert not Decision.objects.exists()


def test_a_slide_without_a_finished_run_is_refused(slide, pathologist, truth_file):
    with pytest.raises(CommandError, match="no finished AI run"):
        call_command(
            "simulate_review",
            "--slide",
            str(slide.pk),
            "--truth",
            str(truth_file(_truth(slide, []))),
            "--reviewer",
            pathologist.username,
        )


def test_a_real_run_reviewed_perfectly_and_signed_out(finished_run, pathologist, synthetic_slide):
    """The shipped models on the small synthetic slide; after the simulated review the
    reviewed findings are exactly the true mitoses, with their phases."""
    slide = finished_run.slide
    truth_path = synthetic_slide.with_suffix(".json")
    truth = json.loads(truth_path.read_text())
    shown = ai.findings_to_review(slide, pathologist).count()
    summary = simulate(slide, truth_path, pathologist, "--sign-out")
    assert summary["shown"] == shown > 0
    assert summary["agreed"] + summary["disagreed"] == shown
    assert summary["agreed"] + summary["added"] == len(truth["mitoses"])

    reviewed = list(review.reviewed_findings(slide))
    points = [(r.x, r.y) for r in reviewed]
    score = midog_score(
        points, [1.0] * len(points), [(m["x"], m["y"]) for m in truth["mitoses"]], mpp=truth["mpp"]
    )
    assert (score.fp, score.fn) == (0, 0)
    decisions = _current(slide, pathologist)
    for finding in reviewed:
        phase = finding.phase
        if finding.pk in decisions:
            phase = decisions[finding.pk].corrected_phase or phase
        nearest = min(
            truth["mitoses"], key=lambda m: (m["x"] - finding.x) ** 2 + (m["y"] - finding.y) ** 2
        )
        assert phase == nearest["phase"]

    case = Case.objects.get(pk=slide.case_id)
    expected = ai.reviewed_hpf(slide, review.reviewed_findings(slide))
    assert case.status == Case.Status.SIGNED_OUT and case.signed_out_by == pathologist
    assert case.final_mitotic_count == expected["count_per_10_hpf"]
    value = expected["count_per_10_hpf_extrapolated"] or expected["count_per_10_hpf"]
    assert case.final_grade == grade(case.tumour_type, value, expected["count_per_mm2"])[0]
    assert summary["signed_out"]["final_mitotic_count"] == case.final_mitotic_count
    actions = AuditEvent.objects.filter(case=case, actor=pathologist).values_list(
        "action", flat=True
    )
    assert list(actions).count("decision") == shown and "sign_out" in actions
    assert list(actions).count("finding_added") == summary["added"]
    call_command("verify_audit", stdout=StringIO())
