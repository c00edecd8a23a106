"""Training data for TDFusion: the datasets' published layouts, each read into one sample type.

(``training.datasets`` re-exports all of this and adds the builders by name, ``build_dataset``;
``training.labelled_pairs`` builds the default model's data on these layouts.)

Why one sample type: every dataset is reduced to the same sample (the infrared and visible Y planes
as the networks see them, plus a task target), so the training loop, the meta-learning step and
the tests never depend on where the pairs came from.

Layouts (read in place, never copied; all names are file stems shared by the modalities):

* MSRS (Linfeng-Tang/MSRS): ``ROOT/{train,test}/{ir,vi,Segmentation_labels}/<name>.png``,
  9 classes (0 unlabeled ... 8 bump). The official TDFusion code keeps the labels in
  ``label/``; that folder name is accepted when ``Segmentation_labels`` is absent.
* FMB (JinyuanLiu-CV/SegMiF): ``ROOT/{train,test}/{Infrared,Visible,Label}/<name>.png``,
  15 classes with 0 = unlabeled/background (the official TDFusion code: ``{ir,vi,label}``,
  also accepted).
* M3FD (dlut-dimt/TarDAL, the ``M3FD_Detection`` download): ``ROOT/{Ir,Vis,Annotation}``,
  VOC XML boxes. Split: ``m3fd_split``.
* LLVIP (bupt-ai-cz/LLVIP): ``ROOT/{infrared,visible}/{train,test}/<name>.jpg`` and
  ``ROOT/Annotations/<name>.xml`` (VOC, one class: person); every 10th image of each split
  in name order, as in the paper (and the official ``LLVIP_*.txt`` lists: 010001, 010011 ...).
* A generic folder of pairs (``pair_folder``): ``ROOT/{ir,vi}`` with ``labels/`` YOLO txt
  (``class cx cy w h``, normalised) and ``classes.txt`` for detection, or ``masks/`` class-id
  PNGs and ``segmentation_classes.txt`` for segmentation. This is the layout of the shared
  ``data/det`` folder and of ``tdfusion_ros.scenes.write_dataset``.
* Generated scenes on the fly (``GeneratedScenes``), identical to a folder written by
  ``scenes.write_dataset`` with the same count, seed, size and night fraction.

Samples (``Sample``): ``ir_y``/``vis_y`` float32 (H, W) in [0, 1] from
``tdfusion_ros.runtime.colour.prepare_pair`` (16-bit images: full range, or 1st-99th percentile with
``stretch16``), and the target: a segmentation label map (H, W) int64 (``IGNORE_INDEX`` 255
is ignored by the loss), or boxes (N, 5) float32 rows (class, x1, y1, x2, y2) in pixels with
x2, y2 exclusive (as ``tdfusion_ros.scenes`` and ``metrics.detection``).

Batches for Algorithm 1 (crops, task-size resizing, targets, sampling): ``training.batches``.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from tdfusion_ros import scenes
from tdfusion_ros.runtime.colour import prepare_pair
from tdfusion_ros.runtime.image_io import (
    IMAGE_SUFFIXES,
    ImagePairError,
    read_image,
    stretch_percentiles,
    to_unit_float,
)

__all__ = [
    "FMB_CLASSES",
    "IGNORE_INDEX",
    "LLVIP_CLASSES",
    "M3FD_CLASSES",
    "MSRS_CLASSES",
    "TASK_SIZES",
    "DatasetError",
    "FileDataset",
    "GeneratedScenes",
    "PairDataset",
    "PairFiles",
    "Sample",
    "fmb",
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

Task = Literal["segmentation", "detection"]

#: Label value that the segmentation loss ignores (padding, unknown pixels).
IGNORE_INDEX = 255

MSRS_CLASSES = ("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail",
                "color_cone", "bump")
FMB_CLASSES = ("unlabeled", "road", "sidewalk", "building", "traffic_light", "traffic_sign",
               "vegetation", "sky", "person", "car", "truck", "bus", "motorcycle", "bicycle",
               "pole")
#: M3FD's class names as its XML files spell them, in TarDAL's order (matched ignoring case).
M3FD_CLASSES = ("People", "Car", "Bus", "Lamp", "Motorcycle", "Truck")
LLVIP_CLASSES = ("person",)
#: Task-loss input size (height, width) per dataset, from the paper.
TASK_SIZES: dict[str, tuple[int, int]] = {
    "msrs": (240, 320), "fmb": (300, 400), "m3fd": (192, 256), "llvip": (256, 320),
}
#: The paper's M3FD split: 3150 training and 1050 test pairs of 4200, 300 of them for fusion.
M3FD_TRAIN, M3FD_TEST, M3FD_FUSION_EVAL = 3150, 1050, 300
M3FD_SPLIT_SEED = 0
M3FD_SPLIT_FILES = ("M3FD_train.txt", "M3FD_test.txt")
LLVIP_EVERY = 10

_SHOWN = 10  # names listed in an error message


class DatasetError(ValueError):
    """A dataset folder, file or sample that cannot be used as given (the message names it)."""


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in list(names)[:_SHOWN])
    return shown + (f" ... ({len(names)} in all)" if len(names) > _SHOWN else "")


# --------------------------------------------------------------------------- samples


@dataclass(frozen=True, eq=False)
class Sample:
    """One pair as the networks see it, with its task target.

    ``target``: segmentation (H, W) int64 class ids (``IGNORE_INDEX`` ignored); detection
    (N, 5) float32 rows (class, x1, y1, x2, y2) in pixels, x2/y2 exclusive.
    """

    name: str
    ir_y: np.ndarray
    vis_y: np.ndarray
    target: np.ndarray


def _unit(image: np.ndarray, stretch16: bool) -> np.ndarray:
    if image.dtype == np.uint16 and stretch16:
        return stretch_percentiles(image)
    return to_unit_float(image)


def _luma_pair(ir: np.ndarray, vis: np.ndarray, stretch16: bool) -> tuple[np.ndarray, np.ndarray]:
    pair = prepare_pair(_unit(ir, stretch16), _unit(vis, stretch16))
    return pair.ir_y, pair.vis_y


def _read(path: Path) -> np.ndarray:
    try:
        return read_image(path)
    except ImagePairError as err:
        raise DatasetError(str(err)) from None


def _size(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}"


def read_pair(ir_path: Path, vis_path: Path, stretch16: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """The Y planes of two image files; refuses pairs of different sizes (no silent resize).

    Bit depths may differ (a 16-bit infrared with an 8-bit visible image): each is scaled to
    [0, 1] on its own.
    """
    ir, vis = _read(ir_path), _read(vis_path)
    if ir.shape[:2] != vis.shape[:2]:
        raise DatasetError(
            f"size mismatch: infrared {ir_path} is {_size(ir.shape)} but visible {vis_path} is "
            f"{_size(vis.shape)} (WxH); the pair must be registered to one pixel grid"
        )
    return _luma_pair(ir, vis, stretch16)


# --------------------------------------------------------------------------- label files


def read_mask(path: Path, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """A class-id label image as (H, W) int64; ids must be below ``num_classes`` or 255."""
    mask = _read(path)
    if mask.ndim == 3:
        if not (np.array_equal(mask[..., 0], mask[..., 1])
                and np.array_equal(mask[..., 1], mask[..., 2])):
            raise DatasetError(
                f"{path}: a colour image; expected a single-channel map of class ids (the "
                "label folder, not a colour visualisation of it)"
            )
        mask = mask[..., 0]
    if mask.shape != tuple(shape):
        raise DatasetError(
            f"{path}: label map is {_size(mask.shape)} but its image pair is {_size(shape)} (WxH)"
        )
    mask = mask.astype(np.int64)
    bad = np.unique(mask[(mask >= num_classes) & (mask != IGNORE_INDEX)])
    if bad.size:
        raise DatasetError(
            f"{path}: class ids {_listing(bad.tolist())} are outside 0..{num_classes - 1} "
            f"(and {IGNORE_INDEX} = ignore)"
        )
    return mask


def _clip_boxes(rows: list[list[float]], shape: tuple[int, int]) -> np.ndarray:
    """(N, 5) float32 boxes clipped to the image; boxes with no area left are dropped."""
    boxes = np.asarray(rows, np.float64).reshape(-1, 5)
    h, w = shape
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, w)
    boxes[:, 2::2] = boxes[:, 2::2].clip(0, h)
    keep = (boxes[:, 3] > boxes[:, 1]) & (boxes[:, 4] > boxes[:, 2])
    return boxes[keep].astype(np.float32)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: cannot read label file ({err})") from None


def read_yolo_boxes(path: Path, shape: tuple[int, int], num_classes: int) -> np.ndarray:
    """YOLO txt (``class cx cy w h`` normalised) -> pixel boxes (class, x1, y1, x2, y2)."""
    h, w = shape
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        where = f"{path}:{lineno}"
        if len(parts) != 5:
            raise DatasetError(
                f"{where}: expected 5 fields 'class cx cy w h', got {len(parts)}: {line!r}"
            )
        try:
            cls, cx, cy, bw, bh = (float(p) for p in parts)
        except ValueError:
            raise DatasetError(f"{where}: non-numeric field in {line!r}") from None
        if not (cls.is_integer() and 0 <= cls < num_classes):
            raise DatasetError(f"{where}: class {parts[0]} is not an id in 0..{num_classes - 1}")
        if not all(math.isfinite(v) and -1e-3 <= v <= 1 + 1e-3 for v in (cx, cy, bw, bh)):
            raise DatasetError(f"{where}: box {parts[1:]} is not normalised to [0, 1]")
        rows.append([cls, (cx - bw / 2) * w, (cy - bh / 2) * h,
                     (cx + bw / 2) * w, (cy + bh / 2) * h])
    return _clip_boxes(rows, shape)


def read_voc_boxes(path: Path, shape: tuple[int, int], classes: Sequence[str]) -> np.ndarray:
    """VOC XML objects -> pixel boxes (class, x1, y1, x2, y2).

    VOC coordinates are 1-based and inclusive, so x1 = xmin - 1 and x2 = xmax (a box from
    xmin 1 to xmax W covers the whole width). Class names match ignoring case.
    """
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DatasetError(f"{path}: not a valid VOC XML file ({err})") from None
    except OSError as err:
        raise DatasetError(f"{path}: cannot read annotation ({err})") from None
    rows = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name.lower() not in lookup:
            raise DatasetError(f"{path}: object class {name!r} is not one of {list(classes)}")
        box = obj.find("bndbox")
        texts = [None if box is None else box.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
        try:
            xmin, ymin, xmax, ymax = (float(t) for t in texts)  # float(None): TypeError
        except (TypeError, ValueError):
            raise DatasetError(
                f"{path}: object {name!r} has no numeric bndbox xmin/ymin/xmax/ymax"
            ) from None
        rows.append([lookup[name.lower()], xmin - 1, ymin - 1, xmax, ymax])
    return _clip_boxes(rows, shape)


def _read_classes(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        raise DatasetError(f"{path}: class list not found (one class name per line)")
    names = tuple(line.strip() for line in _read_text(path).splitlines() if line.strip())
    if not names:
        raise DatasetError(f"{path}: class list is empty")
    return names


# --------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class PairFiles:
    """The files of one sample; ``label`` None means no objects (detection only)."""

    name: str
    ir: Path
    vis: Path
    label: Path | None


def _existing_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found")
    return path


def _first_dir(root: Path, candidates: Sequence[str], what: str) -> Path:
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    tried = ", ".join(candidates)
    raise DatasetError(f"{root}: no {what} folder (looked for {tried})")


def _by_stem(folder: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    clashes = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes:
            if path.stem in found:
                clashes.append(path.name)
            found[path.stem] = path
    if clashes:
        raise DatasetError(f"{folder}: several files share a name: {_listing(clashes)}")
    return found


def _pair_files(ir_dir: Path, vis_dir: Path, label_dir: Path | None,
                label_suffixes: Sequence[str], *, extra_labels_ok: bool = False,
                missing_labels_ok: bool = False) -> list[PairFiles]:
    """Same-named files of the folders, refusing names that lack a partner (listing some)."""
    ir, vis = _by_stem(ir_dir, IMAGE_SUFFIXES), _by_stem(vis_dir, IMAGE_SUFFIXES)
    labels = _by_stem(label_dir, label_suffixes) if label_dir is not None else {}
    problems = []
    for folder, files, other in ((ir_dir, ir, vis), (vis_dir, vis, ir)):
        missing = sorted(set(other) - set(files))
        if missing:
            problems.append(f"{len(missing)} name(s) have no image in {folder}: "
                            f"{_listing(missing)}")
    if label_dir is not None:
        missing = sorted((set(ir) | set(vis)) - set(labels))
        if missing and not missing_labels_ok:
            problems.append(f"{len(missing)} pair(s) have no label file in {label_dir}: "
                            f"{_listing(missing)}")
        orphans = sorted(set(labels) - (set(ir) | set(vis)))
        if orphans and not extra_labels_ok:
            problems.append(f"{len(orphans)} label file(s) in {label_dir} have no image pair: "
                            f"{_listing(orphans)}")
    if problems:
        raise DatasetError("unpaired names: " + "; ".join(problems))
    if not ir:
        raise DatasetError(f"{ir_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return [PairFiles(n, ir[n], vis[n], labels.get(n)) for n in sorted(ir)]


# --------------------------------------------------------------------------- datasets


class PairDataset(Dataset, ABC):
    """Aligned pairs with one task's targets; ``dataset[i]`` is a ``Sample``."""

    def __init__(self, task: Task, classes: Sequence[str], task_size: tuple[int, int],
                 description: str) -> None:
        if task not in ("segmentation", "detection"):
            raise ValueError(f"task must be 'segmentation' or 'detection', got {task!r}")
        if len(task_size) != 2 or min(task_size) < 1:
            raise ValueError(f"task_size must be (height, width), got {task_size}")
        self.task: Task = task
        self.classes = tuple(classes)
        if not self.classes:
            raise ValueError("a dataset needs at least one class")
        self.task_size = (int(task_size[0]), int(task_size[1]))
        self.description = description

    @property
    @abstractmethod
    def names(self) -> list[str]:
        """Sample names (file stems), in index order."""

    @abstractmethod
    def load(self, index: int) -> Sample:
        """Read sample ``index`` (0 <= index < len)."""

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        index = int(index)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        return self.load(index % n)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.description}: {len(self)} pairs, {self.task}, "
                f"{len(self.classes)} classes, task size {self.task_size})")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def validate(self, max_errors: int = _SHOWN) -> None:
        """Read every sample now, so that a long run does not stop on a bad file later."""
        errors = []
        for i in range(len(self)):
            try:
                self.load(i)
            except DatasetError as err:
                errors.append(str(err))
        if errors:
            shown = "\n  ".join(errors[:max_errors])
            more = f"\n  ... {len(errors) - max_errors} more" if len(errors) > max_errors else ""
            raise DatasetError(f"{len(errors)} bad sample(s) in {self.description}:\n  "
                               f"{shown}{more}")


