"""Why the phase classifier said what it said: Captum attribution maps for one crop.

Five methods (Saliency, Integrated Gradients, Occlusion, GradientSHAP, Grad-CAM) on the
crop at its own size: the model wrapper resizes and normalises inside ``forward``, so
every map has the crop's shape. Work is batched (IG steps, occlusion windows and
GradientSHAP samples go through the network many at a time). Each map comes with a
deletion AUC (how fast the class probability falls as its most-attributed pixels are
replaced by a blurred copy; lower is more faithful) beside the same curve for a random
order, and IG with its convergence delta.
"""

from __future__ import annotations

import contextlib
import copy
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from captum.attr import (
    GradientShap,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .differences import OutputDifferences
from .vocabulary import ATTRIBUTION_METHODS as METHODS


@dataclass(frozen=True)
class AttributionSettings:
    """Method settings; recorded with every map."""

    ig_steps: int = 32
    ig_internal_batch: int | None = 32
    occlusion_window: int = 16
    occlusion_stride: int = 8
    occlusion_per_eval: int | None = 32  # small batches stay in cache: faster on CPU
    shap_samples: int = 32
    shap_chunk: int | None = 32
    shap_stdev: float = 0.05
    blur_sigma: float = 4.0
    deletion_steps: int = 16
    seed: int = 0
    # bfloat16 where the hardware computes it natively (about half the time or less). IG
    # and GradientSHAP each average 32 gradients: their maps and figures stay as in
    # float32. Occlusion's windows are each one small difference of two scores, which
    # bfloat16 passes would round away: its passes carry the differences themselves
    # (engine.differences), so its maps stay within 1 % of float32's (docs/benchmarks.md).
    bfloat16: bool = True


@dataclass
class MethodMap:
    """One method's map (H, W float32, the crop's size) and what it cost and showed."""

    method: str
    values: np.ndarray
    ms: float
    quality: dict[str, float] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)


class CropClassifier(nn.Module):
    """[0, 1] RGB crops at any size -> logits: resize to the network input, normalise.

    ``fast`` (the default) runs its own copy of the network, in evaluation mode with each
    batch norm folded into the convolution before it (:func:`fold_batch_norms`) and in
    channels-last memory order: the same function, and on CPUs its passes take about half
    the time (the maps make hundreds). Without it, the network runs as given."""

    def __init__(
        self,
        module: nn.Module,
        input_px: int,
        mean: Sequence[float],
        std: Sequence[float],
        fast: bool = True,
    ):
        super().__init__()
        self.memory_format = torch.channels_last if fast else torch.contiguous_format
        if fast:
            module = fold_batch_norms(module).to(memory_format=self.memory_format)
        self.module = module
        self.input_px = input_px
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.module(self.network_input(x)).float()

    def network_input(self, x: Tensor) -> Tensor:
        """Crops as the network takes them: resized to its input and normalised."""
        if x.shape[-1] != self.input_px:
            x = F.interpolate(
                x, size=(self.input_px, self.input_px), mode="bilinear", align_corners=False
            )
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)


def fold_batch_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in evaluation mode where every batch norm that only follows a
    convolution is folded into it (and replaced by an identity): the same function, one
    pass less over each activation. The module hierarchy stays as it is, so hooks on its
    stages (Grad-CAM's) still fire. A network that cannot be traced is copied as it is."""
    folded = copy.deepcopy(module).eval()
    try:
        graph = torch.fx.symbolic_trace(folded).graph
    except Exception:  # dynamic control flow: leave it unfolded
        return folded
    modules = dict(folded.named_modules())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (
            isinstance(modules.get(node.target), nn.BatchNorm2d)
            and modules[node.target].running_mean is not None
            and isinstance(source, torch.fx.Node)
            and source.op == "call_module"
            and isinstance(modules.get(source.target), nn.Conv2d)
            and len(source.users) == 1
            and calls[source.target] == calls[node.target] == 1  # modules used once
        ):
            continue
        conv = fuse_conv_bn_eval(modules[source.target], modules[node.target])
        conv.folded_batch_norm = True  # randomised_copy re-draws it as conv + fresh norm
        _replace(folded, source.target, conv)
        _replace(folded, node.target, nn.Identity())
    return folded


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, new)


GRAD_CAM_MIN_SIDE = 7  # a ResNet-50's layer4 at 224 px
RESNET_STAGES = ("layer4", "layer3", "layer2", "layer1")


