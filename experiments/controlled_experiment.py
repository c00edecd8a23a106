"""Controlled experiment: does TDFusion's learned loss beat the fixed w = 1/2 loss?

    PYTHONPATH=. OMP_NUM_THREADS=1 python experiments/controlled_experiment.py \
        [--seeds 0 1 2] [--epochs 6] [--out results/controlled_experiment]

Why generated scenes: the procedural generator (``tdfusion_ros.scenes``) is a task whose answer
is known. At night people and cars are hot in the infrared and often camouflaged in the visible
image, while road markings and signs exist only in the visible image. If the paper's claim
holds, a loss-generation net G meta-learned for segmentation should put more weight on the
infrared at hot targets (at night) than on the background, and the segmentation network T
trained on F's fused images should score higher than with the fixed loss (ablation I).

Both arms run ``training.train.train`` with the same seeds, data, epochs and number of F/T steps;
the learned arm additionally runs G's meta steps (extra compute, reported). Each trained (F, T)
is scored on held-out generated scenes (another scene seed, half of them night) by mIoU and
per-class IoU, overall, at night and by day; G's mean w_ir is measured per class, next to the
same statistic of G at its random initialisation (the reference for "G learned something").

Outputs in ``--out``: ``results.md`` (table, command, numbers per seed), ``results.json`` and
``weight_maps.png``. Checkpoints go to ``--work`` (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdfusion_ros.checkpoints import load_network  # noqa: E402
from tdfusion_ros.metrics import ConfusionMatrix  # noqa: E402
from tdfusion_ros.networks import FusionNet, LossGenerationNet  # noqa: E402
from tdfusion_ros.scenes import (  # noqa: E402
    SEG_BACKGROUND,
    SEG_CAR,
    SEG_MARKING,
    SEG_PERSON,
    SEG_ROAD,
    SEG_SIGN,
    SEGMENTATION_CLASSES,
)
from training.config import TrainConfig  # noqa: E402
from training.datasets import GeneratedScenes  # noqa: E402
from training.task_networks import SegmentationTask  # noqa: E402

METHODS = {"learned": "none", "fixed": "I"}  # arm -> TrainConfig ablation
TITLES = {"learned": "learned loss (G, TDFusion)", "fixed": "fixed w = 1/2 (ablation I)"}
CONDITIONS = ("all", "night", "day")
#: Pixel groups for G's w_ir: hot targets, what only the visible shows, the rest.
REGIONS = {
    "targets": (SEG_PERSON, SEG_CAR),
    "background": (SEG_BACKGROUND,),
    "road": (SEG_ROAD,),
    "marking_sign": (SEG_MARKING, SEG_SIGN),
}
TEST_SEED = 10_000  # scene seed of the held-out set (training uses --train-seed)


# ----------------------------------------------------------------------------- one run


def run_config(args: argparse.Namespace, seed: int, method: str) -> TrainConfig:
    """The training configuration of one arm; the arms differ only in ``ablation``."""
    size = [args.height, args.width]
    return TrainConfig(
        out_dir=str(Path(args.work) / f"{method}_seed{seed}"), seed=seed, device="cpu",
        task="segmentation",
        data={"kind": "scenes", "task_size": size,
              "options": {"count": args.train_scenes, "seed": args.train_seed,
                          "height": args.height, "width": args.width, "night_fraction": 0.5}},
        epochs=args.epochs, meta_samples=args.meta_samples, batch_size=args.batch_size,
        crop_size=min(args.crop, args.height, args.width), lr=args.lr,
        loss_net_lr=args.g_lr, checkpoint_every=10**6, log_every=10**6, image_every=10**6,
        ablation=METHODS[method],
        # the settings this experiment was run with, before the official-code defaults
        meta_steps_per_epoch=None, swap_augment=False, outer_step="adam", lr_step_epochs=0,
    )


def initial_loss_net(seed: int) -> LossGenerationNet:
    """G as ``train`` initialises it (seed, then F, then G): the 'nothing learned' reference."""
    torch.manual_seed(seed)
    FusionNet()
    return LossGenerationNet().eval()


def held_out(args: argparse.Namespace) -> GeneratedScenes:
    return GeneratedScenes(args.test_scenes, "segmentation", seed=TEST_SEED,
                           height=args.height, width=args.width, night_fraction=0.5)


def _planes(sample) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(sample.ir_y)[None, None], torch.from_numpy(sample.vis_y)[None, None])


def _ring(mask: np.ndarray) -> np.ndarray:
    """Pixels just around the targets: the surround a detector must tell them from."""
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
    return grown & ~mask


class WeightStats:
    """Sums of w_ir per class and condition, so means pool pixels over the whole set."""

    def __init__(self) -> None:
        n = len(SEGMENTATION_CLASSES)
        self.sums = {c: np.zeros(n) for c in CONDITIONS}
        self.counts = {c: np.zeros(n) for c in CONDITIONS}

    def add(self, w_ir: np.ndarray, label: np.ndarray, night: bool) -> None:
        n = len(SEGMENTATION_CLASSES)
        s = np.bincount(label.ravel(), weights=w_ir.ravel(), minlength=n)
        k = np.bincount(label.ravel(), minlength=n)
        for cond in ("all", "night" if night else "day"):
            self.sums[cond] += s
            self.counts[cond] += k

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for cond in CONDITIONS:
            row = {}
            for name, ids in REGIONS.items():
                k = self.counts[cond][list(ids)].sum()
                row[name] = float(self.sums[cond][list(ids)].sum() / k) if k else math.nan
            k = self.counts[cond].sum()
            row["image"] = float(self.sums[cond].sum() / k) if k else math.nan
            out[cond] = row
        return out


@torch.no_grad()
def evaluate_run(args: argparse.Namespace, run_dir: Path, seed: int) -> dict[str, Any]:
    """mIoU / per-class IoU of (F, T) on the held-out scenes, and G's w_ir statistics."""
    n = len(SEGMENTATION_CLASSES)
    fusion = load_network(run_dir / "fusion.pt", "fusion")
    task = SegmentationTask(n, (args.height, args.width))
    task.model.load_state_dict(torch.load(run_dir / "task.pt", weights_only=True)["state_dict"])
    task.model.eval()
    g_path = run_dir / "loss_generation.pt"
    nets = {"G": load_network(g_path, "loss_generation")} if g_path.is_file() else {}
    if nets:
        nets["G_init"] = initial_loss_net(seed)
    matrices = {c: ConfusionMatrix(n, ignore_index=None) for c in CONDITIONS}
    weights = {name: WeightStats() for name in nets}
    contrast: dict[str, list[float]] = {"fused": [], "ir": [], "vis": []}
    data = held_out(args)
    for i in range(len(data)):
        sample = data.load(i)
        night = data.names[i].endswith("N")
        ir, vis = _planes(sample)
        fused = fusion(ir, vis)
        pred = task.predict(fused)[0].numpy()
        for cond in ("all", "night" if night else "day"):
            matrices[cond].update(pred, sample.target)
        for name, net in nets.items():
            weights[name].add(net(ir, vis)[0, 0].numpy(), sample.target, night)
        targets = np.isin(sample.target, REGIONS["targets"])
        ring = _ring(targets)
        if night and targets.any() and ring.any():
            for key, plane in (("fused", fused[0, 0].numpy()), ("ir", sample.ir_y),
                               ("vis", sample.vis_y)):
                contrast[key].append(float(plane[targets].mean() - plane[ring].mean()))
    scores = {c: m.compute() for c, m in matrices.items()}
    return {
        "miou": {c: scores[c]["mIoU"] for c in CONDITIONS},
        "iou": {c: dict(zip(SEGMENTATION_CLASSES, scores[c]["IoU"])) for c in CONDITIONS},
        "w_ir": {name: w.summary() for name, w in weights.items()},
        "night_target_contrast": {k: float(np.mean(v)) if v else math.nan
                                  for k, v in contrast.items()},
    }


