"""Algorithm 1's batches (``collate_samples``, a ``meta_learning.Batch``) from a dataset's samples.

Why apart from the datasets: the layouts (``training.datasets``) say where pairs and labels are;
this module says how Algorithm 1 sees them:

* fusion loss: a random ``crop_size`` (256) window of each pair, at the same place in both
  modalities; a side shorter than the crop is first padded at the bottom/right by mirroring
  the image (``numpy.pad(mode="symmetric")``), so the crop is the whole image plus a
  reflection, which adds no artificial edges to the gradient term;
* task loss: the whole image resized to the dataset's task size (H x W: MSRS 240x320,
  FMB 300x400, M3FD 192x256, LLVIP 256x320): ``INTER_AREA`` when shrinking, bilinear
  otherwise; label maps by exact nearest neighbour; boxes scaled by the same factors. The task
  size is kept as configured even where it is not a multiple of YOLOv8's stride 32 (240, 300,
  400): ``task_networks.DetectionTask`` pads its input to the stride and rescales the
  normalised targets itself;
* targets: segmentation (B, h, w) int64; detection ultralytics' dict (``batch_idx`` (N,),
  ``cls`` (N, 1), ``bboxes`` (N, 4) normalised cx, cy, w, h) from ``task_networks.yolo_targets``.

Determinism: crop positions come only from the generator passed to ``collate_samples``
(a ``torch.Generator`` or ``numpy.random.Generator``). ``EpochBatches`` derives batch k's
generator from (seed, keys..., k), so a resumed run rebuilds the same batches from its epoch
and step alone (and DataLoader workers stay deterministic). ``meta_subsets`` draws Algorithm 1's
two disjoint subsets from a generator as well.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from training.datasets import DatasetError, PairDataset, Sample, Task
from training.meta_learning import Batch
from training.task_networks import yolo_targets

__all__ = [
    "CROP_SIZE",
    "META_SUBSET_SIZE",
    "EpochBatches",
    "FusionBatch",
    "collate_samples",
    "derive_generator",
    "meta_subsets",
    "permutation",
    "random_crop",
    "resize_boxes",
    "resize_labels",
    "resize_plane",
]

Generator = torch.Generator | np.random.Generator

#: Side of the square fusion-loss crops (paper default).
CROP_SIZE = 256

#: Size M of each meta subset per epoch (paper default).
META_SUBSET_SIZE = 200


@dataclass
class FusionBatch(Batch):
    """``meta_learning.Batch`` plus what logging and evaluation want to know about it.

    ``names``: the samples' names. ``boxes``: detection only, per image (N, 5) float32 rows
    (class, x1, y1, x2, y2) in pixels of the task-size image (what ``targets`` encodes).
    """

    names: tuple[str, ...] = ()
    boxes: list[Tensor] | None = field(default=None)

    def to(self, device: torch.device | str) -> FusionBatch:
        """A copy with every tensor on ``device``."""
        def move(value: Any) -> Any:
            if isinstance(value, Tensor):
                return value.to(device)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            if isinstance(value, list):
                return [move(v) for v in value]
            return value

        return FusionBatch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})


def _randint(generator: Generator, high: int) -> int:
    """Uniform integer in [0, high); always one draw, so the stream does not depend on sizes."""
    if isinstance(generator, torch.Generator):
        return int(torch.randint(high, (1,), generator=generator))
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(high))
    raise TypeError(f"generator must be a torch.Generator or numpy Generator, got "
                    f"{type(generator).__name__}")


def permutation(n: int, generator: Generator) -> list[int]:
    """A random order of range(n) from a torch or numpy generator."""
    if isinstance(generator, torch.Generator):
        return torch.randperm(n, generator=generator).tolist()
    if isinstance(generator, np.random.Generator):
        return generator.permutation(n).tolist()
    raise TypeError(f"generator must be a torch.Generator or numpy Generator, got "
                    f"{type(generator).__name__}")


def random_crop(ir_y: np.ndarray, vis_y: np.ndarray, size: int, generator: Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """The same random ``size`` x ``size`` window of both planes.

    Sides shorter than ``size`` are mirrored out at the bottom/right first, so a small image
    is used whole.
    """
    if size < 1:
        raise ValueError(f"crop size must be positive, got {size}")
    h, w = ir_y.shape
    pad = ((0, max(size - h, 0)), (0, max(size - w, 0)))
    if pad[0][1] or pad[1][1]:
        ir_y, vis_y = np.pad(ir_y, pad, mode="symmetric"), np.pad(vis_y, pad, mode="symmetric")
        h, w = ir_y.shape
    top, left = _randint(generator, h - size + 1), _randint(generator, w - size + 1)
    window = (slice(top, top + size), slice(left, left + size))
    return ir_y[window], vis_y[window]


def resize_plane(plane: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Float plane to (height, width): area averaging when shrinking, bilinear otherwise."""
    h, w = size
    if plane.shape == (h, w):
        return plane
    shrink = h <= plane.shape[0] and w <= plane.shape[1]
    return cv2.resize(plane, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Class-id map to (height, width) by nearest neighbour at pixel centres (int64)."""
    h, w = size
    if labels.shape == (h, w):
        return labels.astype(np.int64, copy=False)
    small = labels.astype(np.uint16)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST_EXACT).astype(np.int64)


def resize_boxes(boxes: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]
                 ) -> np.ndarray:
    """Pixel boxes (class, x1, y1, x2, y2) of a from_size image in a to_size resize of it."""
    out = np.array(boxes, np.float32).reshape(-1, 5)
    out[:, 1::2] *= np.float32(to_size[1] / from_size[1])
    out[:, 2::2] *= np.float32(to_size[0] / from_size[0])
    return out


def _planes(arrays: list[np.ndarray]) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrays), np.float32))[:, None]


def collate_samples(samples: Sequence[Sample], generator: Generator, task: Task,
                    task_size: tuple[int, int], crop_size: int = CROP_SIZE) -> FusionBatch:
    """Algorithm 1's batch: fusion crops and task-size images with targets (module docstring).

    Crop windows are drawn from ``generator`` in sample order (top then left per sample).
    """
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    task_size = (int(task_size[0]), int(task_size[1]))
    ir_crops, vis_crops, ir_task, vis_task, targets = [], [], [], [], []
    for s in samples:
        if s.ir_y.shape != s.vis_y.shape:
            raise DatasetError(f"{s.name}: infrared and visible planes differ in size")
        ir_c, vis_c = random_crop(s.ir_y, s.vis_y, crop_size, generator)
        ir_crops.append(ir_c)
        vis_crops.append(vis_c)
        ir_task.append(resize_plane(s.ir_y, task_size))
        vis_task.append(resize_plane(s.vis_y, task_size))
        if task == "segmentation":
            targets.append(resize_labels(s.target, task_size))
        else:
            targets.append(resize_boxes(s.target, s.ir_y.shape, task_size))
    boxes = None
    if task == "segmentation":
        batch_targets: Any = torch.from_numpy(np.stack(targets))
    elif task == "detection":
        boxes = [torch.from_numpy(b) for b in targets]
        batch_targets = yolo_targets(boxes, task_size)
    else:
        raise ValueError(f"task must be 'segmentation' or 'detection', got {task!r}")
    return FusionBatch(ir_crop=_planes(ir_crops), vis_crop=_planes(vis_crops),
                       ir_task=_planes(ir_task), vis_task=_planes(vis_task),
                       targets=batch_targets, names=tuple(s.name for s in samples), boxes=boxes)


# --------------------------------------------------------------------------- sampling


def derive_generator(seed: int, *keys: int) -> torch.Generator:
    """An independent torch generator for (seed, keys...), e.g. (seed, epoch, phase, step).

    Built from ``numpy.random.SeedSequence`` so nearby keys give unrelated streams; nothing
    needs saving to rebuild it on resume.
    """
    words = np.random.SeedSequence([int(seed), *(int(k) for k in keys)]).generate_state(2)
    return torch.Generator().manual_seed((int(words[0]) << 32 | int(words[1])) & (2**63 - 1))


def meta_subsets(n: int, generator: Generator, size: int = META_SUBSET_SIZE
                 ) -> tuple[list[int], list[int]]:
    """Disjoint meta-train and meta-test index lists, each of ``size`` (M) samples.

    A dataset with fewer than 2M samples gives each subset n // 2 (one sample may stay out
    when n is odd); fewer than 2 samples is an error. Both are random orders of their indices.
    """
    if size < 1:
        raise ValueError(f"meta subset size must be positive, got {size}")
    if n < 2:
        raise ValueError(f"meta-learning needs at least 2 samples for two disjoint subsets, "
                         f"got {n}")
    k = min(size, n // 2)
    order = permutation(n, generator)
    return order[:k], order[k:2 * k]


class EpochBatches(Dataset):
    """Batches of ``indices`` in order, batch k cropped with ``derive_generator(seed, *keys, k)``.

    Item k is a whole ``FusionBatch``, so ``DataLoader(EpochBatches(...), batch_size=None,
    num_workers=n)`` loads in parallel and still deterministically. ``start`` skips the first
    batches: a run resumed at step s of an epoch uses ``start=s`` and sees the same batches
    as an uninterrupted one.
    """

    def __init__(self, dataset: PairDataset, indices: Sequence[int], batch_size: int, *,
                 seed: int, keys: Sequence[int] = (), crop_size: int = CROP_SIZE,
                 drop_last: bool = False, start: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.batch_size = batch_size
        self.seed, self.keys = seed, tuple(int(k) for k in keys)
        self.crop_size = crop_size
        full, rest = divmod(len(self.indices), batch_size)
        self.total = full + (1 if rest and not drop_last else 0)
        if not 0 <= start <= self.total:
            raise ValueError(f"start {start} is outside 0..{self.total}")
        self.start = start

    def __len__(self) -> int:
        return self.total - self.start

    def __getitem__(self, k: int) -> FusionBatch:
        if not 0 <= k < len(self):
            raise IndexError(f"batch {k} out of range for {len(self)} batches")
        step = self.start + k
        chunk = self.indices[step * self.batch_size:(step + 1) * self.batch_size]
        samples = [self.dataset[i] for i in chunk]
        return collate_samples(samples, derive_generator(self.seed, *self.keys, step),
                               self.dataset.task, self.dataset.task_size, self.crop_size)

    def __iter__(self) -> Iterator[FusionBatch]:
        for k in range(len(self)):
            yield self[k]
