"""Train the deployed detector on a fused dataset with ultralytics' own trainer.

    python training/train_detector.py --data runs/default/fused/tdfusion --out runs/default/det \
        [--epochs 30] [--imgsz 320] [--seed 0] [--architecture yolov8n_lite0|yolov8n] \
        [--init yolov8n.pt]

Why ultralytics' trainer and not Algorithm 1's T: the detector a robot runs needs the trainer's
augmentation (mosaic, HSV, flips, scale) and schedule to generalise from a few hundred pairs;
Algorithm 1's T only has to supply the task signal that shapes G. The model is the same
one-channel ``DetectionModel`` that ``training.task_networks.DetectionTask`` builds (by default
YOLOv8n's neck and head on the ImageNet-pretrained EfficientNet-Lite0 backbone; ``yolov8n``:
YOLOv8n from scratch), so the result is written as a ``task.pt`` that ``training/export.py
--task`` exports.

``--init``: a ``task.pt`` detector of ours, or an ultralytics checkpoint the user names (such as
a COCO ``yolov8n.pt``). An ultralytics ``.pt`` is a pickle of the whole model: loading it can run
code, so only the file named here is loaded, with ultralytics' own loader; its RGB first
convolution is summed to one channel and its class head is left to train anew.

Offline: ``YOLO_OFFLINE=1``, a private ``YOLO_CONFIG_DIR`` holding a local font (its dataset
check otherwise fetches Arial.ttf), ``amp=False`` (the AMP check fetches a model), no plots.
Re-running the same command continues the ultralytics run from its ``last.pt`` (ultralytics'
``resume=True``). Ultralytics (8.4) writes ``last.pt`` once per epoch, straight onto the file,
and rewrites it in place when training ends; here its trainer is ``AtomicDetectionTrainer``,
which writes both to a temporary file, flushes it to disk and renames it, so a run killed at
any moment leaves a whole ``last.pt`` (or none yet). What ultralytics' resume gives back: the
epoch after the last completed one (a killed epoch is lost), the EMA weights (stored in
float16, and the live model restarts from them), the optimiser state (float16 except Adam's
moments and step), best fitness and the run's arguments; not the random streams (the trainer
seeds them afresh from ``seed``, so the augmentation after a resume differs). A resumed run is
therefore a valid continuation, not the same run bit for bit. A ``last.pt`` of a finished run
(ultralytics strips the optimiser from it) is not trained again: its weights become
``task.pt``.

Evaluation (``evaluate_detector``) is the deployed path's: the fused image resized to the input
size and padded at the bottom/right (``DetectionTask.predict``), COCO mAP through pycocotools on
the validation split (``tdfusion_ros.metrics.detection``), conf 0.001 and NMS IoU 0.7 as
ultralytics' validator.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdfusion_ros.metrics.detection import detection_metrics  # noqa: E402
from training.atomic import atomic_write  # noqa: E402
from training.datasets import read_yolo_boxes  # noqa: E402
from training.fused_dataset import FusedDataset  # noqa: E402
from training.task_networks import (  # noqa: E402
    DETECTOR_ARCHITECTURES,
    detection_model,
    load_task_checkpoint,
    save_task_checkpoint,
    task_from_checkpoint,
    ultralytics_config_dir,
)

__all__ = ["evaluate_detector", "f1_by_confidence", "train_detector"]

DEFAULT_INPUT_SIZE = (240, 320)


def _offline_ultralytics(threads: int) -> None:
    """Settings that keep ultralytics' trainer off the network, and its thread count."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(ultralytics_config_dir())))
    config_dir.mkdir(parents=True, exist_ok=True)
    font = config_dir / "Arial.ttf"
    if not font.is_file():  # any TTF will do: it is only used to draw labels on plots
        import matplotlib

        shutil.copy(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf", font)
    import ultralytics.utils.torch_utils as torch_utils

    torch_utils.NUM_THREADS = threads  # the trainer calls torch.set_num_threads with it


def _atomic_trainer() -> type:
    """Ultralytics' DetectionTrainer, its checkpoints written whole (see the module text)."""
    import ultralytics.engine.trainer as engine
    from ultralytics.models.yolo.detect import DetectionTrainer

    def replace_whole(tmp: Path, final: Path) -> None:
        with open(tmp, "rb+") as f:  # on disk before it takes the checkpoint's name
            os.fsync(f.fileno())
        os.replace(tmp, final)

    class AtomicDetectionTrainer(DetectionTrainer):
        def save_model(self):  # noqa: ANN202 - ultralytics' signature
            final = {"last": self.last, "best": self.best}
            tmps = {k: v.with_name(v.name + ".partial") for k, v in final.items()}
            for tmp in tmps.values():
                tmp.unlink(missing_ok=True)
            self.last, self.best = tmps["last"], tmps["best"]
            try:
                result = super().save_model()
            finally:
                self.last, self.best = final["last"], final["best"]
            for key in ("best", "last"):
                if tmps[key].exists():
                    replace_whole(tmps[key], final[key])
            return result

        def final_eval(self):  # noqa: ANN202 - ultralytics' signature
            strip = engine.strip_optimizer

            def strip_whole(f, s="", updates=None):  # noqa: ANN001, ANN202
                tmp = Path(f).with_name(Path(f).name + ".partial")
                result = strip(f, s=str(tmp), updates=updates)
                replace_whole(tmp, Path(s or f))
                return result

            engine.strip_optimizer = strip_whole
            try:
                return super().final_eval()
            finally:
                engine.strip_optimizer = strip

    return AtomicDetectionTrainer


def _is_task_checkpoint(path: Path) -> bool:
    """Whether ``path`` is one of our ``task.pt`` records (an ultralytics file is not: it
    pickles the model, so ``weights_only`` refuses it)."""
    try:
        load_task_checkpoint(path)
    except (pickle.UnpicklingError, ValueError):  # refused by weights_only, or not a task.pt
        return False
    return True


def _ultralytics_weights(path: Path) -> dict[str, torch.Tensor]:
    """The float32 state dict of an ultralytics checkpoint this program has just written.

    Ultralytics checkpoints pickle the whole model, so they are read with ultralytics' own
    loader; only files of our own run are read this way, and only the weights leave here.
    """
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(str(path), device="cpu")
    return {k: v.float() for k, v in model.state_dict().items()}


def _yolo_file(model: torch.nn.Module, path: Path) -> Path:
    """An ultralytics checkpoint of ``model`` (its trainer starts from a model file; the
    wrapper is built from YOLOv8n's YAML because ``YOLO(yaml)`` builds for three channels,
    which the one-channel Lite0 backbone cannot take; ``model.yaml`` is what the file keeps)."""
    from ultralytics import YOLO

    yolo = YOLO("yolov8n.yaml", task="detect")
    yolo.model = model
    yolo.save(path)
    return path


def _task_init(task_pt: Path, out: Path) -> tuple[Path, str]:
    """A ``task.pt`` detector as an ultralytics checkpoint, and its architecture."""
    record = load_task_checkpoint(task_pt)
    if record["task"] != "detection":
        raise ValueError(f"{task_pt}: a {record['task']} checkpoint, not a detector")
    task = task_from_checkpoint(record)
    return _yolo_file(task.model, out / "init.pt"), task.architecture


def _ultralytics_model_init(path: Path, out: Path, num_classes: int) -> tuple[Path, str]:
    """A user's ultralytics checkpoint (RGB, any classes) as a one-channel start for YOLOv8n.

    Only YOLOv8n-shaped checkpoints fit (a COCO ``yolov8n.pt`` does): the first convolution's
    RGB kernels are summed (the network fed a grey image), every other tensor of the same shape
    is copied and the class branch of the head, sized for other classes, starts anew.
    """
    from ultralytics.nn.tasks import load_checkpoint

    if not path.is_file():
        raise FileNotFoundError(f"detector init {path}: no such file")
    source, _ = load_checkpoint(str(path), device="cpu")  # a pickle: only the file the user named
    target = detection_model("yolov8n", num_classes)
    theirs, ours = source.float().state_dict(), target.state_dict()
    stem = "model.0.conv.weight"
    if theirs.get(stem) is None or theirs[stem].shape[0] != ours[stem].shape[0] or \
            len(theirs) != len(ours):
        raise ValueError(f"detector init {path}: not a YOLOv8n checkpoint (a different "
                         "network); only YOLOv8n-shaped ultralytics files can start this detector")
    copied = {k: v for k, v in theirs.items() if k in ours and v.shape == ours[k].shape}
    copied[stem] = theirs[stem].sum(dim=1, keepdim=True)
    target.load_state_dict({**ours, **copied})
    return _yolo_file(target, out / "init.pt"), "yolov8n"


def train_detector(data: FusedDataset, out: str | Path, *, epochs: int = 30, imgsz: int = 320,
                   batch: int = 16, seed: int = 0, threads: int = 2,
                   input_size: tuple[int, int] = DEFAULT_INPUT_SIZE, close_mosaic: int = 5,
                   init: str | Path | None = None,
                   hyperparameters: dict[str, Any] | None = None,
                   architecture: str = next(iter(DETECTOR_ARCHITECTURES))) -> Path:
    """Train ``architecture`` from its start (ImageNet backbone, or from scratch for
    ``yolov8n``) or on from ``init`` (a ``task.pt`` detector, whose architecture wins, or an
    ultralytics checkpoint the user named) and write ``OUT/task.pt``.

    ``hyperparameters`` go to ultralytics' trainer as they are (``optimizer``, ``lr0``,
    ``warmup_epochs``, ...): training on from ``init`` wants a small ``lr0`` and no warm-up
    (the trainer's warm-up starts the biases at a learning rate of 0.1).

    Re-running with the same ``out`` resumes an interrupted run and skips a finished one; a
    finished one asked for another ``input_size`` (the deployed size) is relabelled.
    """
    out = Path(out).resolve()
    task_path = out / "task.pt"
    if task_path.is_file():
        record = load_task_checkpoint(task_path)
        if record["meta"].get("epochs", epochs) != epochs:
            raise ValueError(f"{out} holds a finished run of {record['meta']['epochs']} epochs, "
                             f"not {epochs}: remove the folder to train anew")
        if list(record["input_size"]) != list(input_size):
            # the deployed input size is not a training setting (imgsz is): relabel, not retrain
            meta = {**record["meta"], "trained_input_size":
                    record["meta"].get("trained_input_size", record["input_size"])}
            tmp = task_path.with_name("task.pt.tmp")
            save_task_checkpoint(tmp, record["task"], record["classes"], input_size,
                                 record["state_dict"], meta, record.get("architecture"))
            tmp.replace(task_path)
        return task_path
    if architecture not in DETECTOR_ARCHITECTURES:
        raise ValueError(f"detector architecture must be one of "
                         f"{', '.join(DETECTOR_ARCHITECTURES)}, got {architecture!r}")
    _offline_ultralytics(threads)
    from ultralytics import YOLO

    from training.lite0 import register_torchvision_builder

    register_torchvision_builder()  # the Lite0 backbone's builder, for YAMLs and resumes

    run_dir = out / "yolo"
    last = run_dir / "weights" / "last.pt"
    args = dict(data=str(data.data_yaml), epochs=epochs, imgsz=imgsz, batch=batch, seed=seed,
                device="cpu", workers=0, deterministic=True, amp=False, plots=False, val=True,
                project=str(out), name="yolo", exist_ok=True, cache="ram",
                # val: ultralytics' own mAP after every epoch, in yolo/results.csv (the curve)
                close_mosaic=close_mosaic, verbose=False, **(hyperparameters or {}))
    started = time.time()
    started_from = out / "architecture.txt"  # what a resumed run was started as
    trainer = _atomic_trainer()
    if last.is_file():
        architecture = started_from.read_text().strip() if started_from.is_file() \
            else architecture
        yolo = YOLO(str(last))
        ckpt = yolo.ckpt or {}
        total = (ckpt.get("train_args") or {}).get("epochs", epochs)
        if ckpt.get("optimizer") is not None and 0 <= ckpt.get("epoch", -1) < total - 1:
            yolo.train(resume=True, trainer=trainer)
        # else: the run's last epoch is in it (killed before task.pt was written, perhaps
        # while ultralytics stripped the optimiser): its weights are the result
    else:
        out.mkdir(parents=True, exist_ok=True)
        if init is not None:
            init = Path(init)
            made, architecture = (_task_init(init, out) if _is_task_checkpoint(init) else
                                  _ultralytics_model_init(init, out, len(data.detection_classes)))
            start = str(made)
        elif architecture == "yolov8n":
            start = DETECTOR_ARCHITECTURES[architecture]  # from scratch, built by the trainer
        else:  # the ImageNet backbone, as a model file (see _yolo_file)
            torch.manual_seed(seed)  # the neck and head start from random weights: seeded
            model = detection_model(architecture, len(data.detection_classes))
            start = str(_yolo_file(model, out / "start.pt"))
        atomic_write(started_from, lambda f: f.write(architecture.encode()))
        # pretrained: the trainer copies the weights of a model file (False would drop them)
        YOLO(start).train(pretrained=start.endswith(".pt"), trainer=trainer, **args)
    for stale in (run_dir / "weights").glob("*.partial"):  # a write a kill interrupted
        stale.unlink()
    state = _ultralytics_weights(last)
    meta = {"trained_by": "training/train_detector.py", "data": str(data.root),
            "fused": data.info["request"].get("source"), "epochs": epochs, "imgsz": imgsz,
            "batch": batch, "seed": seed, "init": str(init) if init else None,
            "hyperparameters": hyperparameters or {},
            "seconds": round(time.time() - started, 1)}
    return save_task_checkpoint(task_path, "detection", data.detection_classes, input_size,
                                state, meta, architecture)


@torch.no_grad()
def evaluate_detector(task_pt: str | Path, data: FusedDataset, split: str = "val",
                      threads: int = 2) -> dict[str, Any]:
    """COCO mAP50 / mAP50-95, overall and per class, on ``split`` of the fused dataset."""
    torch.set_num_threads(threads)
    record = load_task_checkpoint(task_pt)
    task = task_from_checkpoint(record)
    task.model.eval()
    truth, preds = [], []
    for image_path in data.images(split):
        image = cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE)
        h, w = image.shape
        fused = torch.from_numpy(image.astype(np.float32) / 255.0)[None, None]
        preds.append(task.predict(fused)[0].numpy().astype(np.float64))
        label = data.root / "labels" / split / f"{image_path.stem}.txt"
        truth.append(read_yolo_boxes(label, (h, w), len(record["classes"])).astype(np.float64))
    result = detection_metrics(truth, preds, record["classes"])
    result["images"] = len(truth)
    result["f1_by_conf"] = f1_by_confidence(truth, preds)
    best = max(result["f1_by_conf"], key=lambda c: result["f1_by_conf"][c])
    result["best_f1_conf"] = float(best)
    return result


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = ix * iy
    area = (box[2] - box[0]) * (box[3] - box[1])
    return inter / (area + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter)