def run_job(args: argparse.Namespace, seed: int, method: str) -> dict[str, Any]:
    """Train one arm for one seed (in a worker process), then evaluate it."""
    torch.set_num_threads(args.threads)
    from training.train import train  # heavy imports only in the worker

    config = run_config(args, seed, method)
    run_dir = Path(config.out_dir)
    cached = run_dir / "experiment_run.json"
    if args.reuse and cached.is_file():
        record = json.loads(cached.read_text())
        if record["config"] == config.to_dict():
            return record
    started = time.perf_counter()
    summary = train(config, show_progress=False)
    train_s = time.perf_counter() - started
    n_batches = math.ceil(args.train_scenes / args.batch_size)
    learn_steps = args.epochs * n_batches
    meta_steps = summary["steps_this_run"] - learn_steps
    started = time.perf_counter()
    result = evaluate_run(args, run_dir, seed)
    record = {
        "seed": seed, "method": method, "ablation": config.ablation,
        "config": config.to_dict(),
        "compute": {"train_wall_s": round(train_s, 1), "learn_steps": learn_steps,
                    "meta_steps": meta_steps,
                    "s_per_learn_step": summary["mean_seconds_per_learning_step"],
                    "s_per_meta_step": summary["mean_seconds_per_meta_step"],
                    "eval_wall_s": round(time.perf_counter() - started, 1)},
        **result,
    }
    cached.write_text(json.dumps(record, indent=2))
    return record


