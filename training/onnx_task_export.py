"""ONNX export of the task networks (YOLOv8 detector, SegFormer segmenter) for the model bundle.

Each export is checked against PyTorch with a real ONNX Runtime session before its metadata is
returned, so a bundle never holds a graph that disagrees with the network it came from:

* detector: the raw head output (1, 4 + nc, anchors) that ``DetectionModel`` returns in eval
  mode before NMS (box centre x, y, width, height in input pixels, then per-class sigmoid
  scores); max abs difference <= 1e-3. NMS stays outside the graph
  (``tdfusion_ros.runtime.postprocess``) so one graph serves every threshold and TensorRT needs
  no NMS plugin.
* segmenter: logits (1, C, H/4, W/4), not a class map: a quarter-size float map is smaller to
  copy off a GPU than a full-size int64 map, and the runtime can still choose the output size.
  Class maps (bilinear upsampling to the source size, then argmax) must agree on >= 99.9 % of
  pixels.

Inputs are fixed-size (1, 1, H, W) float32 fused Y in [0, 1]; any mean/std normalisation is
folded into the graph so the runtime never has to know it. The graphs are written with the
TorchScript exporter (``dynamo=False``): the torch.export-based one needs ``onnxscript``, which
is not installed, and the traced graphs are plain conv/matmul graphs either way.

ultralytics is kept off the network and out of the home directory: ``YOLO_OFFLINE`` skips its
DNS probe at import, ``YOLO_AUTOINSTALL=false`` stops it pip-installing, ``YOLO_CONFIG_DIR``
puts its settings file in a per-user temp folder, and the settings' ``sync`` (analytics) is
turned off. The variables are set (unless already set) when this module is imported, so import
it before ultralytics. Fonts and AMP checks download only from plotting and the trainer, neither
of which is used here.
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from tdfusion_ros.runtime.colour import split_luma
from tdfusion_ros.runtime.image_io import read_image, to_unit_float
from tdfusion_ros.runtime.postprocess import (
    MAX_WH,
    PAD_GREY,
    detector_input,
    segmentation_class_map,
    segmenter_input,
)

# The same folder as training.task_networks uses, whichever of the two is imported first.
_UID = os.getuid() if hasattr(os, "getuid") else os.getpid()
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "false")
os.environ.setdefault(
    "YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / f"tdfusion_ros-ultralytics-{_UID}")
)

__all__ = [
    "DETECTOR_BOX_TOLERANCE_PX",
    "DETECTOR_TOLERANCE",
    "SEGMENTER_MIN_AGREEMENT",
    "ExportParityError",
    "check_detector_onnx",
    "check_segmenter_onnx",
    "export_detector",
    "export_segmenter",
    "fused_like_images",
    "segformer_b0",
    "yolov8n_detector",
]

DETECTOR_TOLERANCE = 1e-3  # class scores, absolute
# Box rows are pixel coordinates of the input (beyond its size for boxes at the border: up to
# ~530 for a 320-wide input, where a float32 step is 6e-5): reassociation alone moves them by
# ~1e-3 px after 60 layers.
DETECTOR_BOX_TOLERANCE_PX = 1e-2
SEGMENTER_MIN_AGREEMENT = 0.999
INPUT_NAME = "image"
DETECTOR_OUTPUT = "raw"
SEGMENTER_OUTPUT = "logits"
STRIDE = 32  # both networks downsample by 32; fixed sizes must be multiples of it
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


class ExportParityError(RuntimeError):
    """An exported graph whose outputs disagree with the PyTorch network."""


def _quiet_ultralytics() -> None:
    """Turn off ultralytics' analytics sync (written to the temp settings file, see above)."""
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync"):
        SETTINGS.update(sync=False)


def yolov8n_detector(num_classes: int) -> nn.Module:
    """An untrained YOLOv8n ``DetectionModel`` for one-channel input, built from its yaml."""
    from ultralytics.nn.tasks import DetectionModel

    _quiet_ultralytics()
    return DetectionModel("yolov8n.yaml", ch=1, nc=num_classes, verbose=False)


