"""Attribution maps per finding: ms per method and all five, ours vs Captum's defaults.

    .venv/bin/python benchmarks/explanations.py [--crops 12] [--threads 2] [--faithfulness]

The shipped phase classifier on held-out synthetic crops. The anchor is Captum called
with its own defaults wherever it has one, on the same model (as loaded, where ours folds
its batch norms and runs channels-last), crops and target:
Saliency (abs=True); IntegratedGradients (n_steps=50, Gauss-Legendre, one batch,
internal_batch_size=None, black baseline); Occlusion (perturbations_per_eval=1, zero
baseline; it has no default window, so ours: 16 px, stride 8); GradientShap
(n_samples=50 as DESIGN.md names the anchor, where Captum's default is 5; stdevs=0.0;
our four reference images, which it requires); LayerGradCam
on the layer we explain, upsampled bilinearly. Ours and the anchor alternate crop by
crop. Prints the median per method and of the five together, and the rate occlusion's
passes reach (multiply-adds counted with hooks; bfloat16 differences where the CPU has it
natively, else float32, as the map records) beside a large float32 matrix product's.
``--faithfulness`` also prints our maps' figures as shipped beside the same maps computed
wholly in float32.
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from captum.attr import (  # noqa: E402
    GradientShap,
    IntegratedGradients,
    LayerAttribution,
    LayerGradCam,
    Occlusion,
    Saliency,
)

from benchmarks.machine import cpu_model  # noqa: E402
from inference.engine.attribution import (  # noqa: E402
    METHODS,
    AttributionSettings,
    CropClassifier,
    blurred,
    explain_crop,
    last_conv_block,
)
from inference.engine.model_io import load_classifier  # noqa: E402
from inference.tools.synth import PHASES, render_figure_crop  # noqa: E402


def ours(model, crop) -> tuple[dict, float]:
    """Our five maps by method, and the whole call's ms (with deletion curves)."""
    start = time.perf_counter()
    _, _, maps = explain_crop(model, crop, METHODS)
    return {m.method: m for m in maps}, (time.perf_counter() - start) * 1000


def captum_defaults(model, crop) -> dict[str, float]:
    """Per-method ms of the same five maps through Captum with its defaults."""
    image = torch.from_numpy(crop.copy()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        target = int(model(image).argmax())
    blur = blurred(image, AttributionSettings().blur_sigma)
    references = torch.cat([torch.zeros_like(image), torch.ones_like(image), blur, blur / 2 + 0.25])
    _, layer = last_conv_block(model.module, model.input_px)
    calls = {
        "saliency": lambda: Saliency(model).attribute(image.clone(), target=target),
        "integrated_gradients": lambda: IntegratedGradients(model).attribute(image, target=target),
        "occlusion": lambda: Occlusion(model).attribute(
            image, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), target=target
        ),
        "gradient_shap": lambda: GradientShap(model).attribute(
            image, baselines=references, target=target, n_samples=50
        ),
        "grad_cam": lambda: LayerAttribution.interpolate(
            LayerGradCam(model, layer).attribute(image, target=target), image.shape[-2:], "bilinear"
        ),
    }
    times = {}
    for method, call in calls.items():
        start = time.perf_counter()
        call()
        times[method] = (time.perf_counter() - start) * 1000
    return times


