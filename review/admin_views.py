"""Lab-admin pages: the audit export and agreement statistics."""

from functools import wraps

from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from cases import audit
from cases.models import is_lab_admin

from .exports import csv_lines
from .forms import ExportFilterForm
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
