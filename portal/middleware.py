"""Login required on every page (the API answers for itself, session or token, in JSON);
a down Redis answers 503, not 500."""

import logging

from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.http import JsonResponse
from django.shortcuts import render
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class PagesLoginRequiredMiddleware(LoginRequiredMiddleware):
    """Django's LoginRequiredMiddleware, except under /api/: a token-authenticated client
    has no session, and DRF's IsAuthenticated answers 401/403 there instead of a redirect.
    Views marked login_not_required are let through before the user is loaded, so tile
    requests answered from the grant cache never touch the session or user tables."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/") or not getattr(view_func, "login_required", True):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)


QUEUE_UNAVAILABLE = (
    "The job queue is unavailable, so this could not be done. Try again in a minute; "
    "if it persists, tell your lab admin."
)


class QueueUnavailableMiddleware:
    """A request that needed Redis while it is down answers 503 with a sentence, never 500.
    A safety net: the views that use the queue say more exactly what was not done."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        if not isinstance(exception, RedisError):
            return None
        log.warning("Redis unavailable during %s %s: %s", request.method, request.path, exception)
        if request.path_info.startswith("/api/"):
            return JsonResponse({"detail": QUEUE_UNAVAILABLE}, status=503)
        if "text/html" not in request.headers.get("Accept", ""):
            return JsonResponse({"error": QUEUE_UNAVAILABLE}, status=503)
        return render(request, "503.html", {"message": QUEUE_UNAVAILABLE}, status=503)
