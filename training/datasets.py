"""Training data by name: every dataset layout (``training.layouts``) and the default model's
labelled pairs (``training.labelled_pairs``), built from a configuration's ``data.kind``.

    build_dataset("msrs", root="../shared/data/MSRS", split="train", task="segmentation")
    build_dataset("labelled_pairs", task="detection")       # config/train_default.yaml

Why a module of its own: ``labelled_pairs`` builds on the layouts, and the table of builders
names both, so the table sits above the two and neither imports the other back. Everything of
``training.layouts`` is re-exported here, so ``from training.datasets import Sample`` and the
like keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from training.labelled_pairs import labelled_pairs
from training.layouts import (
    FMB_CLASSES,
    IGNORE_INDEX,
    LLVIP_CLASSES,
    LLVIP_EVERY,
    M3FD_CLASSES,
    MSRS_CLASSES,
    TASK_SIZES,
    DatasetError,
    FileDataset,
    GeneratedScenes,
    LabelFormat,
    PairDataset,
    PairFiles,
    Sample,
    Task,
    fmb,
    llvip,
    m3fd,
    m3fd_split,
    msrs,
    pair_folder,
    read_mask,
    read_pair,
    read_voc_boxes,
    read_yolo_boxes,
    scene_folder,
)

__all__ = [
    "DATASETS",
    "FMB_CLASSES",
    "IGNORE_INDEX",
    "LLVIP_CLASSES",
    "LLVIP_EVERY",
    "M3FD_CLASSES",
    "MSRS_CLASSES",
    "TASK_SIZES",
    "DatasetError",
    "FileDataset",
    "GeneratedScenes",
    "LabelFormat",
    "PairDataset",
    "PairFiles",
    "Sample",
    "Task",
    "build_dataset",
    "fmb",
    "labelled_pairs",
    "llvip",
    "m3fd",
    "m3fd_split",
    "msrs",
    "pair_folder",
    "read_mask",
    "read_pair",
    "read_voc_boxes",
    "read_yolo_boxes",
    "scene_folder",
]

#: Dataset builders by name, for configuration files: ``build_dataset("msrs", root=...)``.
DATASETS: dict[str, Callable[..., PairDataset]] = {
    "msrs": msrs, "fmb": fmb, "m3fd": m3fd, "llvip": llvip, "folder": pair_folder,
    "scene_folder": scene_folder, "scenes": GeneratedScenes, "labelled_pairs": labelled_pairs,
}


def build_dataset(kind: str, **options: Any) -> PairDataset:
    """``DATASETS[kind](**options)`` with an error that lists the known kinds."""
    if kind not in DATASETS:
        raise ValueError(f"unknown dataset {kind!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[kind](**options)
