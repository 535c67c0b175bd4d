"""Server time of the pages pathologists live in, at scale: 1,000 cases in the queue and
10,000 findings on one slide.

    .venv/bin/python benchmarks/pages.py [--cases 1000] [--findings 10000]

Uses a fresh SQLite database under a temporary var/ (or DATABASE_URL), one synthetic
slide, production settings (DEBUG=0) and Django's test client in process, so the figures
are server time only (no network, no browser). Prints the first request's ms (nothing
cached yet), the median and p95 ms over the next 30, and query counts; removes its
temporary folder.
"""

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.portal import bench_user, setup_portal  # noqa: E402


def setup(cases: int, findings: int):
    import numpy as np
    from django.core.management import call_command
    from django.utils import timezone

    from cases.models import Case, CaseAssignment, Patient
    from cases.registration import register_slide
    from inference.hpf import compute_ai_map
    from inference.models import Finding, InferenceRun, ModelVersion
    from inference.tools.synth import generate_slide

    call_command("collectstatic", interactive=False, verbosity=0)  # as production serves
    user = bench_user("reader", "pathologist")
    patient = Patient.objects.create(external_ref="BENCH")
    made = Case.objects.bulk_create(
        Case(accession=f"B-{i:05d}", patient=patient, priority=1 + i % 3) for i in range(cases)
    )
    CaseAssignment.objects.bulk_create(CaseAssignment(case=c, pathologist=user) for c in made)
    import_dir = Path(os.environ["SLIDE_IMPORT_DIRS"])
    import_dir.mkdir(parents=True, exist_ok=True)
    path = import_dir / "bench.tiff"
    generate_slide(path, seed=5, size=(20000, 15000), mpp=0.25)
    slide = register_slide(path, made[0], "bench.tiff")
    spec = {"score_threshold": 0.5, "patch_px": 320, "target_mpp": 0.25}
    detector = ModelVersion.objects.create(
        name="d",
        version="1",
        task="detector",
        weights="d",
        sha256="d" * 64,
        spec=spec,
        is_active=True,
    )
    classifier = ModelVersion.objects.create(
        name="c",
        version="1",
        task="phase_classifier",
        weights="c",
        sha256="c" * 64,
        spec={},
        is_active=True,
    )
    run = InferenceRun.objects.create(
        slide=slide,
        detector=detector,
        classifier=classifier,
        status="succeeded",
        finished_at=timezone.now(),
        counts={"findings": findings, "to_review": findings},
    )
    rng = np.random.default_rng(0)
    xy = rng.uniform([0, 0], [20000, 15000], (findings, 2))
    phases = ["prophase", "metaphase", "anaphase", "telophase"]
    Finding.objects.bulk_create(
        (
            Finding(
                slide=slide,
                run=run,
                x=x,
                y=y,
                box_x0=x - 20,
                box_y0=y - 20,
                box_x1=x + 20,
                box_y1=y + 20,
                score=float(s),
                phase=phases[i % 4],
                phase_probs={},
            )
            for i, ((x, y), s) in enumerate(zip(xy, rng.uniform(0.5, 1, findings), strict=True))
        ),
        batch_size=2000,
    )
    compute_ai_map(run)  # the run's job ends with its HPF map
    return user, slide


def timed(client, url, repeats=30):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    start = time.perf_counter()
    client.get(url)  # the first request: nothing of this page cached yet
    first = (time.perf_counter() - start) * 1000
    times = []
    for _ in range(repeats):
        with CaptureQueriesContext(connection) as queries:
            start = time.perf_counter()
            response = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, (url, response.status_code)
    times.sort()
    return first, statistics.median(times), times[int(0.95 * (len(times) - 1))], len(queries)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--findings", type=int, default=10000)
    args = parser.parse_args()
    var = Path(tempfile.mkdtemp(prefix="mitolens-bench-"))
    setup_portal(var, DATABASE_URL=os.environ.get("DATABASE_URL", ""))  # empty: SQLite
    user, slide = setup(args.cases, args.findings)
    from django.test import Client

    client = Client()
    client.force_login(user)
    pages = [
        (f"case queue `/` (50 of {args.cases:,} cases)", "/"),
        ("viewer page `/slides/<id>/`", f"/slides/{slide.pk}/"),
        (f"findings for the viewer ({args.findings:,}, JSON)", f"/slides/{slide.pk}/findings.json"),
        ("review state (JSON)", f"/slides/{slide.pk}/review.json"),
        ("case page", f"/cases/{slide.case_id}/"),
    ]
    from django.db import connection

    print(
        f"Machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}; "
        f"Python {platform.python_version()}; database {connection.vendor}"
    )
    print(
        f"Date: {datetime.date.today()}; {args.cases} cases assigned to the reader, "
        f"{args.findings} findings on one slide"
    )
    print("\n| page | first ms | median ms | p95 ms | queries |")
    print("|---|---|---|---|---|")
    for name, url in pages:
        first, median, p95, queries = timed(client, url)
        print(f"| {name} | {first:.1f} | {median:.1f} | {p95:.1f} | {queries} |")
    shutil.rmtree(var)


if __name__ == "__main__":
    main()
