"""Attribution maps for one finding: computed here (or reused from the cache)."""

import json
from pathlib import Path

import numpy as np
from django.core.management.base import BaseCommand, CommandError

from inference import explain
from inference.models import Finding


class Command(BaseCommand):
    help = (
        "Compute (or reuse cached) attribution maps for a finding's crop. --out writes "
        "<method>.npy and <method>.png (the map over the crop); --json prints the crop "
        "geometry and each method's compute time and quality figures."
    )

    def add_arguments(self, parser):
        parser.add_argument("--finding", type=int, required=True)
        parser.add_argument("--method", nargs="+", choices=explain.METHODS, default=None)
        parser.add_argument("--target", help="phase class to explain (default: the finding's)")
        parser.add_argument("--out", type=Path, help="directory for .npy and .png files")
        parser.add_argument("--json", action="store_true")

    def handle(self, *args, finding, method, target, out, **options):
        record = Finding.objects.select_related("slide", "run__classifier").filter(pk=finding)
        if not record.exists():
            raise CommandError(f"No finding {finding}")
        record = record.get()
        methods = method or list(explain.METHODS)
        try:
            maps = explain.compute(record, methods, target)
        except explain.ExplanationRefused as refusal:
            raise CommandError(str(refusal)) from None
        if out:
            out.mkdir(parents=True, exist_ok=True)
            crop = explain.read_crop(record, maps[0].model_version)
            for m in maps:
                np.save(out / f"{m.method}.npy", explain.values_of(m))
                (out / f"{m.method}.png").write_bytes(explain.overlay_png(crop, m))
        first = maps[0]
        report = {
            "finding": record.pk,
            "target": first.target,
            "model": str(first.model_version),
            "crop": {
                "x": first.crop_x,
                "y": first.crop_y,
                "width": first.width,
                "height": first.height,
                "mpp": first.crop_mpp,
            },
            "methods": {
                m.method: {
                    "ms": round(m.compute_ms, 1),
                    "quality": m.quality,
                    "parameters": m.parameters,
                }
                for m in maps
            },
        }
        if options["json"]:
            self.stdout.write(json.dumps(report, indent=1))
            return
        self.stdout.write(
            f"Finding {record.pk}: {first.target} by {first.model_version}; crop at "
            f"({first.crop_x:.0f}, {first.crop_y:.0f}), {first.width} px at {first.crop_mpp} µm/px"
        )
        for m in maps:
            quality = ", ".join(f"{k} {v}" for k, v in m.quality.items())
            self.stdout.write(f"  {m.method:<22} {m.compute_ms:7.1f} ms  {quality}")
        if out:
            self.stdout.write(f"Wrote {len(maps)} maps to {out}")
