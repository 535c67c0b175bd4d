"""REST API for the AI side: runs, findings, explanations and the HPF summary, with the
same object permissions as the pages (only visible cases' objects exist for a user)."""

from __future__ import annotations

from django.db.models import F
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from cases.services import Slide, blinded_for, decided_finding_ids, is_lab_admin, visible_cases

from . import explain, services
from .models import Finding, InferenceRun


class RunSerializer(serializers.ModelSerializer):
    detector = serializers.StringRelatedField()
    classifier = serializers.StringRelatedField()

    class Meta:
        model = InferenceRun
        fields = [
            "id", "slide", "status", "progress", "stage", "detector", "classifier",
            "model_hashes", "device", "parameters", "counts", "timings", "error", "created_at",
            "started_at", "finished_at",
        ]  # fmt: skip
        read_only_fields = fields


class StartRunSerializer(serializers.Serializer):
    slide = serializers.IntegerField()


class FindingSerializer(serializers.ModelSerializer):
    box = serializers.SerializerMethodField()

    class Meta:
        model = Finding
        fields = [
            "id",
            "slide",
            "run",
            "source",
            "x",
            "y",
            "box",
            "score",
            "phase",
            "phase_probs",
            "created_at",
        ]
        read_only_fields = fields

    def get_box(self, finding) -> list[float]:
        return [finding.box_x0, finding.box_y0, finding.box_x1, finding.box_y1]

    def to_representation(self, finding):
        data = super().to_representation(finding)
        hidden = self.context.get("hidden_ids", ())
        if finding.pk in hidden:  # blinded case, not yet decided by this reader
            data.update(score=None, phase="hidden", phase_probs={})
        return data


class RunViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Runs of visible slides; lab admins start (POST {"slide": id}) and cancel them."""

    serializer_class = RunSerializer

    def get_queryset(self):
        runs = InferenceRun.objects.filter(slide__case__in=visible_cases(self.request.user))
        if slide := self.request.query_params.get("slide"):
            if not slide.isdigit():
                raise ValidationError({"slide": "must be a slide id"})
            runs = runs.filter(slide_id=int(slide))
        return runs.select_related("detector", "classifier").order_by("-created_at")

    @extend_schema(parameters=[OpenApiParameter("slide", int)])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=StartRunSerializer, responses={201: RunSerializer})
    def create(self, request, *args, **kwargs):
        if not is_lab_admin(request.user):
            raise PermissionDenied("Only lab admins can start AI runs.")
        body = StartRunSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        slide = Slide.objects.visible_to(request.user).filter(pk=body.validated_data["slide"])
        if not slide.exists():
            raise NotFound("No such slide.")
        try:
            run = services.start_run(slide.get(), request.user)
        except services.RunRefused as refusal:
            raise ValidationError({"detail": str(refusal)}) from None
        return Response(RunSerializer(run).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: RunSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        run = self.get_object()  # 404 before 403: existence does not leak
        if not is_lab_admin(request.user):
            raise PermissionDenied("Only lab admins can cancel AI runs.")
        services.cancel_run(run, request.user)
        run.refresh_from_db()
        return Response(RunSerializer(run).data)


class FindingViewSet(viewsets.ReadOnlyModelViewSet):
    """Findings of one slide (``slide`` is required): its latest run's and added ones.
    Filters: ``min_score``, ``phase``, ``source``."""

    serializer_class = FindingSerializer

    def _slide(self):
        slide = self.request.query_params.get("slide")
        if self.action == "list" and not (slide and slide.isdigit()):
            raise ValidationError({"slide": "give the slide id, e.g. ?slide=3"})
        return slide

    def get_queryset(self):
        if self.action != "list":
            return services.visible_findings(self.request.user)
        slide = get_object_or_404(Slide.objects.visible_to(self.request.user), pk=self._slide())
        _, findings = services.slide_findings(slide)
        params = self.request.query_params
        try:
            if params.get("min_score"):
                findings = findings.filter(score__gte=float(params["min_score"]))
        except ValueError:
            raise ValidationError({"min_score": "must be a number"}) from None
        if params.get("phase"):
            findings = findings.filter(phase=params["phase"])
        if params.get("source"):
            findings = findings.filter(source=params["source"])
        return findings.order_by(F("score").desc(nulls_last=True), "pk")

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context["hidden_ids"] = self._hidden_ids()
        return context

    def _hidden_ids(self) -> set[int]:
        if self.action == "list":
            slide = Slide.objects.filter(pk=self._slide()).select_related("case").first()
            slides = [slide] if slide else []
        elif "pk" in self.kwargs and str(self.kwargs["pk"]).isdigit():
            slides = [
                f.slide
                for f in Finding.objects.filter(pk=self.kwargs["pk"]).select_related("slide__case")
            ]
        else:
            slides = []
        hidden = set()
        for slide in slides:
            if blinded_for(self.request.user, slide.case):
                revealed = decided_finding_ids(self.request.user, slide)
                hidden |= set(
                    slide.findings.filter(source="ai")
                    .exclude(pk__in=revealed)
                    .values_list("pk", flat=True)
                )
        return hidden

    @extend_schema(
        parameters=[
            OpenApiParameter("slide", int, required=True),
            OpenApiParameter("min_score", float),
            OpenApiParameter("phase", str, enum=Finding.Phase.values),
            OpenApiParameter("source", str, enum=Finding.Source.values),
        ]
    )
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(
        parameters=[OpenApiParameter("target", str, description="phase class to explain")],
        responses={200: None, 202: None},
    )
    @action(detail=True, methods=["get", "post"])
    def explanations(self, request, pk=None):
        """GET the cached attribution maps (and which are pending); POST queues the rest."""
        finding = self.get_object()
        if finding.pk in self._hidden_ids():
            raise PermissionDenied("The AI's evidence stays hidden until you decide.")
        target = request.query_params.get("target") or request.data.get("target") or None
        try:
            if request.method == "POST":
                target, pending = explain.request(finding, target)
                code = status.HTTP_202_ACCEPTED if pending else status.HTTP_200_OK
                return Response({"target": target, "pending": pending}, status=code)
            version = explain.classifier_version(finding)
            target = explain.target_name(version, finding, target)
        except explain.ExplanationRefused as refusal:
            raise ValidationError({"detail": str(refusal)}) from None
        maps = explain.cached(finding, version, target)
        return Response(
            {
                "target": target,
                "maps": [
                    {
                        "method": e.method,
                        "compute_ms": e.compute_ms,
                        "quality": e.quality,
                        "parameters": e.parameters,
                        "crop": [e.crop_x, e.crop_y, e.width, e.crop_mpp],
                        "values": explain.values_of(e).round(6).tolist(),
                    }
                    for e in maps
                ],
                "pending": sorted(set(explain.METHODS) - {e.method for e in maps}),
            }
        )


class HpfView(APIView):
    """The slide's HPF summary from its latest run: hotspot, counts, grade."""

    @extend_schema(responses={200: None})
    def get(self, request, slide_id: int):
        slide = get_object_or_404(
            Slide.objects.visible_to(request.user).select_related("case"), pk=slide_id
        )
        try:
            _, summary = services.slide_hpf(slide)
        except services.MissingScale as error:
            raise ValidationError({"detail": str(error)}) from None
        if summary is None:
            raise NotFound("No AI run has finished on this slide yet.")
        return Response(summary)
