"""Patch grid over the tissue at the model's µm/px, and a DataLoader that reads it."""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass
from os import PathLike

import numpy as np
import torch
from numpy.typing import NDArray
from torch.utils.data import DataLoader, Dataset

from slides import Scale, TiledTiffSlide, open_slide, read_region

from .tissue import TissueMask

UNSCALED = Scale(1.0, 1.0)


@dataclass(frozen=True)
class PatchGrid:
    """Level-0 origins of the patches to read, each ``patch_px`` output px at ``scale``."""

    origins: NDArray[np.int64]
    patch_px: int
    scale: Scale
    total: int

    def __len__(self) -> int:
        return len(self.origins)


def _axis_starts(length: int, patch_l0: float, step_l0: float) -> NDArray[np.int64]:
    count = max(1, math.ceil((length - patch_l0) / step_l0) + 1)
    return np.round(np.arange(count) * step_l0).astype(np.int64)


def patch_grid(
    dimensions: tuple[int, int],
    scale: Scale,
    *,
    patch_px: int = 320,
    overlap: int = 64,
    tissue: TissueMask | None = None,
    min_tissue: float = 0.02,
) -> PatchGrid:
    """A row-major grid of ``patch_px`` patches overlapping by ``overlap`` output px.

    The grid covers the whole level-0 ``dimensions`` (edge patches may run past the
    slide and read white). With ``tissue``, only patches whose tissue fraction is at
    least ``min_tissue`` are kept; ``total`` counts the full grid.
    """
    if not 0 <= overlap < patch_px:
        raise ValueError(f"overlap must be in [0, {patch_px}), got {overlap}")
    step = patch_px - overlap
    xs = _axis_starts(dimensions[0], patch_px * scale.x, step * scale.x)
    ys = _axis_starts(dimensions[1], patch_px * scale.y, step * scale.y)
    gx, gy = np.meshgrid(xs, ys)
    origins = np.stack([gx.ravel(), gy.ravel()], axis=1)
    total = len(origins)
    if tissue is not None:
        fraction = tissue.fraction(
            origins[:, 0], origins[:, 1], patch_px * scale.x, patch_px * scale.y
        )
        origins = origins[fraction >= min_tissue]
    return PatchGrid(origins, patch_px, scale, total)


class PatchDataset(Dataset):
    """Reads patches of a slide; each process opens its own slide handle lazily.

    Items are ``(image, origin)``: a uint8 HWC RGB tensor of ``patch_px`` squared (kept
    as uint8 and HWC so workers move a quarter of the bytes and batch them with a plain
    copy; :func:`model_input` makes network input of a batch) and the patch's level-0
    origin as an int64 tensor ``(x, y)``.
    """

    def __init__(
        self,
        slide_path: str | PathLike[str],
        origins: NDArray[np.int64],
        patch_px: int,
        scale: Scale,
    ) -> None:
        self.slide_path = str(slide_path)
        self.origins = np.asarray(origins, dtype=np.int64).reshape(-1, 2)
        self.patch_px = patch_px
        self.scale = scale
        self._slide: TiledTiffSlide | None = None
        self._pid: int | None = None

    @classmethod
    def from_grid(cls, slide_path: str | PathLike[str], grid: PatchGrid) -> PatchDataset:
        """Dataset over the patches of ``grid``."""
        return cls(slide_path, grid.origins, grid.patch_px, grid.scale)

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (int(v) for v in self.origins[index])
        slide, size = self._handle(), (self.patch_px, self.patch_px)
        # level-0 pixels as they are: straight from the tiles when it can, no PIL round trip
        image = slide.read_rgb((x, y), 0, size) if self.scale == UNSCALED else None
        if image is None:
            image = np.array(read_region(slide, (x, y), size, self.scale))
        return torch.from_numpy(image), torch.from_numpy(self.origins[index].copy())

    def _handle(self) -> TiledTiffSlide:
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(self.slide_path)
            self._pid = os.getpid()
        return self._slide

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_slide"] = state["_pid"] = None
        return state

    def close(self) -> None:
        """Close this process's slide handle, if open."""
        if self._slide is not None:
            self._slide.close()
            self._slide = None


def model_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch of dataset images ``(N, H, W, 3)`` uint8 as network input: ``(N, 3, H, W)``
    float in [0, 1] on ``device`` (moved as uint8, converted there in one pass)."""
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2)
    return images.to(torch.float32, memory_format=torch.contiguous_format).div_(255)


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    num_workers: int,
    device: torch.device,
    prefetch_factor: int = 4,
) -> DataLoader:
    """A DataLoader that reads/decodes in ``num_workers`` processes, each worker reading
    one contiguous share of the (row-major) dataset so that neighbouring patches, which
    share source tiles, are read by the same process (see :func:`sharded_batches`).

    Memory is pinned when the batches go to CUDA, so host-to-device copies can be
    non-blocking and overlap compute.
    """
    return DataLoader(
        dataset,
        batch_sampler=sharded_batches(len(dataset), batch_size, max(num_workers, 1)),
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=prefetch_factor if num_workers else None,
        persistent_workers=False,
        worker_init_fn=_lower_priority,
    )


def sharded_batches(length: int, batch_size: int, shares: int) -> list[list[int]]:
    """Batches of indices ``0..length-1``, the range cut into ``shares`` contiguous shares,
    interleaved so that batch ``i`` comes from share ``i % shares`` (a DataLoader hands
    batch ``i`` to worker ``i % num_workers``)."""
    bounds = np.linspace(0, length, shares + 1).round().astype(int)
    per_share = [
        [list(range(i, min(i + batch_size, end))) for i in range(start, end, batch_size)]
        for start, end in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return [batch for row in itertools.zip_longest(*per_share) for batch in row if batch]


def _lower_priority(worker_id: int) -> None:
    """Readers yield the CPU to the model: on a CPU run, a reader preempting one of the
    model's threads stalls every thread of that operation."""
    os.nice(10)
