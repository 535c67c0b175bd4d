"""The review pages' forms: queue filters, decisions, added findings, sign-out, reopening,
the audit export's filters."""

from django import forms
from django.contrib.auth import get_user_model

from cases.forms import MAX_ID, validate_date_range
from cases.models import Case
from inference.models import Finding, ModelVersion

from . import services as review
from .exports import ExportFilters
from .models import Decision


class QueueFilterForm(forms.Form):
    q = forms.CharField(required=False, max_length=100, label="Search accession or patient")
    status = forms.ChoiceField(
        required=False, choices=[("", "Open cases"), ("all", "All")] + Case.Status.choices
    )
    page = forms.IntegerField(required=False, min_value=1, max_value=MAX_ID)


class DecisionForm(forms.Form):
    """A decision from the viewer; the API's DecisionSerializer has the same rules."""

    verdict = forms.ChoiceField(choices=Decision.Verdict.choices)
    corrected_phase = forms.ChoiceField(
        required=False, choices=[("", "none"), *Finding.Phase.choices]
    )
    reason = forms.ChoiceField(required=False, choices=Decision.Reason.choices)
    comment = forms.CharField(required=False, validators=[review.validate_comment])


class AddedFindingForm(forms.Form):
    """A mitosis the AI missed, at level-0 pixels (finite numbers only)."""

    x = forms.FloatField(min_value=0)
    y = forms.FloatField(min_value=0)
    phase = forms.ChoiceField(choices=[(p, p) for p in review.MITOTIC_PHASES])


class SignOutForm(forms.Form):
    final_mitotic_count = forms.IntegerField(min_value=0, max_value=review.MAX_FINAL_COUNT)
    final_grade = forms.CharField(required=False, max_length=review.FINAL_GRADE_MAX_CHARS)
    confirm = forms.ChoiceField(
        label="Confirmation",
        choices=[("yes", "yes")],
        error_messages={
            "required": "Tick the confirmation to sign the case out.",
            "invalid_choice": "Tick the confirmation to sign the case out.",
        },
    )


class ReopenForm(forms.Form):
    reason = forms.CharField(
        max_length=500, error_messages={"required": "Give a reason for reopening the case."}
    )


class ExportFilterForm(forms.Form):
    """Which decisions the audit report holds: the one parser of the export page, the API
    (GET /api/audit/export/) and `manage.py export_audit`; empty fields do not filter."""

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


class TrainingForm(forms.Form):
    """Start training from reviews: which signed-out cases (all when empty), how many held out."""

    cases = forms.CharField(
        required=False,
        max_length=5000,
        label="Cases",
        help_text="Accessions separated by spaces or commas; empty: every signed-out case.",
    )
    holdout_fraction = forms.FloatField(
        initial=0.3,
        min_value=0.05,
        max_value=0.95,
        label="Held-out share of cases",
        help_text="Cases kept out of training to evaluate both versions on.",
    )
    quick = forms.BooleanField(
        required=False, label="Quick check", help_text="A few steps only: checks the loop."
    )

    def clean_cases(self) -> list[str]:
        text = self.cleaned_data["cases"].replace(",", " ")
        return list(dict.fromkeys(text.split()))
