"""Write the decision audit report as CSV (the same report as the admin export page)."""

from datetime import date
from pathlib import Path

from django.core.management.base import BaseCommand
from tqdm import tqdm

from cases import audit
from review.exports import ExportFilters, csv_lines, decisions_for_export


class Command(BaseCommand):
    help = "Export one CSV row per review decision, streamed, with optional filters."

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, required=True, help="the CSV file to write")
        parser.add_argument("--from", dest="date_from", type=date.fromisoformat)
        parser.add_argument("--to", dest="date_to", type=date.fromisoformat)
        parser.add_argument("--case", default="", help="accession")
        parser.add_argument("--pathologist", default="", help="username")
        parser.add_argument("--model-version", type=int, help="ModelVersion id")

    def handle(self, *args, out, **options):
        filters = ExportFilters(
            date_from=options["date_from"],
            date_to=options["date_to"],
            case=options["case"],
            pathologist=options["pathologist"],
            model_version=options["model_version"],
        )
        total = decisions_for_export(filters).count()
        with open(out, "w", encoding="utf-8", newline="") as handle:
            lines = csv_lines(filters)
            handle.write(next(lines))  # the header
            for line in tqdm(lines, total=total, unit="row", disable=total < 10000):
                handle.write(line)
        audit.record("audit_export", details={**filters.as_dict(), "file": str(out), "rows": total})
        self.stdout.write(self.style.SUCCESS(f"Wrote {total} decisions to {out}"))
