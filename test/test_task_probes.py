"""The frozen-encoder task networks of the task-driven comparison, and its paired statistics.

The probes are trained on features cached once; what they report must be what the saved
network does when the ordinary evaluators run it on the images, and the fast AP50 of the
bootstrap must be pycocotools' AP50.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tdfusion_ros.metrics.detection import detection_metrics
from tdfusion_ros.metrics.segmentation import ConfusionMatrix
from training.fused_dataset import FusedDataset, write_fused_dataset
from training.paired_bootstrap import DetectionMatches, SegmentationConfusions, paired_bootstrap
from training.task_driven_arms import last_quarter_gain
from training.task_driven_report import verdict
from training.task_networks import (
    DetectionTask,
    SegmentationTask,
    load_task_checkpoint,
    task_from_checkpoint,
)
from training.task_probes import (
    DETECTOR_ENCODER_LAYERS,
    ProbeSettings,
    _decode,
    _run_from,
    train_detector_probes,
    train_segmenter_probes,
)
from training.train_detector import evaluate_detector
from training.train_segmenter import evaluate_segmenter

NAMES = ("00111D", "00115D", "00119D", "00123D", "00681N", "00686N")
VAL = ("00119D", "00686N")


@pytest.fixture(scope="module")
def fused(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> FusedDataset:
    """Infrared-only fused set of six real MSRS pairs and two generated scenes."""
    root = tmp_path_factory.mktemp("pairs")
    src = shared_data / "msrs_det"
    for sub, ext in (("ir", ".png"), ("vi", ".png"), ("labels", ".txt"), ("seg", ".png")):
        (root / sub).mkdir()
        for n in NAMES:
            shutil.copy(src / sub / f"{n}{ext}", root / sub / f"{n}{ext}")
    for f in ("classes.txt", "seg_classes.txt"):
        shutil.copy(src / f, root / f)
    return write_fused_dataset(tmp_path_factory.mktemp("fused") / "ir", "ir", roots=[str(root)],
                               val_names=VAL, scenes_count=2, scenes_size=(240, 320),
                               threads=1, log=lambda *_: None)


def test_the_cheaper_decoder_is_the_segmenters_own_function() -> None:
    torch.manual_seed(0)
    model = SegmentationTask(9, (256, 320), pretrained=False).model.eval()
    x = torch.rand(2, 1, 256, 320)
    with torch.no_grad():
        assert torch.allclose(_decode(model, model.encoder(x)), model(x), atol=1e-4)


def test_the_detector_runs_on_from_cached_encoder_outputs() -> None:
    torch.manual_seed(0)
    task = DetectionTask(3, (240, 320), pretrained=False)
    model = task.model.eval()
    x = task.prepare(torch.rand(1, 1, 240, 320))
    with torch.no_grad():
        outputs = model.model[0](x)
        cached = [model.model[k](outputs) for k in range(1, DETECTOR_ENCODER_LAYERS)]
        got = _run_from(model, cached, DETECTOR_ENCODER_LAYERS)
        want = model(x)
    assert torch.allclose(got[0], want[0], atol=1e-4)


def test_segmenter_probes_report_what_the_saved_network_scores(fused: FusedDataset,
                                                               tmp_path: Path) -> None:
    settings = ProbeSettings(epochs=3, lr=3e-3, batch=4, input_size=(128, 160), threads=1)
    outs = {0: tmp_path / "s0", 1: tmp_path / "s1"}
    results = train_segmenter_probes(fused, outs, settings, log=lambda *_: None)
    for seed, out in outs.items():
        metrics = results[seed]
        assert len(metrics["history"]) == 3 and metrics["names"] == ["00119D", "00686N"]
        # the ordinary evaluator on the images agrees with the probe's cached-feature score
        again = evaluate_segmenter(out / "task.pt", fused, threads=1)
        assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=2e-3)
        confusions = np.load(out / "confusions.npy")
        assert confusions.shape == (2, 9, 9)
        assert SegmentationConfusions(confusions).miou() == pytest.approx(metrics["mIoU"])
        record = torch.load(out / "task.pt", weights_only=True)
        assert record["meta"]["frozen_encoder"] and record["meta"]["seed"] == seed
    # the encoder stayed the ImageNet one, the heads of different seeds differ
    a = torch.load(outs[0] / "task.pt", weights_only=True)["state_dict"]
    b = torch.load(outs[1] / "task.pt", weights_only=True)["state_dict"]
    fresh = SegmentationTask(9, (128, 160)).model.state_dict()
    assert all(torch.equal(a[k], fresh[k]) for k in fresh if k.startswith("encoder."))
    assert not torch.equal(a["classify.weight"], b["classify.weight"])
    # a finished seed is not trained again
    again_0 = train_segmenter_probes(fused, {0: outs[0]}, settings)[0]
    assert again_0["history"] == results[0]["history"] and again_0["mIoU"] == results[0]["mIoU"]


def test_detector_probe_reports_what_the_saved_network_scores(fused: FusedDataset,
                                                              tmp_path: Path) -> None:
    settings = ProbeSettings(epochs=2, lr=3e-3, batch=4, input_size=(240, 320),
                             weight_decay=5e-4, threads=1, val_every=1)
    metrics = train_detector_probes(fused, {0: tmp_path}, settings, log=lambda *_: None)[0]
    assert [h["epoch"] for h in metrics["history"]] == [0, 1]
    assert all("val_mAP50" in h for h in metrics["history"])
    again = evaluate_detector(tmp_path / "task.pt", fused, threads=1)
    assert again["mAP50"] == pytest.approx(metrics["mAP50"], abs=1e-3, nan_ok=True)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    task = task_from_checkpoint(load_task_checkpoint(tmp_path / "task.pt"))
    with np.load(tmp_path / "predictions.npz") as npz:
        assert sorted(npz.files) == sorted(f"{p}_{n}" for n in saved["names"]
                                           for p in ("pred", "truth"))
        for image_path in fused.images("val"):  # the saved network predicts the same boxes
            image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
            rows = task.predict(torch.from_numpy(image / 255.0).float()[None, None])[0].numpy()
            cached = npz[f"pred_{image_path.stem}"]
            assert len(cached) > 0 and rows.shape == cached.shape
            assert np.allclose(rows, cached, atol=1e-3)


def _random_detections(rng: np.random.Generator, images: int) -> tuple[list, list]:
    truth, preds = [], []
    for _ in range(images):
        g = []
        for _ in range(rng.integers(0, 6)):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(10, 100, 2)
            g.append([rng.integers(0, 3), x, y, x + w, y + h])
        g = np.array(g, np.float64).reshape(-1, 5)
        d = []
        for row in g:
            if rng.random() < 0.8:
                cls = row[0] if rng.random() < 0.9 else rng.integers(0, 3)
                d.append([cls, *(row[1:] + rng.normal(0, 4, 4)), rng.uniform()])
        for _ in range(rng.integers(0, 8)):
            x, y = rng.uniform(0, 500, 2)
            w, h = rng.uniform(10, 100, 2)
            d.append([rng.integers(0, 3), x, y, x + w, y + h, rng.uniform()])
        d = np.array(d, np.float64).reshape(-1, 6)
        d[:, 3] = np.maximum(d[:, 3], d[:, 1] + 1)
        d[:, 4] = np.maximum(d[:, 4], d[:, 2] + 1)
        truth.append(g)
        preds.append(d)
    return truth, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_ap50_is_pycocotools_ap50(seed: int) -> None:
    truth, preds = _random_detections(np.random.default_rng(seed), 30)
    reference = detection_metrics(truth, preds, ["a", "b", "c"])
    matches = DetectionMatches(truth, preds, 3)
    assert matches.ap50() == pytest.approx(reference["mAP50"], abs=1e-9)
    assert matches.ap50_per_class() == pytest.approx(list(reference["AP50"].values()), abs=1e-9)
    # an image drawn twice: pycocotools on the duplicated set
    weights = np.ones(30)
    weights[[3, 7]] = 2
    dup = [3, 7]
    ref2 = detection_metrics(truth + [truth[i] for i in dup], preds + [preds[i] for i in dup],
                             ["a", "b", "c"])
    assert matches.ap50(weights) == pytest.approx(ref2["mAP50"], abs=0.01)


def test_fast_miou_is_the_confusion_matrix_miou() -> None:
    rng = np.random.default_rng(0)
    per_image = rng.integers(0, 50, (10, 9, 9))
    per_image[:, 6] = 0  # a class absent from labels
    per_image[:, :, 6] = 0  # and from predictions: left out
    matrix = ConfusionMatrix(9)
    matrix.matrix = per_image.sum(0)
    assert SegmentationConfusions(per_image).miou() == pytest.approx(matrix.compute()["mIoU"])


def _seg_arm(rng: np.random.Generator, accuracy: float, seeds: int = 3) -> list:
    """Per seed, per-image confusion matrices of a segmenter of about ``accuracy``."""
    out = []
    for _ in range(seeds):
        conf = np.zeros((40, 3, 3))
        for i in range(40):
            hit = rng.binomial(1000, np.clip(accuracy + rng.normal(0, 0.05), 0, 1))
            conf[i] = [[hit, (1000 - hit) / 2, (1000 - hit) / 2]] * 3
            np.fill_diagonal(conf[i], hit)
        out.append(SegmentationConfusions(conf).miou)
    return out


def test_paired_bootstrap_separates_a_real_gain_and_not_a_null_one() -> None:
    rng = np.random.default_rng(0)
    scores = {"base": _seg_arm(rng, 0.6), "same": _seg_arm(rng, 0.6),
              "better": _seg_arm(rng, 0.7), "other": _seg_arm(rng, 0.5)}
    iv = paired_bootstrap(scores, {"null": ("same", ["base"]), "gain": ("better", ["base"]),
                                   "best": ("better", ["base", "other"])}, 40, draws=300)
    assert iv["null"].low < 0 < iv["null"].high
    assert iv["gain"].low > 0
    assert iv["best"].mean == pytest.approx(iv["gain"].mean)
    with pytest.raises(ValueError, match="numbers of seeds"):
        paired_bootstrap({"a": scores["base"], "b": scores["same"][:2]}, {"x": ("a", ["b"])}, 40)


def test_budget_rule_and_verdict_follow_the_preregistration() -> None:
    curve = {5: 0.20, 10: 0.30, 15: 0.34, 20: 0.345, 25: 0.35, 30: 0.35}
    assert last_quarter_gain(curve, 20) == pytest.approx(0.005)
    assert last_quarter_gain(curve, 10) == pytest.approx(0.10)
    assert last_quarter_gain(curve, 40) == float("inf")

    def result(low_c: float, high_c: float, low_b: float, high_b: float,
               flat: bool = True) -> dict:
        return {"arms": {"td": {}, "c": {}}, "flat": {"td": flat, "c": True},
                "same_images": True,
                "comparisons": {"td - c": {"bootstrap": {"low": low_c, "high": high_c}},
                                "td - best of ir, vis": {"bootstrap": {"low": low_b,
                                                                       "high": high_b}}}}

    assert verdict(result(0.01, 0.03, 0.002, 0.02), "td", "c", 0.01)["verdict"] == "supported"
    assert verdict(result(-0.02, 0.005, 0.01, 0.03), "td", "c", 0.01)["verdict"] == "refuted"
    assert verdict(result(-0.02, 0.03, 0.01, 0.03), "td", "c", 0.01)["verdict"] == "not decided"
    assert verdict(result(0.01, 0.03, 0.01, 0.03, flat=False), "td", "c",
                   0.01)["verdict"] == "invalid"