_chosen_layers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def last_conv_block(module: nn.Module, input_px: int) -> tuple[str, nn.Module]:
    """The layer Grad-CAM explains: a ResNet's last stage whose output is at least 7 x 7
    at the network's input size (layer4 of a 224 px ResNet-50; layer3 of the shipped
    resnet8_os8; layer2 of a 64 px ResNet-10, whose layer4 is 2 x 2 and cannot point at a
    figure), else the last Conv2d. Sides are measured once per network and input size,
    not assumed from the names."""
    chosen = _chosen_layers.setdefault(module, {})
    if input_px not in chosen:
        chosen[input_px] = _grad_cam_layer(module, input_px)
    return chosen[input_px]


def _grad_cam_layer(module: nn.Module, input_px: int) -> tuple[str, nn.Module]:
    stages = [
        (name, getattr(module, name))
        for name in RESNET_STAGES
        if any(True for _ in getattr(module, name, nn.Identity()).parameters())
    ]
    if stages:
        sides = _output_sides(module, stages, input_px)
        return next(
            ((n, layer) for n, layer in stages if sides[n] >= GRAD_CAM_MIN_SIDE), stages[-1]
        )
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("the classifier has no convolutional layer for Grad-CAM")
    return "last conv", convs[-1]


def _output_sides(
    module: nn.Module, stages: list[tuple[str, nn.Module]], input_px: int
) -> dict[str, int]:
    """Each stage's output side for one blank input of ``input_px``."""
    sides: dict[str, int] = {}
    hooks = [
        layer.register_forward_hook(
            lambda _m, _i, out, name=name: sides.__setitem__(name, out.shape[-1])
        )
        for name, layer in stages
    ]
    device = next(module.parameters()).device
    training = module.training
    try:
        with torch.no_grad():  # in eval mode: batch-norm statistics stay as they are
            module.eval()(torch.zeros(1, 3, input_px, input_px, device=device))
    finally:
        module.train(training)
        for hook in hooks:
            hook.remove()
    return sides


