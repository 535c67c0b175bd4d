"""REST API for review: decisions on findings, added findings, sign-out and the audit
export, on top of cases.api's case and slide endpoints (same URLs, same permissions)."""

from __future__ import annotations

from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from cases import audit
from cases.api import CaseSerializer, CaseViewSet, SlideViewSet
from cases.models import is_lab_admin
from inference import services as ai
from inference.blinding import blinded_for
from inference.models import Finding

from . import services as review
from .exports import csv_lines
from .forms import ExportFilterForm
from .models import Decision


class DecisionSerializer(serializers.ModelSerializer):
    reviewer = serializers.SlugRelatedField(read_only=True, slug_field="username")
    verdict = serializers.ChoiceField(Decision.Verdict.choices)
    corrected_phase = serializers.ChoiceField(
        [("", "none"), *Finding.Phase.choices], required=False, default=""
    )
    reason = serializers.ChoiceField(Decision.Reason.choices, required=False, default="")
    comment = serializers.CharField(
        required=False, allow_blank=True, default="", validators=[review.validate_comment]
    )

    class Meta:
        model = Decision
        fields = [
            "id", "finding", "reviewer", "verdict", "corrected_phase", "reason", "comment",
            "blinded", "carried_from", "created_at",
        ]  # fmt: skip
        read_only_fields = ["id", "finding", "reviewer", "blinded", "carried_from", "created_at"]


class SignOutSerializer(serializers.Serializer):
    final_mitotic_count = serializers.IntegerField(min_value=0, max_value=review.MAX_FINAL_COUNT)
    final_grade = serializers.CharField(
        max_length=review.FINAL_GRADE_MAX_CHARS, allow_blank=True, default=""
    )


class AddedFindingSerializer(serializers.Serializer):
    x = serializers.FloatField(min_value=0)
    y = serializers.FloatField(min_value=0)
    phase = serializers.ChoiceField([p for p in review.MITOTIC_PHASES])


def raise_refusal(refusal: review.ReviewRefused):
    if refusal.status == 403:
        raise PermissionDenied(str(refusal))
    if refusal.status == 409:
        raise Conflict(str(refusal))
    raise ValidationError({"detail": str(refusal)})


class Conflict(serializers.ValidationError):
    status_code = status.HTTP_409_CONFLICT


class ReviewCaseViewSet(CaseViewSet):
    """Cases the user may see; filter with ``status`` and ``accession`` (contains)."""

    @extend_schema(request=SignOutSerializer, responses={200: CaseSerializer})
    @action(detail=True, methods=["post"], url_path="sign-out")
    def sign_out(self, request, pk=None):
        """Sign the case out with the final count and grade (assigned pathologists)."""
        case = self.get_object()
        body = SignOutSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            review.sign_out(
                case,
                request.user,
                body.validated_data["final_mitotic_count"],
                body.validated_data["final_grade"],
                request=request,
            )
        except review.ReviewRefused as refusal:
            raise_refusal(refusal)
        return Response(CaseSerializer(self.get_object()).data)


class ReviewSlideViewSet(SlideViewSet):
    @extend_schema(request=AddedFindingSerializer, responses={201: None})
    @action(detail=True, methods=["post"], url_path="added-findings")
    def added_findings(self, request, pk=None):
        """Add a mitosis the AI missed (assigned pathologists), level-0 px."""
        slide = self.get_object()
        body = AddedFindingSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            finding = review.add_finding(
                slide, request.user, **body.validated_data, request=request
            )
        except review.ReviewRefused as refusal:
            raise_refusal(refusal)
        return Response(
            {"id": finding.pk, "x": finding.x, "y": finding.y, "phase": finding.phase},
            status=status.HTTP_201_CREATED,
        )


class DecisionViewSet(mixins.ListModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet):
    """Decisions on one finding: list them (oldest first) or record a new one."""

    serializer_class = DecisionSerializer

    def finding(self) -> Finding:
        return get_object_or_404(
            ai.visible_findings(self.request.user), pk=self.kwargs["finding_pk"]
        )

    def get_queryset(self):
        finding = self.finding()
        decisions = finding.decisions.select_related("reviewer").order_by("id")
        if blinded_for(self.request.user, finding.slide.case):
            decisions = decisions.filter(reviewer=self.request.user)
        return decisions

    def create(self, request, *args, **kwargs):
        finding = self.finding()
        body = self.get_serializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            decision = review.decide(finding, request.user, **body.validated_data, request=request)
        except review.ReviewRefused as refusal:
            raise_refusal(refusal)
        return Response(self.get_serializer(decision).data, status=status.HTTP_201_CREATED)


class AuditExportView(APIView):
    """The decision report as CSV (lab admins), with the export page's filters."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        parameters=[
            OpenApiParameter("date_from", OpenApiTypes.DATE),
            OpenApiParameter("date_to", OpenApiTypes.DATE),
            OpenApiParameter("case", str, description="accession"),
            OpenApiParameter("pathologist", str, description="username"),
            OpenApiParameter("model_version", int, description="model version id"),
        ],
        responses={(200, "text/csv"): str},
    )
    def get(self, request):
        """The decision report as CSV; the filters are the export page's form's."""
        if not is_lab_admin(request.user):
            raise PermissionDenied("Only lab admins can export the audit report.")
        form = ExportFilterForm(request.query_params)
        if not form.is_valid():
            raise ValidationError(form.errors)
        filters = form.filters()
        audit.record(
            "audit_export",
            actor=request.user,
            request=request,
            details={**filters.as_dict(), "via": "api"},
        )
        return StreamingHttpResponse(csv_lines(filters), content_type="text/csv; charset=utf-8")


class AuditEventsExportView(APIView):
    """The whole hash-chained audit log as CSV (lab admins), for offline verification."""

    permission_classes = [IsAuthenticated]

    @extend_schema(responses={(200, "text/csv"): str})
    def get(self, request):
        """Every audit event with its previous hash and own hash, oldest first."""
        if not is_lab_admin(request.user):
            raise PermissionDenied("Only lab admins can export the audit log.")
        audit.record(
            "audit_export",
            actor=request.user,
            request=request,
            details={"kind": "events", "via": "api"},
        )
        return StreamingHttpResponse(
            audit.events_csv_lines(), content_type="text/csv; charset=utf-8"
        )
