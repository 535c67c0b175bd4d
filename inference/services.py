"""What the rest of the portal may ask of the AI side: start, cancel and read runs,
and a slide's current findings."""

from __future__ import annotations

import contextlib

import django_rq
from django.db import transaction
from redis.exceptions import RedisError

from cases.services import Case, record_audit, visible_cases

from .hpf import (
    MissingScale,
    compute_ai_map,
    compute_reviewed_map,
    counted_ai_findings,
    summary,
)
from .models import Finding, HpfMap, InferenceRun, ModelVersion
from .registry import register_shipped_models

RUN_TIMEOUT_SECONDS = 6 * 3600


__all__ = ["MissingScale"]  # raised by slide_hpf, for callers to catch


class RunRefused(Exception):
    """A run that cannot start; the message says why."""


def active_models() -> tuple[ModelVersion, ModelVersion]:
    """The active detector and phase classifier (registering the shipped ones if the
    registry has none)."""
    if not ModelVersion.objects.filter(is_active=True).exists():
        register_shipped_models()
    active = {m.task: m for m in ModelVersion.objects.filter(is_active=True)}
    missing = [
        label
        for task, label in ModelVersion.Task.choices
        if task != ModelVersion.Task.MIL and task not in active
    ]
    if missing:
        raise RunRefused(f"No active model for: {', '.join(missing)}. Activate one in the admin.")
    return active[ModelVersion.Task.DETECTOR], active[ModelVersion.Task.PHASE_CLASSIFIER]


def start_run(
    slide, user=None, parameters: dict | None = None, enqueue_job: bool = True
) -> InferenceRun:
    """Record a queued run of the active models on ``slide`` and enqueue it once the
    transaction commits (unless ``enqueue_job`` is off: the caller executes it)."""
    if not slide.mpp:
        raise RunRefused(
            f"{slide.original_name} has no µm/px; an admin must set it before the AI can run."
        )
    detector, classifier = active_models()
    versions = [detector, classifier, *ModelVersion.objects.filter(task="mil", is_active=True)]
    with transaction.atomic():
        run = InferenceRun.objects.create(
            slide=slide,
            detector=detector,
            classifier=classifier,
            model_hashes={v.name: v.sha256 for v in versions},
            parameters=parameters or {},
            created_by=user,
        )
        run.job_id = f"mitolens-run-{run.pk}"
        run.save(update_fields=["job_id"])
        record_audit(
            "run_start",
            actor=user,
            obj=run,
            case=slide.case,
            details={"slide": slide.pk, **run.model_hashes, "parameters": run.parameters},
        )
        if enqueue_job:
            transaction.on_commit(lambda: enqueue(run))
    refresh_case_status(slide.case_id)
    return run


def enqueue(run: InferenceRun) -> None:
    """Put the run's job on the ``inference`` queue; if Redis cannot be reached the run
    is marked failed with the reason (an admin retries it), never left queued."""
    from rq import Callback

    from .jobs import execute_run, fail, on_job_failure

    try:
        django_rq.get_queue("inference").enqueue(
            execute_run,
            run.pk,
            job_id=run.job_id,
            job_timeout=RUN_TIMEOUT_SECONDS,
            result_ttl=7 * 24 * 3600,
            failure_ttl=30 * 24 * 3600,
            on_failure=Callback(on_job_failure),
        )
    except RedisError as error:
        fail(run.pk, f"Could not queue the run: the job queue is unavailable ({error}).")


def cancel_run(run: InferenceRun, user=None) -> None:
    """Cancel a queued or running run; a running one stops at its next progress report."""
    with transaction.atomic():
        updated = InferenceRun.objects.filter(
            pk=run.pk, status__in=[InferenceRun.Status.QUEUED, InferenceRun.Status.RUNNING]
        ).update(status=InferenceRun.Status.CANCELLED, error="Cancelled.")
        if updated:
            record_audit(
                "run_cancel", actor=user, obj=run, case=run.slide.case, details={"was": run.status}
            )
    if updated and run.status == InferenceRun.Status.QUEUED:
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job

        with contextlib.suppress(NoSuchJobError, InvalidJobOperation):
            Job.fetch(run.job_id, connection=django_rq.get_connection("inference")).cancel()
    refresh_case_status(run.slide.case_id)


def retry_run(run: InferenceRun, user=None) -> InferenceRun:
    """A fresh run of the same slide (a failed or cancelled run stays in the record)."""
    if run.status not in (InferenceRun.Status.FAILED, InferenceRun.Status.CANCELLED):
        raise RunRefused("Only a failed or cancelled run can be retried.")
    return start_run(run.slide, user, run.parameters)


