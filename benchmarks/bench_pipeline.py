"""Every stage of one frame of the fusion node, on real pairs, with the naive export of F timed
in the same run.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_pipeline.py [--bundle models/default]
        [--checkpoint models/fusion_default.pt] [--size 640x480] [--pairs 8] [--rounds 3]
        [--rgb-compressed] [--sessions] [--compare LABEL=GRAPH.onnx ...] [--json OUT]

What one frame costs the node, stage by stage (milliseconds, median and p99 over all frames):

* ``decode``: a serialized sensor_msgs/Image (thermal mono16, RGB bgr8, or with
  ``--rgb-compressed`` a JPEG CompressedImage) deserialized and converted to arrays, as rclpy
  and the node's callback do;
* ``gain``, ``registration``, ``luma``: the three parts of the pipeline's ``preprocess``
  (16-bit thermal to 8 bits, thermal onto the RGB grid, the networks' Y planes);
* ``fusion``: the bundle's fusion graph as the pipeline runs it; ``fusion (naive)``:
  ``FusionNet`` exported as written (``training/export.py --naive``, from ``--checkpoint``),
  run with the same engine settings and the same kind of session (``--sessions`` adds both in
  the other kind);
* ``colour``: fused Y + visible chroma -> BGR uint8;
* ``detector_pre`` / ``detector`` / ``detector_post`` and the same for the segmenter, when the
  bundle has those graphs (pre: letterbox / resize; post: YOLO decoding + NMS / class map);
* ``messages``: the fused Image, the Detection2DArray and the mono8 class map built as the node
  builds them, and serialized as rclpy does when publishing.

The frame goes through the pipeline's own methods (the same calls ``FusionPipeline.process``
makes, in the same order); the first frame is also run through ``process`` and must give the
same fused image. The two fusion graphs run one after the other on every frame, their order
alternating, so that whatever else the machine does hits both alike; the ratio is the median
of the per-frame ratios. Timings depend on the load: the script prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tdfusion_ros.ros import node_params  # noqa: E402
from tdfusion_ros.ros.ros_image import (  # noqa: E402
    array_to_compressed,
    array_to_image,
    detections_to_msg,
    image_to_bgr8,
    image_to_mono,
)
from tdfusion_ros.runtime.bundle import load_bundle, sha256_of  # noqa: E402
from tdfusion_ros.runtime.engines import create_engine  # noqa: E402
from tdfusion_ros.runtime.pipeline import FusionPipeline, _luma_split  # noqa: E402

DATA = Path(os.environ.get("TDFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
STAGES = ("decode", "gain", "registration", "luma", "fusion", "fusion (naive)", "colour",
          "detector_pre", "detector", "detector_post", "segmenter_pre", "segmenter",
          "segmenter_post", "messages")


def parse_size(text: str) -> tuple[int, int]:
    """'640x480' -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    return width, height


