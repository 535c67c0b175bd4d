"""Attribution maps of findings: computed in workers (queue ``explain``), cached in the
database per (finding, method, target class, classifier version)."""

from __future__ import annotations

import contextlib
from functools import lru_cache
from io import BytesIO
from typing import TYPE_CHECKING

import numpy as np
from django.db import IntegrityError
from PIL import Image
from redis.exceptions import RedisError
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from cases.services import shared_slide
from slides import Scale, read_region

from .engine.vocabulary import ATTRIBUTION_METHODS as METHODS
from .engine.vocabulary import SIGNED_METHODS as SIGNED
from .models import Explanation, Finding, ModelVersion
from .registry import loaded_version
from .services import job_queue

if TYPE_CHECKING:
    from .engine.attribution import CropClassifier


class ExplanationRefused(Exception):
    """The finding cannot be explained; the message says why."""


class ExplanationUnavailable(ExplanationRefused):
    """Redis cannot be reached, so no maps were queued; the message says so."""


QUEUE_DOWN = (
    "The job queue is unavailable, so the evidence maps cannot be computed now. Try again "
    "in a minute; if it persists, tell your lab admin."
)


def classifier_version(finding: Finding) -> ModelVersion:
    """The classifier that gave the finding its phase (the active one for added findings)."""
    if finding.run_id:
        return finding.run.classifier
    version = ModelVersion.objects.filter(
        task=ModelVersion.Task.PHASE_CLASSIFIER, is_active=True
    ).first()
    if version is None:
        raise ExplanationRefused("No active phase classifier to explain with.")
    return version


def target_name(version: ModelVersion, finding: Finding, target: str | None) -> str:
    """The class to explain: ``target`` if the classifier has it, else the finding's phase."""
    names = version.spec.get("class_names") or []
    chosen = target or finding.phase
    if chosen not in names:
        raise ExplanationRefused(f"{chosen!r} is not one of the classifier's classes {names}")
    return chosen


@lru_cache(maxsize=4)
def _model(version_pk: int, sha256: str) -> CropClassifier:
    """The version's classifier as a crop-sized Captum model (cached per worker)."""
    # Captum and torch load in the process that computes maps (a worker, or manage.py
    # explain), never with this module, which web processes import.
    from .engine.attribution import CropClassifier

    version = ModelVersion.objects.get(pk=version_pk)
    classifier = loaded_version(version)
    spec = classifier.spec
    return CropClassifier(classifier.module, spec.network_px, spec.mean, spec.std).eval()


def crop_geometry(finding: Finding, version: ModelVersion) -> tuple[float, float, int, float]:
    """(x, y) level-0 origin, size in px and µm/px of the crop the classifier sees."""
    slide = finding.slide
    if not slide.mpp:
        raise ExplanationRefused(f"{slide.original_name} has no µm/px")
    size, mpp = version.spec["patch_px"], version.spec["target_mpp"]
    scale = Scale.between((slide.mpp, slide.mpp), mpp)
    return round(finding.x - size * scale.x / 2), round(finding.y - size * scale.y / 2), size, mpp


def read_crop(finding: Finding, version: ModelVersion) -> np.ndarray:
    """The classifier's crop around the finding, RGB uint8 (size, size, 3)."""
    x, y, size, mpp = crop_geometry(finding, version)
    slide = finding.slide
    scale = Scale.between((slide.mpp, slide.mpp), mpp)
    with shared_slide(slide) as opened:
        return np.asarray(read_region(opened, (x, y), (size, size), scale))


def cached(finding: Finding, version: ModelVersion, target: str):
    return Explanation.objects.filter(finding=finding, model_version=version, target=target)


# The cheapest maps first, so a viewer polling for them has evidence on screen in
# milliseconds (docs/benchmarks.md, "Explanations": occlusion takes the longest).
COMPUTE_ORDER = ("saliency", "grad_cam", "gradient_shap", "integrated_gradients", "occlusion")


def compute(finding: Finding, methods=METHODS, target: str | None = None) -> list[Explanation]:
    """The finding's maps for ``methods``: cached ones reused, the rest computed and saved
    one by one, cheapest first (a viewer polling for them sees each as soon as it is
    done); returned in the order of ``methods``."""
    version = classifier_version(finding)
    target = target_name(version, finding, target)
    have = {e.method: e for e in cached(finding, version, target)}
    missing = sorted((m for m in methods if m not in have), key=COMPUTE_ORDER.index)
    if missing:
        from .engine.attribution import explain_crop

        model = _model(version.pk, version.sha256)
        crop = read_crop(finding, version)
        geometry = crop_geometry(finding, version)
        index = version.spec["class_names"].index(target)

        def save(result) -> None:
            have[result.method] = _saved(finding, version, target, geometry, result)

        explain_crop(model, crop, missing, index, on_map=save)
    return [have[m] for m in methods]


