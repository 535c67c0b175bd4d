"""Learning from review on a domain the shipped models have not seen (issue 16).

    .venv/bin/python benchmarks/learning.py [--n 2 5 10] [--size 8000x8000]
        [--work DIR] [--holdout-fraction 0.2] [--json-out results.json]

In a throwaway var/ (``MITOLENS_VAR_DIR``; ``--work`` keeps it, and a rerun reuses its
slides and reviewed cases), through the management commands a lab would use:

1. the shipped models on held-out ``shifted`` slides (F1 before) and on held-out
   ``default`` slides of the same seeds (``evaluate_models``);
2. ``max(N)`` ``shifted`` slides, each its own case: ``import_slides``, ``run_inference
   --sync`` (real inference), ``simulate_review --sign-out`` (a perfect reader);
3. for each N (in the order given): the shipped models active, ``train_from_reviews
   --cases`` the first N cases ``--sync --json`` (its fine-tuning wall time), the two
   candidates activated (``activate_model``), ``evaluate_models`` on the same held-out
   slides of both domains (F1 after); then the shipped versions activated again.

Seeds: held-out 9501-9503, reviewed 9601-9610; the shipped models' cards name 1001-1060
(training), 8001-8003 (validation) and 9001-9005 (test); held-out slides are never
reviewed. Prints progress, a markdown table, and writes the results as JSON.
"""

import argparse
import datetime
import io
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.portal import setup_portal  # noqa: E402

HOLDOUT_SEEDS = (9501, 9502, 9503)
REVIEW_SEEDS = tuple(range(9601, 9611))
SHIPPED_SEEDS = (range(1001, 1061), range(8001, 8004), range(9001, 9006))
READER = "bench.reader"
MITOSES_PER_MM2 = 25.0
TUMOUR_FRACTION = 0.6


def say(message: str) -> None:
    """A timestamped progress line."""
    print(f"[{datetime.datetime.now():%H:%M:%S}] {message}", flush=True)


def make_slide(path: Path, seed: int, size: str, domain: str) -> Path:
    """A synthetic slide (and its ground truth beside it), unless it is already there."""
    from django.core.management import call_command

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        call_command(
            "synth_slide",
            str(path),
            f"--seed={seed}",
            f"--size={size}",
            f"--domain={domain}",
            f"--mitoses-per-mm2={MITOSES_PER_MM2}",
            f"--tumour-fraction={TUMOUR_FRACTION}",
            verbosity=0,
            stdout=io.StringIO(),
        )
    return path


def evaluate(truths: list[Path], out: Path) -> dict:
    """``evaluate_models`` of the active versions on the slides; its report."""
    from django.core.management import call_command

    with redirect_stderr(io.StringIO()):  # its progress bar
        call_command("evaluate_models", slides=truths, json_out=out, stdout=io.StringIO())
    return summarise(json.loads(out.read_text()))


def summarise(report: dict) -> dict:
    """Pooled detection, phase accuracy, models and per-slide rows of an evaluation."""
    return {
        **report["detection"],
        "phase_accuracy": report["phase_accuracy"],
        "models": report["models"],
        "slides": [
            {k: s[k] for k in ("slide", "mitoses", "tp", "fp", "fn", "f1")}
            for s in report["slides"]
        ],
    }


def evaluate_both(
    slides: dict[str, list[Path]], out_dir: Path, label: str, reuse: bool = False
) -> dict:
    """Both held-out domains scored with the active versions (``reuse``: an earlier run's
    report in the same work dir of the same slides and models is read, not remade)."""
    result = {}
    for domain, paths in slides.items():
        start = time.perf_counter()
        truths = [p.with_suffix(".json") for p in paths]
        out = out_dir / f"eval-{label}-{domain}.json"
        if reuse and out.exists():
            result[domain] = summarise(json.loads(out.read_text()))
            result[domain]["reused"] = True
        else:
            result[domain] = evaluate(truths, out)
        say(
            f"{label}, held-out {domain}: F1 {result[domain]['f1']:.3f} (TP "
            f"{result[domain]['tp']} FP {result[domain]['fp']} FN {result[domain]['fn']}), "
            f"phase accuracy {result[domain]['phase_accuracy']:.3f} "
            f"[{time.perf_counter() - start:.0f} s]"
        )
    return result


