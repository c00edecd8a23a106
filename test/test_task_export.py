"""Exported detector and segmenter graphs match PyTorch through real ONNX Runtime sessions."""

from __future__ import annotations

# Imported before ultralytics: it points ultralytics at an offline, temporary configuration.
from training.onnx_task_export import (
    ExportParityError,
    check_detector_onnx,
    check_segmenter_onnx,
    export_detector,
    export_segmenter,
    fused_like_images,
    segformer_b0,
    yolov8n_detector,
)

# isort: split
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision  # noqa: F401 - ultralytics' NMS uses torchvision's once it is loaded
from ultralytics.utils import nms, ops

from tdfusion_ros.runtime.postprocess import decode_yolo, detector_input, segmenter_input

from .test_postprocess import assert_same_detections

CLASSES = ["person", "bicycle", "car"]
DET_HW = (256, 320)
SEG_HW = (128, 160)
SEG_MEAN, SEG_STD = 0.45, 0.25


@pytest.fixture(scope="module")
def images(shared_data: Path) -> list[np.ndarray]:
    return fused_like_images(shared_data, count=3)


@pytest.fixture(scope="module")
def detector_export(
    images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[torch.nn.Module, Path, dict[str, Any]]:
    torch.manual_seed(0)
    model = yolov8n_detector(len(CLASSES))
    with torch.no_grad():  # scores near 0.5 so the runtime path below has detections to compare
        for cls_head in model.model[-1].cv3:
            cls_head[-1].bias.zero_()
    model.train()  # the export must not depend on (or change) the caller's mode
    path = tmp_path_factory.mktemp("bundle") / "detector.onnx"
    meta = export_detector(model, path, DET_HW, class_names=CLASSES, check_images=images)
    assert model.training
    return model.eval(), path, meta


@pytest.fixture(scope="module")
def segmenter_export(
    images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> tuple[torch.nn.Module, Path, dict[str, Any]]:
    torch.manual_seed(0)
    model = segformer_b0(4)
    path = tmp_path_factory.mktemp("bundle") / "segmenter.onnx"
    names = ["background", "person", "bike", "car"]
    meta = export_segmenter(model, path, SEG_HW, class_names=names, check_images=images,
                            mean=SEG_MEAN, std=SEG_STD)
    return model.eval(), path, meta


def check_io_metadata(meta: dict[str, Any], path: Path) -> ort.InferenceSession:
    """The recorded names, shapes, hash and opset are those of the file on disk."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for recorded, actual in ((meta["inputs"], session.get_inputs()),
                             (meta["outputs"], session.get_outputs())):
        assert [(v["name"], v["shape"]) for v in recorded] == [(v.name, v.shape) for v in actual]
    assert meta["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta["file"] == path.name
    opsets = {o.domain: o.version for o in onnx.load(str(path)).opset_import}
    assert opsets[""] == meta["opset"] == 17
    return session


def test_detector_graph_matches_pytorch(
    images: list[np.ndarray], detector_export: tuple[torch.nn.Module, Path, dict[str, Any]]
) -> None:
    model, path, meta = detector_export
    session = check_io_metadata(meta, path)
    anchors = sum((DET_HW[0] // s) * (DET_HW[1] // s) for s in (8, 16, 32))
    assert meta["outputs"][0]["shape"] == [1, 4 + len(CLASSES), anchors]
    assert meta["input_hw"] == list(DET_HW) and meta["class_names"] == CLASSES
    assert meta["strides"] == [8, 16, 32] and meta["preprocess"]["center"] is True
    assert meta["parity"]["images"] == 3
    assert meta["parity"]["max_abs_diff"] <= 1e-3  # class scores
    assert meta["parity"]["max_box_diff_px"] <= 1e-2
    # The whole runtime path (letterbox, ONNX Runtime, numpy decoding) against ultralytics'
    # own post-processing of the same raw output. Detections are not compared across
    # backends: this random network scores thousands of overlapping boxes near 0.5, and
    # greedy NMS turns the ~1e-6 backend differences into different choices among near-ties.
    compared = 0
    for image in images:
        x, box = detector_input(image, DET_HW)
        raw_onnx = session.run(None, {"image": x})[0]
        with torch.no_grad():
            raw_torch = model(torch.from_numpy(x))[0]
        assert np.abs(raw_onnx - raw_torch.numpy()).max() <= 1e-3
        ours = decode_yolo(raw_onnx, 0.25, 0.7, 300, box)
        theirs = nms.non_max_suppression(torch.from_numpy(raw_onnx), 0.25, 0.7, max_det=300)[0]
        theirs[:, :4] = ops.scale_boxes(DET_HW, theirs[:, :4], image.shape)
        assert_same_detections(ours, theirs.numpy())
        compared += len(ours)
    assert compared > 30


def test_segmenter_graph_matches_pytorch(
    images: list[np.ndarray], segmenter_export: tuple[torch.nn.Module, Path, dict[str, Any]]
) -> None:
    model, path, meta = segmenter_export
    session = check_io_metadata(meta, path)
    assert meta["outputs"][0]["shape"] == [1, 4, SEG_HW[0] // 4, SEG_HW[1] // 4]
    assert meta["output_stride"] == 4
    assert meta["normalisation"] == {"feed": "fused Y, float32 in [0, 1]", "mean": SEG_MEAN,
                                     "std": SEG_STD, "in_graph": True}
    assert meta["parity"]["min_pixel_agreement"] >= 0.999
    # The normalisation is inside the graph: it takes the [0, 1] image itself.
    x = segmenter_input(images[0], SEG_HW)
    with torch.no_grad():
        expected = model((torch.from_numpy(x) - SEG_MEAN) / SEG_STD).logits.numpy()
    got = session.run(None, {"image": x})[0]
    assert np.abs(got - expected).max() < 1e-4
    assert len(np.unique(got.argmax(1))) >= 2, "a constant class map would prove little"


def test_parity_checks_catch_a_different_network(
    images: list[np.ndarray],
    detector_export: tuple[torch.nn.Module, Path, dict[str, Any]],
    segmenter_export: tuple[torch.nn.Module, Path, dict[str, Any]],
) -> None:
    torch.manual_seed(1)
    other_detector = yolov8n_detector(len(CLASSES))
    with pytest.raises(ExportParityError, match="differ from PyTorch"):
        check_detector_onnx(other_detector, detector_export[1], images[:1])
    model, path, _ = segmenter_export
    with pytest.raises(ExportParityError, match="agree with PyTorch"):  # normalisation left out
        check_segmenter_onnx(model, path, images[:1])
    torch.manual_seed(1)
    with pytest.raises(ExportParityError, match="agree with PyTorch"):
        check_segmenter_onnx(segformer_b0(4), path, images[:1], SEG_MEAN, SEG_STD)


def test_export_refuses_bad_requests(tmp_path: Path, images: list[np.ndarray]) -> None:
    torch.manual_seed(0)
    model = yolov8n_detector(len(CLASSES))
    with pytest.raises(ValueError, match="multiples of 32"):
        export_detector(model, tmp_path / "d.onnx", (250, 320), check_images=images)
    with pytest.raises(ValueError, match="2 class names"):
        export_detector(model, tmp_path / "d.onnx", DET_HW, class_names=["a", "b"],
                        check_images=images)
    with pytest.raises(TypeError, match="DetectionModel"):
        export_detector(segformer_b0(2), tmp_path / "d.onnx", DET_HW, check_images=images)
    with pytest.raises(ValueError, match="HxW float"):
        export_detector(model, tmp_path / "d.onnx", DET_HW, check_images=[images[0] > 0.5])


def test_pretrained_encoder_graphs_match_pytorch(images: list[np.ndarray],
                                                 tmp_path: Path) -> None:
    """The ImageNet-encoder segmenter and detector export with their Lite preprocessing inside
    the graph, fixed input sizes, and PyTorch's outputs (the exporters' own parity checks)."""
    from training.task_networks import DetectionTask, SegmentationTask

    seg = SegmentationTask(4, SEG_HW, architecture="lite0_mlp").model
    seg_meta = export_segmenter(seg, tmp_path / "segmenter.onnx", SEG_HW, check_images=images,
                                class_names=["background", "person", "bike", "car"])
    check_io_metadata(seg_meta, tmp_path / "segmenter.onnx")
    assert seg_meta["inputs"][0]["shape"] == [1, 1, *SEG_HW] and seg_meta["output_stride"] == 4
    assert seg_meta["parity"]["min_pixel_agreement"] >= 0.999
    x = segmenter_input(images[0], SEG_HW)
    session = ort.InferenceSession(str(tmp_path / "segmenter.onnx"),
                                   providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = seg.eval()(torch.from_numpy(x)).numpy()
    assert np.abs(session.run(None, {"image": x})[0] - expected).max() < 1e-3
    det = DetectionTask(len(CLASSES), DET_HW, architecture="yolov8n_lite0").model
    det_meta = export_detector(det, tmp_path / "detector.onnx", DET_HW, class_names=CLASSES,
                               check_images=images, letterbox_center=False)
    check_io_metadata(det_meta, tmp_path / "detector.onnx")
    assert det_meta["inputs"][0]["shape"] == [1, 1, *DET_HW]
    assert det_meta["parity"]["max_abs_diff"] <= 1e-3
    assert det_meta["parity"]["max_box_diff_px"] <= 1e-2
