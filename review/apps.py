from django.apps import AppConfig


class ReviewConfig(AppConfig):
    name = "review"
    verbose_name = "Review"

    def ready(self) -> None:
        from inference.signals import run_succeeded

        from .carry import on_run_succeeded

        run_succeeded.connect(on_run_succeeded, dispatch_uid="review.carry_decisions")
