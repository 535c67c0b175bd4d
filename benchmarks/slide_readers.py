"""Slide readers side by side: OpenSlide (the anchor, its real defaults), MitoLens's
TiledTiffSlide and tiffslide (a maintained tifffile-based OpenSlide drop-in).

Two workloads a portal runs all day, each from a freshly opened reader (cold tile cache):
- Deep Zoom: DeepZoomGenerator(reader).get_tile for every tile of the four highest-resolution
  levels (what the tile server and the pre-render job do);
- patches: 320 x 320 px read_region at level 0 over the whole slide (what an AI run does).
Readers alternate round by round and medians are reported. Every tile and patch is also
compared with OpenSlide's pixels (RGB; fully opaque slides).

    python benchmarks/slide_readers.py [--slide S.tiff] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import openslide
import tifffile
import tiffslide
from openslide.deepzoom import DeepZoomGenerator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slides.tiled_tiff import TiledTiffSlide  # noqa: E402


class TiffSlideRGBA(tiffslide.TiffSlide):
    """tiffslide's read_region answers RGB; OpenSlide's DeepZoomGenerator needs OpenSlide's
    RGBA (tiffslide's own deepzoom module serves native tiles, not this tile grid)."""

    def read_region(self, location, level, size, *args, **kwargs):
        return super().read_region(location, level, size, *args, **kwargs).convert("RGBA")


ANCHOR = "OpenSlide (anchor)"
READERS: dict[str, Callable[[Path], object]] = {
    ANCHOR: lambda path: openslide.OpenSlide(path),
    "TiledTiffSlide": lambda path: TiledTiffSlide(path),
    "tiffslide": lambda path: TiffSlideRGBA(path),
}
PATCH_PX = 320


def deepzoom_tiles(reader) -> Iterator[np.ndarray]:
    deepzoom = DeepZoomGenerator(reader, tile_size=254, overlap=1, limit_bounds=False)
    for level in range(deepzoom.level_count - 4, deepzoom.level_count):
        cols, rows = deepzoom.level_tiles[level]
        for row in range(rows):
            for col in range(cols):
                yield np.asarray(deepzoom.get_tile(level, (col, row)))


def patches(reader) -> Iterator[np.ndarray]:
    width, height = reader.dimensions
    for y in range(0, height - PATCH_PX + 1, PATCH_PX):
        for x in range(0, width - PATCH_PX + 1, PATCH_PX):
            region = reader.read_region((x, y), 0, (PATCH_PX, PATCH_PX))
            yield np.asarray(region)[..., :3]


WORKLOADS = {"deep zoom tiles": deepzoom_tiles, "320 px patches": patches}


def timed(open_reader, path: Path, workload) -> tuple[float, int]:
    start = time.perf_counter()
    reader = open_reader(path)
    count = sum(1 for _ in workload(reader))
    reader.close()
    return time.perf_counter() - start, count


def identity(path: Path, workload) -> dict[str, tuple[int, int, int]]:
    """Per reader but the anchor: (outputs equal to OpenSlide's, outputs, largest difference)."""
    readers = {name: open_reader(path) for name, open_reader in READERS.items()}
    names = [name for name in readers if name != ANCHOR]
    same, worst, total = dict.fromkeys(names, 0), dict.fromkeys(names, 0), 0
    for want, *got in zip(*(workload(reader) for reader in readers.values()), strict=True):
        total += 1
        for name, pixels in zip(names, got, strict=True):
            diff = int(np.abs(want.astype(np.int16) - pixels.astype(np.int16)).max())
            same[name] += diff == 0
            worst[name] = max(worst[name], diff)
    for reader in readers.values():
        reader.close()
    return {name: (same[name], total, worst[name]) for name in names}


def make_slide(path: Path) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "synth_slide", str(path), "--seed", "4242"]
        + ["--size", "16000x12000", "--mpp", "0.25"],
        cwd=ROOT,
        check=True,
    )


def report(label: str, count: int, seconds: dict[str, list[float]], same: dict) -> None:
    """One table row per reader: medians, spread, speed-up over OpenSlide, pixel identity."""
    anchor = statistics.median(seconds[ANCHOR])
    print(f"\n{label}: {count} per run")
    print(
        f"{'reader':<20}{'median s':>10}{'runs s':>15}{'per item ms':>13}{'vs OpenSlide':>14}"
        "  identical to OpenSlide"
    )
    for name, times in seconds.items():
        median = statistics.median(times)
        spread = f"{min(times):.2f}-{max(times):.2f}"
        if name == ANCHOR:
            identical = "(the reference)"
        else:
            equal, total, worst = same[name]
            identical = f"{equal}/{total}, max diff {worst}"
        print(
            f"{name:<20}{median:>10.2f}{spread:>15}{1000 * median / count:>13.2f}"
            f"{anchor / median:>13.2f}x  {identical}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, default=Path("/tmp/mitolens-bench/readers.tiff"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    if not args.slide.exists():
        args.slide.parent.mkdir(parents=True, exist_ok=True)
        make_slide(args.slide)
    with openslide.OpenSlide(args.slide) as slide:
        width, height = slide.dimensions
    print(
        f"{args.slide.name}: {width}x{height} px; Python {platform.python_version()},"
        f" OpenSlide {openslide.__library_version__}, tiffslide {tiffslide.__version__},"
        f" tifffile {tifffile.__version__}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    names = list(READERS)
    for label, workload in WORKLOADS.items():
        seconds: dict[str, list[float]] = {name: [] for name in names}
        for round_ in range(args.repeat):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                elapsed, count = timed(READERS[name], args.slide, workload)
                seconds[name].append(elapsed)
        report(label, count, seconds, identity(args.slide, workload))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