def refresh_case_status(case_id: int) -> None:
    """Move a case between registered / AI queued / AI running / awaiting review from
    its slides' runs; review and sign-out states are left alone."""
    case = Case.objects.get(pk=case_id)
    automatic = {
        Case.Status.REGISTERED,
        Case.Status.AI_QUEUED,
        Case.Status.AI_RUNNING,
        Case.Status.AWAITING_REVIEW,
    }
    if case.status not in automatic:
        return
    statuses = set(
        InferenceRun.objects.filter(slide__case_id=case_id).values_list("status", flat=True)
    )
    if InferenceRun.Status.RUNNING in statuses:
        new = Case.Status.AI_RUNNING
    elif InferenceRun.Status.QUEUED in statuses:
        new = Case.Status.AI_QUEUED
    elif InferenceRun.Status.SUCCEEDED in statuses:
        new = Case.Status.AWAITING_REVIEW
    else:
        new = Case.Status.REGISTERED
    Case.objects.filter(pk=case_id, status__in=automatic).update(status=new)


def visible_findings(user):
    """Findings of the cases the user may see (with slide and case)."""
    return Finding.objects.filter(slide__case__in=visible_cases(user)).select_related("slide__case")


def latest_run(slide) -> InferenceRun | None:
    """The slide's latest successful run: the one whose findings the slide shows."""
    return (
        InferenceRun.objects.filter(slide=slide, status=InferenceRun.Status.SUCCEEDED)
        .select_related("detector", "classifier")
        .order_by("-finished_at", "-pk")
        .first()
    )


def slide_findings(slide):
    """The findings a slide shows: its latest successful run's, plus pathologist-added."""
    run = latest_run(slide)
    findings = Finding.objects.filter(slide=slide, source=Finding.Source.PATHOLOGIST)
    if run is not None:
        findings = findings | Finding.objects.filter(run=run)
    return run, findings


def slide_hpf(slide) -> tuple[HpfMap | None, dict | None]:
    """The AI HPF map of the slide's latest run (computed if missing) and its summary;
    (None, None) when no run has finished. Raises MissingScale without a µm/px."""
    run = latest_run(slide)
    if run is None:
        return None, None
    hpf_map = run.hpf_maps.filter(basis=HpfMap.Basis.AI).first() or compute_ai_map(run)
    return hpf_map, summary(hpf_map, slide.case.tumour_type)


def reviewed_hpf(slide, findings) -> dict | None:
    """The HPF summary of the reviewed ``findings`` on the slide's latest run (None
    before a run has finished). Raises MissingScale without a µm/px."""
    run = latest_run(slide)
    if run is None:
        return None
    return summary(compute_reviewed_map(run, findings), slide.case.tumour_type)


def findings_to_review(slide):
    """The findings a pathologist reviews: AI findings counted at the run's operating point
    (mitotic phase), and findings pathologists added."""
    run, findings = slide_findings(slide)
    added = findings.filter(source=Finding.Source.PATHOLOGIST)
    return added if run is None else added | counted_ai_findings(run)


def runs_for_case(case) -> dict[int, list[InferenceRun]]:
    """Each slide's runs, newest first, with queued/running ones checked against RQ."""
    from .jobs import reconcile

    runs: dict[int, list[InferenceRun]] = {}
    queryset = (
        InferenceRun.objects.filter(slide__case=case)
        .select_related("detector", "classifier", "slide")
        .order_by("-created_at")
    )
    for run in queryset:
        runs.setdefault(run.slide_id, []).append(reconcile(run))
    return runs


def ai_status_by_case(case_ids) -> dict[int, dict]:
    """For the queue, in two queries: each case's AI progress (mean over unfinished runs,
    None when none is queued or running), its latest runs' ids, and how many AI findings
    those runs gave for review."""
    status: dict[int, dict] = {c: {"progress": None, "runs": [], "to_review": 0} for c in case_ids}
    active = InferenceRun.objects.filter(
        slide__case_id__in=case_ids,
        status__in=[InferenceRun.Status.QUEUED, InferenceRun.Status.RUNNING],
    ).values_list("slide__case_id", "progress")
    for case_id, progress in active:
        entry = status[case_id]
        entry["progress"] = (
            progress if entry["progress"] is None else min(entry["progress"], progress)
        )
    done = (
        InferenceRun.objects.filter(
            slide__case_id__in=case_ids, status=InferenceRun.Status.SUCCEEDED
        )
        .order_by("slide_id", "-finished_at", "-pk")
        .values_list("slide__case_id", "slide_id", "pk", "counts")
    )
    seen: set[int] = set()
    for case_id, slide_id, run_id, counts in done:
        if slide_id in seen:
            continue
        seen.add(slide_id)
        status[case_id]["runs"].append(run_id)
        status[case_id]["to_review"] += counts.get("to_review", counts.get("findings", 0))
    return status