def multiply_adds(network: torch.nn.Module, input_px: int) -> int:
    """Multiply-adds of one pass of ``network`` (its convolutions and linear layers)."""
    total = 0

    def count(module, _inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * module.in_channels // module.groups * kernel
        elif isinstance(module, torch.nn.Linear):
            total += output.numel() * module.in_features

    hooks = [m.register_forward_hook(count) for m in network.modules()]
    with torch.no_grad():
        network(torch.zeros(1, 3, input_px, input_px))
    for hook in hooks:
        hook.remove()
    return total


def matmul_gflops(side: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a float32 ``side``-square matrix product on torch's threads: what this
    machine's cores reach on the densest work there is."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * side**3 * repeats / (time.perf_counter() - start) / 1e9


def faithfulness(model, crops) -> None:
    """Mean deletion AUC per method and IG's relative completeness delta, as shipped and
    all in float32, and how alike the two maps are (median Spearman similarity)."""
    import numpy as np

    from inference.engine.attribution import spearman

    runs = {
        label: [explain_crop(model, c, METHODS, settings=settings)[2] for c in crops]
        for label, settings in (
            ("shipped", AttributionSettings()),
            ("float32", AttributionSettings(bfloat16=False)),
        )
    }
    print("\n| method | precision | deletion AUC shipped / float32 | similarity |")
    print("|---|---|---|---|")
    for i, m in enumerate(METHODS):
        shipped, exact = ([maps[i] for maps in runs[k]] for k in ("shipped", "float32"))
        aucs = [np.mean([r.quality["deletion_auc"] for r in rs]) for rs in (shipped, exact)]
        alike = np.median(
            [spearman(a.values, b.values) for a, b in zip(shipped, exact, strict=True)]
        )
        precision = shipped[0].parameters.get("precision", "float32")
        print(f"| {m} | {precision} | {aucs[0]:.3f} / {aucs[1]:.3f} | {alike:.3f} |")
    for label, maps in runs.items():
        ig = METHODS.index("integrated_gradients")
        deltas = [
            max(rs[ig].quality["relative_delta_black"], rs[ig].quality["relative_delta_blurred"])
            for rs in maps
        ]
        randoms = np.mean([rs[0].quality["random_deletion_auc"] for rs in maps])
        print(
            f"{label}: IG relative delta median {np.median(deltas):.4f}, max {max(deltas):.4f}; "
            f"random order's deletion AUC {randoms:.3f}"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--faithfulness", action="store_true", help="also compare precisions")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classifier = load_classifier(next((ROOT / "models").glob("mitolens-phase-*.pt")))
    spec = classifier.spec
    model = CropClassifier(classifier.module, spec.network_px, spec.mean, spec.std).eval()
    # the anchor: the classifier as loaded (batch norms as they are, default memory order)
    plain = CropClassifier(classifier.module, spec.network_px, spec.mean, spec.std, fast=False)
    plain.eval()
    crops = [
        render_figure_crop(95000 + i, PHASES[i % 4], size=spec.patch_px)[0]
        for i in range(args.crops)
    ]
    explain_crop(model, crops[0])  # warm up both
    captum_defaults(plain, crops[0])
    mine = {m: [] for m in METHODS}
    anchor = {m: [] for m in METHODS}
    totals, mine_maps, anchor_maps = [], [], []
    for crop in crops:  # interleaved: load on the machine falls on both alike
        per_method, total = ours(model, crop)
        theirs = captum_defaults(plain, crop)
        for m in METHODS:
            mine[m].append(per_method[m].ms)
            anchor[m].append(theirs[m])
        totals.append(total)
        mine_maps.append(sum(map_.ms for map_ in per_method.values()))
        anchor_maps.append(sum(theirs.values()))
    cpu = cpu_model()
    print(
        f"Machine: {os.cpu_count()} cores, {cpu}; torch {torch.__version__}, "
        f"{args.threads} threads; {platform.python_version()}"
    )
    print(
        f"Date: {datetime.date.today()}; {args.crops} crops of {spec.patch_px} px "
        f"({spec.arch}, network input {spec.network_px} px); settings {AttributionSettings()}"
    )
    print("\n| method | ours (ms, median) | Captum defaults (ms) | speed-up |")
    print("|---|---|---|---|")
    for m in METHODS:
        a, b = statistics.median(mine[m]), statistics.median(anchor[m])
        print(f"| {m} | {a:.0f} | {b:.0f} | {b / a:.1f}× |")
    a, b = statistics.median(mine_maps), statistics.median(anchor_maps)
    print(f"| the five maps | {a:.0f} | {b:.0f} | {b / a:.1f}× |")
    print(f"| ours with the deletion AUCs | {statistics.median(totals):.0f} | | |")
    settings = AttributionSettings()
    windows = ((spec.patch_px - settings.occlusion_window) // settings.occlusion_stride + 1) ** 2
    macs = multiply_adds(model.module, spec.network_px)
    seconds = statistics.median(mine["occlusion"]) / 1000
    precision = per_method["occlusion"].parameters["precision"]
    print(
        f"\nOcclusion: {windows + 1} {precision} passes of {macs / 1e6:.0f} M multiply-adds, "
        f"{2 * macs * (windows + 1) / seconds / 1e9:.0f} GFLOP/s (a 2,048-square float32 "
        f"matrix product: {matmul_gflops():.0f} GFLOP/s)"
    )
    if args.faithfulness:
        faithfulness(model, crops)


if __name__ == "__main__":
    main()
