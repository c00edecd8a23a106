"""Command line of ``python -m tdfusion_ros.replay`` / ``ros2 run tdfusion_ros replay_eval``.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from tdfusion_ros import paths
from tdfusion_ros.bags.reader import (
    BagDamageWarning,
    BagReadError,
    format_topics,
)
from tdfusion_ros.bags.replay.common import (
    EXIT_BAD_INPUT,
    EXIT_DAMAGED,
    ReplayError,
    ReplayOptions,
)
from tdfusion_ros.bags.replay.inputs import _parse_override
from tdfusion_ros.bags.replay.run import replay
from tdfusion_ros.bags.replay.versus import (
    COMPARISON_HTML,
    COMPARISON_JSON,
    _unique_names,
    compare_replays,
)
from tdfusion_ros.ros import node_params


# =========================================================================== command line
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=paths.program_name("tdfusion_ros.replay"),
        description="Replay a rosbag through the fusion pipeline (offline, and live into the "
                    "node with --live) and write fused video, detections, masks, a bag of "
                    "the node's outputs and an HTML report.",
        epilog="Exit status: 0 done, 1 failed while running, 2 bad arguments or input, "
               "3 damaged bag with --fail-on-damage, 4 live and offline runs differ.")
    parser.add_argument("bag", type=Path, nargs="?",
                        help="rosbag2 folder, .mcap or .db3 file")
    parser.add_argument("--thermal-topic", help="thermal image topic (default: "
                        "/thermal/image_raw, or the one topic that looks thermal)")
    parser.add_argument("--rgb-topic", help="RGB image topic (default: /rgb/image_raw[/"
                        "compressed], or the one topic that looks like RGB)")
    parser.add_argument("--list-topics", action="store_true",
                        help="print the bag's topics and exit")
    parser.add_argument("--config", type=Path, help="the node's parameters file (default: "
                        "config/fusion.yaml of the package)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="NAME=VALUE", help="override a node parameter, e.g. "
                        "--set sync.slop=0.03 (repeatable)")
    parser.add_argument("--bundle", type=Path, action="append",
                        help="model bundle folder (default: the config's, i.e. "
                             "models/default); give it two or more times to compare bundles "
                             "on the bag (one replay each in OUT/<name>/, and "
                             "OUT/comparison.html)")
    parser.add_argument("--compare-runs", type=Path, nargs="+", metavar="DIR",
                        help="compare replay folders written earlier (no BAG; the first is "
                             "the baseline) into OUT/comparison.html")
    parser.add_argument("--names", help="comma-separated names of the compared runs "
                        "(default: the bundle or folder names)")
    parser.add_argument("--backend", choices=node_params.BY_NAME["backend"].choices,
                        help="inference backend (default: the config's)")
    parser.add_argument("--offset-from-bag", action="store_true",
                        help="pair with the thermal offset recorded by the bag builder")
    parser.add_argument("--labels", type=Path, help="labels sidecar (default: labels.json "
                        "next to the bag, if there)")
    parser.add_argument("--no-labels", action="store_true", help="ignore labels.json")
    parser.add_argument("--predictions-from-labels", action="store_true",
                        help="debug: score the labels themselves as predictions (mAP 1, "
                             "IoU 1)")
    parser.add_argument("--map-conf", type=float, default=0.001, metavar="CONF",
                        help="confidence at which detections are decoded for mAP (default "
                             "0.001; published detections keep the node's threshold)")
    parser.add_argument("--seg-class-map", type=Path, metavar="FILE",
                        help="YAML map of label classes to segmenter classes (null: ignore), "
                             "applied to the label maps before mIoU; a bare name is looked "
                             "up in the package's config/ (e.g. scenes_to_mfnet: generated "
                             "scenes onto MFNet's classes). Default: match names as they are")
    parser.add_argument("--out", type=Path, help="output folder (default: "
                        "outputs/replay/<bag name>)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier replay in --out")
    parser.add_argument("--png", action="store_true", help="also write fused/<frame>.png")
    parser.add_argument("--no-video", action="store_true", help="no fused.mp4")
    parser.add_argument("--no-masks", action="store_true", help="no masks/<frame>.png")
    parser.add_argument("--no-bag", action="store_true", help="no fused_bag/")
    parser.add_argument("--fps", type=float, help="video frame rate (default: the bag's pair "
                        "rate)")
    parser.add_argument("--metrics-frames", type=int, default=100, metavar="N",
                        help="fusion metrics on at most N evenly spaced pairs (0: none, -1: "
                             "all; default 100)")
    parser.add_argument("--samples", type=int, default=4, metavar="N",
                        help="sample frames in the report (default 4)")
    parser.add_argument("--max-pairs", type=int, metavar="N", help="stop after N pairs")
    parser.add_argument("--fail-on-damage", action="store_true",
                        help="exit 3 when the bag is damaged (default: warn, exit 0)")
    parser.add_argument("--live", action="store_true",
                        help="also play the bag into the node over DDS and compare")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="live playback rate factor (default 1: recorded rate)")
    parser.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID of the live run "
                        "(default: a private one derived from the process id)")
    parser.add_argument("--live-timeout", type=float, default=120.0,
                        help="seconds to wait for the node to start (default 120)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.list_topics:
        if args.bag is None:
            parser.error("--list-topics needs a BAG")
        try:
            from tdfusion_ros.bags.reader import list_topics

            print(f"{args.bag}:\n{format_topics(list_topics(args.bag))}")
            return 0
        except BagReadError as err:
            print(f"error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
    if args.speed <= 0:
        parser.error("--speed must be > 0")
    if args.max_pairs is not None and args.max_pairs < 1:
        parser.error("--max-pairs must be >= 1")
    if not 0.0 <= args.map_conf <= 1.0:
        parser.error("--map-conf must be in [0, 1]")
    if args.max_pairs is not None and args.live:
        parser.error("--live plays the whole bag: it cannot be combined with --max-pairs")
    try:
        overrides = dict(_parse_override(text) for text in args.overrides)
        for name in overrides:
            if name not in node_params.BY_NAME:
                raise ReplayError(f"--set {name}: unknown parameter (see config/fusion.yaml)")
    except ReplayError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    names = [n.strip() for n in args.names.split(",")] if args.names else None
    if args.compare_runs:
        if args.bag is not None or args.bundle:
            parser.error("--compare-runs compares replay folders: give no BAG and no --bundle")
        if len(args.compare_runs) < 2:
            parser.error("--compare-runs needs two or more replay folders")
        out = args.out or Path("outputs") / "replay" / "comparison"
        try:
            _prepare_comparison_out(out, args.overwrite, [])
            result = compare_replays(args.compare_runs, out, names, samples=args.samples)
        except ReplayError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        _print_comparison(result, out)
        return 0
    if args.bag is None:
        parser.error("give a BAG (or --compare-runs DIR DIR ...)")
    bundles = args.bundle or [None]
    default_out = Path("outputs") / "replay" / (args.bag.stem or args.bag.name)
    if len(bundles) > 1:
        if args.live:
            parser.error("--live plays the bag into the node with one bundle: compare "
                         "bundles offline, then run --live with the one you keep")
        names = names or _unique_names([Path(b).name for b in bundles])
        if len(names) != len(bundles):
            parser.error(f"--names gives {len(names)} names for {len(bundles)} bundles")
        out = args.out or default_out.with_name(default_out.name + "_bundles")
        try:
            _prepare_comparison_out(out, args.overwrite, names)
        except ReplayError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        folders = []
        for bundle, name in zip(bundles, names):
            print(f"== {name}: {bundle}", file=sys.stderr)
            code = _replay_one(args, args_list, overrides, bundle, out / name)
            if code not in (0, EXIT_DAMAGED):
                return code
            folders.append(out / name)
        try:
            result = compare_replays(folders, out, names, samples=args.samples)
        except ReplayError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        _print_comparison(result, out)
        return 0
    return _replay_one(args, args_list, overrides, bundles[0], args.out or default_out)


def _replay_one(args: argparse.Namespace, args_list: list[str], overrides: dict,
                bundle: Path | None, out: Path) -> int:
    opts = ReplayOptions(
        bag=args.bag, out=out, thermal_topic=args.thermal_topic, rgb_topic=args.rgb_topic,
        config=args.config, overrides=overrides, bundle=bundle, backend=args.backend,
        labels=args.labels, no_labels=args.no_labels, offset_from_bag=args.offset_from_bag,
        png=args.png, video=not args.no_video, masks=not args.no_masks,
        output_bag=not args.no_bag, metrics_frames=args.metrics_frames, samples=args.samples,
        fps=args.fps, max_pairs=args.max_pairs,
        predictions_from_labels=args.predictions_from_labels, map_conf=args.map_conf,
        seg_class_map=args.seg_class_map,
        overwrite=args.overwrite,
        live=args.live, speed=args.speed, domain_id=args.domain_id,
        live_timeout=args.live_timeout, fail_on_damage=args.fail_on_damage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BagDamageWarning)  # replay() prints its own warning
        try:
            result = replay(opts, args_list)
        except ReplayError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
    s = result.summary
    frames, timing = s["frames"], s["timing"]
    print(f"processed {frames['processed']} pairs at {timing['fps_replay'] or 0:.2f} pairs/s "
          f"(pipeline alone {timing['fps_pipeline'] or 0:.2f}); peak memory "
          f"{timing['peak_rss_mb']:.0f} MB")
    det = s.get("detection_eval")
    if det and det.get("mAP50") is not None:
        print(f"mAP50 {det['mAP50']:.4f}, mAP50-95 {det['mAP50-95']:.4f} over "
              f"{det['frames_evaluated']} labelled pairs")
    seg = s.get("segmentation_eval")
    if seg and seg.get("mIoU") is not None:
        print(f"mIoU {seg['mIoU']:.4f} over {len(seg['classes_in_mIoU'])} classes, "
              f"{seg['frames_evaluated']} pairs with label maps")
    live = s.get("live")
    if live and live.get("comparison"):
        c = live["comparison"]
        print(f"live: {c['both']} pairs processed by both, node skipped "
              f"{c['skipped_by_node']}: {'AGREE' if c['agree'] else 'DIFFER'}")
    print(f"report: {result.report_html}")
    print(f"summary: {result.summary_md}")
    return result.exit_code


def _prepare_comparison_out(out: Path, overwrite: bool, runs: Sequence[str]) -> None:
    """The comparison's folder: new, or an earlier comparison (replaced with --overwrite)."""
    if out.exists() and any(out.iterdir()):
        if not (out / COMPARISON_JSON).exists():
            theirs = [p.name for p in out.iterdir() if p.name not in runs]
            if theirs:
                raise ReplayError(f"output folder {out} exists and holds other files; "
                                  "choose another --out")
        elif not overwrite:
            raise ReplayError(f"output folder {out} holds an earlier comparison; pass "
                              "--overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)


def _print_comparison(result: dict, out: Path) -> None:
    base = result["baseline"]
    det, seg = result.get("detection"), result.get("segmentation")
    for i, run in enumerate(result["runs"][1:]):
        parts = [f"{run['name']} vs {base}:"]
        if det:
            row = det["summary"][0]
            parts.append(f"mAP50 {_fmt(row['values'][i + 1])} ({_fmt(row['deltas'][i], True)})")
        if seg:
            row = seg["summary"][0]
            parts.append(f"mIoU {_fmt(row['values'][i + 1])} ({_fmt(row['deltas'][i], True)})")
        row = result["throughput"][1]
        parts.append(f"pipeline {_fmt(row['values'][i + 1], digits=2)} pairs/s "
                     f"({_fmt(row['deltas'][i], True, 2)})")
        agree = result["agreement"][i]
        parts.append(f"detections differ on {agree['frames_with_different_detections']} of "
                     f"{agree['frames']} pairs")
        print(" ".join(parts))
    print(f"comparison: {out / COMPARISON_HTML}")


def _fmt(value: float | None, signed: bool = False, digits: int = 4) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


if __name__ == "__main__":
    raise SystemExit(main())
