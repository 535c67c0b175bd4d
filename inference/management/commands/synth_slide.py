"""Write a synthetic H&E whole-slide image and its ground truth (OUT.tiff + OUT.json)."""

import argparse
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from inference.tools import synth


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, got {text!r}") from None
    if w < 64 or h < 64:
        raise argparse.ArgumentTypeError("width and height must be at least 64 px")
    return w, h


class Command(BaseCommand):
    help = (
        "Generate a synthetic H&E slide (pyramidal JPEG TIFF that OpenSlide opens) with "
        "mitotic figures and look-alikes, and its ground truth next to it as OUT.json. "
        "The same arguments always give the same bytes."
    )

    def add_arguments(self, parser):
        parser.add_argument("out", type=Path, help="output .tiff path")
        parser.add_argument("--seed", type=int, required=True)
        parser.add_argument("--size", type=_size, required=True, help="WIDTHxHEIGHT, level-0 px")
        parser.add_argument("--mpp", type=float, default=0.25, help="microns per pixel")
        parser.add_argument(
            "--mitoses-per-mm2",
            type=float,
            default=synth.DEFAULT_MITOSES_PER_MM2,
            help="mean mitotic density over the tumour area (hotspots are denser)",
        )
        parser.add_argument("--tumour-fraction", type=float, default=0.5)
        parser.add_argument(
            "--hard-negatives-per-mm2",
            type=float,
            default=None,
            help="look-alike density over the tumour area (default: twice the mitoses)",
        )
        parser.add_argument(
            "--domain",
            choices=synth.DOMAINS,
            default="default",
            help="default: the slides the shipped models were trained on; shifted: another "
            "stain, scanner and figure appearance (docs/synthetic.md)",
        )

    def handle(self, *args, out, seed, size, mpp, mitoses_per_mm2, tumour_fraction, **options):
        self._check(out, mpp, mitoses_per_mm2, tumour_fraction)
        with tqdm(desc="Rendering", unit="region", disable=options["verbosity"] == 0) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            gt = synth.generate_slide(
                out,
                seed=seed,
                size=size,
                mpp=mpp,
                mitoses_per_mm2=mitoses_per_mm2,
                tumour_fraction=tumour_fraction,
                progress=progress,
                hard_negatives_per_mm2=options["hard_negatives_per_mm2"],
                domain=options["domain"],
            )
        levels = len(synth.level_shapes(*size))
        self.stdout.write(
            f"Wrote {out} ({size[0]}×{size[1]} px, {mpp} µm/px, {levels} levels, "
            f"{options['domain']} domain) and "
            f"{out.with_suffix('.json')}: {len(gt['mitoses'])} mitoses, "
            f"{len(gt['hard_negatives'])} hard negatives, "
            f"{len(gt['tumour_regions'])} tumour regions"
        )

    @staticmethod
    def _check(out: Path, mpp: float, density: float, fraction: float) -> None:
        if out.suffix.lower() not in (".tif", ".tiff"):
            raise CommandError("the output must end in .tif or .tiff")
        if not out.parent.is_dir():
            raise CommandError(f"directory {out.parent} does not exist")
        if not 0.05 <= mpp <= 10:
            raise CommandError("--mpp must be between 0.05 and 10 µm/px")
        if density < 0:
            raise CommandError("--mitoses-per-mm2 must not be negative")
        if not 0 <= fraction <= 1:
            raise CommandError("--tumour-fraction must be between 0 and 1")
