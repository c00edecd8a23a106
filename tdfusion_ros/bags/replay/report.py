"""The replay evaluation's report: ``report.html`` (self-contained, inline SVG plots and
embedded sample frames) and ``summary.md``, both written from the summary dictionary that
``tdfusion_ros.replay`` also saves as ``summary.json``.

Why no plotting library: the runtime install (``requirements/runtime.txt``) has none, and a
report that opens anywhere without network access or a second folder is what a user mails to a
colleague. The plots are plain SVG written here; sample frames are JPEGs embedded as data URIs
(they are also in ``samples/`` next to the report).

Nothing here computes a number: every figure comes from the summary, so the HTML, the Markdown
and the JSON always agree.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tdfusion_ros.bags.replay.common import write_text_whole

__all__ = ["bar_chart", "line_chart", "pair_strip", "render_html", "render_markdown",
           "write_report"]

REPORT_HTML = "report.html"
SUMMARY_MD = "summary.md"
METRIC_NAMES = ("EN", "SF", "SCD", "VIF", "Qabf", "SSIM")
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;
max-width:1180px;color:#222;line-height:1.4;padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:32px}h3{margin-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.muted{color:#666}.warn{background:#fff4e5;border-left:4px solid #f0a000;padding:6px 10px;
margin:6px 0}.ok{color:#187a2f}.bad{color:#b00020}
.grid{display:flex;flex-wrap:wrap;gap:14px}.grid>div{flex:0 0 auto}
figure{margin:8px 0}figcaption{font-size:.9em;color:#555}img.sample{max-width:100%;
border:1px solid #ccc}code{background:#f4f4f4;padding:0 3px}
svg text{font-family:system-ui,sans-serif}
"""