def segformer_b0(num_classes: int) -> nn.Module:
    """An untrained SegFormer MiT-B0 for one-channel input, built from its config."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_channels=1, num_labels=num_classes, depths=[2, 2, 2, 2],
        hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=256,
    )
    return SegformerForSemanticSegmentation(config)


def fused_like_images(data_dir: str | Path | None = None, count: int = 4) -> list[np.ndarray]:
    """Real (480, 640) float32 images in [0, 1] for the parity checks.

    The pixel-wise maximum of the IR and visible Y of ``count`` MSRS pairs (day and night,
    evenly spaced by name): the classic max-rule fusion, so bright IR targets and visible
    texture both show, as in a fused image.
    """
    root = Path(data_dir or os.environ.get("TDFUSION_SHARED_DATA", DEFAULT_DATA)) / "det"
    names = sorted(p.name for p in (root / "vi").glob("*.png"))
    if not names:
        raise FileNotFoundError(
            f"no images in {root / 'vi'}: set TDFUSION_SHARED_DATA to the shared data folder "
            "or pass check_images to the export"
        )
    picks = [names[i] for i in np.linspace(0, len(names) - 1, min(count, len(names))).astype(int)]
    images = []
    for name in picks:
        ir, _ = split_luma(to_unit_float(read_image(root / "ir" / name)))
        vis, _ = split_luma(to_unit_float(read_image(root / "vi" / name)))
        images.append(np.maximum(ir, vis).astype(np.float32))
    return images


def _input_hw(input_hw: Sequence[int]) -> tuple[int, int]:
    h, w = (int(v) for v in input_hw)
    if h <= 0 or w <= 0 or h % STRIDE or w % STRIDE:
        raise ValueError(f"input size {h}x{w} (HxW) must be positive multiples of {STRIDE}")
    return h, w


def _names(class_names: Sequence[str] | None, count: int, fallback: Any = None) -> list[str]:
    if class_names is None:
        if isinstance(fallback, dict):
            class_names = [str(fallback[i]) for i in sorted(fallback)]
        else:
            class_names = [str(i) for i in range(count)]
    names = [str(n) for n in class_names]
    if len(names) != count:
        raise ValueError(f"{len(names)} class names given for a network with {count} classes")
    if len(set(names)) != len(names):
        raise ValueError(f"class names repeat: {names}")
    return names


def _check_images(images: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    images = fused_like_images() if images is None else list(images)
    if not images:
        raise ValueError("no check images: the export cannot be verified")
    for i, image in enumerate(images):
        if image.ndim != 2 or not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"check image {i}: expected an HxW float image in [0, 1]")
    return [np.asarray(image, dtype=np.float32) for image in images]


class _RawDetector(nn.Module):
    """The detection model's decoded head output alone (eval mode returns it with extras)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        return out[0] if isinstance(out, (tuple, list)) else out


class _Logits(nn.Module):
    """Segmenter logits from a [0, 1] image, with the network's normalisation folded in."""

    def __init__(self, model: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.model, self.mean, self.std = model, float(mean), float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean != 0.0 or self.std != 1.0:
            x = (x - self.mean) / self.std
        out = self.model(x)
        if hasattr(out, "logits"):
            return out.logits
        return out[0] if isinstance(out, (tuple, list)) else out


def _export(module: nn.Module, hw: tuple[int, int], path: Path, opset: int, output: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 1, *hw)
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter announces its own deprecation; the tracer warns about Python
        # branches on shapes, which are constant for a fixed input size.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module, (dummy,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[output], do_constant_folding=True,
        )
    onnx.checker.check_model(str(path))


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _prepared(model: nn.Module) -> nn.Module:
    """A float32 CPU eval-mode copy, so the caller's model (device, train mode) is untouched."""
    return copy.deepcopy(model).cpu().float().eval()


def _tensor_meta(value: Any) -> dict[str, Any]:
    return {"name": value.name, "shape": [int(d) for d in value.shape], "dtype": "float32"}


