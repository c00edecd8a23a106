"""Bundle against bundle on one bag: two or more replay folders side by side in one report.

    python -m tdfusion_ros.replay BAG --bundle OLD --bundle NEW [--out DIR]
    python -m tdfusion_ros.replay --compare-runs DIR_A DIR_B [...] [--out DIR]

The first form replays the bag once per bundle (into ``DIR/<name>/``, each an ordinary replay
folder); the second reads replay folders written earlier. Either way ``DIR/comparison.html``,
``comparison.md`` and ``comparison.json`` hold: per-class AP and IoU of each run with the
difference from the first (the baseline), throughput and latency per stage side by side, how
often the runs disagree frame by frame (published detections matched by class at IoU 0.5, and
the share of pixels whose segmentation class name differs), and the frames where they disagree
most, each shown as every run saw it.

Only the files a replay writes are read (``summary.json``, ``frames.csv``, ``detections.json``,
``masks/``, and the fused images from ``fused/`` or ``fused_bag/``), so folders from another
machine compare as well. Frames are matched by their RGB stamp.
"""

from __future__ import annotations

import base64
import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tdfusion_ros.bags.replay.common import (
    FUSED_IMAGE_TOPIC,
    ReplayError,
    _jsonable,
    imwrite,
    write_text_whole,
)
from tdfusion_ros.bags.replay.labels import _box_iou
from tdfusion_ros.bags.replay.report import _CSS, _esc, _md_table, _num

COMPARISON_HTML = "comparison.html"
COMPARISON_MD = "comparison.md"
COMPARISON_JSON = "comparison.json"
#: Stages shown side by side (those a run lacks are left out).
STAGES = ("total", "fusion", "detector", "segmenter", "preprocess", "colour", "detector_post",
          "segmenter_post", "read_decode", "write")
MATCH_IOU = 0.5


# --------------------------------------------------------------------------- one replay folder
@dataclass
class _Run:
    name: str
    folder: Path
    summary: dict[str, Any]
    frames: dict[int, str] = field(default_factory=dict)  # RGB stamp -> frame name
    boxes: dict[int, list[tuple[str, float, list[float]]]] = field(default_factory=dict)
    det_classes: list[str] = field(default_factory=list)
    seg_classes: list[str] = field(default_factory=list)

    @property
    def has_detector(self) -> bool:
        return "detector" in (self.summary.get("bundle", {}).get("graphs") or {})

    def mask(self, stamp: int) -> np.ndarray | None:
        path = self.folder / "masks" / f"{self.frames[stamp]}.png"
        return cv2.imread(str(path), cv2.IMREAD_UNCHANGED) if path.is_file() else None


def load_run(folder: Path, name: str) -> _Run:
    """A replay folder's summary, frames and published detections."""
    folder = Path(folder)
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError) as err:
        raise ReplayError(f"{folder} is not a replay folder (no readable summary.json: "
                          f"{err}); give folders written by replay_eval") from None
    run = _Run(name, folder, summary)
    run.det_classes = list(summary.get("bundle", {}).get("class_names") or [])
    run.seg_classes = list(summary.get("bundle", {}).get("segmentation_classes") or [])
    try:
        with (folder / "frames.csv").open(newline="") as handle:
            for row in csv.DictReader(handle):
                run.frames[int(row["rgb_stamp_ns"])] = row["frame"]
    except (OSError, KeyError, ValueError) as err:
        raise ReplayError(f"{folder}/frames.csv: cannot read it: {err}") from None
    det_file = folder / "detections.json"
    if det_file.is_file():
        coco = json.loads(det_file.read_text())
        names = {c["id"]: c["name"] for c in coco.get("categories", [])}
        stamp_of = {img["id"]: int(img["stamp_ns"]) for img in coco.get("images", [])}
        for stamp in stamp_of.values():
            run.boxes.setdefault(stamp, [])
        for ann in coco.get("annotations", []):
            x, y, w, h = ann["bbox"]
            run.boxes[stamp_of[ann["image_id"]]].append(
                (names.get(ann["category_id"], str(ann["category_id"])), float(ann["score"]),
                 [x, y, x + w, y + h]))
    return run


