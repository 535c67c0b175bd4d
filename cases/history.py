"""Model changes made in Django admin, recorded in the hash-chained audit log.

``AuditedAdmin`` records ``<model>_added``, ``<model>_changed`` and ``<model>_deleted``
events with before/after values, for the edited object and for every inline row, through
``audit.record`` in the admin's own transaction (the change and delete views run in
``transaction.atomic``), so a change and its event commit or roll back together.
"""

from __future__ import annotations

from django.db import models, transaction

from . import audit
from .models import Case


def values(obj: models.Model) -> dict:
    """The object's stored fields (foreign keys as ids), by field name."""
    return {f.name: f.value_from_object(obj) for f in obj._meta.concrete_fields}


def changes(old: dict, new: dict) -> dict[str, list]:
    """``{field: [before, after]}`` for each field whose value differs."""
    names = sorted(set(old) | set(new))
    return {
        name: [old.get(name), new.get(name)] for name in names if old.get(name) != new.get(name)
    }


def case_of(obj: models.Model) -> Case | None:
    """The case an object belongs to (itself for a case), for the event's case column."""
    if isinstance(obj, Case):
        return obj
    case_id = getattr(obj, "case_id", None)
    return Case.objects.filter(pk=case_id).first() if case_id else None


def record_change(action: str, obj: models.Model, request, details: dict) -> None:
    """One ``<model>_<action>`` event about ``obj`` by the request's user."""
    audit.record(
        f"{obj._meta.model_name}_{action}",
        actor=request.user,
        obj=obj,
        case=case_of(obj),
        details=details,
        request=request,
    )


def record_delete(obj: models.Model, request) -> None:
    """A ``<model>_deleted`` event with everything the object held. A deleted case is not
    linked as the event's case (the log protects the cases it names from deletion)."""
    audit.record(
        f"{obj._meta.model_name}_deleted",
        actor=request.user,
        obj=obj,
        case=None if isinstance(obj, Case) else case_of(obj),
        details={"before": values(obj), "name": str(obj)},
        request=request,
    )


def stored(obj: models.Model) -> dict:
    """The object's values as the database holds them now (before the save in progress)."""
    current = type(obj)._default_manager.filter(pk=obj.pk).first() if obj.pk else None
    return values(current) if current is not None else {}


class AuditedAdmin:
    """ModelAdmin mixin: every add, change and delete (inline rows included) is audited."""

    def save_model(self, request, obj, form, change):
        before = stored(obj) if change else {}
        super().save_model(request, obj, form, change)
        self._record_saved(request, obj, before, change)

    def delete_model(self, request, obj):
        record_delete(obj, request)
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        with transaction.atomic():  # the changelist's bulk delete runs outside the views' one
            for obj in queryset:
                record_delete(obj, request)
            super().delete_queryset(request, queryset)

    def save_formset(self, request, form, formset, change):
        """Inline rows: deletions (recorded while the row still exists), additions, edits."""
        befores = {f.instance.pk: stored(f.instance) for f in formset.initial_forms}
        for deleted in formset.deleted_forms:
            if deleted.instance.pk is not None:
                record_delete(deleted.instance, request)
        super().save_formset(request, form, formset, change)
        for obj in formset.new_objects:
            self._record_saved(request, obj, {}, change=False)
        for obj, _fields in formset.changed_objects:
            self._record_saved(request, obj, befores.get(obj.pk, {}), change=True)

    def _record_saved(self, request, obj, before: dict, change: bool) -> None:
        if not change:
            record_change("added", obj, request, {"after": values(obj), "name": str(obj)})
            return
        diff = changes(before, values(obj))
        if diff:
            record_change("changed", obj, request, {"changes": diff, "name": str(obj)})
