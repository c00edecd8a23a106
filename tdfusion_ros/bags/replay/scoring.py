"""Scoring after the run: fusion metrics on sampled pairs, and mAP and mIoU against the bag's
labels.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from tdfusion_ros.bags.replay.offline import _Offline


# --------------------------------------------------------------------------- after the run
def _fusion_metrics(run: _Offline) -> dict[str, Any]:
    from tdfusion_ros.metrics.fusion import fusion_metrics

    files = run.metric_files
    if not files:
        reason = ("--metrics-frames 0" if run.opts.metrics_frames == 0 else "no frame processed"
                  if not run.processed else "no frame could be sampled")
        return {"frames": 0, "note": f"fusion metrics not computed ({reason})"}
    started = time.perf_counter()
    series: dict[str, list[Any]] = {"index": [], "time_s": []}
    t0 = None
    for index, stamp, path in files:
        fused, ir, vis = np.load(path)
        values = fusion_metrics(fused, ir, vis)
        t0 = stamp if t0 is None else t0
        series["index"].append(index)
        series["time_s"].append(round((stamp - t0) / 1e9, 4))
        for name, value in values.items():
            series.setdefault(name, []).append(float(value))
    means = {name: float(np.nanmean(v)) if np.isfinite(v).any() else None
             for name, v in ((n, np.asarray(series[n], np.float64))
                             for n in series if n not in ("index", "time_s"))}
    every = run.metric_every
    note = (f"EN, SF, SCD, VIF, Qabf and SSIM of the fused Y against the network's inputs "
            f"(registered 8-bit thermal, visible Y), on {len(files)} of {run.processed} pairs")
    note += (" (every pair)." if every == 1 else
             f" (one pair in every {every}: subsampled to at most --metrics-frames "
             f"{run.opts.metrics_frames}; computed after the replay, "
             f"{time.perf_counter() - started:.1f} s, so they do not slow it).")
    return {"frames": len(files), "of": run.processed, "every": every, "means": means,
            "series": series, "seconds": time.perf_counter() - started, "note": note}


def _detection_eval(run: _Offline) -> dict[str, Any] | None:
    s = run.s
    if s.labels is None:
        return None
    from tdfusion_ros.metrics.detection import detection_metrics

    classes = list(s.labels.classes)
    thresholds = s.pipeline.thresholds
    base = {"labels_file": str(s.labels_file), "classes": classes,
            "frames_labelled": len(s.labels.boxes), "frames_evaluated": len(run.gt),
            "predictions_from_labels": run.opts.predictions_from_labels,
            "unmapped_predictions": dict(run.unmapped),
            "map_conf": run.opts.map_conf, "deployed_conf": thresholds.conf,
            "iou_threshold": thresholds.iou, "max_det": thresholds.max_det,
            "predictions_evaluated": run.eval_preds}
    if not run.gt:
        base["note"] = ("no processed pair has a labelled RGB stamp: check that the labels "
                        "belong to this bag")
        base.update({"mAP50": None, "mAP75": None, "mAP50-95": None, "AP50": {},
                     "AP50-95": {}, "num_gt": {}})
        return base
    if not run.s.pipeline.detection_enabled and not run.opts.predictions_from_labels:
        base["note"] = "the bundle has no detector (or detection is disabled): no mAP"
        base.update({"mAP50": None, "mAP75": None, "mAP50-95": None, "AP50": {},
                     "AP50-95": {}, "num_gt": {}})
        return base
    result = detection_metrics(run.gt, run.preds, classes)
    base.update(result)
    note = (f"COCO mAP (pycocotools) over the {len(run.gt)} processed pairs whose RGB stamp "
            f"is labelled ({len(s.labels.boxes)} labelled RGB frames in {s.labels_file}); "
            "boxes in fused-image pixels.")
    if run.opts.predictions_from_labels:
        note += (" DEBUG: the predictions are the labels themselves "
                 "(--predictions-from-labels), so mAP must be exactly 1.")
    else:
        note += (f" Scored detections ({run.eval_preds}) are decoded at conf "
                 f"{run.opts.map_conf:g} (--map-conf; NMS IoU {thresholds.iou:g}, at most "
                 f"{thresholds.max_det} per frame, as deployed) from the same detector outputs: "
                 "mAP ranks detections, so it needs the low-confidence ones too. Everything "
                 f"published (fused_bag, detections.json, counts, sample boxes) uses the "
                 f"node's conf {thresholds.conf:g}.")
    if run.unmapped:
        note += (f" Detector classes not in the labels were ignored: "
                 f"{', '.join(f'{k} ({v})' for k, v in sorted(run.unmapped.items()))}.")
    base["note"] = note
    return base


def _segmentation_eval(run: _Offline) -> dict[str, Any] | None:
    seg, s = run.seg, run.s
    if seg is None:
        return None
    k = len(seg.label_classes)
    base: dict[str, Any] = {
        "labels_file": str(s.labels_file), "classes": seg.label_classes,
        "segmenter_classes": seg.seg_classes, "matched": seg.matched,
        "label_classes_not_in_segmenter": [n for n in seg.label_classes if n not in seg.matched],
        "segmenter_classes_not_in_labels": seg.extra,
        "frames_labelled": len(s.labels.segmentation), "frames_evaluated": seg.frames,
        "predictions_from_labels": seg.from_labels,
        "mIoU": None, "mAcc": None, "aAcc": None, "IoU": {}, "Acc": {}, "label_pixels": {},
        "predicted_outside_labels": {},
        "label_classes_in_file": seg.original_classes,
        "class_map_file": None if seg.class_map_file is None else str(seg.class_map_file),
        "class_map": seg.class_map, "class_map_unused": seg.unused}
    if not s.pipeline.segmentation_enabled and not seg.from_labels:
        base["note"] = ("the labels carry label maps but the bundle has no segmenter (or "
                        "segmentation is disabled): no mIoU")
        return base
    if not seg.frames:
        base["note"] = ("no processed pair has a labelled RGB stamp with a label map: check "
                        "that the labels belong to this bag")
        return base
    result = seg.cm.compute()
    matrix = seg.cm.matrix
    iou = result["IoU"][:k]
    acc = result["Acc"][:k]
    finite = [v for v in iou if math.isfinite(v)]
    finite_acc = [v for v in acc if math.isfinite(v)]
    base.update({
        "IoU": dict(zip(seg.label_classes, iou)), "Acc": dict(zip(seg.label_classes, acc)),
        "mIoU": float(np.mean(finite)) if finite else None,
        "mAcc": float(np.mean(finite_acc)) if finite_acc else None,
        "aAcc": result["aAcc"],
        "classes_in_mIoU": [n for n, v in zip(seg.label_classes, iou) if math.isfinite(v)],
        "label_pixels": {n: int(v) for n, v in zip(seg.label_classes, matrix[:k].sum(axis=1))},
        "predicted_outside_labels": {n: int(v) for n, v in zip(seg.names[k:],
                                                                matrix[:, k:].sum(axis=0))
                                     if v}})
    note = (f"Pixel IoU per label class over the {seg.frames} processed pairs whose RGB stamp "
            f"has a label map ({len(s.labels.segmentation)} in {s.labels_file}), on the fused "
            "grid (label maps moved there by nearest neighbour), label 255 ignored. mIoU is "
            f"the mean over the {len(finite)} of {k} label classes present in the labels or "
            "the predictions (a class absent from both has no IoU).")
    if seg.class_map is not None:
        merged = ", ".join(f"{k} -> {v if v is not None else 'ignored'}"
                           for k, v in seg.class_map.items() if k not in seg.unused)
        note += (f" The label classes were mapped onto the segmenter's by "
                 f"{seg.class_map_file} ({merged}) before scoring; the classes below are the "
                 "mapped ones, matched to the segmenter's by name.")
    else:
        note += (" Segmenter classes are matched to the label classes by name (no class map: "
                 "--seg-class-map FILE maps label classes onto the segmenter's).")
    if seg.from_labels:
        note += (" DEBUG: the predictions are the label maps themselves "
                 "(--predictions-from-labels), so every IoU must be exactly 1.")
    missing = base["label_classes_not_in_segmenter"]
    if missing and not seg.from_labels:
        note += (f" Label classes the segmenter does not have (IoU 0 where present): "
                 f"{', '.join(missing)}.")
    if seg.extra and not seg.from_labels:
        note += (f" Segmenter classes not in the labels (their pixels count as misses of the "
                 f"labelled class, not in mIoU): {', '.join(seg.extra)}.")
    base["note"] = note
    return base
