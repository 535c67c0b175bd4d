"""Exports: the decision audit report as CSV (streamed), and a slide's findings as GeoJSON
in the shape QuPath imports."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time

from django.db.models import Q, QuerySet
from django.utils import timezone

from .models import Decision
from .vocabulary import PHASE_SIGNS

COLUMNS = [
    "decision_id", "decided_at", "case", "slide_id", "slide", "finding_id", "finding_source",
    "x_px", "y_px", "x_um", "y_um", "ai_score", "ai_phase", "detector", "detector_version",
    "detector_sha256", "classifier", "classifier_version", "classifier_sha256", "run_id",
    "verdict", "corrected_phase", "reason", "comment", "reviewer", "blinded", "carried_from",
    "ai_domain_status",
]  # fmt: skip
RISKY_STARTS = ("=", "+", "-", "@", "\t", "\r")
HIDDEN_PHASE = "Blinded"  # a blinded reader's undecided finding: the AI's call stays hidden
HIDDEN_RGB = [128, 128, 128]


@dataclass
class ExportFilters:
    """Which decisions go into the report; empty fields do not filter."""

    date_from: date | None = None
    date_to: date | None = None
    case: str = ""
    pathologist: str = ""
    model_version: int | None = None

    def apply(self, decisions: QuerySet) -> QuerySet:
        zone = timezone.get_current_timezone()
        if self.date_from:
            start = datetime.combine(self.date_from, time.min, tzinfo=zone)
            decisions = decisions.filter(created_at__gte=start)
        if self.date_to:
            end = datetime.combine(self.date_to, time.max, tzinfo=zone)
            decisions = decisions.filter(created_at__lte=end)
        if self.case:
            decisions = decisions.filter(finding__slide__case__accession=self.case)
        if self.pathologist:
            decisions = decisions.filter(reviewer__username=self.pathologist)
        if self.model_version:
            decisions = decisions.filter(
                Q(finding__run__detector_id=self.model_version)
                | Q(finding__run__classifier_id=self.model_version)
            )
        return decisions

    def as_dict(self) -> dict:
        return {k: str(v) for k, v in vars(self).items() if v}


def neutralise(value):
    """Text a spreadsheet would run as a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(RISKY_STARTS):
        return "'" + value
    return value


def decisions_for_export(filters: ExportFilters) -> QuerySet:
    decisions = Decision.objects.select_related(
        "reviewer",
        "finding__slide__case",
        "finding__run__detector",
        "finding__run__classifier",
    ).order_by("id")
    return filters.apply(decisions)


def _row(d: Decision) -> list:
    finding, slide = d.finding, d.finding.slide
    run = finding.run
    mpp = slide.mpp
    detector = run.detector if run else None
    classifier = run.classifier if run else None
    return [
        d.pk,
        d.created_at.isoformat(),
        slide.case.accession,
        slide.pk,
        slide.original_name,
        finding.pk,
        finding.source,
        round(finding.x, 1),
        round(finding.y, 1),
        round(finding.x * mpp, 2) if mpp else "",
        round(finding.y * mpp, 2) if mpp else "",
        "" if finding.score is None else round(finding.score, 4),
        finding.phase if finding.source == "ai" else "",
        detector.name if detector else "",
        detector.version if detector else "",
        detector.sha256 if detector else "",
        classifier.name if classifier else "",
        classifier.version if classifier else "",
        classifier.sha256 if classifier else "",
        run.pk if run else "",
        d.verdict,
        d.corrected_phase,
        d.reason,
        d.comment,
        d.reviewer.get_username(),
        "yes" if d.blinded else "no",
        d.carried_from_id or "",
        run.domain_status if run else "",  # out_of_domain: the AI's call is unverified
    ]


class _Line:
    """A file-like sink that hands back what csv.writer writes."""

    def write(self, text: str) -> str:
        return text


def csv_lines(filters: ExportFilters) -> Iterator[str]:
    """The report as CSV text, a line at a time (UTF-8 BOM first, for spreadsheets)."""
    writer = csv.writer(_Line())
    yield "\ufeff" + writer.writerow(COLUMNS)
    for decision in decisions_for_export(filters).iterator(chunk_size=2000):
        yield writer.writerow([neutralise(v) for v in _row(decision)])


def findings_geojson(
    findings, decisions_by_finding: dict[int, list[Decision]], hidden_ids=frozenset()
) -> dict:
    """A FeatureCollection of the findings' boxes (level-0 px) as QuPath annotations,
    classified by phase, with the AI score and the decisions as properties; a finding in
    ``hidden_ids`` (blinded reader, undecided) carries neither phase nor score."""
    features = []
    for f in findings:
        decisions = decisions_by_finding.get(f.pk, [])
        hidden = f.pk in hidden_ids
        phase = HIDDEN_PHASE if hidden else f.get_phase_display()
        ring = [
            [f.box_x0, f.box_y0], [f.box_x1, f.box_y0], [f.box_x1, f.box_y1],
            [f.box_x0, f.box_y1], [f.box_x0, f.box_y0],
        ]  # fmt: skip
        features.append(
            {
                "type": "Feature",
                "id": f"mitolens-finding-{f.pk}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "name": f"{phase} #{f.pk}",
                    "classification": {
                        "name": phase,
                        "color": HIDDEN_RGB if hidden else PHASE_SIGNS[f.phase]["rgb"],
                    },
                    "isLocked": True,
                    "measurements": {}
                    if hidden or f.score is None
                    else {"AI score": round(f.score, 4)},
                    "mitolens": {
                        "finding": f.pk,
                        "source": f.source,
                        "run": f.run_id,
                        "decisions": [
                            {
                                "reviewer": d.reviewer.get_username(),
                                "verdict": d.verdict,
                                "corrected_phase": d.corrected_phase,
                                "at": d.created_at.isoformat(),
                            }
                            for d in decisions
                        ],
                    },
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}
