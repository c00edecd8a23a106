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
from tdfusion_ros.bags.replay.common import EXIT_BAD_INPUT, ReplayError, ReplayOptions
from tdfusion_ros.bags.replay.inputs import _parse_override
from tdfusion_ros.bags.replay.run import replay
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
    parser.add_argument("bag", type=Path, help="rosbag2 folder, .mcap or .db3 file")
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
    parser.add_argument("--bundle", type=Path, help="model bundle folder (default: the "
                        "config's, i.e. models/default)")
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
    out = args.out or Path("outputs") / "replay" / (args.bag.stem or args.bag.name)
    opts = ReplayOptions(
        bag=args.bag, out=out, thermal_topic=args.thermal_topic, rgb_topic=args.rgb_topic,
        config=args.config, overrides=overrides, bundle=args.bundle, backend=args.backend,
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


if __name__ == "__main__":
    raise SystemExit(main())
