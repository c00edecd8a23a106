"""Controlled experiment: does TDFusion's learned loss beat the fixed w = 1/2 loss when only
per-pixel selection of the source can help?

    PYTHONPATH=. .venv/bin/python experiments/controlled_experiment.py

One command runs everything, resumably (finished jobs are kept in ``--work`` and skipped):
the warm start, the pilot (arms A, B, C, infrared only, visible only), the pre-registered
calibration of the scene amplitudes if the pilot is not valid, the six seeds of arms A, B, C,
and the verdict. The pre-registration is ``results/controlled_experiment/preregistration.md``;
``results.md`` repeats it above the results.

Scenes: ``experiments/headroom_scenes.py``. Arms, paired within each seed (same warm start,
same batch order, same evaluator initialisation):

* A, fixed w = 1/2 (ablation I);
* B, TDFusion: G meta-learned by Algorithm 1 with the official-code settings (max-normalised
  outer step, every batch doubled with its infrared/visible-swapped copy in the meta step and
  in the F/T phase, closed-form meta-gradient), G's step size scaled to this short budget;
* C, oracle weight map: the informative modality per object, 1/2 on the background.

Evaluation by the paper's protocol: each arm's F is frozen, fuses the training scenes, and a
fresh SegFormer-B0 learns segmentation from them; mIoU over the four object classes on held-out
scenes.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from scipy import stats

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.headroom_scenes import (  # noqa: E402
    CLASSES,
    INFORMATIVE_IR,
    INFORMATIVE_VIS,
    OBJECT_CLASSES,
    Amplitudes,
    SceneSet,
    make_scenes,
    oracle_weights,
)
from tdfusion_ros.metrics.segmentation import ConfusionMatrix  # noqa: E402
from tdfusion_ros.nets.checkpoints import load_network  # noqa: E402
from tdfusion_ros.nets.networks import FusionNet, LossGenerationNet  # noqa: E402
from training.meta_learning import (  # noqa: E402
    Batch,
    MetaConfig,
    Networks,
    learning_step,
    meta_gradient,
    outer_update,
    swap_doubled,
)
from training.task_networks import SegmentationTask  # noqa: E402

OFFICIAL_F = (Path(__file__).resolve().parents[2]
              / "shared/data/refusion_official/models/ReFusion_IVIF.pth")
TITLES = {"A": "A: fixed w = 1/2", "B": "B: TDFusion (learned G)", "C": "C: oracle weights",
          "ir": "infrared only", "vis": "visible only"}
TRAINED_ARMS = ("A", "B", "C")
#: Pre-registered calibration ladder (at most two steps), chosen by the pilot's failure mode.
HIDE_MORE = "paint range x1.5 (the average still reveals the class)"
SHOW_MORE = "class level x1.5 (the oracle cannot read the class)"


@dataclass(frozen=True)
class Settings:
    """Everything that defines the experiment; its hash names the cached jobs."""

    size: int = 64
    train_scenes: int = 192
    test_scenes: int = 128
    train_seed: int = 0
    test_seed: int = 10_000
    amplitudes: Amplitudes = field(default_factory=Amplitudes)
    warm_f_epochs: int = 1  # F from the official ReFusion weights, fine-tuned with w = 1/2
    warm_t_epochs: int = 15  # T on the warm F's fused images
    epochs: int = 2  # Algorithm 1 epochs per arm
    batch: int = 4  # F/T batch before the swap doubles it
    meta_steps: int = 64  # per epoch; each: 1 meta-train image, meta_test_batch test images
    meta_test_batch: int = 2
    lr: float = 1e-3  # Adam for F and T; also eta of the inner update
    g_lr: float = 1e-2  # max-normalised outer step of G
    eval_epochs: int = 40
    eval_batch: int = 16
    eval_lr: float = 1e-3

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


# ----------------------------------------------------------------------------- data


def scenes(s: Settings, held_out: bool) -> SceneSet:
    if held_out:
        return make_scenes(s.test_scenes, s.test_seed, s.size, s.amplitudes)
    return make_scenes(s.train_scenes, s.train_seed, s.size, s.amplitudes)


def batch_of(data: SceneSet, idx: np.ndarray) -> Batch:
    ir = torch.from_numpy(data.ir[idx])[:, None]
    vis = torch.from_numpy(data.vis[idx])[:, None]
    return Batch(ir, vis, ir, vis, torch.from_numpy(data.label[idx]).long())


def doubled_informative(data: SceneSet, idx: np.ndarray) -> np.ndarray:
    """The informative map of ``swap_doubled(batch_of(idx))``: in the copy, ir and vis trade."""
    inf = data.informative[idx]
    swapped = np.where(inf == INFORMATIVE_IR, INFORMATIVE_VIS,
                       np.where(inf == INFORMATIVE_VIS, INFORMATIVE_IR, 0))
    return np.concatenate((inf, swapped))


class OracleWeights(torch.nn.Module):
    """Stands in for G in ``learning_step``: returns the weight map set for the current batch."""

    def __init__(self) -> None:
        super().__init__()
        self.maps: torch.Tensor | None = None

    def forward(self, ir: torch.Tensor, vis: torch.Tensor) -> torch.Tensor:
        assert self.maps is not None and self.maps.shape[0] == ir.shape[0]
        return self.maps


@torch.no_grad()
def fuse_all(fusion: torch.nn.Module | str, data: SceneSet) -> np.ndarray:
    if fusion == "ir":
        return data.ir
    if fusion == "vis":
        return data.vis
    fusion.eval()
    out = [fusion(torch.from_numpy(data.ir[i:i + 32])[:, None],
                  torch.from_numpy(data.vis[i:i + 32])[:, None])[:, 0].numpy()
           for i in range(0, len(data), 32)]
    return np.concatenate(out)


# ----------------------------------------------------------------------------- segmentation


def train_segmenter(images: np.ndarray, labels: np.ndarray, epochs: int, batch: int, lr: float,
                    init_seed: int, order_seed: int, task: SegmentationTask | None = None
                    ) -> SegmentationTask:
    """SegFormer-B0 on (fused image, label) pairs; same seeds give the same init and order."""
    if task is None:
        torch.manual_seed(init_seed)
        task = SegmentationTask(len(CLASSES), images.shape[-2:], architecture="segformer_b0")
    opt = torch.optim.Adam(task.model.parameters(), lr)
    rng = np.random.default_rng(order_seed)
    task.model.train()
    for _ in range(epochs):
        order = rng.permutation(len(images))
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            loss = task.loss(torch.from_numpy(images[idx])[:, None],
                             torch.from_numpy(labels[idx]).long())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return task


def score(task: SegmentationTask, images: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    cm = ConfusionMatrix(len(CLASSES), ignore_index=None)
    for i in range(0, len(images), 32):
        pred = task.predict(torch.from_numpy(images[i:i + 32])[:, None]).numpy()
        for p, y in zip(pred, labels[i:i + 32]):
            cm.update(p, y)
    iou = cm.compute()["IoU"]
    return {"miou": float(np.nanmean([iou[c] for c in OBJECT_CLASSES])),  # nan: class absent
            "iou": dict(zip(CLASSES, map(float, iou)))}


# ----------------------------------------------------------------------------- jobs


def job_path(work: Path, s: Settings, name: str) -> Path:
    return work / s.key() / name


def warm_start(s: Settings, work: Path) -> dict[str, Any]:
    """F0: official ReFusion F fine-tuned with w = 1/2 (swap-doubled); T0: SegFormer on F0."""
    out = job_path(work, s, "warm")
    record_path = out / "record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    torch.manual_seed(12345)
    data, test = scenes(s, False), scenes(s, True)
    fusion = load_network(OFFICIAL_F, "fusion")
    task = SegmentationTask(len(CLASSES), (s.size, s.size), architecture="segformer_b0")
    nets = Networks(fusion, None, task)
    config = MetaConfig(inner_lr=s.lr)
    f_opt = torch.optim.Adam(fusion.parameters(), s.lr)
    t_opt = torch.optim.Adam(task.model.parameters(), s.lr)
    rng = np.random.default_rng(12345)
    fusion.train()
    for _ in range(s.warm_f_epochs):
        order = rng.permutation(len(data))
        for i in range(0, len(order), s.batch):
            learning_step(nets, swap_doubled(batch_of(data, order[i:i + s.batch])), config,
                          f_opt, t_opt)
    task = train_segmenter(fuse_all(fusion, data), data.label, s.warm_t_epochs, s.eval_batch,
                           s.lr, 0, 12345, task)
    torch.save(fusion.state_dict(), out / "fusion.pt")
    torch.save(task.model.state_dict(), out / "task.pt")
    record = {"wall_s": round(time.perf_counter() - started, 1),
              "t0_heldout": score(task, fuse_all(fusion, test), test.label)}
    record_path.write_text(json.dumps(record, indent=2))
    return record


def g_statistics(g: torch.nn.Module, test: SceneSet) -> dict[str, float]:
    """The pre-registered mechanism measures of G on the held-out scenes (original order)."""
    with torch.no_grad():
        w = torch.cat([g(torch.from_numpy(test.ir[i:i + 32])[:, None],
                         torch.from_numpy(test.vis[i:i + 32])[:, None])[:, 0]
                       for i in range(0, len(test), 32)]).numpy()
    on_ir, on_vis = test.informative == INFORMATIVE_IR, test.informative == INFORMATIVE_VIS
    objects = on_ir | on_vis
    rho = stats.spearmanr(w[objects], (test.ir - test.vis)[objects]).statistic
    return {"w_ir_ir_informative": float(w[on_ir].mean()),
            "w_ir_vis_informative": float(w[on_vis].mean()),
            "w_ir_background": float(w[~objects].mean()),
            "contrast": float(w[on_ir].mean() - w[on_vis].mean()),
            "spearman_w_ir_vs_ir_minus_vis": float(rho)}


def run_arm(s: Settings, work: Path, seed: int, arm: str) -> dict[str, Any]:
    """Train one arm's F from the warm start (Algorithm 1 for B), then the paper's evaluation."""
    out = job_path(work, s, f"{arm}_seed{seed}")
    record_path = out / "record.json"
    if record_path.is_file():
        return json.loads(record_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    started = time.perf_counter()
    warm = job_path(work, s, "warm")
    data, test = scenes(s, False), scenes(s, True)
    record: dict[str, Any] = {"arm": arm, "seed": seed}
    fusion: torch.nn.Module | str = arm
    if arm in TRAINED_ARMS:
        fusion = FusionNet()
        fusion.load_state_dict(torch.load(warm / "fusion.pt", weights_only=True))
        task = SegmentationTask(len(CLASSES), (s.size, s.size), architecture="segformer_b0")
        task.model.load_state_dict(torch.load(warm / "task.pt", weights_only=True))
        torch.manual_seed(seed)
        g_init = LossGenerationNet()
        loss_net = {"A": None, "B": g_init, "C": OracleWeights()}[arm]
        if arm == "B":
            g_start = copy.deepcopy(g_init)
        record["meta"] = train_fusion(s, seed, arm, Networks(fusion, loss_net, task), data)
        if arm == "B":
            record["g"] = g_statistics(loss_net, test)
            record["g_init"] = g_statistics(g_start, test)
            torch.save(loss_net.state_dict(), out / "loss_generation.pt")
        torch.save(fusion.state_dict(), out / "fusion.pt")
    record["train_s"] = round(time.perf_counter() - started, 1)
    segmenter = train_segmenter(fuse_all(fusion, data), data.label, s.eval_epochs, s.eval_batch,
                                s.eval_lr, 5000 + seed, 7000 + seed)
    record.update(score(segmenter, fuse_all(fusion, test), test.label))
    record["wall_s"] = round(time.perf_counter() - started, 1)
    record_path.write_text(json.dumps(record, indent=2))
    return record


def train_fusion(s: Settings, seed: int, arm: str, nets: Networks, data: SceneSet
                 ) -> dict[str, Any]:
    """Algorithm 1 epochs: (B only) meta steps, then the F/T phase over every batch.

    Every arm draws the same random numbers, so batch order is identical within a seed.
    Returns B's per-step meta-gradient contrast: the descent direction of G's w_ir logit,
    -(dL/dw_ir - dL/dw_vis), averaged on infrared-informative minus visible-informative object
    pixels of the meta-train batch (positive: the step favours the informative source).
    """
    config = MetaConfig(inner_lr=s.lr, outer_step="max_normalised")
    f_opt = torch.optim.Adam(nets.fusion.parameters(), s.lr)
    t_opt = torch.optim.Adam(nets.task.model.parameters(), s.lr)
    g_opt = torch.optim.SGD(nets.loss.parameters(), s.g_lr) if arm == "B" else None
    rng = np.random.default_rng(seed)
    contrasts: list[float] = []
    outer: list[float] = []
    nets.fusion.train()
    for _ in range(s.epochs):
        order = rng.permutation(len(data))
        meta = rng.permutation(len(data))[: s.meta_steps * (1 + s.meta_test_batch)]
        if arm == "B":
            for k in range(s.meta_steps):
                train_idx = meta[k:k + 1]
                start = s.meta_steps + k * s.meta_test_batch
                test_idx = meta[start:start + s.meta_test_batch]
                result = meta_gradient(nets, swap_doubled(batch_of(data, train_idx)),
                                       swap_doubled(batch_of(data, test_idx)), config)
                outer_update(nets.loss, result.grads, g_opt, config.outer_step)
                push = -(result.weight_grad[:, 0] - result.weight_grad[:, 1]).numpy()
                inf = doubled_informative(data, train_idx)
                if (inf == INFORMATIVE_IR).any():
                    contrasts.append(float(push[inf == INFORMATIVE_IR].mean()
                                           - push[inf == INFORMATIVE_VIS].mean()))
                outer.append(float(result.losses.outer))
        for i in range(0, len(order), s.batch):
            idx = order[i:i + s.batch]
            if arm == "C":
                w = oracle_weights(doubled_informative(data, idx))
                nets.loss.maps = torch.from_numpy(w)
            learning_step(nets, swap_doubled(batch_of(data, idx)), config, f_opt, t_opt)
    if arm != "B":
        return {}
    c = np.asarray(contrasts)
    half = len(c) // 2
    return {"contrast_mean": float(c.mean()), "contrast_positive_fraction": float((c > 0).mean()),
            "contrast_t": float(c.mean() / (c.std(ddof=1) / math.sqrt(len(c)))),
            "contrast_mean_first_half": float(c[:half].mean()),
            "contrast_mean_second_half": float(c[half:].mean()),
            "outer_loss_first_epoch": float(np.mean(outer[: s.meta_steps])),
            "outer_loss_last_epoch": float(np.mean(outer[-s.meta_steps:]))}


# ----------------------------------------------------------------------------- analysis


def pilot_check(records: dict[str, dict[str, Any]]) -> tuple[bool, str | None]:
    """Validity (oracle - fixed >= 10 mIoU points) and, if not, the pre-registered remedy."""
    gap = 100 * (records["C"]["miou"] - records["A"]["miou"])
    if gap >= 10:
        return True, None
    return False, SHOW_MORE if 100 * records["C"]["miou"] < 60 else HIDE_MORE


def calibrated(s: Settings, remedy: str) -> Settings:
    a = s.amplitudes
    if remedy == HIDE_MORE:
        a = replace(a, paint_max=a.paint_min + 1.5 * (a.paint_max - a.paint_min))
    else:
        a = replace(a, class_level=1.5 * a.class_level)
    return replace(s, amplitudes=a)


def verdict(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The pre-registered decision from the six seeds' paired records."""
    by = {(r["arm"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    gain = np.array([100 * (by["B", k]["miou"] - by["A", k]["miou"]) for k in seeds])
    n = len(gain)
    mean, sd = float(gain.mean()), float(gain.std(ddof=1))
    test = stats.ttest_rel([by["B", k]["miou"] for k in seeds],
                           [by["A", k]["miou"] for k in seeds], alternative="greater")
    upper = mean + float(stats.t.ppf(0.95, n - 1)) * sd / math.sqrt(n)
    contrast = [by["B", k]["g"]["contrast"] for k in seeds]
    rho = [by["B", k]["g"]["spearman_w_ir_vs_ir_minus_vis"] for k in seeds]
    wins = int((gain > 0).sum())
    need = n - 1
    mechanism = (sum(c >= 0.2 for c in contrast) >= need
                 and sum(abs(r) <= 0.2 for r in rho) >= need)
    supported = (mean >= 3 and test.pvalue < 0.05 and wins >= need and mechanism)
    refuted = upper < 3
    return {"seeds": seeds, "gain_points": gain.tolist(), "gain_mean": mean, "gain_sd": sd,
            "p_one_sided": float(test.pvalue), "gain_upper_95": upper, "b_wins": wins,
            "g_contrast": contrast, "g_spearman": rho, "mechanism_holds": bool(mechanism),
            "oracle_gain_points": [100 * (by["C", k]["miou"] - by["A", k]["miou"]) for k in seeds],
            "decision": "supported" if supported else "refuted" if refuted else "inconclusive"}


# ----------------------------------------------------------------------------- figure


@torch.no_grad()
def weight_maps_figure(s: Settings, work: Path, seed: int, path: Path) -> None:
    """Held-out scenes: sources, G's w_ir (learned and at init), the oracle's, fused A / B / C."""
    test = scenes(s, True)
    fused = {}
    for arm in TRAINED_ARMS:
        f = FusionNet()
        f_path = job_path(work, s, f"{arm}_seed{seed}") / "fusion.pt"
        f.load_state_dict(torch.load(f_path, weights_only=True))
        fused[arm] = fuse_all(f, test)
    g = LossGenerationNet()
    g_path = job_path(work, s, f"B_seed{seed}") / "loss_generation.pt"
    g.load_state_dict(torch.load(g_path, weights_only=True))
    torch.manual_seed(seed)
    g0 = LossGenerationNet()
    idx = np.arange(4)
    ir = torch.from_numpy(test.ir[idx])[:, None]
    vis = torch.from_numpy(test.vis[idx])[:, None]
    w, w0 = g(ir, vis)[:, 0].numpy(), g0(ir, vis)[:, 0].numpy()
    oracle = oracle_weights(test.informative[idx])[:, 0]
    titles = ["infrared", "visible", "w_ir G", "w_ir G init", "w_ir oracle", "fused A", "fused B",
              "fused C", "label"]
    scale, pad = 3, 4
    rows = []
    for j in range(len(idx)):
        label = test.label[j].astype(np.float32) / (len(CLASSES) - 1)
        panels = [test.ir[j], test.vis[j], w[j], w0[j], oracle[j], fused["A"][j],
                  fused["B"][j], fused["C"][j], label]
        tiles = [cv2.resize(np.clip(p, 0, 1), None, fx=scale, fy=scale,
                            interpolation=cv2.INTER_NEAREST) for p in panels]
        rows.append(np.hstack([np.pad(t, ((pad, pad), (pad, pad)), constant_values=1)
                               for t in tiles]))
    grid = (np.vstack(rows) * 255).astype(np.uint8)
    header = np.full((18, grid.shape[1]), 255, np.uint8)
    tile_w = s.size * scale + 2 * pad
    for k, t in enumerate(titles):
        cv2.putText(header, t, (k * tile_w + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, 0, 1,
                    cv2.LINE_AA)
    cv2.imwrite(str(path), np.vstack((header, grid)), [cv2.IMWRITE_PNG_COMPRESSION, 9])


# ----------------------------------------------------------------------------- report


def _row(cells: list[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(prereg: str, command: str, history: list[dict[str, Any]], s: Settings,
           main_runs: list[dict[str, Any]], v: dict[str, Any], warm: dict[str, Any],
           wall_s: float) -> str:
    lines = [prereg.rstrip(), "", "---", "", "# Results", "", "Command (from the repository root;"
             " one command runs the pilot, any calibration, the six seeds and this report):", "",
             "```", command, "```", "",
             f"Wall clock {wall_s / 60:.1f} min on 2 CPU cores (two 1-thread jobs at a time; "
             "jobs already finished in `--work` are reused, so a resumed run reports only its "
             "own time). Per-job times are below.", "",
             f"Warm start: T0 on F0's fused held-out scenes, mIoU "
             f"{100 * warm['t0_heldout']['miou']:.1f} over the object classes "
             f"(background IoU {100 * warm['t0_heldout']['iou']['background']:.1f}); "
             f"{warm['wall_s']:.0f} s.", "", "## Pilot", ""]
    for step in history:
        a = step["settings"]["amplitudes"]
        lines += [f"Amplitudes: class level {a['class_level']}, paint {a['paint_min']}-"
                  f"{a['paint_max']}, blur {a['class_blur']}, noise {a['noise']}.", "",
                  _row(["arm", "mIoU (objects)", *CLASSES[1:], "job s"]),
                  _row(["---"] * (3 + len(CLASSES) - 1))]
        for arm, r in step["pilot"].items():
            lines.append(_row([TITLES[arm], f"{100 * r['miou']:.1f}",
                               *(f"{100 * r['iou'][c]:.1f}" for c in CLASSES[1:]),
                               f"{r['wall_s']:.0f}"]))
        g, meta = step["pilot"]["B"]["g"], step["pilot"]["B"]["meta"]
        lines += ["", f"G after the pilot (arm B): w_ir on infrared- / visible-informative "
                  f"objects / background {g['w_ir_ir_informative']:.2f} / "
                  f"{g['w_ir_vis_informative']:.2f} / {g['w_ir_background']:.2f} (contrast "
                  f"{g['contrast']:+.3f}; at init {step['pilot']['B']['g_init']['contrast']:+.3f})"
                  f"; Spearman ρ(w_ir, ir − vis) on objects "
                  f"{g['spearman_w_ir_vs_ir_minus_vis']:+.2f}"
                  f"; meta-gradient contrast positive in "
                  f"{100 * meta['contrast_positive_fraction']:.0f} % of steps (t = "
                  f"{meta['contrast_t']:+.1f}).",
                  "", f"Oracle − fixed: {step['oracle_gap']:+.1f} points → "
                  + ("valid." if step["valid"] else f"not valid; remedy: {step['remedy']}."), ""]
    if not main_runs:
        job_s = sum(r["wall_s"] for step in history for r in step["pilot"].values())
        lines += ["The pilot stayed invalid after two calibrations: no main run (pre-registered).",
                  f"The pilots took {job_s / 60:.0f} min of 1-thread job time (two jobs at a "
                  f"time, so about {job_s / 120:.0f} min of wall clock, plus the warm starts).",
                  "", "Figure `weight_maps.png` (the last pilot, held-out scenes): infrared, "
                  "visible, G's w_ir learned and at init, the oracle's w_ir, the fused images of "
                  "A, B and C, the label (grey levels by class).", ""]
        return "\n".join(lines)
    by = {(r["arm"], r["seed"]): r for r in main_runs}
    lines += ["## Six seeds (mIoU over the four object classes, %)", "",
              _row(["seed", "A fixed", "B TDFusion", "C oracle", "B − A", "C − A",
                    "G contrast", "Spearman ρ", "meta-grad contrast (mean, % > 0)"]),
              _row(["---"] * 9)]
    for k in v["seeds"]:
        a, b, c = by["A", k], by["B", k], by["C", k]
        m = b["meta"]
        lines.append(_row([k, f"{100 * a['miou']:.1f}", f"{100 * b['miou']:.1f}",
                           f"{100 * c['miou']:.1f}", f"{100 * (b['miou'] - a['miou']):+.1f}",
                           f"{100 * (c['miou'] - a['miou']):+.1f}",
                           f"{b['g']['contrast']:+.3f}",
                           f"{b['g']['spearman_w_ir_vs_ir_minus_vis']:+.2f}",
                           f"{m['contrast_mean']:+.2e}, "
                           f"{100 * m['contrast_positive_fraction']:.0f}"]))
    mean = {arm: np.mean([100 * by[arm, k]["miou"] for k in v["seeds"]]) for arm in TRAINED_ARMS}
    sd = {arm: np.std([100 * by[arm, k]["miou"] for k in v["seeds"]], ddof=1)
          for arm in TRAINED_ARMS}
    lines.append(_row(["mean ± sd", *(f"{mean[x]:.1f} ± {sd[x]:.1f}" for x in TRAINED_ARMS),
                       f"{v['gain_mean']:+.1f} ± {v['gain_sd']:.1f}",
                       f"{np.mean(v['oracle_gain_points']):+.1f}", "", "", ""]))
    g_init = [by["B", k]["g_init"] for k in v["seeds"]]
    meta = {key: np.mean([by["B", k]["meta"][key] for k in v["seeds"]])
            for key in by["B", v["seeds"][0]]["meta"]}

    def over_seeds(arm: str, key: str, cls: str | None = None) -> float:
        return float(np.mean([by[arm, k][key] if cls is None else 100 * by[arm, k][key][cls]
                              for k in v["seeds"]]))

    g = [by["B", k]["g"] for k in v["seeds"]]
    lines += ["", "Per-class IoU (mean over seeds, %):", "",
              _row(["arm", *CLASSES]), _row(["---"] * (1 + len(CLASSES)))]
    for arm in TRAINED_ARMS:
        lines.append(_row([TITLES[arm], *(f"{over_seeds(arm, 'iou', c):.1f}" for c in CLASSES)]))
    lines += ["", "## Tests", "",
              f"* Paired gain B − A: {v['gain_mean']:+.2f} ± {v['gain_sd']:.2f} points "
              f"(mean ± sd over {len(v['seeds'])} seeds); B wins {v['b_wins']} of "
              f"{len(v['seeds'])}; one-sided paired t-test p = {v['p_one_sided']:.3g}; upper "
              f"one-sided 95 % bound {v['gain_upper_95']:+.2f} points.",
              f"* G's w_ir, infrared-informative minus visible-informative objects (held-out): "
              f"{np.mean([x['contrast'] for x in g]):+.3f} learned, "
              f"{np.mean([x['contrast'] for x in g_init]):+.3f} at init; ≥ +0.2 in "
              f"{sum(x['contrast'] >= 0.2 for x in g)} of {len(g)} seeds.",
              "* Spearman ρ(w_ir, ir − vis) on object pixels: "
              + ", ".join(f"{x['spearman_w_ir_vs_ir_minus_vis']:+.2f}" for x in g)
              + " (at init: " + ", ".join(f"{x['spearman_w_ir_vs_ir_minus_vis']:+.2f}"
                                           for x in g_init) + f"); |ρ| ≤ 0.2 in "
              f"{sum(abs(x['spearman_w_ir_vs_ir_minus_vis']) <= 0.2 for x in g)} of {len(g)}.",
              f"* Mean w_ir learned / at init: infrared-informative "
              f"{np.mean([x['w_ir_ir_informative'] for x in g]):.3f} / "
              f"{np.mean([x['w_ir_ir_informative'] for x in g_init]):.3f}, visible-informative "
              f"{np.mean([x['w_ir_vis_informative'] for x in g]):.3f} / "
              f"{np.mean([x['w_ir_vis_informative'] for x in g_init]):.3f}, background "
              f"{np.mean([x['w_ir_background'] for x in g]):.3f} / "
              f"{np.mean([x['w_ir_background'] for x in g_init]):.3f}.",
              f"* Meta-gradient contrast per step (B's meta-train batches): mean "
              f"{meta['contrast_mean']:+.2e}, positive in "
              f"{100 * meta['contrast_positive_fraction']:.0f} % of steps; first half "
              f"{meta['contrast_mean_first_half']:+.2e}, second half "
              f"{meta['contrast_mean_second_half']:+.2e}; outer loss, first / last epoch "
              f"{meta['outer_loss_first_epoch']:.3f} / {meta['outer_loss_last_epoch']:.3f}.",
              f"* Mechanism holds (pre-registered): {'yes' if v['mechanism_holds'] else 'no'}.",
              "", f"## Verdict: **{v['decision']}**", "",
              "Figure `weight_maps.png` (seed 0, held-out scenes): infrared, visible, G's w_ir "
              "learned and at init, the oracle's w_ir, the fused images of A, B and C, the label "
              "(grey levels by class).", "",
              "## Compute (s per job, 1 thread)", "",
              _row(["arm", "train", "whole job (train + evaluation)"]), _row(["---"] * 3)]
    for arm in TRAINED_ARMS:
        lines.append(_row([TITLES[arm], f"{over_seeds(arm, 'train_s'):.0f}",
                           f"{over_seeds(arm, 'wall_s'):.0f}"]))
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def run_jobs(pool: ProcessPoolExecutor, s: Settings, work: Path, jobs: list[tuple[int, str]]
             ) -> list[dict[str, Any]]:
    futures = [pool.submit(run_arm, s, work, seed, arm) for seed, arm in jobs]
    records = []
    for (seed, arm), fut in zip(jobs, futures):
        r = fut.result()
        print(f"  {arm} seed {seed}: mIoU {100 * r['miou']:.1f} ({r['wall_s']:.0f} s)", flush=True)
        records.append(r)
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    p.add_argument("--pilot-seed", type=int, default=100)
    p.add_argument("--out", default="results/controlled_experiment")
    p.add_argument("--work", default="outputs/controlled_experiment",
                   help="checkpoints and per-job records (not committed); reused when resuming")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--quick", action="store_true",
                   help="a tiny configuration that runs in a minute (for the test suite)")
    args = p.parse_args(argv)
    command = "PYTHONPATH=. .venv/bin/python experiments/controlled_experiment.py"
    command += "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    prereg = (Path(__file__).resolve().parents[1] / "results/controlled_experiment"
              / "preregistration.md").read_text()
    s = Settings()
    if args.quick:
        s = replace(s, size=32, train_scenes=4, test_scenes=8, warm_f_epochs=1, warm_t_epochs=1,
                    epochs=1, meta_steps=1, eval_epochs=1, batch=4, eval_batch=4)
    started = time.perf_counter()
    history: list[dict[str, Any]] = []
    main_runs: list[dict[str, Any]] = []
    with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn")) as pool:
        for attempt in range(3):  # the pilot, then at most two calibrations
            print(f"settings {s.key()}: warm start", flush=True)
            warm = pool.submit(warm_start, s, work).result()
            print(f"pilot (seed {args.pilot_seed})", flush=True)
            pilot = run_jobs(pool, s, work, [(args.pilot_seed, a) for a in
                                             ("B", "A", "C", "ir", "vis")])
            pilot_by_arm = {r["arm"]: r for r in pilot}
            valid, remedy = pilot_check(pilot_by_arm)
            history.append({"settings": asdict(s), "pilot": pilot_by_arm, "valid": valid,
                            "remedy": remedy, "oracle_gap": 100 * (pilot_by_arm["C"]["miou"]
                                                                   - pilot_by_arm["A"]["miou"])})
            if valid:
                break
            if attempt < 2:
                s = calibrated(s, remedy)
        if history[-1]["valid"]:
            print(f"main run, seeds {args.seeds}", flush=True)
            main_runs = run_jobs(pool, s, work, [(k, a) for k in args.seeds for a in
                                                 ("B", "A", "C")])
    diagnosis = None
    if not main_runs:  # not pre-registered: why no weight map helped (headroom_diagnosis.py)
        from experiments.headroom_diagnosis import diagnose, diagnosis_markdown

        tried = [Settings(**{**h["settings"], "amplitudes": Amplitudes(
            **h["settings"]["amplitudes"])}) for h in history]
        cached = work / f"diagnosis_{'_'.join(t.key() for t in tried)}.json"
        if cached.is_file():
            diagnosis = json.loads(cached.read_text())
        else:
            diagnosis = diagnose(tried, work, args.pilot_seed, count=min(64, s.test_scenes),
                                 steps=20 if args.quick else 400)
            cached.write_text(json.dumps(diagnosis))
        diagnosis["markdown"] = diagnosis_markdown(diagnosis)
    wall = time.perf_counter() - started
    v = verdict(main_runs) if main_runs else {"decision": "not valid"}
    weight_maps_figure(s, work, args.seeds[0] if main_runs else args.pilot_seed,
                       out / "weight_maps.png")
    (out / "results.json").write_text(json.dumps(
        {"command": command, "wall_s": round(wall, 1), "settings": asdict(s),
         "pilot_history": history, "verdict": v, "runs": main_runs, "diagnosis": diagnosis},
        indent=2))
    text = report(prereg, command, history, s, main_runs, v, warm, wall)
    if diagnosis:
        text += "\n" + diagnosis["markdown"]
    (out / "results.md").write_text(text)
    print(f"verdict: {v['decision']}; {wall / 60:.1f} min; see {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
