"""Does task-driven fusion help? The comparison of ``results/task_driven``, in resumable stages.

    python training/task_driven.py [--config config/task_driven.yaml] [--stages a,b] [--list]

Pre-registered in ``results/task_driven/preregistration.md``. Each arm is a fused image of the
same pairs; a frozen-encoder detector and segmenter (``training/task_probes.py``) per arm and
seed are trained on it and scored on the validation pairs; the paired differences between arms
get bootstrap intervals (``training/paired_bootstrap.py``) and the report a verdict per task.

Stages, in order (each skipped when its output exists, so the command can run in pieces and
after a kill; ``--list`` shows which are done):

* ``alg1_<arm>``: Algorithm 1 (``training/train.py``) for the F's: the fixed loss twice (the
  F/T steps of the detection and of the segmentation pairs) and TDFusion against each task;
* ``fused_<arm>``: every pair fused by the arm (``training/fused_dataset.py``);
* ``pilot``: the budgets (epochs, learning rate) on the initial F's fusion, by the
  pre-registered rule;
* ``segmenter_<arm>`` / ``detector_<arm>``: the task networks of every seed;
* ``shipped_networks``: the bundle's own detector and segmenter on every arm's fusion;
* ``fusion_metrics``: Table 1's EN, SF, SCD, VIF, Qabf, SSIM of every arm on the validation pairs;
* ``weight_maps``: what each G learned (Fig. 5), statistics and a figure;
* ``report``: ``results.md`` and ``results.json`` (always rewritten).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.config import load_config  # noqa: E402
from training.task_driven_arms import (  # noqa: E402
    ALGORITHM1,
    ARMS,
    METRIC,
    NETWORK,
    last_quarter_gain,
)

REPO = Path(__file__).resolve().parents[1]

@dataclass
class Recipe:
    run_dir: str = "runs/task_driven"
    results_dir: str = "results/task_driven"
    algorithm1: str = "config/train_default.yaml"
    warm_detector: str = "runs/default/detector_init_s0/task.pt"
    warm_segmenter: str = "runs/default/segmenter_init_s0/task.pt"
    reuse_tdfusion_detection: str | None = None
    official_fusion: str = "shared/data/refusion_official/models/ReFusion_IVIF.pth"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    pilot: dict[str, Any] = field(default_factory=dict)
    segmenter: dict[str, Any] = field(default_factory=dict)
    detector: dict[str, Any] = field(default_factory=dict)
    # the bundle's task networks (models/default), scored on every arm's fusion too
    shipped_tasks: dict[str, str] = field(default_factory=lambda: {
        "detection": "models/default_checkpoints/detector.pt",
        "segmentation": "models/default_checkpoints/segmenter.pt"})
    bootstrap_draws: int = 4000
    smallest_effect: float = 0.01
    threads: int = 2

    @property
    def root(self) -> Path:
        return REPO / self.run_dir

    def network(self, task: str) -> dict[str, Any]:
        return getattr(self, NETWORK[task])


def load_recipe(path: str | Path) -> Recipe:
    raw = yaml.safe_load(Path(path).read_text()) or {}
    unknown = sorted(set(raw) - set(Recipe.__dataclass_fields__))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}")
    return Recipe(**raw)


def _log(message: str) -> None:
    print(f"[task_driven {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _write_json(path: Path, payload: Any) -> None:
    from training.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=1).encode()))


class Stages:
    def __init__(self, recipe: Recipe) -> None:
        self.r = recipe
        options = dict(load_config(REPO / recipe.algorithm1).data.options)
        self.data = {k: options[k] for k in ("roots", "val_names", "scenes_count", "scenes_size")
                     if k in options}
        root = recipe.root
        self.order: list[tuple[str, Callable[[], None], Path]] = []
        for arm in ALGORITHM1:
            self._add(f"alg1_{arm}", lambda a=arm: self._algorithm1(a),
                      root / "alg1" / arm / "fusion.pt")
        for arm in ARMS:
            self._add(f"fused_{arm}", lambda a=arm: self._fuse(a),
                      root / "fused" / arm / "fused.json")
        self._add("pilot", self._pilot, root / "pilot" / "choice.json")
        for task in ("detection", "segmentation"):
            for arm in recipe.network(task)["arms"]:
                self._add(f"{NETWORK[task]}_{arm}", lambda t=task, a=arm: self._probes(t, a),
                          self.probe_dir(task, arm, recipe.seeds[-1]) / "metrics.json")
        self._add("shipped_networks", self._shipped_networks, root / "shipped_networks.json")
        self._add("fusion_metrics", self._fusion_metrics, root / "fusion_metrics.json")
        self._add("weight_maps", self._weight_maps, root / "weight_maps.json")
        self._add("report", self._report, REPO / recipe.results_dir / "results.json")

    def _add(self, name: str, run: Callable[[], None], output: Path) -> None:
        self.order.append((name, run, output))

    def done(self, name: str) -> bool:
        return name != "report" and {n: o for n, _, o in self.order}[name].is_file()

    def probe_dir(self, task: str, arm: str, seed: int) -> Path:
        """A network's folder; an ``epochs`` set in the config (the pre-registered rerun with
        twice the budget when a curve had not flattened) gets folders of its own."""
        epochs = self.r.network(task).get("epochs")
        suffix = f"_e{epochs}" if epochs else ""
        return self.r.root / "probes" / f"{NETWORK[task]}_{arm}{suffix}" / f"s{seed}"

    # --------------------------------------------------------------------------- stages

    def _algorithm1(self, arm: str) -> None:
        from training import train

        out = self.r.root / "alg1" / arm
        reuse = self.r.reuse_tdfusion_detection if arm == "tdfusion_detection" else None
        if reuse and (REPO / reuse / "fusion.pt").is_file():
            out.mkdir(parents=True, exist_ok=True)
            for name in ("summary.json", "loss_generation.pt", "fusion.pt"):  # fusion.pt last
                if (REPO / reuse / name).is_file():
                    shutil.copyfile(REPO / reuse / name, out / name)
            _log(f"alg1_{arm}: the default recipe's run {reuse}, copied")
            return
        task, ablation = ALGORITHM1[arm]
        last = out / "last.pt"
        if last.is_file():
            state = train.load_checkpoint(last)
            config = train.config_from_checkpoint(state["config"])
            _log(f"alg1_{arm}: resuming from {last}")
        else:
            state = None
            overrides = [f"out_dir={out}", f"task={task}", f"ablation={ablation}",
                         f"init_fusion={REPO / load_config(REPO / self.r.algorithm1).init_fusion}"]
            if ablation == "none":  # T warm-started; with the fixed loss F ignores T
                warm = self.r.warm_detector if task == "detection" else self.r.warm_segmenter
                if not (REPO / warm).is_file():
                    raise FileNotFoundError(
                        f"{REPO / warm}: T's warm start is missing; make it with "
                        "python training/default_model.py --stages fused_init,detector_init,"
                        "segmenter_init")
                overrides.append(f"init_task={REPO / warm}")
            config = load_config(REPO / self.r.algorithm1, overrides)
        import torch

        torch.set_num_threads(self.r.threads)
        train.train(config, state, show_progress=False)

    def source(self, arm: str) -> str:
        kind = ARMS[arm][1]
        if kind in ("ir", "vis"):
            return kind
        if kind == "official":
            return str(REPO.parent / self.r.official_fusion)
        return str(self.r.root / "alg1" / arm / "fusion.pt")

    def _fuse(self, arm: str) -> None:
        from training.fused_dataset import write_fused_dataset

        write_fused_dataset(self.r.root / "fused" / arm, self.source(arm),
                            threads=self.r.threads, log=_log, **self.data)

    def settings(self, task: str, epochs: int, lr: float) -> Any:
        from training.task_probes import ProbeSettings

        n = self.r.network(task)
        return ProbeSettings(epochs=epochs, lr=lr, batch=n["batch"],
                             input_size=tuple(n["input_size"]),
                             weight_decay=n["weight_decay"], threads=self.r.threads,
                             val_every=n.get("val_every", 1))

    def _pilot(self) -> None:
        """Budgets by the pre-registered rule: the learning rate with the better final
        validation score; the smallest epoch choice whose last quarter gains < 1 point."""
        from training.fused_dataset import FusedDataset
        from training.task_probes import train_detector_probes, train_segmenter_probes

        p = self.r.pilot
        data = FusedDataset(REPO / p["fused"])
        choice: dict[str, Any] = {"rule": "lr: best final; epochs: smallest of "
                                  f"{p['epoch_choices']} whose last quarter gains < 1 point"}
        for task, trainer in (("segmentation", train_segmenter_probes),
                              ("detection", train_detector_probes)):
            runs = {}
            lrs = p["lrs"][task] if isinstance(p["lrs"], dict) else p["lrs"]
            for lr in lrs:
                out = self.r.root / "pilot" / f"{NETWORK[task]}_lr{lr:g}"
                runs[lr] = trainer(data, {0: out}, self.settings(task, p["epochs"], lr),
                                   log=_log)[0]
            key = f"val_{METRIC[task]}"
            best_lr = max(runs, key=lambda lr: runs[lr]["history"][-1][key])
            curve = {h["epoch"] + 1: h[key] for h in runs[best_lr]["history"] if key in h}
            epochs = p["epoch_choices"][-1]
            for e in p["epoch_choices"]:
                if last_quarter_gain(curve, e) < self.r.smallest_effect:
                    epochs = e
                    break
            curves = {str(lr): {str(h["epoch"] + 1): h[key] for h in r["history"] if key in h}
                      for lr, r in runs.items()}
            choice[task] = {"lr": best_lr, "epochs": epochs, "curves": curves}
            _log(f"pilot {task}: lr {best_lr:g}, {epochs} epochs")
        _write_json(self.r.root / "pilot" / "choice.json", choice)

    def _probes(self, task: str, arm: str) -> None:
        from training.fused_dataset import FusedDataset
        from training.task_probes import train_detector_probes, train_segmenter_probes

        choice = json.loads((self.r.root / "pilot" / "choice.json").read_text())[task]
        epochs = self.r.network(task).get("epochs") or choice["epochs"]
        trainer = train_detector_probes if task == "detection" else train_segmenter_probes
        data = FusedDataset(self.r.root / "fused" / arm)
        trainer(data, {s: self.probe_dir(task, arm, s) for s in self.r.seeds},
                self.settings(task, epochs, choice["lr"]), log=_log)

    def _shipped_networks(self) -> None:
        """The bundle's own detector and segmenter (trained on TDFusion's fusion, whole network)
        scored on every arm's fusion: the second piece of evidence for the bundle's F."""
        from training.fused_dataset import FusedDataset
        from training.train_detector import evaluate_detector
        from training.train_segmenter import evaluate_segmenter

        out: dict[str, Any] = {"networks": dict(self.r.shipped_tasks), "arms": {}}
        for arm in ARMS:
            if not (self.r.root / "fused" / arm / "fused.json").is_file():
                continue
            data = FusedDataset(self.r.root / "fused" / arm)
            det = evaluate_detector(REPO / self.r.shipped_tasks["detection"], data,
                                    threads=self.r.threads)
            seg = evaluate_segmenter(REPO / self.r.shipped_tasks["segmentation"], data,
                                     threads=self.r.threads)
            out["arms"][arm] = {"mAP50": det["mAP50"], "mAP50-95": det["mAP50-95"],
                                "AP50": det["AP50"], "mIoU": seg["mIoU"], "IoU": seg["IoU"]}
            _log(f"shipped networks on {arm}: mAP50 {det['mAP50']:.3f}, mIoU {seg['mIoU']:.3f}")
        _write_json(self.r.root / "shipped_networks.json", out)

    def _fusion_metrics(self) -> None:
        """Table 1's metrics of every arm's fused validation images against their sources."""
        import cv2
        import numpy as np

        from tdfusion_ros.metrics.fusion import fusion_metrics
        from training.labelled_pairs import labelled_pairs

        pairs = labelled_pairs(self.data.get("roots"), "detection", split="val",
                               val_names=self.data["val_names"])
        out: dict[str, Any] = {"pairs": len(pairs), "arms": {}}
        for arm in ARMS:
            folder = self.r.root / "fused" / arm / "images" / "val"
            if not folder.is_dir():
                continue
            rows = []
            for i in range(len(pairs)):
                sample = pairs[i]
                fused = cv2.imread(str(folder / f"{sample.name}.png"), cv2.IMREAD_GRAYSCALE)
                rows.append(fusion_metrics(fused.astype(np.float64),
                                           np.asarray(sample.ir_y, np.float64) * 255.0,
                                           np.asarray(sample.vis_y, np.float64) * 255.0))
            out["arms"][arm] = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            _log(f"fusion metrics {arm}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in out["arms"][arm].items()))
        _write_json(self.r.root / "fusion_metrics.json", out)

    def _weight_maps(self) -> None:
        """Fig. 5: each G's w_ir statistics and a figure of day and night pairs."""
        from training.comparison_report import g_statistics

        recipe_like = type("R", (), {"algorithm1": self.r.algorithm1})()
        out: dict[str, Any] = {}
        for arm in ("tdfusion_detection", "tdfusion_segmentation"):
            g = self.r.root / "alg1" / arm / "loss_generation.pt"
            if g.is_file():
                out[arm] = g_statistics(g, recipe_like)
        # beside the runs, not in results/: it shows MSRS images, which stay out of the repo
        figure = self.r.root / "weight_maps.png"
        write_weight_figure(self, figure)
        out["figure"] = str(figure.relative_to(REPO))
        _write_json(self.r.root / "weight_maps.json", out)

    def _report(self) -> None:
        from training.task_driven_report import write_report

        write_report(self, REPO / self.r.results_dir)


