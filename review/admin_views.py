"""Lab-admin pages: the audit export and agreement statistics."""

from functools import wraps

from django import forms
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.http import StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from cases import audit
from cases.forms import validate_date_range
from cases.models import Case, is_lab_admin
from inference.models import ModelVersion

from .exports import ExportFilters, csv_lines
from .stats import agreement_statistics


def lab_admin_required(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not is_lab_admin(request.user):
            raise PermissionDenied("Only lab admins can see this page.")
        return view(request, *args, **kwargs)

    return wrapper


class ExportForm(forms.Form):
    date_from = forms.DateField(
        required=False,
        validators=[validate_date_range],
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    date_to = forms.DateField(
        required=False,
        validators=[validate_date_range],
        widget=forms.DateInput(attrs={"type": "date"}),
    )
    case = forms.ModelChoiceField(
        Case.objects.all(), required=False, to_field_name="accession", empty_label="All cases"
    )
    pathologist = forms.ModelChoiceField(
        get_user_model().objects.filter(decisions__isnull=False).distinct(),
        required=False,
        to_field_name="username",
        empty_label="All pathologists",
    )
    model_version = forms.ModelChoiceField(
        ModelVersion.objects.all(), required=False, empty_label="All model versions"
    )

    def filters(self) -> ExportFilters:
        data = self.cleaned_data
        return ExportFilters(
            date_from=data["date_from"],
            date_to=data["date_to"],
            case=data["case"].accession if data["case"] else "",
            pathologist=data["pathologist"].username if data["pathologist"] else "",
            model_version=data["model_version"].pk if data["model_version"] else None,
        )


@require_GET
@lab_admin_required
def audit_export(request):
    """The export form; with ``download`` set, the CSV itself, streamed."""
    form = ExportForm(request.GET or None)
    if "download" not in request.GET or not form.is_valid():
        status = 400 if form.is_bound and form.errors else 200
        return render(request, "review/audit_export.html", {"form": form}, status=status)
    filters = form.filters()
    audit.record("audit_export", actor=request.user, request=request, details=filters.as_dict())
    response = StreamingHttpResponse(csv_lines(filters), content_type="text/csv; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M")
    response["Content-Disposition"] = f'attachment; filename="mitolens-decisions-{stamp}.csv"'
    return response


@require_GET
@lab_admin_required
def agreement(request):
    return render(request, "review/agreement.html", {"stats": agreement_statistics()})