def _fused_images(run: _Run, stamps: Sequence[int]) -> dict[int, np.ndarray]:
    """The fused frames of ``stamps``: from fused/ PNGs, else from the fused bag."""
    images: dict[int, np.ndarray] = {}
    for stamp in stamps:
        path = run.folder / "fused" / f"{run.frames[stamp]}.png"
        if path.is_file():
            images[stamp] = cv2.imread(str(path), cv2.IMREAD_COLOR)
    wanted = set(stamps) - set(images)
    bag = run.folder / "fused_bag"
    if wanted and bag.exists():
        from tdfusion_ros.bags.reader import _cdr_header
        from tdfusion_ros.bags.replay.compare import _iter_topic
        from tdfusion_ros.bags.replay.messages import _decode_image, fused_typestore

        store = fused_typestore()
        for raw in _iter_topic(bag, FUSED_IMAGE_TOPIC):
            stamp = _cdr_header(raw)[0]
            if stamp in wanted:
                encoding, image = _decode_image(store, raw)
                if encoding == "rgb8":
                    image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
                images[stamp] = image
                wanted.discard(stamp)
                if not wanted:
                    break
    return images


# --------------------------------------------------------------------------- disagreement
def _box_disagreement(a: list, b: list) -> tuple[float, int]:
    """1 - 2 * matched / (len(a) + len(b)); boxes matched by class at IoU >= MATCH_IOU."""
    if not a and not b:
        return 0.0, 0
    unused = sorted(range(len(b)), key=lambda j: -b[j][1])
    matched = 0
    for cls, _, box in sorted(a, key=lambda r: -r[1]):
        best, best_iou = None, MATCH_IOU
        for j in unused:
            if b[j][0] == cls:
                iou = _box_iou(box, b[j][2])
                if iou >= best_iou:
                    best, best_iou = j, iou
        if best is not None:
            unused.remove(best)
            matched += 1
    return 1.0 - 2.0 * matched / (len(a) + len(b)), matched


def _mask_disagreement(a: _Run, ma: np.ndarray, b: _Run, mb: np.ndarray) -> float | None:
    """Share of pixels whose class *name* differs (the runs' class lists may differ)."""
    if ma.shape != mb.shape:
        return None

    def names(run: _Run) -> np.ndarray:
        table = np.array([n.strip().lower() for n in run.seg_classes] + ["?"] * 256)[:256]
        return table

    na, nb = names(a), names(b)
    # compare through a joint id space: equal names -> equal ids
    vocab = {n: i for i, n in enumerate(dict.fromkeys([*na, *nb]))}
    ia = np.array([vocab[n] for n in na], np.int32)[ma]
    ib = np.array([vocab[n] for n in nb], np.int32)[mb]
    return float((ia != ib).mean())


def _per_frame(runs: Sequence[_Run], stamps: Sequence[int]) -> list[dict[str, Any]]:
    base = runs[0]
    rows = []
    for stamp in stamps:
        row: dict[str, Any] = {"stamp_ns": stamp, "frame": base.frames[stamp],
                               "detections": [len(r.boxes.get(stamp, [])) for r in runs],
                               "box_disagreement": [], "mask_disagreement": [], "unmatched": 0}
        for other in runs[1:]:
            if base.has_detector and other.has_detector:
                a, b = base.boxes.get(stamp, []), other.boxes.get(stamp, [])
                d, matched = _box_disagreement(a, b)
                row["unmatched"] = max(row["unmatched"], len(a) + len(b) - 2 * matched)
            else:
                d = None
            ma, mb = base.mask(stamp), other.mask(stamp)
            m = _mask_disagreement(base, ma, other, mb) if ma is not None and mb is not None \
                else None
            row["box_disagreement"].append(d)
            row["mask_disagreement"].append(m)
        parts = [v for v in (*row["box_disagreement"], *row["mask_disagreement"]) if v is not None]
        row["score"] = float(max(parts)) if parts else 0.0
        rows.append(row)
    return rows


