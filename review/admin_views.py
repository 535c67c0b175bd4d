"""Lab-admin pages: the audit export, agreement statistics and training from reviews."""

from functools import wraps

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseBadRequest, HttpResponseNotAllowed, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from cases import audit
from cases.models import Case, is_lab_admin
from inference import learning as ai_learning
from inference.models import ModelVersion, TrainingRun
from inference.registry import activate

from . import learning
from .exports import csv_lines
from .forms import ExportFilterForm, TrainingForm
from .stats import agreement_statistics


def lab_admin_required(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not is_lab_admin(request.user):
            raise PermissionDenied("Only lab admins can see this page.")
        return view(request, *args, **kwargs)

    return wrapper


@require_GET
@lab_admin_required
def audit_export(request):
    """The export form; with ``download`` set, the decisions CSV itself, streamed; with
    ``kind=events``, the whole audit log with its hashes."""
    if request.GET.get("kind") == "events":
        return _events_csv(request)
    form = ExportFilterForm(request.GET or None)
    if "download" not in request.GET or not form.is_valid():
        status = 400 if form.is_bound and form.errors else 200
        return render(request, "review/audit_export.html", {"form": form}, status=status)
    filters = form.filters()
    audit.record("audit_export", actor=request.user, request=request, details=filters.as_dict())
    response = StreamingHttpResponse(csv_lines(filters), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="mitolens-decisions-{stamp}.csv"'
    return response


def _events_csv(request):
    audit.record("audit_export", actor=request.user, request=request, details={"kind": "events"})
    response = StreamingHttpResponse(
        audit.events_csv_lines(), content_type="text/csv; charset=utf-8"
    )
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="mitolens-audit-events-{stamp}.csv"'
    return response


@require_GET
@lab_admin_required
def agreement(request):
    return render(request, "review/agreement.html", {"stats": agreement_statistics()})


# --------------------------------------------------------------------------- training


@lab_admin_required
def training(request):
    """Training from reviews: start a run (POST), watch runs and their candidates, promote
    or roll back. A refusal (too little data, a run already going) is shown with its
    reason, status 400."""
    form = TrainingForm(request.POST or None)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            try:
                run = learning.start_from_reviews(
                    request.user,
                    form.cleaned_data["cases"],
                    form.cleaned_data["holdout_fraction"],
                    quick=form.cleaned_data["quick"],
                )
            except ai_learning.TrainingRefused as refusal:
                form.add_error(None, str(refusal))
            else:
                messages.success(request, f"Training run {run.pk} queued.")
                return redirect("review:training")
        status = 400
    elif request.method != "GET":
        return HttpResponseNotAllowed(["GET", "POST"])
    runs = ai_learning.reconcile_trainings(
        TrainingRun.objects.select_related(
            "base_detector",
            "base_classifier",
            "candidate_detector",
            "candidate_classifier",
            "created_by",
        )[:20]
    )
    context = {
        "form": form,
        "runs": runs,
        "active": ModelVersion.objects.filter(is_active=True).order_by("task"),
        "signed_out": Case.objects.filter(status=Case.Status.SIGNED_OUT).count(),
        "running": any(not run.is_finished for run in runs),
        "minimum": {
            "cases": learning.MIN_CASES,
            "train": learning.MIN_TRAIN_MITOSES,
            "holdout": learning.MIN_HOLDOUT_MITOSES,
        },
    }
    return render(request, "review/training.html", context, status=status)


@require_POST
@lab_admin_required
def training_cancel(request, run_id: int):
    run = get_object_or_404(TrainingRun, pk=run_id)
    if ai_learning.cancel_training(run, request.user):
        messages.success(request, f"Training run {run.pk} cancelled.")
    else:
        messages.error(request, f"Training run {run.pk} has already finished.")
    return redirect("review:training")


@require_POST
@lab_admin_required
def training_activate(request, run_id: int):
    """Activate a run's candidates (promotion) or its base versions (rollback), audited."""
    run = get_object_or_404(TrainingRun, pk=run_id, status=TrainingRun.Status.SUCCEEDED)
    which = request.POST.get("which")
    if which == "candidate":
        versions = [run.candidate_detector, run.candidate_classifier]
    elif which == "base":
        versions = [run.base_detector, run.base_classifier]
    else:
        return HttpResponseBadRequest("Say which versions to activate: candidate or base.")
    if None in versions:
        messages.error(request, "A version of this run is no longer registered.")
        return redirect("review:training")
    for version in versions:
        activate(version, request.user)
    names = ", ".join(str(v) for v in versions)
    messages.success(request, f"Active now: {names}.")
    return redirect("review:training")
