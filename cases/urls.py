from django.urls import path

from . import admin_views, review_views, views

app_name = "cases"

urlpatterns = [
    path("", views.queue, name="queue"),
    path("cases/<int:case_id>/", views.case_detail, name="detail"),
    path("cases/<int:case_id>/slides/upload/", views.upload_slide, name="upload_slide"),
    path("slides/<int:slide_id>/", views.viewer, name="viewer"),
    path("slides/<int:slide_id>.dzi", views.slide_dzi, name="dzi"),
    path(
        "slides/<int:slide_id>_files/<int:level>/<int:col>_<int:row>.jpeg",
        views.slide_tile,
        name="tile",
    ),
    path("slides/<int:slide_id>/review.json", review_views.review_state, name="review_state"),
    path("slides/<int:slide_id>/findings/add/", review_views.add_finding, name="add_finding"),
    path("slides/<int:slide_id>/findings.geojson", review_views.slide_geojson, name="geojson"),
    path("findings/<int:finding_id>/decide/", review_views.decide, name="decide"),
    path(
        "findings/<int:finding_id>/decisions.json",
        review_views.decision_history,
        name="decision_history",
    ),
    path("cases/<int:case_id>/sign-out/", review_views.sign_out, name="sign_out"),
    path("cases/<int:case_id>/reopen/", review_views.reopen, name="reopen"),
    path("audit/export/", admin_views.audit_export, name="audit_export"),
    path("agreement/", admin_views.agreement, name="agreement"),
    path("slides/<int:slide_id>/thumbnail.jpeg", views.slide_thumbnail, name="thumbnail"),
    path(
        "slides/<int:slide_id>/associated/<slug:name>.jpeg",
        views.slide_associated_image,
        name="associated_image",
    ),
]
