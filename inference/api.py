"""REST API for the AI side: runs, findings, explanations and the HPF summary, with the
same object permissions as the pages (only visible cases' objects exist for a user)."""

from __future__ import annotations

from functools import cached_property

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import APIException, NotFound, PermissionDenied, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from cases.api_params import id_field, parsed
from cases.services import Slide, is_lab_admin, visible_cases

from . import explain, services
from .blinding import (
    HIDDEN_FILTERS,
    HIDDEN_TOTALS,
    blinded_for,
    hidden_finding_ids,
    hides_totals,
    ordered,
    run_counts,
)
from .models import Finding, InferenceRun


class RunSerializer(serializers.ModelSerializer):
    """A run, for the API and the case page's progress poll alike."""

    detector = serializers.StringRelatedField()
    classifier = serializers.StringRelatedField()
    status_label = serializers.CharField(source="get_status_display", read_only=True)
    finished = serializers.BooleanField(source="is_finished", read_only=True)
    domain_status_label = serializers.CharField(source="get_domain_status_display", read_only=True)

    class Meta:
        model = InferenceRun
        fields = [
            "id", "slide", "status", "status_label", "finished", "progress", "stage", "detector",
            "classifier",
            "model_hashes", "device", "parameters", "counts", "timings", "error", "created_at",
            "started_at", "finished_at",
            "domain_status", "domain_status_label", "domain_distance", "domain_threshold",
        ]  # fmt: skip
        read_only_fields = fields

    def to_representation(self, run):
        data = super().to_representation(run)
        request = self.context.get("request")
        if request is not None:  # blinded readers see no totals of the AI's phase calls
            data["counts"] = run_counts(request.user, run.slide.case, data["counts"])
        return data


class StartRunSerializer(serializers.Serializer):
    slide = id_field()


class RunFilters(serializers.Serializer):
    slide = id_field(required=False)


class FindingFilters(serializers.Serializer):
    slide = id_field(error_messages={"required": "Give the slide id, e.g. ?slide=3."})
    min_score = serializers.FloatField(required=False, min_value=0, max_value=1)
    phase = serializers.ChoiceField(Finding.Phase.choices, required=False)
    source = serializers.ChoiceField(Finding.Source.choices, required=False)


class ExplanationTarget(serializers.Serializer):
    target = serializers.CharField(
        required=False, allow_blank=True, max_length=64, help_text="phase class to explain"
    )


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
            "kept",
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


