"""``results/task_driven/results.md`` and ``results.json``: the arms' scores, the paired
differences with their intervals, the validity checks and the pre-registered verdict per task
(``training/task_driven.py``'s ``report`` stage)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from training.paired_bootstrap import DetectionMatches, SegmentationConfusions, paired_bootstrap
from training.task_driven_arms import ARMS, METRIC, NETWORK, TASK_ARMS, last_quarter_gain

REPO = Path(__file__).resolve().parents[1]


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def _scorer(task: str, folder: Path) -> Any:
    """The seed's metric as a function of image weights, from its per-image records."""
    if task == "segmentation":
        return SegmentationConfusions(np.load(folder / "confusions.npy")).miou
    with np.load(folder / "predictions.npz") as saved:
        names = json.loads((folder / "metrics.json").read_text())["names"]
        truth = [saved[f"truth_{n}"] for n in names]
        preds = [saved[f"pred_{n}"] for n in names]
    classes = len(json.loads((folder / "metrics.json").read_text())["AP50"])
    return DetectionMatches(truth, preds, classes).ap50


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def _t_interval(diffs: list[float]) -> tuple[float, float, float]:
    from scipy.stats import t

    arr = np.asarray(diffs, np.float64)
    if len(arr) < 2:
        return float(arr.mean()), math.nan, math.nan
    half = t.ppf(0.975, len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr))
    return float(arr.mean()), float(arr.mean() - half), float(arr.mean() + half)


def collect(stages: Any) -> dict[str, Any]:
    r = stages.r
    out: dict[str, Any] = {"preregistration": {
        "file": "results/task_driven/preregistration.md",
        "commits": _git("log", "--format=%h %cI %s", "--",
                        "results/task_driven/preregistration.md").splitlines()},
        "seeds": r.seeds, "pilot": _read(r.root / "pilot" / "choice.json"),
        "fusion_metrics": _read(r.root / "fusion_metrics.json"),
        "shipped_networks": _read(r.root / "shipped_networks.json"),
        "weight_maps": _read(r.root / "weight_maps.json"), "tasks": {},
        "run_times_s": run_times(stages)}
    for task in ("detection", "segmentation"):
        metric = METRIC[task]
        key = f"val_{metric}"
        arms: dict[str, Any] = {}
        names_seen: set[tuple[str, ...]] = set()
        for arm in r.network(task)["arms"]:
            seeds = {}
            for s in r.seeds:
                m = _read(stages.probe_dir(task, arm, s) / "metrics.json")
                if m is not None:
                    seeds[s] = m
                    names_seen.add(tuple(m["names"]))
            if not seeds:
                continue
            curves = [{h["epoch"] + 1: h[key] for h in m["history"] if key in h}
                      for m in seeds.values()]
            epochs = sorted(set.intersection(*(set(c) for c in curves)))
            mean_curve = {e: float(np.mean([c[e] for c in curves])) for e in epochs}
            per_class = "AP50" if task == "detection" else "IoU"
            arms[arm] = {
                "title": ARMS[arm][0], "seeds": sorted(seeds),
                metric: _mean_sd([m[metric] for m in seeds.values()]),
                "per_seed": {str(s): m[metric] for s, m in seeds.items()},
                "per_class": {c: _mean_sd([m[per_class][c] for m in seeds.values()])
                              for c in next(iter(seeds.values()))[per_class]},
                "curve": mean_curve,
                "last_quarter_gain": last_quarter_gain(mean_curve, max(epochs)),
                "seconds": [m["seconds"] for m in seeds.values()],
            }
            if task == "detection":
                arms[arm]["mAP50-95"] = _mean_sd([m["mAP50-95"] for m in seeds.values()])
                arms[arm]["per_class_50_95"] = {
                    c: _mean_sd([m["AP50-95"][c] for m in seeds.values()])
                    for c in next(iter(seeds.values()))["AP50-95"]}
        td, fixed = TASK_ARMS[task]
        comparisons = {f"{td} - {fixed}": (td, [fixed]),
                       f"{td} - best of ir, vis": (td, ["ir", "vis"]),
                       f"{td} - official": (td, ["official"])}
        complete = {a for a, v in arms.items() if v["seeds"] == list(r.seeds)}
        runnable = {k: v for k, v in comparisons.items() if {v[0], *v[1]} <= complete}
        result: dict[str, Any] = {"metric": metric, "arms": arms, "not_run": [
            a for a in r.network(task)["arms"] if a not in arms],
                                  "same_images": len(names_seen) <= 1, "comparisons": {}}
        if runnable:
            scorers = {a: [_scorer(task, stages.probe_dir(task, a, s)) for s in r.seeds]
                       for a in {x for v in runnable.values() for x in (v[0], *v[1])}}
            n_images = len(next(iter(names_seen)))
            intervals = paired_bootstrap(scorers, runnable, n_images, draws=r.bootstrap_draws)
            for name, (arm, others) in runnable.items():
                per_seed = [arms[arm]["per_seed"][str(s)] - max(
                    arms[o]["per_seed"][str(s)] for o in others) for s in r.seeds]
                mean, low, high = _t_interval(per_seed)
                iv = intervals[name]
                result["comparisons"][name] = {
                    "bootstrap": {"mean": iv.mean, "low": iv.low, "high": iv.high,
                                  "draws": iv.draws},
                    "seeds": {"per_seed": per_seed, "mean": mean, "low": low, "high": high}}
        for name in comparisons:
            if name not in result["comparisons"]:
                result["comparisons"][name] = {"missing": sorted(
                    {comparisons[name][0], *comparisons[name][1]} - complete)}
        result["flat"] = {a: v["last_quarter_gain"] < r.smallest_effect for a, v in arms.items()}
        result["verdict"] = verdict(result, td, fixed, r.smallest_effect)
        result["network"] = NETWORK[task]
        out["tasks"][task] = result
    return out


