"""Run the demo stack in the foreground: Redis (embedded unless REDIS_URL), a worker, the web."""

import signal
import subprocess
import sys

from django.conf import settings
from django.core.management.base import BaseCommand

from portal import embedded_redis

DEMO_LOGINS = [
    ("labadmin", "lab admin (all cases, Django admin)"),
    ("dr.ross", "pathologist"),
    ("dr.lee", "pathologist"),
]


class Command(BaseCommand):
    help = "Start Redis, two RQ workers and the web server; Ctrl-C stops all of them."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000")

    def _queue_missing_runs(self) -> None:
        """Slides that never had an AI run (the demo's) get one now that Redis is up."""
        from cases.models import Slide
        from inference.services import RunRefused, start_run

        for slide in Slide.objects.filter(runs__isnull=True).exclude(mpp_x__isnull=True):
            try:
                run = start_run(slide)
                self.stdout.write(f"Queued AI run {run.pk} on {slide}")
            except RunRefused as refusal:
                self.stderr.write(f"No AI run on {slide}: {refusal}")

    def _queue_missing_tiles(self) -> None:
        """Slides registered while Redis was down (the demo's) get their tiles rendered."""
        from cases import deepzoom
        from cases.models import Slide
        from cases.tiles import queue_prerender

        for slide in Slide.objects.all():
            if not deepzoom.slide_cache_dir(slide.sha256).exists():
                queue_prerender(slide)

    def handle(self, *args, addr, **options):
        children: list[subprocess.Popen] = []
        redis_process = None if settings.REDIS_URL else embedded_redis.start()
        if redis_process:
            children.append(redis_process)
        manage = [sys.executable, "manage.py"]
        # One worker for whole-slide runs, one for explanations (and tile pre-rendering,
        # after them), so a pathologist's maps never wait behind a slide's AI run.
        children.append(subprocess.Popen([*manage, "rqworker", "inference", "--with-scheduler"]))
        children.append(subprocess.Popen([*manage, "rqworker", "explain", "default", "tiles"]))
        self._queue_missing_runs()
        self._queue_missing_tiles()
        children.append(subprocess.Popen([*manage, "runserver", addr, "--noreload"]))
        self.stdout.write(self.style.SUCCESS(f"\nMitoLens is running at http://{addr}/"))
        for username, role in DEMO_LOGINS:
            self.stdout.write(f"  {username:<10} password: mitolens-demo   ({role})")
        self.stdout.write("Press Ctrl-C to stop.\n")
        try:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            children[-1].wait()
        except KeyboardInterrupt:
            pass
        finally:
            for child in reversed(children):
                child.terminate()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            self.stdout.write("Stopped.")
