"""Tests for the COCO-style detection metrics (tdfusion_ros/metrics/detection.py)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pycocotools")

from tdfusion_ros.metrics.detection import detection_metrics  # noqa: E402

NAMES = ["person", "car"]


def _with_score(gt: list[list[float]], score: float = 1.0) -> list[list[float]]:
    return [row + [score] for row in gt]


def test_predictions_equal_to_ground_truth_give_one() -> None:
    gts = [
        [[0, 10, 10, 50, 80], [1, 100, 40, 180, 90]],
        [[1, 5, 5, 25, 25]],
        [],  # an image with neither ground truth nor predictions
    ]
    out = detection_metrics(gts, [_with_score(g) for g in gts], NAMES)
    # COCO's precision is tp / (tp + fp + spacing(1)): one ulp below 1.
    for key in ("mAP50", "mAP75", "mAP50-95"):
        assert out[key] == pytest.approx(1.0, abs=1e-12)
    assert out["AP50"] == pytest.approx({"person": 1.0, "car": 1.0}, abs=1e-12)
    assert out["AP50-95"] == pytest.approx({"person": 1.0, "car": 1.0}, abs=1e-12)
    assert out["num_gt"] == {"person": 1, "car": 2}


def test_wrong_class_everywhere_gives_zero_and_class_without_gt_is_nan() -> None:
    gts = [[[0, 10, 10, 50, 80]], [[0, 0, 0, 20, 20]]]
    preds = [[[1, 10, 10, 50, 80, 0.9]], [[1, 0, 0, 20, 20, 0.8]]]
    out = detection_metrics(gts, preds, NAMES)
    assert out["mAP50"] == 0.0 and out["mAP50-95"] == 0.0 and out["mAP75"] == 0.0
    assert out["AP50"]["person"] == 0.0
    assert math.isnan(out["AP50"]["car"]) and math.isnan(out["AP50-95"]["car"])


def test_false_positive_ranked_first_halves_ap() -> None:
    gts = [[[0, 0, 0, 10, 10]], []]
    # The FP sits on an image without ground truth and has the higher score:
    # (P, R) = (0, 0) then (0.5, 1); the interpolated precision is 0.5 at every recall point.
    preds = [[[0, 0, 0, 10, 10, 0.6]], [[0, 30, 30, 40, 40, 0.9]]]
    out = detection_metrics(gts, preds, NAMES)
    assert out["mAP50"] == pytest.approx(0.5, abs=1e-12)
    assert out["mAP50-95"] == pytest.approx(0.5, abs=1e-12)


def test_101_point_interpolation_hand_case() -> None:
    gts = [[[0, 0, 0, 10, 10], [0, 20, 20, 30, 30]]]
    preds = [[[0, 0, 0, 10, 10, 0.9], [0, 50, 50, 60, 60, 0.8], [0, 20, 20, 30, 30, 0.7]]]
    # PR points (R, P): (0.5, 1), (0.5, 0.5), (1, 2/3). Envelope: 1 for recall 0..0.50
    # (51 points), 2/3 for 0.51..1.00 (50 points).
    expected = (51 * 1.0 + 50 * (2 / 3)) / 101
    out = detection_metrics(gts, preds, NAMES)
    assert out["mAP50"] == pytest.approx(expected, abs=1e-12)
    assert out["AP50"]["person"] == pytest.approx(expected, abs=1e-12)


def test_iou_thresholds_between_050_and_095() -> None:
    # IoU = 100 / 150 = 0.667: a match at thresholds 0.50..0.65 (4 of 10), not at 0.75.
    out = detection_metrics([[[0, 0, 0, 10, 10]]], [[[0, 0, 0, 10, 15, 1.0]]], NAMES)
    assert out["mAP50"] == pytest.approx(1.0, abs=1e-12)
    assert out["mAP75"] == 0.0
    assert out["mAP50-95"] == pytest.approx(0.4, abs=1e-12)


def test_max_dets_keeps_the_top_scoring_detections_per_image_and_class() -> None:
    gts = [[[0, 0, 0, 10, 10]]]
    preds = [[[0, 30, 30, 40, 40, 0.9], [0, 0, 0, 10, 10, 0.5]]]
    assert detection_metrics(gts, preds, NAMES)["mAP50"] == pytest.approx(0.5, abs=1e-12)
    assert detection_metrics(gts, preds, NAMES, max_dets=1)["mAP50"] == 0.0


def test_empty_inputs_and_bad_input() -> None:
    out = detection_metrics([[], []], [[], []], NAMES)
    assert all(math.isnan(out[k]) for k in ("mAP50", "mAP75", "mAP50-95"))
    assert detection_metrics([], [], NAMES)["num_gt"] == {"person": 0, "car": 0}
    # Ground truth without any prediction: AP 0, not nan.
    assert detection_metrics([[[1, 0, 0, 5, 5]]], [[]], NAMES)["AP50"]["car"] == 0.0
    with pytest.raises(ValueError, match="per image"):
        detection_metrics([[]], [], NAMES)
    with pytest.raises(ValueError, match="class ids"):
        detection_metrics([[[2, 0, 0, 5, 5]]], [[]], NAMES)
    with pytest.raises(ValueError, match="x2 >= x1"):
        detection_metrics([[[0, 5, 0, 1, 5]]], [[]], NAMES)
    with pytest.raises(ValueError, match="rows of 6"):
        detection_metrics([[]], [[[0, 0, 0, 5, 5]]], NAMES)


def test_no_torch_or_ultralytics_import() -> None:
    code = (
        "import sys\n"
        "from tdfusion_ros.metrics.detection import detection_metrics\n"
        "detection_metrics([[[0, 0, 0, 5, 5]]], [[[0, 0, 0, 5, 5, 1.0]]], ['a'])\n"
        "bad = [m for m in ('torch', 'ultralytics', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=repo)


def test_agrees_with_the_standard_cocoeval_summary() -> None:
    """Random scene, evaluated the textbook way (loadRes + summarize) for comparison."""
    import contextlib
    import io

    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(7)
    gts, preds = [], []
    for _ in range(6):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 500, (n, 2))
        wh = rng.uniform(8, 120, (n, 2))
        cls = rng.integers(0, 2, (n, 1))
        gt = np.hstack([cls, xy, xy + wh])
        jitter = rng.normal(0, 6, gt[:, 1:].shape)
        found = np.hstack([gt[:, :1], gt[:, 1:] + jitter, rng.uniform(0.3, 1, (n, 1))])
        extra = int(rng.integers(0, 4))
        exy = rng.uniform(0, 500, (extra, 2))
        junk = np.hstack([rng.integers(0, 2, (extra, 1)), exy, exy + 40,
                          rng.uniform(0, 1, (extra, 1))])
        found = np.vstack([found, junk])
        found[:, 3] = np.maximum(found[:, 3], found[:, 1])
        found[:, 4] = np.maximum(found[:, 4], found[:, 2])
        gts.append(gt.tolist())
        preds.append(found.tolist())
    ours = detection_metrics(gts, preds, NAMES)

    dataset = {
        "images": [{"id": i + 1} for i in range(len(gts))],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
        "annotations": [
            {"id": j + 1, "image_id": i + 1, "category_id": int(c) + 1, "iscrowd": 0,
             "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1)}
            for j, (i, (c, x1, y1, x2, y2)) in enumerate(
                (i, row) for i, g in enumerate(gts) for row in g)
        ],
    }
    results = [
        {"image_id": i + 1, "category_id": int(c) + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
         "score": s}
        for i, p in enumerate(preds) for (c, x1, y1, x2, y2, s) in p
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        gt_coco = COCO()
        gt_coco.dataset = dataset
        gt_coco.createIndex()
        evaluator = COCOeval(gt_coco, gt_coco.loadRes(results), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    assert ours["mAP50-95"] == pytest.approx(evaluator.stats[0], abs=1e-12)
    assert ours["mAP50"] == pytest.approx(evaluator.stats[1], abs=1e-12)
    assert ours["mAP75"] == pytest.approx(evaluator.stats[2], abs=1e-12)
    assert 0.0 < ours["mAP50-95"] < ours["mAP50"] < 1.0
