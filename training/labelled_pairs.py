"""Labelled MSRS pairs (boxes and label maps), their fixed validation split, and generated scenes
mixed in: the data of the shipped default model (``config/train_default.yaml``).

Layout of each root (the shared ``msrs_det/`` and ``det/`` folders)::

    ROOT/ir/<name>.png  ROOT/vi/<name>.png     aligned pairs
    ROOT/labels/<name>.txt + classes.txt      YOLO boxes of the fused image (detection)
    ROOT/seg/<name>.png + seg_classes.txt     class-id maps (segmentation; may cover fewer pairs)

Why a split by name: the default model is trained and validated on the same few hundred pairs
for every arm of the comparison and for the shipped bundle, so the validation names are written
into the config (``val_names``), not redrawn. ``day_night_split`` made them: the same fraction of
day (``D``) and night (``N``) names, seeded. A pair without a label map is used for detection
only; a pair without a label file is an error (an empty file means no objects).

Generated scenes (``tdfusion_ros.scenes``) join the training set with their classes mapped onto
the MSRS ones by name (person, car; road, markings and signs become ``unlabeled``), so that the
demo's generated bag also yields detections and masks.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.layouts import (  # noqa: E402
    DatasetError,
    FileDataset,
    GeneratedScenes,
    PairDataset,
    PairFiles,
    Sample,
    Task,
    _existing_dir,
    _listing,
    _pair_files,
    _read_classes,
)

__all__ = [
    "DEFAULT_ROOTS",
    "ConcatPairs",
    "MappedScenes",
    "day_night_split",
    "labelled_pairs",
]

#: The shared folders, relative to the repository's parent (``../shared/data``).
DEFAULT_ROOTS = ("shared/data/msrs_det", "shared/data/det")
#: Generated-scene class -> MSRS class, by name; classes not listed become ``unlabeled``.
SCENE_TO_MSRS = {"person": "person", "car": "car"}
_LABEL_DIRS = {"detection": ("labels", "classes.txt", (".txt",)),
               "segmentation": ("seg", "seg_classes.txt", (".png",))}


def day_night_split(names: Sequence[str], val_fraction: float = 0.15, seed: int = 0
                    ) -> tuple[list[str], list[str]]:
    """(train, val) names: round(fraction * n) of the day names and of the night names, seeded.

    Day/night is the MSRS suffix (``D``/``N``); names with neither form a third group. The
    result depends only on the set of names, the fraction and the seed.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val: list[str] = []
    for suffix in ("D", "N", None):
        group = sorted(n for n in set(names)
                       if (n[-1:] == suffix if suffix else n[-1:] not in ("D", "N")))
        k = round(len(group) * val_fraction)
        val += [group[i] for i in sorted(rng.permutation(len(group))[:k])]
    chosen = set(val)
    return sorted(n for n in set(names) if n not in chosen), sorted(val)


def _root_files(root: Path, task: Task) -> tuple[list[PairFiles], tuple[str, ...]]:
    folder, class_file, suffixes = _LABEL_DIRS[task]
    base = _existing_dir(root, "labelled pairs")
    files = _pair_files(_existing_dir(base / "ir", "infrared"),
                        _existing_dir(base / "vi", "visible"),
                        _existing_dir(base / folder, f"{task} label"), suffixes,
                        missing_labels_ok=True)
    if task == "detection":
        missing = [f.name for f in files if f.label is None]
        if missing:
            raise DatasetError(f"{base / folder}: {len(missing)} pair(s) have no label file "
                               f"(an empty file means no objects): {_listing(missing)}")
    else:  # label maps exist for a subset of the pairs (det/ has none for its MSRS-train pairs)
        files = [f for f in files if f.label is not None]
    return files, _read_classes(base / class_file)


class MappedScenes(PairDataset):
    """Generated scenes whose targets use another dataset's class list (matched by name)."""

    def __init__(self, scenes_: GeneratedScenes, classes: Sequence[str]) -> None:
        super().__init__(scenes_.task, classes, scenes_.task_size,
                         f"{scenes_.description} as {len(classes)} classes")
        self.scenes = scenes_
        index = {c: i for i, c in enumerate(classes)}
        lut = []
        for name in scenes_.classes:
            target = SCENE_TO_MSRS.get(name, "unlabeled")
            if target not in index:
                if scenes_.task == "detection" and name not in SCENE_TO_MSRS:
                    lut.append(-1)
                    continue
                raise DatasetError(f"scene class {name!r} -> {target!r} is not one of "
                                   f"{list(classes)}")
            lut.append(index[target])
        self.lut = np.asarray(lut, np.int64)

    @property
    def names(self) -> list[str]:
        return [f"scene_{n}" for n in self.scenes.names]

    def load(self, index: int) -> Sample:
        s = self.scenes.load(index)
        if self.task == "segmentation":
            target = self.lut[s.target]
        else:
            target = s.target.copy()
            target[:, 0] = self.lut[target[:, 0].astype(np.int64)]
            target = target[target[:, 0] >= 0]
        return Sample(f"scene_{s.name}", s.ir_y, s.vis_y, target)


