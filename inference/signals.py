"""Signals: the AI started on a newly registered slide when AUTO_RUN_INFERENCE is on, and
``run_succeeded`` for the apps that build on runs (review carries decisions with it)."""

import logging

from django.conf import settings
from django.db import transaction
from django.dispatch import Signal

log = logging.getLogger(__name__)

# Sent with ``run`` inside the transaction that makes it its slide's shown run; receivers
# return a dict of counts, which the run records with its own.
run_succeeded = Signal()


def start_ai_on_new_slide(sender, instance, created: bool, **kwargs) -> None:
    if not (created and settings.AUTO_RUN_INFERENCE):
        return

    def start() -> None:
        from .services import RunRefused, start_run

        try:
            start_run(instance)
        except RunRefused as refusal:
            log.warning("No automatic AI run for slide %s: %s", instance.pk, refusal)

    transaction.on_commit(start)
