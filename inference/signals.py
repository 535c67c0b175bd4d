"""Start the AI on a newly registered slide when AUTO_RUN_INFERENCE is on."""

import logging

from django.conf import settings
from django.db import transaction

log = logging.getLogger(__name__)


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
