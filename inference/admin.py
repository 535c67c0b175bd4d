import json
from pathlib import Path

from django import forms
from django.contrib import admin, messages

from cases.history import AuditedAdmin

from .models import Finding, InferenceRun, ModelVersion, TrainingRun
from .registry import ModelRejected, activate, register_model


class ModelUploadForm(forms.ModelForm):
    """Registration: the file and its spec are checked by loading and running the model."""

    upload = forms.FileField(label="Weights file")
    activate = forms.BooleanField(required=False, help_text="Make it the task's active version")
    spec = forms.JSONField(
        required=False,
        help_text='e.g. {"class_names": ["mitotic_figure"], "patch_px": 640, "target_mpp": 0.25}',
    )

    class Meta:
        model = ModelVersion
        fields = ["name", "version", "task", "format", "spec", "training_note"]

    def clean(self):
        data = super().clean()
        upload = data.get("upload")
        if upload is None or self.errors:
            return data
        try:
            self.instance = register_model(
                Path(upload.temporary_file_path()),
                name=data["name"],
                version=data["version"],
                task=data["task"],
                fmt=data["format"],
                spec=data.get("spec") or None,
                training_note=data.get("training_note", ""),
                registered_by=self.request_user,
                activate=data.get("activate", False),
            )
        except ModelRejected as rejection:
            raise forms.ValidationError(f"Model refused: {rejection}") from None
        return data

    def save(self, commit=True):
        self.save_m2m = lambda: None  # no many-to-many fields; the admin calls this
        return self.instance  # register_model already stored it


@admin.register(ModelVersion)
class ModelVersionAdmin(AuditedAdmin, admin.ModelAdmin):
    """Registration checks the model (ModelUploadForm); edits, activation and deletion are
    audited (AuditedAdmin, registry.activate)."""

    list_display = ["name", "version", "task", "format", "is_active", "created_at"]
    list_filter = ["task", "format", "is_active"]
    search_fields = ["name", "version", "sha256"]
    actions = ["make_active"]

    def get_form(self, request, obj=None, **kwargs):
        if obj is not None:
            return super().get_form(request, obj, **kwargs)
        # A subclass per request, so the registering user is not shared between threads.
        return type("ModelUploadForm", (ModelUploadForm,), {"request_user": request.user})

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return [
            "name",
            "version",
            "task",
            "format",
            "weights",
            "sha256",
            "pretty_spec",
            "pretty_metrics",
            "registered_by",
            "created_at",
        ]

    def get_fields(self, request, obj=None):
        if obj is None:
            return [
                "name",
                "version",
                "task",
                "format",
                "upload",
                "spec",
                "training_note",
                "activate",
            ]
        return self.get_readonly_fields(request, obj) + ["is_active", "training_note"]

    def save_model(self, request, obj, form, change):
        if not change:
            return  # register_model stored and audited it
        activating = "is_active" in form.changed_data and obj.is_active
        if activating:
            obj.is_active = False  # activate() switches it, with the version it replaces
        super().save_model(request, obj, form, change)
        if activating:
            activate(obj, request.user)

    @admin.display(description="Spec")
    def pretty_spec(self, obj):
        return json.dumps(obj.spec, indent=1)

    @admin.display(description="Metrics")
    def pretty_metrics(self, obj):
        return json.dumps(obj.metrics, indent=1)[:4000]

    @admin.action(description="Make the selected version active for its task")
    def make_active(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version.", messages.ERROR)
            return
        version = queryset.get()
        activate(version, request.user)
        self.message_user(request, f"{version} is now the active {version.get_task_display()}.")


@admin.register(InferenceRun)
class InferenceRunAdmin(admin.ModelAdmin):
    list_display = ["id", "slide", "status", "progress", "stage", "device", "created_at"]
    list_filter = ["status", "device"]
    search_fields = ["slide__case__accession", "slide__original_name", "job_id"]
    list_select_related = ["slide__case"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Finding)
class FindingAdmin(admin.ModelAdmin):
    list_display = ["id", "slide", "run", "source", "phase", "score", "x", "y"]
    list_filter = ["source", "phase"]
    search_fields = ["slide__case__accession"]
    list_select_related = ["slide__case"]
    raw_id_fields = ["slide", "run", "created_by"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # what readers saw and decided on stays on record, as the audit expects


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    """Training from reviews, read-only: started, watched and cancelled on the Training
    page (review.admin_views), its candidates promoted from Model versions."""

    list_display = ["id", "status", "progress", "stage", "device", "created_by", "created_at"]
    list_filter = ["status"]
    readonly_fields = ["pretty_result"]
    exclude = ["dataset", "result"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="Result")
    def pretty_result(self, obj):
        return json.dumps(obj.result, indent=1)[:8000]