# ----------------------------------------------------------------------------- aggregate


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds, nan-aware."""
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if not len(v):
        return math.nan, math.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm: mean and spread over seeds; plus the per-seed paired mIoU difference."""
    out: dict[str, Any] = {}
    for method in METHODS:
        runs = sorted((r for r in records if r["method"] == method), key=lambda r: r["seed"])
        arm: dict[str, Any] = {
            "seeds": [r["seed"] for r in runs],
            "miou": {c: mean_std([r["miou"][c] for r in runs]) for c in CONDITIONS},
            "iou": {c: {k: mean_std([r["iou"][c][k] for r in runs])
                        for k in SEGMENTATION_CLASSES} for c in CONDITIONS},
            "night_target_contrast": {k: mean_std([r["night_target_contrast"][k] for r in runs])
                                      for k in ("fused", "ir", "vis")},
            "compute": {k: mean_std([float(r["compute"][k] or 0.0) for r in runs])
                        for k in runs[0]["compute"]},
        }
        if runs and runs[0]["w_ir"]:
            arm["w_ir"] = {g: {c: {k: mean_std([r["w_ir"][g][c][k] for r in runs])
                                   for k in (*REGIONS, "image")} for c in CONDITIONS}
                           for g in runs[0]["w_ir"]}
        out[method] = arm
    by_seed = {(r["method"], r["seed"]): r for r in records}
    seeds = sorted({r["seed"] for r in records})
    diffs = {c: [by_seed["learned", s]["miou"][c] - by_seed["fixed", s]["miou"][c]
                 for s in seeds if ("learned", s) in by_seed and ("fixed", s) in by_seed]
             for c in CONDITIONS}
    out["paired_miou_difference"] = {c: {"per_seed": d, "mean_std": mean_std(d),
                                         "learned_wins": sum(x > 0 for x in d)}
                                     for c, d in diffs.items()}
    return out


