from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db.models.signals import post_delete, post_save


class CasesConfig(AppConfig):
    name = "cases"
    verbose_name = "Cases and slides"

    def ready(self):
        from . import signals
        from .models import Slide

        user_logged_in.connect(signals.logged_in, dispatch_uid="audit-login")
        user_logged_out.connect(signals.logged_out, dispatch_uid="audit-logout")
        user_login_failed.connect(signals.login_failed, dispatch_uid="audit-login-failed")
        post_save.connect(signals.prerender_new_slide, sender=Slide, dispatch_uid="tiles-new")
        post_delete.connect(
            signals.prune_deleted_slide_tiles, sender=Slide, dispatch_uid="tiles-deleted"
        )