def blurred(image: Tensor, sigma: float) -> Tensor:
    """A Gaussian-blurred copy (the 'information removed' baseline)."""
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(image.device)
    c = image.shape[1]
    padded = F.pad(image, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _precision(image: Tensor, s: AttributionSettings) -> str:
    """``bfloat16`` where the settings allow it and the hardware computes it natively (a
    CUDA device that supports it, a CPU with AVX-512 BF16 or AMX), else ``float32``."""
    if not s.bfloat16:
        native = False
    elif image.device.type == "cuda":  # Ampere and later; older GPUs only emulate it
        native = torch.cuda.get_device_capability(image.device)[0] >= 8
    elif image.device.type == "cpu":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    else:
        native = False
    return "bfloat16" if native else "float32"


def _reduced_precision(image: Tensor, s: AttributionSettings) -> torch.autocast:
    """Autocast to bfloat16 where :func:`_precision` says so (a no-op elsewhere)."""
    enabled = _precision(image, s) == "bfloat16"
    return torch.autocast(image.device.type, dtype=torch.bfloat16, enabled=enabled)


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """numpy's global generator seeded for the block, then restored: Captum's GradientShap
    draws its baselines and path points from it, so without this a crop's map changes
    from call to call."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _timed(function: Callable[[], Tensor | tuple]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, (time.perf_counter() - start) * 1000


def _reduce(attribution: Tensor, absolute: bool = False) -> np.ndarray:
    """(1, C, H, W) -> (H, W): summed over colour channels (or the max of |.|)."""
    a = attribution.detach()[0]
    a = a.abs().amax(0) if absolute else a.sum(0)
    return a.float().cpu().numpy()


def deletion_curves(
    model: nn.Module,
    image: Tensor,
    baseline: Tensor,
    maps: dict[str, np.ndarray],
    target: int,
    steps: int,
    seed: int,
    random: bool = True,
) -> dict[str, float]:
    """Deletion AUC of each map (and of a random order, as ``random``), in one batched pass.

    Pixels are replaced by the baseline in order of decreasing attribution, in ``steps``
    equal parts; the AUC is the mean class probability along the way (0-1)."""
    h, w = image.shape[-2:]
    orders = {name: np.argsort(-m.ravel(), kind="stable") for name, m in maps.items()}
    if random:
        orders["random"] = np.random.default_rng(seed).permutation(h * w)
    batches = []
    for order in orders.values():
        rank = np.empty(h * w, np.int64)
        rank[order] = np.arange(h * w)
        cut = torch.from_numpy(rank.reshape(1, 1, h, w)).to(image.device)
        thresholds = torch.linspace(0, h * w, steps + 1, device=image.device).view(-1, 1, 1, 1)
        removed = (cut < thresholds).to(image.dtype)
        batches.append(image * (1 - removed) + baseline * removed)
    with torch.no_grad():
        probs = torch.softmax(model(torch.cat(batches)).float(), 1)[:, target]
    curves = probs.view(len(orders), steps + 1).cpu().numpy()
    aucs = np.trapezoid(curves, dx=1 / steps, axis=1)
    return {name: float(auc) for name, auc in zip(orders, aucs, strict=True)}


def explain_crop(
    model: CropClassifier,
    crop: np.ndarray,
    methods: Sequence[str] = METHODS,
    target: int | None = None,
    settings: AttributionSettings = AttributionSettings(),
    on_map: Callable[[MethodMap], None] | None = None,
) -> tuple[int, np.ndarray, list[MethodMap]]:
    """Attribution maps of ``model`` for one RGB uint8 crop (H, W, 3), one method after
    another, each handed to ``on_map`` as soon as it is done (with its figures).

    Returns (target class, class probabilities, one MethodMap per method). ``target``
    defaults to the predicted class.
    """
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown attribution method(s) {sorted(unknown)}; one of {METHODS}")
    model = model.eval()
    device = model.mean.device
    pixels = np.require(crop, requirements=["C", "W"])  # torch needs a writable array
    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    image = image.div(255).to(device)
    with torch.no_grad():
        probs = torch.softmax(model(image).float(), 1)[0].cpu().numpy()
    target = int(np.argmax(probs)) if target is None else int(target)
    if not 0 <= target < len(probs):
        raise ValueError(f"target class {target} is not one of the model's {len(probs)} classes")
    blur = blurred(image, settings.blur_sigma)
    steps, seed = settings.deletion_steps, settings.seed
    random_auc = deletion_curves(model, image, blur, {}, target, steps, seed)["random"]
    results = []
    for method in methods:
        torch.manual_seed(seed)  # a map is the same whichever methods come with it
        result = _METHOD_FUNCTIONS[method](model, image, blur, target, settings)
        maps = {method: result.values}
        auc = deletion_curves(model, image, blur, maps, target, steps, seed, random=False)
        result.quality["deletion_auc"] = round(auc[method], 4)
        result.quality["random_deletion_auc"] = round(random_auc, 4)
        if on_map is not None:
            on_map(result)
        results.append(result)
    return target, probs, results


def _saliency(model, image, blur, target, s: AttributionSettings) -> MethodMap:
    attribution, ms = _timed(
        lambda: Saliency(model).attribute(image.clone(), target=target, abs=True)
    )
    return MethodMap("saliency", _reduce(attribution, absolute=True), ms, {}, {"abs": True})


def _integrated_gradients(model, image, blur, target, s: AttributionSettings) -> MethodMap:
    # Two baselines: from black alone, IG credits every bright pixel (its maps were less
    # faithful than a random order); from the blurred crop alone, the map is mostly the
    # crop's edges whatever the weights (it failed the randomisation check).
    ig = IntegratedGradients(model)
    baselines = {"black": torch.zeros_like(image), "blurred": blur}

    def run():
        with _reduced_precision(image, s):
            return [
                ig.attribute(
                    image,
                    baselines=b,
                    target=target,
                    n_steps=s.ig_steps,
                    internal_batch_size=s.ig_internal_batch,
                    return_convergence_delta=True,
                )
                for b in baselines.values()
            ]

    outputs, ms = _timed(run)
    values = np.mean([_reduce(a) for a, _ in outputs], axis=0)
    # The deltas come from the run's own precision, the gap from float32: both measure
    # the same difference of scores, to within bfloat16's rounding of the end points.
    with torch.no_grad():  # the score difference IG distributes, to put the delta in scale
        logits = model(torch.cat([image, *baselines.values()]))[:, target]
    quality = {}
    for i, (name, (_, delta)) in enumerate(zip(baselines, outputs, strict=True)):
        gap = float((logits[0] - logits[i + 1]).abs())
        quality[f"convergence_delta_{name}"] = round(float(delta.abs()), 5)
        quality[f"relative_delta_{name}"] = round(float(delta.abs()) / max(gap, 1e-6), 5)
    parameters = {
        "n_steps": s.ig_steps,
        "baselines": list(baselines),
        "internal_batch_size": s.ig_internal_batch,
        "blur_sigma": s.blur_sigma,
        "precision": _precision(image, s),
    }
    return MethodMap("integrated_gradients", values, ms, quality, parameters)


def _occlusion(model, image, blur, target, s: AttributionSettings) -> MethodMap:
    window, stride = s.occlusion_window, s.occlusion_stride
    per_eval, precision = s.occlusion_per_eval or 1, _precision(image, s)
    (attribution, ran_in), ms = _timed(
        lambda: occlusion(model, image, blur, target, window, stride, per_eval, precision)
    )
    parameters = {
        "window": window,
        "stride": stride,
        "baseline": "blurred",
        "perturbations_per_eval": s.occlusion_per_eval,
        "precision": ran_in,
    }
    return MethodMap("occlusion", _reduce(attribution), ms, {}, parameters)


def occlusion(
    model: nn.Module,
    image: Tensor,
    baseline: Tensor,
    target: int,
    window: int,
    stride: int,
    per_eval: int,
    precision: str = "float32",
) -> tuple[Tensor, str]:
    """Captum's Occlusion with a window over all channels: each pixel's attribution is the
    mean drop of the target's score over the windows (``window`` px, every ``stride`` px)
    that replace it by ``baseline``. The same windows and formula, without Captum's
    general-purpose bookkeeping (about a quarter of its time here), where the windows tile
    the crop exactly; otherwise Captum itself (it adds a cut-off window at the edges).
    With ``precision="bfloat16"``, the drops are carried through the network as
    differences (:class:`OutputDifferences`) with bfloat16 convolutions where it allows.
    Returns the map (shape of ``image``) and the precision its passes ran in."""
    _, channels, height, width = image.shape
    if min(height, width) < window or (height - window) % stride or (width - window) % stride:
        attribution = Occlusion(model).attribute(
            image,
            sliding_window_shapes=(channels, window, window),
            strides=(channels, stride, stride),
            baselines=baseline,
            target=target,
            perturbations_per_eval=per_eval,
        )
        return attribution, "float32"
    corners = [
        (top, left)
        for top in range(0, height - window + 1, stride)
        for left in range(0, width - window + 1, stride)
    ]
    drops, ran_in = _occlusion_drops(
        model, image, baseline, target, corners, window, per_eval, precision
    )
    total = torch.zeros(height, width, device=image.device)
    covered = torch.zeros(height, width, device=image.device)
    for drop, (top, left) in zip(drops, corners, strict=True):
        total[top : top + window, left : left + window] += drop
        covered[top : top + window, left : left + window] += 1
    return (total / covered.clamp(min=1)).expand(1, channels, height, width), ran_in


def _occlusion_drops(
    model: nn.Module,
    image: Tensor,
    baseline: Tensor,
    target: int,
    corners: list[tuple[int, int]],
    window: int,
    per_eval: int,
    precision: str,
) -> tuple[Tensor, str]:
    """The drop of the target's score for each window (at ``corners``) replaced by
    ``baseline``, and the precision the passes ran in. Where the crop is k times the
    network's input and the windows lie on k-px cells, the windows are replaced on the
    network's input instead, once resized and normalised: bilinear downsampling by an
    integer k reads each output pixel from its own k-px cell, and normalising is per
    pixel, so the network sees the same input without resizing each perturbed copy."""
    cell = _input_cell(model, image, window, corners)
    if cell:
        network = model.module
        image, baseline = model.network_input(image), model.network_input(baseline)
        corners = [(top // cell, left // cell) for top, left in corners]
        window //= cell
        layout = model.memory_format
    else:
        network, layout = model, torch.contiguous_format
    changes = _window_changes(baseline - image, corners, window, per_eval, layout)
    with torch.no_grad():
        moved = None
        if precision == "bfloat16":
            moved = OutputDifferences.around(network, image, torch.bfloat16)
        if moved is not None:
            return torch.cat([-moved(change)[:, target] for change in changes]), "bfloat16"
        score = network(image)[0, target]
        passes = (network(image + change) for change in changes)  # in the changes' layout
        return torch.cat([score - logits[:, target] for logits in passes]), "float32"


def _window_changes(
    difference: Tensor, corners: list[tuple[int, int]], window: int, per_eval: int, layout
) -> Iterator[Tensor]:
    """Batches of at most ``per_eval`` changes, each ``difference`` inside one window
    (at ``corners``) and zero elsewhere."""
    height, width = difference.shape[-2:]
    for start in range(0, len(corners), per_eval):
        chunk = corners[start : start + per_eval]
        masks = torch.zeros(len(chunk), 1, height, width)
        for mask, (top, left) in zip(masks, chunk, strict=True):
            mask[:, top : top + window, left : left + window] = 1
        yield (difference * masks.to(difference.device)).contiguous(memory_format=layout)


def _input_cell(model: nn.Module, image: Tensor, window: int, corners) -> int:
    """k where ``image`` is k times a CropClassifier's input and every window lies on
    k-px cells; else 0."""
    if not isinstance(model, CropClassifier):
        return 0
    height, width = image.shape[-2:]
    cell = width // model.input_px
    if not cell or not height == width == cell * model.input_px or window % cell:
        return 0
    aligned = all(top % cell == 0 and left % cell == 0 for top, left in corners)
    return cell if aligned else 0


def _gradient_shap(model, image, blur, target, s: AttributionSettings) -> MethodMap:
    distribution = torch.cat(
        [torch.zeros_like(image), torch.ones_like(image), blur, blur * 0.5 + 0.25]
    )
    chunk = s.shap_chunk or s.shap_samples
    shap = GradientShap(model)

    def sample(n: int) -> Tensor:
        return shap.attribute(
            image, baselines=distribution, n_samples=n, stdevs=s.shap_stdev, target=target
        )

    def run():
        counts = [min(chunk, s.shap_samples - i) for i in range(0, s.shap_samples, chunk)]
        with _reduced_precision(image, s), _seeded_numpy(s.seed):
            return sum(sample(n) * n for n in counts) / s.shap_samples

    attribution, ms = _timed(run)
    parameters = {
        "n_samples": s.shap_samples,
        "stdevs": s.shap_stdev,
        "chunk": s.shap_chunk,
        "baselines": ["black", "white", "blurred", "blurred grey"],
        "precision": _precision(image, s),
    }
    return MethodMap("gradient_shap", _reduce(attribution), ms, {}, parameters)


def _grad_cam(model, image, blur, target, s: AttributionSettings) -> MethodMap:
    name, layer = last_conv_block(model.module, model.input_px)

    def run():
        cam = LayerGradCam(model, layer).attribute(image, target=target, relu_attributions=True)
        return LayerAttribution.interpolate(cam, tuple(image.shape[-2:]), "bilinear")

    attribution, ms = _timed(run)
    parameters = {
        "layer": name,
        "relu_attributions": True,
        "upsampled": "bilinear",
    }
    return MethodMap("grad_cam", _reduce(attribution), ms, {}, parameters)


_METHOD_FUNCTIONS = {
    "saliency": _saliency,
    "integrated_gradients": _integrated_gradients,
    "occlusion": _occlusion,
    "gradient_shap": _gradient_shap,
    "grad_cam": _grad_cam,
}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps' absolute values."""
    ranks = [np.argsort(np.argsort(np.abs(m).ravel())).astype(np.float64) for m in (a, b)]
    ra, rb = (r - r.mean() for r in ranks)
    denominator = np.sqrt((ra**2).sum() * (rb**2).sum())
    return float((ra * rb).sum() / denominator) if denominator else 0.0


def randomised_copy(model: CropClassifier, seed: int = 0) -> CropClassifier:
    """The same architecture with every weight re-drawn (Adebayo et al.'s cascade, taken to
    its end): a map that survives this does not depend on what the model learned."""
    torch.manual_seed(seed)
    clone = copy.deepcopy(model)
    for module in clone.module.modules():
        if hasattr(module, "reset_parameters") and module is not clone.module:
            module.reset_parameters()
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
        if getattr(module, "folded_batch_norm", False):
            nn.init.zeros_(module.bias)  # what a reset batch norm after it would add
    return clone.eval()


def randomisation_check(
    model: CropClassifier,
    crops: Sequence[np.ndarray],
    methods: Sequence[str] = METHODS,
    threshold: float = 0.5,
    seed: int = 0,
    draws: int = 3,
) -> dict[str, dict[str, float | bool]]:
    """Model-randomisation sanity check: the mean Spearman similarity, per method, between
    maps of the trained model and of randomised copies (same crop, same target class),
    over ``draws`` independent re-draws of the weights (one draw is a noisy estimate: a
    random network's Grad-CAM can follow the dark figure by chance). A method passes when
    the similarity falls below ``threshold``."""
    random_models = [randomised_copy(model, seed + draw) for draw in range(draws)]
    similarity: dict[str, list[float]] = {m: [] for m in methods}
    for crop in crops:
        target, _, trained = explain_crop(model, crop, methods)
        for random_model in random_models:
            _, _, randomised = explain_crop(random_model, crop, methods, target)
            for a, b in zip(trained, randomised, strict=True):
                similarity[a.method].append(spearman(a.values, b.values))
    return {
        m: {"similarity": round(float(np.mean(v)), 4), "passes": bool(np.mean(v) < threshold)}
        for m, v in similarity.items()
    }
