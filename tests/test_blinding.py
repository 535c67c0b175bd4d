"""Blinded reader studies: every page, JSON view, API endpoint, export and filter shows a
blinded reader neither the AI's calls on undecided findings nor the AI's totals; and no
AI run starts on a signed-out case."""

import re
from types import SimpleNamespace

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from cases.models import AuditEvent, Case, CaseAssignment
from inference.engine.vocabulary import MITOTIC_PHASES
from inference.models import Finding, HpfMap, InferenceRun

# not AI output, and different on every request: CSRF tokens, ages ("now", "3 minutes ago")
VOLATILE = re.compile(
    rb'(name="csrfmiddlewaretoken" value=|csrftoken=)"?[A-Za-z0-9]+|>[^<>]* ago<|>now<'
)
# Undecided findings' new (score, phase), by position: the AI count falls from 4 to 2.
SHUFFLED = [(0.3, "non_mitotic"), (0.95, "metaphase"), (0.1, "non_mitotic"), (0.6, "prophase")]


@pytest.fixture
def blinded_slide(reviewed_slide, other_pathologist):
    """The reviewed slide on a blinded case with two assigned readers, and run counts by
    phase as a real run records them."""
    case = reviewed_slide.case
    case.blinded = True
    case.save()
    CaseAssignment.objects.create(case=case, pathologist=other_pathologist)
    _recount(reviewed_slide)
    return reviewed_slide


def _recount(slide) -> None:
    """The run's counts and AI HPF map from its findings, as the worker leaves them."""
    run = InferenceRun.objects.get(slide=slide)
    phases: dict[str, int] = {}
    for phase in run.findings.values_list("phase", flat=True):
        phases[phase] = phases.get(phase, 0) + 1
    to_review = sum(phases.get(p, 0) for p in MITOTIC_PHASES)
    run.counts = {"findings": sum(phases.values()), "to_review": to_review, "by_phase": phases}
    run.save()
    HpfMap.objects.filter(run=run).delete()


def _by_position(slide) -> list[Finding]:
    return list(Finding.objects.filter(slide=slide).order_by("y", "x"))


def _walk(client, slide) -> dict[str, bytes]:
    """Every response a reader can get about the slide's AI output, less what is volatile."""
    case, run = slide.case, InferenceRun.objects.get(slide=slide)
    urls = [
        "/",
        f"/cases/{case.pk}/",
        f"/cases/{case.pk}/runs.json",
        f"/slides/{slide.pk}/",
        f"/slides/{slide.pk}/findings.json",
        f"/slides/{slide.pk}/findings.geojson",
        f"/slides/{slide.pk}/review.json",
        f"/slides/{slide.pk}/hpf.json",
        f"/slides/{slide.pk}/hpf.png",
        f"/api/findings/?slide={slide.pk}",
        f"/api/findings/?slide={slide.pk}&source=ai",
        f"/api/findings/?slide={slide.pk}&phase=metaphase",
        f"/api/findings/?slide={slide.pk}&min_score=0.7",
        f"/api/runs/?slide={slide.pk}",
        f"/api/runs/{run.pk}/",
        f"/api/slides/{slide.pk}/hpf/",
        f"/api/cases/{case.pk}/",
        f"/api/slides/{slide.pk}/",
    ]
    for finding in _by_position(slide):
        urls += [
            f"/findings/{finding.pk}.json",
            f"/findings/{finding.pk}/decisions.json",
            f"/findings/{finding.pk}/explanations.json",
            f"/api/findings/{finding.pk}/",
            f"/api/findings/{finding.pk}/explanations/",
        ]
    responses = {}
    for url in urls:
        response = client.get(url)
        assert response.status_code < 500, url
        responses[url] = f"{response.status_code} ".encode() + VOLATILE.sub(b"", response.content)
    return responses


def _shuffle_hidden_calls(slide, decided: Finding) -> None:
    undecided = [f for f in _by_position(slide) if f.pk != decided.pk]
    for finding, (score, phase) in zip(undecided, SHUFFLED, strict=True):
        finding.score, finding.phase, finding.phase_probs = score, phase, {phase: score}
        finding.save()
    _recount(slide)
    cache.clear()  # the portal never changes a stored call; its caches rely on that


