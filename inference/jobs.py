"""RQ jobs: whole-slide inference runs, executed by workers on the ``inference`` queue."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterable
from datetime import timedelta

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from rq.exceptions import AbandonedJobError
from rq.job import Job, JobStatus

from cases.services import record_audit
from slides import open_slide

from .engine.tissue import TissueMask
from .engine.vocabulary import MITOTIC_PHASES
from .hpf import compute_ai_map
from .models import Finding, InferenceRun, MilMap, ModelVersion
from .registry import loaded_version
from .signals import run_succeeded

log = logging.getLogger(__name__)

ENQUEUE_GRACE = timedelta(minutes=1)
# Share of the progress bar each engine stage fills, in order.
STAGES = {"tissue": (0, 5), "detect": (5, 85), "classify": (85, 92), "mil": (92, 99)}


class RunCancelled(Exception):
    """Raised inside a run when someone cancelled it."""


class RunProgress:
    """Writes a run's stage and percentage to the database at most twice a second, and
    stops the run when its record says it was cancelled."""

    def __init__(self, run_id: int, echo: Callable[[str, int], None] | None = None):
        self.run_id = run_id
        self.echo = echo
        self.last_write = 0.0
        self.last_percent = -1

    def __call__(self, stage: str, fraction: float) -> None:
        start, end = STAGES[stage]
        percent = int(start + (end - start) * fraction)
        now = time.monotonic()
        if percent == self.last_percent or (now - self.last_write < 0.5 and fraction < 1.0):
            return
        self.last_write, self.last_percent = now, percent
        updated = InferenceRun.objects.filter(
            pk=self.run_id, status=InferenceRun.Status.RUNNING
        ).update(progress=percent, stage=stage)
        if not updated:
            raise RunCancelled
        if self.echo:
            self.echo(stage, percent)


def worker_device():
    """The torch device this worker's runs use: INFERENCE_DEVICE, else CUDA when present."""
    from .engine.pipeline import pick_device

    return pick_device(settings.INFERENCE_DEVICE or None)


def patch_readers(device) -> int:
    """Processes that read a run's patches on ``device`` (at most INFERENCE_LOADER_WORKERS;
    see engine.pipeline.reader_processes)."""
    from .engine.pipeline import reader_processes

    return reader_processes(device, settings.INFERENCE_LOADER_WORKERS)


def execute_run(run_id: int, echo: Callable[[str, int], None] | None = None) -> dict:
    """The job: run the run's models over its slide and store the findings.

    Findings are written in the same transaction that marks the run succeeded, so a run
    has either all its findings or none, and executing a run twice never duplicates them.
    """
    # The engine (torch) is imported by the jobs, never with this module, which web
    # processes import to enqueue them; workers load it once, before forking (portal.workers).
    run = InferenceRun.objects.select_related("slide", "detector", "classifier").get(pk=run_id)
    if run.status != InferenceRun.Status.QUEUED:
        return {"skipped": run.status}
    device = worker_device()
    with transaction.atomic():
        started = InferenceRun.objects.filter(pk=run_id, status=InferenceRun.Status.QUEUED)
        if not started.update(
            status=InferenceRun.Status.RUNNING,
            started_at=timezone.now(),
            device=str(device),
            stage="",
        ):  # cancelled since it was read
            return {"skipped": InferenceRun.objects.get(pk=run_id).status}
        _case_status_changed(run)
    try:
        progress = RunProgress(run_id, echo)
        result = _infer(run, device, progress)
        started = time.perf_counter()
        _mil(run, progress, result.tissue)
        result.stats["seconds"]["mil"] = time.perf_counter() - started
    except RunCancelled:
        _finish(run_id, InferenceRun.Status.CANCELLED, error="Cancelled while running.")
        return {"cancelled": True}
    except Exception as error:
        log.exception("inference run %s failed", run_id)
        _finish(run_id, InferenceRun.Status.FAILED, error=_describe(error))
        raise
    _record_domain(run_id, result.stats.get("domain"))
    _store(run, result)
    return result.stats


