"""Decisions never disappear: re-running the AI on a reviewed slide carries every decision
to the new run's finding within 7.5 µm (as a new, audited decision naming its origin),
keeps decided findings the new run did not find again, and counts nothing twice in the
progress, the reviewed count, the CSV report or the agreement statistics."""

import csv
import io
import math

import pytest
from django.core.management import call_command

from cases.models import AuditEvent
from cases.registration import register_slide
from inference import services as ai
from inference.engine.vocabulary import MITOTIC_PHASES
from inference.jobs import execute_run
from inference.models import Finding
from review import services as review
from review.exports import COLUMNS, ExportFilters, csv_lines
from review.models import Decision
from review.stats import agreement_statistics

LOW_THRESHOLD = 0.05  # the first run also reports findings the default operating point drops


def _run(slide, **parameters):
    run = ai.start_run(slide, parameters=parameters, enqueue_job=False)
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error
    return run


def _csv_rows() -> list[dict]:
    text = "".join(csv_lines(ExportFilters())).lstrip("\ufeff")
    return list(csv.DictReader(io.StringIO(text)))


def _decided_phase(decision: Decision) -> str:
    return decision.corrected_phase or decision.finding.phase


def _snapshot(slide, reviewer) -> dict:
    _, shown = ai.slide_findings(slide)
    stats = agreement_statistics()
    return {
        "current": review.current_decisions(shown, reviewer).count(),
        "reviewed": review.reviewed_findings(slide).count(),
        "stats_decisions": stats["decisions"],
        "stats_per_model": {row["model"]: row["decisions"] for row in stats["models"]},
    }


@pytest.fixture
def reviewed_run(case, pathologist, mitotic_slides, shipped_models):
    """A slide whose first run (low threshold) the pathologist reviewed: the five best
    mitotic findings agreed (one with its phase corrected), one disagreed, one uncertain,
    two weak findings decided that a default run does not report, and a mitosis added."""
    slide = register_slide(mitotic_slides["20x"], case, "mitotic-20x.tiff")
    first = _run(slide, score_threshold=LOW_THRESHOLD)
    findings = list(first.findings.order_by("-score"))
    strong = [f for f in findings if f.phase in MITOTIC_PHASES][:7]
    weak = [f for f in findings if f.score < 0.2][:2]
    assert len(strong) == 7 and len(weak) == 2, "the slide no longer has the findings needed"
    for finding in strong[:5]:
        review.decide(finding, pathologist, "agree")
    other = next(p for p in MITOTIC_PHASES if p != strong[0].phase)
    review.decide(strong[0], pathologist, "agree", corrected_phase=other)  # a changed mind
    review.decide(strong[5], pathologist, "disagree", reason="lookalike")
    review.decide(strong[6], pathologist, "uncertain")
    review.decide(weak[0], pathologist, "agree", corrected_phase="prophase")
    review.decide(weak[1], pathologist, "disagree")
    review.add_finding(slide, pathologist, 100.0, 100.0, "metaphase")
    return slide, first, strong, weak


def test_a_rerun_carries_every_decision_and_keeps_the_unmatched(reviewed_run, pathologist):
    slide, first, strong, weak = reviewed_run
    before = _snapshot(slide, pathologist)
    rows_before = _csv_rows()
    made = {d.finding_id: d for d in review.current_decisions(first.findings.all(), pathologist)}
    assert before["current"] == len(made) == 9

    second = _run(slide)

    carried = Decision.objects.filter(finding__run=second).exclude(carried_from=None)
    kept = set(Finding.objects.filter(slide=slide, kept=True).values_list("pk", flat=True))
    assert {f.pk for f in weak} <= kept  # not found again at the default operating point
    assert carried.count() + len(kept) == len(made)
    assert second.counts["decisions_carried"] == carried.count() >= 7
    assert second.counts["findings_kept"] == len(kept)
    for decision in carried.select_related("carried_from__finding", "finding"):
        origin = decision.carried_from
        assert made[origin.finding_id] == origin  # from the reader's current decision
        assert (decision.verdict, decision.reviewer_id) == (origin.verdict, origin.reviewer_id)
        if decision.verdict == "agree":
            assert _decided_phase(decision) == _decided_phase(origin)
        offset = math.hypot(
            decision.finding.x - origin.finding.x, decision.finding.y - origin.finding.y
        )
        assert offset * slide.mpp <= 7.5
        event = AuditEvent.objects.get(action="decision_carried", object_id=str(decision.pk))
        assert event.details["carried_from"] == origin.pk
        assert event.details["from_run"] == first.pk and event.details["run"] == second.pk

    after = _snapshot(slide, pathologist)
    assert after == before  # nothing lost, nothing counted twice
    progress = review.review_progress(slide, pathologist)
    assert progress["kept"] == len(kept) and progress["carried"] >= 7
    assert progress["decided"] == progress["carried"] + progress["kept"]  # all of them

    rows = _csv_rows()
    assert "carried_from" in COLUMNS
    assert rows[: len(rows_before)] == rows_before  # the report's earlier rows unchanged
    new_rows = rows[len(rows_before) :]
    assert len(new_rows) == carried.count()
    assert all(int(row["carried_from"]) in {d.pk for d in made.values()} for row in new_rows)
    assert sum(row["carried_from"] == "" for row in rows) == len(rows_before)

    call_command("verify_audit")  # raises on any broken row


def test_kept_findings_are_shown_from_their_run_and_carry_again(
    reviewed_run, client_for, pathologist
):
    slide, first, _, weak = reviewed_run
    before = _snapshot(slide, pathologist)
    second = _run(slide)
    client = client_for(pathologist)
    data = client.get(f"/slides/{slide.pk}/findings.json").json()
    assert data["run"]["id"] == second.pk
    runs = dict(zip(data["findings"]["id"], data["findings"]["run"], strict=True))
    assert all(runs[f.pk] == first.pk for f in weak)
    detail = client.get(f"/api/findings/{weak[0].pk}/").json()
    assert detail["kept"] is True and detail["run"] == first.pk
    state = client.get(f"/slides/{slide.pk}/review.json").json()
    assert state["progress"]["kept"] >= len(weak)
    carried = [d for d in state["decisions"].values() if d["carried_from"]]
    assert len(carried) == second.counts["decisions_carried"]

    third = _run(slide)  # the decisions move on again, from the run shown until now
    assert third.counts["decisions_carried"] == second.counts["decisions_carried"]
    assert third.counts["findings_kept"] == second.counts["findings_kept"]
    for decision in Decision.objects.filter(finding__run=third):
        assert decision.carried_from.finding.run_id == second.pk
    assert set(Finding.objects.filter(kept=True).values_list("pk", flat=True)) >= {
        f.pk for f in weak
    }
    assert _snapshot(slide, pathologist) == before
    call_command("verify_audit")
