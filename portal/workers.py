"""The RQ worker every ``manage.py rqworker`` runs (settings.RQ["WORKER_CLASS"])."""

import contextlib
import logging
import os
from collections.abc import Iterable
from importlib import import_module

from django.conf import settings
from django.db import connections
from rq import Worker as RQWorker
from rq.callbacks import execute_failure_callback
from rq.exceptions import StopRequested

log = logging.getLogger(__name__)


class WorkHorseKilled(Exception):
    """The process running a job ended without finishing it (killed by a signal)."""


def heartbeat_seconds() -> int:
    """How often a worker heartbeats its running job: an eighth of RUN_LOST_AFTER_SECONDS,
    so a live worker is never taken for a lost one (lost = silent for half of it)."""
    return max(1, settings.RUN_LOST_AFTER_SECONDS // 8)


def maintenance_seconds() -> int:
    """How often an idle worker wakes to clean registries and fail lost runs: a quarter of
    RUN_LOST_AFTER_SECONDS, so silence (half) plus the next check stays within the bound."""
    return max(1, settings.RUN_LOST_AFTER_SECONDS // 4)


# What a worker imports once, before it forks a work horse per job, by the queues it
# serves: the engine (torch, torchvision, captum), which web processes never load.
PRELOAD = {
    "inference": ("inference.engine.pipeline", "inference.engine.mil"),
    "explain": ("inference.engine.attribution", "inference.engine.model_io"),
    "training": ("inference.tools.finetune",),
}


# The active model versions (by task) a worker loads before forking, by queue, so that no
# job loads one (a version activated later is loaded at the next maintenance tick).
PRELOAD_MODELS = {
    "inference": ("detector", "phase_classifier", "mil"),
    "explain": ("phase_classifier",),
}


def preload(queue_names: Iterable[str]) -> None:
    """Import the engine modules the jobs of ``queue_names`` use and load the active
    model versions they run."""
    from inference.registry import preload_active

    for name in queue_names:
        for module in PRELOAD.get(name, ()):
            import_module(module)
    tasks = {task for name in queue_names for task in PRELOAD_MODELS.get(name, ())}
    if tasks:
        try:
            preload_active(tasks)
        except StopRequested:  # a warm shutdown asked for meanwhile: RQ's handler raises it
            raise
        except Exception:  # a job that needs the model loads it and reports what is wrong
            log.exception("could not preload the active models")


class Worker(RQWorker):
    """RQ's forking worker, with six differences:

    - it heartbeats a running job every RUN_LOST_AFTER_SECONDS / 8 (RQ: every 30 s), so a
      job silent for half of RUN_LOST_AFTER_SECONDS has lost its worker
      (inference.jobs.reconcile_runs);
    - every RUN_LOST_AFTER_SECONDS / 4 it runs RQ's maintenance and fails the runs whose
      worker was lost, so every live worker, whatever its queues, keeps the bound with no
      page open (RQ's own abandoned-job cleanup comes minutes later);
    - a job whose work horse is killed (e.g. out of memory) gets its failure callback at
      once, as RQ gives one to a job whose whole worker vanished (AbandonedJobError);
    - it forks with no database connection open, which a callback run here may have left;
    - it imports the engine its queues' jobs use (``PRELOAD``) and loads their active
      models (``PRELOAD_MODELS``) before its first fork, so no job pays for importing
      torch or loading weights;
    - its warm shutdown does not wait up to a minute for its pubsub thread (``unsubscribe``).
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("job_monitoring_interval", heartbeat_seconds())
        kwargs["maintenance_interval"] = maintenance_seconds()
        # An idle worker blocks on the queues for worker_ttl - 15 s between maintenance
        # checks; a killed one also drops out of /healthz's count after worker_ttl.
        kwargs["worker_ttl"] = maintenance_seconds() + 15
        super().__init__(*args, **kwargs)

    def run_maintenance_tasks(self):
        super().run_maintenance_tasks()
        from inference.jobs import fail_lost_runs

        try:
            fail_lost_runs()
        except StopRequested:  # SIGTERM while it ran: stop, as RQ would have
            raise
        except Exception:  # never stop a worker over it; the next tick tries again
            log.exception("could not check for lost runs")
        preload(self.queue_names())  # a newly activated version, before its first job
        connections.close_all()

    def work(self, *args, **kwargs):
        preload(self.queue_names())
        return super().work(*args, **kwargs)

    def unsubscribe(self):
        """RQ's, with a bounded wait: once unsubscribed, redis-py's pubsub thread can sleep
        for RQ's whole 60 s ``sleep_time`` before it sees it should stop, and redis-py 8's
        ``stop()`` waits for it, so a warm shutdown could take a minute. The thread is a
        daemon: a second is enough."""
        if self.pubsub_thread:
            self.pubsub.unsubscribe()
            self.pubsub_thread.stop(timeout=1)
            self.pubsub.close()

    def fork_work_horse(self, job, queue):
        connections.close_all()  # parent and horse must never share a connection's socket
        super().fork_work_horse(job, queue)

    def handle_work_horse_killed(self, job, retpid, ret_val, rusage):
        super().handle_work_horse_killed(job, retpid, ret_val, rusage)
        if job.failure_callback is None:
            return
        how = f"signal {os.WTERMSIG(ret_val)}" if os.WIFSIGNALED(ret_val) else f"status {ret_val}"
        error = WorkHorseKilled(
            f"its work process was killed ({how}), for example for lack of memory"
        )
        with contextlib.suppress(Exception):  # RQ logged it; the run is reconciled when read
            execute_failure_callback(job, self.death_penalty_class, WorkHorseKilled, error, None)
        connections.close_all()
