"""Fill an empty portal with demo users, cases and synthetic slides (idempotent)."""

from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand
from django.db import transaction
from tqdm import tqdm

from cases import audit
from cases.groups import LAB_ADMIN, PATHOLOGIST
from cases.history import values
from cases.models import Case, CaseAssignment, Patient
from cases.registration import register_slide
from inference.registry import register_shipped_models
from inference.tools.synth import generate_slide

DEMO_PASSWORD = "mitolens-demo"
USERS = [
    # username, first, last, group, staff
    ("labadmin", "Alex", "Admin", LAB_ADMIN, True),
    ("dr.ross", "Morgan", "Ross", PATHOLOGIST, False),
    ("dr.lee", "Sam", "Lee", PATHOLOGIST, False),
]
# accession, patient, species, tumour type, priority, pathologists, slides (seed, w, h, mpp)
CASES = [
    ("S26-0412", "VET-20931", "canine", "canine_mct", 1, ["dr.ross"], [(101, 12000, 9000, 0.25)]),
    (
        "S26-0413",
        "MRN-448120",
        "human",
        "breast",
        2,
        ["dr.ross", "dr.lee"],
        [(102, 10000, 8000, 0.25)],
    ),
    ("S26-0414", "VET-21007", "canine", "canine_mct", 3, ["dr.lee"], [(103, 6000, 5000, 0.5)]),
]


class Command(BaseCommand):
    help = "Create demo users, cases and synthetic slides (skips what already exists)."

    def handle(self, *args, **options):
        register_shipped_models()
        users = self._users()
        slide_dir = Path(settings.SLIDE_IMPORT_DIRS[0]) / "demo"
        slide_dir.mkdir(parents=True, exist_ok=True)
        for accession, ref, species, tumour, priority, readers, slides in CASES:
            if Case.objects.filter(accession=accession).exists():
                continue
            with transaction.atomic():
                patient, _ = Patient.objects.get_or_create(
                    external_ref=ref, defaults={"species": species}
                )
                case = Case.objects.create(
                    accession=accession, patient=patient, tumour_type=tumour, priority=priority
                )
                demo = {"by": "setup_demo"}
                audit.record(
                    "case_added", obj=case, case=case, details={"after": values(case), **demo}
                )
                for username in readers:
                    assignment = CaseAssignment.objects.create(
                        case=case, pathologist=users[username], assigned_by=users["labadmin"]
                    )
                    details = {"after": values(assignment), "name": str(assignment), **demo}
                    audit.record("caseassignment_added", obj=assignment, case=case, details=details)
            for seed, width, height, mpp in slides:
                path = slide_dir / f"{accession}-{seed}.tiff"
                if not path.exists():
                    self._generate(path, seed, width, height, mpp)
                with self.settings_override():  # serve_demo queues runs and tiles, Redis up
                    register_slide(path, case, path.name, users["labadmin"], label="H&E")
            self.stdout.write(f"Created case {accession}")

    @staticmethod
    def settings_override():
        from django.test import override_settings

        return override_settings(AUTO_RUN_INFERENCE=False, TILE_PRERENDER="off")

    def _users(self) -> dict[str, User]:
        users = {}
        for username, first, last, group, staff in USERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={"first_name": first, "last_name": last, "is_staff": staff},
            )
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save()
                user.groups.add(Group.objects.get(name=group))
            users[username] = user
        return users

    def _generate(self, path: Path, seed: int, width: int, height: int, mpp: float) -> None:
        with tqdm(total=1.0, desc=f"Synthesising {path.name}", unit="slide", leave=False) as bar:

            def progress(done, total):
                bar.n = done / total
                bar.refresh()

            generate_slide(path, seed=seed, size=(width, height), mpp=mpp, progress=progress)
