"""Model-randomisation sanity check (Adebayo et al. 2018) and pointing game of the
attribution methods on held-out synthetic crops; results go into the classifier's card."""

import json
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand
from tqdm import tqdm

from inference.engine.attribution import METHODS, CropClassifier, explain_crop, randomisation_check
from inference.registry import load_version
from inference.services import active_models
from inference.tools.synth import PHASES, render_figure_crop


def peak_in_box(values: np.ndarray, box, margin: float) -> bool:
    """Whether the map's strongest pixel lies in the figure's box (plus ``margin`` px)."""
    y, x = np.unravel_index(np.argmax(np.abs(values)), values.shape)
    return box[0] - margin <= x <= box[2] + margin and box[1] - margin <= y <= box[3] + margin


class Command(BaseCommand):
    help = "Sanity-check the attribution methods and record the result in the model card."

    def add_arguments(self, parser):
        parser.add_argument("--crops", type=int, default=40, help="held-out crops to use")
        parser.add_argument("--no-card", action="store_true", help="print only")

    def handle(self, *args, crops, no_card, **options):
        _, version = active_models()
        classifier = load_version(version)
        spec = classifier.spec
        model = CropClassifier(classifier.module, spec.network_px, spec.mean, spec.std)
        samples = [
            render_figure_crop(90000 + i, PHASES[i % 4], size=spec.patch_px, jitter_um=2.0)
            for i in tqdm(range(crops), desc="Crops")
        ]
        hits = dict.fromkeys(METHODS, 0)
        for crop, truth in tqdm(samples, desc="Pointing game"):
            _, _, maps = explain_crop(model, crop)
            for m in maps:
                hits[m.method] += peak_in_box(m.values, truth["box"], margin=2.0)
        pointing = {m: round(h / crops, 3) for m, h in hits.items()}
        sanity = randomisation_check(model, [c for c, _ in samples[: min(crops, 16)]])
        result = {
            "model": str(version),
            "crops": crops,
            "pointing_game": pointing,
            "randomisation": sanity,
        }
        self.stdout.write(json.dumps(result, indent=1))
        # the measured version's own card: a fine-tuned candidate or another shipped
        # version never overwrites 1.0's figures
        card = Path(settings.SHIPPED_MODELS) / f"{version.name}-{version.version}.json"
        if not no_card and card.exists():
            data = json.loads(card.read_text())
            data["explanation_checks"] = result
            card.write_text(json.dumps(data, indent=1) + "\n")
            self.stdout.write(f"Recorded in {card}")
