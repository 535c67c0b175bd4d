"""Write the decision audit report as CSV (the same report as the admin export page), or
with --events the hash-chained audit events with their hashes."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from cases import audit
from cases.forms import error_sentences
from review.exports import csv_lines, decisions_for_export
from review.forms import ExportFilterForm


class Command(BaseCommand):
    help = "Export one CSV row per review decision, streamed, with optional filters."

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, required=True, help="the CSV file to write")
        parser.add_argument("--from", dest="date_from", help="YYYY-MM-DD")
        parser.add_argument("--to", dest="date_to", help="YYYY-MM-DD")
        parser.add_argument("--case", help="accession")
        parser.add_argument("--pathologist", help="username")
        parser.add_argument("--model-version", help="ModelVersion id")
        parser.add_argument(
            "--events",
            action="store_true",
            help="the whole audit log with its hashes instead (verifiable offline; no filters)",
        )

    def handle(self, *args, out, events, **options):
        names = ("date_from", "date_to", "case", "pathologist", "model_version")
        if events:
            if any(options[name] for name in names):
                raise CommandError("--events exports the whole chain; the filters are not used.")
            return self.export_events(out)
        form = ExportFilterForm({name: options[name] or "" for name in names})
        if not form.is_valid():  # the export page's and the API's rules, and words
            raise CommandError("; ".join(error_sentences(form)))
        filters = form.filters()
        total = decisions_for_export(filters).count()
        with open(out, "w", encoding="utf-8", newline="") as handle:
            lines = csv_lines(filters)
            handle.write(next(lines))  # the header
            for line in tqdm(lines, total=total, unit="row", disable=total < 10000):
                handle.write(line)
        audit.record("audit_export", details={**filters.as_dict(), "file": str(out), "rows": total})
        self.stdout.write(self.style.SUCCESS(f"Wrote {total} decisions to {out}"))

    def export_events(self, out: Path) -> None:
        with open(out, "w", encoding="utf-8", newline="") as handle:
            total = -1  # the header is not an event
            for line in audit.events_csv_lines():
                handle.write(line)
                total += 1
        audit.record("audit_export", details={"kind": "events", "file": str(out), "rows": total})
        self.stdout.write(self.style.SUCCESS(f"Wrote {total} audit events to {out}"))
