"""Sign-ins and sign-outs go into the audit log."""

from . import audit


def logged_in(sender, request, user, **kwargs) -> None:
    audit.record("login", actor=user, request=request)


def logged_out(sender, request, user, **kwargs) -> None:
    if user is not None:
        audit.record("logout", actor=user, request=request)


def login_failed(sender, credentials, request=None, **kwargs) -> None:
    username = str(credentials.get("username", ""))[:150]
    audit.record("login_failed", request=request, details={"username": username})
