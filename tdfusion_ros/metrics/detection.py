"""COCO-style detection mAP (mAP50, mAP75, mAP50-95, per-class AP) through pycocotools.

pycocotools is the reference COCO evaluator (BSD licence; needs only numpy), so the numbers
match what COCO-style papers report. This module imports neither torch nor ultralytics: the
runtime replay tool uses it too. pycocotools itself is imported when first needed.

What COCOeval does with its defaults (kept unchanged here):

* AP at IoU thresholds 0.50:0.05:0.95, each the mean of the precision envelope sampled at the
  101 recall points 0:0.01:1 (recall points above the highest reached recall count as 0).
* Area range "all" (0 to 1e10 px^2) is used; the small/medium/large splits are not reported.
* At most `max_dets` (default 100) highest-scoring detections per image *and class* are
  evaluated; the rest are dropped.
* Boxes are continuous pixel coordinates: IoU has no "+1" on widths.
* A class without any ground truth has AP -1 in COCO; it is reported as nan here and left out
  of the means. A class with ground truth but no detection has AP 0.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["detection_metrics"]


def _as_rows(boxes: Any, width: int, what: str, index: int, num_classes: int) -> np.ndarray:
    """A (N, width) float64 array of boxes, checked: known classes, x2 >= x1, y2 >= y1."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, width))
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(
            f"{what} of image {index} has shape {arr.shape}: expected rows of {width} values"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} of image {index} contains non-finite values")
    cls = arr[:, 0]
    if np.any(cls != np.round(cls)) or np.any(cls < 0) or np.any(cls >= num_classes):
        raise ValueError(
            f"{what} of image {index}: class ids must be integers in 0..{num_classes - 1}"
        )
    if np.any(arr[:, 3] < arr[:, 1]) or np.any(arr[:, 4] < arr[:, 2]):
        raise ValueError(f"{what} of image {index}: boxes must have x2 >= x1 and y2 >= y1")
    return arr


def _annotation(ann_id: int, image_id: int, row: np.ndarray) -> dict[str, Any]:
    """One COCO annotation from (class, x1, y1, x2, y2[, score]); category ids are class + 1."""
    x1, y1, x2, y2 = (float(v) for v in row[1:5])
    w, h = x2 - x1, y2 - y1
    ann: dict[str, Any] = {
        "id": ann_id,
        "image_id": image_id,
        "category_id": int(row[0]) + 1,
        "bbox": [x1, y1, w, h],
        "area": w * h,
        "iscrowd": 0,
    }
    if row.size > 5:
        ann["score"] = float(row[5])
    return ann


def _coco(images: list[dict], categories: list[dict], annotations: list[dict]) -> Any:
    """An in-memory pycocotools COCO object (no JSON file), index built silently."""
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = {"images": images, "categories": categories, "annotations": annotations}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _mean_valid(precision: np.ndarray) -> float:
    """COCO summarize(): mean of the entries that are not -1, nan when all are -1."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else math.nan


def detection_metrics(
    ground_truth: Sequence[Any],
    predictions: Sequence[Any],
    class_names: Sequence[str],
    max_dets: int = 100,
) -> dict[str, Any]:
    """mAP50, mAP75, mAP50-95 and per-class AP50 / AP50-95 over a set of images.

    ground_truth[i]: rows (class, x1, y1, x2, y2) in pixels for image i (may be empty).
    predictions[i]: rows (class, x1, y1, x2, y2, score) for image i (may be empty).
    class_names: names of classes 0..K-1; the per-class results are keyed by these.
    Returns {"mAP50", "mAP75", "mAP50-95": float, "AP50", "AP50-95": {name: float},
    "num_gt": {name: int}}; values are nan where no ground truth makes them undefined.
    """
    if len(ground_truth) != len(predictions):
        raise ValueError(
            f"{len(ground_truth)} ground-truth entries but {len(predictions)} prediction "
            "entries: give one (possibly empty) list per image in both"
        )
    names = [str(n) for n in class_names]
    if not names:
        raise ValueError("class_names is empty")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {names}")
    if max_dets < 1:
        raise ValueError(f"max_dets must be positive, got {max_dets}")
    from pycocotools.cocoeval import COCOeval

    k = len(names)
    images = [{"id": i + 1} for i in range(len(ground_truth))]
    categories = [{"id": c + 1, "name": n} for c, n in enumerate(names)]
    # Annotation ids start at 1: COCOeval marks "unmatched" with id 0.
    gt_anns: list[dict] = []
    dt_anns: list[dict] = []
    num_gt = [0] * k
    for i, (gts, dts) in enumerate(zip(ground_truth, predictions)):
        for row in _as_rows(gts, 5, "ground truth", i, k):
            gt_anns.append(_annotation(len(gt_anns) + 1, i + 1, row))
            num_gt[int(row[0])] += 1
        for row in _as_rows(dts, 6, "predictions", i, k):
            dt_anns.append(_annotation(len(dt_anns) + 1, i + 1, row))

    coco_gt = _coco(images, categories, gt_anns)
    coco_dt = _coco(images, categories, dt_anns)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        # Only the last (largest) maxDets entry is evaluated by evaluate(); one entry suffices.
        evaluator.params.maxDets = [max_dets]
        evaluator.evaluate()
        evaluator.accumulate()
    params = evaluator.params
    # precision: [IoU threshold, recall point, class, area range, max dets]
    area_all = params.areaRngLbl.index("all")
    prec = evaluator.eval["precision"][:, :, :, area_all, -1]
    t50 = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    t75 = int(np.argmin(np.abs(params.iouThrs - 0.75)))
    cat_index = {cat_id: j for j, cat_id in enumerate(params.catIds)}
    ap50: dict[str, float] = {}
    ap5095: dict[str, float] = {}
    for c, name in enumerate(names):
        j = cat_index[c + 1]
        ap50[name] = _mean_valid(prec[t50, :, j])
        ap5095[name] = _mean_valid(prec[:, :, j])
    return {
        "mAP50": _mean_valid(prec[t50]),
        "mAP75": _mean_valid(prec[t75]),
        "mAP50-95": _mean_valid(prec),
        "AP50": ap50,
        "AP50-95": ap5095,
        "num_gt": dict(zip(names, num_gt)),
    }
