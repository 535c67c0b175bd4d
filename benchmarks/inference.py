"""Whole-slide inference speed: end to end vs the model's pure compute vs a naive loop.

    .venv/bin/python benchmarks/inference.py [--size 16000x12000] [--device cpu|cuda]
        [--workers 2] [--repeat 3] [--slide PATH] [--skip-naive] [--job] [--forced-readers]

On one synthetic slide with the shipped models:
  end to end    run_slide: tissue mask, patches read while the detector runs (by as many
                DataLoader processes as the device leaves room for, at most --workers;
                on a CPU whose cores torch's threads use, by the model's process between
                batches), merge, phase classification of each detection.
  pure compute  the same tissue patches already in memory as tensors, only the detector
                (and the classifier on the same crops) run: the floor end to end can reach.
  naive loop    every patch of the grid (no tissue mask) read with plain OpenSlide one at a
                time, inferred one at a time, no overlap of reading and compute.
  RQ job       with --job: the same slide registered in a fresh portal (SQLite, embedded
                Redis, under a temp folder) and run as an AI run by a real RQ worker
                (``manage.py rqworker inference --burst``: forks a work horse per job, with
                the engine and the active models loaded before); its time is the job's
                started_at → ended_at as RQ records them (tissue, patches, models,
                classification, MIL, findings, HPF map: everything the lab waits for).
  forced        with --forced-readers: end to end with --workers reader processes
                whatever the device leaves room for (what a run did before it asked).
End to end, pure compute (and the job, and the forced readers) alternate ``--repeat``
times (this machine may be shared); prints a markdown table row per mode with the
medians, and the ratio of each to pure compute, pair by pair.
"""

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import openslide  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402
from benchmarks.portal import bench_case, bench_user, portal_env, setup_portal  # noqa: E402
from inference.engine.model_io import load_classifier, load_detector  # noqa: E402
from inference.engine.patches import PatchDataset, model_input, patch_grid  # noqa: E402
from inference.engine.pipeline import reader_processes, run_slide  # noqa: E402
from inference.engine.tissue import detect_tissue  # noqa: E402
from inference.tools.synth import generate_slide  # noqa: E402
from slides import Scale, open_slide, read_region, slide_mpp  # noqa: E402

MODELS = ROOT / "models"


def shipped(name: str) -> Path:
    return next(MODELS.glob(f"{name}-*.pt"))


def in_memory(slide_path, detector, classifier, crop_origins):
    """The tissue patches and the findings' crops as uint8 tensors held in memory."""
    with open_slide(slide_path) as slide:
        mpp = slide_mpp(slide)
        tissue = detect_tissue(slide)
        scale = Scale.between(mpp, detector.spec.target_mpp)
        grid = patch_grid(
            slide.dimensions, scale, patch_px=detector.spec.patch_px, overlap=64, tissue=tissue
        )
    dataset = PatchDataset.from_grid(slide_path, grid)
    patches = torch.stack([dataset[i][0] for i in range(len(dataset))])
    crops_set = PatchDataset(
        slide_path,
        crop_origins,
        classifier.spec.patch_px,
        Scale.between(mpp, classifier.spec.target_mpp),
    )
    crops = (
        torch.stack([crops_set[i][0] for i in range(len(crops_set))]) if len(crops_set) else None
    )
    return patches, crops


def pure_compute(patches, crops, detector, classifier, device, batch_size):
    """Seconds of detector + classifier compute on patches and crops held in memory."""
    detector.to(device)
    classifier.to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(patches), batch_size):
            detector(model_input(patches[i : i + batch_size], device), 0.5)
        if crops is not None:
            for i in range(0, len(crops), batch_size):
                classifier(model_input(crops[i : i + batch_size], device))
    sync()
    return time.perf_counter() - start


def naive(slide_path, detector, device):
    """Seconds for every grid patch read with plain OpenSlide and inferred one at a time,
    no tissue mask."""
    with openslide.OpenSlide(slide_path) as slide:
        scale = Scale.between(slide_mpp(slide), detector.spec.target_mpp)
        grid = patch_grid(slide.dimensions, scale, patch_px=detector.spec.patch_px, overlap=64)
        start = time.perf_counter()
        with torch.inference_mode():
            for x, y in grid.origins:
                image = np.array(read_region(slide, (x, y), (detector.spec.patch_px,) * 2, scale))
                tensor = torch.from_numpy(image).permute(2, 0, 1)[None].to(device).float() / 255
                detector(tensor, 0.5)
        return time.perf_counter() - start, len(grid)


