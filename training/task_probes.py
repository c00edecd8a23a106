"""Task networks on a frozen ImageNet encoder, trained on features computed once per image.

The comparison of fused images (``training/task_driven.py``) needs one detector and one
segmenter per arm and seed, trained until their validation curves flatten. Fine-tuning the whole
pretrained network costs about 2 CPU-minutes per epoch here; with the EfficientNet-Lite0 encoder
frozen, its features are computed once per image (and once for its mirror, the one augmentation)
and only what follows the encoder is trained, which is cheap enough for several seeds.

The networks are the shipped architectures (``lite0_mlp`` and ``yolov8n_lite0``), written as
ordinary ``task.pt`` records: a frozen encoder stays the ImageNet one, so the record holds the
whole network and ``evaluate_segmenter`` / ``evaluate_detector`` score it like any other.
Predictions made here from the cached features are those the full network makes (tested).

Within a seed, every arm's network starts from the same weights and sees the same batches and
mirror draws: the paired design of the comparison.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdfusion_ros.metrics.detection import detection_metrics
from tdfusion_ros.metrics.segmentation import ConfusionMatrix
from training.atomic import atomic_write
from training.datasets import IGNORE_INDEX, read_yolo_boxes
from training.fused_dataset import FusedDataset
from training.task_networks import (
    DetectionTask,
    SegmentationTask,
    save_task_checkpoint,
    yolo_targets,
)
from training.train_segmenter import class_weights

__all__ = ["ProbeSettings", "miou_of", "train_detector_probes", "train_segmenter_probes"]

#: layers of ``yolov8n_lite0`` that are the frozen encoder (TorchVision + the three Index picks)
DETECTOR_ENCODER_LAYERS = 4


@dataclass
class ProbeSettings:
    epochs: int = 40
    lr: float = 1e-3
    batch: int = 8
    input_size: tuple[int, int] = (256, 320)
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 2
    val_every: int = 1


def _plain(settings: ProbeSettings) -> dict[str, Any]:
    return {**vars(settings), "input_size": list(settings.input_size)}


def _done(out: str | Path) -> dict[str, Any] | None:
    path = Path(out) / "metrics.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _read_grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise FileNotFoundError(f"{path}: unreadable image")
    return image


def _as_tensor(image: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32) / 255.0)[None, None]


def _frozen(module: nn.Module) -> None:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)


def _schedule(optimizer: torch.optim.Optimizer, total: int, kind: str) -> Any:
    warm = min(50, max(total // 10, 1))
    if kind == "poly":
        def factor(s: int) -> float:
            return max(1.0 - s / total, 0.0) ** 0.9 * min(1.0, (s + 1) / warm)
    else:  # cosine to 1 %
        def factor(s: int) -> float:
            return (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0)))) * min(
                1.0, (s + 1) / warm)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=1).encode()))


# --------------------------------------------------------------------------- segmentation


class _SegmenterFeatures:
    """Encoder features of a split (and of the mirrored images, for training)."""

    def __init__(self, task: SegmentationTask, data: FusedDataset, split: str,
                 mirrored: bool) -> None:
        encoder = task.model.encoder
        self.names, self.masks, self.label_masks = [], [], []
        views: list[list[list[Tensor]]] = [[], []] if mirrored else [[]]
        h, w = task.input_size
        with torch.no_grad():
            for image_path, mask_path in data.masks(split):
                image, mask = _read_grey(image_path), _read_grey(mask_path)
                self.names.append(image_path.stem)
                self.masks.append(mask.astype(np.int64))  # evaluation: the image's own size
                small = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)
                self.label_masks.append(small.astype(np.int64))  # training: the input size
                for v, view in enumerate(views):
                    picture = image[:, ::-1] if v else image
                    view.append([f[0] for f in encoder(task.prepare(_as_tensor(picture)))])
        self.views = [[torch.stack([per_image[k] for per_image in view]) for k in range(4)]
                      for view in views]

    def batch(self, index: np.ndarray, view: np.ndarray) -> tuple[list[Tensor], Tensor]:
        levels = [torch.stack([self.views[v][k][i] for i, v in zip(index, view)])
                  for k in range(4)]
        labels = torch.from_numpy(np.stack([
            self.label_masks[i][:, ::-1] if v else self.label_masks[i]
            for i, v in zip(index, view)]).copy())
        return levels, labels


def _decode(model: nn.Module, levels: list[Tensor]) -> Tensor:
    """``Lite0Segmenter.forward`` after its encoder, computed in a cheaper order.

    The decoder projects each level to ``width`` channels, upsamples, concatenates and mixes
    them with a 1x1 convolution. 1x1 convolutions and bilinear upsampling are linear (the
    upsampling weights sum to 1, so biases pass), so each level's projection and its slice of
    the mixing weight are applied as one 1x1 convolution at the level's own resolution before
    upsampling: the same function (tested), about a tenth of the multiply-adds.
    """
    mix = model.fuse[0].weight[:, :, 0, 0]
    width = mix.shape[0]
    size = levels[0].shape[-2:]
    total: Tensor | None = None
    for k, (project, feature) in enumerate(zip(model.project, levels)):
        part = mix[:, k * width:(k + 1) * width]
        z = F.conv2d(feature, (part @ project.weight[:, :, 0, 0])[:, :, None, None],
                     part @ project.bias)
        if k:
            z = F.interpolate(z, size=size, mode="bilinear", align_corners=False)
        total = z if total is None else total + z
    assert total is not None
    return model.classify(model.dropout(model.fuse[2](model.fuse[1](total))))


@torch.no_grad()
def _segmenter_confusions(model: nn.Module, feats: _SegmenterFeatures,
                          num_classes: int) -> np.ndarray:
    """Per-image confusion matrices (images, truth, predicted) at each image's own size."""
    was_training = model.training
    model.eval()
    out = np.zeros((len(feats.names), num_classes, num_classes), np.int64)
    for i, mask in enumerate(feats.masks):
        logits = _decode(model, [level[i:i + 1] for level in feats.views[0]])
        logits = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
        pred = logits.argmax(dim=1)[0].numpy()
        keep = mask != IGNORE_INDEX
        np.add.at(out[i], (mask[keep], pred[keep]), 1)
    model.train(was_training)
    return out