LabelFormat = Literal["mask", "yolo", "voc"]


class FileDataset(PairDataset):
    """Pairs read from files, with mask, YOLO txt or VOC XML labels."""

    def __init__(self, files: Sequence[PairFiles], task: Task, classes: Sequence[str],
                 task_size: tuple[int, int], label_format: LabelFormat, *,
                 stretch16: bool = False, description: str = "") -> None:
        super().__init__(task, classes, task_size, description)
        expected = {"mask": "segmentation", "yolo": "detection", "voc": "detection"}
        if expected.get(label_format) != task:
            raise ValueError(f"label format {label_format!r} does not fit task {task!r}")
        if not files:
            raise DatasetError(f"{description}: no image pairs")
        self.files = list(files)
        self.label_format = label_format
        self.stretch16 = stretch16

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

    def load(self, index: int) -> Sample:
        f = self.files[index]
        ir_y, vis_y = read_pair(f.ir, f.vis, self.stretch16)
        shape = ir_y.shape
        if f.label is None:
            if self.task == "segmentation":
                raise DatasetError(f"{f.name}: no label map")
            target = np.zeros((0, 5), np.float32)
        elif self.label_format == "mask":
            target = read_mask(f.label, shape, self.num_classes)
        elif self.label_format == "yolo":
            target = read_yolo_boxes(f.label, shape, self.num_classes)
        else:
            target = read_voc_boxes(f.label, shape, self.classes)
        return Sample(f.name, ir_y, vis_y, target)

    def subset(self, names: Sequence[str]) -> FileDataset:
        """The same dataset restricted to ``names`` (in that order)."""
        by_name = {f.name: f for f in self.files}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise DatasetError(f"{self.description}: no pair named {_listing(missing)}")
        return FileDataset([by_name[n] for n in names], self.task, self.classes, self.task_size,
                           self.label_format, stretch16=self.stretch16,
                           description=self.description)