def reader():
    """The pathologist who reviews every benchmark case."""
    from django.contrib.auth.models import Group, User

    from cases.groups import PATHOLOGIST

    user, _ = User.objects.get_or_create(username=READER)
    user.groups.add(Group.objects.get(name=PATHOLOGIST))
    return user


def review_case(seed: int, path: Path, user) -> dict:
    """Import the slide as its own case, run the AI on it and review it as a perfect reader
    would, signing out (skipped when the case is already signed out)."""
    from django.core.management import call_command

    from cases.models import Case, CaseAssignment

    accession = f"LRN-{seed}"
    case = Case.objects.filter(accession=accession).first()
    if case is not None and case.status == Case.Status.SIGNED_OUT:
        return {"case": accession, "reused": True}
    if case is None:
        call_command(
            "import_slides", str(path), case=accession, patient=f"P-{seed}", stdout=io.StringIO()
        )
        case = Case.objects.get(accession=accession)
    CaseAssignment.objects.get_or_create(case=case, pathologist=user)
    slide = case.slides.get()
    start = time.perf_counter()
    with redirect_stderr(io.StringIO()):  # the run's progress bar
        call_command("run_inference", slide=slide.pk, sync=True, stdout=io.StringIO())
    inference_s = time.perf_counter() - start
    out = io.StringIO()
    call_command(
        "simulate_review",
        slide=slide.pk,
        truth=path.with_suffix(".json"),
        reviewer=READER,
        sign_out=True,
        as_json=True,
        stdout=out,
    )
    summary = json.loads(out.getvalue())
    return {"case": accession, "inference_s": round(inference_s, 1), **summary}


def activate(versions: list[tuple[str, str]]) -> None:
    """``activate_model`` each (name, version)."""
    from django.core.management import call_command

    for name, version in versions:
        call_command("activate_model", name, version, stdout=io.StringIO())


def train(cases: list[str], holdout_fraction: float, quick: bool) -> dict:
    """``train_from_reviews --cases ... --sync --json``, timed; its JSON and the run's facts."""
    from django.core.management import call_command

    from inference.models import TrainingRun

    out, log = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    call_command(
        "train_from_reviews",
        cases=cases,
        holdout_fraction=holdout_fraction,
        sync=True,
        json=True,
        quick=quick,
        stdout=out,
        stderr=log,
    )
    seconds = time.perf_counter() - start
    result = json.loads(out.getvalue())
    run = TrainingRun.objects.get(pk=result["training_run"])
    facts = run.result["facts"]
    lines = [line.strip() for line in log.getvalue().splitlines() if "%" not in line]
    return {
        "wall_s": round(seconds, 1),
        "stage_s": facts["seconds"],
        "detector_patches": facts["detector_patches"],
        "classifier_crops": facts["classifier_crops"],
        "settings": facts["settings"],
        "cases": result["cases"],
        "counts": result["counts"],
        "run_metrics": result["metrics"],
        "candidates": [(c["name"], c["version"]) for c in result["candidates"]],
        "log": lines,
    }


def machine() -> str:
    """CPU, cores, torch and its threads."""
    import torch

    cpu = cpu_model()
    return (
        f"{platform.node()}, {os.cpu_count()} cores, {cpu}; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; device {os.environ.get('INFERENCE_DEVICE') or 'auto'}"
    )


def check_seeds() -> None:
    """Held-out and reviewed seeds: disjoint, and none the shipped models saw."""
    used = {s for r in SHIPPED_SEEDS for s in r}
    assert not used & (set(HOLDOUT_SEEDS) | set(REVIEW_SEEDS)), "a shipped model's seed"
    assert not set(HOLDOUT_SEEDS) & set(REVIEW_SEEDS), "a held-out slide would be reviewed"