def f1_by_confidence(truth: list[np.ndarray], preds: list[np.ndarray],
                     iou: float = 0.5) -> dict[str, float]:
    """F1 of the detections kept at each confidence threshold 0.05 ... 0.90 (IoU 0.5, greedy
    matching by score within each class): the deployed threshold is chosen where it peaks."""
    out = {}
    for conf in np.round(np.arange(0.05, 0.951, 0.05), 2):
        tp = fp = fn = 0
        for gt, pred in zip(truth, preds):
            kept = pred[pred[:, 5] >= conf]
            kept = kept[np.argsort(-kept[:, 5])]
            used = np.zeros(len(gt), bool)
            for row in kept:
                same = np.flatnonzero((gt[:, 0] == row[0]) & ~used)
                hit = same[_iou(row[1:5], gt[same, 1:5]) >= iou] if len(same) else same
                if len(hit):
                    used[hit[0]] = True
                    tp += 1
                else:
                    fp += 1
            fn += int((~used).sum())
        out[f"{conf:.2f}"] = 2 * tp / max(2 * tp + fp + fn, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="fused dataset folder (fused_dataset.py)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--architecture", choices=list(DETECTOR_ARCHITECTURES),
                        default=next(iter(DETECTOR_ARCHITECTURES)))
    parser.add_argument("--init", help="a task.pt detector, or an ultralytics checkpoint you "
                        "trust (a pickle: loading it can run code), e.g. a COCO yolov8n.pt")
    args = parser.parse_args(argv)
    data = FusedDataset(args.data)
    task_pt = train_detector(data, args.out, epochs=args.epochs, imgsz=args.imgsz,
                             batch=args.batch, seed=args.seed, threads=args.threads,
                             init=args.init, architecture=args.architecture)
    metrics = evaluate_detector(task_pt, data, threads=args.threads)
    text = json.dumps(metrics, indent=1).encode()  # whole or absent: it marks the run done
    atomic_write(Path(args.out) / "metrics.json", lambda f: f.write(text))
    print(json.dumps({k: metrics[k] for k in ("mAP50", "mAP50-95", "AP50")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
