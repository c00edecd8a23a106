"""The task networks: real SegFormer / YOLOv8 built from config, run with fast weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.task_networks import (
    DETECTOR_ARCHITECTURES,
    SEGMENTER_ARCHITECTURES,
    DetectionTask,
    SegmentationTask,
    save_task_checkpoint,
    task_from_checkpoint,
    yolo_targets,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Small inputs: a second OpenMP thread only adds contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=SEGMENTER_ARCHITECTURES)
def seg(request) -> SegmentationTask:
    torch.manual_seed(0)
    return SegmentationTask(num_classes=4, input_size=(64, 64), architecture=request.param)


@pytest.fixture(scope="module", params=list(DETECTOR_ARCHITECTURES))
def det(request) -> DetectionTask:
    torch.manual_seed(0)
    return DetectionTask(num_classes=2, input_size=(48, 64), architecture=request.param)


BOXES = [
    np.array([[0, 4.0, 6.0, 20.0, 30.0], [1, 30.0, 10.0, 60.0, 40.0]]),
    np.array([[1, 10.0, 12.0, 50.0, 44.0]]),
]


def test_yolo_targets_converts_pixel_boxes() -> None:
    t = yolo_targets(BOXES + [np.zeros((0, 5))], (48, 64))
    assert t["batch_idx"].tolist() == [0.0, 0.0, 1.0]
    assert t["cls"].shape == (3, 1) and t["cls"][:, 0].tolist() == [0.0, 1.0, 1.0]
    expected = [(12 / 64, 18 / 48, 16 / 64, 24 / 48), (45 / 64, 25 / 48, 30 / 64, 30 / 48)]
    torch.testing.assert_close(t["bboxes"][:2], torch.tensor(expected))
    empty = yolo_targets([np.zeros((0, 5))], (48, 64))
    assert empty["bboxes"].shape == (0, 4) and empty["cls"].shape == (0, 1)


def test_segmentation_loss_is_transformers_cross_entropy() -> None:
    """Our loss equals SegFormer's own (bilinear upsampling to labels, ignore index 255)."""
    torch.manual_seed(0)
    seg = SegmentationTask(num_classes=4, input_size=(64, 64), architecture="segformer_b0")
    torch.manual_seed(1)
    fused = torch.rand(2, 1, 64, 64)
    labels = torch.randint(0, 4, (2, 48, 40))
    labels[:, :5] = 255
    seg.model.eval()
    try:
        ours = seg.loss(fused, labels)
        theirs = seg.model(fused, labels=labels).loss
    finally:
        seg.model.train()
    torch.testing.assert_close(ours, theirs)
    assert seg.model.config.num_channels == 1
    assert seg.model.config.hidden_sizes == [32, 64, 160, 256]


@pytest.mark.parametrize("name,architecture", [
    *(("seg", a) for a in SEGMENTER_ARCHITECTURES), *(("det", a) for a in DETECTOR_ARCHITECTURES)])
def test_fast_weights_drive_the_loss_and_leave_the_module(name: str, architecture: str) -> None:
    """functional_call on a parameter dict: gradients reach the dict, the module is unchanged."""
    torch.manual_seed(0)
    task = (SegmentationTask(4, (64, 64), architecture=architecture) if name == "seg"
            else DetectionTask(2, (48, 64), architecture=architecture))
    torch.manual_seed(2)
    fused = torch.rand(2, 1, 48, 64, requires_grad=True)
    targets = yolo_targets(BOXES, (48, 64)) if name == "det" else torch.randint(0, 4, (2, 48, 64))
    task.model.eval()  # no dropout: the same parameters must give the same loss
    try:
        before = {k: v.clone() for k, v in task.model.state_dict().items()}
        own = task.trainable_params()
        same = task.loss(fused, targets, dict(own))
        torch.testing.assert_close(same, task.loss(fused, targets))
        fast = {k: v.detach().clone().requires_grad_() for k, v in own.items()}
        loss = task.loss(fused, targets, fast)
        grads = torch.autograd.grad(loss, [fused, *fast.values()])
        shifted = {k: v + 0.01 * torch.randn_like(v) for k, v in fast.items()}
        assert not torch.allclose(task.loss(fused, targets, shifted), loss)
    finally:
        task.model.train()
    assert torch.isfinite(loss)
    assert grads[0].abs().sum() > 0, "no gradient reaches the fused image"
    nonzero = sum(int(g.abs().sum() > 0) for g in grads[1:])
    assert nonzero > 0.9 * len(fast), f"only {nonzero}/{len(fast)} fast tensors get gradient"
    assert all(p.grad is None for p in task.model.parameters())
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed"


