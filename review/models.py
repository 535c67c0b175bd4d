"""Decisions: a pathologist's verdicts on findings, append-only."""

from django.conf import settings
from django.db import models


class Decision(models.Model):
    """A pathologist's verdict on a finding. Never edited: a changed mind is a new row,
    and the latest row per (finding, reviewer) is that reviewer's current decision."""

    class Verdict(models.TextChoices):
        AGREE = "agree", "Agree"
        DISAGREE = "disagree", "Disagree"
        UNCERTAIN = "uncertain", "Uncertain"

    class Reason(models.TextChoices):
        NONE = "", "—"
        LOOKALIKE = "lookalike", "Look-alike (apoptosis, pyknosis, lymphocyte)"
        ARTEFACT = "artefact", "Artefact / out of focus"
        OUTSIDE_TUMOUR = "outside_tumour", "Outside the tumour"
        DUPLICATE = "duplicate", "Duplicate of another finding"
        POOR_QUALITY = "poor_quality", "Image quality too poor to call"
        OTHER = "other", "Other (see comment)"

    finding = models.ForeignKey(
        "inference.Finding", on_delete=models.PROTECT, related_name="decisions"
    )
    reviewer = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="decisions"
    )
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    corrected_phase = models.CharField(max_length=12, blank=True)
    reason = models.CharField(max_length=16, choices=Reason.choices, blank=True)
    comment = models.TextField(blank=True, max_length=2000)
    blinded = models.BooleanField(default=False, help_text="AI output was hidden when decided")
    carried_from = models.ForeignKey(
        "self",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="carried_to",
        help_text="The decision on an earlier run's finding this one was carried from",
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        db_table = "cases_decision"  # moved from cases with its rows (migration 0001)
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(
                fields=["finding", "reviewer", "-id"], name="cases_decis_finding_78167b_idx"
            )
        ]

    def __str__(self) -> str:
        return f"{self.reviewer} {self.verdict} finding {self.finding_id}"
