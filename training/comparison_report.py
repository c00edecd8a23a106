"""The Table 2 comparison of the default-model recipe: per-class tables, run times, verdict.

Reads what ``training/default_model.py`` wrote under its ``run_dir`` (``metrics.json`` of every
detector and segmenter, ``summary.json`` of the Algorithm 1 runs) and writes ``results.json``
and ``results.md`` in the results folder. ``notes.md`` in that folder, when present, is the
hand-written discussion and is appended to ``results.md``.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]

__all__ = ["write_comparison"]


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _fmt(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def _size(entry: dict[str, Any]) -> str:
    size = entry.get("input_size")
    return f"{size[0]} x {size[1]}" if size else "-"


def _chain(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """The shipped network's row, after the row of the network it was fine-tuned from."""
    return ([entry["trained_from"]] if "trained_from" in entry else []) + [entry]


def _epochs(entry: dict[str, Any]) -> str:
    tune = entry.get("finetune")
    if not tune:
        return str(entry["epochs"])
    at = f" at {tune['imgsz']} px" if "imgsz" in tune else ""
    rate = tune.get("lr0", tune.get("lr"))
    return f"+{entry['epochs']}{at}, lr {rate:g}"


def _seconds(path: Path, key: str) -> float | None:
    data = _read(path)
    if data is None:
        return None
    if key == "history":
        history = data.get("meta", {}).get("history") or []
        return history[-1]["time_s"] if history else None
    return data.get(key)


def write_comparison(recipe: Any, out_dir: Path) -> dict[str, Any]:
    """The report from the runs on disk. ``runs/`` is not committed: a run no longer there (a
    fresh checkout that redid only the last stages) keeps its figures and time from the
    previous ``results.json`` of the same settings instead of vanishing from the report."""
    from training.arms import ARM_TITLES, ARMS

    root = recipe.root
    results: dict[str, Any] = {"arms": {}, "seeds": list(recipe.seeds),
                               "detector": recipe.detector, "segmenter": recipe.segmenter}
    previous = _read(out_dir / "results.json") or {}
    if any(previous.get(k) != results[k] for k in ("seeds", "detector", "segmenter")):
        previous = {}
    for arm in ARMS:
        entry: dict[str, Any] = {"title": ARM_TITLES[arm], "detection": {}, "segmentation": {}}
        before = previous.get("arms", {}).get(arm, {})
        for seed in recipe.seeds:
            det = _read(root / f"detector_{arm}_s{seed}" / "metrics.json")
            seg = _read(root / f"segmenter_{arm}_s{seed}" / "metrics.json")
            det = det or before.get("detection", {}).get(str(seed))
            seg = seg or before.get("segmentation", {}).get(str(seed))
            if det is not None:
                entry["detection"][str(seed)] = {k: det[k] for k in
                                                 ("mAP50", "mAP50-95", "AP50", "AP50-95")}
            if seg is not None:
                entry["segmentation"][str(seed)] = {"mIoU": seg["mIoU"], "IoU": seg["IoU"]}
        results["arms"][arm] = entry
    results["shipped"] = shipped_networks(recipe)
    times = {}
    for arm in ("tdfusion", "fixed"):
        summary = _read(root / arm / "summary.json")
        if summary:
            times[f"Algorithm 1, {arm}"] = summary.get("seconds")
    for name in ("fused_init", *(f"fused_{a}" for a in ARMS)):
        info = _read(root / "fused" / name.removeprefix("fused_") / "fused.json")
        if info:
            times[f"fuse, {name.removeprefix('fused_')}"] = info.get("seconds")
    for path in sorted(root.glob("detector_*/task.pt")):
        import torch

        record = torch.load(path, map_location="cpu", weights_only=True)
        times[path.parent.name] = record["meta"].get("seconds")
    for path in sorted(root.glob("segmenter_*/task.pt")):
        import torch

        record = torch.load(path, map_location="cpu", weights_only=True)
        history = record["meta"].get("history") or []
        times[path.parent.name] = history[-1]["time_s"] if history else None
    results["seconds"] = {**previous.get("seconds", {}), **times}
    if (root / "tdfusion" / "loss_generation.pt").is_file():
        results["g_statistics"] = g_statistics(root / "tdfusion" / "loss_generation.pt",
                                               recipe)
    elif "g_statistics" in previous:
        results["g_statistics"] = previous["g_statistics"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "results.md").write_text(_markdown(results, out_dir))
    return results


