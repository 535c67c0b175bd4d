"""REST API for the clinical record: cases and slides, and slide upload. Object
permissions are the pages': querysets hold only what the user may see, so anything else
is a 404. (review.api adds decisions, added findings, sign-out and the audit export.)"""

from __future__ import annotations

from pathlib import Path

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response

from .api_params import parsed
from .models import Case, Slide, is_lab_admin
from .registration import SlideRejected, register_slide


class SlideSerializer(serializers.ModelSerializer):
    mpp = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = Slide
        fields = [
            "id", "case", "original_name", "label", "sha256", "size_bytes", "vendor", "width",
            "height", "level_count", "mpp_x", "mpp_y", "mpp_override", "mpp", "objective_power",
            "damaged_tiles", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


class CaseSerializer(serializers.ModelSerializer):
    patient = serializers.CharField(source="patient.external_ref", read_only=True)
    pathologists = serializers.SlugRelatedField(many=True, read_only=True, slug_field="username")
    slides = SlideSerializer(many=True, read_only=True)
    signed_out_by = serializers.SlugRelatedField(read_only=True, slug_field="username")

    class Meta:
        model = Case
        fields = [
            "id", "accession", "patient", "tumour_type", "priority", "status", "blinded",
            "pathologists", "slides", "created_at", "signed_out_by", "signed_out_at",
            "final_mitotic_count", "final_grade",
        ]  # fmt: skip
        read_only_fields = fields


class UploadSerializer(serializers.Serializer):
    file = serializers.FileField()
    label = serializers.CharField(max_length=64, required=False, default="")


class CaseFilters(serializers.Serializer):
    status = serializers.ChoiceField(Case.Status.choices, required=False)
    accession = serializers.CharField(
        required=False, max_length=32, help_text="part of the accession"
    )


class CaseViewSet(viewsets.ReadOnlyModelViewSet):
    """Cases the user may see; filter with ``status`` and ``accession`` (contains)."""

    serializer_class = CaseSerializer

    def get_queryset(self):
        cases = (
            Case.objects.visible_to(self.request.user)
            .with_pathologists()
            .select_related("patient", "signed_out_by")
            .prefetch_related("slides")
            .order_by("priority", "created_at")
        )
        if self.action != "list":
            return cases
        filters = parsed(CaseFilters, self.request.query_params)
        if "status" in filters:
            cases = cases.filter(status=filters["status"])
        if "accession" in filters:
            cases = cases.filter(accession__icontains=filters["accession"])
        return cases

    @extend_schema(parameters=[CaseFilters])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=UploadSerializer, responses={201: SlideSerializer})
    @action(detail=True, methods=["post"], parser_classes=[MultiPartParser])
    def slides(self, request, pk=None):
        """Upload and register a slide (lab admins); refused files store nothing."""
        if not is_lab_admin(request.user):
            raise PermissionDenied("Only lab admins can register slides.")
        case = self.get_object()
        upload = UploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        file = upload.validated_data["file"]
        try:
            slide = register_slide(
                Path(file.temporary_file_path()),
                case,
                file.name,
                request.user,
                upload.validated_data["label"],
                request=request,
            )
        except SlideRejected as rejection:
            raise ValidationError({"file": str(rejection)}) from None
        return Response(SlideSerializer(slide).data, status=status.HTTP_201_CREATED)


class SlideViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = SlideSerializer

    def get_queryset(self):
        return Slide.objects.visible_to(self.request.user).order_by("pk")