class ConcatPairs(PairDataset):
    """Several datasets of one task and class list, as one."""

    def __init__(self, parts: Sequence[PairDataset]) -> None:
        if not parts:
            raise ValueError("nothing to concatenate")
        first = parts[0]
        for p in parts[1:]:
            if p.task != first.task or p.classes != first.classes:
                raise DatasetError(f"cannot mix {p!r} with {first!r}: task or classes differ")
        super().__init__(first.task, first.classes, first.task_size,
                         " + ".join(p.description for p in parts))
        self.parts = list(parts)
        self._index = [(k, i) for k, p in enumerate(parts) for i in range(len(p))]

    @property
    def names(self) -> list[str]:
        return [n for p in self.parts for n in p.names]

    def load(self, index: int) -> Sample:
        k, i = self._index[index]
        return self.parts[k].load(i)


def labelled_pairs(roots: Sequence[str | Path] | None = None, task: Task = "detection", *,
                   split: str = "train", val_names: Sequence[str] | None = None,
                   val_fraction: float = 0.15, seed: int = 0,
                   task_size: tuple[int, int] = (240, 320), scenes_count: int = 0,
                   scenes_size: tuple[int, int] = (480, 640), scenes_seed: int = 1000
                   ) -> PairDataset:
    """The pairs of ``roots`` for ``task``, restricted to ``split`` ("train", "val" or "all").

    ``val_names`` fixes the validation set (names absent for this task, such as a pair without
    a label map, are skipped); None draws it with ``day_night_split(all names, val_fraction,
    seed)``. ``scenes_count`` generated scenes of ``scenes_size`` join the training split only.
    Relative roots are resolved against the repository's parent folder.
    """
    if split not in ("train", "val", "all"):
        raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
    repo_parent = Path(__file__).resolve().parents[2]
    roots = [Path(r) if Path(r).is_absolute() else repo_parent / r
             for r in (roots or DEFAULT_ROOTS)]
    files: list[PairFiles] = []
    classes: tuple[str, ...] | None = None
    for root in roots:
        root_files, root_classes = _root_files(root, task)
        if classes is not None and root_classes != classes:
            raise DatasetError(f"{root}: classes {list(root_classes)} differ from "
                               f"{list(classes)} of {roots[0]}")
        classes = root_classes
        files += root_files
    by_name: dict[str, PairFiles] = {}
    for f in files:
        if f.name in by_name:
            raise DatasetError(f"pair {f.name!r} is in two roots: {by_name[f.name].ir} and {f.ir}")
        by_name[f.name] = f
    if val_names is None:  # drawn over every pair, labelled or not: one split for both tasks
        every = [f.name for root in roots
                 for f in _pair_files(root / "ir", root / "vi", None, ())]
        val = set(day_night_split(every, val_fraction, seed)[1])
    else:
        val = set(val_names)
    chosen = {"train": [n for n in sorted(by_name) if n not in val],
              "val": [n for n in sorted(by_name) if n in val],
              "all": sorted(by_name)}[split]
    label_format = "yolo" if task == "detection" else "mask"
    description = f"{task} {split} pairs of {', '.join(str(r) for r in roots)}"
    dataset: PairDataset = FileDataset([by_name[n] for n in chosen], task, classes, task_size,
                                       label_format, description=description)
    if scenes_count and split == "train":
        generated = GeneratedScenes(scenes_count, task, seed=scenes_seed, height=scenes_size[0],
                                    width=scenes_size[1], task_size=task_size)
        dataset = ConcatPairs([dataset, MappedScenes(generated, classes)])
    return dataset


def link_split(out: str | Path, roots: Sequence[str | Path] | None, val_names: Sequence[str],
               split: str = "val") -> Path:
    """A folder in the shared layout (ir, vi, labels, seg + class lists) holding symbolic links
    to the pairs of ``split``: what ``bag_builder --pairs OUT --labels`` takes, so the default
    model can be scored by ``replay_eval`` on the pairs it was validated on."""
    out = Path(out)
    det = labelled_pairs(roots, "detection", split=split, val_names=val_names)
    seg = {f.name: f.label for f in labelled_pairs(roots, "segmentation", split=split,
                                                   val_names=val_names).files}
    for sub in ("ir", "vi", "labels", "seg"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for f in det.files:
        pairs = [(f.ir, out / "ir" / f.ir.name), (f.vis, out / "vi" / f.vis.name),
                 (f.label, out / "labels" / f.label.name)]
        if f.name in seg:
            pairs.append((seg[f.name], out / "seg" / seg[f.name].name))
        for src, dst in pairs:
            dst.unlink(missing_ok=True)
            dst.symlink_to(Path(src).resolve())
    root = Path(det.files[0].ir).parents[1]
    for name in ("classes.txt", "seg_classes.txt"):
        (out / name).write_text((root / name).read_text())
    return out


if __name__ == "__main__":
    import argparse

    from training.config import load_config

    parser = argparse.ArgumentParser(description="Link a split of the default model's labelled "
                                     "pairs into one folder (for bag_builder --pairs).")
    parser.add_argument("--config", default="config/train_default.yaml")
    parser.add_argument("--split", default="val", choices=("train", "val"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    options = load_config(args.config).data.options
    print(link_split(args.out, options.get("roots"), options["val_names"], args.split))
