"""TDFusion training (paper Algorithm 1): one readable loop over epochs of two phases.

    python training/train.py --config config/train_msrs.yaml [--set key=value ...]
    python training/train.py --config config/train_smoke.yaml      # CPU, generated data
    torchrun --nproc_per_node 4 training/train.py --config ...       # several GPUs
    python training/train.py --resume runs/tdfusion/last.pt          # continue a run exactly

Per epoch: draw disjoint meta-train/meta-test subsets of M samples; learning of G (one meta
step per meta-train batch, ``training.meta_learning.meta_step``); learning of F and T (one
pass over the training set, ``learning_step``). Checkpoints (``last.pt``) are written every
``checkpoint_every`` steps and at the end of each phase, so a crash loses at most that many
steps; ``--resume`` continues with the same batches and RNG streams as an uninterrupted run.
Outputs in ``out_dir``: ``last.pt``, ``fusion.pt`` / ``loss_generation.pt`` / ``task.pt``
(final networks), ``summary.json``, TensorBoard logs in ``tb/``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdfusion_ros.nets.checkpoints import load_network, save_network  # noqa: E402
from tdfusion_ros.nets.networks import FusionNet, LossGenerationNet  # noqa: E402
from training import datasets  # noqa: E402
from training.atomic import atomic_write, save_torch  # noqa: E402
from training.batches import (  # noqa: E402
    EpochBatches,
    FusionBatch,
    derive_generator,
    meta_subsets,
    permutation,
)
from training.config import TrainConfig, config_from_checkpoint, load_config  # noqa: E402
from training.meta_learning import (  # noqa: E402
    Networks,
    learning_step,
    meta_gradient,
    outer_update,
    swap_doubled,
)
from training.task_networks import (  # noqa: E402
    LEGACY_ARCHITECTURES,
    DetectionTask,
    SegmentationTask,
    TaskNetwork,
    load_task_checkpoint,
    save_task_checkpoint,
)

CHECKPOINT_FORMAT = "tdfusion_ros-train"
PHASES = ("meta", "learn")


class TrainingError(RuntimeError):
    """Training stopped on purpose (e.g. a non-finite loss), with what and where."""


@dataclass
class Position:
    """The next step to run: training resumes exactly here."""

    epoch: int = 0
    phase: int = 0  # index into PHASES
    step: int = 0
    global_step: int = 0


# ----------------------------------------------------------------------------- set-up


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError("--device cuda requested but PyTorch sees no CUDA GPU")
    return torch.device(name)


def build_dataset(config: TrainConfig) -> datasets.PairDataset:
    options = dict(config.data.options)
    options.setdefault("task", config.task)
    if config.data.task_size is not None:
        options["task_size"] = tuple(config.data.task_size)
    return datasets.build_dataset(config.data.kind, **options)


def build_task(config: TrainConfig, dataset: datasets.PairDataset,
               architecture: str | None = None) -> TaskNetwork:
    """T at the dataset's task size: ``architecture`` (an ``init_task`` record's), else the
    config's ``task_architecture``, else the task's default (the ImageNet-pretrained ones)."""
    architecture = architecture or config.task_architecture
    options = {"architecture": architecture} if architecture else {}
    if config.task == "segmentation":
        return SegmentationTask(len(dataset.classes), dataset.task_size, **options)
    return DetectionTask(len(dataset.classes), dataset.task_size, **options)


def build_networks(config: TrainConfig, dataset: datasets.PairDataset,
                   device: torch.device) -> Networks:
    fusion = None
    if config.fused_image == "network":
        fusion = load_network(config.init_fusion) if config.init_fusion else FusionNet()
        fusion = fusion.to(device).train()
    loss = LossGenerationNet().to(device).train() if config.use_loss_network else None
    if config.init_task:
        try:
            record = load_task_checkpoint(config.init_task)
        except (OSError, ValueError, RuntimeError) as err:
            raise TrainingError(f"{config.init_task}: unreadable task.pt ({err})") from err
        if record.get("task") != config.task:
            raise TrainingError(f"{config.init_task}: not a {config.task} task.pt")
        if list(record["classes"]) != list(dataset.classes):
            raise TrainingError(f"{config.init_task}: classes {record['classes']} differ from "
                                f"the dataset's {list(dataset.classes)}")
        task = build_task(config, dataset, record.get(
            "architecture", LEGACY_ARCHITECTURES[config.task]))
        task.model.load_state_dict(record["state_dict"])
    else:
        task = build_task(config, dataset)
    task = task.to(device)
    task.model.train()
    return Networks(fusion, loss, task)


def build_optimizers(config: TrainConfig, nets: Networks) -> dict[str, torch.optim.Optimizer]:
    optimizers = {"task": torch.optim.Adam(nets.task.trainable_params().values(), lr=config.lr)}
    if nets.fusion is not None:
        optimizers["fusion"] = torch.optim.Adam(nets.fusion.parameters(), lr=config.lr)
    if nets.loss is not None:
        optimizers["loss"] = torch.optim.Adam(nets.loss.parameters(), lr=config.loss_net_lr)
    return optimizers


def build_schedulers(config: TrainConfig, optimizers: dict[str, torch.optim.Optimizer]
                     ) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
    step = config.lr_step_epochs if config.lr_step_epochs > 0 else 10**9
    return {name: torch.optim.lr_scheduler.StepLR(opt, step, config.lr_gamma)
            for name, opt in optimizers.items()}


# ----------------------------------------------------------------------------- multi-GPU


def world() -> tuple[int, int]:
    """(rank, world size); under torchrun the process group is started here."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return (dist.get_rank(), size) if size > 1 else (0, 1)


