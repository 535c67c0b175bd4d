"""Model specs, format-agnostic detector/classifier wrappers, and loading by format.

Formats: ``native`` (our state_dict + spec, saved by :func:`save_native`),
``torchscript`` (a TorchScript module with the same output as our native network) and,
for detectors, ``yolo-torchscript`` (TorchScript returning YOLOv7-style raw output).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .detect import Detections, decode_heatmap, decode_yolo
from .networks import DETECTOR_CLASSES, CenterNet, build_classifier
from .vocabulary import PHASES

FORMATS = ("native", "torchscript", "yolo-torchscript")


@dataclass(frozen=True)
class ModelSpec:
    """How a network is fed and read: the ModelVersion's input spec.

    ``patch_px`` is the square read at ``target_mpp`` µm/px (detector patch, classifier
    crop); ``input_px`` the network input it is resized to (default: ``patch_px``).
    Input is RGB in [0, 1], then ``(x - mean) / std``. ``finding_classes`` are the
    detector classes reported as findings (default: the first class), and
    ``score_threshold`` the detector's operating point (chosen on validation slides).
    """

    arch: str
    class_names: tuple[str, ...]
    patch_px: int = 320
    input_px: int | None = None
    target_mpp: float = 0.25
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    stride: int = CenterNet.stride
    nms_iou: float = 0.45
    score_threshold: float = 0.5
    finding_classes: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelSpec:
        """Build from a mapping; keys that are not spec fields are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("class_names", "mean", "std", "finding_classes"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @property
    def network_px(self) -> int:
        """Side of the network input in pixels."""
        return self.input_px or self.patch_px

    @property
    def finding_labels(self) -> list[int]:
        """Class indices reported as findings."""
        names = self.finding_classes or self.class_names[:1]
        return [self.class_names.index(name) for name in names]


DETECTOR_DEFAULTS: dict[str, Any] = {"arch": "centernet", "class_names": DETECTOR_CLASSES}
CLASSIFIER_DEFAULTS: dict[str, Any] = {"arch": "resnet18", "class_names": PHASES, "patch_px": 128}


class Detector(Protocol):
    """What the pipeline needs from a detector, whatever its format."""

    spec: ModelSpec

    def to(self, device: torch.device) -> Detector:
        """Move to ``device``; returns self."""
        ...

    def __call__(self, batch: Tensor, score_threshold: float) -> list[Detections]:
        """Detections per patch (input px) for a float [0, 1] NCHW batch."""
        ...


class _Wrapped:
    """A module plus its spec: moves with ``to`` and normalises input."""

    def __init__(self, module: nn.Module, spec: ModelSpec) -> None:
        self.module = module.eval()
        self.spec = spec
        self._mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std).view(1, 3, 1, 1)

    def to(self, device: torch.device | str) -> _Wrapped:
        """Move module and normalisation constants to ``device``; returns self."""
        self.module.to(device)
        self._mean, self._std = self._mean.to(device), self._std.to(device)
        return self

    def _prepare(self, batch: Tensor) -> Tensor:
        size = self.spec.network_px
        if batch.shape[-1] != size or batch.shape[-2] != size:
            batch = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
        return (batch - self._mean) / self._std


def _check_classes(outputs: int, spec: ModelSpec) -> None:
    if outputs != len(spec.class_names):
        raise ValueError(
            f"model outputs {outputs} classes but its spec names {len(spec.class_names)}: "
            f"{list(spec.class_names)}"
        )


class CenterNetDetector(_Wrapped):
    """Centre-heatmap detector (native or TorchScript with CenterNet's output)."""

    def __call__(self, batch: Tensor, score_threshold: float) -> list[Detections]:
        output = self.module(self._prepare(batch))
        _check_classes(output.shape[1] - 4, self.spec)
        stride = self.spec.stride * batch.shape[-1] / self.spec.network_px
        return decode_heatmap(
            output, len(self.spec.class_names), stride=stride, score_threshold=score_threshold
        )


class YoloDetector(_Wrapped):
    """TorchScript detector returning YOLOv7-style raw output ``(N, anchors, 5 + C)``."""

    def __call__(self, batch: Tensor, score_threshold: float) -> list[Detections]:
        raw = self.module(self._prepare(batch))
        if isinstance(raw, tuple | list):  # YOLOv7 exports return (pred, features)
            raw = raw[0]
        _check_classes(raw.shape[-1] - 5, self.spec)
        detections = decode_yolo(
            raw, score_threshold=score_threshold, iou_threshold=self.spec.nms_iou
        )
        factor = batch.shape[-1] / self.spec.network_px
        return [d.shifted((0.0, 0.0), (factor, factor)) for d in detections]