def miou_of(confusion: np.ndarray) -> float:
    """mIoU of a summed confusion matrix: classes present in labels or predictions, as
    ``ConfusionMatrix.compute``."""
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float(np.mean(tp[present] / union[present])) if present.any() else float("nan")


def train_segmenter_probes(data: FusedDataset, outs: Mapping[int, str | Path],
                           settings: ProbeSettings, log: Any = print) -> dict[int, dict[str, Any]]:
    """Train the decoder of a frozen-encoder ``lite0_mlp`` once per seed (``outs``: seed ->
    folder, skipped where ``metrics.json`` exists); the features are computed once for all.
    Writes ``task.pt``, ``metrics.json`` (history, per-class IoU) and ``confusions.npy`` (per
    validation image)."""
    results = {s: _done(o) for s, o in outs.items()}
    todo = [s for s, r in results.items() if r is None]
    if not todo:
        return results  # type: ignore[return-value]
    torch.set_num_threads(settings.threads)
    classes = data.segmentation_classes
    started = time.time()
    task = SegmentationTask(len(classes), settings.input_size, architecture="lite0_mlp")
    _frozen(task.model.encoder)
    train = _SegmenterFeatures(task, data, "train", mirrored=True)
    val = _SegmenterFeatures(task, data, "val", mirrored=False)
    encode_s = time.time() - started
    weights = class_weights(np.concatenate([m.ravel() for m in train.label_masks]),
                            len(classes))
    for seed in todo:
        out = Path(outs[seed])
        out.mkdir(parents=True, exist_ok=True)
        run = replace(settings, seed=seed)
        started = time.time()
        torch.manual_seed(seed)
        model = SegmentationTask(len(classes), settings.input_size, architecture="lite0_mlp",
                                 pretrained=False).model
        model.encoder.load_state_dict(task.model.encoder.state_dict())
        _frozen(model.encoder)
        head = [p for n, p in model.named_parameters() if not n.startswith("encoder.")]
        optimizer = torch.optim.AdamW(head, lr=run.lr, weight_decay=run.weight_decay)
        steps = math.ceil(len(train.names) / run.batch)
        schedule = _schedule(optimizer, run.epochs * steps, "poly")
        history = []
        for epoch in range(run.epochs):
            model.train()
            model.encoder.eval()
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(train.names))
            mirror = rng.integers(0, 2, len(train.names))
            total = 0.0
            for k in range(steps):
                chosen = order[k * run.batch:(k + 1) * run.batch]
                levels, labels = train.batch(chosen, mirror[chosen])
                logits = F.interpolate(_decode(model, levels), size=labels.shape[-2:],
                                       mode="bilinear", align_corners=False)
                loss = F.cross_entropy(logits, labels, weight=weights,
                                       ignore_index=IGNORE_INDEX)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"{out}: non-finite segmentation loss at epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item()
            confusions = _segmenter_confusions(model, val, len(classes))
            history.append({"epoch": epoch, "loss": round(total / steps, 4),
                            "val_mIoU": round(miou_of(confusions.sum(0)), 4),
                            "time_s": round(time.time() - started, 1)})
        log(f"[probe] {out}: mIoU {history[-1]['val_mIoU']:.3f} after {run.epochs} epochs "
            f"({time.time() - started:.0f} s)")
        matrix = ConfusionMatrix(len(classes), IGNORE_INDEX)
        matrix.matrix = confusions.sum(0)
        result = matrix.compute()
        np.save(out / "confusions.npy", confusions)
        save_task_checkpoint(out / "task.pt", "segmentation", classes, run.input_size,
                             model.state_dict(), {"trained_by": "training/task_probes.py",
                                                  "frozen_encoder": True, "history": history,
                                                  "data": str(data.root), **_plain(run)},
                             "lite0_mlp")
        metrics = {"mIoU": result["mIoU"], "IoU": dict(zip(classes, result["IoU"])),
                   "images": len(val.names), "names": val.names, "history": history,
                   "settings": _plain(run), "encode_s": round(encode_s, 1),
                   "seconds": round(time.time() - started, 1)}
        _write_json(out / "metrics.json", metrics)
        results[seed] = metrics
    return results  # type: ignore[return-value]


