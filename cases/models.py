"""The clinical record: patients, cases, their slides and who reviews them."""

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.urls import reverse


class Patient(models.Model):
    class Species(models.TextChoices):
        HUMAN = "human", "Human"
        CANINE = "canine", "Canine"
        FELINE = "feline", "Feline"
        OTHER = "other", "Other"

    external_ref = models.CharField(
        "MRN / pseudonym", max_length=64, unique=True, help_text="Hospital number or pseudonym"
    )
    species = models.CharField(max_length=16, choices=Species.choices, default=Species.HUMAN)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["external_ref"]

    def __str__(self) -> str:
        return self.external_ref


class CaseQuerySet(models.QuerySet):
    def visible_to(self, user) -> "CaseQuerySet":
        """Cases a user may see: lab admins and staff see all, others their assignments."""
        if not user.is_authenticated:
            return self.none()
        if is_lab_admin(user):
            return self
        return self.filter(assignments__pathologist=user).distinct()

    def with_pathologists(self) -> "CaseQuerySet":
        """Each case's assigned pathologists fetched with it, by username (a stable order
        for pages and the API)."""
        from django.contrib.auth import get_user_model

        by_name = get_user_model().objects.order_by("username")
        return self.prefetch_related(models.Prefetch("pathologists", queryset=by_name))


class Case(models.Model):
    class Status(models.TextChoices):
        REGISTERED = "registered", "Registered"
        AI_QUEUED = "ai_queued", "AI queued"
        AI_RUNNING = "ai_running", "AI running"
        AWAITING_REVIEW = "awaiting_review", "Awaiting review"
        IN_REVIEW = "in_review", "In review"
        SIGNED_OUT = "signed_out", "Signed out"

    class Priority(models.IntegerChoices):
        STAT = 1, "STAT"
        URGENT = 2, "Urgent"
        ROUTINE = 3, "Routine"

    class TumourType(models.TextChoices):
        CANINE_MCT = "canine_mct", "Canine mast cell tumour"
        BREAST = "breast", "Breast carcinoma"
        MELANOMA = "melanoma", "Melanoma"
        SOFT_TISSUE_SARCOMA = "sts", "Soft tissue sarcoma"
        OTHER = "other", "Other"

    accession = models.CharField(max_length=32, unique=True)
    patient = models.ForeignKey(Patient, on_delete=models.PROTECT, related_name="cases")
    tumour_type = models.CharField(
        max_length=16, choices=TumourType.choices, default=TumourType.OTHER
    )
    priority = models.PositiveSmallIntegerField(choices=Priority.choices, default=Priority.ROUTINE)
    status = models.CharField(
        max_length=20, choices=Status.choices, default=Status.REGISTERED, db_index=True
    )
    pathologists = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        through="CaseAssignment",
        through_fields=("case", "pathologist"),
        related_name="assigned_cases",
        blank=True,
    )
    clinical_note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    signed_out_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="signed_out_cases",
    )
    signed_out_at = models.DateTimeField(null=True, blank=True)
    final_mitotic_count = models.PositiveIntegerField(null=True, blank=True)
    final_grade = models.CharField(max_length=64, blank=True)
    blinded = models.BooleanField(
        default=False, help_text="Reader study: hide the AI's score and phase until decided"
    )

    objects = CaseQuerySet.as_manager()

    class Meta:
        ordering = ["priority", "created_at"]
        indexes = [models.Index(fields=["priority", "created_at"])]

    def __str__(self) -> str:
        return self.accession

    def get_absolute_url(self) -> str:
        return reverse("review:detail", args=[self.pk])


class CaseAssignment(models.Model):
    case = models.ForeignKey(Case, on_delete=models.CASCADE, related_name="assignments")
    pathologist = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="case_assignments"
    )
    assigned_at = models.DateTimeField(auto_now_add=True)
    assigned_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["case", "pathologist"], name="unique_assignment")
        ]

    def __str__(self) -> str:
        return f"{self.case} → {self.pathologist}"


class SlideQuerySet(models.QuerySet):
    def visible_to(self, user) -> "SlideQuerySet":
        return self.filter(case__in=Case.objects.visible_to(user))


class Slide(models.Model):
    case = models.ForeignKey(Case, on_delete=models.PROTECT, related_name="slides")
    file = models.CharField(max_length=500, help_text="Path relative to the slide store")
    original_name = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.BigIntegerField()
    vendor = models.CharField(max_length=32)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    level_count = models.PositiveSmallIntegerField()
    mpp_x = models.FloatField("µm/px x (from file)", null=True, blank=True)
    mpp_y = models.FloatField("µm/px y (from file)", null=True, blank=True)
    mpp_override = models.FloatField(
        "µm/px override",
        null=True,
        blank=True,
        help_text="Set only when the file lacks a resolution and the scan's is known.",
    )
    objective_power = models.FloatField(null=True, blank=True)
    label = models.CharField(max_length=64, blank=True, help_text="e.g. block and stain")
    damaged_tiles = models.PositiveIntegerField(
        default=0,
        help_text="Deep Zoom tiles whose data in the file cannot be decoded (found by "
        "pre-rendering or by the viewer); the AI does not run on a damaged slide.",
    )
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = SlideQuerySet.as_manager()

    class Meta:
        ordering = ["case", "created_at"]
        constraints = [
            models.CheckConstraint(
                condition=Q(mpp_override__isnull=True) | Q(mpp_override__gt=0),
                name="mpp_override_positive",
            )
        ]

    def __str__(self) -> str:
        return f"{self.case.accession} · {self.original_name}"

    def get_absolute_url(self) -> str:
        return reverse("review:viewer", args=[self.pk])

    @property
    def mpp(self) -> float | None:
        """µm/px used for measurements: the admin override, else the file's."""
        if self.mpp_override:
            return self.mpp_override
        if self.mpp_x and self.mpp_y:
            return (self.mpp_x + self.mpp_y) / 2
        return self.mpp_x

    @property
    def path(self):
        return settings.SLIDE_STORE / self.file


def is_lab_admin(user) -> bool:
    """Staff, superusers and members of lab_admin see and manage everything."""
    if not user.is_authenticated:
        return False
    if user.is_staff or user.is_superuser:
        return True
    cached = getattr(user, "_is_lab_admin", None)
    if cached is None:
        cached = user._is_lab_admin = user.groups.filter(name="lab_admin").exists()
    return cached


class AuditEvent(models.Model):
    """One line of the append-only audit log, chained to the previous line by hash."""

    created_at = models.DateTimeField(db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, null=True, blank=True
    )
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=40, db_index=True)
    object_type = models.CharField(max_length=40, blank=True)
    object_id = models.CharField(max_length=40, blank=True)
    case = models.ForeignKey(Case, on_delete=models.PROTECT, null=True, blank=True)
    details = models.JSONField(default=dict, blank=True)
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action}"
