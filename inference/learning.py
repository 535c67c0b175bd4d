"""Training from reviews, the machine side: a TrainingRun fine-tunes the active detector
and phase classifier on a dataset of reviewed slides (built by ``review.learning``; here
it is plain data: slides with labelled points, split by case), as an RQ job on the
``training`` queue, and registers the candidates as new inactive versions with a model
card. Promotion is ``registry.activate`` (admin action, ``manage.py activate_model``).

Web processes import this module to start and cancel runs; torch is imported by the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path

import django_rq
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from redis.exceptions import RedisError

from cases.services import record_audit

from .jobs import worker_device
from .models import ModelVersion, TrainingRun
from .registry import DETECTOR_NAME, load_version, register_model
from .services import RunRefused, active_models, job_queue

log = logging.getLogger(__name__)

QUEUE = "training"
TRAINING_TIMEOUT_SECONDS = 12 * 3600
# Share of the progress bar each stage fills, in order.
STAGES = {"data": (0, 10), "detector": (10, 55), "classifier": (55, 75), "evaluate": (75, 99)}
QUEUE_DOWN = (
    "The job queue is unavailable, so training was not started. Try again in a minute; "
    "if it persists, check the workers' health at /healthz."
)


class TrainingRefused(Exception):
    """Training that cannot start; the message says why."""


class TrainingCancelled(Exception):
    """Raised inside a training job when someone cancelled it."""


# --------------------------------------------------------------------------- starting


def trainable_models() -> tuple[ModelVersion, ModelVersion]:
    """The active detector and phase classifier, if both can be fine-tuned here (native
    format, CenterNet detector); otherwise TrainingRefused says why."""
    try:
        detector, classifier = active_models()
    except RunRefused as refusal:
        raise TrainingRefused(str(refusal)) from None
    for version in (detector, classifier):
        if version.format != ModelVersion.Format.NATIVE:
            raise TrainingRefused(
                f"The active {version.get_task_display().lower()} {version} is a "
                f"{version.format} model; only MitoLens native models can be fine-tuned here. "
                "Activate a native version to train from reviews."
            )
    if detector.spec.get("arch", "centernet") != "centernet":
        raise TrainingRefused(
            f"The active detector {detector} is not a CenterNet; only CenterNet detectors "
            "can be fine-tuned here."
        )
    return detector, classifier


def start_training(
    dataset: dict,
    *,
    user=None,
    quick: bool = False,
    enqueue_job: bool = True,
) -> TrainingRun:
    """Record a queued training run of the active models on ``dataset`` and enqueue it on
    the ``training`` queue once the transaction commits (unless ``enqueue_job`` is off:
    the caller executes it). Raises TrainingRefused with the reason."""
    detector, classifier = trainable_models()
    busy = TrainingRun.objects.exclude(status__in=TrainingRun.FINISHED)
    if enqueue_job:
        busy = reconcile_trainings(busy)
    busy = [run for run in busy if not run.is_finished]
    if busy:
        raise TrainingRefused(
            f"Training run {busy[0].pk} is still {busy[0].status}; wait for it or cancel it."
        )
    if enqueue_job:
        try:
            job_queue(QUEUE).connection.ping()
        except RedisError:
            raise TrainingRefused(QUEUE_DOWN) from None
    with transaction.atomic():
        run = TrainingRun.objects.create(
            dataset=dataset,
            parameters={"quick": quick},
            base_detector=detector,
            base_classifier=classifier,
            created_by=user,
        )
        if enqueue_job:
            run.job_id = f"mitolens-training-{run.pk}"
            run.save(update_fields=["job_id"])
        record_audit(
            "training_start",
            actor=user,
            obj=run,
            details={
                "detector": str(detector),
                "classifier": str(classifier),
                "cases": dataset.get("cases", {}),
                "counts": dataset.get("counts", {}),
                "quick": quick,
            },
        )
        if enqueue_job:
            transaction.on_commit(lambda: enqueue(run))
    run.refresh_from_db()
    if run.status == TrainingRun.Status.FAILED:  # Redis went down after the check
        raise TrainingRefused(run.error)
    return run


def enqueue(run: TrainingRun) -> None:
    """Put the run's job on the ``training`` queue; if Redis cannot be reached the run is
    marked failed with the reason, never left queued."""
    from rq import Callback

    try:
        django_rq.get_queue(QUEUE).enqueue(
            execute_training,
            run.pk,
            job_id=run.job_id,
            job_timeout=TRAINING_TIMEOUT_SECONDS,
            result_ttl=7 * 24 * 3600,
            failure_ttl=30 * 24 * 3600,
            on_failure=Callback(on_job_failure),
        )
    except RedisError:
        _finish(run.pk, TrainingRun.Status.FAILED, QUEUE_DOWN)


def cancel_training(run: TrainingRun, user=None) -> bool:
    """Cancel a queued or running training run (a running one stops at its next progress
    report); returns whether it was still cancellable."""
    with transaction.atomic():
        updated = TrainingRun.objects.filter(
            pk=run.pk, status__in=[TrainingRun.Status.QUEUED, TrainingRun.Status.RUNNING]
        ).update(
            status=TrainingRun.Status.CANCELLED, error="Cancelled.", finished_at=timezone.now()
        )
        if updated:
            record_audit("training_cancel", actor=user, obj=run, details={"was": run.status})
    if updated and run.status == TrainingRun.Status.QUEUED and run.job_id:
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job

        with contextlib.suppress(NoSuchJobError, InvalidJobOperation, RedisError):
            Job.fetch(run.job_id, connection=job_queue(QUEUE).connection).cancel()
    return bool(updated)


# --------------------------------------------------------------------------- the job


class TrainingProgress:
    """Writes the run's stage and percentage at most twice a second, and stops the run
    when its record says it was cancelled."""

    def __init__(self, run_id: int, echo: Callable[[str, int], None] | None = None):
        self.run_id, self.echo = run_id, echo
        self.last_write, self.last_percent = 0.0, -1

    def __call__(self, stage: str, fraction: float) -> None:
        start, end = STAGES[stage]
        percent = int(start + (end - start) * min(fraction, 1.0))
        now = time.monotonic()
        if percent == self.last_percent or (now - self.last_write < 0.5 and fraction < 1.0):
            return
        self.last_write, self.last_percent = now, percent
        if not TrainingRun.objects.filter(pk=self.run_id, status=TrainingRun.Status.RUNNING).update(
            progress=percent, stage=stage
        ):
            raise TrainingCancelled
        if self.echo:
            self.echo(stage, percent)


def execute_training(
    run_id: int,
    echo: Callable[[str, int], None] | None = None,
    log_line: Callable[[str], None] | None = None,
) -> dict:
    """The job: fine-tune the run's base models on its dataset, evaluate both versions on
    the held-out cases, and register the candidates (inactive) with their model card."""
    from .tools.finetune import Dataset, FinetuneSettings, finetune

    run = TrainingRun.objects.select_related("base_detector", "base_classifier").get(pk=run_id)
    if run.status != TrainingRun.Status.QUEUED:
        return {"skipped": run.status}
    device = worker_device()
    TrainingRun.objects.filter(pk=run_id).update(
        status=TrainingRun.Status.RUNNING, started_at=timezone.now(), device=str(device)
    )
    quick = run.parameters.get("quick", False)
    options = FinetuneSettings.quick() if quick else FinetuneSettings()
    try:
        replay = replay_slides(run.base_detector, options.replay_slides)
        result = finetune(
            Dataset.from_dict(run.dataset),
            load_version(run.base_detector),
            load_version(run.base_classifier),
            options,
            device=device,
            progress=TrainingProgress(run_id, echo),
            log=log_line or log.info,
            replay=replay,
        )
        TrainingProgress(run_id)("evaluate", 1.0)  # a last chance to cancel
    except TrainingCancelled:
        return {"cancelled": True}
    except Exception as error:
        log.exception("training run %s failed", run_id)
        _finish(run_id, TrainingRun.Status.FAILED, _describe(error))
        raise
    return _register(run, result)


def replay_slides(base: ModelVersion, count: int) -> list[Path]:
    """The first ``count`` training slides of the shipped detector's recipe (made under
    VAR_DIR/train if missing) when ``base`` is that detector or a candidate fine-tuned
    from it; none for other models, whose training data the portal does not have."""
    from .tools.train import Recipe, make_slides

    if count <= 0 or base.name != DETECTOR_NAME:
        return []
    recipe = Recipe()
    slides = dataclasses.replace(recipe.train, seeds=recipe.train.seeds[:count])
    return make_slides(slides, Path(settings.VAR_DIR) / "train", processes=1)


def _candidate_version(base: ModelVersion, run: TrainingRun) -> str:
    root = base.version.split("-lab")[0]
    version = f"{root}-lab{run.pk}"
    suffix = 1
    while ModelVersion.objects.filter(name=base.name, version=version).exists():
        suffix += 1
        version = f"{root}-lab{run.pk}.{suffix}"
    return version


def _register(run: TrainingRun, result) -> dict:
    """Save both networks (float16, native), register them inactive with the card, and
    mark the run succeeded, in one transaction."""
    from .engine.model_io import save_native
    from .tools.finetune import detection_summary

    summary = {k: detection_summary(v) for k, v in result.metrics.items()}
    versions = []
    with tempfile.TemporaryDirectory() as directory, transaction.atomic():
        locked = TrainingRun.objects.select_for_update().get(pk=run.pk)
        if locked.status != TrainingRun.Status.RUNNING:
            return {"cancelled": True}
        for base, network, spec in (
            (run.base_detector, result.detector, result.detector_spec),
            (run.base_classifier, result.classifier, result.classifier_spec),
        ):
            version = _candidate_version(base, run)
            path = Path(directory) / f"{base.name}-{version}.pt"
            save_native(network.cpu(), spec, path, half=True)
            card = _card(run, base, result, summary)
            versions.append(
                register_model(
                    path,
                    name=base.name,
                    version=version,
                    task=base.task,
                    fmt=ModelVersion.Format.NATIVE,
                    spec=spec.to_dict(),
                    metrics={"holdout": summary, "holdout_reports": result.metrics},
                    training_note=json.dumps(card, indent=1),
                    registered_by=run.created_by,
                )
            )
        detector, classifier = versions
        for version in versions:
            _write_card(version)
        locked.candidate_detector, locked.candidate_classifier = detector, classifier
        locked.status, locked.progress, locked.stage = TrainingRun.Status.SUCCEEDED, 100, "done"
        locked.finished_at = timezone.now()
        locked.result = {
            "candidates": [
                {"name": v.name, "version": v.version, "task": v.task} for v in versions
            ],
            "base": [{"name": v.name, "version": v.version, "task": v.task} for v in _bases(run)],
            "metrics": summary,
            "reports": result.metrics,
            "facts": result.facts,
        }
        locked.save()
        record_audit(
            "training_finish",
            actor=run.created_by,
            obj=locked,
            details={
                "status": locked.status,
                "candidates": [str(v) for v in versions],
                "active_f1": summary["active"]["f1"],
                "candidate_f1": summary["candidate"]["f1"],
            },
        )
    return locked.result


def _bases(run: TrainingRun) -> list[ModelVersion]:
    return [run.base_detector, run.base_classifier]


def _card(run: TrainingRun, base: ModelVersion, result, summary: dict) -> dict:
    """The model card: where the candidate came from, on what, and how both versions
    score on the held-out cases."""
    facts = result.facts
    return {
        "source": "train_from_reviews",
        "training_run": run.pk,
        "fine_tuned_from": str(base),
        "cases": {"train": facts["train_cases"], "holdout": facts["holdout_cases"]},
        "labels": {"train": facts["train_labels"], "holdout": facts["holdout_labels"]},
        "examples": {
            "detector_patches": facts["detector_patches"],
            "classifier_crops": facts["classifier_crops"],
        },
        "settings": facts["settings"],
        "device": facts["device"],
        "holdout_metrics": {
            "active": {"version": str(base), **summary["active"]},
            "candidate": summary["candidate"],
        },
    }


def _write_card(version: ModelVersion) -> None:
    """The card next to the weights in the model store, as ``<name>-<version>.json``."""
    card = {
        "name": version.name,
        "version": version.version,
        "task": version.task,
        "format": version.format,
        "weights": version.weights,
        "sha256": version.sha256,
        "spec": version.spec,
        "training": json.loads(version.training_note),
        "metrics": version.metrics,
    }
    path = Path(settings.MODEL_STORE) / f"{version.name}-{version.version}.json"
    path.write_text(json.dumps(card, indent=1) + "\n")


def _finish(run_id: int, status: str, error: str) -> None:
    with transaction.atomic():
        ended = TrainingRun.objects.filter(pk=run_id).exclude(status__in=TrainingRun.FINISHED)
        if ended.update(status=status, error=error, finished_at=timezone.now()):
            run = TrainingRun.objects.get(pk=run_id)
            record_audit(
                "training_finish",
                actor=run.created_by,
                obj=run,
                details={"status": status, "error": error.split("\n", 1)[0]},
            )


def _describe(error: BaseException) -> str:
    """A one-line reason, then the end of the traceback for the admin."""
    lines = traceback.format_exception(error)
    return f"{type(error).__name__}: {error}\n\n{''.join(lines[-8:])}"


def on_job_failure(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback: the worker or its work horse died before the run finished."""
    _finish(
        job.args[0],
        TrainingRun.Status.FAILED,
        f"The worker stopped before training finished: {exc_value}. Start it again.",
    )


def reconcile_trainings(runs: Iterable[TrainingRun]) -> list[TrainingRun]:
    """The runs, with each queued or running one failed if its RQ job can no longer
    finish it (the rule of ``jobs.reconcile_runs``); as stored when Redis is down."""
    from rq.job import Job

    from .jobs import _why_unfinishable

    runs = list(runs)
    pending = [run for run in runs if not run.is_finished and run.job_id]
    if not pending:
        return runs
    try:
        connection = job_queue(QUEUE).connection
        jobs = Job.fetch_many([run.job_id for run in pending], connection=connection)
    except RedisError:
        return runs
    for run, job in zip(pending, jobs, strict=True):
        error = _why_unfinishable(run, job)
        if error:
            _finish(run.pk, TrainingRun.Status.FAILED, error.replace("the run", "training"))
            run.refresh_from_db()
    return runs
