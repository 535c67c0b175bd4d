"""Train the shipped detector and phase classifier on synthetic slides and write their
weights and model cards to the model store (see docs/models.md)."""

import json
import platform
from datetime import date
from pathlib import Path

import torch
from django.conf import settings
from django.core.management.base import BaseCommand

from inference.engine.model_io import (
    MIL_DEFAULTS,
    CenterNetDetector,
    ModelSpec,
    PhaseClassifier,
    load_detector,
    save_native,
)
from inference.registry import (
    CLASSIFIER_NAME,
    DETECTOR_NAME,
    MIL_NAME,
    SHIPPED_VERSIONS,
    write_card,
)
from inference.tools.evaluate import evaluate_paths, report
from inference.tools.train import (
    Recipe,
    train_shipped_classifier,
    train_shipped_mil,
    train_shipped_models,
)


class Command(BaseCommand):
    help = "Train the shipped models on synthetic slides (CPU-friendly, seeded) and write cards."

    def add_arguments(self, parser):
        parser.add_argument("--out", type=Path, default=None, help="default: models/")
        parser.add_argument("--work", type=Path, default=None, help="slides; default var/train")
        parser.add_argument("--quick", action="store_true", help="tiny run to check the command")
        parser.add_argument("--processes", type=int, default=2, help="slide synthesis processes")
        parser.add_argument(
            "--models",
            choices=["all", "detection", "phase", "mil"],
            default="all",
            help="detection: detector + phase classifier; phase: the phase classifier alone, "
            "evaluated with the shipped detector; mil: the attention-MIL model",
        )

    def handle(self, *args, out, work, quick, processes, models, **options):
        out = out or Path(settings.SHIPPED_MODELS)
        work = work or Path(settings.VAR_DIR) / "train"
        out.mkdir(parents=True, exist_ok=True)
        recipe = Recipe().quick() if quick else Recipe()
        command = "python manage.py train_models" + (" --quick" if quick else "")
        if models in ("all", "detection"):
            self._detection(recipe, out, work, processes, command)
        if models == "phase":
            self._phase(recipe, out, work, processes, command + " --models phase")
        if models in ("all", "mil"):
            self._mil(recipe, out, work, processes, command)

    def _mil(self, recipe, out, work, processes, command):
        torch.manual_seed(recipe.seed)
        model, facts, metrics = train_shipped_mil(recipe, work, self.stdout.write, processes)
        spec = {**MIL_DEFAULTS, "mean": list(model.mean), "std": list(model.std)}
        spec = ModelSpec.from_dict(spec).to_dict()
        weights = out / f"{MIL_NAME}-{SHIPPED_VERSIONS[MIL_NAME]}.pt"
        save_native(model.network, ModelSpec.from_dict(spec), weights, half=True)
        facts = {**facts, "command": command + " --models mil", "trained_on": _machine()}
        write_card(out, MIL_NAME, "mil", weights.name, spec, facts, metrics)
        self.stdout.write(self.style.SUCCESS(f"Wrote {weights} ({weights.stat().st_size:,} B)"))

    def _detection(self, recipe, out, work, processes, command):
        torch.manual_seed(recipe.seed)
        trained = train_shipped_models(recipe, work, self.stdout.write, processes)

        detector = CenterNetDetector(trained.detector, trained.detector_spec)
        classifier = PhaseClassifier(trained.classifier, trained.classifier_spec)
        evaluation = report(
            evaluate_paths(recipe.test_paths(work, processes), detector, classifier),
            trained.detector_spec.score_threshold,
        )
        self.stdout.write(json.dumps(evaluation["detection"]))
        facts = {**trained.facts, "command": command, "trained_on": _machine()}
        for name, model, spec, task in (
            (DETECTOR_NAME, trained.detector, trained.detector_spec, "detector"),
            (CLASSIFIER_NAME, trained.classifier, trained.classifier_spec, "phase_classifier"),
        ):
            self._write(out, name, task, model, spec, facts, evaluation)

    def _phase(self, recipe, out, work, processes, command):
        torch.manual_seed(recipe.seed)
        classifier, spec, facts = train_shipped_classifier(
            recipe, work, self.stdout.write, processes
        )
        shipped = f"{DETECTOR_NAME}-{SHIPPED_VERSIONS[DETECTOR_NAME]}"
        detector = load_detector(Path(settings.SHIPPED_MODELS) / f"{shipped}.pt")
        evaluation = report(
            evaluate_paths(
                recipe.test_paths(work, processes), detector, PhaseClassifier(classifier, spec)
            ),
            detector.spec.score_threshold,
        )
        self.stdout.write(f"phase accuracy {evaluation['phase_accuracy']}")
        facts = {**facts, "detector": shipped, "command": command, "trained_on": _machine()}
        self._write(out, CLASSIFIER_NAME, "phase_classifier", classifier, spec, facts, evaluation)

    def _write(self, out, name, task, model, spec, facts, metrics):
        weights = out / f"{name}-{SHIPPED_VERSIONS[name]}.pt"
        save_native(model, spec, weights, half=True)
        write_card(out, name, task, weights.name, spec.to_dict(), facts, metrics)
        self.stdout.write(self.style.SUCCESS(f"Wrote {weights} ({weights.stat().st_size:,} B)"))


def _machine() -> str:
    return f"{date.today()}, {platform.machine()} CPU, torch {torch.__version__}"