def _split_root(root: str | Path, split: str, splits: Sequence[str], dataset: str) -> Path:
    if split not in splits:
        raise ValueError(f"{dataset} split must be one of {list(splits)}, got {split!r}")
    base = _existing_dir(root, f"{dataset} root")
    return _existing_dir(base / split, f"{dataset} {split!r} split")


def msrs(root: str | Path, split: str = "train", *,
         task_size: tuple[int, int] = TASK_SIZES["msrs"], stretch16: bool = False
         ) -> FileDataset:
    """MSRS segmentation: ``ROOT/<split>/{ir,vi,Segmentation_labels}`` (9 classes)."""
    base = _split_root(root, split, ("train", "test"), "MSRS")
    files = _pair_files(_first_dir(base, ("ir",), "infrared"),
                        _first_dir(base, ("vi",), "visible"),
                        _first_dir(base, ("Segmentation_labels", "label", "Label"),
                                   "segmentation label"),
                        IMAGE_SUFFIXES)
    return FileDataset(files, "segmentation", MSRS_CLASSES, task_size, "mask",
                       stretch16=stretch16, description=f"MSRS {split} ({base})")


def fmb(root: str | Path, split: str = "train", *,
        task_size: tuple[int, int] = TASK_SIZES["fmb"], stretch16: bool = False) -> FileDataset:
    """FMB segmentation: ``ROOT/<split>/{Infrared,Visible,Label}`` (15 classes, 0 unlabeled)."""
    base = _split_root(root, split, ("train", "test"), "FMB")
    files = _pair_files(_first_dir(base, ("Infrared", "ir"), "infrared"),
                        _first_dir(base, ("Visible", "vi"), "visible"),
                        _first_dir(base, ("Label", "label"), "segmentation label"),
                        IMAGE_SUFFIXES)
    return FileDataset(files, "segmentation", FMB_CLASSES, task_size, "mask",
                       stretch16=stretch16, description=f"FMB {split} ({base})")