def write_weight_figure(stages: Stages, path: Path) -> None:
    """Rows: two day and two night validation pairs; columns: infrared, visible, w_ir of the
    detection G and of the segmentation G (white = infrared), the two TDFusion images."""
    import cv2
    import numpy as np
    import torch

    from tdfusion_ros.nets.checkpoints import load_network
    from training.batches import resize_plane
    from training.labelled_pairs import labelled_pairs

    pairs = labelled_pairs(stages.data.get("roots"), "detection", split="val",
                           val_names=stages.data["val_names"])
    names = [n for n in pairs.names if n.endswith("D")][:2] + \
        [n for n in pairs.names if n.endswith("N")][:2]
    gs = {arm: load_network(stages.r.root / "alg1" / arm / "loss_generation.pt",
                            "loss_generation").eval()
          for arm in ("tdfusion_detection", "tdfusion_segmentation")
          if (stages.r.root / "alg1" / arm / "loss_generation.pt").is_file()}
    rows = []
    for name in names:
        sample = pairs[pairs.names.index(name)]
        ir = resize_plane(sample.ir_y, (240, 320))
        vis = resize_plane(sample.vis_y, (240, 320))
        tiles = [ir, vis]
        for g in gs.values():
            with torch.no_grad():
                tiles.append(g(torch.from_numpy(ir)[None, None],
                               torch.from_numpy(vis)[None, None])[0, 0].numpy())
        for arm in gs:
            fused = cv2.imread(str(stages.r.root / "fused" / arm / "images" / "val" /
                                   f"{name}.png"), cv2.IMREAD_GRAYSCALE)
            if fused is not None:
                tiles.append(cv2.resize(fused, (320, 240), interpolation=cv2.INTER_AREA) / 255.0)
        row = np.concatenate([np.clip(t, 0, 1) for t in tiles], axis=1)
        rows.append((row * 255).astype(np.uint8))
    header = np.full((24, rows[0].shape[1]), 255, np.uint8)
    titles = ["infrared", "visible"] + [f"w_ir, G {a.split('_')[1]}" for a in gs] + \
        [f"fused, {a.replace('_', ' ')}" for a in gs]
    for k, title in enumerate(titles):
        cv2.putText(header, title, (k * 320 + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, 0, 1,
                    cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.concatenate([header, *rows], axis=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config" / "task_driven.yaml"))
    parser.add_argument("--stages", help="comma-separated stage names (default: all, in order)")
    parser.add_argument("--threads", type=int, help="CPU threads (overrides the config)")
    parser.add_argument("--list", action="store_true", help="list the stages and exit")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.config)
    if args.threads:
        recipe.threads = args.threads
    stages = Stages(recipe)
    names = [n for n, _, _ in stages.order]
    if args.list:
        for name in names:
            print(f"{'done' if stages.done(name) else '    '}  {name}")
        return 0
    chosen = args.stages.split(",") if args.stages else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)}; known: {', '.join(names)}")
    for name, run, output in stages.order:
        if name not in chosen:
            continue
        # fused_* always run: write_fused_dataset skips a set already fused by the same F
        if stages.done(name) and not name.startswith("fused_"):
            _log(f"{name}: done ({output})")
            continue
        _log(f"{name}: start")
        started = time.time()
        run()
        _log(f"{name}: finished in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
