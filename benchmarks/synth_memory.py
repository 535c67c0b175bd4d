"""Time and memory of synthetic slide generation (default: 20,000 x 20,000 px).

    .venv/bin/python benchmarks/synth_memory.py [--size 20000x20000] [--seed 1] [--keep DIR]

Prints the machine, the command, and a markdown table row: wall time, throughput, peak
resident memory (``resource.getrusage``: the process high-water mark, interpreter and
libraries included) and the resident memory before generation, file size and counts.
``--tracemalloc`` also reports the peak of memory allocated through Python/NumPy (slower).
"""

import argparse
import datetime
import os
import platform
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.machine import cpu_model  # noqa: E402
from inference.tools import synth  # noqa: E402


def _rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _current_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def run(size: tuple[int, int], seed: int, mpp: float, out_dir: Path, trace: bool) -> dict:
    path = out_dir / f"synth-{size[0]}x{size[1]}-seed{seed}.tiff"
    before = _current_rss_mib()
    if trace:
        tracemalloc.start()
    start = time.perf_counter()
    gt = synth.generate_slide(path, seed, size, mpp=mpp)
    wall = time.perf_counter() - start
    traced = tracemalloc.get_traced_memory()[1] / 2**20 if trace else None
    return {
        "wall_s": wall,
        "mpx_s": size[0] * size[1] / 1e6 / wall,
        "peak_rss_mib": _rss_mib(),
        "rss_before_mib": before,
        "traced_peak_mib": traced,
        "file_mib": path.stat().st_size / 2**20,
        "levels": len(synth.level_shapes(*size)),
        "mitoses": len(gt["mitoses"]),
        "negatives": len(gt["hard_negatives"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="20000x20000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mpp", type=float, default=0.25)
    parser.add_argument("--keep", type=Path, help="write the slide here and keep it")
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    print(f"machine: {os.cpu_count()} CPU(s) (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}")
    print(f"python {platform.python_version()}, generator v{synth.GENERATOR_VERSION}")
    print(f"date: {datetime.date.today().isoformat()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        r = run(size, args.seed, args.mpp, args.keep, args.tracemalloc)
    else:
        with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
            r = run(size, args.seed, args.mpp, Path(tmp), args.tracemalloc)
    traced = f"{r['traced_peak_mib']:.0f}" if r["traced_peak_mib"] is not None else "-"
    print()
    print(
        "| size (px) | µm/px | wall time | Mpx/s | peak RSS | RSS before | traced peak "
        "| file | levels | mitoses | negatives |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {size[0]:,} × {size[1]:,} | {args.mpp} | {r['wall_s']:.0f} s | {r['mpx_s']:.1f} "
        f"| {r['peak_rss_mib']:.0f} MiB | {r['rss_before_mib']:.0f} MiB | {traced} MiB "
        f"| {r['file_mib']:.0f} MiB | {r['levels']} | {r['mitoses']} | {r['negatives']} |"
    )


if __name__ == "__main__":
    main()
