"""Fine-tune candidate models on the decisions of signed-out cases (see review.learning)."""

import json

from django.core.management.base import BaseCommand, CommandError

from inference.learning import TrainingRefused, execute_training
from inference.models import TrainingRun
from review.learning import DEFAULT_HOLDOUT_FRACTION, start_from_reviews


class Command(BaseCommand):
    help = (
        "Fine-tune the active detector and phase classifier on signed-out cases' decisions, "
        "evaluate both versions on held-out cases and register the candidates (inactive). "
        "Queued on the 'training' queue unless --sync."
    )

    def add_arguments(self, parser):
        parser.add_argument("--cases", nargs="+", metavar="ACC", help="default: all signed out")
        parser.add_argument(
            "--holdout-fraction", type=float, default=DEFAULT_HOLDOUT_FRACTION, metavar="F"
        )
        parser.add_argument("--sync", action="store_true", help="train here and wait")
        parser.add_argument("--json", action="store_true", help="print the result as JSON")
        parser.add_argument("--quick", action="store_true", help="a few steps, to check the loop")

    def handle(self, *args, cases, holdout_fraction, sync, json: bool, quick, **options):
        try:
            run = start_from_reviews(
                None, cases, holdout_fraction, quick=quick, enqueue_job=not sync
            )
        except TrainingRefused as refusal:
            raise CommandError(str(refusal)) from None
        counts = run.dataset["counts"]
        self._say(
            json,
            f"Training run {run.pk}: {counts['train']['mitoses']} mitoses and "
            f"{counts['train']['hard_negatives']} hard negatives in "
            f"{len(run.dataset['cases']['train'])} training case(s); evaluating on "
            f"{', '.join(run.dataset['cases']['holdout'])}.",
        )
        if not sync:
            self._print(json, run, f"Queued on the 'training' queue as job {run.job_id}.")
            return
        try:
            execute_training(
                run.pk,
                echo=lambda stage, percent: self._say(json, f"  {stage:<10} {percent:>3} %"),
                log_line=lambda line: self._say(json, f"  {line}"),
            )
        except Exception as error:
            raise CommandError(f"Training run {run.pk} failed: {error}") from None
        run.refresh_from_db()
        if run.status != TrainingRun.Status.SUCCEEDED:
            raise CommandError(f"Training run {run.pk} {run.status}: {run.error}")
        self._print(json, run, self._table(run))

    def _say(self, as_json: bool, line: str) -> None:
        (self.stderr if as_json else self.stdout).write(line)

    def _print(self, as_json: bool, run: TrainingRun, text: str) -> None:
        if not as_json:
            self.stdout.write(text)
            return
        result = run.result or {}
        self.stdout.write(
            json.dumps(
                {
                    "training_run": run.pk,
                    "status": run.status,
                    "candidates": [
                        {"name": c["name"], "version": c["version"], "task": c["task"]}
                        for c in result.get("candidates", [])
                    ],
                    "base": result.get("base", []),
                    "metrics": result.get("metrics", {}),
                    "cases": run.dataset["cases"],
                    "counts": run.dataset["counts"],
                },
                indent=1,
            )
        )

    def _table(self, run: TrainingRun) -> str:
        metrics = run.result["metrics"]
        lines = [f"{'held-out cases':<16} {'F1':>6} {'prec':>6} {'recall':>6} {'phase':>6}"]
        names = {
            key: " + ".join(f"{v['name']} {v['version']}" for v in run.result[field])
            for key, field in (("active", "base"), ("candidate", "candidates"))
        }
        for key in ("active", "candidate"):
            m = metrics[key]
            lines.append(
                f"{key:<16} {m['f1']:>6.3f} {m['precision']:>6.3f} {m['recall']:>6.3f} "
                f"{m['phase_accuracy']:>6.3f}   ({names[key]})"
            )
        for c in run.result["candidates"]:
            lines.append(f"Registered {c['name']} {c['version']} (inactive).")
        lines.append(
            "Promote with: "
            + "; ".join(
                f"manage.py activate_model {c['name']} {c['version']}"
                for c in run.result["candidates"]
            )
        )
        return "\n".join(lines)