class PhaseClassifier(_Wrapped):
    """Phase classifier: float [0, 1] NCHW crops to softmax probabilities ``(N, C)``."""

    def __call__(self, batch: Tensor) -> Tensor:
        return torch.softmax(self.module(self._prepare(batch)).float(), dim=1)


def save_native(
    module: nn.Module, spec: ModelSpec, path: str | PathLike[str], half: bool = False
) -> None:
    """Save ``module``'s state_dict with its spec in the ``native`` format; ``half`` stores
    floating-point tensors as float16 (half the file; loading casts them back)."""
    state = module.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"spec": spec.to_dict(), "state_dict": state}, path)


def _read_native(path: str | PathLike[str]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state_dict, spec) from a native file, a checkpoint dict, or a bare state_dict."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload.get("state_dict", payload)
    spec = payload.get("spec", {}) if "state_dict" in payload else {}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    return state, spec


def _resolve(
    defaults: Mapping[str, Any], stored: Mapping[str, Any], given: Mapping[str, Any] | None
) -> ModelSpec:
    return ModelSpec.from_dict({**defaults, **stored, **(given or {})})


def _check_format(fmt: str, allowed: tuple[str, ...]) -> None:
    if fmt not in allowed:
        raise ValueError(f"unsupported model format {fmt!r}; expected one of {allowed}")


def load_detector(
    path: str | PathLike[str], fmt: str = "native", spec: Mapping[str, Any] | None = None
) -> Detector:
    """Load a detector of format ``fmt``; ``spec`` (the version's input spec) overrides
    the spec stored in a native file and the defaults. Returned on the CPU, in eval mode.
    """
    _check_format(fmt, FORMATS)
    if fmt == "native":
        state, stored = _read_native(path)
        resolved = _resolve(DETECTOR_DEFAULTS, stored, spec)
        if resolved.arch != "centernet":
            raise ValueError(f"native detector arch must be 'centernet', got {resolved.arch!r}")
        network = CenterNet(num_classes=len(resolved.class_names))
        network.load_state_dict(state)
        return CenterNetDetector(network, resolved)
    module = torch.jit.load(str(path), map_location="cpu")
    resolved = _resolve(DETECTOR_DEFAULTS, {}, spec)
    wrapper = YoloDetector if fmt == "yolo-torchscript" else CenterNetDetector
    return wrapper(module, resolved)


def load_classifier(
    path: str | PathLike[str], fmt: str = "native", spec: Mapping[str, Any] | None = None
) -> PhaseClassifier:
    """Load a phase classifier (``native``: a state_dict for ``build_classifier(spec.arch)``,
    e.g. a lab's torchvision ResNet-50 with a 5-way fc; or ``torchscript`` returning logits).
    """
    _check_format(fmt, FORMATS[:2])
    if fmt == "torchscript":
        module = torch.jit.load(str(path), map_location="cpu")
        return PhaseClassifier(module, _resolve(CLASSIFIER_DEFAULTS, {}, spec))
    state, stored = _read_native(path)
    resolved = _resolve(CLASSIFIER_DEFAULTS, stored, spec)
    network = build_classifier(resolved.arch, len(resolved.class_names))
    network.load_state_dict(state)
    return PhaseClassifier(network, resolved)


MIL_DEFAULTS: dict[str, Any] = {
    "arch": "gated-attention-mil",
    "class_names": ("non_tumour", "tumour"),
    "patch_px": 32,
    "target_mpp": 2.0,
}


def load_mil(path: str | PathLike[str], fmt: str = "native", spec: Mapping[str, Any] | None = None):
    """Load an attention-MIL model (``native`` only): returns a ``mil.MilModel``."""
    from .mil import GatedAttentionMIL, MilModel

    _check_format(fmt, ("native",))
    state, stored = _read_native(path)
    resolved = _resolve(MIL_DEFAULTS, stored, spec)
    network = GatedAttentionMIL()
    network.load_state_dict(state)
    return MilModel(network.eval(), tuple(resolved.mean), tuple(resolved.std)), resolved