def run_times(stages: Any) -> dict[str, float]:
    """Wall-clock seconds of each stage's work, as recorded in its outputs (the machine was
    shared by several stages at a time, so these are not costs alone)."""
    r, out = stages.r, {}
    for arm in ARMS:
        summary = _read(r.root / "alg1" / arm / "summary.json")
        if summary:
            out[f"Algorithm 1, {arm}"] = summary["seconds"]
        fused = _read(r.root / "fused" / arm / "fused.json")
        if fused:
            out[f"fuse, {arm}"] = fused["seconds"]
    for task in ("detection", "segmentation"):
        for arm in r.network(task)["arms"]:
            runs = [_read(stages.probe_dir(task, arm, s) / "metrics.json") for s in r.seeds]
            done = [m for m in runs if m]
            if done:
                out[f"{NETWORK[task]}s, {arm} ({len(done)} seeds)"] = round(
                    done[0]["encode_s"] + sum(m["seconds"] for m in done), 1)
    return out


def verdict(result: dict[str, Any], td: str, fixed: str, smallest: float) -> dict[str, str]:
    """The pre-registered rule on the bootstrap intervals against (c) and the best camera."""
    keys = [f"{td} - {fixed}", f"{td} - best of ir, vis"]
    found = [result["comparisons"].get(k, {}) for k in keys]
    if not all(result["flat"].get(a, False) for a in result["arms"]):
        steep = [a for a, flat in result["flat"].items() if not flat]
        return {"verdict": "invalid",
                "why": f"validation curves not flat by the end of the budget: {', '.join(steep)}"}
    if not result["same_images"]:
        return {"verdict": "invalid", "why": "the arms were scored on different images"}
    if any("bootstrap" not in f for f in found):
        missing = sorted({a for f in found for a in f.get("missing", [])})
        return {"verdict": "not decided", "why": f"arms without all seeds: {', '.join(missing)}"}
    ivs = [f["bootstrap"] for f in found]
    if all(iv["low"] > 0 for iv in ivs):
        return {"verdict": "supported", "why": "both intervals lie above 0"}
    if any(iv["high"] < smallest for iv in ivs):
        which = [k for k, iv in zip(keys, ivs) if iv["high"] < smallest]
        return {"verdict": "refuted",
                "why": f"the interval of {', '.join(which)} lies below +{smallest * 100:.0f} point"}
    return {"verdict": "not decided",
            "why": "an interval reaches below 0 and above the smallest effect worth having"}


