"""Register slide files from the import directories on a case."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from cases import audit
from cases.history import values
from cases.models import Case, Patient
from cases.registration import SlideRejected, check_import_path, register_slide


class Command(BaseCommand):
    help = "Import slide files (any OpenSlide format) into a case, creating the case if needed."

    def add_arguments(self, parser):
        parser.add_argument("files", nargs="+", type=Path)
        parser.add_argument("--case", required=True, help="accession of the case")
        parser.add_argument("--patient", help="patient reference, needed to create a new case")

    def handle(self, *args, files, case, patient, **options):
        target, created = self._case(case, patient)
        refused = 0
        for path in tqdm(files, desc="Importing", unit="slide", disable=len(files) < 2):
            try:
                slide = register_slide(check_import_path(path), target, path.name)
            except SlideRejected as rejection:
                refused += 1
                self.stderr.write(self.style.ERROR(f"Refused {rejection}"))
            else:
                self.stdout.write(
                    f"Registered slide {slide.pk}: {slide.original_name} "
                    f"({slide.width}×{slide.height} px, {slide.mpp or 'no'} µm/px) on {target}"
                )
        if created and refused == len(files):
            target.delete()  # a new case with no slide would be a half-done import
        elif created:  # recorded once it stays: the log protects the cases it names
            details = {"after": values(target), "name": str(target), "by": "import_slides"}
            audit.record("case_added", obj=target, case=target, details=details)
        if refused:
            raise CommandError(
                f"{refused} of {len(files)} file(s) refused; nothing stored for them"
            )

    def _case(self, accession: str, patient_ref: str | None) -> tuple[Case, bool]:
        existing = Case.objects.filter(accession=accession).first()
        if existing:
            if patient_ref and existing.patient.external_ref != patient_ref:
                raise CommandError(f"Case {accession} belongs to another patient")
            return existing, False
        if not patient_ref:
            raise CommandError(f"No case {accession}; give --patient to create it")
        patient, new = Patient.objects.get_or_create(external_ref=patient_ref)
        if new:
            details = {"after": values(patient), "name": str(patient), "by": "import_slides"}
            audit.record("patient_added", obj=patient, details=details)
        return Case.objects.create(accession=accession, patient=patient), True
