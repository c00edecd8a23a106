"""The runtime's numpy post-processing equals ultralytics' and transformers' own on real outputs.

Random-weight networks on real MSRS frames give many low-score boxes, several of them with
exactly equal scores (letterbox bars and flat dark regions give identical features). Equal
scores make the NMS order a convention: ours keeps the stable order, as torchvision's NMS does,
which ultralytics uses whenever torchvision is loaded, so the test loads it.
"""

from __future__ import annotations

# Imported before ultralytics: it points ultralytics at an offline, temporary configuration.
from training.onnx_task_export import fused_like_images, segformer_b0, yolov8n_detector

# isort: split
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision  # noqa: F401 - ultralytics' NMS uses torchvision's once it is loaded
from scipy.optimize import linear_sum_assignment
from ultralytics.data.augment import LetterBox
from ultralytics.utils import nms, ops

from tdfusion_ros.runtime.postprocess import (
    Detections,
    Letterbox,
    decode_yolo,
    detector_input,
    letterbox,
    segmentation_class_map,
    segmenter_input,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def images(shared_data: Path) -> list[np.ndarray]:
    return fused_like_images(shared_data, count=3)


@pytest.fixture(scope="module")
def detectors() -> dict[str, torch.nn.Module]:
    """A random YOLOv8n as built, and one whose class biases are zeroed.

    As built, the class-score biases assume a trained 80-class prior, so random weights give
    scores near 1e-3, almost all for one class; zero biases put scores near 0.5 for every
    class, so class-wise NMS has work to do.
    """
    torch.manual_seed(0)
    as_built = yolov8n_detector(3).eval()
    torch.manual_seed(1)
    zeroed = yolov8n_detector(3).eval()
    with torch.no_grad():
        for cls_head in zeroed.model[-1].cv3:
            cls_head[-1].bias.zero_()
    return {"as_built": as_built, "zero_bias": zeroed}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def ultralytics_detections(raw: torch.Tensor, input_hw: tuple[int, int],
                           source_hw: tuple[int, int], **nms_args: float) -> np.ndarray:
    """ultralytics' own predictor post-processing: NMS, then scale_boxes to the source."""
    out = nms.non_max_suppression(raw.clone(), **nms_args)[0]
    out[:, :4] = ops.scale_boxes(input_hw, out[:, :4], source_hw)
    return out.numpy()


def assert_same_detections(ours: Detections, theirs: np.ndarray) -> None:
    """A 1:1 matching (best total IoU, same class) with IoU > 0.99 and scores within 1e-4.

    An assignment rather than a nearest-box search: after clipping, distinct detections can
    land on the same box.
    """
    assert len(ours) == len(theirs)
    if not len(ours):
        return
    iou = box_iou(ours.xyxy.astype(np.float64), theirs[:, :4].astype(np.float64))
    iou[ours.class_ids[:, None] != theirs[None, :, 5].astype(int)] = 0.0
    rows, cols = linear_sum_assignment(iou, maximize=True)
    assert np.all(iou[rows, cols] > 0.99)
    np.testing.assert_allclose(ours.scores[rows], theirs[cols, 4], rtol=0, atol=1e-4)


@pytest.mark.parametrize("input_hw", [(320, 320), (256, 320), (480, 640), (224, 288), (640, 480)])
def test_letterbox_matches_ultralytics(images: list[np.ndarray], input_hw: tuple[int, int]) -> None:
    for source in (images[0], images[1][37:138, 5:338]):  # full frame and an odd-sized crop
        as_uint8 = np.round(source * 255).astype(np.uint8)
        expected = LetterBox(new_shape=input_hw, auto=False)(image=as_uint8)[..., 0]
        ours, box = letterbox(as_uint8, input_hw)
        np.testing.assert_array_equal(ours, expected)
        expected_f = LetterBox(new_shape=input_hw, auto=False, padding_value=114 / 255)(
            image=source)[..., 0]
        ours_f, _ = letterbox(source, input_hw)
        np.testing.assert_array_equal(ours_f, expected_f)
        top_left = LetterBox(new_shape=input_hw, auto=False, center=False)(image=as_uint8)
        ours_tl, box_tl = letterbox(as_uint8, input_hw, center=False)
        np.testing.assert_array_equal(ours_tl, top_left[..., 0])
        assert (box_tl.pad_x, box_tl.pad_y) == (0, 0)
        # Undoing: the same mapping as ultralytics' scale_boxes, including the clipping.
        rng = np.random.default_rng(1)
        xy = rng.uniform(-20, max(input_hw) + 20, size=(50, 2)).astype(np.float32)
        boxes = np.concatenate([xy, xy + rng.uniform(1, 90, size=(50, 2))], 1).astype(np.float32)
        expected_boxes = ops.scale_boxes(input_hw, boxes.copy(), source.shape)
        np.testing.assert_allclose(box.to_source(boxes), expected_boxes, rtol=0, atol=1e-3)


@pytest.mark.parametrize(
    "variant, conf, iou, max_det",
    [("as_built", 1e-3, 0.7, 300), ("zero_bias", 0.25, 0.7, 300), ("zero_bias", 0.25, 0.45, 40)],
)
def test_decode_matches_ultralytics_on_a_real_detector(
    images: list[np.ndarray], detectors: dict[str, torch.nn.Module], variant: str,
    conf: float, iou: float, max_det: int,
) -> None:
    input_hw = (320, 320)  # square: the 4:3 frames get letterbox bars
    total = suppressed = 0
    classes: set[int] = set()
    for image in images:
        x, box = detector_input(image, input_hw)
        with torch.no_grad():
            raw = detectors[variant](torch.from_numpy(x))[0]
        assert raw.shape == (1, 7, 2100)
        ours = decode_yolo(raw.numpy(), conf, iou, max_det, box)
        theirs = ultralytics_detections(raw, input_hw, image.shape, conf_thres=conf,
                                        iou_thres=iou, max_det=max_det)
        assert_same_detections(ours, theirs)
        total += len(ours)
        suppressed += int((raw[0, 4:].amax(0) > conf).sum()) - len(ours)
        classes |= set(ours.class_ids.tolist())
        assert ours.xyxy.dtype == np.float32 and ours.class_ids.dtype == np.int32
        assert np.all(ours.xyxy[:, [1, 3]] <= image.shape[0])
    assert total > 30 and suppressed > 30, "the check needs many boxes and real suppression"
    if variant == "zero_bias":
        assert len(classes) >= 2


def synthetic_raw() -> np.ndarray:
    """Known boxes (cx, cy, w, h, score class 0, score class 1) in a 320x320 input."""
    rows = [
        (100, 100, 40, 40, 0.90, 0.00),  # kept
        (104, 100, 40, 40, 0.80, 0.00),  # IoU 0.82 with the first, same class: suppressed
        (104, 100, 40, 40, 0.00, 0.85),  # same box, other class: kept
        (200, 50, 20, 10, 0.30, 0.10),  # kept, class 0
        (300, 200, 50, 50, 0.20, 0.00),  # below the 0.25 threshold
        (120, 100, 40, 40, 0.70, 0.00),  # IoU 0.33 with the first: kept
        (310, 300, 40, 60, 0.00, 0.60),  # reaches past the bottom of the source image: clipped
        (0, 0, 0, 0, 0.00, 0.00),
    ]
    return np.asarray(rows, dtype=np.float32).T[None]


def test_decode_synthetic_known_boxes() -> None:
    raw = synthetic_raw()
    source_hw, input_hw = (480, 640), (320, 320)  # scale 0.5, 40 rows of padding at the top
    box = Letterbox(source_hw, input_hw, 0.5, 0.5, 0, 40)
    ours = decode_yolo(raw, 0.25, 0.7, 300, box)
    expected_xyxy = np.array([
        [160, 80, 240, 160],
        [168, 80, 248, 160],
        [200, 80, 280, 160],
        [580, 460, 640, 480],
        [380, 10, 420, 30],
    ], dtype=np.float32)
    np.testing.assert_array_equal(ours.xyxy, expected_xyxy)
    np.testing.assert_array_equal(ours.scores, np.float32([0.9, 0.85, 0.7, 0.6, 0.3]))
    np.testing.assert_array_equal(ours.class_ids, [0, 1, 0, 1, 0])
    theirs = ultralytics_detections(torch.from_numpy(raw), input_hw, source_hw,
                                    conf_thres=0.25, iou_thres=0.7)
    assert_same_detections(ours, theirs)
    rows = ours.as_rows()
    assert rows.shape == (5, 6) and rows[0].tolist() == [0, 160, 80, 240, 160, pytest.approx(0.9)]


def test_decode_limits_and_empty_results() -> None:
    raw = synthetic_raw()
    top2 = decode_yolo(raw, 0.25, 0.7, max_det=2)
    np.testing.assert_array_equal(top2.scores, np.float32([0.9, 0.85]))
    assert top2.xyxy[0].tolist() == [80, 80, 120, 120]  # input pixels without a letterbox
    none = decode_yolo(raw, conf_threshold=0.95)
    assert len(none) == 0 and none.xyxy.shape == (0, 4) and none.xyxy.dtype == np.float32
    assert none.as_rows().shape == (0, 6)
    with pytest.raises(ValueError, match="one image"):
        decode_yolo(np.concatenate([raw, raw]))
    with pytest.raises(ValueError, match="thresholds"):
        decode_yolo(raw, conf_threshold=1.5)
    with pytest.raises(ValueError, match="float image"):
        detector_input(np.zeros((48, 64), np.uint8), (64, 64))


@pytest.mark.parametrize("out_hw", [(480, 640), (333, 517)])
def test_class_map_matches_transformers(images: list[np.ndarray], out_hw: tuple[int, int]) -> None:
    from transformers import SegformerImageProcessor

    torch.manual_seed(0)
    model = segformer_b0(9).eval()
    processor = SegformerImageProcessor()
    seen = set()
    for image in images:
        x = segmenter_input(image, (128, 160))
        assert x.shape == (1, 1, 128, 160)
        with torch.no_grad():
            outputs = model(torch.from_numpy(x))
        expected = processor.post_process_semantic_segmentation(outputs, target_sizes=[out_hw])
        expected = expected[0].numpy()
        ours = segmentation_class_map(outputs.logits.numpy(), out_hw)
        assert ours.dtype == np.uint8 and ours.shape == out_hw
        assert np.mean(ours == expected) >= 0.999
        seen |= set(np.unique(ours).tolist())
    assert len(seen) >= 2, "a constant class map would make this comparison empty"


def test_class_map_many_classes_and_same_size() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 150, 24, 32)).astype(np.float32)  # more than cv2 resizes at once
    up = F.interpolate(torch.from_numpy(logits), size=(96, 128), mode="bilinear",
                       align_corners=False)
    expected = up.argmax(1)[0].numpy()
    assert np.mean(segmentation_class_map(logits, (96, 128)) == expected) >= 0.999
    same = segmentation_class_map(logits[0], (24, 32))
    np.testing.assert_array_equal(same, logits[0].argmax(0))
    with pytest.raises(ValueError, match="uint8"):
        segmentation_class_map(np.zeros((300, 4, 4), np.float32), (8, 8))


def _class_map_by_stack(logits: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """The plain formula: every class plane resized, then numpy's argmax over classes."""
    planes = [cv2.resize(plane, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
              for plane in logits]
    return np.stack(planes).argmax(0).astype(np.uint8)


@pytest.mark.parametrize("classes", [1, 2, 9, 150])
def test_class_map_equals_the_argmax_of_the_resized_planes(classes: int) -> None:
    """Exactly equal, ties included (the lower class id wins, as numpy and torch decide)."""
    rng = np.random.default_rng(classes)
    logits = rng.normal(size=(classes, 30, 40)).astype(np.float32)
    logits[-1, :8, :8] = logits[0, :8, :8]  # exact ties between the first and last class
    logits[:, 20:, 30:] = 0.5  # all classes tied
    for out_hw in ((480, 640), (30, 40), (17, 23)):
        got = segmentation_class_map(logits[None], out_hw)
        np.testing.assert_array_equal(got, _class_map_by_stack(logits, out_hw))
    assert classes == 1 or len(np.unique(got)) > 1


def test_runtime_module_imports_no_torch() -> None:
    code = (
        "import sys, tdfusion_ros.runtime.postprocess\n"
        "bad = {'torch', 'ultralytics', 'transformers'} & set(sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