class PortalJobs:
    """A fresh portal under ``work`` with ``slide_path`` registered, whose AI runs a real
    RQ worker executes (see the module docstring)."""

    def __init__(self, work: Path, slide_path: Path, device: torch.device, readers: int):
        settings = {
            "SLIDE_IMPORT_DIRS": str(slide_path.parent),
            "TILE_PRERENDER": "off",
            "INFERENCE_DEVICE": str(device),
            "INFERENCE_LOADER_WORKERS": str(readers),
        }
        self.env = {**os.environ, **portal_env(work, **settings)}
        setup_portal(work, **settings)
        from cases.registration import register_slide
        from inference.registry import register_shipped_models
        from portal import embedded_redis

        self.redis = embedded_redis.start()
        register_shipped_models()
        self.user = bench_user("bench-admin", "lab_admin")
        self.slide = register_slide(slide_path, bench_case(), slide_path.name)

    def run_once(self) -> tuple[float, dict]:
        """Queue an AI run, let a worker execute it; RQ's started → ended seconds and the
        run's own stage timings."""
        from rq.job import Job

        from inference.models import InferenceRun
        from inference.services import job_queue, start_run

        run = start_run(self.slide, self.user)
        subprocess.run(
            [sys.executable, "manage.py", "rqworker", "inference", "--burst"],
            cwd=ROOT,
            env=self.env,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        run.refresh_from_db()
        assert run.status == InferenceRun.Status.SUCCEEDED, run.error
        job = Job.fetch(run.job_id, connection=job_queue("inference").connection)
        return (job.ended_at - job.started_at).total_seconds(), run.timings

    def close(self) -> None:
        self.redis.terminate()
        self.redis.wait(timeout=10)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="16000x12000")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="the most reader processes")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--slide", type=Path, help="reuse this synthetic slide if it exists")
    parser.add_argument("--repeat", type=int, default=3, help="alternating runs; medians")
    parser.add_argument("--job", action="store_true", help="also time the RQ job")
    parser.add_argument(
        "--forced-readers", action="store_true", help="also time --workers readers, forced"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    readers = reader_processes(device, args.workers)
    width, height = (int(v) for v in args.size.split("x"))
    detector = load_detector(shipped("mitolens-detector"))
    classifier = load_classifier(shipped("mitolens-phase"))
    with tempfile.TemporaryDirectory() as tmp:
        slide_path = args.slide or Path(tmp) / "bench.tiff"
        if not slide_path.exists():
            generate_slide(slide_path, seed=4242, size=(width, height), mpp=0.25)
        result = run_slide(slide_path, detector, classifier, device=device, num_workers=0)
        half = classifier.spec.patch_px * 0.5
        origins = np.array(
            [[round(f["x"] - half), round(f["y"] - half)] for f in result.findings], np.int64
        ).reshape(-1, 2)
        patches, crops = in_memory(slide_path, detector, classifier, origins)
        jobs = (
            PortalJobs(Path(tmp) / "portal", slide_path, device, args.workers) if args.job else None
        )
        end_to_end, compute, stages, job_seconds, job_stages, forced = [], [], [], [], [], []
        for _ in tqdm(range(args.repeat), desc="alternating runs"):
            if jobs:
                seconds, timings = jobs.run_once()
                job_seconds.append(seconds)
                job_stages.append(timings)
            if args.forced_readers:
                start = time.perf_counter()
                run_slide(
                    slide_path,
                    detector,
                    classifier,
                    device=device,
                    batch_size=args.batch_size,
                    num_workers=args.workers,
                )
                forced.append(time.perf_counter() - start)
            start = time.perf_counter()
            result = run_slide(
                slide_path,
                detector,
                classifier,
                device=device,
                batch_size=args.batch_size,
                num_workers=readers,
            )
            end_to_end.append(time.perf_counter() - start)
            stages.append(result.stats["seconds"])
            compute.append(
                pure_compute(patches, crops, detector, classifier, device, args.batch_size)
            )
        stats = result.stats
        rows = [
            ("end to end (run_slide)", statistics.median(end_to_end), stats["patches_tissue"]),
            ("pure compute, patches in memory", statistics.median(compute), len(patches)),
        ]
        if forced:
            name = f"end to end, {args.workers} readers forced"
            rows.append((name, statistics.median(forced), stats["patches_tissue"]))
        if jobs:
            jobs.close()
            rows.append(("RQ job, started → ended", statistics.median(job_seconds), len(patches)))
        if not args.skip_naive:
            seconds, n = naive(slide_path, detector, device)
            rows.append(("naive loop, no tissue mask", seconds, n))
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    print(
        f"Machine: {platform.node()}, {os.cpu_count()} cores, {cpu} {gpu}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; device {device}"
    )
    print(
        f"Date: {datetime.date.today()}; slide {width} x {height} px at 0.25 µm/px; "
        f"{stats['patches_tissue']} of {stats['patches_total']} patches on tissue; "
        f"{len(result.findings)} findings; batch {args.batch_size}, {readers} reader processes "
        f"(at most {args.workers})"
    )
    print("\n| mode | patches | seconds | patches/s | slide minutes |")
    print("|---|---|---|---|---|")
    for name, seconds, n in rows:
        print(f"| {name} | {n} | {seconds:.1f} | {n / seconds:.1f} | {seconds / 60:.2f} |")
    for name, times in (
        ("End to end", end_to_end),
        ("RQ job", job_seconds),
        (f"End to end, {args.workers} readers forced", forced),
    ):
        if not times:
            continue
        ratios = sorted(e / c for e, c in zip(times, compute, strict=True))
        print(
            f"\n{name} / pure compute, median of {args.repeat} alternating pairs: "
            f"{statistics.median(ratios):.2f}x (each: {', '.join(f'{r:.2f}x' for r in ratios)})"
        )
    for seconds in stages:
        print(f"stage seconds: { {k: round(v, 2) for k, v in seconds.items()} }")
    for seconds, timings in zip(job_seconds, job_stages, strict=True):
        parts = ("total", "mil", "store", "hpf_map")  # run_slide's total, then the job's own
        rest = seconds - sum(timings.get(k, 0) for k in parts)
        print(f"job {seconds:.2f} s: run timings {timings}, not in them {rest:.2f} s")


if __name__ == "__main__":
    main()
