from django.urls import path

from . import admin_views, panel_views, views

app_name = "review"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("cases/<int:case_id>/", views.case_detail, name="detail"),
    path("cases/<int:case_id>/slides/upload/", views.upload_slide, name="upload_slide"),
    path("cases/<int:case_id>/sign-out/", views.sign_out, name="sign_out"),
    path("cases/<int:case_id>/reopen/", views.reopen, name="reopen"),
    path("slides/<int:slide_id>/", views.viewer, name="viewer"),
    path("slides/<int:slide_id>/review.json", panel_views.review_state, name="review_state"),
    path("slides/<int:slide_id>/findings/add/", panel_views.add_finding, name="add_finding"),
    path("slides/<int:slide_id>/findings.geojson", panel_views.slide_geojson, name="geojson"),
    path("findings/<int:finding_id>/decide/", panel_views.decide, name="decide"),
    path(
        "findings/<int:finding_id>/decisions.json",
        panel_views.decision_history,
        name="decision_history",
    ),
    path("audit/export/", admin_views.audit_export, name="audit_export"),
    path("agreement/", admin_views.agreement, name="agreement"),
    path("training/", admin_views.training, name="training"),
    path("training/<int:run_id>/cancel/", admin_views.training_cancel, name="training_cancel"),
    path(
        "training/<int:run_id>/activate/", admin_views.training_activate, name="training_activate"
    ),
]