def shipped_networks(recipe: Any) -> dict[str, Any]:
    """Validation figures of the detector and segmenter that the export puts in the bundle;
    a fine-tuned one carries those of the network it started from as ``trained_from``."""
    shipped: dict[str, Any] = {}
    for kind in ("detector", "segmenter"):
        keep = ("mAP50", "mAP50-95", "AP50", "AP50-95") if kind == "detector" else \
            ("mIoU", "IoU")
        runs = []
        for folder in dict.fromkeys((recipe.final_dir(kind), recipe.shipped_dir(kind))):
            metrics = _read(folder / "metrics.json")
            if metrics is None:
                continue
            # what the run recorded; older metrics files lack it, then the recipe's settings
            epochs = metrics.get("epochs") or getattr(recipe, f"final_{kind}_epochs") \
                or getattr(recipe, kind)["epochs"]
            size = metrics.get("input_size") or recipe.shipped_input_size(kind)
            runs.append({"run": folder.name, "epochs": epochs, "input_size": list(size),
                         **{k: metrics[k] for k in keep}})
            if metrics.get("finetune"):
                runs[-1]["finetune"] = metrics["finetune"]
        if runs and runs[-1]["run"] == recipe.shipped_dir(kind).name:
            shipped[kind] = runs[-1]
            if len(runs) == 2:
                shipped[kind]["trained_from"] = runs[0]
    return shipped


def g_statistics(loss_generation: Path, recipe: Any) -> dict[str, Any]:
    """What G learned, on the validation pairs (at 320x240): mean w_ir inside person boxes,
    inside car boxes and elsewhere, and Spearman's rho between w_ir and (ir - vis) over the
    pixels, which is near -1 or +1 when G is a brightness rule rather than a content one. The
    same for an untrained G (seed 0), for reference."""
    import numpy as np
    import torch
    from scipy.stats import spearmanr

    from tdfusion_ros.nets.checkpoints import load_network
    from tdfusion_ros.nets.networks import LossGenerationNet
    from training.batches import resize_plane
    from training.config import load_config
    from training.labelled_pairs import labelled_pairs

    options = load_config(REPO / recipe.algorithm1).data.options
    data = labelled_pairs(options.get("roots"), "detection", split="val",
                          val_names=options["val_names"])
    torch.manual_seed(0)
    nets = {"trained": load_network(loss_generation, "loss_generation").eval(),
            "untrained": LossGenerationNet().eval()}
    stats: dict[str, Any] = {"pairs": len(data)}
    for key, g in nets.items():
        person, car, rest, rhos = [], [], [], []
        for i in range(len(data)):
            sample = data[i]
            ir = resize_plane(sample.ir_y, (240, 320))
            vis = resize_plane(sample.vis_y, (240, 320))
            with torch.no_grad():
                w_ir = g(torch.from_numpy(ir)[None, None],
                         torch.from_numpy(vis)[None, None])[0, 0].numpy()
            inside = np.zeros(w_ir.shape, bool)
            for cls, x1, y1, x2, y2 in sample.target:
                box = (slice(int(y1 / 2), int(np.ceil(y2 / 2))),
                       slice(int(x1 / 2), int(np.ceil(x2 / 2))))
                if w_ir[box].size:
                    {0: person, 2: car}.get(int(cls), []).append(float(w_ir[box].mean()))
                    inside[box] = True
            rest.append(float(w_ir[~inside].mean()))
            rhos.append(float(spearmanr(w_ir[::4, ::4].ravel(),
                                        (ir - vis)[::4, ::4].ravel())[0]))
        stats[key] = {"mean_w_ir_person_boxes": float(np.mean(person)),
                      "mean_w_ir_car_boxes": float(np.mean(car)),
                      "mean_w_ir_outside_boxes": float(np.mean(rest)),
                      "spearman_w_ir_vs_ir_minus_vis": float(np.nanmean(rhos))}
    return stats