def test_detection_pads_to_stride_and_rescales_boxes(det: DetectionTask) -> None:
    """48x64 -> padded 64x64; equal to ultralytics' loss on the padded image with its boxes."""
    from ultralytics.utils.loss import v8DetectionLoss

    assert det.padded_size == (64, 64)
    torch.manual_seed(3)
    fused = torch.rand(2, 1, 48, 64)
    assert det.prepare(fused).shape == (2, 1, 64, 64)
    padded = F.pad(fused, (0, 0, 0, 16), value=114 / 255)
    ours = det.loss(fused, yolo_targets(BOXES, (48, 64)))
    loss, items = v8DetectionLoss(det.model)(det.model(padded), yolo_targets(BOXES, (64, 64)))
    torch.testing.assert_close(ours, loss.sum() / 2)
    torch.testing.assert_close(ours, sum(items.values()))  # items: gained, per image
    assert (det.model.args.box, det.model.args.cls, det.model.args.dfl) == (7.5, 0.5, 1.5)
    # MSRS's 240x320 task size becomes 256x320 (YOLO needs multiples of 32).
    msrs = DetectionTask(num_classes=2, input_size=(240, 320))
    assert msrs.padded_size == (256, 320)
    assert msrs.prepare(torch.rand(1, 1, 480, 640)).shape == (1, 1, 256, 320)


def test_segmentation_predict(seg: SegmentationTask) -> None:
    out = seg.predict(torch.rand(2, 1, 50, 70))
    assert out.shape == (2, 50, 70) and out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) < 4
    assert seg.model.training, "predict must restore training mode"


def test_detection_predict_rows_in_fused_pixels(det: DetectionTask) -> None:
    torch.manual_seed(4)
    fused = torch.rand(2, 1, 96, 128)  # twice the task size: boxes scale back up
    rows = det.predict(fused, conf=0.0)
    assert det.model.training
    assert len(rows) == 2
    for r in rows:
        assert r.shape[1] == 6 and r.shape[0] > 0
        cls, x1, y1, x2, y2, score = r.T
        assert torch.all((cls == 0) | (cls == 1))
        assert torch.all(x1 >= 0) and torch.all(x2 <= 128) and torch.all(y2 <= 96)
        assert torch.all(x2 >= x1) and torch.all(y2 >= y1)
        assert torch.all((score >= 0) & (score <= 1))