@pytest.mark.django_db
def test_a_blinded_reader_sees_nothing_change_when_the_hidden_calls_change(
    client_for, pathologist, lab_admin, blinded_slide
):
    reader = client_for(pathologist)
    decided = _by_position(blinded_slide)[2]
    assert reader.post(f"/findings/{decided.pk}/decide/", {"verdict": "agree"}).status_code == 200
    before = _walk(reader, blinded_slide)
    admin_before = _walk(client_for(lab_admin), blinded_slide)
    _shuffle_hidden_calls(blinded_slide, decided)
    assert _walk(client_for(lab_admin), blinded_slide) != admin_before  # the shuffle shows
    after = _walk(client_for(pathologist), blinded_slide)
    changed = [url for url in before if before[url] != after[url]]
    assert changed == []


@pytest.mark.django_db
def test_what_a_blinded_reader_is_told(client_for, pathologist, blinded_slide):
    client = client_for(pathologist)
    slide = blinded_slide
    for query in ("phase=metaphase", "min_score=0.7"):
        refused = client.get(f"/api/findings/?slide={slide.pk}&{query}")
        assert refused.status_code == 400 and "blinded" in refused.json()["detail"]
    columns = client.get(f"/slides/{slide.pk}/findings.json").json()["findings"]
    positions = list(zip(columns["y"], columns["x"], strict=True))
    assert positions == sorted(positions)
    listed = client.get(f"/api/findings/?slide={slide.pk}").json()["results"]
    assert [(f["y"], f["x"]) for f in listed] == sorted((f["y"], f["x"]) for f in listed)
    features = client.get(f"/slides/{slide.pk}/findings.geojson").json()["features"]
    for feature in features:
        assert feature["properties"]["classification"]["name"] == "Blinded"
        assert feature["properties"]["measurements"] == {}
    hpf = client.get(f"/slides/{slide.pk}/hpf.json").json()
    assert hpf["available"] is False and "blinded" in hpf["error"]
    api_hpf = client.get(f"/api/slides/{slide.pk}/hpf/")
    assert api_hpf.status_code == 403 and "blinded" in api_hpf.json()["detail"]
    counts = client.get(f"/api/runs/?slide={slide.pk}").json()["results"][0]["counts"]
    assert counts == {"findings": 5}
    runs = client.get(f"/cases/{slide.case_id}/runs.json").json()["runs"]
    assert runs[0]["counts"] == {"findings": 5}
    page = client.get(f"/cases/{slide.case_id}/").content.decode()
    assert "AI findings counted" not in page and "stay hidden" in page
    progress = client.get(f"/slides/{slide.pk}/review.json").json()["progress"]
    # every AI finding, not the AI's count
    assert progress == {"decided": 0, "total": 5, "carried": 0, "kept": 0}


@pytest.mark.django_db
def test_a_decided_call_is_revealed_to_its_reader_only(
    client_for, pathologist, other_pathologist, lab_admin, blinded_slide
):
    finding = _by_position(blinded_slide)[0]
    reader = client_for(pathologist)
    assert reader.post(f"/findings/{finding.pk}/decide/", {"verdict": "agree"}).status_code == 200
    for url in (f"/findings/{finding.pk}.json", f"/api/findings/{finding.pk}/"):
        shown = reader.get(url).json()
        assert (shown["phase"], shown["score"]) == (finding.phase, pytest.approx(finding.score))
    features = reader.get(f"/slides/{blinded_slide.pk}/findings.geojson").json()["features"]
    named = {f["properties"]["mitolens"]["finding"]: f["properties"] for f in features}
    assert named[finding.pk]["measurements"] == {"AI score": round(finding.score, 4)}
    assert sum(p["classification"]["name"] == "Blinded" for p in named.values()) == 4
    other = client_for(other_pathologist).get(f"/api/findings/{finding.pk}/").json()
    assert (other["phase"], other["score"]) == ("hidden", None)
    admin = client_for(lab_admin).get(f"/api/findings/{finding.pk}/").json()
    assert admin["phase"] == finding.phase


