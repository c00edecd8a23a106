"""Evaluate fusion checkpoints on a folder of pairs: fused images, the paper's metrics, tables.

    python training/evaluate.py --checkpoint PATH [--name LABEL] [--ablation I..V]
        [--checkpoint PATH2 ...] --data DIR --out OUT [--weights-maps G_CKPT]
        [--task-checkpoint [detection=|segmentation=]PATH ...] [--limit N] [--device cpu]

DIR holds ``ir/`` and ``vi/`` with same-named images (any sizes, each pair registered), and
optionally ``labels/`` (YOLO txt, ``classes.txt`` in ``labels/`` or DIR) and ``masks/`` (class-id
PNGs) for the task metrics. ``--name`` and ``--ablation`` apply to the ``--checkpoint`` before
them. Every method, the four baselines included (infrared only, visible only, pixel average and
pixel maximum of the Y planes), goes through the same code: ``tdfusion_ros.fuse.fuse_images``
(Y of OpenCV YCrCb in, visible chroma back on), then ``fusion_metrics`` on 8-bit grey images:
the fused grey PNG against the rounded Y planes of the two sources. Writes

* ``OUT/<method>/{grey,colour}/<name>.png``: the fused images;
* ``OUT/metrics.csv``: EN SF SCD VIF Qabf SSIM per image and method;
* ``OUT/table.md``: the paper's Table 1 layout (mean over images, best per column in bold);
* with task checkpoints, ``OUT/task_metrics.csv`` and ``OUT/task_table.md`` (Table 2 layout:
  mAP50, mAP50-95 for detection, mIoU, mAcc for segmentation), one task network applied to the
  fused image of every method;
* with ``--weights-maps``, ``OUT/weights_maps/<name>.png``: infrared, visible, G's w_ir and
  w_vis and the fused image side by side (the paper's Fig. 5), and ``summary.csv``;
* ``OUT/run.json``: what was run.

Table 3 (ablations): train each row with ``training/train.py``, then one command per row,
``--checkpoint ROW.pt --ablation II --out T3 --append --no-baselines``; ``--append`` keeps the
rows of other methods already in ``OUT/metrics.csv``. Row V fuses with G's weights
(w_ir * I_ir + w_vis * I_vis), so its checkpoint is a G checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdfusion_ros.metrics.fusion import fusion_metrics  # noqa: E402
from tdfusion_ros.nets.checkpoints import CheckpointError, load_network, read_checkpoint  # noqa: E402
from tdfusion_ros.runtime.colour import prepare_pair, to_uint8  # noqa: E402
from tdfusion_ros.runtime.image_io import (  # noqa: E402
    ImagePairError,
    PairPaths,
    list_pairs,
    read_image,
    read_pairs,
)
from tdfusion_ros.tools.fuse import (  # noqa: E402
    FusedPair,
    TorchFuser,
    fuse_images,
    load_unit_float,
    pick_device,
    write_png,
)

FUSION_METRICS = ("EN", "SF", "SCD", "VIF", "Qabf", "SSIM")
TASK_METRICS = {"detection": ("mAP50", "mAP50-95"), "segmentation": ("mIoU", "mAcc")}

PlaneFuser = Callable[[np.ndarray, np.ndarray], np.ndarray]


class EvaluationError(ValueError):
    """Input that cannot be evaluated as given (folder layout, labels, options)."""


# --------------------------------------------------------------------------- ablations (Table 3)


@dataclass(frozen=True)
class Ablation:
    """A row of the paper's Table 3: its label and the training switches that make it.

    ``settings`` name the options of ``training/meta_learning.py`` (``MetaConfig``,
    ``Networks``) that ``train.py`` sets for the row; here they only label the result.
    """

    key: str
    description: str
    settings: dict[str, Any]
    fuses_with_g: bool = False


ABLATIONS: dict[str, Ablation] = {
    a.key: a
    for a in (
        Ablation("full", "TDFusion: learned loss, all parts", {}),
        Ablation("I", "fixed loss weights w = 1/2 (no G)", {"loss_net": None}),
        Ablation("II", "no gradient term in L_f", {"fusion_loss.use_gradient": False}),
        Ablation("III", "F also trained by L_t", {"fusion_task_weight": "> 0"}),
        Ablation("IV", "no separate F/T phase (F updated in the meta step)",
                 {"update_ft_in_meta_step": True}),
        Ablation("V", "fused image = w_ir * I_ir + w_vis * I_vis from G (no F)",
                 {"fused_image": "weighted_sum"}, fuses_with_g=True),
    )
}


def ablation_by_name(name: str) -> Ablation:
    """Case-insensitive lookup ('ii' or 'II'); the error lists the known rows."""
    for key, ablation in ABLATIONS.items():
        if key.lower() == name.strip().lower():
            return ablation
    known = ", ".join(f"{a.key} ({a.description})" for a in ABLATIONS.values())
    raise EvaluationError(f"unknown ablation {name!r}; known: {known}")


# --------------------------------------------------------------------------- methods


@dataclass
class MethodSpec:
    """One ``--checkpoint`` with the ``--name`` / ``--ablation`` given after it."""

    checkpoint: Path
    name: str | None = None
    ablation: str | None = None


@dataclass
class Method:
    """A row of the table: a label, a folder name and a fuser of float Y planes."""

    label: str
    fuser: PlaneFuser
    kind: str  # "baseline" or "checkpoint"
    checkpoint: str | None = None
    ablation: Ablation | None = None
    folder: str = field(init=False)

    def __post_init__(self) -> None:
        self.folder = re.sub(r"[^A-Za-z0-9._-]+", "_", self.label).strip("_") or "method"


BASELINES: tuple[tuple[str, PlaneFuser], ...] = (
    ("Infrared only", lambda ir, vis: ir.copy()),
    ("Visible only", lambda ir, vis: vis.copy()),
    ("Average", lambda ir, vis: (ir + vis) * np.float32(0.5)),
    ("Maximum", np.maximum),
)


class WeightedSumFuser:
    """Ablation V: the fused image is G's weighted sum of the sources, F is not used."""

    def __init__(self, loss_net: torch.nn.Module, device: torch.device) -> None:
        self.net = loss_net.to(device)
        self.device = device

    def __call__(self, ir_y: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        w = loss_weights(self.net, ir_y, vis_y, self.device)
        return w[0] * ir_y + w[1] * vis_y


@torch.inference_mode()
def loss_weights(
    loss_net: torch.nn.Module, ir_y: np.ndarray, vis_y: np.ndarray, device: torch.device
) -> np.ndarray:
    """G's (2, H, W) float32 weights (w_ir, w_vis) of one pair of Y planes."""

    def tensor(plane: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(plane)[None, None].to(device, torch.float32)

    return loss_net(tensor(ir_y), tensor(vis_y))[0].float().cpu().numpy()


def checkpoint_ablation(path: Path) -> str | None:
    """The ablation a checkpoint of ours records in its meta (``meta["ablation"]``), if any."""
    payload = read_checkpoint(path)
    if isinstance(payload, dict) and isinstance(payload.get("meta"), dict):
        value = payload["meta"].get("ablation")
        return str(value) if value is not None else None
    return None


def build_methods(specs: Sequence[MethodSpec], device: str, baselines: bool) -> list[Method]:
    """Baselines first, then one method per checkpoint (loaded now, so errors come early)."""
    methods = [Method(label, fn, "baseline") for label, fn in BASELINES] if baselines else []
    for spec in specs:
        ablation_name = spec.ablation or checkpoint_ablation(spec.checkpoint)
        ablation = ablation_by_name(ablation_name) if ablation_name else None
        if ablation is not None and ablation.fuses_with_g:
            dev = pick_device(device)
            fuser: PlaneFuser = WeightedSumFuser(load_network(spec.checkpoint, "loss_generation"),
                                                 dev)
        else:
            fuser = TorchFuser(spec.checkpoint, device)
        if spec.name:
            label = spec.name
        elif ablation is not None:
            label = "Ours" if ablation.key == "full" else ablation.key
        else:
            label = spec.checkpoint.stem
        methods.append(Method(label, fuser, "checkpoint", str(spec.checkpoint), ablation))
    for kind in ("label", "folder"):
        seen: set[str] = set()
        for method in methods:
            key = getattr(method, kind).lower()
            if key in seen:
                raise EvaluationError(
                    f"two methods would share the {kind} {getattr(method, kind)!r}; give each "
                    "--checkpoint its own --name"
                )
            seen.add(key)
    if not methods:
        raise EvaluationError("nothing to evaluate: give --checkpoint or drop --no-baselines")
    return methods


# --------------------------------------------------------------------------- dataset


@dataclass(frozen=True)
class Dataset:
    root: Path
    pairs: list[PairPaths]
    labels: Path | None
    masks: Path | None
    class_names: list[str] | None


def open_dataset(root: str | Path, limit: int | None = None) -> Dataset:
    """Check DIR's layout and pair the images (names without suffix must match)."""
    root = Path(root)
    if not root.is_dir():
        raise EvaluationError(f"{root}: no such data folder")
    ir, vis = root / "ir", root / "vi"
    missing = [p.name + "/" for p in (ir, vis) if not p.is_dir()]
    if missing:
        raise EvaluationError(f"{root}: missing {', '.join(missing)} (expected ir/ and vi/ "
                              "with same-named images, optional labels/ and masks/)")
    pairs = list_pairs(ir, vis)
    if limit is not None:
        if limit < 1:
            raise EvaluationError(f"--limit must be positive, got {limit}")
        pairs = pairs[:limit]
    labels = root / "labels" if (root / "labels").is_dir() else None
    masks = root / "masks" if (root / "masks").is_dir() else None
    class_names = None
    for candidate in ((labels / "classes.txt") if labels else None, root / "classes.txt"):
        if candidate is not None and candidate.is_file():
            names = [line.strip() for line in candidate.read_text().splitlines()]
            class_names = [n for n in names if n]
            break
    return Dataset(root, pairs, labels, masks, class_names)


# --------------------------------------------------------------------------- task metrics


class TaskSetupError(EvaluationError):
    """A task checkpoint, task code or task label that is missing or does not fit."""


def parse_task_spec(text: str) -> tuple[str | None, Path]:
    """``detection=PATH``, ``segmentation=PATH`` or ``PATH`` (kind then read from the file)."""
    kind, sep, path = text.partition("=")
    if sep and kind in TASK_METRICS:
        return kind, Path(path)
    return None, Path(text)


def load_task_network(
    path: Path, kind: str | None, class_names: Sequence[str] | None,
    input_size: tuple[int, int] | None,
) -> tuple[str, Any]:
    """Build T from a checkpoint: ``{"task", "num_classes", "input_size", "state_dict"}``
    (what ``train.py`` is to write) or a bare state_dict with the kind given as ``KIND=PATH``.

    The number of classes comes from the checkpoint, else from ``classes.txt``.
    """
    try:
        from training import task_networks
    except ImportError as err:
        raise TaskSetupError(
            "task metrics need training/task_networks.py and its libraries (transformers for "
            f"segmentation, ultralytics for detection), which could not be imported: {err}"
        ) from err
    try:
        payload = read_checkpoint(path)
    except CheckpointError as err:
        raise TaskSetupError(f"task checkpoint: {err}") from err
    meta: dict[str, Any] = {}
    state = payload
    if isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        meta, state = payload, payload["state_dict"]
    kind = kind or meta.get("task")
    if kind not in TASK_METRICS:
        raise TaskSetupError(f"{path}: the task is not recorded in the checkpoint; give it as "
                             f"detection=PATH or segmentation=PATH")
    num_classes = meta.get("num_classes") or (len(class_names) if class_names else None)
    if not num_classes:
        raise TaskSetupError(f"{path}: the number of classes is neither in the checkpoint nor "
                             "given by a classes.txt in the data folder")
    size = input_size or tuple(meta.get("input_size") or (240, 320))
    cls = task_networks.DetectionTask if kind == "detection" else task_networks.SegmentationTask
    task = cls(int(num_classes), input_size=(int(size[0]), int(size[1])))
    try:
        task.model.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise TaskSetupError(f"{path}: does not fit a {kind} network with {num_classes} "
                             f"classes: {str(err).splitlines()[0]}") from err
    return kind, task


def yolo_boxes(path: Path, width: int, height: int) -> np.ndarray:
    """YOLO rows (class cx cy w h, normalised) as pixel rows (class, x1, y1, x2, y2)."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 5:
            raise TaskSetupError(f"{path}:{number}: expected 'class cx cy w h', got {line!r}")
        c, cx, cy, w, h = (float(v) for v in parts)
        rows.append((c, (cx - w / 2) * width, (cy - h / 2) * height,
                     (cx + w / 2) * width, (cy + h / 2) * height))
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


class TaskEvaluator:
    """Task metrics per method: predictions on each fused image, scored at the end.

    Kept apart from the fusion metrics so that evaluation runs without any task code; it is
    built (and every checkpoint and label folder checked) before the first pair is fused.
    """

    def __init__(self, specs: Sequence[str], dataset: Dataset, device: torch.device,
                 input_size: tuple[int, int] | None = None) -> None:
        from tdfusion_ros.metrics.segmentation import ConfusionMatrix

        self.device = device
        self.dataset = dataset
        self.tasks: dict[str, Any] = {}
        for text in specs:
            kind, path = parse_task_spec(text)
            kind, task = load_task_network(path, kind, dataset.class_names, input_size)
            if kind in self.tasks:
                raise TaskSetupError(f"two {kind} checkpoints given; evaluate one per run")
            self.tasks[kind] = task.to(device)
        if "detection" in self.tasks:
            if dataset.labels is None:
                raise TaskSetupError(f"{dataset.root}: detection needs labels/ (YOLO txt)")
            missing = [p.name for p in dataset.pairs
                       if not (dataset.labels / f"{p.name}.txt").is_file()]
            if missing:
                raise TaskSetupError(f"{dataset.labels}: no label file for {len(missing)} "
                                     f"image(s): {', '.join(missing[:10])}")
            n = self.tasks["detection"].num_classes
            self.class_names = list(dataset.class_names or [str(i) for i in range(n)])
            if len(self.class_names) != n:
                raise TaskSetupError(f"classes.txt names {len(self.class_names)} classes but "
                                     f"the detection network has {n}")
        if "segmentation" in self.tasks:
            if dataset.masks is None:
                raise TaskSetupError(f"{dataset.root}: segmentation needs masks/ (class ids)")
            missing = [p.name for p in dataset.pairs
                       if not (dataset.masks / f"{p.name}.png").is_file()]
            if missing:
                raise TaskSetupError(f"{dataset.masks}: no mask for {len(missing)} image(s): "
                                     f"{', '.join(missing[:10])}")
        self._make_matrix = lambda: ConfusionMatrix(self.tasks["segmentation"].num_classes,
                                                    self.tasks["segmentation"].ignore_index)
        self.ground_truth: dict[str, np.ndarray] = {}
        self.predictions: dict[str, list[np.ndarray]] = {}
        self.gt_order: dict[str, list[str]] = {}
        self.matrices: dict[str, Any] = {}

    def add(self, method: str, name: str, fused_y: np.ndarray) -> None:
        """Run every task network on one fused Y plane (float, 0..1, its own size)."""
        image = torch.from_numpy(np.ascontiguousarray(fused_y, np.float32))[None, None]
        image = image.to(self.device)
        height, width = fused_y.shape
        if "detection" in self.tasks:
            if name not in self.ground_truth:
                self.ground_truth[name] = yolo_boxes(self.dataset.labels / f"{name}.txt",
                                                     width, height)
            pred = self.tasks["detection"].predict(image)[0].cpu().numpy().astype(np.float64)
            self.predictions.setdefault(method, []).append(pred)
            self.gt_order.setdefault(method, []).append(name)
        if "segmentation" in self.tasks:
            mask = read_image(self.dataset.masks / f"{name}.png")
            if mask.ndim != 2 or mask.shape != (height, width):
                raise TaskSetupError(f"{self.dataset.masks / name}.png: expected a single-"
                                     f"channel {width}x{height} class-id image, got {mask.shape}")
            pred = self.tasks["segmentation"].predict(image)[0].cpu().numpy()
            matrix = self.matrices.setdefault(method, self._make_matrix())
            try:
                matrix.update(pred, mask)
            except ValueError as err:
                raise TaskSetupError(f"{self.dataset.masks / name}.png: {err}") from err

    def results(self) -> dict[str, dict[str, float]]:
        """{method: {"mAP50", "mAP50-95", "mAP75", "mIoU", "mAcc"}} for the tasks given."""
        from tdfusion_ros.metrics.detection import detection_metrics

        out: dict[str, dict[str, float]] = {}
        for method, preds in self.predictions.items():
            gts = [self.ground_truth[n] for n in self.gt_order[method]]
            det = detection_metrics(gts, preds, self.class_names)
            out.setdefault(method, {}).update(
                {k: det[k] for k in ("mAP50", "mAP75", "mAP50-95")})
        for method, matrix in self.matrices.items():
            seg = matrix.compute()
            out.setdefault(method, {}).update({"mIoU": seg["mIoU"], "mAcc": seg["mAcc"]})
        return out

    @property
    def columns(self) -> list[str]:
        return [c for kind in TASK_METRICS if kind in self.tasks for c in TASK_METRICS[kind]]


# --------------------------------------------------------------------------- weight maps (Fig. 5)

MAP_HEADER = 20  # px of title strip above the panels
MAP_GAP = 4  # px between panels
MAP_BAR = 14  # px width of the colour scale bar
MAP_BAR_LABELS = 34  # px for the scale bar's tick labels
MAP_MAX_HEIGHT = 512  # larger images are shown scaled down to this panel height
MAP_PANELS = ("infrared", "visible", "w_ir", "w_vis", "fused")


def colour_weights(weights: np.ndarray) -> np.ndarray:
    """Weights in [0, 1] as viridis BGR (the map the scale bar shows)."""
    return cv2.applyColorMap(to_uint8(np.clip(weights, 0.0, 1.0)), cv2.COLORMAP_VIRIDIS)


def weights_figure(ir_y: np.ndarray, vis_y: np.ndarray, weights: np.ndarray,
                   fused_y: np.ndarray) -> np.ndarray:
    """One BGR image: infrared | visible | w_ir | w_vis | fused | scale bar, titled.

    Panels are at the image's own size (scaled down to ``MAP_MAX_HEIGHT`` rows if taller).
    """
    height, width = ir_y.shape
    scale = min(1.0, MAP_MAX_HEIGHT / height)
    ph, pw = max(1, round(height * scale)), max(1, round(width * scale))

    def fit(panel: np.ndarray) -> np.ndarray:
        if (ph, pw) == panel.shape[:2]:
            return panel
        return cv2.resize(panel, (pw, ph), interpolation=cv2.INTER_AREA)

    def grey(plane: np.ndarray) -> np.ndarray:
        return cv2.cvtColor(to_uint8(np.clip(plane, 0.0, 1.0)), cv2.COLOR_GRAY2BGR)

    panels = [grey(ir_y), grey(vis_y), colour_weights(weights[0]), colour_weights(weights[1]),
              grey(fused_y)]
    total_w = len(panels) * (pw + MAP_GAP) + MAP_BAR + MAP_BAR_LABELS
    canvas = np.full((MAP_HEADER + ph, total_w, 3), 255, np.uint8)
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    for index, (title, panel) in enumerate(zip(MAP_PANELS, panels)):
        x = index * (pw + MAP_GAP)
        canvas[MAP_HEADER:, x:x + pw] = fit(panel)
        cv2.putText(canvas, title, (x + 2, MAP_HEADER - 6), font, font_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    # Scale bar: 1 at the top, 0 at the bottom, same colour map as the weight panels.
    x = len(panels) * (pw + MAP_GAP)
    ramp = np.linspace(1.0, 0.0, ph, dtype=np.float32)[:, None].repeat(MAP_BAR, axis=1)
    canvas[MAP_HEADER:, x:x + MAP_BAR] = colour_weights(ramp)
    for value, y in ((1.0, MAP_HEADER + 9), (0.5, MAP_HEADER + ph // 2 + 4),
                     (0.0, MAP_HEADER + ph - 1)):
        cv2.putText(canvas, f"{value:.1f}", (x + MAP_BAR + 2, y), font, 0.35, (0, 0, 0), 1,
                    cv2.LINE_AA)
    cv2.putText(canvas, "w", (x + 2, MAP_HEADER - 6), font, font_scale, (0, 0, 0), 1,
                cv2.LINE_AA)
    return canvas


# --------------------------------------------------------------------------- tables


def _mean(values: Sequence[float]) -> tuple[float, int]:
    """Mean over finite values and how many were undefined (nan)."""
    finite = [v for v in values if math.isfinite(v)]
    return (sum(finite) / len(finite) if finite else math.nan), len(values) - len(finite)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], digits: int = 2,
                   notes: Sequence[str] = ()) -> str:
    """Rows = methods, the mean of each column; higher is better for every column here, the
    best displayed value per column is bold. ``rows`` hold "method" and per-image values."""
    order: list[str] = []
    for row in rows:
        if row["method"] not in order:
            order.append(row["method"])
    means: dict[str, dict[str, tuple[float, int]]] = {}
    for method in order:
        own = [r for r in rows if r["method"] == method]
        means[method] = {c: _mean([float(r[c]) for r in own]) for c in columns}
    best = {}
    for c in columns:
        shown = [round(means[m][c][0], digits) for m in order if math.isfinite(means[m][c][0])]
        best[c] = max(shown) if shown else None
    lines = ["| Method | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    partial = unavailable = False
    for method in order:
        cells = []
        for c in columns:
            value, undefined = means[method][c]
            if not math.isfinite(value):
                cells.append("n/a")
                unavailable = True
                continue
            text = f"{value:.{digits}f}"
            if best[c] is not None and round(value, digits) == best[c]:
                text = f"**{text}**"
            if undefined:
                text += "*"
                partial = True
            cells.append(text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    footer = list(notes)
    if partial:
        footer.append("\\* mean over the images where the metric is defined.")
    if unavailable:
        footer.append("n/a: undefined for every image (e.g. SCD of a source against itself).")
    return "\n".join(lines) + ("\n\n" + "\n".join(footer) if footer else "") + "\n"


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def merge_previous(path: Path, rows: list[dict[str, Any]], key: str = "method") -> list[dict]:
    """Rows of ``path`` whose method this run did not evaluate, followed by this run's rows."""
    if not path.is_file():
        return rows
    with path.open(newline="") as handle:
        previous = list(csv.DictReader(handle))
    ours = {r[key] for r in rows}
    return [r for r in previous if r.get(key) not in ours] + rows


# --------------------------------------------------------------------------- command line


class _CheckpointAction(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        specs = getattr(namespace, self.dest, None) or []
        specs.append(MethodSpec(Path(values)))
        setattr(namespace, self.dest, specs)


class _ForLastCheckpoint(argparse.Action):
    """``--name`` / ``--ablation`` set a field of the ``--checkpoint`` given before them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        specs = getattr(namespace, "checkpoints", None) or []
        if not specs:
            parser.error(f"{option_string} must follow the --checkpoint it names")
        if getattr(specs[-1], self.dest) is not None:
            parser.error(f"{option_string} given twice for --checkpoint {specs[-1].checkpoint}")
        setattr(specs[-1], self.dest, values)


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"expected HxW such as 240x320, got {text!r}")
    return int(match.group(1)), int(match.group(2))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python training/evaluate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", dest="checkpoints", action=_CheckpointAction,
                        default=[], metavar="PATH",
                        help="F weights (official .pth or ours); repeat for more methods")
    parser.add_argument("--name", dest="name", action=_ForLastCheckpoint,
                        help="row label of the preceding --checkpoint (default: file stem)")
    parser.add_argument("--ablation", dest="ablation", action=_ForLastCheckpoint,
                        help="Table 3 row of the preceding --checkpoint: "
                             + ", ".join(f"{a.key} = {a.description}"
                                         for a in ABLATIONS.values()))
    parser.add_argument("--data", required=True, help="folder with ir/ and vi/ (and labels/, "
                                                      "masks/)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--weights-maps", metavar="G_CKPT",
                        help="render G's w_ir / w_vis maps per pair (Fig. 5)")
    parser.add_argument("--task-checkpoint", action="append", default=[],
                        metavar="[KIND=]PATH",
                        help="task network T (KIND: detection or segmentation) for task metrics")
    parser.add_argument("--task-size", type=parse_size, metavar="HxW",
                        help="task input size (default: from the checkpoint, else 240x320)")
    parser.add_argument("--limit", type=int, help="first N pairs only (sorted by name)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="leave out infrared, visible, average and maximum")
    parser.add_argument("--append", action="store_true",
                        help="keep the other methods' rows already in OUT (one command per "
                             "Table 3 row)")
    parser.add_argument("--stretch16", action="store_true",
                        help="map 16-bit inputs by their 1st-99th percentiles")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args(argv)
    if not args.checkpoints:
        parser.error("give at least one --checkpoint")
    return args


def evaluate(args: argparse.Namespace) -> int:
    """The whole run; returns the exit code (1 when some pairs were refused)."""
    start = time.perf_counter()
    dataset = open_dataset(args.data, args.limit)
    methods = build_methods(args.checkpoints, args.device, not args.no_baselines)
    device = pick_device(args.device)
    loss_net = load_network(args.weights_maps, "loss_generation").to(device) \
        if args.weights_maps else None
    tasks = TaskEvaluator(args.task_checkpoint, dataset, device, args.task_size) \
        if args.task_checkpoint else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    rows: list[dict[str, Any]] = []
    map_rows: list[dict[str, Any]] = []
    failed: list[str] = []
    for index, pair, ir, vis in read_pairs(dataset.pairs, failed):
        sources = prepare_pair(load_unit_float(ir, args.stretch16),
                               load_unit_float(vis, args.stretch16))
        ir8, vis8 = to_uint8(sources.ir_y), to_uint8(sources.vis_y)
        height, width = ir8.shape
        first_checkpoint: FusedPair | None = None
        for method in methods:
            tick = time.perf_counter()
            fused = fuse_images(method.fuser, ir, vis, args.stretch16)
            seconds = time.perf_counter() - tick
            write_png(out / method.folder / "grey" / f"{pair.name}.png", fused.grey)
            write_png(out / method.folder / "colour" / f"{pair.name}.png", fused.colour)
            values = fusion_metrics(fused.grey, ir8, vis8)
            rows.append({"method": method.label, "image": pair.name, "width": width,
                         "height": height, **values, "fuse_s": round(seconds, 4)})
            if tasks is not None:
                tasks.add(method.label, pair.name, fused.raw)
            if method.kind == "checkpoint" and first_checkpoint is None:
                first_checkpoint = fused
        if loss_net is not None:
            weights = loss_weights(loss_net, sources.ir_y, sources.vis_y, device)
            shown = first_checkpoint.raw if first_checkpoint is not None else sources.vis_y
            write_png(out / "weights_maps" / f"{pair.name}.png",
                      weights_figure(sources.ir_y, sources.vis_y, weights, shown))
            map_rows.append({"image": pair.name, "mean_w_ir": float(weights[0].mean()),
                             "mean_w_vis": float(weights[1].mean())})
        print(f"[{index}/{len(dataset.pairs)}] {pair.name} {width}x{height}", flush=True)

    csv_columns = ["method", "image", "width", "height", *FUSION_METRICS, "fuse_s"]
    if args.append:
        rows = merge_previous(out / "metrics.csv", rows)
    write_csv(out / "metrics.csv", rows, csv_columns)
    notes = [f"{a.key}: {a.description}" for a in ABLATIONS.values()
             if any(r["method"] == a.key for r in rows)]
    images = len({r["image"] for r in rows})
    table = markdown_table(rows, FUSION_METRICS, notes=notes)
    header = (f"Fusion metrics on {dataset.root} ({images} image(s)), mean over images; "
              "higher is better, best in bold.\n\n")
    (out / "table.md").write_text(header + table)
    print("\n" + header + table)
    if map_rows:
        write_csv(out / "weights_maps" / "summary.csv", map_rows,
                  ["image", "mean_w_ir", "mean_w_vis"])

    if tasks is not None:
        task_rows = [{"method": m, **v} for m, v in tasks.results().items()]
        if args.append:
            task_rows = merge_previous(out / "task_metrics.csv", task_rows)
        columns = tasks.columns
        write_csv(out / "task_metrics.csv", task_rows,
                  ["method", *columns, *(["mAP75"] if "detection" in tasks.tasks else [])])
        task_table = markdown_table(task_rows, columns, digits=3)
        task_header = (f"Task metrics on {dataset.root}: one task network applied to the fused "
                       "image of every method; best in bold.\n\n")
        (out / "task_table.md").write_text(task_header + task_table)
        print(task_header + task_table)

    run = {
        "data": str(dataset.root),
        "pairs": len(dataset.pairs),
        "refused": failed,
        "methods": [{"label": m.label, "folder": m.folder, "kind": m.kind,
                     "checkpoint": m.checkpoint,
                     "ablation": m.ablation.key if m.ablation else None,
                     "ablation_settings": m.ablation.settings if m.ablation else None}
                    for m in methods],
        "weights_maps": args.weights_maps,
        "task_checkpoints": args.task_checkpoint,
        "device": str(device),
        "seconds": round(time.perf_counter() - start, 2),
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n")
    print(f"wrote {out} in {run['seconds']:.1f} s")
    if failed:
        print(f"error: {len(failed)} pair(s) refused: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return evaluate(args)
    except (EvaluationError, ImagePairError, CheckpointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
