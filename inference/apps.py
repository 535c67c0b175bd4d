from django.apps import AppConfig
from django.db.models.signals import post_save


class InferenceConfig(AppConfig):
    name = "inference"
    verbose_name = "AI models and runs"

    def ready(self):
        from .signals import start_ai_on_new_slide

        post_save.connect(start_ai_on_new_slide, sender="cases.Slide", dispatch_uid="auto-ai-run")
