"""The recipe of the shipped default model (``models/default``) and its comparison (Table 2).

    python training/default_model.py                       # every stage, in order (~4.3 h here)
    python training/default_model.py --stages fusion_fixed,fused_fixed --threads 1   # a part
    python training/default_model.py --list                # the stages and whether each is done

Stages, each written under ``run_dir`` and skipped when its output exists (an interrupted stage
resumes from its own checkpoint), so the recipe can be run in pieces or as two parallel
processes with disjoint stage lists:

1. ``fused_init``, ``detector_init``: fuse the pairs with the initial F (fixed loss, generated
   scenes) and train a YOLOv8n on them: the warm T that sees objects when G starts to learn.
2. ``fusion_tdfusion``: Algorithm 1 (``config/train_default.yaml``): G meta-learned against the
   detection loss, F with G's loss, T from the warm detector. ``fusion_fixed``: the same run
   with the fixed loss w = 1/2 (ablation I): same F initialisation, budget and batch order.
3. For each arm (infrared only, visible only, fixed-loss F, TDFusion's F): ``fused_<arm>`` fuses
   every pair, ``detector_<arm>`` trains YOLOv8n with ultralytics' trainer and
   ``segmenter_<arm>`` SegFormer-B0, each with the same initialisation, data order and budget.
4. ``evaluate``: mAP50 / mAP50-95 and IoU per class on the validation split, for every arm and
   seed: ``results.json`` and ``results.md`` in ``results_dir``.
5. ``detector_final``, ``segmenter_final``: the shipped task networks: arm (d)'s recipe on
   TDFusion's fused images with a longer budget (``final_*_epochs``), or arm (d)'s networks
   as they are when that is 0.
6. ``detector_finetune``, ``segmenter_finetune`` (when ``finetune_*`` is set): those two
   trained on with a small learning rate and no warm-up, the detector at its deployed scale:
   a second, short schedule that a from-scratch run of the same length does not give.
7. ``export``: TDFusion's F with the shipped two into the bundle (``models/default``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from training.arms import ARM_TITLES, ARMS  # noqa: E402, F401 (importable from here too)
from training.config import load_config  # noqa: E402


@dataclass
class Recipe:
    run_dir: str = "runs/default"
    algorithm1: str = "config/train_default.yaml"
    results_dir: str = "results/msrs_default"
    bundle: str = "models/default"
    seeds: list[int] = field(default_factory=lambda: [0])
    warm_detector_epochs: int = 15
    # architecture: training.task_networks.DETECTOR_ARCHITECTURES / SEGMENTER_ARCHITECTURES
    detector: dict[str, Any] = field(default_factory=lambda: {
        "epochs": 20, "imgsz": 320, "batch": 16, "input_size": [240, 320],
        "architecture": "yolov8n_lite0"})
    segmenter: dict[str, Any] = field(default_factory=lambda: {
        "epochs": 6, "batch": 8, "lr": 1e-3, "input_size": [256, 320],
        "architecture": "lite0_mlp"})
    # the segmenter trained on the initial F's fusion too (segmenter_init; 0: none), as the
    # detector is (detector_init): a start for the shipped one while Algorithm 1 runs
    init_segmenter_epochs: int = 0
    final_detector_epochs: int = 0    # the shipped detector's budget (0: arm (d)'s as is)
    final_detector_input_size: list[int] | None = None  # its deployed (H, W); None: detector's
    final_segmenter_epochs: int = 0   # the shipped segmenter's budget (0: arm (d)'s as is)
    # then trained on from the final ones (or, with "from": "init", from detector_init /
    # segmenter_init): detector {epochs, imgsz, lr0, close_mosaic, from, input_size: the
    # deployed (H, W)}, segmenter {epochs, lr, from}; None: the final ones are shipped
    finetune_detector: dict[str, Any] | None = None
    finetune_segmenter: dict[str, Any] | None = None
    threads: int = 2
    # a task.pt detector to ship instead of the one trained here (relative to the repository),
    # scored on TDFusion's fusion by the detector_ship stage; None: the trained one
    ship_detector: str | None = None

    @property
    def root(self) -> Path:
        return REPO / self.run_dir

    def final_dir(self, kind: str) -> Path:
        """Where the ``kind`` ("detector"/"segmenter") of the ``*_final`` stage is: with 0
        final epochs, arm (d)'s network as it is."""
        if not getattr(self, f"final_{kind}_epochs"):
            return self.root / f"{kind}_tdfusion_s{self.seeds[0]}"
        return self.root / f"{kind}_final"

    def finetune(self, kind: str) -> dict[str, Any] | None:
        return getattr(self, f"finetune_{kind}")

    def shipped_dir(self, kind: str) -> Path:
        """Where the network that the export ships is: a named detector checkpoint
        (``ship_detector``), else the fine-tuned one, else the final one."""
        if kind == "detector" and self.ship_detector:
            return self.root / "detector_shipped"
        return self.root / f"{kind}_finetune" if self.finetune(kind) else self.final_dir(kind)

    def shipped_input_size(self, kind: str) -> list[int]:
        """The (H, W) the shipped ``kind`` runs at: the fine-tune's, else the final stage's
        when it is trained, else the arms'."""
        if kind == "detector" and (self.finetune_detector or {}).get("input_size"):
            return list(self.finetune_detector["input_size"])
        if kind == "detector" and self.final_detector_epochs and self.final_detector_input_size:
            return list(self.final_detector_input_size)
        return list(getattr(self, kind)["input_size"])