def _pm(pair: tuple[float, float], scale: float = 100.0, digits: int = 1) -> str:
    mean, std = pair
    if math.isnan(mean):
        return "n/a"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown(args: argparse.Namespace, agg: dict[str, Any], records: list[dict[str, Any]],
             command: str, wall_s: float) -> str:
    """The results table, the command, and the per-seed numbers behind it."""
    lines = ["# Controlled experiment: learned loss (G) vs fixed w = 1/2", "",
             "Command (from the repository root):", "", "```", command, "```", "",
             f"Setup: generated scenes {args.height}x{args.width}, {args.train_scenes} training "
             f"scenes (scene seed {args.train_seed}), {args.test_scenes} held-out scenes (scene "
             f"seed {TEST_SEED}; half night), {args.epochs} epochs, batch {args.batch_size}, "
             f"M = {args.meta_samples}, lr(F, T) = {args.lr:g}, lr(G) = {args.g_lr:g}, "
             f"eta = lr(F), crop {min(args.crop, args.height, args.width)}, seeds "
             f"{' '.join(map(str, args.seeds))}, CPU, {args.workers} run(s) in parallel with "
             f"{args.threads} thread(s) each. Total wall clock {wall_s / 60:.1f} min.", "",
             "## Segmentation on held-out scenes (IoU in %, mean ± std over seeds)", ""]
    cols = ["mIoU", "mIoU night", "mIoU day", *SEGMENTATION_CLASSES,
            "person night", "car night"]
    lines += ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for method in METHODS:
        a = agg[method]
        cells = [_pm(a["miou"][c]) for c in CONDITIONS]
        cells += [_pm(a["iou"]["all"][k]) for k in SEGMENTATION_CLASSES]
        cells += [_pm(a["iou"]["night"][k]) for k in ("person", "car")]
        lines.append(f"| {TITLES[method]} | " + " | ".join(cells) + " |")
    paired = agg["paired_miou_difference"]
    lines += ["", "Paired difference learned − fixed (same seed), mIoU points: " + "; ".join(
        f"{c}: {_pm(paired[c]['mean_std'], digits=2)} (learned better in "
        f"{paired[c]['learned_wins']}/{len(paired[c]['per_seed'])} seeds)" for c in CONDITIONS),
        ""]
    if "w_ir" in agg["learned"]:
        lines += ["## Mean w_ir that G gives each region (held-out scenes, mean ± std over "
                  "seeds)", "",
                  "w_vis = 1 − w_ir. 'G at init' is the same G before any meta step (same seed),"
                  " the reference for what G learned.", "",
                  "| G | condition | targets (person, car) | background | road | "
                  "marking + sign | whole image | targets − background |",
                  "|---|---|---|---|---|---|---|---|"]
        for g, title in (("G", "learned"), ("G_init", "at init")):
            for c in CONDITIONS:
                w = agg["learned"]["w_ir"][g][c]
                diff = [r["w_ir"][g][c]["targets"] - r["w_ir"][g][c]["background"]
                        for r in records if r["method"] == "learned"]
                cells = [_pm(w[k], 1.0, 3) for k in (*REGIONS, "image")]
                lines.append(f"| {title} | {c} | " + " | ".join(cells)
                             + f" | {_pm(mean_std(diff), 1.0, 3)} |")
        lines.append("")
    lines += ["## Night: target contrast against its 3-pixel surround (grey levels 0..1)", "",
              "| method | fused | infrared | visible |", "|---|---|---|---|"]
    for method in METHODS:
        c = agg[method]["night_target_contrast"]
        lines.append(f"| {TITLES[method]} | " + " | ".join(
            _pm(c[k], 1.0, 3) for k in ("fused", "ir", "vis")) + " |")
    lines += ["", "## Compute per run (mean over seeds; wall clock on a loaded 2-core CPU)", "",
              "| method | F/T steps | G meta steps | s / F-T step | s / meta step | "
              "training wall s |", "|---|---|---|---|---|---|"]
    ratio = agg["learned"]["compute"]["s_per_meta_step"][0] / max(
        agg["learned"]["compute"]["s_per_learn_step"][0], 1e-9)
    for method in METHODS:
        k = agg[method]["compute"]
        meta = f"{k['s_per_meta_step'][0]:.2f}" if k["meta_steps"][0] else "–"
        lines.append(f"| {TITLES[method]} | {k['learn_steps'][0]:.0f} | "
                     f"{k['meta_steps'][0]:.0f} | {k['s_per_learn_step'][0]:.2f} | "
                     f"{meta} | {k['train_wall_s'][0]:.0f} |")
    lines += ["", "An F/T step is the same computation in both arms, so their seconds per step "
              "differ only by the machine's load when each run ran. In the learned arm's own "
              f"runs a meta step cost {ratio:.1f} F/T steps: G's meta steps are that much extra "
              "compute.", "", "## Per seed", "", "| method | seed | mIoU | mIoU night | mIoU day | "
              "w_ir targets night | w_ir background night |", "|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["method"], r["seed"])):
        w = r["w_ir"].get("G", {}).get("night", {})
        lines.append(f"| {r['method']} | {r['seed']} | " + " | ".join(
            f"{r['miou'][c] * 100:.1f}" for c in CONDITIONS) + " | "
            + " | ".join(f"{w[k]:.3f}" if w else "–" for k in ("targets", "background")) + " |")
    lines += ["", "Figure: `weight_maps.png` (held-out scenes, seed "
              f"{args.seeds[0]}): infrared, visible, G's w_ir and w_vis, F's fused image with "
              "the learned loss, and F's fused image with the fixed loss.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figure


@torch.no_grad()
def weight_maps_figure(args: argparse.Namespace, seed: int, path: Path) -> None:
    """Rows of held-out scenes (two night, one day) as in the paper's Fig. 5, 3x enlarged."""
    from training.evaluate import MAP_HEADER, weights_figure

    work = Path(args.work)
    g = load_network(work / f"learned_seed{seed}" / "loss_generation.pt", "loss_generation")
    f_learned = load_network(work / f"learned_seed{seed}" / "fusion.pt", "fusion")
    f_fixed = load_network(work / f"fixed_seed{seed}" / "fusion.pt", "fusion")
    data = held_out(args)
    ranked = {True: [], False: []}
    for i in range(len(data)):
        label = data.load(i).target
        ranked[data.names[i].endswith("N")].append(
            (int(np.isin(label, REGIONS["targets"]).sum()), i))
    picks = [i for _, i in sorted(ranked[True], reverse=True)[:2]]
    picks += [i for _, i in sorted(ranked[False], reverse=True)[:1]]
    size = (args.width * 3, args.height * 3)

    def up(plane: np.ndarray, nearest: bool = False) -> np.ndarray:
        mode = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(plane, np.float32), size, interpolation=mode)

    rows = []
    for i in picks:
        sample = data.load(i)
        ir, vis = _planes(sample)
        w = g(ir, vis)[0].numpy()
        row = weights_figure(up(sample.ir_y), up(sample.vis_y),
                             np.stack([up(w[0], True), up(w[1], True)]),
                             up(f_learned(ir, vis)[0, 0].numpy()))
        fixed = np.clip(up(f_fixed(ir, vis)[0, 0].numpy()) * 255 + 0.5, 0, 255).astype(np.uint8)
        extra = np.full((row.shape[0], size[0] + 4, 3), 255, np.uint8)
        extra[MAP_HEADER:, 4:] = cv2.cvtColor(fixed, cv2.COLOR_GRAY2BGR)
        when = "night" if data.names[i].endswith("N") else "day"
        cv2.putText(extra, f"fused, fixed w=1/2   [{data.names[i]}, {when}]", (6, MAP_HEADER - 6),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.hstack([row, extra]))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))
    cv2.imwrite(str(path), np.vstack(rows[:-1]), [cv2.IMWRITE_PNG_COMPRESSION, 9])


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--out", default="results/controlled_experiment")
    p.add_argument("--work", default="outputs/controlled_experiment",
                   help="checkpoints and per-run records (not committed)")
    p.add_argument("--height", type=int, default=64)
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--train-scenes", type=int, default=48)
    p.add_argument("--train-seed", type=int, default=0, help="scene seed of the training set")
    p.add_argument("--test-scenes", type=int, default=48)
    p.add_argument("--meta-samples", type=int, default=8, help="M per epoch")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam lr of F and T (and eta)")
    p.add_argument("--g-lr", type=float, default=1e-3, help="Adam lr of G")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel (processes)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--reuse", action="store_true",
                   help="keep finished runs of the same configuration found in --work")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/controlled_experiment.py"
    command += "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # Longest jobs first (the learned arm also runs meta steps) so the workers finish together.
    jobs = [(s, m) for m in ("learned", "fixed") for s in args.seeds]
    records = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_job, args, s, m): (s, m) for s, m in jobs}
        for future, (s, m) in futures.items():
            record = future.result()
            records.append(record)
            print(f"{m} seed {s}: mIoU {record['miou']['all'] * 100:.1f} "
                  f"(night {record['miou']['night'] * 100:.1f}), "
                  f"train {record['compute']['train_wall_s']:.0f} s", flush=True)
    agg = aggregate(records)
    weight_maps_figure(args, args.seeds[0], out / "weight_maps.png")
    wall = time.perf_counter() - started
    (out / "results.json").write_text(json.dumps(
        {"command": command, "wall_s": round(wall, 1), "arguments": vars(args),
         "summary": agg, "runs": records}, indent=2, allow_nan=True))
    (out / "results.md").write_text(markdown(args, agg, records, command, wall))
    print(f"done in {wall / 60:.1f} min; see {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