def check_detector_onnx(
    model: nn.Module, path: str | Path, images: Sequence[np.ndarray] | None = None,
    tolerance: float = DETECTOR_TOLERANCE, letterbox_center: bool = True,
    box_tolerance_px: float = DETECTOR_BOX_TOLERANCE_PX,
) -> dict[str, Any]:
    """Raw outputs of the ONNX graph vs the PyTorch detector on letterboxed images.

    Raises ExportParityError when the class scores differ by more than ``tolerance`` or the
    box coordinates (the first four rows, in input pixels) by more than ``box_tolerance_px``.
    """
    session = _session(Path(path))
    hw = tuple(int(d) for d in session.get_inputs()[0].shape[2:])
    net = _RawDetector(_prepared(model))
    worst_box = worst_score = 0.0
    checked = _check_images(images)
    for image in checked:
        x, _ = detector_input(image, hw, letterbox_center)
        with torch.no_grad():
            expected = net(torch.from_numpy(x)).numpy()
        got = session.run(None, {INPUT_NAME: x})[0]
        if got.shape != expected.shape:
            raise ExportParityError(f"{path}: output shape {got.shape}, PyTorch {expected.shape}")
        diff = np.abs(got - expected)
        worst_box = max(worst_box, float(diff[:, :4].max()))
        worst_score = max(worst_score, float(diff[:, 4:].max()))
    if not (worst_score <= tolerance and worst_box <= box_tolerance_px):
        raise ExportParityError(
            f"{path}: raw detector outputs differ from PyTorch by up to {worst_score:.3g} in "
            f"class scores (allowed {tolerance:g}) and {worst_box:.3g} px in boxes (allowed "
            f"{box_tolerance_px:g}); re-export from the same model"
        )
    return {"images": len(checked), "max_abs_diff": worst_score, "tolerance": tolerance,
            "max_box_diff_px": worst_box, "box_tolerance_px": box_tolerance_px}


def check_segmenter_onnx(
    model: nn.Module, path: str | Path, images: Sequence[np.ndarray] | None = None,
    mean: float = 0.0, std: float = 1.0, min_agreement: float = SEGMENTER_MIN_AGREEMENT,
) -> dict[str, Any]:
    """Class maps at each image's own size from the ONNX graph vs the PyTorch segmenter.

    The PyTorch side upsamples with ``F.interpolate`` (as transformers does) and the ONNX side
    through the runtime's ``segmentation_class_map``, so the runtime post-processing is
    checked too. Raises ExportParityError below ``min_agreement`` on any image.
    """
    session = _session(Path(path))
    hw = tuple(int(d) for d in session.get_inputs()[0].shape[2:])
    net = _Logits(_prepared(model), mean, std)
    worst_agreement, worst_logit = 1.0, 0.0
    checked = _check_images(images)
    for image in checked:
        x = segmenter_input(image, hw)
        with torch.no_grad():
            logits = net(torch.from_numpy(x))
            up = F.interpolate(logits, size=image.shape, mode="bilinear", align_corners=False)
        expected = up.argmax(1)[0].numpy()
        got_logits = session.run(None, {INPUT_NAME: x})[0]
        if got_logits.shape != tuple(logits.shape):
            raise ExportParityError(
                f"{path}: output shape {got_logits.shape}, PyTorch {tuple(logits.shape)}"
            )
        got = segmentation_class_map(got_logits, image.shape)
        worst_agreement = min(worst_agreement, float(np.mean(got == expected)))
        worst_logit = max(worst_logit, float(np.abs(got_logits - logits.numpy()).max()))
    if not worst_agreement >= min_agreement:
        raise ExportParityError(
            f"{path}: class maps agree with PyTorch on only {100 * worst_agreement:.3f} % of "
            f"pixels (need {100 * min_agreement:g} %); re-export from the same model"
        )
    return {"images": len(checked), "min_pixel_agreement": worst_agreement,
            "max_abs_logit_diff": worst_logit, "min_agreement_required": min_agreement}


