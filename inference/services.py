"""What the rest of the portal may ask of the AI side: start, cancel and read runs,
and a slide's current findings."""

from __future__ import annotations

import contextlib

import django_rq
from django.db import transaction
from django.db.models import Count, F, Max, Q
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from rq import Queue

from cases.services import Case, change_status, record_audit, visible_cases

from .blinding import blinded_for
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


class QueueUnavailable(RunRefused):
    """Redis cannot be reached, so no run was queued; the message says so."""


QUEUE_DOWN = (
    "The job queue is unavailable, so the AI run was not started. Try again in a minute; "
    "if it persists, tell your lab admin."
)


def job_queue(name: str) -> Queue:
    """The RQ queue ``name`` on a connection that fails at once when Redis is down
    (redis-py would retry for seconds): requests answer or degrade without waiting."""
    connection = django_rq.get_connection(name)
    connection.set_retry(Retry(NoBackoff(), 0))
    return django_rq.get_queue(name, connection=connection)


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
    transaction commits (unless ``enqueue_job`` is off: the caller executes it).

    Raises QueueUnavailable, having recorded nothing, when Redis is down, and RunRefused
    (the message says why) on a signed-out case or a slide the AI cannot read.
    """
    case = slide.case
    if case.status == Case.Status.SIGNED_OUT:  # the signed-out record must not change
        raise RunRefused(f"Case {case.accession} is signed out; reopen it to run the AI again.")
    if not slide.mpp:
        raise RunRefused(
            f"{slide.original_name} has no µm/px; an admin must set it before the AI can run."
        )
    if slide.damaged_tiles:
        raise RunRefused(
            f"{slide.original_name} is damaged ({slide.damaged_tiles} tiles cannot be decoded);"
            " the AI does not run on a damaged slide. Rescan it or export it again."
        )
    detector, classifier = active_models()
    versions = [detector, classifier, *ModelVersion.objects.filter(task="mil", is_active=True)]
    if enqueue_job:
        try:
            job_queue("inference").connection.ping()
        except RedisError:
            raise QueueUnavailable(QUEUE_DOWN) from None
    with transaction.atomic():
        run = InferenceRun.objects.create(
            slide=slide,
            detector=detector,
            classifier=classifier,
            model_hashes={v.name: v.sha256 for v in versions},
            parameters=parameters or {},
            created_by=user,
        )
        if enqueue_job:  # a run executed here has no job whose state could disagree
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
    if run.status == InferenceRun.Status.FAILED:  # Redis went down after the check
        raise QueueUnavailable(run.error)
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
    except RedisError:
        run.status = InferenceRun.Status.FAILED
        run.error = (
            "The job queue became unavailable while the AI run was being queued, so it was "
            "recorded as failed and will not start. Retry it in a minute; if it persists, "
            "tell your lab admin."
        )
        fail(run.pk, run.error)


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
    if updated and run.status == InferenceRun.Status.QUEUED and run.job_id:
        from rq.exceptions import InvalidJobOperation, NoSuchJobError
        from rq.job import Job

        # Without Redis the job stays queued, and a worker that takes it skips the run.
        with contextlib.suppress(NoSuchJobError, InvalidJobOperation, RedisError):
            Job.fetch(run.job_id, connection=job_queue("inference").connection).cancel()
    refresh_case_status(run.slide.case_id)


def retry_run(run: InferenceRun, user=None) -> InferenceRun:
    """A fresh run of the same slide (a failed or cancelled run stays in the record)."""
    from .jobs import reconcile

    try:
        run = reconcile(run)  # a run whose worker was lost is failed by now
    except RedisError:
        raise QueueUnavailable(QUEUE_DOWN) from None
    if run.status not in (InferenceRun.Status.FAILED, InferenceRun.Status.CANCELLED):
        raise RunRefused("Only a failed or cancelled run can be retried.")
    return start_run(run.slide, user, run.parameters)


def refresh_case_status(case_id: int) -> None:
    """Move a case between registered / AI queued / AI running / awaiting review from
    its slides' runs; review and sign-out states are left alone."""
    automatic = {
        Case.Status.REGISTERED,
        Case.Status.AI_QUEUED,
        Case.Status.AI_RUNNING,
        Case.Status.AWAITING_REVIEW,
    }
    with transaction.atomic():
        # The case first, then its runs: of two runs of a case ending at once, the second
        # to lock reads the first one's committed status, so the last word is right.
        locked = Case.objects.select_for_update().filter(pk=case_id, status__in=automatic)
        if locked.first() is None:
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
        change_status(case_id, new, automatic, "the state of its slides' AI runs")


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
    """The findings a slide shows: its latest successful run's, pathologist-added ones, and
    decided findings of earlier runs the latest did not find again (``kept``)."""
    run = latest_run(slide)
    shown = Q(source=Finding.Source.PATHOLOGIST) | Q(kept=True)
    if run is not None:
        shown |= Q(run=run)
    return run, Finding.objects.filter(shown, slide=slide)


