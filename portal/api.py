"""The REST API's routes: /api/ (DRF), /api/schema/ (OpenAPI 3), /api/docs/."""

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from inference.api import FindingViewSet, HpfView, RunViewSet
from review.api import (
    AuditEventsExportView,
    AuditExportView,
    DecisionViewSet,
    ReviewCaseViewSet,
    ReviewSlideViewSet,
)

router = DefaultRouter()
router.register("cases", ReviewCaseViewSet, basename="case")
router.register("slides", ReviewSlideViewSet, basename="slide")
router.register("runs", RunViewSet, basename="run")
router.register("findings", FindingViewSet, basename="finding")

decisions = DecisionViewSet.as_view({"get": "list", "post": "create"})

urlpatterns = [
    path("", include(router.urls)),
    path("findings/<int:finding_pk>/decisions/", decisions, name="finding-decisions"),
    path("slides/<int:slide_id>/hpf/", HpfView.as_view(), name="slide-hpf"),
    path("audit/export/", AuditExportView.as_view(), name="audit-export"),
    path("audit/events/", AuditEventsExportView.as_view(), name="audit-events"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
]
