from django import forms
from django.contrib import admin

from .history import AuditedAdmin
from .models import AuditEvent, Case, CaseAssignment, Patient, Slide, is_lab_admin


@admin.register(Patient)
class PatientAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["external_ref", "species", "created_at"]
    search_fields = ["external_ref"]
    list_filter = ["species"]


class AssignmentInline(admin.TabularInline):
    model = CaseAssignment
    extra = 1
    fk_name = "case"
    autocomplete_fields = ["pathologist"]
    readonly_fields = ["assigned_at", "assigned_by"]


class SlideInline(admin.TabularInline):
    model = Slide
    extra = 0
    fields = ["original_name", "label", "width", "height", "mpp_x", "mpp_override"]
    readonly_fields = ["original_name", "width", "height", "mpp_x"]
    show_change_link = True
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False  # slides are registered through the upload form or import_slides


class CaseAdminForm(forms.ModelForm):
    """Sign-out and reopening are not status edits: they go through the case page, which
    asks for the final count or a reason and records it (review.services)."""

    class Meta:
        model = Case
        fields = [
            "accession", "patient", "tumour_type", "priority", "status", "clinical_note", "blinded",
        ]  # fmt: skip

    def clean_status(self):
        status = self.cleaned_data["status"]
        was = self.instance.status if self.instance.pk else None
        signed_out = Case.Status.SIGNED_OUT
        if was == signed_out and status != signed_out:
            raise forms.ValidationError(
                "A signed-out case is reopened with the Reopen button on its case page, "
                "which asks for a reason and clears the sign-out."
            )
        if status == signed_out and was != signed_out:
            raise forms.ValidationError(
                "A case is signed out from its case page, with the final count and grade."
            )
        return status


@admin.register(Case)
class CaseAdmin(AuditedAdmin, admin.ModelAdmin):
    form = CaseAdminForm
    list_display = ["accession", "patient", "tumour_type", "priority", "status", "created_at"]
    list_filter = ["status", "priority", "tumour_type"]
    search_fields = ["accession", "patient__external_ref"]
    autocomplete_fields = ["patient"]
    readonly_fields = ["signed_out_by", "signed_out_at", "final_mitotic_count", "final_grade"]
    inlines = [AssignmentInline, SlideInline]

    def save_formset(self, request, form, formset, change):
        for row in formset.forms:
            if isinstance(row.instance, CaseAssignment) and not row.instance.assigned_by_id:
                row.instance.assigned_by = request.user
        super().save_formset(request, form, formset, change)  # audited by AuditedAdmin


@admin.register(Slide)
class SlideAdmin(AuditedAdmin, admin.ModelAdmin):
    list_display = ["original_name", "case", "vendor", "width", "height", "mpp_x", "mpp_override"]
    list_filter = ["vendor"]
    search_fields = ["original_name", "case__accession", "sha256"]
    fields = [
        "case",
        "original_name",
        "label",
        "mpp_override",
        "file",
        "sha256",
        "size_bytes",
        "vendor",
        "width",
        "height",
        "level_count",
        "mpp_x",
        "mpp_y",
        "objective_power",
        "damaged_tiles",
        "uploaded_by",
        "created_at",
    ]
    readonly_fields = [
        "case",
        "original_name",
        "file",
        "sha256",
        "size_bytes",
        "vendor",
        "width",
        "height",
        "level_count",
        "mpp_x",
        "mpp_y",
        "objective_power",
        "damaged_tiles",
        "uploaded_by",
        "created_at",
    ]

    def has_add_permission(self, request):
        return False  # registration goes through OpenSlide checks, not a bare form


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit log, read-only for lab admins: nobody adds, changes or deletes events."""

    list_display = ["id", "created_at", "actor_name", "action", "object_type", "object_id", "case"]
    list_filter = [
        "action",
        "created_at",
        ("actor", admin.RelatedOnlyFieldListFilter),
        ("case", admin.RelatedOnlyFieldListFilter),
    ]
    search_fields = ["actor_name", "action", "object_id", "case__accession", "hash"]
    date_hierarchy = "created_at"
    ordering = ["-id"]
    list_select_related = ["case"]
    readonly_fields = [field.name for field in AuditEvent._meta.fields]

    def has_view_permission(self, request, obj=None):
        return is_lab_admin(request.user)

    def has_module_permission(self, request):
        return is_lab_admin(request.user)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
