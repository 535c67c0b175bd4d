"""Run the active models on a slide: queued for a worker, or here with --sync."""

import contextlib

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from cases.services import Slide
from inference import services
from inference.jobs import execute_run
from inference.models import InferenceRun


class Command(BaseCommand):
    help = "Detect and phase-classify mitotic figures on a slide with the active models."

    def add_arguments(self, parser):
        parser.add_argument("--slide", type=int, required=True, help="slide id")
        parser.add_argument("--sync", action="store_true", help="run here instead of a worker")

    def handle(self, *args, slide, sync, **options):
        target = Slide.objects.filter(pk=slide).first()
        if target is None:
            raise CommandError(f"No slide {slide}")
        try:
            run = services.start_run(target, enqueue_job=not sync)
        except services.RunRefused as refusal:
            raise CommandError(str(refusal)) from None
        if not sync:
            self.stdout.write(f"Queued run {run.pk} on slide {slide}; a worker will take it.")
            return
        with tqdm(total=100, desc=f"Run {run.pk}", unit="%") as bar:

            def echo(stage: str, percent: int) -> None:
                bar.set_postfix_str(stage)
                bar.update(percent - bar.n)

            with contextlib.suppress(Exception):  # the failure is recorded on the run
                execute_run(run.pk, echo)
        run.refresh_from_db()
        if run.status != InferenceRun.Status.SUCCEEDED:
            raise CommandError(f"Run {run.pk} {run.status}: {run.error.splitlines()[0]}")
        by_phase = ", ".join(f"{k} {v}" for k, v in sorted(run.counts["by_phase"].items()))
        self.stdout.write(
            self.style.SUCCESS(
                f"Run {run.pk}: {run.counts['findings']} findings ({by_phase}) in "
                f"{run.timings['total']:.1f} s on {run.device}"
            )
        )