def load_recipe(path: str | Path | None) -> Recipe:
    raw = yaml.safe_load(Path(path).read_text()) if path else {}
    known = set(Recipe.__dataclass_fields__)
    unknown = sorted(set(raw or {}) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))}")
    recipe = Recipe(**(raw or {}))
    if recipe.final_detector_input_size and not recipe.final_detector_epochs:
        raise ValueError(f"{path}: final_detector_input_size needs final_detector_epochs > 0 "
                         "(it sizes the detector_final stage's network)")
    for kind, needed, allowed in (("detector", {"epochs"}, {"epochs", "imgsz", "lr0",
                                                            "close_mosaic", "from",
                                                            "input_size"}),
                                  ("segmenter", {"epochs"}, {"epochs", "lr", "from"})):
        settings = recipe.finetune(kind)
        if settings is None:
            continue
        if not isinstance(settings, dict) or not needed <= set(settings) <= allowed:
            raise ValueError(f"{path}: finetune_{kind} needs {', '.join(sorted(needed))} and "
                             f"takes only {', '.join(sorted(allowed))}; got {settings!r}")
        if settings.get("from", "final") not in ("final", "init"):
            raise ValueError(f"{path}: finetune_{kind} from must be 'final' or 'init', got "
                             f"{settings['from']!r}")
        if settings.get("from") == "init" and kind == "segmenter" \
                and not recipe.init_segmenter_epochs:
            raise ValueError(f"{path}: finetune_segmenter from 'init' needs "
                             "init_segmenter_epochs > 0 (the segmenter_init stage)")
    return recipe