def test_bad_inputs_are_named(seg: SegmentationTask, det: DetectionTask) -> None:
    with pytest.raises(ValueError, match="fused must be"):
        seg.loss(torch.rand(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must be"):
        seg.loss(torch.rand(2, 1, 64, 64), torch.zeros(64, 64, dtype=torch.long))
    with pytest.raises(ValueError, match="'bboxes'"):
        det.loss(torch.rand(2, 1, 48, 64), {"batch_idx": torch.zeros(0), "cls": torch.zeros(0)})


_OFFLINE_SCRIPT = textwrap.dedent(
    """
    import json, os, socket, sys
    attempts = []

    def refuse(name):
        def blocked(*args, **kwargs):
            attempts.append(f"{name}{repr(args)[:80]}")
            raise OSError("networking disabled by test_ultralytics_offline")
        return blocked

    socket.socket.connect = refuse("connect")
    socket.socket.connect_ex = refuse("connect_ex")
    socket.create_connection = refuse("create_connection")
    socket.getaddrinfo = refuse("getaddrinfo")
    socket.gethostbyname = refuse("gethostbyname")

    import numpy as np
    import torch
    from training.task_networks import DetectionTask, SegmentationTask, yolo_targets

    torch.manual_seed(0)
    det = DetectionTask(num_classes=2, input_size=(64, 64))
    fused = torch.rand(2, 1, 64, 64, requires_grad=True)
    boxes = [np.array([[0, 4, 6, 20, 30]]), np.array([[1, 10, 12, 50, 44]])]
    loss = det.loss(fused, yolo_targets(boxes, (64, 64)))
    loss.backward()
    det.predict(fused.detach())
    seg = SegmentationTask(num_classes=3, input_size=(64, 64))
    seg.loss(fused, torch.zeros(2, 64, 64, dtype=torch.long)).backward()
    print(json.dumps({
        "attempts": attempts,
        "loss": float(loss.detach()),
        "grad": float(fused.grad.abs().sum()),
        "config_dir": os.environ["YOLO_CONFIG_DIR"],
    }))
    """
)


def test_ultralytics_offline(tmp_path: Path) -> None:
    """Build, loss, backward and predict never reach for the network; settings stay out of HOME.

    Sockets are disabled in a fresh interpreter before anything is imported; every attempt is
    recorded. YOLO_OFFLINE and YOLO_CONFIG_DIR are removed from the environment so that
    task_networks' own defaults are what is tested.
    """
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("YOLO_OFFLINE", "YOLO_CONFIG_DIR", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), TMPDIR=str(tmp), PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [], f"tried to reach the network: {report['attempts']}"
    assert np.isfinite(report["loss"]) and report["grad"] > 0
    config_dir = Path(report["config_dir"])
    assert config_dir.is_relative_to(tmp), config_dir
    assert (config_dir / "Ultralytics" / "settings.json").is_file()
    assert not any(home.rglob("*")), f"wrote into HOME: {list(home.rglob('*'))}"


@pytest.mark.parametrize("task,architecture", [
    ("segmentation", "lite0_mlp"), ("segmentation", "segformer_b0"),
    ("detection", "yolov8n_lite0"), ("detection", "yolov8n")])
def test_task_pt_rebuilds_its_own_architecture(tmp_path: Path, task: str,
                                               architecture: str) -> None:
    """A task.pt names its network; a record from before the name existed is the old one."""
    from training.task_networks import load_task_checkpoint

    cls = SegmentationTask if task == "segmentation" else DetectionTask
    torch.manual_seed(5)
    net = cls(3, (64, 64), architecture=architecture, pretrained=False)
    path = save_task_checkpoint(tmp_path / "task.pt", task, ["a", "b", "c"], [64, 64],
                                net.model.state_dict(), {}, architecture)
    assert not (tmp_path / "task.pt.tmp").exists()
    record = load_task_checkpoint(path)
    back = task_from_checkpoint(record)
    assert back.architecture == architecture
    for k, v in net.model.state_dict().items():
        assert torch.equal(back.model.state_dict()[k], v), k
    legacy = {k: v for k, v in record.items() if k != "architecture"}
    if architecture in ("segformer_b0", "yolov8n"):
        assert task_from_checkpoint(legacy).architecture == architecture
    else:
        with pytest.raises(RuntimeError):  # a Lite0 state dict is no SegFormer / YOLOv8n one
            task_from_checkpoint(legacy)


def test_segformer_from_a_saved_pretrained_folder(tmp_path: Path) -> None:
    """pretrained: a save_pretrained SegFormer (RGB, other classes) becomes one-channel with its
    ImageNet normalisation folded in: on a grey image it computes what the RGB network does on
    that image normalised, away from the zero-padded border."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(6)
    config = SegformerConfig(num_channels=3, num_labels=5, depths=[1, 1, 1, 1],
                             hidden_sizes=[8, 16, 24, 32], num_attention_heads=[1, 1, 1, 1],
                             decoder_hidden_size=16)
    rgb = SegformerForSemanticSegmentation(config).eval()
    rgb.save_pretrained(tmp_path / "segformer")
    task = SegmentationTask(3, (64, 64), architecture="segformer_b0",
                            pretrained=tmp_path / "segformer")
    grey = task.model.eval()
    assert grey.config.num_channels == 1 and grey.config.num_labels == 3
    ours = dict(grey.named_parameters())
    theirs = dict(rgb.named_parameters())
    block = next(k for k in theirs if k.endswith("attention.q_proj.weight"))
    torch.testing.assert_close(ours[block], theirs[block])  # the encoder came along
    x = torch.rand(1, 1, 128, 128)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    with torch.no_grad():  # the first patch embedding; its zero padding differs at the border
        want = rgb.segformer.stages[0].patch_embeddings.proj((x.repeat(1, 3, 1, 1) - mean) / std)
        got = grey.segformer.stages[0].patch_embeddings.proj(x)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    torch.testing.assert_close(got[inner], want[inner], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got[:, :, :1], want[:, :, :1], atol=1e-4)  # the border differs
    with pytest.raises(ValueError, match="not a SegFormer save_pretrained folder"):
        SegmentationTask(3, (64, 64), architecture="segformer_b0", pretrained=tmp_path / "none")


def test_detector_init_from_a_users_ultralytics_checkpoint(tmp_path: Path) -> None:
    """init: an RGB, 80-class YOLOv8n file the user names starts the one-channel detector: the
    first convolution summed over RGB, the rest copied, the class branch left to train."""
    from ultralytics import YOLO

    from training.train_detector import _ultralytics_model_init

    torch.manual_seed(7)
    coco_like = YOLO("yolov8n.yaml", task="detect")  # 3 channels, 80 classes: as yolov8n.pt
    coco_like.save(tmp_path / "yolov8n.pt")
    theirs = YOLO(str(tmp_path / "yolov8n.pt")).model.float().state_dict()  # saved as fp16
    path, architecture = _ultralytics_model_init(tmp_path / "yolov8n.pt", tmp_path, 3)
    assert architecture == "yolov8n"
    ours = YOLO(str(path)).model.float().state_dict()
    torch.testing.assert_close(ours["model.0.conv.weight"],  # ultralytics stores fp16
                               theirs["model.0.conv.weight"].sum(dim=1, keepdim=True),
                               atol=2e-3, rtol=2e-3)
    torch.testing.assert_close(ours["model.8.m.0.cv1.conv.weight"],
                               theirs["model.8.m.0.cv1.conv.weight"])
    cls_bias = "model.22.cv3.0.2.bias"
    assert ours[cls_bias].shape == (3,) and theirs[cls_bias].shape == (80,)
    with pytest.raises(FileNotFoundError, match="no such file"):
        _ultralytics_model_init(tmp_path / "missing.pt", tmp_path, 3)
    YOLO("yolov8s.yaml", task="detect").save(tmp_path / "yolov8s.pt")
    with pytest.raises(ValueError, match="not a YOLOv8n checkpoint"):
        _ultralytics_model_init(tmp_path / "yolov8s.pt", tmp_path, 3)