def _saved(finding: Finding, version: ModelVersion, target: str, geometry, result) -> Explanation:
    """Store one computed map (unless another worker stored it first)."""
    x, y, size, mpp = geometry
    values = result.values.astype(np.float16)
    explanation = Explanation(
        finding=finding,
        method=result.method,
        target=target,
        model_version=version,
        parameters=result.parameters,
        values=values.tobytes(),
        width=size,
        height=size,
        value_min=float(values.min()),
        value_max=float(values.max()),
        quality=result.quality,
        crop_x=x,
        crop_y=y,
        crop_mpp=mpp,
        compute_ms=result.ms,
    )
    with contextlib.suppress(IntegrityError):  # another worker saved it first
        explanation.save()
    return explanation


def values_of(explanation: Explanation) -> np.ndarray:
    """The stored map as float32 (height, width)."""
    raw = np.frombuffer(bytes(explanation.values), np.float16)
    return raw.reshape(explanation.height, explanation.width).astype(np.float32)


def job_id(finding: Finding, version: ModelVersion, target: str) -> str:
    return f"explain-{finding.pk}-{target}-{version.pk}"


def explain_job(finding_id: int, target: str) -> list[str]:
    """The worker's job: compute every method for one finding and target."""
    finding = Finding.objects.select_related("slide", "run__classifier").get(pk=finding_id)
    return [e.method for e in compute(finding, METHODS, target)]


def request(finding: Finding, target: str | None = None) -> tuple[str, bool]:
    """Queue the finding's missing maps unless they are cached or already queued.
    Returns (target, whether work is pending); raises ExplanationUnavailable without Redis."""
    version = classifier_version(finding)
    target = target_name(version, finding, target)
    if cached(finding, version, target).count() >= len(METHODS):
        return target, False
    try:
        _enqueue(finding, version, target)
    except RedisError:
        raise ExplanationUnavailable(QUEUE_DOWN) from None
    return target, True


def _enqueue(finding: Finding, version: ModelVersion, target: str) -> None:
    """Queue the explain job unless it is queued or running already."""
    queue = job_queue("explain")
    ident = job_id(finding, version, target)
    with contextlib.suppress(NoSuchJobError):
        status = Job.fetch(ident, connection=queue.connection).get_status()
        if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED):
            return
    queue.enqueue(
        explain_job,
        finding.pk,
        target,
        job_id=ident,
        job_timeout=300,
        result_ttl=600,
        failure_ttl=3600,
    )


def failed_reason(finding: Finding, target: str) -> str:
    """The error of the finding's last explanation job if it failed, or that the queue is
    unavailable (so pending maps will not come)."""
    version = classifier_version(finding)
    connection = job_queue("explain").connection
    try:
        job = Job.fetch(job_id(finding, version, target), connection=connection)
        if job.get_status(refresh=False) != JobStatus.FAILED:
            return ""
        result = job.latest_result()
    except NoSuchJobError:
        return ""
    except RedisError:
        return QUEUE_DOWN
    text = (result.exc_string if result else "") or "the job failed"
    return text.strip().splitlines()[-1]


# Colour stops (fraction, RGBA): sequential for unsigned maps, diverging for signed ones.
SEQUENTIAL = np.array([[0, 255, 255, 0, 0], [0.5, 255, 170, 0, 150], [1, 220, 0, 0, 230]])
DIVERGING = np.array([[-1, 0, 90, 255, 230], [0, 255, 255, 255, 0], [1, 230, 0, 0, 230]])


def map_png(explanation: Explanation) -> bytes:
    """The map as a translucent RGBA PNG of the crop's size: red for evidence for the
    class, blue (signed methods) against it; opacity grows with strength."""
    values = values_of(explanation)
    scale = float(np.abs(values).max()) or 1.0
    stops = DIVERGING if explanation.method in SIGNED else SEQUENTIAL
    v = (values / scale).ravel()
    if explanation.method not in SIGNED:
        v = np.clip(v, 0, 1)
    rgba = np.stack([np.interp(v, stops[:, 0], stops[:, c]) for c in range(1, 5)], axis=1)
    image = Image.fromarray(rgba.reshape(*values.shape, 4).round().astype(np.uint8), "RGBA")
    buffer = BytesIO()
    image.save(buffer, "png")
    return buffer.getvalue()


def overlay_png(crop: np.ndarray, explanation: Explanation, opacity: float = 0.6) -> bytes:
    """The map laid over the crop (for ``manage.py explain --out``)."""
    base = Image.fromarray(crop).convert("RGBA")
    layer = Image.open(BytesIO(map_png(explanation)))
    alpha = layer.getchannel("A").point(lambda a: int(a * opacity))
    layer.putalpha(alpha)
    buffer = BytesIO()
    Image.alpha_composite(base, layer).convert("RGB").save(buffer, "png")
    return buffer.getvalue()
