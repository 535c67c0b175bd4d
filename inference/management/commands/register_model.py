"""Register a model file (a lab's own detector or classifier) with the admin form's checks."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from inference.models import ModelVersion
from inference.registry import ModelRejected, register_model


class Command(BaseCommand):
    help = (
        "Check a model file by loading and running it, copy it into the model store and "
        "record it (audited); refused files store nothing."
    )

    def create_parser(self, prog_name, subcommand, **kwargs):
        # --version is the model's version here, not Django's
        return super().create_parser(prog_name, subcommand, conflict_handler="resolve", **kwargs)

    def add_arguments(self, parser):
        parser.add_argument("file", type=Path)
        parser.add_argument("--name", required=True)
        parser.add_argument("--version", required=True)
        parser.add_argument("--task", required=True, choices=ModelVersion.Task.values)
        parser.add_argument("--format", required=True, choices=ModelVersion.Format.values)
        parser.add_argument("--spec", default="", help="input spec as JSON (or @FILE.json)")
        parser.add_argument("--training-note", default="")
        parser.add_argument("--activate", action="store_true", help="make it the active version")

    def handle(self, *args, file, name, version, task, format, spec, training_note, activate,
               **options):  # fmt: skip
        if not file.is_file():
            raise CommandError(f"{file}: no such file")
        try:
            registered = register_model(
                file,
                name=name,
                version=version,
                task=task,
                fmt=format,
                spec=_spec(spec),
                training_note=training_note,
                activate=activate,
            )
        except ModelRejected as rejection:
            raise CommandError(f"Model refused: {rejection}") from None
        state = "active" if registered.is_active else "inactive"
        self.stdout.write(
            self.style.SUCCESS(f"Registered {name} {version} ({task}, {format}, {state}).")
        )


def _spec(text: str) -> dict | None:
    """The --spec argument: inline JSON, @path to a JSON file, or nothing."""
    if not text:
        return None
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        spec = json.loads(raw)
    except (OSError, ValueError) as error:
        raise CommandError(f"--spec is not readable JSON: {error}") from None
    if not isinstance(spec, dict):
        raise CommandError('--spec must be a JSON object, e.g. {"patch_px": 640}')
    return spec
