"""Describe the shipped detector's training domain and calibrate its out-of-domain guard,
writing the description into the detector's card (see docs/models.md, "Domain guard")."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from openslide import OpenSlideError
from PIL import Image, UnidentifiedImageError

from inference.engine.model_io import load_detector
from inference.registry import DETECTOR_NAME, SHIPPED_VERSIONS
from inference.tools.domain import describe, slide_from_image
from inference.tools.train import Recipe
from slides import MissingMppError, open_slide, slide_mpp


class Command(BaseCommand):
    help = (
        "Fit the detector's domain description on a few of its training slides (synthesised "
        "again from the card's seeds), calibrate the threshold on held-out synthetic slides "
        "and real H&E, check it on real H&E kept out of calibration, and write it to the card."
    )

    def add_arguments(self, parser):
        parser.add_argument("--card", type=Path, default=None, help="default: the detector's")
        parser.add_argument("--train-slides", type=int, default=6, help="training slides used")
        parser.add_argument(
            "--held-out-seeds", type=int, nargs="+", default=[7001, 7002, 7003, 7004]
        )
        parser.add_argument(
            "--real",
            nargs="+",
            required=True,
            metavar="FILE[@MPP]",
            help="real H&E to calibrate on: a slide file, or an image with its µm/px",
        )
        parser.add_argument(
            "--real-holdout", nargs="*", default=[], metavar="FILE[@MPP]",
            help="real H&E never used to calibrate: the guard's result is reported",
        )  # fmt: skip
        parser.add_argument("--work", type=Path, default=None, help="default: var/domain")
        parser.add_argument("--dry-run", action="store_true", help="print, do not write")

    def handle(self, *args, card, train_slides, held_out_seeds, real, real_holdout, work,
               dry_run, **options):  # fmt: skip
        shipped = f"{DETECTOR_NAME}-{SHIPPED_VERSIONS[DETECTOR_NAME]}.json"
        card = card or Path(settings.SHIPPED_MODELS) / shipped
        work = work or Path(settings.VAR_DIR) / "domain"
        if not card.is_file():
            raise CommandError(f"{card}: no such model card")
        facts = json.loads(card.read_text())
        if facts.get("task") != "detector" or facts.get("format") != "native":
            raise CommandError(f"{card}: only a native detector's domain can be described")
        if train_slides < 1:
            raise CommandError("--train-slides must be at least 1")
        detector = load_detector(card.parent / facts["weights"], "native", facts["spec"])
        try:
            domain = describe(
                detector,
                Recipe().train,
                train_count=train_slides,
                held_out_seeds=held_out_seeds,
                real=[_slide(text, work) for text in real],
                real_holdout=[_slide(text, work) for text in real_holdout],
                work=work,
                log=self.stdout.write,
            )
        except ValueError as error:
            raise CommandError(str(error)) from None
        domain["command"] = "python manage.py describe_domain " + _arguments(
            train_slides, held_out_seeds, real, real_holdout
        )
        self.stdout.write(json.dumps(_summary(domain), indent=1))
        if dry_run:
            return
        facts["domain"] = domain
        card.write_text(json.dumps(facts, indent=1) + "\n")
        self.stdout.write(self.style.SUCCESS(f"Wrote the domain description into {card}"))


def _slide(text: str, work: Path) -> Path:
    """A real source as a slide: a slide file as it is (it must have a µm/px), or an image
    ``FILE@MPP`` written as a pyramidal TIFF at that µm/px."""
    name, _, mpp = text.partition("@")
    path = Path(name)
    if not path.is_file():
        raise CommandError(f"{path}: no such file")
    if not mpp:
        try:
            with open_slide(path) as slide:
                slide_mpp(slide)
        except (MissingMppError, OpenSlideError) as error:
            raise CommandError(f"{path}: {error} (give an image as FILE@MPP)") from None
        return path
    try:
        value = float(mpp)
        image = Image.open(path)
    except (ValueError, UnidentifiedImageError, OSError) as error:
        raise CommandError(f"{text}: expected IMAGE@MPP with a readable image ({error})") from None
    return slide_from_image(image, work / "real" / f"{path.stem}-{value}.tiff", value)


def _arguments(train_slides, held_out_seeds, real, real_holdout) -> str:
    parts = [f"--train-slides {train_slides}", "--held-out-seeds", *map(str, held_out_seeds)]
    parts += ["--real", *(Path(r).name for r in real)]
    if real_holdout:
        parts += ["--real-holdout", *(Path(r).name for r in real_holdout)]
    return " ".join(parts)


def _summary(domain: dict) -> dict:
    """What the card gains, without the vectors."""
    return {
        "threshold": domain["threshold"],
        "fit": domain["fit"],
        "calibration": domain["calibration"],
        "held_out_real": domain["held_out_real"],
    }
