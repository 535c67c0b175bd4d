"""Security the framework does not give: a Content-Security-Policy header, and sign-in
throttling after repeated failures."""

from datetime import timedelta

from django import forms
from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.utils import timezone

from cases.models import AuditEvent

# Only our own scripts run; style attributes are set by OpenSeadragon and Plotly.
POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; font-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
# Swagger UI's page starts itself with an inline script.
DOCS_POLICY = POLICY.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'")


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if not request.path_info.startswith("/admin/"):  # the admin uses inline scripts
            policy = DOCS_POLICY if request.path_info.startswith("/api/docs/") else POLICY
            response.headers.setdefault("Content-Security-Policy", policy)
        return response


def recent_failures(username: str) -> int:
    """Failed sign-ins for this username within the lockout window (from the audit log)."""
    since = timezone.now() - timedelta(seconds=settings.LOGIN_LOCKOUT_SECONDS)
    return AuditEvent.objects.filter(
        action="login_failed", actor_name=username[:150], created_at__gte=since
    ).count()


class ThrottledAuthenticationForm(AuthenticationForm):
    """Refuses to even check the password after too many recent failures for the name."""

    def clean(self):
        username = self.cleaned_data.get("username") or ""
        if recent_failures(username) >= settings.LOGIN_MAX_FAILURES:
            minutes = settings.LOGIN_LOCKOUT_SECONDS // 60
            raise forms.ValidationError(
                f"Too many failed sign-ins for this account; try again in {minutes} minutes "
                "or ask a lab admin.",
                code="throttled",
            )
        return super().clean()
