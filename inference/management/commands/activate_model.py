"""Make a registered model version its task's active one (promotion or rollback), audited."""

from django.core.management.base import BaseCommand, CommandError

from inference.models import ModelVersion
from inference.registry import activate


class Command(BaseCommand):
    help = "Activate NAME VERSION for its task; the version it replaces stays registered."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("version")

    def handle(self, *args, name, version, **options):
        try:
            chosen = ModelVersion.objects.get(name=name, version=version)
        except ModelVersion.DoesNotExist:
            known = ", ".join(
                f"{v.name} {v.version}" for v in ModelVersion.objects.order_by("name", "version")
            )
            raise CommandError(f"No model version {name} {version}. Registered: {known}") from None
        previous = activate(chosen)
        replaced = f"; {previous.name} {previous.version} is now inactive" if previous else ""
        self.stdout.write(
            self.style.SUCCESS(f"{name} {version} is the active {chosen.task}{replaced}.")
        )