# --------------------------------------------------------------------------- detection


def _run_from(model: nn.Module, cached: list[Tensor], start: int) -> Any:
    """ultralytics' ``DetectionModel`` forward from layer ``start`` on, with the outputs of the
    layers before it given (``BaseModel._predict_once``'s loop)."""
    y: list[Any] = [None] + list(cached)
    x: Any = cached[-1]
    for m in model.model[start:]:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        y.append(x if m.i in model.save else None)
    return x


class _DetectorFeatures:
    """Encoder outputs (the three Index layers) of a split's prepared images, and their boxes
    (rows class, x1, y1, x2, y2 in pixels of the fused image)."""

    def __init__(self, task: DetectionTask, data: FusedDataset, split: str, mirrored: bool,
                 num_classes: int) -> None:
        model = task.model
        self.names, self.boxes, self.sizes = [], [], []
        views: list[list[list[Tensor]]] = [[], []] if mirrored else [[]]
        with torch.no_grad():
            for image_path in data.images(split):
                image = _read_grey(image_path)
                h, w = image.shape
                label = data.root / "labels" / split / f"{image_path.stem}.txt"
                self.names.append(image_path.stem)
                self.sizes.append((h, w))
                self.boxes.append(read_yolo_boxes(label, (h, w), num_classes).astype(np.float64))
                for v, view in enumerate(views):
                    picture = image[:, ::-1] if v else image
                    x = task.prepare(_as_tensor(picture))
                    outputs = model.model[0](x)
                    view.append([model.model[k](outputs)[0]
                                 for k in range(1, DETECTOR_ENCODER_LAYERS)])
        self.views = [[torch.stack([per[k] for per in view]) for k in range(3)] for view in views]

    def batch(self, index: np.ndarray, view: np.ndarray) -> tuple[list[Tensor], list[np.ndarray]]:
        # channels-last: about 15 % faster convolutions on the CPU (measured)
        levels = [torch.stack([self.views[v][k][i] for i, v in zip(index, view)]).contiguous(
            memory_format=torch.channels_last) for k in range(3)]
        boxes = []
        for i, v in zip(index, view):
            rows = self.boxes[i].copy()
            if v:
                w = self.sizes[i][1]
                rows[:, [1, 3]] = w - rows[:, [3, 1]]
            boxes.append(rows)
        return levels, boxes


def _targets(boxes: list[np.ndarray], sizes: list[tuple[int, int]]) -> dict[str, Tensor]:
    """``yolo_targets`` of a batch whose images may differ in size (each normalised by its own)."""
    parts = [yolo_targets([b], size) for b, size in zip(boxes, sizes)]
    for i, part in enumerate(parts):
        part["batch_idx"] = part["batch_idx"] + i
    return {k: torch.cat([p[k] for p in parts]) for k in ("batch_idx", "cls", "bboxes")}


@torch.no_grad()
def _detector_predictions(task: DetectionTask, feats: _DetectorFeatures) -> list[np.ndarray]:
    """``DetectionTask.predict``'s rows (class, x1, y1, x2, y2, score) from cached features."""
    from ultralytics.utils.nms import non_max_suppression

    model = task.model
    was_training = model.training
    model.eval()
    out = []
    for i, (fh, fw) in enumerate(feats.sizes):
        decoded = _run_from(model, [level[i:i + 1] for level in feats.views[0]],
                            DETECTOR_ENCODER_LAYERS)
        det = non_max_suppression(decoded, 0.001, 0.7, max_det=300, nc=task.num_classes)[0]
        h, w = task.input_size
        scale = torch.tensor([fw / w, fh / h, fw / w, fh / h], dtype=det.dtype)
        xyxy = (det[:, :4] * scale).clamp_(min=0)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(max=fw)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(max=fh)
        out.append(torch.cat((det[:, 5:6], xyxy, det[:, 4:5]), dim=1).numpy().astype(np.float64))
    model.train(was_training)
    return out