def load_pairs(size: tuple[int, int], count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(thermal uint16, RGB BGR uint8) real pairs of det/ at ``size``; the thermal as a
    radiometric camera would send it (counts 5000 + 200 x grey level)."""
    names = sorted(p.stem for p in (DATA / "det" / "vi").glob("*.png"))[:count]
    if not names:
        raise SystemExit(f"error: no pairs in {DATA / 'det'} (set TDFUSION_SHARED_DATA)")
    pairs = []
    for name in names:
        ir = cv2.imread(str(DATA / "det" / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        vi = cv2.imread(str(DATA / "det" / "vi" / f"{name}.png"), cv2.IMREAD_COLOR)
        if ir.shape[::-1] != size:
            ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA)
            vi = cv2.resize(vi, size, interpolation=cv2.INTER_AREA)
        pairs.append((ir.astype(np.uint16) * 200 + 5000, vi))
    return pairs


def export_naive(checkpoint: Path, out: Path) -> Path:
    """``FusionNet`` as written, through the export CLI (torch stays out of this process)."""
    done = subprocess.run([sys.executable, str(REPO / "training" / "export.py"), "--naive",
                           "--no-check", "--fusion", str(checkpoint), "--out", str(out)],
                          capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        raise SystemExit(f"error: naive export of {checkpoint} failed:\n{done.stderr[-2000:]}")
    return out / "fusion.onnx"


class Frames:
    """The run: a pipeline, the extra fusion engines, serialized camera messages."""

    def __init__(self, args: argparse.Namespace, naive_path: Path) -> None:
        from rclpy.serialization import serialize_message

        values = node_params.resolve_config(args.config)
        self.values = values
        settings = node_params.pipeline_settings(values)
        if args.threads:
            from dataclasses import replace

            settings = replace(settings, threads=args.threads)
        self.pipeline = FusionPipeline(args.bundle, settings, log=lambda _: None)
        fusion = self.pipeline._engines["fusion"]
        details = fusion.details
        fixed = bool(details.get("specialise_shapes", False))
        options = {"threads": details.get("threads"), "spin": details.get("spin", False)}
        if fusion.backend != "onnxruntime" or fusion.device != "cpu":
            print(f"note: the bundle's fusion graph runs on {fusion.describe()}; the naive "
                  "graph runs on ONNX Runtime CPU", flush=True)
        self.fusion: dict[str, Any] = {"fusion": fusion}
        # The naive graph in the same kind of session as the pipeline's: the ratio is the graph's.
        self.fusion["fusion (naive)"] = create_engine(naive_path, "onnxruntime", name="naive",
                                                      specialise_shapes=fixed, **options)
        bundle_fusion = load_bundle(args.bundle).graph("fusion").path
        if args.sessions:
            other = "dynamic-size session" if fixed else "fixed-size session"
            self.fusion[f"fusion, {other}"] = create_engine(
                bundle_fusion, "onnxruntime", name="other", specialise_shapes=not fixed,
                **options)
            self.fusion[f"fusion (naive), {other}"] = create_engine(
                naive_path, "onnxruntime", name="naive_other", specialise_shapes=not fixed,
                **options)
        for label, path in args.compare:
            self.fusion[label] = create_engine(path, "onnxruntime", name=label, **options)
        self.encoding = values["output.encoding"]
        self.messages = []
        for thermal, rgb in load_pairs(args.size, args.pairs):
            rgb_msg = (array_to_compressed(rgb, "jpeg", 90, 1, "rgb") if args.rgb_compressed
                       else array_to_image(rgb, "bgr8", 1, "rgb"))
            self.messages.append((serialize_message(array_to_image(thermal, "mono16", 1,
                                                                   "thermal")),
                                  serialize_message(rgb_msg), type(rgb_msg)))

    def decode(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from rclpy.serialization import deserialize_message
        from sensor_msgs.msg import Image

        thermal_bytes, rgb_bytes, rgb_type = self.messages[index % len(self.messages)]
        return (image_to_mono(deserialize_message(thermal_bytes, Image)),
                image_to_bgr8(deserialize_message(rgb_bytes, rgb_type)))

    def run(self, index: int, order: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
        """One frame, stage by stage; returns ms per stage and the outputs."""
        from rclpy.serialization import serialize_message

        pipeline = self.pipeline
        timings: dict[str, float] = {}

        def timed(stage: str, function: Callable[[], Any]) -> Any:
            start = time.perf_counter()
            value = function()
            timings[stage] = (time.perf_counter() - start) * 1000.0
            return value

        thermal, rgb = timed("decode", lambda: self.decode(index))
        t8 = timed("gain", lambda: pipeline._thermal8(thermal))
        t_reg, rgb_reg = timed("registration", lambda: pipeline._registration.apply(t8, rgb))
        ir_y, vis_y, restore = timed("luma", lambda: _luma_split(t_reg, rgb_reg))
        feeds = {pipeline._ir_name: ir_y[None, None], pipeline._vis_name: vis_y[None, None]}
        fused = {label: timed(label, lambda e=self.fusion[label]: e.run(feeds))
                 for label in order}
        fused = {label: next(iter(out.values()))[0, 0] for label, out in fused.items()}
        fused_y = fused["fusion"]
        image = timed("colour", lambda: restore(fused_y))
        fused_y = np.ascontiguousarray(fused_y, np.float32)
        detections = class_map = None
        if pipeline.detection_enabled and pipeline.detector_spec is not None:
            detections = pipeline._detect(fused_y, timings)
        if pipeline.segmentation_enabled and pipeline.segmenter_spec is not None:
            class_map = pipeline._segment(fused_y, timings)

        def messages() -> None:
            serialize_message(array_to_image(image, self.encoding, 1, "rgb"))
            if detections is not None:
                serialize_message(detections_to_msg(detections, pipeline.class_names, 1,
                                                     "rgb"))
            if class_map is not None:
                serialize_message(array_to_image(class_map, "mono8", 1, "rgb"))

        timed("messages", messages)
        return timings, {"image": image, "fused": fused, "detections": detections,
                         "class_map": class_map, "thermal": thermal, "rgb": rgb}

    def close(self) -> None:
        self.pipeline.close()
        for label, engine in self.fusion.items():
            if label != "fusion":
                engine.close()


def stats(values: list[float]) -> tuple[float, float]:
    p50, p99 = np.percentile(np.asarray(values, np.float64), (50, 99))
    return float(p50), float(p99)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=REPO / "models" / "default")
    parser.add_argument("--checkpoint", type=Path, default=REPO / "models" / "fusion_default.pt",
                        help="F checkpoint of the bundle's fusion graph, for the naive export")
    parser.add_argument("--config", type=Path, default=None,
                        help="node parameters file (default: config/fusion.yaml)")
    parser.add_argument("--size", type=parse_size, default=(640, 480), help="WIDTHxHEIGHT")
    parser.add_argument("--pairs", type=int, default=8, help="real pairs (det/) to cycle")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the pairs")
    parser.add_argument("--threads", type=int, default=0,
                        help="engine threads (default: the node's setting)")
    parser.add_argument("--rgb-compressed", action="store_true",
                        help="RGB arrives as JPEG CompressedImage")
    parser.add_argument("--sessions", action="store_true",
                        help="also time both fusion graphs in the other kind of ONNX Runtime "
                             "session (dynamic size if the pipeline uses one specialised to "
                             "the frame size, as it does by default, and vice versa)")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=ONNX",
                        help="also time this fusion graph (same inputs/outputs), interleaved")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    compare = []
    for item in args.compare:
        label, sep, path = item.partition("=")
        if not sep or not Path(path).is_file():
            parser.error(f"--compare wants LABEL=EXISTING.onnx, got {item!r}")
        compare.append((label, Path(path)))
    args.compare = compare
    if not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint} not found")

    bundle = load_bundle(args.bundle)  # BundleError names the problem
    source = bundle.graph("fusion").meta.get("source") or {}
    same_network = source.get("sha256") == sha256_of(args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_") as tmp:
        naive_path = export_naive(args.checkpoint, Path(tmp))
        frames = Frames(args, naive_path)
        labels = list(frames.fusion)
        # Warm-up: first-run allocations (and the fixed-shape session's build).
        frames.pipeline.reset()
        _, outputs = frames.run(0, labels)
        frames.pipeline.reset()
        reference = frames.pipeline.process(outputs["thermal"], outputs["rgb"])
        if not np.array_equal(reference.fused, outputs["image"]):
            raise SystemExit("error: the stage-by-stage frame differs from "
                             "FusionPipeline.process: this script no longer follows it")
        samples: dict[str, list[float]] = {}
        diffs: dict[str, float] = dict.fromkeys(labels[1:], 0.0)
        load_before = os.getloadavg()
        wall = time.perf_counter()
        count = args.rounds * len(frames.messages)
        for index in range(count):
            order = labels if index % 2 == 0 else labels[::-1]
            timings, outputs = frames.run(index, order)
            for stage, ms in timings.items():
                samples.setdefault(stage, []).append(ms)
            for label in diffs:
                diff = float(np.abs(outputs["fused"][label] - outputs["fused"]["fusion"]).max())
                diffs[label] = max(diffs[label], diff)
        wall = time.perf_counter() - wall
        load_after = os.getloadavg()
        describe = frames.pipeline.describe()
        frames.close()

    rows = []
    extra = [s for s in samples if s not in STAGES]  # --sessions, --compare: after fusion
    order = [s for s in STAGES if s in samples]
    order[order.index("fusion (naive)") + 1:1 + order.index("fusion (naive)")] = extra
    total = np.zeros(count)
    for stage in order:
        values = samples[stage]
        if stage in STAGES and stage != "fusion (naive)":
            total += np.asarray(values)
        p50, p99 = stats(values)
        rows.append({"stage": stage, "median_ms": p50, "p99_ms": p99, "n": len(values)})
    p50, p99 = stats(total.tolist())
    rows.append({"stage": "total (frame)", "median_ms": p50, "p99_ms": p99, "n": count})

    print(f"bundle {args.bundle} ({', '.join(bundle.graphs)}); frames {args.size[0]}x"
          f"{args.size[1]}, {len(frames.messages)} real pairs x {args.rounds} rounds; "
          f"RGB {'JPEG' if args.rgb_compressed else 'raw bgr8'}")
    for name, text in describe.items():
        print(f"  {name}: {text}")
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} CPUs); {count} frames in {wall:.1f} s")
    print(f"\n{'stage':34s} {'median ms':>10s} {'p99 ms':>10s}")
    for row in rows:
        print(f"{row['stage']:34s} {row['median_ms']:10.2f} {row['p99_ms']:10.2f}")
    print()
    pairs = [("fusion", "fusion (naive)")]
    others = [label for label in labels if label.startswith("fusion, ")]
    for label in others:
        pairs += [(label, label.replace("fusion,", "fusion (naive),")), ("fusion", label)]
    pairs += [(label, "fusion (naive)") for label, _ in args.compare]
    summary = {}
    for a, b in pairs:
        ratio = float(np.median(np.asarray(samples[a]) / np.asarray(samples[b])))
        summary[f"{a} / {b}"] = ratio
        print(f"{a} / {b}: {ratio:.3f} (median of per-frame ratios)")
    for label, diff in diffs.items():
        print(f"max |fused difference| {label} vs fusion: {diff:.2e}")
    if not same_network:
        print(f"note: {args.checkpoint} is not the checkpoint the bundle's fusion graph was "
              f"exported from ({source.get('checkpoint', 'unknown')}); the naive graph is "
              "another network, so compare times only")
    if args.json:
        args.json.write_text(json.dumps({
            "bundle": str(args.bundle), "size": list(args.size), "frames": count,
            "load_before": load_before, "load_after": load_after, "engines": describe,
            "stages": rows, "fusion_ratios": summary, "max_abs_diff_vs_fusion": diffs,
            "same_network": same_network},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