def average_gradients(grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mean of each gradient over ranks (G's meta-gradient, computed on every rank)."""
    if not dist.is_initialized():
        return grads
    size = dist.get_world_size()
    for g in grads.values():
        dist.all_reduce(g)
        g.div_(size)
    return grads


class GradientAveragingOptimizer:
    """Wraps an optimiser so ``step`` first averages ``.grad`` over ranks (data parallel)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.param_groups = optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        size = dist.get_world_size()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(size)
        self.optimizer.step()


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, config: TrainConfig, position: Position, nets: Networks,
                    optimizers: dict, schedulers: dict, history: list[dict]) -> None:
    """Everything needed to continue exactly; written atomically (tmp file, fsync, rename),
    so a kill at any moment leaves the previous checkpoint or this one, never half of one."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "config": config.to_dict(),
        "position": vars(position).copy(),
        "networks": {name: module.state_dict() for name, module in _modules(nets).items()},
        "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in schedulers.items()},
        "rng": rng_states(),
        "history": history,
    }
    save_torch(state, path)


def rng_states() -> dict[str, Any]:
    """Every global random stream (batches and crops use their own seeded generators; T's
    dropout draws from torch's), in types ``torch.load(weights_only=True)`` reads back."""
    numpy_state = np.random.get_state(legacy=False)
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
                      "pos": int(numpy_state["state"]["pos"]),
                      "has_gauss": int(numpy_state["has_gauss"]),
                      "gauss": float(numpy_state["gauss"])},
            "python": random.getstate()}