def export_detector(
    model: nn.Module,
    path: str | Path,
    input_hw: Sequence[int],
    opset: int = 17,
    *,
    class_names: Sequence[str] | None = None,
    check_images: Sequence[np.ndarray] | None = None,
    conf_threshold: float = 0.25,
    iou_threshold: float = 0.7,
    max_det: int = 300,
    letterbox_center: bool = True,
) -> dict[str, Any]:
    """Write a YOLOv8 ``DetectionModel``'s raw head output graph, verify it, describe it.

    ``model``: a ``DetectionModel`` (or a ``YOLO`` wrapper holding one); it is copied, so its
    device and train/eval mode are left alone.
    ``check_images``: HxW float32 images in [0, 1] of any size (letterboxed here like at run
    time); by default real MSRS pairs (:func:`fused_like_images`). The thresholds are only
    recorded, for the runtime's ``decode_yolo``; defaults are ultralytics' predictor defaults.
    ``letterbox_center=False`` records top-left placement (padding bottom/right), which is how
    ``training.task_networks.DetectionTask`` pads; ultralytics centres.
    """
    hw = _input_hw(input_hw)
    path = Path(path)
    from ultralytics.engine.model import Model

    if isinstance(model, Model):  # a YOLO(...) wrapper: export the DetectionModel inside
        model = model.model
    net = _prepared(model)
    head = net.model[-1] if isinstance(getattr(net, "model", None), nn.Sequential) else None
    if head is None or not hasattr(head, "nc") or not hasattr(head, "stride"):
        raise TypeError(f"expected an ultralytics DetectionModel, got {type(model).__name__}")
    if getattr(head, "end2end", False):
        raise ValueError("end-to-end (NMS-free) heads are not supported: export a YOLOv8 head")
    num_classes = int(head.nc)
    names = _names(class_names, num_classes, getattr(model, "names", None))
    checked = _check_images(check_images)
    _export(_RawDetector(net), hw, path, opset, DETECTOR_OUTPUT)
    session = _session(path)
    strides = [int(s) for s in head.stride]
    anchors = sum((hw[0] // s) * (hw[1] // s) for s in strides)
    output = session.get_outputs()[0]
    if list(output.shape) != [1, 4 + num_classes, anchors]:
        raise ExportParityError(
            f"{path}: output shape {output.shape}, expected [1, {4 + num_classes}, {anchors}]"
        )
    parity = check_detector_onnx(net, path, checked, letterbox_center=letterbox_center)
    return {
        "task": "detection",
        "file": path.name,
        "sha256": _sha256(path),
        "opset": opset,
        "architecture": "yolov8",
        "input_hw": list(hw),
        "inputs": [_tensor_meta(v) for v in session.get_inputs()],
        "outputs": [_tensor_meta(v) for v in session.get_outputs()],
        "output_format": "raw YOLOv8 head: rows cx, cy, w, h (input pixels), then per-class "
                         "sigmoid scores; no NMS",
        "strides": strides,
        "preprocess": {"resize": "letterbox", "interpolation": "bilinear",
                       "center": letterbox_center, "pad_value": PAD_GREY / 255.0},
        "normalisation": {"feed": "fused Y, float32 in [0, 1]", "mean": 0.0, "std": 1.0,
                          "in_graph": True},
        "class_names": names,
        "postprocess": {"conf_threshold": conf_threshold, "iou_threshold": iou_threshold,
                        "max_det": max_det, "class_offset": MAX_WH, "class_wise_nms": True},
        "parity": parity,
    }


def export_segmenter(
    model: nn.Module,
    path: str | Path,
    input_hw: Sequence[int],
    opset: int = 17,
    *,
    class_names: Sequence[str] | None = None,
    check_images: Sequence[np.ndarray] | None = None,
    mean: float = 0.0,
    std: float = 1.0,
) -> dict[str, Any]:
    """Write a segmenter's logits graph (normalisation folded in), verify it, describe it.

    ``mean``/``std``: the normalisation the network was trained with on the [0, 1] fused Y;
    it becomes part of the graph. ``check_images`` as in :func:`export_detector`.
    """
    hw = _input_hw(input_hw)
    path = Path(path)
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    net = _prepared(model)
    checked = _check_images(check_images)
    _export(_Logits(net, mean, std), hw, path, opset, SEGMENTER_OUTPUT)
    session = _session(path)
    output = session.get_outputs()[0]
    shape = [int(d) for d in output.shape]
    if len(shape) != 4 or shape[0] != 1 or hw[0] % shape[2] or hw[1] % shape[3]:
        raise ExportParityError(f"{path}: logits shape {shape} does not fit input {hw}")
    config = getattr(net, "config", None)
    names = _names(class_names, shape[1], getattr(config, "id2label", None))
    parity = check_segmenter_onnx(net, path, checked, mean, std)
    return {
        "task": "segmentation",
        "file": path.name,
        "sha256": _sha256(path),
        "opset": opset,
        "architecture": "segformer",
        "input_hw": list(hw),
        "inputs": [_tensor_meta(v) for v in session.get_inputs()],
        "outputs": [_tensor_meta(v) for v in session.get_outputs()],
        "output_format": "logits (1, C, H/stride, W/stride); class map = bilinear upsampling "
                         "(align_corners=False) to the source size, then argmax",
        "output_stride": hw[0] // shape[2],
        "preprocess": {"resize": "stretch", "interpolation": "bilinear"},
        "normalisation": {"feed": "fused Y, float32 in [0, 1]", "mean": float(mean),
                          "std": float(std), "in_graph": True},
        "class_names": names,
        "parity": parity,
    }
