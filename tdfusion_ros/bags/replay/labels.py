"""The bag's labels on the fused grid during the run: boxes and label maps moved from the RGB
image onto the fused one, box IoU, and the segmentation confusion matrix (``_SegEval``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from tdfusion_ros.bags.replay.common import ReplayError
from tdfusion_ros.bags.replay.inputs import _Setup


# --------------------------------------------------------------------------- geometry
def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if union <= 0:
        return 1.0 if a == b else 0.0
    return inter / union


def _labels_to_fused(boxes: np.ndarray, label_size: tuple[int, int],
                     rgb_size: tuple[int, int], plan: tuple) -> np.ndarray:
    """Label boxes (class, x1, y1, x2, y2 in labelled-image pixels) -> fused-image pixels."""
    if boxes.size == 0:
        return boxes.reshape(0, 5)
    (x, y, w, h), (ow, oh), _ = plan
    out = boxes.astype(np.float64).copy()
    sx, sy = rgb_size[0] / label_size[0], rgb_size[1] / label_size[1]
    out[:, [1, 3]] = (out[:, [1, 3]] * sx - x) * (ow / w)
    out[:, [2, 4]] = (out[:, [2, 4]] * sy - y) * (oh / h)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, ow)
    out[:, [2, 4]] = out[:, [2, 4]].clip(0, oh)
    keep = (out[:, 3] > out[:, 1]) & (out[:, 4] > out[:, 2])
    return out[keep]


def _label_map_to_fused(label: np.ndarray, rgb_size: tuple[int, int], plan: tuple) -> np.ndarray:
    """A label map (class ids at the labelled image size) -> the fused grid, nearest neighbour.

    The same geometry as the RGB image's (``Registration.apply``): scale to the RGB size, crop,
    resize to the output size.
    """
    (x, y, w, h), (ow, oh), _ = plan
    if (label.shape[1], label.shape[0]) != tuple(rgb_size):
        label = cv2.resize(label, tuple(rgb_size), interpolation=cv2.INTER_NEAREST)
    label = label[y:y + h, x:x + w]
    if (ow, oh) != (w, h):
        label = cv2.resize(label, (ow, oh), interpolation=cv2.INTER_NEAREST)
    return label


class _SegEval:
    """Pixel confusion of the segmenter's class maps against the sidecar's label maps.

    Classes are matched by name (case and surrounding spaces ignored), after an optional class
    map (``class_map``: label class -> segmenter class, None to ignore) has renamed and merged
    the label classes (e.g. "background" and "road" -> "unlabeled"). The matrix holds the
    (mapped) label classes first, then the segmenter's classes the labels lack (their pixels
    count as misses of the labelled class), then one bucket for class ids the segmenter has no
    name for. mIoU is over the label classes only.
    """

    def __init__(self, label_classes: Sequence[str], seg_classes: Sequence[str],
                 from_labels: bool, class_map: dict[str, str | None] | None = None,
                 class_map_file: Path | None = None) -> None:
        from tdfusion_ros.metrics.segmentation import ConfusionMatrix

        self.original_classes = list(label_classes)
        self.class_map = None if class_map is None else dict(class_map)
        self.class_map_file = class_map_file
        seg_key = {n.strip().lower(): n for n in seg_classes}
        if class_map is not None:
            original = {n.strip().lower() for n in label_classes}
            # Names the labels lack are reported, not refused: one map serves bags with and
            # without, say, bicycles.
            self.unused = [k for k in class_map if k.strip().lower() not in original]
            lowered = {k.strip().lower(): v for k, v in class_map.items()}
            targets = [lowered.get(n.strip().lower(), n) for n in label_classes]
            # Mapped classes in the segmenter's order, then the others in label order.
            present = {t.strip().lower() for t in targets if t is not None}
            ordered = [n for n in seg_classes if n.strip().lower() in present]
            for t in targets:
                if t is not None and t.strip().lower() not in seg_key and t not in ordered:
                    ordered.append(t)
            index = {n.strip().lower(): i for i, n in enumerate(ordered)}
            self.label_lut = np.full(256, 255, np.uint8)
            for i, t in enumerate(targets):
                if t is not None:
                    self.label_lut[i] = index[t.strip().lower()]
            label_classes = ordered
        else:
            self.label_lut = None
            self.unused = []
        key = {n.strip().lower(): i for i, n in enumerate(label_classes)}
        self.label_classes = list(label_classes)
        self.seg_classes = list(seg_classes)
        self.from_labels = from_labels
        self.extra = [n for n in seg_classes if n.strip().lower() not in key]
        self.names = [*self.label_classes, *self.extra, "(segmenter id without a name)"]
        self.lut = np.full(256, len(self.names) - 1, np.uint8)
        self.matched: dict[str, str] = {}
        for j, name in enumerate(seg_classes):
            i = key.get(name.strip().lower())
            if i is None:
                self.lut[j] = len(self.label_classes) + self.extra.index(name)
            else:
                self.lut[j] = i
                self.matched[self.label_classes[i]] = name
        self.cm = ConfusionMatrix(len(self.names), ignore_index=255)
        self.frames = 0

    @classmethod
    def create(cls, setup: _Setup, from_labels: bool) -> _SegEval | None:
        labels = setup.labels
        if labels is None or not labels.segmentation_classes:
            return None
        if len(labels.segmentation_classes) + len(setup.pipeline.segmentation_classes) + 1 > 255:
            raise ReplayError("too many segmentation classes to score (at most 254 in all)")
        return cls(labels.segmentation_classes, setup.pipeline.segmentation_classes,
                   from_labels, setup.seg_class_map, setup.seg_class_map_file)

    def add(self, label_file: Path, class_map: np.ndarray | None, rgb_size: tuple[int, int],
            plan: tuple) -> None:
        from tdfusion_ros.bags.builder import load_segmentation

        if class_map is None and not self.from_labels:
            return
        label = _label_map_to_fused(load_segmentation(label_file), rgb_size, plan)
        n = len(self.original_classes)
        bad = np.unique(label[(label >= n) & (label != 255)])
        if bad.size:
            raise ValueError(f"label map {label_file} holds class ids {bad.tolist()} outside "
                             f"its {n} classes")
        if self.label_lut is not None:
            label = self.label_lut[label]
        if self.from_labels:
            pred = np.where(label == 255, 0, label)
        else:
            if class_map.shape != label.shape:
                raise ValueError(f"class map {class_map.shape} and label map {label.shape} "
                                 "differ in size on the fused grid")
            pred = self.lut[class_map]
        self.cm.update(pred, label)
        self.frames += 1