# --------------------------------------------------------------------------- formatting
def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    """Numbers for tables: fixed significant digits, '-' for missing, 'nan' kept."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.{digits}f}" if abs(value) < 10 else f"{value:.{max(digits - 2, 1)}f}"
    return str(value)


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def _nice_ticks(lo: float, hi: float, count: int = 4) -> list[float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    ticks = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


# --------------------------------------------------------------------------- SVG plots
def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], *,
               title: str = "", xlabel: str = "", ylabel: str = "", width: int = 540,
               height: int = 200, markers: bool = False) -> str:
    """An SVG line chart of (name, xs, ys) series; non-finite points are left out."""
    left, right, top, bottom = 56, 12, 24 if title else 10, 36
    pw, ph = width - left - right, height - top - bottom
    xs_all = [x for _, xs, ys in series for x, y in zip(xs, ys)
              if y is not None and math.isfinite(float(y))]
    ys_all = [float(y) for _, _, ys in series for y in ys
              if y is not None and math.isfinite(float(y))]
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    if title:
        parts.append(f'<text x="{left}" y="15" font-size="13" font-weight="600">'
                     f'{_esc(title)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" '
                 'stroke="#999"/>')
    if not xs_all:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" '
                     'font-size="12" fill="#888">no data</text></svg>')
        return "".join(parts)
    x0, x1 = min(xs_all), max(xs_all)
    y0, y1 = min(ys_all), max(ys_all)
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        pad = abs(y0) * 0.05 or 0.5
        y0, y1 = y0 - pad, y1 + pad
    else:
        pad = (y1 - y0) * 0.05
        y0, y1 = y0 - pad, y1 + pad

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    for t in _nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
                     'stroke="#eee"/><text x="{0}" y="{1:.1f}" font-size="10" '
                     'text-anchor="end">{2}</text>'.format(left - 4, py(t) + 3, _tick_label(t)))
    for t in _nice_ticks(x0, x1, 5):
        parts.append(f'<text x="{px(t):.1f}" y="{top + ph + 13}" font-size="10" '
                     f'text-anchor="middle">{_tick_label(t)}</text>')
    for i, (name, xs, ys) in enumerate(series):
        colour = _COLOURS[i % len(_COLOURS)]
        points = [(px(float(x)), py(float(y))) for x, y in zip(xs, ys)
                  if y is not None and math.isfinite(float(y))]
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.4" '
                         f'points="{path}"/>')
        if markers or len(points) == 1:
            parts.extend(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.2" fill="{colour}"/>'
                         for x, y in points)
        if len(series) > 1:
            ly = top + 12 + 13 * i
            parts.append(f'<text x="{left + pw - 6}" y="{ly}" font-size="10" '
                         f'text-anchor="end" fill="{colour}">{_esc(name)}</text>')
    if xlabel:
        parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" font-size="11" '
                     f'text-anchor="middle">{_esc(xlabel)}</text>')
    if ylabel:
        parts.append(f'<text x="12" y="{top + ph / 2}" font-size="11" text-anchor="middle" '
                     f'transform="rotate(-90 12 {top + ph / 2})">{_esc(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str = "",
              xlabel: str = "", ylabel: str = "", width: int = 540, height: int = 200,
              horizontal: bool = False, colour: str = _COLOURS[0]) -> str:
    """An SVG bar chart (vertical bars, or horizontal ones with the labels at the left)."""
    values = [0.0 if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    top = 24 if title else 10
    parts = []
    if horizontal:
        left = 12 + 7 * max((len(str(lab)) for lab in labels), default=4)
        bar_h = 16
        height = top + bar_h * len(labels) + 26
        pw = width - left - 70
        vmax = max(values, default=0.0) or 1.0
        parts.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
                     f'height="{height}" viewBox="0 0 {width} {height}" role="img">')
        if title:
            parts.append(f'<text x="4" y="15" font-size="13" font-weight="600">'
                         f'{_esc(title)}</text>')
        for i, (label, value) in enumerate(zip(labels, values)):
            y = top + i * bar_h
            w = value / vmax * pw
            parts.append(f'<text x="{left - 4}" y="{y + 12}" font-size="11" '
                         f'text-anchor="end">{_esc(label)}</text>'
                         f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{bar_h - 4}" '
                         f'fill="{colour}"/><text x="{left + w + 4:.1f}" y="{y + 12}" '
                         f'font-size="10">{_tick_label(value)}</text>')
        if xlabel:
            parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" font-size="11" '
                         f'text-anchor="middle">{_esc(xlabel)}</text>')
        parts.append("</svg>")
        return "".join(parts)
    left, right, bottom = 56, 12, 40
    pw, ph = width - left - right, height - top - bottom
    vmax = max(values, default=0.0) or 1.0
    parts.append(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
                 f'viewBox="0 0 {width} {height}" role="img">')
    if title:
        parts.append(f'<text x="{left}" y="15" font-size="13" font-weight="600">'
                     f'{_esc(title)}</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" '
                 'stroke="#999"/>')
    for t in _nice_ticks(0.0, vmax):
        y = top + ph - t / vmax * ph
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#eee"/><text x="{left - 4}" y="{y + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{_tick_label(t)}</text>')
    n = max(len(values), 1)
    slot = pw / n
    every = max(1, math.ceil(n / 10))
    for i, (label, value) in enumerate(zip(labels, values)):
        h = value / vmax * ph
        x = left + i * slot
        parts.append(f'<rect x="{x + slot * 0.08:.1f}" y="{top + ph - h:.1f}" '
                     f'width="{slot * 0.84:.1f}" height="{h:.1f}" fill="{colour}">'
                     f'<title>{_esc(label)}: {_tick_label(value)}</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x + slot / 2:.1f}" y="{top + ph + 13}" font-size="9" '
                         f'text-anchor="middle">{_esc(label)}</text>')
    if xlabel:
        parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" font-size="11" '
                     f'text-anchor="middle">{_esc(xlabel)}</text>')
    if ylabel:
        parts.append(f'<text x="12" y="{top + ph / 2}" font-size="11" text-anchor="middle" '
                     f'transform="rotate(-90 12 {top + ph / 2})">{_esc(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def pair_strip(n_pairs: int, processed: Sequence[int], *, width: int = 900) -> str:
    """One cell per offline pair: filled where the live node processed it too."""
    done = set(processed)
    left, top, cell_h = 4, 22, 18
    cell_w = (width - 2 * left) / max(n_pairs, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{top + cell_h + 18}" role="img">',
             '<text x="4" y="14" font-size="13" font-weight="600">pairs of the offline run '
             f'(left to right): processed by the node ({len(done)}) or skipped '
             f'({n_pairs - len(done)})</text>']
    if cell_w >= 2:
        for i in range(n_pairs):
            colour = _COLOURS[2] if i in done else "#e6e6e6"
            parts.append(f'<rect x="{left + i * cell_w:.2f}" y="{top}" '
                         f'width="{max(cell_w - 0.6, 0.6):.2f}" height="{cell_h}" '
                         f'fill="{colour}"><title>pair {i}</title></rect>')
    else:  # too many pairs for one cell each: share of processed pairs per pixel column
        columns = width - 2 * left
        counts = [0] * columns
        for i in done:
            counts[min(columns - 1, int(i * columns / n_pairs))] += 1
        per = n_pairs / columns
        for c, k in enumerate(counts):
            shade = int(230 - 150 * min(1.0, k / per))
            parts.append(f'<rect x="{left + c}" y="{top}" width="1" height="{cell_h}" '
                         f'fill="rgb({shade},{min(255, shade + 40)},{shade})"/>')
    parts.append(f'<text x="{left}" y="{top + cell_h + 13}" font-size="10">0</text>'
                 f'<text x="{width - left}" y="{top + cell_h + 13}" font-size="10" '
                 f'text-anchor="end">{n_pairs - 1}</text></svg>')
    return "".join(parts)


# --------------------------------------------------------------------------- tables
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- sections (data)
def _overview_rows(s: Mapping[str, Any]) -> list[tuple[str, str]]:
    bag, frames, timing = s.get("bag", {}), s.get("frames", {}), s.get("timing", {})
    pairs = s.get("pairing", {}).get("pairs", {})
    size = frames.get("size")
    rows = [
        ("bag", f"{bag.get('path')} ({bag.get('storage', '?')})"),
        ("thermal topic", f"{bag.get('thermal_topic')} [{bag.get('thermal_type')}]"),
        ("RGB topic", f"{bag.get('rgb_topic')} [{bag.get('rgb_type')}]"),
        ("config", str(s.get("config", {}).get("file"))),
        ("model bundle", str(s.get("bundle", {}).get("path"))),
        ("backend", str(s.get("bundle", {}).get("backend"))),
        ("pairs formed / processed", f"{pairs.get('formed', 0)} / {frames.get('processed', 0)}"),
        ("fused size", f"{size[0]}x{size[1]}" if size else "-"),
        ("throughput (replay)", f"{_num(timing.get('fps_replay'))} pairs/s"),
        ("throughput (pipeline alone, same run)",
         f"{_num(timing.get('fps_pipeline'))} pairs/s"),
        ("peak memory (RSS): replay / with the report's metrics",
         f"{_num(timing.get('peak_rss_replay_mb'))} / {_num(timing.get('peak_rss_mb'))} MB"),
        ("machine", str(timing.get("machine", "-"))),
    ]
    if bag.get("damage"):
        rows.append(("bag damage", bag["damage"]))
    return rows


def _drop_rows(s: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    pairing = s.get("pairing", {})
    rows: list[tuple[str, str, int]] = []
    for stream, stats in pairing.get("streams", {}).items():
        for reason, count in stats.get("dropped", {}).items():
            rows.append((stream, reason, int(count)))
    for reason, count in pairing.get("pairs", {}).items():
        if reason not in ("formed", "admitted", "taken", "pending") and count:
            rows.append(("pair", reason, int(count)))
    for reason, count in pairing.get("pair_errors", {}).items():
        rows.append(("pair", f"pipeline refused: {reason}", int(count)))
    return rows


def _stream_rows(s: Mapping[str, Any]) -> list[list[Any]]:
    rows = []
    for stream, st in s.get("pairing", {}).get("streams", {}).items():
        rows.append([stream, st.get("received", 0), st.get("accepted", 0), st.get("paired", 0),
                     sum(st.get("dropped", {}).values())])
    return rows


def _stage_rows(s: Mapping[str, Any]) -> list[list[str]]:
    stages = s.get("timing", {}).get("stages", {})
    return [[stage, _ms(v.get("mean")), _ms(v.get("p50")), _ms(v.get("p99")), _ms(v.get("max")),
             str(v.get("count", ""))] for stage, v in stages.items()]


def _metric_rows(s: Mapping[str, Any]) -> list[list[str]]:
    metrics = s.get("metrics") or {}
    means = metrics.get("means") or {}
    return [[name, _num(means.get(name), 4)] for name in METRIC_NAMES if name in means]


def _map_rows(det: Mapping[str, Any]) -> list[list[str]]:
    rows = [[name, _num(det.get("AP50", {}).get(name), 4),
             _num(det.get("AP50-95", {}).get(name), 4), str(det.get("num_gt", {}).get(name, 0))]
            for name in det.get("classes", [])]
    rows.append(["all (mean)", _num(det.get("mAP50"), 4), _num(det.get("mAP50-95"), 4),
                 str(sum(det.get("num_gt", {}).values()))])
    return rows


def _iou_rows(seg: Mapping[str, Any]) -> list[list[str]]:
    rows = [[name, _num(seg.get("IoU", {}).get(name), 4), _num(seg.get("Acc", {}).get(name), 4),
             str(seg.get("label_pixels", {}).get(name, 0))] for name in seg.get("classes", [])]
    rows.append(["all (mean)", _num(seg.get("mIoU"), 4), _num(seg.get("mAcc"), 4),
                 str(sum(seg.get("label_pixels", {}).values()))])
    return rows


def _live_rows(live: Mapping[str, Any]) -> list[tuple[str, str]]:
    cmp_ = live.get("comparison") or {}
    rows = [
        ("playback speed", f"{float(live.get('speed') or 1.0):g}x the recorded rate"),
        ("messages played", str(live.get("played", 0))),
        ("node outputs (fused images)", str(live.get("outputs", {}).get("image", 0))),
        ("offline pairs", str(cmp_.get("offline_pairs", "-"))),
        ("pairs processed by both", str(cmp_.get("both", "-"))),
        ("pairs skipped by the node", str(cmp_.get("skipped_by_node", "-"))),
        ("node outputs not among offline pairs", str(cmp_.get("live_only", "-"))),
        ("fused images identical within 1/255",
         f"{cmp_.get('images_equal', '-')} of {cmp_.get('both', '-')} "
         f"(max abs difference {cmp_.get('image_max_abs_diff', '-')})"),
        ("detections equal (classes, IoU > 0.99)",
         f"{cmp_.get('detections_equal', '-')} of {cmp_.get('detections_compared', '-')}"),
        ("segmentation identical", f"{cmp_.get('segmentation_equal', '-')} of "
                                   f"{cmp_.get('segmentation_compared', '-')}"),
        ("end-to-end latency p50 / p99 (publish -> fused image received)",
         f"{_ms(live.get('latency_ms', {}).get('p50'))} / "
         f"{_ms(live.get('latency_ms', {}).get('p99'))} ms"),
        ("node exit code", str(live.get("node_exit"))),
        ("verdict", "agree" if cmp_.get("agree") else "DIFFER"),
    ]
    return rows


# --------------------------------------------------------------------------- HTML
def render_html(s: Mapping[str, Any], sample_dir: Path | None = None) -> str:
    """The report page for a summary; sample images are read from ``sample_dir``."""
    out: list[str] = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
                      "<title>TDFusion replay report</title>",
                      f"<style>{_CSS}</style></head><body>",
                      "<h1>TDFusion rosbag replay report</h1>",
                      f"<p class='muted'>{_esc(s.get('created', ''))} &middot; "
                      f"{_esc(s.get('command', ''))}</p>"]
    for warning in s.get("warnings", []):
        out.append(f"<div class='warn'>{_esc(warning)}</div>")
    for note in s.get("config", {}).get("notes", []):
        out.append(f"<p class='muted'>note: {_esc(note)}</p>")

    out.append("<h2>Overview</h2>")
    out.append(_table(["", ""], _overview_rows(s)))
    outputs = s.get("outputs", {})
    if outputs:
        out.append("<h3>Output files</h3>")
        out.append(_table(["output", "path"], [(k, v) for k, v in outputs.items() if v]))

    # ---- fusion metrics
    metrics = s.get("metrics") or {}
    out.append("<h2>Fusion quality</h2>")
    if metrics.get("frames"):
        out.append(f"<p>{_esc(metrics.get('note', ''))}</p>")
        out.append(_table(["metric", "mean"], _metric_rows(s)))
        series = metrics.get("series", {})
        xs = series.get("time_s") or series.get("index") or []
        out.append("<div class='grid'>")
        for name in METRIC_NAMES:
            if name in series:
                out.append("<div>" + line_chart([(name, xs, series[name])], title=name,
                                                 xlabel="bag time (s)", width=370, height=170,
                                                 markers=len(xs) < 40) + "</div>")
        out.append("</div>")
    else:
        out.append(f"<p>{_esc(metrics.get('note', 'not computed'))}</p>")

    # ---- detection accuracy
    det = s.get("detection_eval")
    out.append("<h2>Detection accuracy</h2>")
    if det:
        out.append(f"<p>{_esc(det.get('note', ''))}</p>")
        if det.get("mAP50") is not None:
            out.append(_table(["class", "AP50", "AP50-95", "ground-truth boxes"],
                              _map_rows(det)))
    else:
        out.append("<p>No labels given (pass <code>--labels</code>, or keep "
                   "<code>labels.json</code> next to the bag): no mAP.</p>")
    per_class = s.get("frames", {}).get("detections_per_class") or {}
    if per_class:
        out.append(bar_chart(list(per_class), list(per_class.values()),
                             title="detections per class (all processed frames)",
                             horizontal=True, width=480))
    seg = s.get("segmentation_eval")
    if seg:
        out.append("<h2>Segmentation accuracy</h2>")
        out.append(f"<p>{_esc(seg.get('note', ''))}</p>")
        if seg.get("mIoU") is not None:
            out.append(_table(["class", "IoU", "accuracy", "labelled pixels"], _iou_rows(seg)))

    # ---- pairing
    pairing = s.get("pairing", {})
    out.append("<h2>Pairing</h2>")
    cfg = s.get("config", {}).get("pairing", {})
    if cfg:
        out.append("<p>" + ", ".join(f"{_esc(k)} = {_esc(v)}" for k, v in cfg.items())
                   + "</p>")
    out.append(_table(["stream", "received", "accepted", "paired", "dropped"],
                      _stream_rows(s)))
    drops = _drop_rows(s)
    out.append("<h3>Drops by cause</h3>")
    out.append(_table(["what", "cause", "count"], drops) if drops else "<p>none</p>")
    diff = pairing.get("stamp_diff", {})
    hist = diff.get("histogram") or {}
    if hist.get("counts"):
        edges = hist["edges_ns"]
        labels = [f"{(edges[i] + edges[i + 1]) / 2e6:.1f}" for i in range(len(edges) - 1)]
        out.append(bar_chart(labels, hist["counts"],
                             title="stamp difference of pairs, RGB - (thermal + offset)",
                             xlabel="ms (bin centre)", ylabel="pairs", width=620))
        out.append("<p class='muted'>" + ", ".join(
            f"{k} {_ms(diff.get(k + '_ns', 0) / 1e6 if diff.get(k + '_ns') is not None else None)}"
            " ms" for k in ("mean", "min", "max", "p50", "p99")) + "</p>")

    # ---- timing
    timing = s.get("timing", {})
    out.append("<h2>Latency and throughput on this machine</h2>")
    out.append(f"<p>{_esc(timing.get('note', ''))}</p>")
    out.append(_table(["stage", "mean ms", "p50 ms", "p99 ms", "max ms", "frames"],
                      _stage_rows(s)))
    stages = timing.get("stages", {})
    engine_like = [k for k in stages if k not in ("total", "process_wall")]
    if engine_like:
        out.append(bar_chart(engine_like, [stages[k].get("mean") for k in engine_like],
                             title="mean time per stage (ms)", horizontal=True, width=560))
    timeline = timing.get("timeline") or {}
    if timeline.get("index"):
        out.append(line_chart([("pipeline total", timeline["index"], timeline["total_ms"])],
                              title="pipeline time per pair", xlabel="pair",
                              ylabel="ms", width=620))

    # ---- samples
    samples = s.get("samples") or []
    if samples:
        out.append("<h2>Sample frames</h2><p class='muted'>thermal (as fed to the network) | "
                   "RGB | fused with detections (labels dashed, when given) | segmentation "
                   "overlay</p>")
        for sample in samples:
            src = ""
            path = (sample_dir / sample["file"]) if sample_dir else None
            if path is not None and path.is_file():
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                src = f"data:image/jpeg;base64,{data}"
            caption = (f"pair {sample['index']}, RGB stamp {sample['stamp_ns']} ns, "
                       f"{sample.get('detections', 0)} detection(s)")
            out.append(f"<figure><img class='sample' alt='{_esc(caption)}' src='{src}'>"
                       f"<figcaption>{_esc(caption)}</figcaption></figure>")

    # ---- live
    live = s.get("live")
    if live:
        out.append("<h2>Live run versus offline</h2>")
        out.append(f"<p>{_esc(live.get('note', ''))}</p>")
        if live.get("error"):
            out.append(f"<div class='warn'>{_esc(live['error'])}</div>")
        out.append(_table(["", ""], _live_rows(live)))
        cmp_ = live.get("comparison") or {}
        if cmp_.get("offline_pairs"):
            out.append(pair_strip(cmp_["offline_pairs"], cmp_.get("node_processed") or []))
        skipped = cmp_.get("skipped_stamps") or []
        if skipped:
            out.append("<p class='muted'>first pairs skipped by the node (RGB stamps, ns): "
                       + _esc(", ".join(str(v) for v in skipped[:30])) + "</p>")
        mismatches = cmp_.get("mismatches") or []
        if mismatches:
            out.append("<h3>Differences</h3>")
            out.append(_table(["RGB stamp", "what"], [(m["stamp_ns"], m["what"])
                                                      for m in mismatches[:50]]))
        node_counters = {k: v for k, v in (live.get("node_counters") or {}).items()
                         if not k.startswith(("processing: engine.", "processing: latency."))
                         or any(f"latency.{stage}." in k for stage in
                                ("total", "inference", "overhead", "end_to_end"))}
        if node_counters:
            out.append("<h3>The node's own counters (last /diagnostics)</h3>")
            out.append(_table(["counter", "value"], sorted(node_counters.items())))
    out.append("</body></html>\n")
    return "".join(out)


# --------------------------------------------------------------------------- Markdown
def render_markdown(s: Mapping[str, Any]) -> str:
    lines = ["# TDFusion rosbag replay summary", "",
             f"{s.get('created', '')}, `{s.get('command', '')}`", ""]
    for warning in s.get("warnings", []):
        lines.append(f"> **warning:** {warning}")
    for note in s.get("config", {}).get("notes", []):
        lines.append(f"> note: {note}")
    if s.get("warnings") or s.get("config", {}).get("notes"):
        lines.append("")
    lines += [_md_table(["", ""], _overview_rows(s)), ""]
    metrics = s.get("metrics") or {}
    lines += ["## Fusion quality", "", metrics.get("note", "not computed"), ""]
    if metrics.get("frames"):
        lines += [_md_table(["metric", "mean"], _metric_rows(s)), ""]
    det = s.get("detection_eval")
    lines += ["## Detection accuracy", ""]
    if det:
        lines += [det.get("note", ""), ""]
        if det.get("mAP50") is not None:
            lines += [_md_table(["class", "AP50", "AP50-95", "GT boxes"], _map_rows(det)), ""]
    else:
        lines += ["No labels given: no mAP.", ""]
    seg = s.get("segmentation_eval")
    if seg:
        lines += ["## Segmentation accuracy", "", seg.get("note", ""), ""]
        if seg.get("mIoU") is not None:
            lines += [_md_table(["class", "IoU", "accuracy", "labelled pixels"],
                                _iou_rows(seg)), ""]
    lines += ["## Pairing", "",
              _md_table(["stream", "received", "accepted", "paired", "dropped"],
                        _stream_rows(s)), ""]
    drops = _drop_rows(s)
    lines += ["Drops by cause:", "",
              _md_table(["what", "cause", "count"], drops) if drops else "none", ""]
    timing = s.get("timing", {})
    lines += ["## Latency and throughput", "", timing.get("note", ""), "",
              _md_table(["stage", "mean ms", "p50 ms", "p99 ms", "max ms", "frames"],
                        _stage_rows(s)), ""]
    live = s.get("live")
    if live:
        lines += ["## Live run versus offline", "", live.get("note", ""), ""]
        if live.get("error"):
            lines += [f"> **live run failed:** {live['error']}", ""]
        lines += [_md_table(["", ""], _live_rows(live)), ""]
    lines += ["Full report with plots and sample frames: `report.html`.", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, summary: Mapping[str, Any]) -> tuple[Path, Path]:
    """Write ``report.html`` and ``summary.md`` into ``out_dir``, each whole or not at all
    (``common.write_text_whole``); returns both paths."""
    out_dir = Path(out_dir)
    html_path = out_dir / REPORT_HTML
    md_path = out_dir / SUMMARY_MD
    write_text_whole(html_path, render_html(summary, out_dir))
    write_text_whole(md_path, render_markdown(summary))
    return html_path, md_path