def _split_file_names(path: Path) -> list[str]:
    """Stems of the first field of each line (the official lists: ``00001.png x1,y1,...``)."""
    return [Path(line.split()[0]).stem for line in _read_text(path).splitlines() if line.split()]


def m3fd_split(names: Sequence[str], split: str, *, split_dir: str | Path | None = None,
               seed: int = M3FD_SPLIT_SEED) -> list[str]:
    """The names of an M3FD split: ``train``, ``test``, ``fusion_eval`` or ``all``.

    With the official TDFusion lists (``M3FD_train.txt`` and ``M3FD_test.txt`` from the
    TDFusion repository's ``data/`` folder) in ``split_dir``, their names are used and
    ``fusion_eval`` is the first 300 names of the test list. Without them (they were not
    obtainable here), a deterministic stand-in: the sorted names permuted by
    ``numpy.random.default_rng(seed)``; the first round(N * 1050 / 4200) are the test split
    (1050 of the full 4200), the rest training (3150), and the first min(300, test) of the
    test split's draw are the fusion-evaluation pairs. It does not reproduce the paper's split.
    """
    if split not in ("train", "test", "fusion_eval", "all"):
        raise ValueError(f"M3FD split must be train, test, fusion_eval or all, got {split!r}")
    names = sorted(names)
    if split == "all":
        return names
    lists = [Path(split_dir) / f for f in M3FD_SPLIT_FILES] if split_dir is not None else []
    present = [p for p in lists if p.is_file()]
    if present and len(present) != len(lists):
        raise DatasetError(f"M3FD split lists: found {present[0]} but not "
                           f"{[str(p) for p in lists if not p.is_file()][0]}")
    if present:
        train, test = (_split_file_names(p) for p in present)
        unknown = sorted(set(train + test) - set(names))
        if unknown:
            raise DatasetError(f"{split_dir}: the split lists name pairs that are not in the "
                               f"dataset: {_listing(unknown)}")
        fusion = test[:M3FD_FUSION_EVAL]
    else:
        order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
        n_test = round(len(names) * M3FD_TEST / (M3FD_TRAIN + M3FD_TEST))
        test, train = sorted(order[:n_test]), sorted(order[n_test:])
        fusion = sorted(order[:min(M3FD_FUSION_EVAL, n_test)])
    return {"train": train, "test": test, "fusion_eval": fusion}[split]


