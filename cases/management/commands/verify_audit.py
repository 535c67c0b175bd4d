"""Check the audit log's hash chain and name the first row that breaks it."""

from django.core.management.base import BaseCommand, CommandError

from cases.audit import verify_chain


class Command(BaseCommand):
    help = "Verify the audit log: every row's hash and its link to the row before."

    def handle(self, *args, **options):
        check = verify_chain()
        if not check.ok:
            raise CommandError(
                f"Audit log broken at row {check.broken_id}: {check.problem} "
                f"({check.checked} rows before it verified)"
            )
        self.stdout.write(self.style.SUCCESS(f"Audit log intact: {check.checked} rows verified."))