def _infer(run: InferenceRun, device, progress: RunProgress):
    from .engine.pipeline import run_slide

    return run_slide(
        run.slide.path,
        loaded_version(run.detector),
        loaded_version(run.classifier),
        device=device,
        num_workers=patch_readers(device),
        mpp_override=run.slide.mpp_override,
        score_threshold=run.parameters.get("score_threshold"),
        progress=progress,
        domain=run.detector.domain or None,
    )


def _record_domain(run_id: int, domain: dict | None) -> None:
    """Record how far the slide lies from the detector's training data (before the
    findings, which are stored with the run's success)."""
    domain = domain or {}
    InferenceRun.objects.filter(pk=run_id, status=InferenceRun.Status.RUNNING).update(
        domain_status=domain.get("status") or InferenceRun.Domain.UNKNOWN,
        domain_distance=domain.get("distance"),
        domain_threshold=domain.get("threshold"),
    )


def _store(run: InferenceRun, result) -> None:
    started = time.perf_counter()
    findings = [
        Finding(
            slide_id=run.slide_id,
            run_id=run.pk,
            source=Finding.Source.AI,
            x=f["x"],
            y=f["y"],
            box_x0=f["box"][0],
            box_y0=f["box"][1],
            box_x1=f["box"][2],
            box_y1=f["box"][3],
            score=f["score"],
            phase=f["phase"],
            phase_probs={k: round(v, 5) for k, v in f["phase_probs"].items()},
        )
        # by position, not score: ids are shown to blinded readers and must rank nothing
        for f in sorted(result.findings, key=lambda f: (f["y"], f["x"]))
    ]
    phases = {}
    for finding in findings:
        phases[finding.phase] = phases.get(finding.phase, 0) + 1
    stats = result.stats
    with transaction.atomic():
        locked = InferenceRun.objects.select_for_update().get(pk=run.pk)
        if locked.status != InferenceRun.Status.RUNNING:
            return  # cancelled at the last moment: keep nothing
        Finding.objects.filter(run=run).delete()
        Finding.objects.bulk_create(findings, batch_size=2000)
        locked.status = InferenceRun.Status.SUCCEEDED
        locked.progress, locked.stage = 100, "done"
        locked.finished_at = timezone.now()
        locked.counts = {
            "findings": len(findings),
            "to_review": sum(phases.get(p, 0) for p in MITOTIC_PHASES),
            "by_phase": phases,
            "patches_total": stats["patches_total"],
            "patches_tissue": stats["patches_tissue"],
            "detections_raw": stats["detections_raw"],
            "dropped_off_slide": stats["dropped_off_slide"],
            "dropped_off_tissue": stats["dropped_off_tissue"],
        }
        locked.device = stats["device"]
        for _, counts in run_succeeded.send(sender=InferenceRun, run=locked):
            locked.counts.update(counts or {})
        stats["seconds"]["store"] = time.perf_counter() - started  # with decisions carried
        locked.timings = {k: round(v, 3) for k, v in stats["seconds"].items()}
        locked.save()
        _audit_finish(locked)
        _case_status_changed(run)
    started = time.perf_counter()
    try:
        compute_ai_map(locked, result.tissue)
    except Exception:  # the findings stand; the map can be recomputed with manage.py hpf
        log.exception("HPF map of run %s failed", run.pk)
    locked.timings["hpf_map"] = round(time.perf_counter() - started, 3)
    InferenceRun.objects.filter(pk=run.pk).update(timings=locked.timings)


def _mil(run: InferenceRun, progress: RunProgress, tissue: TissueMask) -> None:
    """Attention-MIL over the slide's ``tissue`` with the active MIL model, when there is
    one."""
    from .engine.mil import slide_attention

    version = ModelVersion.objects.filter(task=ModelVersion.Task.MIL, is_active=True).first()
    if version is None:
        return
    progress("mil", 0.0)
    model, _ = loaded_version(version)
    with open_slide(run.slide.path) as slide:
        result = slide_attention(slide, model, tissue, run.slide.mpp_override)
    MilMap.objects.update_or_create(
        run=run,
        defaults={
            "model_version": version,
            "bag_px": result.bag_px,
            "probability": np.round(result.probability, 3).tolist(),
            "attention": np.round(result.attention, 3).tolist(),
            "on_tissue": result.on_tissue.tolist(),
        },
    )
    progress("mil", 1.0)


