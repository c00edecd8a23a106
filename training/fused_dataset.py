"""Fuse a labelled split once, in the layout task trainers read (paper Table 2 protocol).

Why a folder of fused images: in the paper's comparison every fusion method's output is frozen and
a detector and a segmenter are trained on it. Fusing once (ONNX Runtime, the graph the robot
runs) and training from files keeps F out of the task training loop and lets ultralytics' own
trainer, with its augmentation, train the detector. The same function writes the infrared-only
and visible-only arms.

Layout (``data.yaml`` is an ultralytics dataset file, one grey channel)::

    OUT/images/{train,val}/<name>.png   fused Y, 8-bit grey, full resolution
    OUT/labels/{train,val}/<name>.txt   YOLO boxes (ultralytics finds them beside images/)
    OUT/masks/{train,val}/<name>.png    class-id maps, for the pairs that have one
    OUT/data.yaml, OUT/fused.json       class lists; what was fused, with which F
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tdfusion_ros.runtime.bundle import sha256_of
from tdfusion_ros.runtime.colour import to_uint8
from tdfusion_ros.scenes import yolo_lines
from training.labelled_pairs import labelled_pairs

__all__ = ["SOURCES", "FusedDataset", "write_fused_dataset"]

#: Sources that need no network; anything else is an F checkpoint path.
SOURCES = ("ir", "vis")


class FusedDataset:
    """A written fused dataset: paths and class lists."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        info_path = self.root / "fused.json"
        if not info_path.is_file():
            raise FileNotFoundError(f"{self.root}: not a fused dataset (no fused.json); write it "
                                    "with training/fused_dataset.py")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        self.detection_classes: list[str] = self.info["detection_classes"]
        self.segmentation_classes: list[str] = self.info["segmentation_classes"]

    @property
    def data_yaml(self) -> Path:
        return self.root / "data.yaml"

    def images(self, split: str) -> list[Path]:
        return sorted((self.root / "images" / split).glob("*.png"))

    def masks(self, split: str) -> list[tuple[Path, Path]]:
        """(image, mask) pairs of ``split`` that have a label map."""
        out = []
        for mask in sorted((self.root / "masks" / split).glob("*.png")):
            out.append((self.root / "images" / split / mask.name, mask))
        return out


def _source_info(source: str) -> dict[str, str]:
    if source in SOURCES:
        return {"source": source}
    return {"source": str(source), "sha256": sha256_of(source)}


def _fuser(source: str, threads: int, work: Path):
    """A function (ir_y, vis_y) -> fused Y for an arm: a modality alone, or F through ORT."""
    if source == "ir":
        return lambda ir, vis: ir
    if source == "vis":
        return lambda ir, vis: vis
    from tdfusion_ros.nets.checkpoints import load_network
    from tdfusion_ros.runtime.engines import create_engine
    from training.export import FUSION_OUTPUT, export_fusion

    onnx_path = work / "fusion.onnx"
    export_fusion(load_network(source), onnx_path)
    engine = create_engine(onnx_path, "onnxruntime", name="fusion", threads=threads)

    def fuse(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
        feed = {"ir": ir[None, None].astype(np.float32), "vis": vis[None, None].astype(np.float32)}
        return engine.run(feed)[FUSION_OUTPUT][0, 0]

    return fuse


def _same_request(done: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """The same data fused by the same F: a checkpoint is known by its sha256, not its path
    (a copy of F elsewhere has fused this set already)."""
    if "sha256" in wanted:
        done = {k: v for k, v in done.items() if k != "source"}
        wanted = {k: v for k, v in wanted.items() if k != "source"}
    return done == wanted


def write_fused_dataset(out: str | Path, source: str, *, roots: Sequence[str] | None = None,
                        val_names: Sequence[str] | None = None, scenes_count: int = 0,
                        scenes_size: tuple[int, int] = (480, 640), scenes_seed: int = 1000,
                        threads: int = 2, log: Any = print) -> FusedDataset:
    """Fuse every pair of both splits with ``source`` ("ir", "vis" or an F checkpoint).

    Skipped when ``OUT/fused.json`` already records the same source and data (so a recipe can
    be re-run); written to a temporary folder and renamed, so a killed run leaves no half set.
    """
    out = Path(out)
    request = {**_source_info(source), "roots": list(roots or []),
               "val_names": sorted(val_names or []),
               "scenes_count": scenes_count, "scenes_size": list(scenes_size),
               "scenes_seed": scenes_seed}
    if (out / "fused.json").is_file():
        done = json.loads((out / "fused.json").read_text())
        if _same_request(done.get("request") or {}, request):
            log(f"[fused] {out}: already written for {source}")
            return FusedDataset(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    work = tempfile.TemporaryDirectory(prefix="tdfusion-fuse-")
    fuse = _fuser(source, threads, Path(work.name))
    common = dict(roots=roots, val_names=val_names, scenes_count=scenes_count,
                  scenes_size=tuple(scenes_size), scenes_seed=scenes_seed)
    started = time.time()
    counts: dict[str, dict[str, int]] = {}
    classes: dict[str, list[str]] = {}
    for split in ("train", "val"):
        det = labelled_pairs(task="detection", split=split, **common)
        seg = labelled_pairs(task="segmentation", split=split, **common)
        classes = {"detection": list(det.classes), "segmentation": list(seg.classes)}
        seg_index = {n: i for i, n in enumerate(seg.names)}
        for sub in ("images", "labels", "masks"):
            (tmp / sub / split).mkdir(parents=True, exist_ok=True)
        n_masks = 0
        for i in range(len(det)):
            sample = det[i]
            fused = fuse(sample.ir_y, sample.vis_y)
            h, w = fused.shape
            cv2.imwrite(str(tmp / "images" / split / f"{sample.name}.png"),
                        to_uint8(np.asarray(fused, np.float32)))
            lines = yolo_lines(sample.target, h, w)
            (tmp / "labels" / split / f"{sample.name}.txt").write_text(
                "".join(line + "\n" for line in lines))
            if sample.name in seg_index:
                mask = seg[seg_index[sample.name]].target.astype(np.uint8)
                cv2.imwrite(str(tmp / "masks" / split / f"{sample.name}.png"), mask)
                n_masks += 1
            if (i + 1) % 50 == 0:
                log(f"[fused] {source}: {split} {i + 1}/{len(det)} ({time.time() - started:.0f} s)")
        counts[split] = {"pairs": len(det), "masks": n_masks}
    names = {i: c for i, c in enumerate(classes["detection"])}
    (tmp / "data.yaml").write_text(json.dumps(
        {"path": str(out.resolve()), "train": "images/train", "val": "images/val",
         "names": names, "channels": 1}, indent=1))
    (tmp / "fused.json").write_text(json.dumps(
        {"request": request, "counts": counts, "detection_classes": classes["detection"],
         "segmentation_classes": classes["segmentation"],
         "seconds": round(time.time() - started, 1)}, indent=1))
    work.cleanup()
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    log(f"[fused] {out}: {counts} in {time.time() - started:.0f} s")
    return FusedDataset(out)