@pytest.mark.django_db
def test_unblinded_readers_keep_the_ai_order_filters_and_totals(
    client_for, pathologist, reviewed_slide
):
    client = client_for(pathologist)
    listed = client.get(f"/api/findings/?slide={reviewed_slide.pk}&min_score=0.65").json()
    assert [f["score"] for f in listed["results"]] == pytest.approx([0.9, 0.8, 0.7])
    assert client.get(f"/slides/{reviewed_slide.pk}/hpf.json").json()["available"] is True


@pytest.mark.django_db
def test_a_run_stores_findings_by_position_so_ids_rank_nothing(slide, model_versions):
    from inference.jobs import _store

    detector, classifier = model_versions
    run = InferenceRun.objects.create(
        slide=slide, detector=detector, classifier=classifier, status="running"
    )
    by_score = [
        {"x": 900.0 - 100 * i, "y": 1500.0 - 200 * i, "box": [0, 0, 10, 10], "score": 0.9 - i / 10}
        for i in range(4)
    ]
    for finding in by_score:
        finding.update(phase="metaphase", phase_probs={"metaphase": 0.9})
    stats = dict.fromkeys(
        ("patches_total", "patches_tissue", "detections_raw", "dropped_off_slide"), 0
    )
    stats.update(dropped_off_tissue=0, seconds={}, device="cpu")
    _store(run, SimpleNamespace(findings=by_score, stats=stats))
    stored = list(Finding.objects.filter(run=run).order_by("pk").values_list("y", flat=True))
    assert stored == sorted(stored)


@pytest.mark.django_db
def test_no_ai_run_on_a_signed_out_case(client_for, lab_admin, pathologist, reviewed_slide):
    case = reviewed_slide.case
    Case.objects.filter(pk=case.pk).update(
        status=Case.Status.SIGNED_OUT,
        signed_out_by=pathologist,
        signed_out_at=timezone.now(),
        final_mitotic_count=4,
    )
    failed = InferenceRun.objects.get(slide=reviewed_slide)
    InferenceRun.objects.filter(pk=failed.pk).update(status="failed")
    admin = client_for(lab_admin)
    runs, events = InferenceRun.objects.count(), AuditEvent.objects.count()
    reason = f"Case {case.accession} is signed out; reopen it to run the AI again."
    page = admin.post(f"/slides/{reviewed_slide.pk}/runs/start/", follow=True)
    assert reason in page.content.decode()
    retried = admin.post(f"/runs/{failed.pk}/retry/", follow=True)
    assert reason in retried.content.decode()
    api = admin.post("/api/runs/", {"slide": reviewed_slide.pk}, content_type="application/json")
    assert api.status_code == 400 and api.json() == {"detail": reason}
    api_retry = admin.post(f"/api/runs/{failed.pk}/retry/")
    assert api_retry.status_code == 400 and api_retry.json() == {"detail": reason}
    with pytest.raises(CommandError, match="is signed out; reopen it"):
        call_command("run_inference", slide=reviewed_slide.pk, sync=True)
    assert (InferenceRun.objects.count(), AuditEvent.objects.count()) == (runs, events)
    assert Case.objects.get(pk=case.pk).status == Case.Status.SIGNED_OUT


@pytest.mark.django_db
def test_a_blinded_readers_reviewed_count_is_their_own(
    client_for, blinded_slide, pathologist, other_pathologist
):
    """Readers of a blinded case read independently: one reader's agreements never show
    in the other's reviewed count."""
    from review import services as review

    for finding in _by_position(blinded_slide)[:3]:
        review.decide(finding, pathologist, "agree")
    url = f"/slides/{blinded_slide.pk}/review.json"
    mine = client_for(pathologist).get(url).json()["reviewed"]
    theirs = client_for(other_pathologist).get(url).json()["reviewed"]
    assert mine["count_per_10_hpf"] > 0 and theirs["count_per_10_hpf"] == 0