def _write_metrics(out: Path, metrics: dict[str, Any]) -> None:
    """A stage's ``metrics.json``, whole or absent: its existence marks the stage done."""
    from training.atomic import atomic_write

    text = json.dumps(metrics, indent=1).encode()
    atomic_write(out / "metrics.json", lambda f: f.write(text))


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Stages:
    """The recipe's stages by name, in run order; ``done(name)`` tells whether one is finished."""

    def __init__(self, recipe: Recipe) -> None:
        self.r = recipe
        self.alg1 = load_config(REPO / recipe.algorithm1)
        options = dict(self.alg1.data.options)
        self.data = {k: options[k] for k in ("roots", "val_names", "scenes_count", "scenes_size")
                     if k in options}
        self.order: list[tuple[str, Callable[[], None], Path]] = []
        root = recipe.root
        self._add("fused_init", lambda: self._fuse("init", str(REPO / self.alg1.init_fusion)),
                  root / "fused" / "init" / "fused.json")
        self._add("detector_init", lambda: self._detector("init", 0, recipe.warm_detector_epochs),
                  root / "detector_init_s0" / "task.pt")
        self._add("segmenter_init", self._segmenter_init,
                  root / "segmenter_init_s0" / "metrics.json")
        for arm, ablation in (("tdfusion", "none"), ("fixed", "I")):
            self._add(f"fusion_{arm}", lambda a=arm, ab=ablation: self._algorithm1(a, ab),
                      root / arm / "fusion.pt")
        for arm in ARMS:
            self._add(f"fused_{arm}", lambda a=arm: self._fuse(a, self._source(a)),
                      root / "fused" / arm / "fused.json")
        for seed in recipe.seeds:
            for arm in ARMS:
                self._add(f"detector_{arm}_s{seed}", lambda a=arm, s=seed: self._detector(a, s),
                          root / f"detector_{arm}_s{seed}" / "metrics.json")
                self._add(f"segmenter_{arm}_s{seed}",
                          lambda a=arm, s=seed: self._segmenter(a, s),
                          root / f"segmenter_{arm}_s{seed}" / "metrics.json")
        self._add("detector_final", self._detector_final,
                  self.r.final_dir("detector") / "metrics.json")
        self._add("segmenter_final", self._segmenter_final,
                  self.r.final_dir("segmenter") / "metrics.json")
        for kind in ("detector", "segmenter"):
            self._add(f"{kind}_finetune", lambda k=kind: self._finetune(k),
                      root / f"{kind}_finetune" / "metrics.json")
        self._add("detector_ship", self._ship_detector,
                  root / "detector_shipped" / "metrics.json")
        self._add("evaluate", self._evaluate, REPO / recipe.results_dir / "results.json")
        self._add("export", self._export, REPO / recipe.bundle / "bundle.yaml")

    def _add(self, name: str, run: Callable[[], None], output: Path) -> None:
        self.order.append((name, run, output))

    def done(self, name: str) -> bool:
        """Its output exists and, for the shipped networks, was made with today's settings (a
        run of an earlier recipe is redone, or relabelled when only the input size changed)."""
        output = {n: out for n, _, out in self.order}[name]
        if name.endswith("_finetune"):
            settings = self.r.finetune(name.removesuffix("_finetune"))
            return settings is None or (output.is_file() and json.loads(
                output.read_text()).get("finetune") == settings)
        if not output.is_file():
            return False
        kind = name.removesuffix("_final")
        if name.endswith("_final") and getattr(self.r, f"final_{kind}_epochs"):
            made = json.loads(output.read_text())
            wanted = {"epochs": getattr(self.r, f"final_{kind}_epochs"),
                      "input_size": self.r.shipped_input_size(kind)}
            return all(made.get(k) == v for k, v in wanted.items())
        return True

    # --------------------------------------------------------------------------- stages

    def _source(self, arm: str) -> str:
        return arm if arm in ("ir", "vis") else str(self.r.root / arm / "fusion.pt")

    def _fuse(self, arm: str, source: str) -> None:
        from training.fused_dataset import write_fused_dataset

        write_fused_dataset(self.r.root / "fused" / arm, source, threads=self.r.threads,
                            log=_log, **self.data)

    def _algorithm1(self, arm: str, ablation: str) -> None:
        from training import train

        out_dir = self.r.root / arm
        last = out_dir / "last.pt"
        if last.is_file():
            _log(f"Algorithm 1 ({arm}): resuming from {last}")
            state = train.load_checkpoint(last)
            config = train.config_from_checkpoint(state["config"])
        else:
            state = None
            overrides = [f"out_dir={out_dir}", f"ablation={ablation}"]
            if ablation == "none":  # T starts from the warm detector; F alone ignores T
                overrides.append(f"init_task={self.r.root / 'detector_init_s0' / 'task.pt'}")
            config = load_config(REPO / self.r.algorithm1, overrides)
            config.init_fusion = str(REPO / config.init_fusion)
        import torch

        torch.set_num_threads(self.r.threads)
        train.train(config, state, show_progress=False)

    def _detector(self, arm: str, seed: int, epochs: int | None = None,
                  out: Path | None = None, input_size: list[int] | None = None) -> None:
        from training.fused_dataset import FusedDataset
        from training.train_detector import evaluate_detector, train_detector

        data = FusedDataset(self.r.root / "fused" / arm)
        out = out or self.r.root / f"detector_{arm}_s{seed}"
        d = self.r.detector
        task_pt = train_detector(data, out, epochs=epochs or d["epochs"], imgsz=d["imgsz"],
                                 batch=d["batch"], seed=seed, threads=self.r.threads,
                                 input_size=tuple(input_size or d["input_size"]),
                                 architecture=d.get("architecture", "yolov8n"))
        metrics = evaluate_detector(task_pt, data, threads=self.r.threads)
        metrics.update(epochs=epochs or d["epochs"], input_size=list(input_size or d["input_size"]))
        _write_metrics(out, metrics)
        _log(f"detector {out.name}: mAP50 {metrics['mAP50']:.3f}, "
             f"mAP50-95 {metrics['mAP50-95']:.3f}")

    def _segmenter(self, arm: str, seed: int, epochs: int | None = None,
                   out: Path | None = None) -> None:
        from training.fused_dataset import FusedDataset
        from training.train_segmenter import evaluate_segmenter, train_segmenter

        data = FusedDataset(self.r.root / "fused" / arm)
        out = out or self.r.root / f"segmenter_{arm}_s{seed}"
        s = self.r.segmenter
        task_pt = train_segmenter(data, out, epochs=epochs or s["epochs"], batch=s["batch"],
                                  lr=s["lr"], seed=seed, threads=self.r.threads,
                                  input_size=tuple(s["input_size"]), log=_log,
                                  architecture=s.get("architecture", "segformer_b0"))
        metrics = evaluate_segmenter(task_pt, data, threads=self.r.threads)
        metrics.update(epochs=epochs or s["epochs"], input_size=list(s["input_size"]))
        _write_metrics(out, metrics)
        _log(f"segmenter {out.name}: mIoU {metrics['mIoU']:.3f}")

    def _segmenter_init(self) -> None:
        """The segmenter on the initial F's fusion (``init_segmenter_epochs``; 0: skipped)."""
        if self.r.init_segmenter_epochs:
            self._segmenter("init", 0, self.r.init_segmenter_epochs,
                            self.r.root / "segmenter_init_s0")

    def _detector_final(self) -> None:
        """The deployed detector (or the start of its fine-tune): arm (d)'s recipe with
        ``final_detector_epochs`` epochs, from scratch (0: arm (d)'s stage already made it),
        deployed and evaluated at ``final_detector_input_size``."""
        if self.r.final_detector_epochs:
            self._detector("tdfusion", self.r.seeds[0], self.r.final_detector_epochs,
                           self.r.final_dir("detector"), self.r.shipped_input_size("detector"))

    def _segmenter_final(self) -> None:
        """The deployed segmenter (or the start of its fine-tune), likewise: arm (d)'s recipe,
        ``final_segmenter_epochs`` epochs."""
        if self.r.final_segmenter_epochs:
            self._segmenter("tdfusion", self.r.seeds[0], self.r.final_segmenter_epochs,
                            self.r.final_dir("segmenter"))

    def finetune_start(self, kind: str) -> Path:
        """The folder of the network that ``kind``'s fine-tune starts from."""
        if (self.r.finetune(kind) or {}).get("from") == "init":
            return self.r.root / f"{kind}_init_s0"
        return self.r.final_dir(kind)

    def _finetune(self, kind: str) -> None:
        """Train the final ``kind`` on (see ``finetune_*``); its folder is what gets shipped."""
        from training.fused_dataset import FusedDataset

        settings = self.r.finetune(kind)
        if settings is None:
            return
        start = self.finetune_start(kind)
        init = start / "task.pt"
        out = self.r.shipped_dir(kind)
        seed = self.r.seeds[0]
        out.mkdir(parents=True, exist_ok=True)
        asked = out / "finetune.json"  # a rerun with other settings must not resume this one
        if asked.is_file() and json.loads(asked.read_text()) != settings:
            raise ValueError(f"{out} holds a fine-tune with other settings "
                             f"({asked.read_text().strip()}): remove it to train anew")
        asked.write_text(json.dumps(settings))
        data = FusedDataset(self.r.root / "fused" / "tdfusion")
        if kind == "detector":
            from training.train_detector import evaluate_detector, train_detector

            size = self.r.shipped_input_size(kind)
            task_pt = train_detector(
                data, out, epochs=settings["epochs"], batch=self.r.detector["batch"], seed=seed,
                imgsz=settings.get("imgsz", self.r.detector["imgsz"]), threads=self.r.threads,
                input_size=tuple(size), close_mosaic=settings.get("close_mosaic", 5), init=init,
                hyperparameters={"optimizer": "AdamW", "lr0": settings.get("lr0", 3e-4),
                                 "lrf": 0.1, "warmup_epochs": 0})
            metrics = evaluate_detector(task_pt, data, threads=self.r.threads)
        else:
            from training.train_segmenter import evaluate_segmenter, train_segmenter

            size = self.r.segmenter["input_size"]
            task_pt = train_segmenter(
                data, out, epochs=settings["epochs"], batch=self.r.segmenter["batch"],
                lr=settings.get("lr", 5e-4), seed=seed, threads=self.r.threads,
                input_size=tuple(size), init=init, log=_log)
            metrics = evaluate_segmenter(task_pt, data, threads=self.r.threads)
        metrics.update(epochs=settings["epochs"], input_size=list(size), finetune=settings,
                       init=start.name)
        _write_metrics(out, metrics)
        _log(f"{kind} fine-tuned: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in
                                                 ("mAP50", "mAP50-95", "mIoU") if k in metrics))

    def _ship_detector(self) -> None:
        """``ship_detector`` copied beside the runs and scored on TDFusion's fusion (its
        threshold for the export comes from there); nothing when it is not set."""
        if not self.r.ship_detector:
            return
        import shutil

        from training.fused_dataset import FusedDataset
        from training.train_detector import evaluate_detector

        out = self.r.root / "detector_shipped"
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO / self.r.ship_detector, out / "task.pt")
        data = FusedDataset(self.r.root / "fused" / "tdfusion")
        metrics = evaluate_detector(out / "task.pt", data, threads=self.r.threads)
        metrics.update(shipped=self.r.ship_detector)
        _write_metrics(out, metrics)
        _log(f"detector shipped as named ({self.r.ship_detector}): mAP50 {metrics['mAP50']:.3f}")

    def _evaluate(self) -> None:
        from training.comparison_report import write_comparison

        write_comparison(self.r, REPO / self.r.results_dir)

    def _export(self) -> None:
        """The bundle; the detector's score threshold is where its F1 peaks on validation."""
        root = self.r.root
        metrics = json.loads((self.r.shipped_dir("detector") / "metrics.json").read_text())
        command = [sys.executable, str(REPO / "training" / "export.py"),
                   "--conf-threshold", str(metrics["best_f1_conf"]),
                   "--fusion", str(root / "tdfusion" / "fusion.pt"),
                   "--task", str(self.r.shipped_dir("detector") / "task.pt"),
                   "--task", str(self.r.shipped_dir("segmenter") / "task.pt"),
                   "--out", str(REPO / self.r.bundle)]
        _log("export: " + " ".join(command))
        subprocess.run(command, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "config" / "default_model.yaml"))
    parser.add_argument("--stages", help="comma-separated stage names (default: all, in order)")
    parser.add_argument("--threads", type=int, help="CPU threads per stage (overrides config)")
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
        # fused_* stages always run: write_fused_dataset itself skips when the same F (by
        # sha256) and data were fused already, and redoes it after F was retrained
        if stages.done(name) and name not in ("evaluate", "export") \
                and not name.startswith("fused_"):
            _log(f"{name}: done ({output})")
            continue
        _log(f"{name}: start")
        started = time.time()
        run()
        _log(f"{name}: finished in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
