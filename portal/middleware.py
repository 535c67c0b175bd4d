"""Login required on every page; the API answers for itself (session or token) in JSON."""

from django.contrib.auth.middleware import LoginRequiredMiddleware


class PagesLoginRequiredMiddleware(LoginRequiredMiddleware):
    """Django's LoginRequiredMiddleware, except under /api/: a token-authenticated client
    has no session, and DRF's IsAuthenticated answers 401/403 there instead of a redirect.
    Views marked login_not_required are let through before the user is loaded, so tile
    requests answered from the grant cache never touch the session or user tables."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/") or not getattr(view_func, "login_required", True):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)
