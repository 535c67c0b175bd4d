from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed


class CasesConfig(AppConfig):
    name = "cases"
    verbose_name = "Cases and slides"

    def ready(self):
        from . import signals

        user_logged_in.connect(signals.logged_in, dispatch_uid="audit-login")
        user_logged_out.connect(signals.logged_out, dispatch_uid="audit-logout")
        user_login_failed.connect(signals.login_failed, dispatch_uid="audit-login-failed")
