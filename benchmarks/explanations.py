"""Attribution maps per finding: ms per method and all five, ours vs Captum's defaults.

    .venv/bin/python benchmarks/explanations.py [--crops 12] [--threads 2]

The shipped phase classifier on held-out synthetic crops. "Captum defaults" is the same
settings computed the plain way (IG one step per forward pass, occlusion one
perturbation per pass, GradientSHAP all samples in one batch): same maps, no batching.
Prints the median per method and of the five together.
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

from inference.engine.attribution import (  # noqa: E402
    METHODS,
    AttributionSettings,
    CropClassifier,
    explain_crop,
)
from inference.engine.model_io import load_classifier  # noqa: E402
from inference.tools.synth import PHASES, render_figure_crop  # noqa: E402


def measure(model, crops, settings):
    per_method = {m: [] for m in METHODS}
    totals = []
    for crop in crops:
        start = time.perf_counter()
        _, _, maps = explain_crop(model, crop, METHODS, settings=settings)
        totals.append((time.perf_counter() - start) * 1000)
        for m in maps:
            per_method[m.method].append(m.ms)
    return {m: statistics.median(v) for m, v in per_method.items()}, statistics.median(totals)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crops", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    classifier = load_classifier(next((ROOT / "models").glob("mitolens-phase-*.pt")))
    spec = classifier.spec
    model = CropClassifier(classifier.module, spec.network_px, spec.mean, spec.std).eval()
    crops = [
        render_figure_crop(95000 + i, PHASES[i % 4], size=spec.patch_px)[0]
        for i in range(args.crops)
    ]
    explain_crop(model, crops[0])  # warm up
    ours, ours_total = measure(model, crops, AttributionSettings())
    plain, plain_total = measure(model, crops, AttributionSettings.captum_defaults())
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        "?",
    )
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
        print(f"| {m} | {ours[m]:.0f} | {plain[m]:.0f} | {plain[m] / ours[m]:.1f}× |")
    ours_maps, plain_maps = sum(ours.values()), sum(plain.values())
    print(f"| the five maps | {ours_maps:.0f} | {plain_maps:.0f} | {plain_maps / ours_maps:.1f}× |")
    print(
        f"| all five, with deletion AUCs | {ours_total:.0f} | {plain_total:.0f} | "
        f"{plain_total / ours_total:.1f}× |"
    )


if __name__ == "__main__":
    main()
