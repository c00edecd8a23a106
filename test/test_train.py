"""training/train.py end to end on generated scenes: both tasks, exact resume, NaN stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test.conftest import REPO

# Small enough for CI on 2 cores: 4 scenes of 64x96, one meta step and two F/T steps per epoch.
TINY = [
    "data.options={count: 4, height: 64, width: 96, seed: 3}",
    "data.task_size=[64, 96]",
    "crop_size=48",
    "epochs=1",
    "checkpoint_every=1",
]


def train_cmd(out: Path, *overrides: str) -> list[str]:
    cmd = [sys.executable, "training/train.py", "--config", "config/train_smoke.yaml",
           "--no-progress", "--set", f"out_dir={out}"]
    for item in (*TINY, *overrides):
        cmd += ["--set", item]
    return cmd


def run(cmd: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    weights = {}
    for name in ("fusion", "loss_generation"):
        state = torch.load(out / f"{name}.pt", weights_only=True)["state_dict"]
        weights.update({f"{name}.{k}": v for k, v in state.items()})
    task = torch.load(out / "task.pt", weights_only=True)["state_dict"]
    weights.update({f"task.{k}": v for k, v in task.items()})
    return weights


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_trains_end_to_end(tmp_path: Path, task: str) -> None:
    out = tmp_path / task
    result = run(train_cmd(out, f"task={task}", "epochs=2"))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["position"]["epoch"] == 2
    # per epoch: 1 meta step (M = 2, batch 2) + 2 learning steps (4 scenes, batch 2)
    assert summary["position"]["global_step"] == 6
    assert summary["mean_seconds_per_meta_step"] > 0
    weights = final_weights(out)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert any((out / "tb").iterdir())
    # the fusion network it wrote loads with the ordinary loader
    from tdfusion_ros.nets.checkpoints import load_network
    load_network(out / "fusion.pt", "fusion")
    # and the run exports to a bundle the runtime loads, task graph included
    bundle_dir = tmp_path / "bundle"
    exported = run([sys.executable, "training/export.py", "--fusion", str(out / "fusion.pt"),
                    "--task", str(out / "task.pt"), "--out", str(bundle_dir),
                    "--check-crop", "64x96"])
    assert exported.returncode == 0, exported.stderr[-3000:]
    from tdfusion_ros.runtime.bundle import load_bundle
    graph = "segmenter" if task == "segmentation" else "detector"
    bundle = load_bundle(bundle_dir)
    assert bundle.graph(graph).path.is_file()
    assert bundle.graph("fusion").path.is_file()


# Five kills of one run, each in the process resumed from the one before (``test/kill_at.py``
# sends SIGKILL from inside at an exact moment; the fourth comes from this test, from outside).
KILLS = (
    "write:last.pt:2",                 # half of the checkpoint at the end of G's phase on disk
    "rename:last.pt.tmp:1",            # a checkpoint written in full, not yet renamed
    "call:learning_step:1",            # F and T stepped in memory, nothing saved since
    "outside",                         # this test's SIGKILL, once an F/T step is checkpointed
    "write:loss_generation.pt:1",      # half of a final network on disk
)


def assert_whole_checkpoints(out: Path, moment: str) -> None:
    """Every checkpoint under its own name loads in full; a kill mid-write left only a tmp."""
    for path in out.glob("*.pt"):
        torch.load(path, weights_only=True)  # raises on a truncated file
    if moment.startswith("write:"):
        tmp = out / (moment.split(":")[1] + ".tmp")
        assert tmp.is_file(), f"{moment}: the kill did not happen mid-write"
        with pytest.raises(Exception):  # noqa: B017 - any error: the half file must not load
            torch.load(tmp, weights_only=True)


def test_killed_five_times_resumes_to_the_same_weights(tmp_path: Path) -> None:
    """kill -9 at five moments (mid-step, mid-checkpoint-write, between write and rename,
    mid-final-save), ``--resume`` after each: the final weights equal an uninterrupted run's
    bit for bit, and no checkpoint on disk is ever half-written."""
    straight = tmp_path / "straight"
    assert run(train_cmd(straight)).returncode == 0

    killed = tmp_path / "killed"
    checkpoint = killed / "last.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for n, moment in enumerate(KILLS):
        args = train_cmd(killed)[2:] if n == 0 else ["--resume", str(checkpoint),
                                                      "--no-progress"]
        cmd = [sys.executable, "test/kill_at.py",
               "none" if moment == "outside" else moment, "training.train", *args]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        try:
            if moment == "outside":
                deadline = time.time() + 600
                while time.time() < deadline and proc.poll() is None:
                    position = torch.load(checkpoint, weights_only=True)["position"]
                    if position["phase"] == 1 and position["step"] >= 1:  # inside F/T
                        break
                    time.sleep(0.05)
                assert proc.poll() is None, "the run ended before it could be killed"
                proc.send_signal(signal.SIGKILL)
            _, stderr = proc.communicate(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -signal.SIGKILL, f"{moment}: not killed\n{stderr[-3000:]}"
        assert not (killed / "summary.json").exists(), moment
        assert_whole_checkpoints(killed, moment)
    resumed = run([sys.executable, "training/train.py", "--resume", str(checkpoint),
                   "--no-progress"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((killed / "summary.json").read_text())["position"]["epoch"] == 1
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    last_a = torch.load(straight / "last.pt", weights_only=True)
    last_b = torch.load(checkpoint, weights_only=True)
    assert last_a["position"] == last_b["position"]
    assert torch.equal(last_a["rng"]["torch"], last_b["rng"]["torch"])


def test_non_finite_loss_stops_and_names_the_step(tmp_path: Path) -> None:
    out = tmp_path / "nan"
    result = run(train_cmd(out, "inner_lr=1e30"))
    assert result.returncode == 1
    assert "non-finite" in result.stderr
    assert "epoch 0" in result.stderr
    assert not (out / "summary.json").exists()


def test_config_errors_are_named(tmp_path: Path) -> None:
    result = run(train_cmd(tmp_path / "x", "learning_rate=0.1"))
    assert result.returncode == 1
    assert "unknown config key(s) learning_rate" in result.stderr
    result = run(train_cmd(tmp_path / "y", "ablation=VI"))
    assert result.returncode == 1 and "ablation must be one of" in result.stderr


def test_official_defaults_and_meta_step_count() -> None:
    """The dataset configs take the official code's choices; the meta step count is explicit
    and must split M evenly; a checkpoint written before the key existed resumes as it ran."""
    from training.config import config_from_checkpoint, load_config

    for name in ("msrs", "fmb", "m3fd", "llvip"):
        config = load_config(REPO / "config" / f"train_{name}.yaml")
        assert (config.outer_step, config.swap_augment, config.epochs) == (
            "max_normalised", True, 40), name
        assert (config.lr_step_epochs, config.lr_gamma) == (10, 0.1), name
        assert (config.meta_steps_per_epoch, config.meta_batch_size) == (200, 1), name
        assert config.meta_config(1e-4).meta_gradient_method == "closed_form", name
    with pytest.raises(ValueError, match="meta_steps_per_epoch must be a positive divisor"):
        load_config(REPO / "config" / "train_smoke.yaml", ["meta_steps_per_epoch=3"])
    with pytest.raises(ValueError, match="meta_gradient_method"):
        load_config(REPO / "config" / "train_smoke.yaml", ["meta_gradient_method=numeric"])
    old = load_config(REPO / "config" / "train_smoke.yaml").to_dict()
    del old["meta_steps_per_epoch"], old["meta_gradient_method"]
    resumed = config_from_checkpoint(old)
    assert resumed.meta_steps_per_epoch is None and resumed.meta_batch_size == old["batch_size"]


def test_swap_doubles_each_batch_with_the_exchanged_copy() -> None:
    from training.config import load_config
    from training.train import batches, build_dataset, with_swapped_copy

    for task in ("segmentation", "detection"):
        config = load_config(REPO / "config" / "train_smoke.yaml", [f"task={task}"])
        dataset = build_dataset(config)
        batch = batches(dataset, [0, 1], config, (0, 2), 0)[0]
        doubled = with_swapped_copy(batch, config)
        assert doubled.ir_crop.shape[0] == 4 and doubled.names == batch.names * 2
        assert torch.equal(doubled.ir_crop[2:], batch.vis_crop)
        assert torch.equal(doubled.vis_task[2:], batch.ir_task)
        if task == "detection":
            assert len(doubled.boxes) == 4
            assert doubled.targets["batch_idx"].max() >= 2
        else:
            assert torch.equal(doubled.targets[2:], batch.targets)
        config.swap_augment = False
        assert with_swapped_copy(batch, config) is batch
