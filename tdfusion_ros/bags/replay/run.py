"""One replay from options to report: set up, run offline (and live with --live), score, write
summary and report.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from tdfusion_ros.bags.replay.common import (
    EXIT_DAMAGED,
    EXIT_FAILED,
    EXIT_LIVE_DIFFERS,
    OutputWriteError,
    ReplayOptions,
    ReplayResult,
    _jsonable,
    _machine,
    _peak_rss_mb,
    write_text_whole,
)
from tdfusion_ros.bags.replay.inputs import _prepare_out, _setup
from tdfusion_ros.bags.replay.live import run_live
from tdfusion_ros.bags.replay.messages import fused_typestore
from tdfusion_ros.bags.replay.offline import _Offline
from tdfusion_ros.bags.replay.scoring import _detection_eval, _fusion_metrics, _segmentation_eval
from tdfusion_ros.ros import node_params
from tdfusion_ros.runtime.pairing import Stream


def _cleanup_tmp(out: Path) -> None:
    shutil.rmtree(out / ".replay_tmp", ignore_errors=True)


#: The report's files: written last, each whole, and removed again when the replay fails.
REPORT_FILES = ("report.html", "summary.md", "summary.json")


# --------------------------------------------------------------------------- entry point
def replay(opts: ReplayOptions, argv: Sequence[str] | None = None) -> ReplayResult:
    """Run the offline replay (and the live one with ``opts.live``), write outputs and report.

    Raises ReplayError (bad input, exit 2) or ReplayRunError (exit 1). An output that cannot
    be written (a full disk, a read-only folder) raises OutputWriteError naming its path; the
    folder is then left without a report (``report.html``, ``summary.md``, ``summary.json``),
    so an incomplete replay never looks like a finished one.
    """
    try:
        return _replay(opts, argv)
    except OutputWriteError as err:
        raise _without_report(Path(opts.out), err) from err


def _without_report(out: Path, err: OutputWriteError) -> OutputWriteError:
    """Remove what would make ``out`` look like a finished replay; the error, with what is
    left."""
    for name in REPORT_FILES:
        for path in (out / name, out / f"{name}.tmp"):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
    _cleanup_tmp(out)
    try:
        left = any(p.name != "fusion_params.yaml" for p in out.iterdir())
    except OSError:
        left = False
    tail = (f"; the outputs in {out} are incomplete and no report was written (fix that, "
            "then run again with --overwrite)" if left else "; nothing was written")
    return OutputWriteError(err.path, err.reason + tail, err.exit_code)


def _replay(opts: ReplayOptions, argv: Sequence[str] | None) -> ReplayResult:
    from tdfusion_ros.bags.replay import report

    opts.out = Path(opts.out)
    _prepare_out(opts.out, opts.overwrite)
    t_setup = time.perf_counter()
    setup = _setup(opts)
    fused_typestore()  # one-time costs out of the timed run
    from rosbags.rosbag2 import Reader, Writer  # noqa: F401
    load_s = time.perf_counter() - t_setup
    log = opts.log
    for warning in setup.warnings:
        log(f"warning: {warning}")
    log(f"replay: {opts.bag} ({setup.thermal_topic} + {setup.rgb_topic}) through "
        f"{setup.bundle} on {setup.pipeline.backend}; outputs in {opts.out}")
    run = _Offline(opts, setup)
    try:
        wall = run.run()
    except BaseException:
        setup.pipeline.close()
        raise
    rss_replay = _peak_rss_mb()  # before the metrics and mAP of the report
    reader = setup.reader
    damage = reader.damage.describe() if reader.damage is not None else None
    if damage:
        setup.warnings.append(damage)
        log(f"warning: {damage}; the outputs hold everything before the damage")
    skipped_by_stream: dict[str, dict[str, int]] = {}
    for topic, causes in reader.skipped_by_cause.items():
        # Counted as the node counts them: dropped on arrival, by stream and cause.
        stream = Stream.THERMAL if topic == setup.thermal_topic else Stream.RGB
        for cause, count in sorted(causes.items()):
            run.pairer.record_drop(stream, cause, count)
            per = skipped_by_stream.setdefault(stream.value, {})
            per[cause] = per.get(cause, 0) + count
    if reader.skipped_count:
        causes_text = "; ".join(
            f"{stream} {', '.join(f'{c} {n}' for c, n in causes.items())}"
            for stream, causes in sorted(skipped_by_stream.items()))
        text = (f"{reader.skipped_count} message(s) could not be decoded and were skipped "
                f"({causes_text}; first: {reader.skipped[0].reason})")
        setup.warnings.append(text)
        log(f"warning: {text}")
    if run.processed == 0:
        setup.warnings.append("no pair was processed: check the topics, sync.slop and "
                              "sync.thermal_offset (see the pairing drops)")
        log("warning: no pair was processed")

    stats = run.pairer.stats()
    stats["pair_errors"] = dict(run.pair_errors)
    stats["pairs"]["limited_by_max_pairs"] = (opts.max_pairs is not None
                                              and run.pairs_queued >= opts.max_pairs)
    metrics = _fusion_metrics(run)
    det_eval = _detection_eval(run)
    seg_eval = _segmentation_eval(run)
    _cleanup_tmp(opts.out)

    io_cpu = run.reader_cpu_s + run.writer_cpu_s
    io_share = io_cpu / run.process_cpu_s if run.process_cpu_s > 0 else None
    fps_replay = run.processed / wall if wall > 0 else None
    fps_pipeline = run.processed / run.process_s if run.process_s > 0 else None
    ratio = fps_replay / fps_pipeline if fps_replay and fps_pipeline else None
    timing_note = (
        f"{run.processed} pairs in {wall:.2f} s from the first read to the last write: "
        f"{fps_replay or 0:.2f} pairs/s; the pipeline alone took {run.process_s:.2f} s of "
        f"that ({fps_pipeline or 0:.2f} pairs/s), so reading, decoding and writing (in their "
        f"own threads) cost {100 * (1 - (ratio or 1)):.1f}% of the throughput. They used "
        f"{io_cpu:.2f} s of CPU (reader {run.reader_cpu_s:.2f} s, writer "
        f"{run.writer_cpu_s:.2f} s), {100 * (io_share or 0):.1f}% of the "
        f"{run.process_cpu_s:.2f} CPU-seconds of the run: the most inference can lose to "
        "them when it uses every core. Loading the "
        f"bundle and opening the bag took {load_s:.2f} s. read_decode and pairing are per "
        "message (reader thread), write per frame (writer thread; it includes decoding the "
        "detector output again at --map-conf for mAP and the IoU counts), queue_wait is how "
        "long the pipeline waited for its next pair; the others are the pipeline's stages.")
    bag_topics = [{"name": t.name, "type": t.msgtype, "count": t.count} for t in reader.topics]
    by_name = {t.name: t for t in reader.topics}
    summary: dict[str, Any] = {
        "tool": "tdfusion_ros replay_eval",
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "command": " ".join(["replay_eval", *(argv or [])]),
        "bag": {
            "path": str(opts.bag), "storage": _storage_name(opts.bag), "topics": bag_topics,
            "thermal_topic": setup.thermal_topic, "rgb_topic": setup.rgb_topic,
            "thermal_type": by_name[setup.thermal_topic].msgtype,
            "rgb_type": by_name[setup.rgb_topic].msgtype,
            "messages_read": reader.messages_read, "damage": damage,
            "skipped_messages": reader.skipped_count,
            "skipped_by_cause": skipped_by_stream,
            "recovery_note": reader.recovery_note,
        },
        "config": {
            "file": str(opts.config or node_params.default_config_path()),
            "overrides": dict(opts.overrides), "effective_file": str(setup.effective_config),
            "pairing": {"slop_s": setup.values["sync.slop"],
                        "thermal_offset_s": setup.values["sync.thermal_offset"],
                        "queue_size": setup.values["sync.queue_size"],
                        "max_rate_hz": setup.values["sync.max_rate"],
                        "policy": "every pair, in order (the node: newest pair)"},
            "notes": setup.notes,
        },
        "bundle": {"path": str(setup.bundle), "graphs": setup.pipeline.describe()
                   if setup.pipeline._engines else {},
                   "class_names": setup.pipeline.class_names,
                   "segmentation_classes": setup.pipeline.segmentation_classes,
                   "backend": setup.pipeline.backend},
        "outputs": _outputs(opts, run),
        "pairing": stats,
        "frames": {"processed": run.processed, "size": list(run.fused_size or ()) or None,
                   "detections": run.total_dets, "detections_per_class": run.det_per_class,
                   "video_fps": setup.fps, "thermal_16bit": run.ir16},
        "timing": {"wall_s": wall, "load_s": load_s, "pipeline_s": run.process_s,
                   "fps_replay": fps_replay, "fps_pipeline": fps_pipeline,
                   "replay_vs_pipeline": ratio, "stages": run.stages.summary(),
                   "cpu_s": {"process": run.process_cpu_s, "reader": run.reader_cpu_s,
                             "writer": run.writer_cpu_s, "io_share": io_share},
                   "timeline": {"index": run.timeline.xs, "total_ms": run.timeline.ys},
                   "peak_rss_replay_mb": rss_replay, "peak_rss_mb": _peak_rss_mb(),
                   "machine": _machine(),
                   "threads": setup.values["engine.threads"], "note": timing_note},
        "metrics": metrics,
        "detection_eval": det_eval,
        "segmentation_eval": seg_eval,
        "samples": run.samples,
        "live": None,
        "warnings": setup.warnings,
    }
    exit_code = 0
    if not opts.live:
        setup.pipeline.close()
    else:
        try:
            summary["live"] = run_live(opts, setup, summary)
        finally:
            setup.pipeline.close()
        if summary["live"].get("error"):
            exit_code = EXIT_FAILED
        elif not summary["live"].get("comparison", {}).get("agree"):
            exit_code = EXIT_LIVE_DIFFERS
    summary = _jsonable(summary)
    html_path, md_path = report.write_report(opts.out, summary)
    # last: summary.json is what marks the folder as a finished replay (--compare-runs)
    write_text_whole(opts.out / "summary.json", json.dumps(summary, indent=1) + "\n")
    if damage and exit_code == 0 and opts.fail_on_damage:
        exit_code = EXIT_DAMAGED
    return ReplayResult(opts.out, summary, html_path, md_path, exit_code)


def _storage_name(bag: Path) -> str:
    bag = Path(bag)
    if bag.suffix == ".mcap":
        return "mcap"
    if bag.suffix == ".db3":
        return "sqlite3"
    try:
        info = yaml.safe_load((bag / "metadata.yaml").read_text())
        return str(info["rosbag2_bagfile_information"]["storage_identifier"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "?"


def _outputs(opts: ReplayOptions, run: _Offline) -> dict[str, str | None]:
    out = opts.out
    pipe = run.s.pipeline
    return {
        "report": str(out / "report.html"),
        "summary": str(out / "summary.md"),
        "video": str(out / "fused.mp4") if opts.video and run.video_frames else None,
        "png_frames": str(out / "fused") if opts.png else None,
        "masks": str(out / "masks") if opts.masks and pipe.segmentation_enabled else None,
        "detections": str(out / "detections.json"),
        "bag": str(out / "fused_bag") if opts.output_bag else None,
        "frames_table": str(out / "frames.csv"),
        "parameters": str(out / "fusion_params.yaml"),
        "samples": str(out / "samples"),
    }