def table(results: dict) -> str:
    """The markdown table of the run."""
    before = results["before"]
    rows = [
        "| N reviewed (train / held-out cases) | shifted F1 before → after | shifted P / R after "
        "| default F1 before → after | phase accuracy shifted after | fine-tune wall time |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in sorted(results["runs"].items(), key=lambda item: int(item[0])):
        t, a = r["training"], r["after"]
        rows.append(
            f"| {n} ({len(t['cases']['train'])} / {len(t['cases']['holdout'])}) | "
            f"{before['shifted']['f1']:.3f} → **{a['shifted']['f1']:.3f}** | "
            f"{a['shifted']['precision']:.3f} / {a['shifted']['recall']:.3f} | "
            f"{before['default']['f1']:.3f} → {a['default']['f1']:.3f} | "
            f"{a['shifted']['phase_accuracy']:.3f} | {t['wall_s'] / 60:.1f} min |"
        )
    return "\n".join(rows)


def run(args, var: Path) -> dict:
    """The whole benchmark in the var dir ``var`` (Django set up here)."""
    setup_portal(var)
    from inference.models import ModelVersion
    from inference.registry import register_shipped_models

    register_shipped_models()
    shipped = [
        (v.name, v.version) for v in ModelVersion.objects.filter(is_active=True).order_by("task")
    ]
    results = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="minutes"),
        "machine": machine(),
        "size": args.size,
        "holdout_seeds": HOLDOUT_SEEDS,
        "review_seeds": REVIEW_SEEDS[: max(args.n)],
        "holdout_fraction": args.holdout_fraction,
        "shipped": shipped,
        "runs": {},
    }
    say(f"Machine: {results['machine']}; shipped models {shipped}")
    heldout = {
        domain: [
            make_slide(var / "heldout" / f"{domain}-{s}.tiff", s, args.size, domain)
            for s in HOLDOUT_SEEDS
        ]
        for domain in ("shifted", "default")
    }
    say(f"Held-out slides ready: seeds {HOLDOUT_SEEDS}, both domains, {args.size} px")
    activate(shipped)
    results["before"] = evaluate_both(heldout, var, "shipped", reuse=True)
    user = reader()
    results["reviews"] = []
    for seed in REVIEW_SEEDS[: max(args.n)]:
        path = make_slide(var / "import" / f"shifted-{seed}.tiff", seed, args.size, "shifted")
        review = review_case(seed, path, user)
        results["reviews"].append(review)
        say(f"Reviewed {review['case']}: {json.dumps(review)}")
    for n in args.n:
        cases = [f"LRN-{s}" for s in REVIEW_SEEDS[:n]]
        activate(shipped)
        say(f"N={n}: train_from_reviews --cases {' '.join(cases)} --sync --json")
        training = train(cases, args.holdout_fraction, args.quick)
        say(
            f"N={n}: fine-tuned in {training['wall_s']:.0f} s {training['stage_s']}; training "
            f"cases {training['cases']['train']}, held-out {training['cases']['holdout']}; "
            f"run metrics {json.dumps(training['run_metrics'])}"
        )
        activate(training["candidates"])
        after = evaluate_both(heldout, var, f"n{n}")
        results["runs"][str(n)] = {"training": training, "after": after}
        activate(shipped)
        if args.json_out:
            args.json_out.write_text(json.dumps(results, indent=1))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--n", type=int, nargs="+", default=[2, 5, 10], help="reviewed slides, in this order"
    )
    parser.add_argument("--size", default="8000x8000", help="WIDTHxHEIGHT of every slide")
    parser.add_argument("--holdout-fraction", type=float, default=0.2)
    parser.add_argument("--work", type=Path, help="keep the var dir here (reused if present)")
    parser.add_argument("--json-out", type=Path, help="default: learning.json in the var dir")
    parser.add_argument(
        "--quick", action="store_true", help="train_from_reviews --quick: checks the script only"
    )
    args = parser.parse_args()
    if not args.n or max(args.n) > len(REVIEW_SEEDS) or min(args.n) < 2:
        parser.error(f"--n values must be between 2 and {len(REVIEW_SEEDS)}")
    check_seeds()
    with tempfile.TemporaryDirectory(prefix="mitolens-learning-") as tmp:
        var = (args.work or Path(tmp)).resolve()
        var.mkdir(parents=True, exist_ok=True)
        args.json_out = args.json_out or var / "learning.json"
        results = run(args, var)
        args.json_out.write_text(json.dumps(results, indent=1))
        print(f"\nDate: {results['date']}; machine: {results['machine']}")
        print(
            f"Slides {args.size} px, {MITOSES_PER_MM2:g} mitoses/mm² of tumour, tumour "
            f"fraction {TUMOUR_FRACTION}; held-out seeds {HOLDOUT_SEEDS}\n"
        )
        print(table(results))
        print(f"\nSaved {args.json_out}")


if __name__ == "__main__":
    main()
