"""The segmenter's trainer killed with SIGKILL (``test/kill_at.py``) and run again: it resumes
from its ``last.pt`` to the weights an uninterrupted run ends with, bit for bit, and leaves no
half-written checkpoint under a checkpoint's name.

Six generated 64x96 images with label maps (no validation split), the Lite0 segmenter at
64x96, batch 2, three epochs of three steps, one thread.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test.conftest import REPO

#: In order, each in the process run after the one before: half of epoch 2's checkpoint on
#: disk; mid-epoch (the 4th image augmented: epoch 2 again); half of the final task.pt.
SEG_KILLS = ("write:last.pt:2", "call:training.train_segmenter._augment:4",
             "write:task.pt:1")


def seg_main(argv: list[str]) -> int:
    """``kill_at.py``'s entry: DATA OUT -> train_segmenter, as the recipe calls it."""
    from training.fused_dataset import FusedDataset
    from training.train_segmenter import train_segmenter

    data, out = argv
    train_segmenter(FusedDataset(data), out, epochs=3, batch=2, threads=1, seed=5,
                    input_size=(64, 96), log=lambda *_: None)
    return 0


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fused dataset of six 64x96 images with label maps (bright boxes = class 1 on a
    textured class-0 background), in the layout training/fused_dataset.py writes."""
    import json

    import cv2
    import numpy as np

    out = tmp_path_factory.mktemp("fused") / "boxes"
    rng = np.random.default_rng(0)
    for i in range(8):
        split = "train" if i < 6 else "val"  # the segmenter trains on the six alone
        for sub in ("images", "masks", "labels"):
            (out / sub / split).mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 90, (64, 96), dtype=np.uint8)
        mask = np.zeros((64, 96), np.uint8)
        y, x = int(rng.integers(0, 40)), int(rng.integers(0, 70))
        image[y:y + 20, x:x + 24] += 150
        mask[y:y + 20, x:x + 24] = 1
        cv2.imwrite(str(out / "images" / split / f"{i:02d}.png"), image)
        if split == "train":
            cv2.imwrite(str(out / "masks" / split / f"{i:02d}.png"), mask)
        (out / "labels" / split / f"{i:02d}.txt").write_text(
            f"0 {(x + 12) / 96:.6f} {(y + 10) / 64:.6f} {24 / 96:.6f} {20 / 64:.6f}\n")
    (out / "fused.json").write_text(json.dumps({
        "request": {"source": "ir"}, "detection_classes": ["box"],
        "segmentation_classes": ["background", "box"]}))
    (out / "data.yaml").write_text(json.dumps({
        "path": str(out), "train": "images/train", "val": "images/val", "names": {"0": "box"},
        "channels": 1}))
    return out


def det_main(argv: list[str]) -> int:
    """``kill_at.py``'s entry: DATA OUT -> train_detector (ultralytics' trainer)."""
    from training.fused_dataset import FusedDataset
    from training.train_detector import train_detector

    data, out = argv
    train_detector(FusedDataset(data), out, epochs=2, imgsz=64, batch=2, threads=1,
                   input_size=(64, 96), close_mosaic=0)
    return 0


def _run(moment: str, data: Path, out: Path, entry: str = "seg_main"
         ) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "test/kill_at.py", moment,
                           f"test.test_trainer_resume:{entry}", str(data), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_segmenter_killed_three_times_resumes_to_the_same_weights(scenes: Path,
                                                                   tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    done = _run("none", scenes, straight)
    assert done.returncode == 0, done.stderr[-3000:]
    killed = tmp_path / "killed"
    for moment in SEG_KILLS:
        result = _run(moment, scenes, killed)
        assert result.returncode == -signal.SIGKILL, f"{moment}: not killed\n" \
            f"{result.stderr[-3000:]}"
        for path in killed.glob("*.pt"):  # whole, or not there under this name
            torch.load(path, weights_only=True)
        half = killed / (moment.split(":")[1] + ".tmp")
        if moment.startswith("write:"):
            assert half.is_file(), moment
        assert not (killed / "task.pt").exists(), moment
    result = _run("none", scenes, killed)
    assert result.returncode == 0, result.stderr[-3000:]
    a = torch.load(straight / "task.pt", weights_only=True)
    b = torch.load(killed / "task.pt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert [e["loss"] for e in a["meta"]["history"]] == \
        [e["loss"] for e in b["meta"]["history"]]


#: Half of epoch 2's last.pt on disk (ultralytics writes it once per epoch), then, in the run
#: resumed from epoch 1, between the end-of-training rewrite of last.pt (optimiser stripped)
#: and its rename.
DET_KILLS = ("write:last.pt:2", "rename:last.pt.partial:2")


def _ultralytics_checkpoint_loads(path: Path) -> dict:
    from ultralytics.nn.tasks import torch_safe_load

    return torch_safe_load(str(path))[0]  # raises on a truncated file


def test_detector_killed_twice_resumes_and_never_leaves_half_a_checkpoint(
        scenes: Path, tmp_path: Path) -> None:
    """Ultralytics' own resume is not bit for bit (``training/train_detector.py`` says why), so
    this checks what it does give: each rerun continues, and every checkpoint is whole."""
    out = tmp_path / "det"
    weights = out / "yolo" / "weights"
    for moment in DET_KILLS:
        result = _run(moment, scenes, out, "det_main")
        assert result.returncode == -signal.SIGKILL, f"{moment}: not killed\n" \
            f"{result.stderr[-3000:]}"
        for path in weights.glob("*.pt"):
            _ultralytics_checkpoint_loads(path)
        assert not (out / "task.pt").exists(), moment
    assert _ultralytics_checkpoint_loads(weights / "last.pt")["epoch"] == 1  # the last epoch
    result = _run("none", scenes, out, "det_main")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Resuming training" not in result.stderr  # the finished run is not trained again
    record = torch.load(out / "task.pt", weights_only=True)
    assert record["task"] == "detection" and record["classes"] == ["box"]
    assert not list(weights.glob("*.partial"))