def m3fd(root: str | Path, split: str = "train", *, split_dir: str | Path | None = None,
         seed: int = M3FD_SPLIT_SEED, classes: Sequence[str] = M3FD_CLASSES,
         task_size: tuple[int, int] = TASK_SIZES["m3fd"], stretch16: bool = False
         ) -> FileDataset:
    """M3FD detection: ``ROOT/{Ir,Vis,Annotation}`` (VOC XML); split as ``m3fd_split``.

    ``split_dir`` defaults to ``ROOT`` (official split lists are used when they are there).
    """
    base = _existing_dir(root, "M3FD root")
    files = _pair_files(_first_dir(base, ("Ir", "ir"), "infrared"),
                        _first_dir(base, ("Vis", "vi"), "visible"),
                        _first_dir(base, ("Annotation", "Annotations"), "VOC annotation"),
                        (".xml",))
    dataset = FileDataset(files, "detection", classes, task_size, "voc", stretch16=stretch16,
                          description=f"M3FD {split} ({base})")
    names = m3fd_split(dataset.names, split, split_dir=base if split_dir is None else split_dir,
                       seed=seed)
    return dataset.subset(names)


def llvip(root: str | Path, split: str = "train", *, every: int = LLVIP_EVERY, offset: int = 0,
          task_size: tuple[int, int] = TASK_SIZES["llvip"], stretch16: bool = False
          ) -> FileDataset:
    """LLVIP detection: ``ROOT/{infrared,visible}/<split>`` + ``ROOT/Annotations`` (VOC).

    Keeps every ``every``-th pair (10, as the paper) in name order from ``offset``; the
    annotation folder serves both splits, so annotations without images are expected.
    """
    if every < 1 or offset < 0:
        raise ValueError(f"every must be >= 1 and offset >= 0, got {every}, {offset}")
    base = _existing_dir(root, "LLVIP root")
    if split not in ("train", "test"):
        raise ValueError(f"LLVIP split must be 'train' or 'test', got {split!r}")
    files = _pair_files(_existing_dir(base / "infrared" / split, "LLVIP infrared"),
                        _existing_dir(base / "visible" / split, "LLVIP visible"),
                        _first_dir(base, ("Annotations",), "VOC annotation"),
                        (".xml",), extra_labels_ok=True)
    files = files[offset::every]
    return FileDataset(files, "detection", LLVIP_CLASSES, task_size, "voc", stretch16=stretch16,
                       description=f"LLVIP {split} every {every} ({base})")


