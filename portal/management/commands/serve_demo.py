"""Run the demo stack in the foreground: Redis (embedded unless REDIS_URL), three workers
(restarted when they die), the web."""

import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management.base import BaseCommand

from portal import embedded_redis

# One worker for whole-slide runs, one for explanations (and tile pre-rendering, after
# them), so a pathologist's maps never wait behind a slide's AI run, and one for training
# from reviews, which may take many minutes.
WORKERS = {
    "AI runs": ["inference", "--with-scheduler"],
    "explanations and tiles": ["explain", "default", "tiles"],
    "training": ["training"],
}
RESTART_PAUSE_SECONDS = 5  # a worker that dies at once (e.g. no Redis) is not restarted in a loop

DEMO_LOGINS = [
    ("labadmin", "lab admin (all cases, Django admin)"),
    ("dr.ross", "pathologist"),
    ("dr.lee", "pathologist"),
]


class Command(BaseCommand):
    help = (
        "Start Redis, three RQ workers (restarted if they die) and the web server; Ctrl-C stops "
        "all of them."
    )

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
        redis_process = None if settings.REDIS_URL else embedded_redis.start()
        workers = {name: self._start_worker(queues) for name, queues in WORKERS.items()}
        self._queue_missing_runs()
        self._queue_missing_tiles()
        web = subprocess.Popen([sys.executable, "manage.py", "runserver", addr, "--noreload"])
        self.stdout.write(self.style.SUCCESS(f"\nMitoLens is running at http://{addr}/"))
        for username, role in DEMO_LOGINS:
            self.stdout.write(f"  {username:<10} password: mitolens-demo   ({role})")
        self.stdout.write("A worker that dies is restarted. Press Ctrl-C to stop.\n")
        try:
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            self._supervise(web, workers)
        except KeyboardInterrupt:
            pass
        finally:
            children = [web, *workers.values()] + ([redis_process] if redis_process else [])
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            self.stdout.write("Stopped.")

    @staticmethod
    def _start_worker(queues: list[str]) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "manage.py", "rqworker", *queues])

    def _supervise(self, web: subprocess.Popen, workers: dict[str, subprocess.Popen]) -> None:
        """Wait while the web server runs, restarting any worker that died (its run, if it
        had one, is failed as "worker lost" and can be retried)."""
        started = dict.fromkeys(workers, time.monotonic())
        while web.poll() is None:
            for name, worker in workers.items():
                code = worker.poll()
                if code is None or time.monotonic() - started[name] < RESTART_PAUSE_SECONDS:
                    continue
                self.stderr.write(f"The {name} worker stopped (exit {code}); restarting it.")
                workers[name] = self._start_worker(WORKERS[name])
                started[name] = time.monotonic()
            time.sleep(0.5)
