"""Segmentation metrics: a pixel confusion matrix accumulated over images, and IoU/Acc per class,
mIoU, mAcc and aAcc from it (mmsegmentation's definitions). Only numpy is needed.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["ConfusionMatrix", "segmentation_metrics"]


def _nanmean(values: np.ndarray) -> float:
    """Mean over finite entries; nan (without a warning) when there are none."""
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


class ConfusionMatrix:
    """Pixel confusion matrix (rows: label, columns: prediction) accumulated over images.

    Pixels whose label is `ignore_index` are skipped. Any other label or prediction outside
    0..num_classes-1 is a ValueError, since it means mismatched class definitions.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.matrix[:] = 0

    def update(self, pred: np.ndarray, label: np.ndarray) -> None:
        """Add one prediction/label pair of class-index maps of the same shape."""
        pred = np.asarray(pred)
        label = np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"shape mismatch: pred {pred.shape}, label {label.shape}")
        for name, arr in (("pred", pred), ("label", label)):
            if arr.dtype.kind not in "uib":
                raise ValueError(f"{name} must hold integer class indices, got {arr.dtype}")
        pred = pred.ravel().astype(np.int64)
        label = label.ravel().astype(np.int64)
        if self.ignore_index is not None:
            keep = label != self.ignore_index
            pred = pred[keep]
            label = label[keep]
        n = self.num_classes
        if label.size and (label.min() < 0 or label.max() >= n):
            raise ValueError(f"label values must be in 0..{n - 1} or {self.ignore_index}")
        if pred.size and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"prediction values must be in 0..{n - 1} on labelled pixels")
        self.matrix += np.bincount(label * n + pred, minlength=n * n).reshape(n, n)

    def compute(self) -> dict[str, float | list[float]]:
        """Per-class IoU and accuracy (recall), their means, and overall pixel accuracy.

        IoU_c = TP / (TP + FP + FN); Acc_c = TP / (TP + FN). A class absent from both labels
        and predictions has IoU nan and is left out of mIoU; one absent from the labels has Acc
        nan (recall undefined) and is left out of mAcc, but an IoU of 0 if it was predicted.
        """
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        label_count = m.sum(axis=1)
        pred_count = m.sum(axis=0)
        union = label_count + pred_count - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, math.nan)
            acc = np.where(label_count > 0, tp / label_count, math.nan)
        total = m.sum()
        return {
            "IoU": [float(v) for v in iou],
            "Acc": [float(v) for v in acc],
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "aAcc": float(tp.sum() / total) if total > 0 else math.nan,
        }


def segmentation_metrics(
    pred: np.ndarray, label: np.ndarray, num_classes: int, ignore_index: int | None = 255
) -> dict[str, float | list[float]]:
    """IoU/Acc per class, mIoU, mAcc and aAcc of a single prediction (see ConfusionMatrix)."""
    cm = ConfusionMatrix(num_classes, ignore_index)
    cm.update(pred, label)
    return cm.compute()
