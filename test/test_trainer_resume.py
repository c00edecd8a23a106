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
    for sub in ("images", "masks"):
        (out / sub / "train").mkdir(parents=True)
    for i in range(6):
        image = rng.integers(0, 90, (64, 96), dtype=np.uint8)
        mask = np.zeros((64, 96), np.uint8)
        y, x = rng.integers(0, 40), rng.integers(0, 70)
        image[y:y + 20, x:x + 24] += 150
        mask[y:y + 20, x:x + 24] = 1
        cv2.imwrite(str(out / "images" / "train" / f"{i:02d}.png"), image)
        cv2.imwrite(str(out / "masks" / "train" / f"{i:02d}.png"), mask)
    (out / "fused.json").write_text(json.dumps({
        "request": {"source": "ir"}, "detection_classes": ["box"],
        "segmentation_classes": ["background", "box"]}))
    return out


def _run(moment: str, data: Path, out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "test/kill_at.py", moment,
                           "test.test_trainer_resume:seg_main", str(data), str(out)],
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