def _pct(mean_sd: tuple[float, float] | list[float], sd: bool = True) -> str:
    mean, spread = mean_sd
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean * 100:.1f} ± {spread * 100:.1f}" if sd else f"{mean * 100:.1f}"


def _interval(iv: dict[str, float]) -> str:
    return f"{iv['mean'] * 100:+.1f} [{iv['low'] * 100:+.1f}, {iv['high'] * 100:+.1f}]"


def markdown(res: dict[str, Any]) -> str:
    lines = ["# Does task-driven fusion help? TDFusion against the fixed loss, single cameras and "
             "the official weights, on MSRS", "",
             "Generated by `training/task_driven.py` (stage `report`) from `runs/task_driven`. "
             "Pre-registration: `results/task_driven/preregistration.md`, commits:", ""]
    lines += [f"- `{c}`" for c in res["preregistration"]["commits"]]
    lines += ["", "Validation: the fixed 47 MSRS pairs of `config/train_default.yaml` "
              "(45 with label maps). Task networks: frozen ImageNet EfficientNet-Lite0 encoder, "
              f"trained heads (`training/task_probes.py`), seeds {res['seeds']}; values in %, "
              "mean ± standard deviation over seeds. Intervals: 95 %, paired bootstrap over seeds "
              "and images (primary), and the t-interval over the per-seed differences.", ""]
    pilot = res.get("pilot") or {}
    for task, t in res["tasks"].items():
        metric = t["metric"]
        lines += [f"## {task.capitalize()} ({metric})", ""]
        v = t["verdict"]
        lines += [f"**Verdict: {v['verdict']}** ({v['why']}).", ""]
        if task in pilot:
            lines += [f"Budget from the pilot: {pilot[task]['epochs']} epochs, learning rate "
                      f"{pilot[task]['lr']:g}.", ""]
        arms = t["arms"]
        if arms:
            first = next(iter(arms.values()))
            classes = list(first["per_class"])
            head = ["arm", metric] + (["mAP50-95"] if task == "detection" else []) + \
                [f"{'AP50' if task == 'detection' else 'IoU'} {c}" for c in classes]
            lines += ["| " + " | ".join(head) + " | seeds | last-quarter gain |",
                      "|" + "---|" * (len(head) + 2)]
            for a in arms.values():
                row = [a["title"], _pct(a[metric])]
                if task == "detection":
                    row.append(_pct(a["mAP50-95"]))
                row += [_pct(a["per_class"][c]) for c in classes]
                row += [",".join(str(s) for s in a["seeds"]),
                        f"{a['last_quarter_gain'] * 100:+.1f}"]
                lines.append("| " + " | ".join(row) + " |")
            if task == "detection":
                lines += ["", "AP50-95 per class: " + "; ".join(
                    f"{a['title']}: " + ", ".join(f"{c} {_pct(v)}" for c, v in
                                                  a["per_class_50_95"].items())
                    for a in arms.values())]
        if t.get("not_run"):
            lines += ["", "Not run (no seed finished): " + ", ".join(
                ARMS[a][0] for a in t["not_run"]) + "."]
        lines += ["", "| difference (points) | bootstrap mean [95 %] | per seed | "
                  "t-interval over seeds |", "|---|---|---|---|"]
        for name, c in t["comparisons"].items():
            if "missing" in c:
                lines.append(f"| {name} | not run: missing {', '.join(c['missing'])} | | |")
                continue
            s = c["seeds"]
            lines.append(f"| {name} | {_interval(c['bootstrap'])} | "
                         + ", ".join(f"{d * 100:+.1f}" for d in s["per_seed"])
                         + f" | {s['mean'] * 100:+.1f} [{s['low'] * 100:+.1f}, "
                         f"{s['high'] * 100:+.1f}] |")
        lines += ["", "Validation curves (seed mean, by epoch):", ""]
        for a in arms.values():
            lines.append(f"- {a['title']}: " + ", ".join(
                f"{e}: {v * 100:.1f}" for e, v in a["curve"].items()))
        lines.append("")
    shipped = res.get("shipped_networks")
    if shipped and shipped["arms"]:
        lines += ["## The bundle's own detector and segmenter on each arm's fusion", "",
                  "Trained (whole network) on TDFusion's detection F's fusion, so they favour "
                  "that arm; shown because the bundle's F has to serve them.", "",
                  "| arm | mAP50 | mAP50-95 | mIoU |", "|---|---|---|---|"]
        for arm, m in shipped["arms"].items():
            lines.append(f"| {ARMS[arm][0]} | {m['mAP50'] * 100:.1f} | "
                         f"{m['mAP50-95'] * 100:.1f} | {m['mIoU'] * 100:.1f} |")
        lines.append("")
    fm = res.get("fusion_metrics")
    if fm:
        lines += ["## Fusion quality (Table 1 metrics, validation pairs at 640x480)", "",
                  "| arm | EN | SF | SCD | VIF | Qabf | SSIM |", "|---|---|---|---|---|---|---|"]
        for arm, m in fm["arms"].items():
            lines.append(f"| {ARMS[arm][0]} | " + " | ".join(
                f"{m[k]:.3f}" for k in ("EN", "SF", "SCD", "VIF", "Qabf", "SSIM")) + " |")
        lines += ["", "The paper's MSRS row is not reproduced here: its table is not available "
                  "offline on this machine and is not quoted from memory.", ""]
    wm = res.get("weight_maps")
    if wm:
        lines += ["## What G learned (Fig. 5; validation pairs at 320x240)", "",
                  f"The figure (two day and two night pairs: sources, both G's w_ir, both "
                  f"fused images) is written to `{wm['figure']}` by the `weight_maps` stage; it "
                  "shows MSRS images, so it stays out of the repository.", "",
                  "| G | mean w_ir in person boxes | in car boxes | outside boxes | "
                  "Spearman rho(w_ir, ir - vis) |", "|---|---|---|---|---|"]
        for arm in ("tdfusion_detection", "tdfusion_segmentation"):
            if arm not in wm:
                continue
            for key in ("trained", "untrained"):
                g = wm[arm][key]
                lines.append(f"| {arm.split('_')[1]}, {key} | {g['mean_w_ir_person_boxes']:.3f}"
                             f" | {g['mean_w_ir_car_boxes']:.3f} | "
                             f"{g['mean_w_ir_outside_boxes']:.3f} | "
                             f"{g['spearman_w_ir_vs_ir_minus_vis']:.3f} |")
        lines.append("")
    times = res.get("run_times_s") or {}
    if times:
        lines += ["## Run times (2 CPU cores shared by up to six stages at once; seconds)", "",
                  "| stage | seconds |", "|---|---|"]
        lines += [f"| {k} | {v:.0f} |" for k, v in times.items()]
        lines.append("")
    return "\n".join(lines) + "\n"


def write_report(stages: Any, out_dir: Path) -> dict[str, Any]:
    from training.atomic import atomic_write

    res = collect(stages)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(res, indent=1, default=float)
    atomic_write(out_dir / "results.json", lambda f: f.write(text.encode()))
    body = markdown(res)
    extra = out_dir / "discussion.md"  # the verdict's paragraphs, written by a person
    if extra.is_file():
        body += "\n" + extra.read_text()
    atomic_write(out_dir / "results.md", lambda f: f.write(body.encode()))
    return res
