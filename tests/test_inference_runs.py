"""AI runs through real RQ workers against the real Redis, and their findings in the portal."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from cases.models import Case
from cases.registration import register_slide
from inference import services
from inference.jobs import execute_run, reconcile
from inference.models import Finding, InferenceRun
from inference.tools.scoring import midog_score
from tests.conftest import run_worker_burst

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def truth_points(path: Path) -> list[tuple[float, float]]:
    truth = json.loads(path.with_suffix(".json").read_text())
    return [(m["x"], m["y"]) for m in truth["mitoses"]]


def counted(run: InferenceRun):
    return run.findings.exclude(phase="non_mitotic").values_list("x", "y", "score")


def score_run(run: InferenceRun, path: Path, mpp: float):
    rows = list(counted(run))
    return midog_score([r[:2] for r in rows], [r[2] for r in rows], truth_points(path), mpp=mpp)


@pytest.mark.django_db(transaction=True)
def test_a_run_through_an_rq_worker_finds_the_planted_mitoses(
    case, mitotic_slides, shipped_models, rq_queues
):
    slide = register_slide(mitotic_slides["40x"], case, "mitotic-40x.tiff")
    run = services.start_run(slide)
    assert rq_queues.get_queue("inference").count == 1
    run_worker_burst("inference")
    run.refresh_from_db()
    assert run.status == InferenceRun.Status.SUCCEEDED, run.error
    assert run.progress == 100 and run.counts["findings"] == run.findings.count()
    assert run.model_hashes == {v.name: v.sha256 for v in shipped_models.values()}
    score = score_run(run, mitotic_slides["40x"], 0.25)
    assert score.tp >= 10 and score.f1 >= 0.75, score
    case.refresh_from_db()
    assert case.status == Case.Status.AWAITING_REVIEW


@pytest.mark.django_db(transaction=True)
def test_a_20x_slide_is_resampled_and_reported_in_its_own_level0_pixels(
    case, mitotic_slides, shipped_models
):
    slide = register_slide(mitotic_slides["20x"], case, "mitotic-20x.tiff")
    run = services.start_run(slide, enqueue_job=False)
    execute_run(run.pk)
    run.refresh_from_db()
    assert run.status == InferenceRun.Status.SUCCEEDED, run.error
    score = score_run(run, mitotic_slides["20x"], 0.5)
    assert score.tp >= 5 and score.f1 >= 0.7, score
    xs = [f.x for f in run.findings.all()]
    assert max(xs) < slide.width  # level 0 of this slide, not of a 40x resampling


@pytest.mark.django_db(transaction=True)
def test_executing_a_run_twice_never_duplicates_findings(case, mitotic_slides, shipped_models):
    slide = register_slide(mitotic_slides["20x"], case, "mitotic-20x.tiff")
    run = services.start_run(slide, enqueue_job=False)
    execute_run(run.pk)
    count = Finding.objects.filter(run=run).count()
    assert execute_run(run.pk) == {"skipped": "succeeded"}
    assert Finding.objects.filter(run=run).count() == count > 0


def _worker_env() -> dict[str, str]:
    """Environment for a worker process that uses this test's database and Redis."""
    db = settings.DATABASES["default"]
    if connection.vendor == "sqlite":
        url = f"sqlite:///{db['NAME']}"
    else:
        url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    return {**os.environ, "DATABASE_URL": url}


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.django_db(transaction=True)
def test_a_killed_job_ends_failed_not_stuck_running(
    client_for, pathologist, case, mitotic_slides, shipped_models, rq_queues
):
    slide = register_slide(mitotic_slides["40x"], case, "mitotic-40x.tiff")
    run = services.start_run(slide)
    worker = subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "inference", "--burst"],
        env=_worker_env(),
        cwd=settings.BASE_DIR,
    )
    try:
        deadline = time.monotonic() + 120
        while InferenceRun.objects.get(pk=run.pk).status != InferenceRun.Status.RUNNING:
            assert time.monotonic() < deadline, "the worker never started the run"
            assert worker.poll() is None, "the worker exited before starting the run"
            time.sleep(0.05)
        horses = _children(worker.pid)
        assert horses, "no work horse to kill"
        for horse in horses:
            os.kill(horse, signal.SIGKILL)
        worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    response = client_for(pathologist).get(f"/cases/{case.pk}/runs.json")
    shown = response.json()["runs"][0]
    assert shown["status"] == "failed" and shown["finished"]
    assert "worker stopped" in shown["error"]
    assert reconcile(InferenceRun.objects.get(pk=run.pk)).status == InferenceRun.Status.FAILED
    assert not Finding.objects.filter(run=run).exists()


