"""Sign-ins and sign-outs go into the audit log (a sign-out also drops tile grants);
a newly registered slide gets its tiles rendered ahead of its first viewer, and a
deleted one's cached tiles are removed."""

from django.db import transaction

from . import audit, deepzoom, tiles


def logged_in(sender, request, user, **kwargs) -> None:
    audit.record("login", actor=user, request=request)


def logged_out(sender, request, user, **kwargs) -> None:
    deepzoom.tile_grants.forget_session(request.session.session_key)
    if user is not None:
        audit.record("logout", actor=user, request=request)


def login_failed(sender, credentials, request=None, **kwargs) -> None:
    username = str(credentials.get("username", ""))[:150]
    audit.record("login_failed", request=request, details={"username": username})


def prerender_new_slide(sender, instance, created: bool, **kwargs) -> None:
    if created:
        transaction.on_commit(lambda: tiles.queue_prerender(instance))


def prune_deleted_slide_tiles(sender, instance, **kwargs) -> None:
    transaction.on_commit(tiles.queue_prune)
