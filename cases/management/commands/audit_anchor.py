"""Print the audit chain's head, to be kept outside the database."""

from django.core.management.base import BaseCommand

from cases.audit import current_anchor


class Command(BaseCommand):
    help = (
        'Print the audit log\'s head as one JSON line, {"count": N, "head": "HASH"}; store it '
        "elsewhere (e.g. nightly >> /offsite/anchors.log) and check with verify_audit --anchor."
    )

    def handle(self, *args, **options):
        self.stdout.write(str(current_anchor()))