@pytest.mark.django_db
def test_cancel_a_queued_run_and_retry_it(
    client_for,
    lab_admin,
    case,
    slide,
    shipped_models,
    rq_queues,
    django_capture_on_commit_callbacks,
):
    client = client_for(lab_admin)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(f"/slides/{slide.pk}/runs/start/")
    assert response.status_code == 302
    run = InferenceRun.objects.get(slide=slide)
    job = rq_queues.get_queue("inference").fetch_job(run.job_id)
    assert job is not None and job.get_status() == "queued"
    client.post(f"/runs/{run.pk}/cancel/")
    run.refresh_from_db()
    assert run.status == InferenceRun.Status.CANCELLED
    assert job.get_status(refresh=True) == "canceled"
    with django_capture_on_commit_callbacks(execute=True):
        client.post(f"/runs/{run.pk}/retry/")
    retried = InferenceRun.objects.exclude(pk=run.pk).get(slide=slide)
    assert retried.status == InferenceRun.Status.QUEUED
    assert rq_queues.get_queue("inference").fetch_job(retried.job_id) is not None


@pytest.mark.django_db
def test_pathologists_cannot_start_or_cancel_runs(client_for, pathologist, slide, shipped_models):
    client = client_for(pathologist)
    assert client.post(f"/slides/{slide.pk}/runs/start/").status_code == 403
    run = services.start_run(slide, enqueue_job=False)
    assert client.post(f"/runs/{run.pk}/cancel/").status_code == 403
    run.refresh_from_db()
    assert run.status == InferenceRun.Status.QUEUED


@pytest.mark.django_db
def test_a_slide_without_mpp_is_refused_with_a_message(
    client_for, lab_admin, slide, shipped_models
):
    slide.mpp_x = slide.mpp_y = None
    slide.save()
    response = client_for(lab_admin).post(f"/slides/{slide.pk}/runs/start/", follow=True)
    assert b"has no \xc2\xb5m/px" in response.content
    assert not InferenceRun.objects.exists()


@pytest.mark.django_db
def test_findings_and_crops_for_the_viewer(client_for, pathologist, finished_run):
    client = client_for(pathologist)
    data = client.get(f"/slides/{finished_run.slide_id}/findings.json").json()
    assert data["run"]["id"] == finished_run.pk
    columns = data["findings"]
    assert len(columns["id"]) == finished_run.findings.count() > 0
    assert set(columns) >= {"x", "y", "score", "phase", "x0", "y1", "source"}
    finding = client.get(f"/findings/{columns['id'][0]}.json").json()
    assert finding["phase"] in finding["phase_probs"]
    crop = client.get(finding["crop_url"])
    assert crop.status_code == 200 and crop["Content-Type"] == "image/jpeg"


@pytest.mark.django_db
def test_an_unassigned_pathologist_sees_no_runs_findings_or_crops(
    client_for, other_pathologist, finished_run
):
    client = client_for(other_pathologist)
    finding = finished_run.findings.first()
    for url in (
        f"/slides/{finished_run.slide_id}/findings.json",
        f"/findings/{finding.pk}.json",
        f"/findings/{finding.pk}/crop.jpeg",
        f"/cases/{finished_run.slide.case_id}/runs.json",
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert str(finding.x).encode() not in response.content


@pytest.mark.django_db
def test_case_page_shows_runs_with_progress(client_for, lab_admin, finished_run):
    response = client_for(lab_admin).get(f"/cases/{finished_run.slide.case_id}/")
    assert b"AI succeeded" in response.content
    assert f"{finished_run.counts['findings']} findings".encode() in response.content