def pair_folder(root: str | Path, task: Task = "detection", *, ir: str = "ir", vis: str = "vi",
                labels: str | None = None, classes: Sequence[str] | None = None,
                task_size: tuple[int, int] = TASK_SIZES["msrs"], stretch16: bool = False,
                allow_missing_labels: bool = False) -> FileDataset:
    """A folder of pairs: ``ROOT/{ir,vi}`` plus ``labels/`` (YOLO) or ``masks/`` (class ids).

    Classes come from ``classes.txt`` (detection) or ``segmentation_classes.txt``
    (segmentation) unless given. A missing YOLO label file is an error unless
    ``allow_missing_labels`` (then it means no objects); an empty file always means none.
    """
    base = _existing_dir(root, "dataset")
    detection = task == "detection"
    label_dir = _existing_dir(base / (labels or ("labels" if detection else "masks")),
                              "label")
    if classes is None:
        classes = _read_classes(base / ("classes.txt" if detection else
                                        "segmentation_classes.txt"))
    files = _pair_files(_existing_dir(base / ir, "infrared"), _existing_dir(base / vis, "visible"),
                        label_dir, (".txt",) if detection else IMAGE_SUFFIXES,
                        missing_labels_ok=allow_missing_labels and detection)
    return FileDataset(files, task, classes, task_size, "yolo" if detection else "mask",
                       stretch16=stretch16, description=f"{task} pairs in {base}")