def train_detector_probes(data: FusedDataset, outs: Mapping[int, str | Path],
                          settings: ProbeSettings, log: Any = print) -> dict[int, dict[str, Any]]:
    """Train SPPF, neck and head of a frozen-encoder ``yolov8n_lite0`` once per seed (as
    ``train_segmenter_probes``); writes ``task.pt``, ``metrics.json`` (history, per-class AP)
    and ``predictions.npz`` (per validation image: ``pred_NAME``, ``truth_NAME``)."""
    from training.paired_bootstrap import DetectionMatches

    results = {s: _done(o) for s, o in outs.items()}
    todo = [s for s, r in results.items() if r is None]
    if not todo:
        return results  # type: ignore[return-value]
    torch.set_num_threads(settings.threads)
    classes = data.detection_classes
    started = time.time()
    task = DetectionTask(len(classes), settings.input_size, architecture="yolov8n_lite0")
    for layer in task.model.model[:DETECTOR_ENCODER_LAYERS]:
        _frozen(layer)
    train = _DetectorFeatures(task, data, "train", True, len(classes))
    val = _DetectorFeatures(task, data, "val", False, len(classes))
    encode_s = time.time() - started
    encoder_state = task.model.model[0].state_dict()
    ph, pw = task.padded_size
    for seed in todo:
        out = Path(outs[seed])
        out.mkdir(parents=True, exist_ok=True)
        run = replace(settings, seed=seed)
        started = time.time()
        torch.manual_seed(seed)
        task = DetectionTask(len(classes), run.input_size, architecture="yolov8n_lite0",
                             pretrained=False)
        model = task.model
        model.model[0].load_state_dict(encoder_state)
        model.to(memory_format=torch.channels_last)
        for layer in model.model[:DETECTOR_ENCODER_LAYERS]:
            _frozen(layer)
        head = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(head, lr=run.lr, weight_decay=run.weight_decay)
        steps = math.ceil(len(train.names) / run.batch)
        schedule = _schedule(optimizer, run.epochs * steps, "cosine")
        history = []
        for epoch in range(run.epochs):
            model.train()
            for layer in model.model[:DETECTOR_ENCODER_LAYERS]:
                layer.eval()
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(train.names))
            mirror = rng.integers(0, 2, len(train.names))
            total = 0.0
            for k in range(steps):
                chosen = order[k * run.batch:(k + 1) * run.batch]
                levels, boxes = train.batch(chosen, mirror[chosen])
                targets = _targets(boxes, [train.sizes[i] for i in chosen])
                output = _run_from(model, levels, DETECTOR_ENCODER_LAYERS)
                shape_only = torch.zeros(1).expand(len(chosen), 1, ph, pw)
                loss = task.criterion(output, targets, shape_only)
                if not torch.isfinite(loss):
                    raise RuntimeError(f"{out}: non-finite detection loss at epoch {epoch}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(head, 10.0)  # as ultralytics' trainer
                optimizer.step()
                schedule.step()
                total += loss.item()
            entry = {"epoch": epoch, "loss": round(total / steps, 4),
                     "time_s": round(time.time() - started, 1)}
            if epoch % run.val_every == run.val_every - 1 or epoch == run.epochs - 1:
                preds = _detector_predictions(task, val)
                entry["val_mAP50"] = round(
                    DetectionMatches(val.boxes, preds, len(classes)).ap50(), 4)
            history.append(entry)
        result = detection_metrics(val.boxes, preds, classes)
        log(f"[probe] {out}: mAP50 {result['mAP50']:.3f} after {run.epochs} epochs "
            f"({time.time() - started:.0f} s)")
        np.savez(out / "predictions.npz", **{f"pred_{n}": p for n, p in zip(val.names, preds)},
                 **{f"truth_{n}": b for n, b in zip(val.names, val.boxes)})
        save_task_checkpoint(out / "task.pt", "detection", classes, run.input_size,
                             model.state_dict(), {"trained_by": "training/task_probes.py",
                                                  "frozen_encoder": True, "history": history,
                                                  "data": str(data.root), **_plain(run)},
                             "yolov8n_lite0")
        metrics = {**result, "images": len(val.names), "names": val.names, "history": history,
                   "settings": _plain(run), "encode_s": round(encode_s, 1),
                   "seconds": round(time.time() - started, 1)}
        _write_json(out / "metrics.json", metrics)
        results[seed] = metrics
    return results  # type: ignore[return-value]