REVISION_CACHE_SECONDS = 3600  # how long what is cached by findings_revision is kept


def findings_revision(slide) -> str:
    """What the slide shows, in a few numbers (the shown run, how many findings and the
    newest): a new run or finding changes it. A stored finding's position and AI call never
    change, and its ``kept`` flag changes only in the transaction that makes a new run
    the shown one (review.carry), which changes the shown run: so what is cached under
    it is never stale."""
    run, findings = slide_findings(slide)
    shown = findings.aggregate(count=Count("pk"), newest=Max("pk"))
    return f"{slide.pk}:{run.pk if run else 0}:{shown['count']}:{shown['newest']}"


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


def findings_to_review(slide, reviewer=None):
    """The findings a pathologist reviews: AI findings counted at the run's operating point
    (mitotic phase), findings pathologists added and decided ones kept from earlier runs;
    a blinded ``reviewer`` reviews every
    AI finding (which ones the AI counted is its call, hidden from them)."""
    run, findings = slide_findings(slide)
    if reviewer is not None and blinded_for(reviewer, slide.case):
        return findings
    decided_or_added = findings.filter(Q(source=Finding.Source.PATHOLOGIST) | Q(kept=True))
    return decided_or_added if run is None else decided_or_added | counted_ai_findings(run)


def checked_runs(runs) -> list[InferenceRun]:
    """The runs, with queued/running ones checked against RQ (a run whose worker was lost
    is failed); without Redis, as the database has them."""
    from .jobs import reconcile_runs

    try:
        return reconcile_runs(runs)
    except RedisError:
        return list(runs)


def runs_for_case(case) -> dict[int, list[InferenceRun]]:
    """Each slide's runs, newest first, with queued/running ones checked against RQ (and
    ``case``'s status re-read when that failed one)."""
    listed = list(
        InferenceRun.objects.filter(slide__case=case)
        .select_related("detector", "classifier", "slide__case")
        .order_by("-created_at")
    )
    active = [run for run in listed if not run.is_finished]
    runs: dict[int, list[InferenceRun]] = {}
    for run in checked_runs(listed):
        runs.setdefault(run.slide_id, []).append(run)
    if any(run.is_finished for run in active):
        case.refresh_from_db(fields=["status"])
    return runs


def ai_status_by_case(case_ids) -> dict[int, dict]:
    """For the queue, in two queries and one Redis round trip: each case's AI progress (the
    least over unfinished runs, None when none is queued or running; a run whose worker was
    lost is failed first), its latest runs' ids, how many AI findings those runs gave for
    review (``to_review``) and in all (``findings``, what a blinded reader reviews)."""
    status: dict[int, dict] = {
        c: {"progress": None, "runs": [], "to_review": 0, "findings": 0} for c in case_ids
    }
    active = InferenceRun.objects.filter(
        slide__case_id__in=case_ids,
        status__in=[InferenceRun.Status.QUEUED, InferenceRun.Status.RUNNING],
    ).annotate(case_pk=F("slide__case_id"))
    for run in checked_runs(active):
        if run.is_finished:
            continue
        entry, progress = status[run.case_pk], run.progress
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
        status[case_id]["findings"] += counts.get("findings", 0)
    return status
