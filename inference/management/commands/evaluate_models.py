"""Score the active models on held-out synthetic slides: MIDOG F1 and phase accuracy."""

import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.jobs import patch_readers, worker_device
from inference.registry import load_version
from inference.services import RunRefused, active_models
from inference.tools.evaluate import evaluate_paths, report
from inference.tools.train import Recipe


class Command(BaseCommand):
    help = (
        "Evaluate the active detector and phase classifier on synthetic slides with ground "
        "truth (default: held-out seeds never used in training); prints a table and JSON."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--slides", nargs="+", type=Path, help="ground-truth JSON files, slide beside each"
        )
        parser.add_argument("--json-out", type=Path, help="default: var/evaluation.json")
        parser.add_argument(
            "--workers", type=int, help="reader processes (default: as an AI run here reads)"
        )
        parser.add_argument(
            "--record",
            action="store_true",
            help="write the figures into the shipped models' cards (models/*.json)",
        )

    def handle(self, *args, slides, json_out, workers, record, **options):
        try:
            detector, classifier = active_models()
        except RunRefused as refusal:
            raise CommandError(str(refusal)) from None
        paths = (
            [self._slide_for(p) for p in slides]
            if slides
            else Recipe().test_paths(Path(settings.VAR_DIR) / "train")
        )
        device = worker_device()
        if workers is None:
            workers = patch_readers(device)
        evaluations = evaluate_paths(
            paths,
            load_version(detector),
            load_version(classifier),
            num_workers=workers,
            device=str(device),
        )
        result = report(evaluations, detector.spec["score_threshold"])
        result["models"] = {"detector": str(detector), "phase_classifier": str(classifier)}
        self._table(result)
        out = json_out or Path(settings.VAR_DIR) / "evaluation.json"
        out.write_text(json.dumps(result, indent=1))
        self.stdout.write(json.dumps({k: result[k] for k in ("detection", "phase_accuracy")}))
        self.stdout.write(f"Saved {out}")
        if record:
            for version in (detector, classifier):
                card = Path(settings.SHIPPED_MODELS) / f"{version.name}-{version.version}.json"
                data = json.loads(card.read_text())
                data["metrics"] = result
                card.write_text(json.dumps(data, indent=1) + "\n")
                self.stdout.write(f"Recorded in {card}")

    def _slide_for(self, truth: Path) -> Path:
        for suffix in (".tiff", ".tif", ".svs"):
            if truth.with_suffix(suffix).exists():
                return truth.with_suffix(suffix)
        raise CommandError(f"No slide next to {truth}")

    def _table(self, result: dict) -> None:
        header = f"{'slide':<34} {'µm/px':>6} {'GT':>4} {'TP':>4} {'FP':>4} {'FN':>4} "
        self.stdout.write(header + f"{'prec':>6} {'recall':>6} {'F1':>6} {'phase':>6}")
        rows = result["slides"] + [
            {
                "slide": "all",
                "mpp": "",
                "mitoses": sum(s["mitoses"] for s in result["slides"]),
                **result["detection"],
                "phase_accuracy": result["phase_accuracy"],
            }
        ]
        for r in rows:
            self.stdout.write(
                f"{r['slide']:<34} {r['mpp']!s:>6} {r['mitoses']:>4} {r['tp']:>4} {r['fp']:>4} "
                f"{r['fn']:>4} {r['precision']:>6.3f} {r['recall']:>6.3f} {r['f1']:>6.3f} "
                f"{r['phase_accuracy']:>6.3f}"
            )
        self.stdout.write("\nPhase confusion (rows: truth, columns: predicted)")
        for truth, row in result["phase_confusion"].items():
            self.stdout.write(f"  {truth:<10} " + " ".join(f"{k[:5]}={v}" for k, v in row.items()))