def fail(run_id: int, error: str) -> None:
    """Mark a run that has not finished as failed, with the reason."""
    _finish(run_id, InferenceRun.Status.FAILED, error)


def _finish(run_id: int, status: str, error: str) -> None:
    with transaction.atomic():
        ended = InferenceRun.objects.filter(pk=run_id).exclude(status__in=InferenceRun.FINISHED)
        if ended.update(status=status, error=error, finished_at=timezone.now()):
            run = InferenceRun.objects.select_related("slide__case").get(pk=run_id)
            _audit_finish(run)
            # In the same transaction: no one sees a finished run on a case still "AI running".
            _case_status_changed(run)


def _audit_finish(run: InferenceRun) -> None:
    record_audit(
        "run_finish",
        obj=run,
        case=run.slide.case,
        details={
            "status": run.status,
            "findings": run.counts.get("findings"),
            "error": run.error.split("\n", 1)[0],
        },
    )


def _describe(error: BaseException) -> str:
    """A one-line reason for the user, then the traceback for the admin."""
    lines = traceback.format_exception(error)
    return f"{type(error).__name__}: {error}\n\n{''.join(lines[-8:])}"


def _case_status_changed(run: InferenceRun) -> None:
    from .services import refresh_case_status  # services enqueues this module's job

    refresh_case_status(run.slide.case_id)


WORKER_LOST = (
    "Worker lost: the worker running this AI run stopped answering before the run finished "
    "(it was killed, or its machine went down). No findings were kept; retry the run."
)


def on_job_failure(job: Job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback. A failure inside execute_run is already on the run; this records
    the ones outside it: the worker vanished (AbandonedJobError, from RQ's registry cleanup)
    or its work horse was killed (portal.workers.Worker)."""
    if issubclass(exc_type, AbandonedJobError):
        error = WORKER_LOST
    else:
        error = f"The worker stopped before the run finished: {exc_value}. Retry the run."
    _finish(job.args[0], InferenceRun.Status.FAILED, error=error)


def reconcile(run: InferenceRun) -> InferenceRun:
    """The run, failed first if its RQ job can no longer finish it (see reconcile_runs)."""
    return reconcile_runs([run])[0]


def fail_lost_runs() -> None:
    """Fail every queued or running run whose RQ job can no longer finish it (workers call
    this on each maintenance tick)."""
    reconcile_runs(
        InferenceRun.objects.exclude(status__in=InferenceRun.FINISHED).exclude(job_id="")
    )


def reconcile_runs(runs: Iterable[InferenceRun]) -> list[InferenceRun]:
    """The runs, with each queued or running one failed if its RQ job can no longer finish
    it: the job ended without finishing the run, is gone, or its worker has sent no
    heartbeat for half of RUN_LOST_AFTER_SECONDS (killed, or its machine went down).

    One round trip to Redis; raises RedisError when Redis is down (callers that only show
    runs catch it and show what the database says).
    """
    from .services import job_queue

    runs = list(runs)
    pending = [run for run in runs if not run.is_finished and run.job_id]
    if not pending:
        return runs
    connection = job_queue("inference").connection
    jobs = Job.fetch_many([run.job_id for run in pending], connection=connection)
    for run, job in zip(pending, jobs, strict=True):
        error = _why_unfinishable(run, job)
        if error:
            _finish(run.pk, InferenceRun.Status.FAILED, error=error)
            run.refresh_from_db()
    return runs


def _why_unfinishable(run: InferenceRun, job: Job | None) -> str:
    """Why the run's job cannot finish it, or "" while it still may."""
    if job is None:
        if timezone.now() - run.created_at < ENQUEUE_GRACE:
            return ""  # enqueued when its transaction commits
        return "The worker stopped before the run finished. The job is gone from the queue."
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        beat = job.last_heartbeat or job.started_at
        silent = (timezone.now() - beat).total_seconds() if beat else 0
        return WORKER_LOST if silent > settings.RUN_LOST_AFTER_SECONDS / 2 else ""
    if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        result = job.latest_result()
        reason = ((result.exc_string if result else "") or "").strip()
        return "The worker stopped before the run finished. " + (
            reason.splitlines()[-1] if reason else "The job is gone."
        )
    return ""
