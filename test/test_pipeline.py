"""The ROS-free fusion pipeline: parity with ``tdfusion_ros.fuse``, fallback, disabled outputs.

Parity uses the real F: ``models/fusion_default.pt`` exported to ONNX by ``training/export.py``
(as the default bundle is made) and run through the pipeline, against the PyTorch fuse command
on a real pair from ../shared/data/det. The other tests use a tiny hand-built bundle
(:func:`write_tiny_bundle`, also used by the node's DDS tests): a fusion graph with F's
interface, a detector with YOLOv8's raw output layout and a segmenter with SegFormer's quarter
size logits, all running in milliseconds, so they test the pipeline and not the networks.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tdfusion_ros.runtime.bundle import BundleError, load_bundle, write_bundle
from tdfusion_ros.runtime.pipeline import (
    FUSION,
    RGB_ONLY,
    SIZE_MISMATCH,
    THERMAL_ONLY,
    FusionPipeline,
    LatencyStats,
    PipelineError,
    PipelineInputError,
    PipelineSettings,
    overlay,
)
from tdfusion_ros.runtime.registration import RegistrationConfig
from tdfusion_ros.runtime.thermal_gain import GainConfig

REPO = Path(__file__).resolve().parents[1]
CLASS_NAMES = ["person", "bicycle", "car"]
SEG_CLASSES = ["background", "road", "hot"]
DET_HW = (128, 160)
SEG_HW = (64, 80)
# Detector anchors: boxes (cx, cy, w, h) in detector-input pixels; the last one pokes out of
# the image so clipping is exercised. Score biases: four anchors above any sane threshold.
ANCHOR_BOXES = np.array([[30, 40, 20, 30], [80, 64, 40, 30], [120, 30, 24, 24],
                         [150, 120, 40, 40], [60, 100, 10, 10], [100, 100, 12, 12]],
                        np.float32)
SCORE_BIAS = np.array([[3.0, -6, -6, 2.0, -6, -6],
                       [-6, -6, 2.5, -6, -6, -6],
                       [-6, 3.0, -6, -6, -6, -6]], np.float32)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _tensor(name: str, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def tiny_fusion(path: Path) -> None:
    """fused = max(ir, vis), dynamic height and width (F's interface)."""
    dims = [1, 1, "height", "width"]
    _save(helper.make_graph([helper.make_node("Max", ["ir", "vis"], ["fused"])], "fusion",
                            [_tensor("ir", dims), _tensor("vis", dims)],
                            [_tensor("fused", dims)]), path)


def tiny_detector(path: Path) -> None:
    """YOLOv8 raw layout (1, 4 + nc, anchors): fixed boxes, scores from the image mean."""
    anchors = ANCHOR_BOXES.shape[0]
    inits = [numpy_helper.from_array(ANCHOR_BOXES.T[None].copy(), "boxes"),
             numpy_helper.from_array(np.full((1, 3, anchors), 0.5, np.float32), "weight"),
             numpy_helper.from_array(SCORE_BIAS[None].copy(), "bias"),
             numpy_helper.from_array(np.array([1, 1, 1], np.int64), "shape")]
    nodes = [helper.make_node("GlobalAveragePool", ["images"], ["mean4"]),
             helper.make_node("Reshape", ["mean4", "shape"], ["mean"]),
             helper.make_node("Mul", ["mean", "weight"], ["scaled"]),
             helper.make_node("Add", ["scaled", "bias"], ["logits"]),
             helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node("Concat", ["boxes", "scores"], ["output0"], axis=1)]
    _save(helper.make_graph(nodes, "detector", [_tensor("images", [1, 1, *DET_HW])],
                            [_tensor("output0", [1, 7, anchors])], inits), path)


def tiny_segmenter(path: Path) -> None:
    """Quarter-size logits of 3 classes from intensity: dark, mid, bright."""
    inits = [numpy_helper.from_array(np.array([-8, 0, 8], np.float32).reshape(3, 1, 1, 1), "w"),
             numpy_helper.from_array(np.array([3, 0, -5], np.float32), "b")]
    nodes = [helper.make_node("Conv", ["pixel_values", "w", "b"], ["full"]),
             helper.make_node("AveragePool", ["full"], ["logits"], kernel_shape=[4, 4],
                              strides=[4, 4])]
    out_hw = [SEG_HW[0] // 4, SEG_HW[1] // 4]
    _save(helper.make_graph(nodes, "segmenter", [_tensor("pixel_values", [1, 1, *SEG_HW])],
                            [_tensor("logits", [1, 3, *out_hw])], inits), path)


def _io(names: list[str], shape: list) -> list[dict]:
    return [{"name": n, "shape": shape, "dtype": "float32"} for n in names]


def write_tiny_bundle(root: Path, detector: bool = True, segmenter: bool = True) -> Path:
    """A valid bundle of the three tiny graphs in ``root`` (created); returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    dyn = [1, 1, "height", "width"]
    tiny_fusion(root / "fusion.onnx")
    graphs: dict[str, dict] = {"fusion": {
        "task": "fusion", "file": "fusion.onnx", "opset": 17,
        "inputs": _io(["ir", "vis"], dyn), "outputs": _io(["fused"], dyn)}}
    if detector:
        tiny_detector(root / "detector.onnx")
        graphs["detector"] = {
            "task": "detection", "file": "detector.onnx", "opset": 17,
            "input_hw": list(DET_HW), "class_names": CLASS_NAMES,
            "inputs": _io(["images"], [1, 1, *DET_HW]),
            "outputs": _io(["output0"], [1, 7, len(ANCHOR_BOXES)]),
            "preprocess": {"resize": "letterbox", "center": True},
            "postprocess": {"conf_threshold": 0.25, "iou_threshold": 0.7, "max_det": 300}}
    if segmenter:
        tiny_segmenter(root / "segmenter.onnx")
        graphs["segmenter"] = {
            "task": "segmentation", "file": "segmenter.onnx", "opset": 17,
            "input_hw": list(SEG_HW), "class_names": SEG_CLASSES,
            "inputs": _io(["pixel_values"], [1, 1, *SEG_HW]),
            "outputs": _io(["logits"], [1, 3, SEG_HW[0] // 4, SEG_HW[1] // 4])}
    write_bundle(root, graphs, producer="test/test_pipeline.py")
    return root


def real_pair(shared: Path, name: str = "00055D", size: tuple[int, int] | None = (160, 128)
              ) -> tuple[np.ndarray, np.ndarray]:
    """(thermal grey, RGB BGR) of a det/ pair; ``size`` (w, h) crops the centre."""
    ir = cv2.imread(str(shared / "det" / "ir" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
    vi = cv2.imread(str(shared / "det" / "vi" / f"{name}.png"), cv2.IMREAD_COLOR)
    if ir.ndim == 3:
        ir = cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
    if size is not None:
        w, h = size
        y, x = (ir.shape[0] - h) // 2, (ir.shape[1] - w) // 2
        ir, vi = ir[y:y + h, x:x + w].copy(), vi[y:y + h, x:x + w].copy()
    return ir, vi


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bundle(tmp_path_factory.mktemp("tiny_bundle"))


@pytest.fixture()
def pair() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    thermal = rng.integers(0, 256, (96, 128), dtype=np.uint8)
    rgb = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    return thermal, rgb


SETTINGS = PipelineSettings(backend="onnxruntime", threads=1)


# ----------------------------------------------------------------------------- parity
@pytest.fixture(scope="module")
def real_fusion_bundle(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """models/fusion_default.pt as ONNX: the default bundle when it was exported from it,
    else exported here the way the default bundle is made."""
    from tdfusion_ros.runtime.bundle import sha256_of

    checkpoint_sha = sha256_of(REPO / "models" / "fusion_default.pt")
    try:
        default = load_bundle(REPO / "models" / "default")
        if default.graph("fusion").meta.get("source", {}).get("sha256") == checkpoint_sha:
            return default.root
    except BundleError:
        pass
    out = tmp_path_factory.mktemp("real_bundle")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, str(REPO / "training" / "export.py"), "--fusion",
         str(REPO / "models" / "fusion_default.pt"), "--out", str(out), "--data",
         str(shared_data), "--check-pairs", "00055D", "--check-crop", "128x160"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def test_fused_output_matches_the_fuse_command(real_fusion_bundle: Path,
                                               shared_data: Path) -> None:
    from tdfusion_ros.tools.fuse import TorchFuser, fuse_images

    thermal, rgb = real_pair(shared_data)
    expected = fuse_images(TorchFuser(REPO / "models" / "fusion_default.pt", "cpu"), thermal,
                           rgb)
    pipeline = FusionPipeline(real_fusion_bundle, SETTINGS)
    result = pipeline.process(thermal, rgb)
    assert result.mode == FUSION
    assert np.abs(result.fused_y - expected.raw).max() <= 1e-4
    diff = np.abs(result.fused.astype(int) - expected.colour.astype(int))
    assert diff.max() <= 1, f"colour differs by up to {diff.max()} (fuse -> pipeline)"
    assert (diff > 0).mean() < 0.01
    # the bundle has no detector/segmenter: those outputs are off and say why
    assert result.detections is None and result.class_map is None
    assert any("no 'detector' graph" in note for note in pipeline.notes)
    assert any("no 'segmenter' graph" in note for note in pipeline.notes)
    pipeline.close()


# ----------------------------------------------------------------------------- tiny bundle
def test_pair_outputs_and_timings(tiny_bundle: Path, pair: tuple) -> None:
    thermal, rgb = pair
    pipeline = FusionPipeline(tiny_bundle, SETTINGS)
    result = pipeline.process(thermal, rgb)
    assert result.mode == FUSION
    assert result.fused.shape == rgb.shape and result.fused.dtype == np.uint8
    expected_y = np.maximum(thermal / np.float32(255), cv2.cvtColor(
        rgb.astype(np.float32) / np.float32(255), cv2.COLOR_BGR2YCrCb)[..., 0])
    assert np.abs(result.fused_y - expected_y).max() < 1e-6
    dets = result.detections
    assert dets is not None and len(dets) >= 3
    h, w = rgb.shape[:2]
    assert (dets.xyxy[:, [0, 2]] >= 0).all() and (dets.xyxy[:, [0, 2]] <= w).all()
    assert (dets.xyxy[:, [1, 3]] >= 0).all() and (dets.xyxy[:, [1, 3]] <= h).all()
    assert set(dets.class_ids.tolist()) <= {0, 1, 2}
    assert pipeline.class_names == CLASS_NAMES
    assert result.class_map.shape == (h, w) and result.class_map.dtype == np.uint8
    assert set(np.unique(result.class_map).tolist()) <= {0, 1, 2}
    for stage in ("preprocess", "fusion", "colour", "detector", "detector_post", "segmenter",
                  "segmenter_post", "total"):
        assert result.timings_ms[stage] >= 0.0
    assert 0 <= result.inference_ms <= result.timings_ms["total"]
    assert "fusion" in pipeline.describe() and "onnxruntime" in pipeline.backend
    blended = overlay(result.fused, result.class_map, 0.5)
    assert blended.shape == result.fused.shape
    background = result.class_map == 0
    assert np.array_equal(blended[background], result.fused[background])
    pipeline.close()


def test_thresholds_change_between_frames(tiny_bundle: Path, pair: tuple) -> None:
    thermal, rgb = pair
    pipeline = FusionPipeline(tiny_bundle, SETTINGS)
    assert pipeline.thresholds.conf == 0.25 and pipeline.thresholds.max_det == 300
    many = len(pipeline.process(thermal, rgb).detections)
    pipeline.set_thresholds(conf=0.99)
    assert len(pipeline.process(thermal, rgb).detections) == 0
    pipeline.set_thresholds(max_det=1)
    assert len(pipeline.process(thermal, rgb).detections) == 1
    pipeline.set_thresholds()
    assert len(pipeline.process(thermal, rgb).detections) == many
    with pytest.raises(ValueError, match="conf_threshold"):
        pipeline.set_thresholds(conf=1.5)
    assert pipeline.thresholds.conf == 0.25  # a refused change leaves the old set
    pipeline.close()


def test_fallback_modes(tiny_bundle: Path, pair: tuple) -> None:
    thermal, rgb = pair
    pipeline = FusionPipeline(tiny_bundle, SETTINGS)
    alone = pipeline.process_rgb(rgb)
    assert alone.mode == RGB_ONLY
    assert np.array_equal(alone.fused, rgb)  # the RGB image itself, nothing invented
    assert alone.detections is not None and alone.class_map.shape == rgb.shape[:2]
    assert "fusion" not in alone.timings_ms
    hot = pipeline.process_thermal(thermal)
    assert hot.mode == THERMAL_ONLY
    assert np.array_equal(hot.fused, cv2.cvtColor(thermal, cv2.COLOR_GRAY2BGR))
    assert hot.class_map.shape == thermal.shape
    pipeline.close()


def test_fallback_follows_registration(tiny_bundle: Path) -> None:
    """Single images land on the same output grid as fused pairs (crop + output size)."""
    rng = np.random.default_rng(2)
    thermal = rng.integers(0, 65535, (60, 80), dtype=np.uint16)
    rgb = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    registration = RegistrationConfig(homography=(2, 0, 0, 0, 2, 0, 0, 0, 1),
                                      crop=(8, 4, 144, 112), output_size=(72, 56))
    settings = PipelineSettings(backend="onnxruntime", threads=1, registration=registration,
                                gain=GainConfig(mode="fixed", fixed_low=0, fixed_high=65535))
    pipeline = FusionPipeline(tiny_bundle, settings)
    fused = pipeline.process(thermal, rgb)
    assert fused.fused.shape == (56, 72, 3)
    assert pipeline.process_rgb(rgb).fused.shape == (56, 72, 3)
    assert pipeline.process_thermal(thermal).fused.shape == (56, 72, 3)
    pipeline.close()


def test_sixteen_bit_thermal_uses_the_gain_control(tiny_bundle: Path) -> None:
    rng = np.random.default_rng(3)
    thermal = (rng.normal(30000, 300, (64, 80))).clip(0, 65535).astype(np.uint16)
    rgb = np.zeros((64, 80, 3), np.uint8)
    settings = PipelineSettings(backend="onnxruntime", threads=1, detection=False,
                                segmentation=False)
    pipeline = FusionPipeline(tiny_bundle, settings)
    result = pipeline.process(thermal, rgb)
    # percentile clip: the thermal fills the 8-bit range instead of sitting at 30000/65535
    assert result.fused[..., 0].min() == 0 and result.fused[..., 0].max() == 255
    assert result.detections is None and result.class_map is None
    assert any("detector disabled by settings" in n for n in pipeline.notes)
    with pytest.raises(ValueError, match="no detector was loaded"):
        pipeline.set_outputs(detection=True)
    pipeline.close()


def test_bad_frames_raise_input_errors(tiny_bundle: Path, pair: tuple) -> None:
    thermal, rgb = pair
    pipeline = FusionPipeline(tiny_bundle, SETTINGS)
    with pytest.raises(PipelineInputError) as info:
        pipeline.process(thermal[:50], rgb)
    assert info.value.reason == SIZE_MISMATCH and "registration.homography" in str(info.value)
    with pytest.raises(PipelineInputError):
        pipeline.process(thermal, rgb[..., :2])
    with pytest.raises(PipelineInputError):
        pipeline.process(thermal.astype(np.float32), rgb)
    assert pipeline.process(thermal, rgb).mode == FUSION  # and it carries on
    pipeline.close()


def test_missing_task_graphs_disable_outputs(tmp_path: Path, pair: tuple) -> None:
    root = write_tiny_bundle(tmp_path / "fusion_only", detector=False, segmenter=False)
    messages: list[str] = []
    pipeline = FusionPipeline(root, SETTINGS, log=messages.append)
    result = pipeline.process(*pair)
    assert result.detections is None and result.class_map is None
    assert any("/fused/detections disabled" in m and str(root) in m for m in messages)
    assert any("/fused/segmentation disabled" in m for m in messages)
    pipeline.close()


def test_bad_bundles_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="bundle.yaml"):
        FusionPipeline(tmp_path / "nowhere", SETTINGS)
    root = write_tiny_bundle(tmp_path / "damaged")
    (root / "detector.onnx").write_bytes(b"not onnx")
    with pytest.raises(BundleError, match="detector.onnx"):
        FusionPipeline(root, SETTINGS)

    def broken(bundle: object, name: str) -> object:
        from tdfusion_ros.runtime.engines import EngineError

        raise EngineError("cannot run here")

    good = write_tiny_bundle(tmp_path / "good")
    with pytest.raises(PipelineError, match="fusion.onnx"):
        FusionPipeline(load_bundle(good), SETTINGS, engine_factory=broken)
    with pytest.raises(ValueError, match="backend"):
        FusionPipeline(good, PipelineSettings(backend="torch"))


def test_latency_stats_percentiles() -> None:
    stats = LatencyStats(window=100)
    for value in range(1, 201):
        stats.add({"fusion": float(value)})
    summary = stats.summary()["fusion"]
    assert summary["count"] == 200 and summary["max"] == 200.0
    assert 150 <= summary["p50"] <= 151 and summary["p99"] >= 198


def test_pipeline_imports_no_torch(tiny_bundle: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from tdfusion_ros.runtime.pipeline import FusionPipeline, PipelineSettings
        p = FusionPipeline({str(tiny_bundle)!r}, PipelineSettings(backend="onnxruntime"))
        p.process(np.zeros((32, 32), np.uint16), np.zeros((32, 32, 3), np.uint8))
        heavy = sorted(m for m in ("torch", "ultralytics", "transformers") if m in sys.modules)
        sys.exit(f"heavy modules imported: {{heavy}}" if heavy else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("case", ["grey_thermal_colour_rgb", "grey_rgb", "colour_thermal"])
def test_colour_handling_matches_the_colour_module(tiny_bundle: Path, case: str) -> None:
    """The pipeline's fast luma/colour path gives colour.prepare_pair/restore_colour's result."""
    from tdfusion_ros.runtime.colour import prepare_pair, restore_colour
    from tdfusion_ros.runtime.image_io import to_unit_float

    rng = np.random.default_rng(4)
    thermal = rng.integers(0, 256, (72, 96), dtype=np.uint8)
    rgb = rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)
    if case == "grey_rgb":
        rgb = np.repeat(rgb[..., :1], 3, axis=2)
    if case == "colour_thermal":
        thermal = cv2.applyColorMap(thermal, cv2.COLORMAP_INFERNO)
    luma = prepare_pair(to_unit_float(thermal), to_unit_float(rgb))
    expected = restore_colour(np.maximum(luma.ir_y, luma.vis_y), luma.chroma)
    if expected.ndim == 2:
        expected = cv2.cvtColor(expected, cv2.COLOR_GRAY2BGR)
    pipeline = FusionPipeline(tiny_bundle, PipelineSettings(backend="onnxruntime", threads=1,
                                                            detection=False,
                                                            segmentation=False))
    result = pipeline.process(thermal, rgb)
    diff = np.abs(result.fused.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    pipeline.close()
