"""Login required on every page; the API answers for itself (session or token) in JSON."""

from django.contrib.auth.middleware import LoginRequiredMiddleware


class PagesLoginRequiredMiddleware(LoginRequiredMiddleware):
    """Django's LoginRequiredMiddleware, except under /api/: a token-authenticated client
    has no session, and DRF's IsAuthenticated answers 401/403 there instead of a redirect."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