class QueueUnavailable(APIException):
    """503: Redis is down, so nothing was queued (the detail says what)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "queue_unavailable"


class RunViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Runs of visible slides; lab admins start (POST {"slide": id}), cancel and retry them.
    A run whose worker was lost reads as failed (see inference.jobs.reconcile_runs)."""

    serializer_class = RunSerializer

    def get_object(self):
        return services.checked_runs([super().get_object()])[0]

    def paginate_queryset(self, queryset):
        return services.checked_runs(super().paginate_queryset(queryset))

    def get_queryset(self):
        runs = InferenceRun.objects.filter(slide__case__in=visible_cases(self.request.user))
        if self.action == "list" and (
            slide := parsed(RunFilters, self.request.query_params).get("slide")
        ):
            runs = runs.filter(slide_id=slide)
        return runs.select_related("detector", "classifier", "slide__case").order_by("-created_at")

    @extend_schema(parameters=[RunFilters])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(request=StartRunSerializer, responses={201: RunSerializer})
    def create(self, request, *args, **kwargs):
        if not is_lab_admin(request.user):
            raise PermissionDenied("Only lab admins can start AI runs.")
        body = parsed(StartRunSerializer, request.data)
        slide = Slide.objects.visible_to(request.user).filter(pk=body["slide"])
        if not slide.exists():
            raise NotFound("No such slide.")
        try:
            run = services.start_run(slide.get(), request.user)
        except services.QueueUnavailable as error:
            raise QueueUnavailable(str(error)) from None
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

    @extend_schema(request=None, responses={201: RunSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """A fresh run of a failed or cancelled run's slide (the old run stays)."""
        run = self.get_object()
        if not is_lab_admin(request.user):
            raise PermissionDenied("Only lab admins can retry AI runs.")
        try:
            new = services.retry_run(run, request.user)
        except services.QueueUnavailable as error:
            raise QueueUnavailable(str(error)) from None
        except services.RunRefused as refusal:
            raise ValidationError({"detail": str(refusal)}) from None
        return Response(RunSerializer(new).data, status=status.HTTP_201_CREATED)


class FindingViewSet(viewsets.ReadOnlyModelViewSet):
    """Findings of one slide (``slide`` is required): its latest run's and added ones.
    Filters: ``min_score``, ``phase``, ``source``."""

    serializer_class = FindingSerializer

    @cached_property
    def list_filters(self) -> dict:
        return parsed(FindingFilters, self.request.query_params)

    def get_queryset(self):
        if self.action != "list":
            return services.visible_findings(self.request.user)
        filters = self.list_filters
        slide = get_object_or_404(Slide.objects.visible_to(self.request.user), pk=filters["slide"])
        _, findings = services.slide_findings(slide)
        if blinded_for(self.request.user, slide.case) and {"min_score", "phase"} & set(filters):
            raise ValidationError({"detail": HIDDEN_FILTERS})
        if "min_score" in filters:
            findings = findings.filter(score__gte=filters["min_score"])
        for name in ("phase", "source"):
            if name in filters:
                findings = findings.filter(**{name: filters[name]})
        return ordered(findings, self.request.user, slide.case)

    def get_serializer_context(self):
        context = super().get_serializer_context()
        context["hidden_ids"] = self._hidden_ids()
        return context

    def _hidden_ids(self) -> set[int]:
        if self.action == "list":
            slide = (
                Slide.objects.filter(pk=self.list_filters["slide"]).select_related("case").first()
            )
            slides = [slide] if slide else []
        elif "pk" in self.kwargs and str(self.kwargs["pk"]).isdigit():
            slides = [
                f.slide
                for f in Finding.objects.filter(pk=self.kwargs["pk"]).select_related("slide__case")
            ]
        else:
            slides = []
        return set().union(*(hidden_finding_ids(self.request.user, s) for s in slides))

    @extend_schema(parameters=[FindingFilters])
    def list(self, request, *args, **kwargs):
        return super().list(request, *args, **kwargs)

    @extend_schema(parameters=[ExplanationTarget], responses={200: None, 202: None})
    @action(detail=True, methods=["get", "post"])
    def explanations(self, request, pk=None):
        """GET the cached attribution maps (and which are pending); POST queues the rest."""
        finding = self.get_object()
        if finding.pk in self._hidden_ids():
            raise PermissionDenied("The AI's evidence stays hidden until you decide.")
        target = parsed(ExplanationTarget, request.query_params).get("target")
        if request.method == "POST" and not target:
            target = parsed(ExplanationTarget, request.data).get("target")
        target = target or None
        try:
            if request.method == "POST":
                target, pending = explain.request(finding, target)
                code = status.HTTP_202_ACCEPTED if pending else status.HTTP_200_OK
                return Response({"target": target, "pending": pending}, status=code)
            version = explain.classifier_version(finding)
            target = explain.target_name(version, finding, target)
        except explain.ExplanationUnavailable as error:
            raise QueueUnavailable(str(error)) from None
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
    """The slide's HPF summary from its latest run: hotspot, counts, grade (refused to a
    blinded reader: the AI's totals stay hidden)."""

    @extend_schema(responses={200: None})
    def get(self, request, slide_id: int):
        slide = get_object_or_404(
            Slide.objects.visible_to(request.user).select_related("case"), pk=slide_id
        )
        if hides_totals(request.user, slide.case):
            raise PermissionDenied(HIDDEN_TOTALS)
        try:
            _, summary = services.slide_hpf(slide)
        except services.MissingScale as error:
            raise ValidationError({"detail": str(error)}) from None
        if summary is None:
            raise NotFound("No AI run has finished on this slide yet.")
        return Response(summary)
