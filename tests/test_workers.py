"""Engine workers load the active models once, before they fork a work horse per job."""

import subprocess
import sys

import pytest

from inference import registry, services
from inference.models import InferenceRun, ModelVersion
from inference.registry import activate, loaded_version, register_model
from portal.workers import preload
from tests.conftest import subprocess_env


def test_an_engine_worker_loads_the_active_models_before_its_jobs(shipped_models):
    registry._loaded.cache_clear()
    preload(["inference"])
    assert registry._loaded.cache_info().currsize == 3  # loaded by the preload itself
    active = ModelVersion.objects.filter(is_active=True)
    assert {v.task for v in active} == {"detector", "phase_classifier", "mil"}
    for version in active:  # the same objects a job's work horse inherits
        assert loaded_version(version) is loaded_version(version) is not None
    assert registry._loaded.cache_info().misses == 3  # nothing loaded after the preload


def test_a_newly_activated_version_is_loaded_at_the_next_preload(shipped_models, tmp_path):
    classifier = ModelVersion.objects.get(task="phase_classifier", is_active=True)
    copy = register_model(
        classifier.path,
        name="lab-phase",
        version="2.0",
        task="phase_classifier",
        fmt=classifier.format,
        spec=classifier.spec,
    )
    preload(["explain"])
    before = loaded_version(classifier)
    activate(copy)
    preload(["explain"])  # as a worker's maintenance tick does
    loads = registry._loaded.cache_info().misses
    assert loaded_version(copy) is not before  # its own entry, keyed by version and weights
    assert loaded_version(classifier) is before
    assert registry._loaded.cache_info().misses == loads  # nothing loaded after the tick


@pytest.mark.django_db(transaction=True)
def test_a_forking_worker_with_preloaded_models_finishes_runs(
    settings, lab_admin, slide, shipped_models, rq_queues
):
    """A real `rqworker` (models loaded before it forks each job's work horse, whose
    readers are processes too) completes two runs, so nothing it inherited hangs."""
    runs = [services.start_run(slide, lab_admin) for _ in range(2)]
    worker = subprocess.run(
        [sys.executable, "manage.py", "rqworker", "inference", "--burst"],
        env=subprocess_env(),
        cwd=settings.BASE_DIR,
        timeout=120,
        capture_output=True,
    )
    assert worker.returncode == 0, worker.stderr.decode()[-2000:]
    for run in runs:
        run.refresh_from_db()
        assert run.status == InferenceRun.Status.SUCCEEDED, run.error
        # where the job's time went beyond the slide pass (the run's API record has it)
        assert {"total", "mil", "store", "hpf_map"} <= set(run.timings), run.timings


@pytest.mark.django_db
def test_a_stop_asked_for_during_maintenance_or_preloading_stops_the_worker(own_redis, monkeypatch):
    """RQ's SIGTERM handler raises StopRequested wherever the worker is: its maintenance
    and preloading, which keep a worker going through their own errors, let it through."""
    import django_rq
    from rq.exceptions import StopRequested

    from inference import jobs
    from portal.workers import Worker

    def stop_asked():
        raise StopRequested()

    worker = Worker(["default"], connection=django_rq.get_connection("default"))
    monkeypatch.setattr(jobs, "fail_lost_runs", stop_asked)
    with pytest.raises(StopRequested):
        worker.run_maintenance_tasks()
    monkeypatch.setattr(registry, "preload_active", lambda tasks: stop_asked())
    with pytest.raises(StopRequested):
        preload(["explain"])


@pytest.mark.django_db
def test_a_warm_shutdown_does_not_wait_for_the_pubsub_threads_sleep(own_redis):
    """Once unsubscribed, the pubsub thread sleeps up to 60 s before it looks at its stop
    flag; stopping the worker then must not wait for it."""
    import time

    import django_rq

    from portal.workers import Worker

    worker = Worker(["default"], connection=django_rq.get_connection("default"))
    worker.subscribe()
    worker.pubsub.unsubscribe()
    time.sleep(0.5)  # the thread reads the reply and goes to sleep, unsubscribed
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 5