def scene_folder(root: str | Path, task: Task = "detection", *,
                 task_size: tuple[int, int] = (240, 320), stretch16: bool = False
                 ) -> FileDataset:
    """A folder written by ``tdfusion_ros.scenes.write_dataset`` (``labels/`` or ``masks/``).

    ``stretch16`` maps 16-bit radiometric infrared (``--ir16``) by its percentiles; the full
    0-65535 range would leave it nearly flat.
    """
    return pair_folder(root, task, task_size=task_size, stretch16=stretch16)


class GeneratedScenes(PairDataset):
    """``count`` procedural scenes made on demand, equal to ``scenes.write_dataset``'s output.

    Scene i uses ``scenes.scene_seed(seed, i)`` and the same seeded day/night assignment as
    ``write_dataset``, so a folder written with the same arguments holds the same pairs.
    """

    def __init__(self, count: int, task: Task = "detection", *, seed: int = 0,
                 height: int = 240, width: int = 320, night_fraction: float = 0.5,
                 task_size: tuple[int, int] | None = None) -> None:
        classes = scenes.DETECTION_CLASSES if task == "detection" else scenes.SEGMENTATION_CLASSES
        super().__init__(task, classes, task_size or (height, width),
                         f"{count} generated scenes, seed {seed}")
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        if not 0.0 <= night_fraction <= 1.0:
            raise ValueError(f"night_fraction {night_fraction} is not in [0, 1]")
        self.seed, self.height, self.width = seed, height, width
        rng = np.random.default_rng(seed)
        self._nights = rng.permutation(count) < round(count * night_fraction)
        self._names = [scenes.scene_name(i, bool(n)) for i, n in enumerate(self._nights)]

    @property
    def names(self) -> list[str]:
        return self._names

    def load(self, index: int) -> Sample:
        scene = scenes.generate_scene(scenes.scene_seed(self.seed, index), self.height,
                                      self.width, night=bool(self._nights[index]))
        ir_y, vis_y = _luma_pair(scene.ir, scene.vis, False)
        if self.task == "segmentation":
            target = scene.mask.astype(np.int64)
        else:
            target = scene.boxes.astype(np.float32).reshape(-1, 5)
        return Sample(self._names[index], ir_y, vis_y, target)
