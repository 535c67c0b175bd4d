"""Faults leave no stuck or lying state: a killed worker's run fails within
RUN_LOST_AFTER_SECONDS and retries cleanly, serve_demo restarts a dead worker, and a
stopped Redis gives 503s with a sentence (never 500s) and records nothing as queued."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.test import RequestFactory
from redis.exceptions import ConnectionError as RedisConnectionError

from cases.models import AuditEvent, Case
from inference import services
from inference.models import Finding, InferenceRun
from portal.middleware import QueueUnavailableMiddleware
from tests.conftest import run_worker_burst, subprocess_env

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

LOST_AFTER = 6  # seconds, RUN_LOST_AFTER_SECONDS for this module's worker and pages
QUEUE_DOWN = "job queue is unavailable"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except FileNotFoundError:  # it ended meanwhile
        return b""


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def wait_until(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.05)
    return value


@pytest.mark.django_db(transaction=True)
def test_a_run_whose_worker_was_killed_fails_in_time_and_retries_without_duplicates(
    settings, client_for, lab_admin, slide, shipped_models, rq_queues
):
    settings.RUN_LOST_AFTER_SECONDS = LOST_AFTER
    run = services.start_run(slide, lab_admin)
    env = {**subprocess_env(), "RUN_LOST_AFTER_SECONDS": str(LOST_AFTER)}
    # Each its own process group; the bystander serves another queue, as compose's
    # interactive worker does, and notices the lost run with no page open.
    worker, bystander = (
        subprocess.Popen(
            [sys.executable, "manage.py", "rqworker", queue],
            env=env,
            cwd=settings.BASE_DIR,
            start_new_session=True,
        )
        for queue in ("inference", "default")
    )
    try:
        wait_until(
            lambda: InferenceRun.objects.filter(pk=run.pk, status="running", progress__gt=0),
            timeout=180,
            what="the worker never got the run going",
        )
        horses = children(worker.pid)  # each in a process group of its own (RQ's setpgrp)
        assert horses, "no work horse to kill"
        os.killpg(worker.pid, signal.SIGKILL)
        for horse in horses:
            os.killpg(horse, signal.SIGKILL)  # with its patch readers
        killed = time.monotonic()
        worker.wait(timeout=10)
        client = client_for(lab_admin)

        def shown():
            return client.get(f"/cases/{slide.case_id}/runs.json").json()["runs"][0]

        assert shown()["status"] == "running"  # its last heartbeat is recent: not lost yet
        wait_until(
            lambda: InferenceRun.objects.get(pk=run.pk).status == "failed",
            timeout=LOST_AFTER + 10,
            what="no worker failed the run whose worker was killed",
        )
        assert time.monotonic() - killed <= LOST_AFTER + 2
    finally:
        for process in (worker, bystander):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)

    failed = shown()
    assert failed["finished"] and failed["error"].startswith("Worker lost")
    detail = client.get(f"/api/runs/{run.pk}/").json()
    assert detail["status"] == "failed" and "retry the run" in detail["error"]
    assert not Finding.objects.filter(run=run).exists()
    assert Case.objects.get(pk=slide.case_id).status == Case.Status.REGISTERED  # not AI running

    response = client.post(f"/api/runs/{run.pk}/retry/")
    assert response.status_code == 201, response.content
    retried = InferenceRun.objects.get(pk=response.json()["id"])
    run_worker_burst("inference")
    retried.refresh_from_db()
    assert retried.status == InferenceRun.Status.SUCCEEDED, retried.error
    findings = Finding.objects.filter(slide=slide)
    assert findings.count() == findings.filter(run=retried).count() == retried.counts["findings"]
    assert len(set(findings.values_list("x", "y"))) == findings.count() > 0
    # RQ's own cleanup of abandoned jobs, when a worker runs it (a minute or more later),
    # agrees: the job goes to the failed registry and the run keeps its reason.
    queue = rq_queues.get_queue("inference")
    queue.started_job_registry.cleanup(timestamp=time.time() + 3600)
    assert run.job_id in queue.failed_job_registry
    run.refresh_from_db()
    assert run.status == InferenceRun.Status.FAILED and run.error.startswith("Worker lost")


@pytest.mark.django_db(transaction=True)
def test_serve_demo_restarts_a_worker_that_died(tmp_path, rq_queues):
    log = tmp_path / "serve_demo.log"
    with open(log, "w") as output:
        demo = subprocess.Popen(
            [sys.executable, "manage.py", "serve_demo", "--addr", f"127.0.0.1:{free_port()}"],
            env=subprocess_env(),
            cwd=settings.BASE_DIR,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def inference_workers() -> list[int]:
        return [pid for pid in children(demo.pid) if b"rqworker\x00inference" in cmdline(pid)]

    try:
        (first,) = wait_until(inference_workers, 60, "serve_demo started no AI worker")
        os.kill(first, signal.SIGKILL)
        (second,) = wait_until(
            lambda: [p for p in inference_workers() if p != first],
            30,
            f"serve_demo did not restart the AI worker: {log.read_text()}",
        )
        assert "The AI runs worker stopped (exit -9); restarting it." in log.read_text()
    finally:
        demo.terminate()  # it stops its children
        try:
            demo.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(demo.pid, signal.SIGKILL)


@pytest.mark.django_db
def test_redis_down_start_and_retry_answer_503_and_record_nothing(
    client_for, lab_admin, slide, shipped_models, own_redis
):
    client = client_for(lab_admin)
    assert client.post("/api/runs/", {"slide": slide.pk}).status_code == 201  # Redis is up
    first = InferenceRun.objects.get()
    services.cancel_run(first, lab_admin)
    own_redis.stop()
    events = AuditEvent.objects.count()

    page = client.post(f"/slides/{slide.pk}/runs/start/")
    assert page.status_code == 503
    assert (
        QUEUE_DOWN in page.content.decode()
        and "the AI run was not started" in page.content.decode()
    )
    api = client.post("/api/runs/", {"slide": slide.pk})
    assert api.status_code == 503 and QUEUE_DOWN in api.json()["detail"]
    retry_page = client.post(f"/runs/{first.pk}/retry/")
    assert retry_page.status_code == 503 and QUEUE_DOWN in retry_page.content.decode()
    retry_api = client.post(f"/api/runs/{first.pk}/retry/")
    assert retry_api.status_code == 503 and QUEUE_DOWN in retry_api.json()["detail"]

    assert list(InferenceRun.objects.values_list("pk", "status")) == [(first.pk, "cancelled")]
    assert AuditEvent.objects.count() == events


@pytest.mark.django_db
def test_redis_down_explanation_requests_answer_503(
    client_for, pathologist, reviewed_slide, own_redis
):
    own_redis.stop()
    client = client_for(pathologist)
    finding = Finding.objects.filter(slide=reviewed_slide).first()
    page = client.post(f"/findings/{finding.pk}/explain/")
    assert page.status_code == 503 and QUEUE_DOWN in page.json()["error"]
    api = client.post(f"/api/findings/{finding.pk}/explanations/")
    assert api.status_code == 503 and QUEUE_DOWN in api.json()["detail"]
    polled = client.get(f"/findings/{finding.pk}/explanations.json")
    assert polled.status_code == 200 and QUEUE_DOWN in polled.json()["failed"]


@pytest.mark.django_db
def test_redis_down_pages_that_show_a_running_run_still_render(
    client_for, lab_admin, slide, model_versions, own_redis
):
    detector, classifier = model_versions
    run = InferenceRun.objects.create(
        slide=slide,
        detector=detector,
        classifier=classifier,
        status=InferenceRun.Status.RUNNING,
        progress=40,
        stage="detect",
        job_id="mitolens-run-somewhere",
    )
    own_redis.stop()
    client = client_for(lab_admin)
    case_page = client.get(f"/cases/{slide.case_id}/")
    assert case_page.status_code == 200 and b"AI running" in case_page.content
    assert client.get("/").status_code == 200
    assert client.get(f"/cases/{slide.case_id}/runs.json").json()["runs"][0]["progress"] == 40
    assert client.get(f"/api/runs/{run.pk}/").json()["status"] == "running"
    assert client.get("/api/runs/").status_code == 200
    InferenceRun.objects.filter(pk=run.pk).update(status=InferenceRun.Status.QUEUED)
    cancelled = client.post(f"/runs/{run.pk}/cancel/")  # its job stays queued, to be skipped
    assert cancelled.status_code == 302
    run.refresh_from_db()
    assert run.status == InferenceRun.Status.CANCELLED


def test_any_other_redis_failure_is_a_503_with_a_sentence():
    middleware = QueueUnavailableMiddleware(lambda request: None)
    error = RedisConnectionError("Error 111 connecting to /srv/redis.sock")
    factory = RequestFactory()
    api = middleware.process_exception(factory.get("/api/cases/"), error)
    assert api.status_code == 503 and b"job queue is unavailable" in api.content
    fetch = middleware.process_exception(factory.get("/cases/1/runs.json"), error)
    assert fetch.status_code == 503 and fetch["Content-Type"] == "application/json"
    assert middleware.process_exception(factory.get("/"), ValueError()) is None
    assert b"/srv/redis.sock" not in api.content + fetch.content