def _markdown(results: dict[str, Any], out_dir: Path) -> str:
    arms = results["arms"]
    seeds = [str(s) for s in results["seeds"]]
    first = next((a for a in arms.values() if a["detection"]), None)
    det_classes = list(first["detection"][next(iter(first["detection"]))]["AP50"]) if first else []
    seg_first = next((a for a in arms.values() if a["segmentation"]), None)
    seg_classes = (list(seg_first["segmentation"][next(iter(seg_first["segmentation"]))]["IoU"])
                   if seg_first else [])
    lines = ["# Default model: the Table 2 comparison on the labelled MSRS pairs", "",
             "Generated by `training/comparison_report.py` (recipe stage `evaluate`). "
             "Validation split: the 47 pairs named in `config/train_default.yaml` (MSRS "
             "*test*-split images: not an MSRS test-set result). Values in %; with several "
             f"seeds, mean ± standard deviation over seeds {', '.join(seeds)}.", "",
             "## Detection (YOLOv8n, COCO AP through pycocotools)", "",
             "| arm | mAP50 | mAP50-95 | " + " | ".join(f"AP50 {c}" for c in det_classes) + " | "
             + " | ".join(f"AP50-95 {c}" for c in det_classes) + " |",
             "|---" * (3 + 2 * len(det_classes)) + "|"]
    for arm in arms.values():
        runs = [arm["detection"][s] for s in seeds if s in arm["detection"]]
        cells = [_fmt([r["mAP50"] for r in runs]), _fmt([r["mAP50-95"] for r in runs])]
        cells += [_fmt([r["AP50"][c] for r in runs]) for c in det_classes]
        cells += [_fmt([r["AP50-95"][c] for r in runs]) for c in det_classes]
        lines.append(f"| {arm['title']} | " + " | ".join(cells) + " |")
    lines += ["", "## Segmentation (SegFormer-B0, IoU per class)", "",
              "| arm | mIoU | " + " | ".join(seg_classes) + " |",
              "|---" * (2 + len(seg_classes)) + "|"]
    for arm in arms.values():
        runs = [arm["segmentation"][s] for s in seeds if s in arm["segmentation"]]
        cells = [_fmt([r["mIoU"] for r in runs])]
        cells += [_fmt([r["IoU"][c] for r in runs]) for c in seg_classes]
        lines.append(f"| {arm['title']} | " + " | ".join(cells) + " |")
    shipped = results.get("shipped") or {}
    det, seg = shipped.get("detector"), shipped.get("segmenter")
    if det or seg:
        lines += ["", "## The shipped detector and segmenter (`models/default`)", "",
                  "Arm (d)'s recipe on TDFusion's fused images with the budget of the recipe's "
                  "`final_*_epochs` (with 0, arm (d)'s own run), then, where the recipe sets "
                  "`finetune_*`, trained on from there (the `*_finetune` row, the one "
                  "shipped; its epochs are those added); same validation pairs. "
                  "Input sizes are (height, width)."]
    if det:
        lines += ["", "| detector | epochs | input (H, W) | mAP50 | mAP50-95 | "
                  + " | ".join(f"AP50 {c}" for c in det_classes) + " |",
                  "|---" * (5 + len(det_classes)) + "|"]
        lines += [f"| `{d['run']}` | {_epochs(d)} | {_size(d)} | {_fmt([d['mAP50']])} | "
                  f"{_fmt([d['mAP50-95']])} | "
                  + " | ".join(_fmt([d["AP50"][c]]) for c in det_classes) + " |"
                  for d in _chain(det)]
    if seg:
        lines += ["", "| segmenter | epochs | input (H, W) | mIoU | " + " | ".join(seg_classes)
                  + " |", "|---" * (4 + len(seg_classes)) + "|"]
        lines += [f"| `{g['run']}` | {_epochs(g)} | {_size(g)} | {_fmt([g['mIoU']])} | "
                  + " | ".join(_fmt([g["IoU"][c]]) for c in seg_classes) + " |"
                  for g in _chain(seg)]
    lines += ["", "## Run times on this machine (2 CPU cores, seconds)", "",
              "| stage | seconds |", "|---|---|"]
    lines += [f"| {k} | {v if v is not None else '-'} |" for k, v in results["seconds"].items()]
    g = results.get("g_statistics")
    if g:
        lines += ["", f"## What G learned ({g['pairs']} validation pairs, at 320x240)", "",
                  "| G | mean w_ir in person boxes | in car boxes | outside boxes | "
                  "Spearman rho(w_ir, ir - vis) |", "|---|---|---|---|---|"]
        for key in ("untrained", "trained"):
            v = g[key]
            lines.append(f"| {key} | {v['mean_w_ir_person_boxes']:.3f} | "
                         f"{v['mean_w_ir_car_boxes']:.3f} | {v['mean_w_ir_outside_boxes']:.3f} | "
                         f"{v['spearman_w_ir_vs_ir_minus_vis']:.3f} |")
    notes = out_dir / "notes.md"
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    return "\n".join(lines) + "\n"