def restore_rng_states(states: dict[str, Any]) -> None:
    """The streams ``rng_states`` saved (a checkpoint from before numpy's and Python's were
    saved restores torch's alone)."""
    torch.set_rng_state(states["torch"])
    if states.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        n = states["numpy"]
        np.random.set_state({"bit_generator": "MT19937",
                             "state": {"key": n["key"].numpy().astype(np.uint32),
                                       "pos": n["pos"]},
                             "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    if "python" in states:
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"{path}: no checkpoint to resume from (a run stopped before its "
                            "first checkpoint starts again with --config)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise TrainingError(f"{path}: unreadable training checkpoint ({err})") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path}: not a training checkpoint of this program (to start "
                            "from fusion weights use init_fusion)")
    return state


def _modules(nets: Networks) -> dict[str, torch.nn.Module]:
    modules = {"task": nets.task.model}
    if nets.fusion is not None:
        modules["fusion"] = nets.fusion
    if nets.loss is not None:
        modules["loss"] = nets.loss
    return modules


def save_final_networks(out_dir: Path, config: TrainConfig, nets: Networks,
                        dataset: datasets.PairDataset) -> dict[str, str]:
    meta = {"trained_by": "training/train.py", "task": config.task, "ablation": config.ablation}
    paths = {}
    if nets.fusion is not None:
        paths["fusion"] = str(save_network(nets.fusion, out_dir / "fusion.pt", "fusion", meta))
    if nets.loss is not None:
        paths["loss_generation"] = str(
            save_network(nets.loss, out_dir / "loss_generation.pt", "loss_generation", meta))
    paths["task"] = str(save_task_checkpoint(out_dir / "task.pt", config.task, dataset.classes,
                                             dataset.task_size, nets.task.model.state_dict(),
                                             meta, nets.task.architecture))
    return paths


# ----------------------------------------------------------------------------- the loop


def check_finite(values: dict[str, float], where: str) -> None:
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    if bad:
        detail = ", ".join(f"{k}={v}" for k, v in bad.items())
        raise TrainingError(f"non-finite loss at {where}: {detail}")


def with_swapped_copy(batch: FusionBatch, config: TrainConfig) -> FusionBatch:
    """With ``swap_augment``, the batch followed by its ir/vis-swapped copy (one step on both,
    as the official code); otherwise the batch itself."""
    if not config.swap_augment:
        return batch
    doubled = swap_doubled(batch)
    doubled.names = batch.names + batch.names
    doubled.boxes = None if batch.boxes is None else batch.boxes + batch.boxes
    return doubled


def epoch_plan(config: TrainConfig, n: int, epoch: int, rank: int, size: int
               ) -> dict[str, list[int]]:
    """Sample indices of each phase of an epoch (this rank's share), from (seed, epoch) only."""
    gen = derive_generator(config.seed, epoch, 0)
    meta_train, meta_test = meta_subsets(n, gen, config.meta_samples)
    order = permutation(n, derive_generator(config.seed, epoch, 1))
    shard = slice(rank, None, size)
    return {"meta_train": meta_train[shard], "meta_test": meta_test[shard], "learn": order[shard]}


def batches(dataset, indices, config: TrainConfig, keys: tuple[int, ...], start: int,
            batch_size: int | None = None):
    return EpochBatches(dataset, indices, batch_size or config.batch_size,
                                 seed=config.seed, keys=keys, crop_size=config.crop_size,
                                 start=start)


def log_images(writer, nets: Networks, batch: FusionBatch, step: int) -> None:
    """A fused sample and G's w_ir map, for a look at what the loss asks of F."""
    with torch.no_grad():
        ir, vis = batch.ir_crop[:1], batch.vis_crop[:1]
        if nets.fusion is not None:
            writer.add_image("fused", nets.fusion(ir, vis)[0].clamp(0, 1), step)
        if nets.loss is not None:
            writer.add_image("w_ir", nets.loss(ir, vis)[0, :1], step)
        writer.add_image("sources", torch.cat([ir[0], vis[0]], dim=2), step)


def train(config: TrainConfig, resume: dict[str, Any] | None = None,
          show_progress: bool = True) -> dict[str, Any]:
    rank, size = world()
    device = pick_device(config.device)
    if size > 1 and device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    out_dir = Path(config.out_dir)
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    dataset = build_dataset(config)
    nets = build_networks(config, dataset, device)
    optimizers = build_optimizers(config, nets)
    schedulers = build_schedulers(config, optimizers)
    position, history = Position(), []
    if resume is not None:
        for name, module in _modules(nets).items():
            module.load_state_dict(resume["networks"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(resume["optimizers"][name])
        for name, sched in schedulers.items():
            sched.load_state_dict(resume["schedulers"][name])
        restore_rng_states(resume["rng"])
        position, history = Position(**resume["position"]), list(resume["history"])
    step_opts = dict(optimizers)
    if size > 1:
        step_opts = {k: GradientAveragingOptimizer(v) for k, v in optimizers.items()}

    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tb"))
    from tqdm import tqdm

    def checkpoint() -> None:
        for name, module in _modules(nets).items():
            if not all(torch.isfinite(p).all() for p in module.parameters()):
                raise TrainingError(
                    f"non-finite weights in {name} at epoch {position.epoch}, "
                    f"{PHASES[position.phase]} step {position.step}; the last checkpoint "
                    f"({out_dir / 'last.pt'}) is kept")
        if rank == 0:
            save_checkpoint(out_dir / "last.pt", config, position, nets, optimizers, schedulers,
                            history)

    started = time.time()
    timings = {"meta": [], "learn": []}
    steps_run = 0
    while position.epoch < config.epochs:
        plan = epoch_plan(config, len(dataset), position.epoch, rank, size)
        lead = optimizers.get("fusion", optimizers["task"])
        meta_cfg = config.meta_config(lead.param_groups[0]["lr"])
        run_meta = nets.loss is not None
        run_learn = config.separate_ft_phase
        phase = PHASES[position.phase]
        if phase == "meta" and not run_meta:
            position.phase, position.step, phase = 1, 0, "learn"
        if phase == "meta":
            train_b = batches(dataset, plan["meta_train"], config, (position.epoch, 2),
                              position.step, config.meta_batch_size)
            test_b = batches(dataset, plan["meta_test"], config, (position.epoch, 3),
                             position.step, config.meta_batch_size)
            total = min(len(train_b), len(test_b))
            bar = tqdm(range(total), desc=f"epoch {position.epoch} G", disable=not show_progress
                       or rank != 0, leave=False)
            for k in bar:
                t0 = time.perf_counter()
                mtrain = with_swapped_copy(train_b[k], config).to(device)
                mtest = with_swapped_copy(test_b[k], config).to(device)
                result = meta_gradient(nets, mtrain, mtest, meta_cfg)
                losses = {"meta/fusion": float(result.losses.fusion),
                          "meta/inner_task": float(result.losses.inner_task),
                          "meta/outer_task": float(result.losses.outer.detach())}
                check_finite(losses, f"epoch {position.epoch}, learning of G, step "
                                     f"{position.step}")
                outer_update(nets.loss, average_gradients(result.grads), optimizers["loss"],
                             meta_cfg.outer_step)
                if not run_learn:  # ablation IV: F and T learn here, not in their own phase
                    learning_step(nets, mtrain, meta_cfg, step_opts.get("fusion"),
                                  step_opts["task"])
                timings["meta"].append(time.perf_counter() - t0)
                position.step += 1
                position.global_step += 1
                steps_run += 1
                bar.set_postfix(outer=f"{losses['meta/outer_task']:.4f}")
                if writer and position.global_step % config.log_every == 0:
                    for key, value in losses.items():
                        writer.add_scalar(key, value, position.global_step)
                if position.step % config.checkpoint_every == 0:
                    checkpoint()
                if config.max_steps and steps_run >= config.max_steps:
                    break
            if config.max_steps and steps_run >= config.max_steps:
                break
            position.phase, position.step = 1, 0
            checkpoint()
        if run_learn:
            learn_b = batches(dataset, plan["learn"], config, (position.epoch, 4), position.step)
            bar = tqdm(range(len(learn_b)), desc=f"epoch {position.epoch} F/T",
                       disable=not show_progress or rank != 0, leave=False)
            for k in bar:
                t0 = time.perf_counter()
                batch = with_swapped_copy(learn_b[k], config).to(device)
                stats = learning_step(nets, batch, meta_cfg, step_opts.get("fusion"),
                                      step_opts["task"])
                losses = {f"learn/{k}": v for k, v in stats._asdict().items()}
                check_finite(losses, f"epoch {position.epoch}, learning of F and T, step "
                                     f"{position.step}")
                timings["learn"].append(time.perf_counter() - t0)
                position.step += 1
                position.global_step += 1
                steps_run += 1
                bar.set_postfix(fusion=f"{stats.fusion_loss:.4f}", task=f"{stats.task_loss:.4f}")
                if writer and position.global_step % config.log_every == 0:
                    for key, value in losses.items():
                        writer.add_scalar(key, value, position.global_step)
                    writer.add_scalar("lr", optimizers["task"].param_groups[0]["lr"],
                                      position.global_step)
                if writer and position.global_step % config.image_every == 0:
                    log_images(writer, nets, batch, position.global_step)
                if position.step % config.checkpoint_every == 0:
                    checkpoint()
                if config.max_steps and steps_run >= config.max_steps:
                    break
            if config.max_steps and steps_run >= config.max_steps:
                break
        for sched in schedulers.values():
            sched.step()
        history.append({"epoch": position.epoch, "global_step": position.global_step,
                        "time_s": round(time.time() - started, 3)})
        position = Position(position.epoch + 1, 0, 0, position.global_step)
        checkpoint()

    summary: dict[str, Any] = {}
    if rank == 0:
        summary = {
            "config": config.to_dict(),
            "position": vars(position),
            "steps_this_run": steps_run,
            "seconds": round(time.time() - started, 2),
            "mean_seconds_per_meta_step": _mean(timings["meta"]),
            "mean_seconds_per_learning_step": _mean(timings["learn"]),
            "history": history,
            "networks": save_final_networks(out_dir, config, nets, dataset),
            "checkpoint": str(out_dir / "last.pt"),
        }
        text = json.dumps(summary, indent=2).encode()
        atomic_write(out_dir / "summary.json", lambda f: f.write(text))
        writer.close()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (see config/train_*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value (repeatable)")
    parser.add_argument("--device", help="auto, cpu or cuda (overrides the config)")
    parser.add_argument("--resume", help="continue from a training checkpoint (last.pt)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        resume = load_checkpoint(args.resume) if args.resume else None
        if resume is not None:
            config = config_from_checkpoint(resume["config"])
        else:
            if not args.config:
                parser.error("give --config (or --resume)")
            config = load_config(args.config, args.overrides)
        if args.device:
            config.device = args.device
        summary = train(config, resume, show_progress=not args.no_progress)
    except (TrainingError, ValueError, FileNotFoundError, datasets.DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if summary:
        print(f"done: {summary['position']['epoch']} epoch(s), {summary['steps_this_run']} "
              f"step(s) in {summary['seconds']} s; outputs in {config.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