# --------------------------------------------------------------------------- figures
def _side_by_side(values: Sequence[Mapping[str, Any]], keys: Sequence[str]
                  ) -> list[dict[str, Any]]:
    """Rows {name, values: [...], deltas: [...]} (deltas against the first run)."""
    rows = []
    for key in keys:
        vals = [v.get(key) for v in values]
        base = vals[0]
        deltas = [None if base is None or v is None else float(v) - float(base)
                  for v in vals[1:]]
        rows.append({"name": key, "values": vals, "deltas": deltas})
    return rows


def _union(lists: Sequence[Sequence[str]]) -> list[str]:
    return list(dict.fromkeys(n for names in lists for n in names))


def compare_replays(folders: Sequence[Path], out: Path, names: Sequence[str] | None = None,
                    samples: int = 4) -> dict[str, Any]:
    """Compare replay folders (the first is the baseline) and write the report into ``out``."""
    if len(folders) < 2:
        raise ReplayError("a comparison needs two or more replay folders")
    names = list(names or [])
    if names and len(names) != len(folders):
        raise ReplayError(f"{len(names)} names for {len(folders)} runs")
    if not names:
        names = _unique_names([Path(f).name for f in folders])
    runs = [load_run(Path(f), n) for f, n in zip(folders, names)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    bags = {str(r.summary.get("bag", {}).get("path")) for r in runs}
    if len(bags) > 1:
        warnings.append(f"the runs replayed different bags ({', '.join(sorted(bags))}): the "
                        "figures compare different data")
    stamps = sorted(set.intersection(*(set(r.frames) for r in runs)))
    for run in runs:
        if len(run.frames) != len(stamps):
            warnings.append(f"{run.name} processed {len(run.frames)} pairs, {len(stamps)} of "
                            "them in every run: frame comparisons use those")
    param_sets = {json.dumps(r.summary.get("config", {}).get("overrides", {}), sort_keys=True)
                  for r in runs}
    if len(param_sets) > 1:
        warnings.append("the runs used different --set overrides (see each run's "
                        "fusion_params.yaml)")

    det = [r.summary.get("detection_eval") or {} for r in runs]
    seg = [r.summary.get("segmentation_eval") or {} for r in runs]
    det_classes = _union([d.get("classes", []) for d in det])
    seg_classes = _union([s.get("classes", []) for s in seg])
    detection = {
        "AP50": _side_by_side([d.get("AP50", {}) for d in det], det_classes),
        "AP50-95": _side_by_side([d.get("AP50-95", {}) for d in det], det_classes),
        "summary": _side_by_side(det, ["mAP50", "mAP75", "mAP50-95"]),
        "num_gt": [d.get("num_gt", {}) for d in det],
        "deployed_conf": [d.get("deployed_conf") for d in det],
        "frames_evaluated": [d.get("frames_evaluated") for d in det],
    } if any(d.get("mAP50") is not None for d in det) else None
    segmentation = {
        "IoU": _side_by_side([s.get("IoU", {}) for s in seg], seg_classes),
        "summary": _side_by_side(seg, ["mIoU", "mAcc", "aAcc"]),
        "class_map": [s.get("class_map_file") for s in seg],
        "frames_evaluated": [s.get("frames_evaluated") for s in seg],
    } if any(s.get("mIoU") is not None for s in seg) else None
    timing = [r.summary.get("timing", {}) for r in runs]
    throughput = _side_by_side(timing, ["fps_replay", "fps_pipeline", "peak_rss_replay_mb"])
    stage_names = [s for s in STAGES if any(s in t.get("stages", {}) for t in timing)]
    latency = {q: _side_by_side([{k: v.get(q) for k, v in t.get("stages", {}).items()}
                                 for t in timing], stage_names) for q in ("p50", "p99")}

    frames = _per_frame(runs, stamps)
    n_other = len(runs) - 1
    agreement = []
    for i in range(n_other):
        boxes = [f["box_disagreement"][i] for f in frames if f["box_disagreement"][i] is not None]
        masks = [f["mask_disagreement"][i] for f in frames
                 if f["mask_disagreement"][i] is not None]
        agreement.append({
            "run": runs[i + 1].name, "frames": len(frames),
            "frames_with_different_detections": sum(1 for v in boxes if v > 0),
            "mean_box_disagreement": float(np.mean(boxes)) if boxes else None,
            "mean_mask_disagreement": float(np.mean(masks)) if masks else None,
            "frames_compared_boxes": len(boxes), "frames_compared_masks": len(masks)})
    # largest disagreement first; among equals, the frame with the most unmatched boxes
    worst = sorted((f for f in frames if f["score"] > 0),
                   key=lambda f: (-f["score"], -f["unmatched"], f["stamp_ns"]))
    picked = worst[:max(samples, 0)]
    (out / "comparison_samples").mkdir(exist_ok=True)
    sample_rows = []
    if picked:
        images = [_fused_images(r, [f["stamp_ns"] for f in picked]) for r in runs]
        for f in picked:
            file = _render_sample(runs, images, f, out / "comparison_samples")
            sample_rows.append({**f, "file": f"comparison_samples/{file}" if file else None})

    result = _jsonable({
        "tool": "tdfusion_ros replay_eval (bundle comparison)",
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "baseline": runs[0].name,
        "runs": [{"name": r.name, "folder": str(r.folder),
                  "bundle": r.summary.get("bundle", {}).get("path"),
                  "bag": r.summary.get("bag", {}).get("path"),
                  "frames": len(r.frames),
                  "detector_classes": r.det_classes, "segmenter_classes": r.seg_classes,
                  "deployed_conf": (r.summary.get("detection_eval") or {}).get("deployed_conf"),
                  "machine": r.summary.get("timing", {}).get("machine"),
                  "report": str(r.folder / "report.html")} for r in runs],
        "frames_in_every_run": len(stamps),
        "detection": detection, "segmentation": segmentation,
        "throughput": throughput, "latency_ms": latency,
        "agreement": agreement, "samples": sample_rows, "warnings": warnings,
        "note": ("Differences are each run minus the first (the baseline). AP and IoU are the "
                 "runs' own figures against the bag's labels (summary.json of each folder). "
                 "Disagreement compares what each run published: detections at its own "
                 f"deployed threshold, matched by class at IoU {MATCH_IOU}, 1 - 2 matched / "
                 "(boxes of both) per frame; segmentation, the share of pixels whose class "
                 "name differs. Sample frames are those with the largest disagreement."),
    })
    # each whole (tmp, fsync, rename), the JSON last
    write_text_whole(out / COMPARISON_HTML, render_html(result, out))
    write_text_whole(out / COMPARISON_MD, render_markdown(result))
    write_text_whole(out / COMPARISON_JSON, json.dumps(result, indent=1) + "\n")
    return result


def _unique_names(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        name = name or "run"
        candidate, k = name, 2
        while candidate in out:
            candidate, k = f"{name}_{k}", k + 1
        out.append(candidate)
    return out


def _render_sample(runs: Sequence[_Run], images: Sequence[dict[int, np.ndarray]],
                   frame: Mapping[str, Any], folder: Path) -> str | None:
    from tdfusion_ros.bags.replay.offline import _label_panel
    from tdfusion_ros.runtime.pipeline import overlay, palette

    stamp = frame["stamp_ns"]
    colours = palette()
    rows = []
    for run, imgs in zip(runs, images):
        fused = imgs.get(stamp)
        if fused is None:
            return None
        height, width = fused.shape[:2]
        scale = 320.0 / width if width < 320 else min(1.0, 360.0 / width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        boxed = fused.copy()
        for cls, score, (x1, y1, x2, y2) in run.boxes.get(stamp, []):
            k = run.det_classes.index(cls) if cls in run.det_classes else 0
            colour = tuple(int(c) for c in colours[(k % 255) + 1])
            cv2.rectangle(boxed, (round(x1), round(y1)), (round(x2), round(y2)), colour, 2)
            cv2.putText(boxed, f"{cls} {score:.2f}", (round(x1), max(10, round(y1) - 3)),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
        panels = [_label_panel(boxed, size, f"{run.name}: detections")]
        mask = run.mask(stamp)
        if mask is not None and mask.shape == fused.shape[:2]:
            panels.append(_label_panel(overlay(fused, mask), size, f"{run.name}: segmentation"))
        elif any(r.mask(stamp) is not None for r in runs):
            blank = np.full((size[1], size[0], 3), 64, np.uint8)
            panels.append(_label_panel(blank, size, f"{run.name}: no class map"))
        rows.append(np.concatenate(panels, axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    file = f"{frame['frame']}.jpg"
    imwrite(folder / file, np.concatenate(rows, axis=0), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return file


# --------------------------------------------------------------------------- rendering
class _Safe(str):
    """HTML this module wrote (a coloured difference), not to be escaped again."""


def _signed(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}"


def _rows(table: Sequence[Mapping[str, Any]], digits: int, higher_better: bool | None,
          html: bool) -> list[list[str]]:
    out = []
    for row in table:
        cells = [row["name"], _num(row["values"][0], digits)]
        for value, delta in zip(row["values"][1:], row["deltas"]):
            cells.append(_num(value, digits))
            text = _signed(delta, digits)
            if html and delta and higher_better is not None:
                good = (delta > 0) == higher_better
                text = _Safe(f"<span class='{'ok' if good else 'bad'}'>{text}</span>")
            cells.append(text)
        out.append(cells)
    return out


def _header(result: Mapping[str, Any], first: str) -> list[str]:
    names = [r["name"] for r in result["runs"]]
    head = [first, names[0]]
    for name in names[1:]:
        head += [name, f"{name} - {names[0]}"]
    return head


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Like report._table, but a cell may be the difference's coloured span (``_Safe``)."""
    def cell(c: str) -> str:
        return c if isinstance(c, _Safe) else _esc(c)

    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _sections(result: Mapping[str, Any], html: bool) -> list[tuple[str, str, list, list]]:
    """(title, text, header, rows) of every table, shared by the HTML and the Markdown."""
    out = []
    runs = result["runs"]
    out.append(("Runs", "The first run is the baseline; differences are each run minus it.",
                ["run", "bundle", "pairs", "detector classes", "deployed conf",
                 "segmenter classes", "folder"],
                [[r["name"], r["bundle"], str(r["frames"]), ", ".join(r["detector_classes"]),
                  _num(r["deployed_conf"], 2), ", ".join(r["segmenter_classes"]),
                  r["folder"]] for r in runs]))
    det = result.get("detection")
    if det:
        out.append(("Detection: AP50 per class", "Against the bag's labels, each run's own "
                    "figures (COCO mAP over the labelled pairs). AP ranks detections decoded "
                    "at --map-conf, so a bundle's deployed threshold does not change it; the "
                    "disagreement below compares the published detections.",
                    _header(result, "class"),
                    _rows(det["AP50"], 4, True, html) + _rows(det["summary"][:1], 4, True,
                                                              html)))
        out.append(("Detection: AP50-95 per class", "", _header(result, "class"),
                    _rows(det["AP50-95"], 4, True, html) + _rows(det["summary"][2:], 4, True,
                                                                 html)))
    seg = result.get("segmentation")
    if seg:
        maps = {m for m in seg["class_map"] if m}
        text = ("Pixel IoU against the bag's label maps"
                + (f", label classes mapped by {', '.join(sorted(maps))}" if maps else "")
                + ".")
        out.append(("Segmentation: IoU per class", text, _header(result, "class"),
                    _rows(seg["IoU"], 4, True, html) + _rows(seg["summary"], 4, True, html)))
    labels = {"fps_replay": "pairs/s, whole replay", "fps_pipeline": "pairs/s, pipeline alone",
              "peak_rss_replay_mb": "peak memory, MB"}
    throughput = [{**row, "name": labels.get(row["name"], row["name"])}
                  for row in result["throughput"]]
    out.append(("Throughput", "On the machine each run used. Runs made by one command ran one "
                "after the other, so a change in the machine's load between them shows here "
                "too: repeat the comparison before trusting a difference of a few per cent.",
                _header(result, ""), _rows(throughput[:2], 2, True, html)
                + _rows(throughput[2:], 0, False, html)))
    for q in ("p50", "p99"):
        out.append((f"Latency per stage, {q} (ms)", "", _header(result, "stage"),
                    _rows(result["latency_ms"][q], 2, False, html)))
    agree = result.get("agreement") or []
    out.append(("Where the runs disagree", result.get("note", ""),
                ["run (against the baseline)", "frames", "frames with different detections",
                 "mean box disagreement", "mean share of pixels with another class"],
                [[a["run"], str(a["frames"]), str(a["frames_with_different_detections"]),
                  _num(a["mean_box_disagreement"], 3), _num(a["mean_mask_disagreement"], 4)]
                 for a in agree]))
    return out


def render_html(result: Mapping[str, Any], folder: Path | None = None) -> str:
    names = [r["name"] for r in result["runs"]]
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             f"<title>Bundle comparison: {_esc(' vs '.join(names))}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Bundle comparison: {_esc(' vs '.join(names))}</h1>",
             f"<p class='muted'>{_esc(result.get('created', ''))} &middot; "
             f"{result.get('frames_in_every_run', 0)} pairs in every run &middot; bag "
             f"{_esc(result['runs'][0].get('bag'))}</p>"]
    for warning in result.get("warnings", []):
        parts.append(f"<div class='warn'>{_esc(warning)}</div>")
    for title, text, header, rows in _sections(result, html=True):
        parts.append(f"<h2>{_esc(title)}</h2>")
        if text:
            parts.append(f"<p>{_esc(text)}</p>")
        parts.append(_html_table(header, rows))
    samples = result.get("samples") or []
    parts.append("<h2>Frames where they disagree most</h2>")
    if not samples:
        parts.append("<p>The runs published the same detections and class maps on every "
                     "frame.</p>")
    for sample in samples:
        src = ""
        path = folder / sample["file"] if folder and sample.get("file") else None
        if path is not None and path.is_file():
            src = "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()
        boxes = ", ".join(_num(v, 2) for v in sample["box_disagreement"])
        masks = ", ".join(_num(v, 3) for v in sample["mask_disagreement"])
        caption = (f"frame {sample['frame']}: detections {sample['detections']} "
                   f"({' / '.join(names)}); box disagreement {boxes}; pixels with another "
                   f"class {masks}")
        parts.append(f"<figure><img class='sample' alt='{_esc(caption)}' src='{src}'>"
                     f"<figcaption>{_esc(caption)}</figcaption></figure>")
    parts.append("<h2>Each run's own report</h2><ul>" + "".join(
        f"<li>{_esc(r['name'])}: <code>{_esc(r['report'])}</code></li>"
        for r in result["runs"]) + "</ul></body></html>\n")
    return "".join(parts)


def render_markdown(result: Mapping[str, Any]) -> str:
    names = [r["name"] for r in result["runs"]]
    lines = [f"# Bundle comparison: {' vs '.join(names)}", "",
             f"{result.get('created', '')}, {result.get('frames_in_every_run', 0)} pairs in "
             f"every run, bag `{result['runs'][0].get('bag')}`", ""]
    for warning in result.get("warnings", []):
        lines.append(f"> **warning:** {warning}")
    for title, text, header, rows in _sections(result, html=False):
        lines += [f"## {title}", ""]
        if text:
            lines += [text, ""]
        lines += [_md_table(header, rows), ""]
    lines += ["Frames where they disagree most: `comparison.html` (images in "
              "`comparison_samples/`).", ""]
    return "\n".join(lines)
