from django.urls import path

from . import views

app_name = "inference"

urlpatterns = [
    path("slides/<int:slide_id>/runs/start/", views.start_run, name="start_run"),
    path("slides/<int:slide_id>/findings.json", views.slide_findings, name="findings"),
    path("slides/<int:slide_id>/hpf.json", views.slide_hpf, name="hpf"),
    path("slides/<int:slide_id>/hpf.png", views.slide_hpf_png, name="hpf_png"),
    path("slides/<int:slide_id>/mil.json", views.slide_mil, name="mil"),
    path("slides/<int:slide_id>/mil.png", views.slide_mil_png, name="mil_png"),
    path("runs/<int:run_id>/cancel/", views.cancel_run, name="cancel_run"),
    path("runs/<int:run_id>/retry/", views.retry_run, name="retry_run"),
    path("findings/<int:finding_id>.json", views.finding_detail, name="finding"),
    path("findings/<int:finding_id>/crop.jpeg", views.finding_crop, name="finding_crop"),
    path("findings/<int:finding_id>/explain/", views.request_explanations, name="explain"),
    path(
        "findings/<int:finding_id>/explanations.json",
        views.finding_explanations,
        name="explanations",
    ),
    path("explanations/<int:explanation_id>.png", views.explanation_png, name="explanation_png"),
    path("cases/<int:case_id>/runs.json", views.case_runs, name="case_runs"),
]
