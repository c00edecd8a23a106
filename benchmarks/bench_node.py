"""Benchmark the fusion node against the standalone pipeline, on ONNX Runtime (CPU).

    python benchmarks/bench_node.py [--bundle models/default] [--sizes 640x480,320x256]
        [--rate 30] [--duration 600] [--warmup 30] [--json OUT.json]

For each size, in one run:

1. standalone: ``FusionPipeline`` in this process on real pairs from ../shared/data/det,
   resized to the size, as fast as it goes: frames/s and per-stage times;
2. node: ``fusion_node`` started as the launch file starts it (``node_params.launch_spec``,
   large-data transport) in its own ROS_DOMAIN_ID; this process plays thermal (mono16) + RGB
   (bgr8) at ``--rate`` Hz stamped with the current time, and subscribes to fused/image.
   Measured after ``--warmup`` seconds, for ``--duration`` seconds:
   * node overhead excluding inference (conversion, pairing, preprocess/registration, colour,
     pre/post-processing, publishing) p50/p99, from the node's /diagnostics (per frame);
   * node throughput (fused images received per second) against the standalone pipeline's;
   * end-to-end latency p50/p99: camera stamp -> fused image received here;
   * resident memory of the node process (VmRSS) at the start and end of the measurement.

The default duration (10 min per size) is the memory-flatness check; ``--duration 60`` gives
the other figures in a few minutes. Numbers depend on what else the machine runs: the
publisher shares its cores with the node, as cameras would on a robot.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tdfusion_ros.ros import node_params  # noqa: E402
from tdfusion_ros.runtime.pipeline import FusionPipeline  # noqa: E402

DATA = Path(os.environ.get("TDFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))


def parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def load_pairs(size: tuple[int, int], count: int = 8) -> list[tuple[np.ndarray, np.ndarray]]:
    """(thermal uint16, rgb BGR) pairs of det/ resized to ``size``; 16-bit like a real camera."""
    names = sorted(p.stem for p in (DATA / "det" / "vi").glob("*.png"))[:count]
    if not names:
        raise SystemExit(f"no pairs in {DATA / 'det'} (set TDFUSION_SHARED_DATA)")
    pairs = []
    for name in names:
        ir = cv2.imread(str(DATA / "det" / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        vi = cv2.imread(str(DATA / "det" / "vi" / f"{name}.png"), cv2.IMREAD_COLOR)
        ir = cv2.resize(ir, size, interpolation=cv2.INTER_AREA).astype(np.uint16) * 200 + 5000
        pairs.append((ir, cv2.resize(vi, size, interpolation=cv2.INTER_AREA)))
    return pairs


def ensure_bundle(path: Path | None) -> Path:
    if path is not None:
        return path
    default = node_params.default_bundle_path()
    if (default / "bundle.yaml").is_file():
        return default
    out = REPO / "outputs" / "bench_bundle"
    if not (out / "bundle.yaml").is_file():
        print(f"{default} not found: exporting models/fusion_default.pt to {out}", flush=True)
        subprocess.run([sys.executable, str(REPO / "training" / "export.py"), "--fusion",
                        str(REPO / "models" / "fusion_default.pt"), "--out", str(out),
                        "--check-crop", "128x160", "--check-pairs", "00055D"], check=True)
    return out


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "n": 0}
    p50, p99 = np.percentile(np.asarray(values, np.float64), (50, 99))
    return {"p50": float(p50), "p99": float(p99), "n": len(values)}


def standalone(bundle: Path, values: dict[str, Any], pairs: list, seconds: float,
               min_frames: int) -> dict[str, Any]:
    """The pipeline alone, as fast as it goes, with the node's settings."""
    pipeline = FusionPipeline(bundle, node_params.pipeline_settings(values), log=lambda _: None)
    pipeline.process(*pairs[0])  # first-run allocations and shape specialisation
    stages: dict[str, list[float]] = {}
    frames, start = 0, time.perf_counter()
    while frames < min_frames or time.perf_counter() - start < seconds:
        result = pipeline.process(*pairs[frames % len(pairs)])
        for stage, ms in result.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
        stages.setdefault("overhead", []).append(result.overhead_ms)
        frames += 1
    elapsed = time.perf_counter() - start
    describe = pipeline.describe()
    pipeline.close()
    return {"fps": frames / elapsed, "frames": frames, "engines": describe,
            "stages_ms": {k: percentiles(v) for k, v in stages.items()}}


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def start_node(bundle: Path, config: Path, domain: int, log: Path) -> subprocess.Popen:
    """``fusion_node`` as the launch file starts it, on ONNX Runtime, in its own domain; this
    process joins the same domain and transport (call before ``rclpy.init``)."""
    spec = node_params.launch_spec({"config": str(config), "bundle": str(bundle),
                                    "backend": "onnxruntime"})
    env = {**os.environ, **spec.env, "ROS_DOMAIN_ID": str(domain),
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    os.environ.update(spec.env)
    os.environ["ROS_DOMAIN_ID"] = str(domain)
    handle = log.open("w")
    return subprocess.Popen(spec.command([sys.executable, "-m", "tdfusion_ros.node"]),
                            env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=REPO)


def stop_node(node_proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGINT, as Ctrl-C; SIGKILL after ``timeout`` (exit code -9)."""
    node_proc.send_signal(signal.SIGINT)
    try:
        return node_proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        node_proc.kill()
        return -9


def node_run(bundle: Path, config: Path, size: tuple[int, int], pairs: list, rate: float,
             warmup: float, duration: float, domain: int, log: Path) -> dict[str, Any]:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    from tdfusion_ros.ros.ros_image import array_to_image, stamp_to_ns

    node_proc = start_node(bundle, config, domain, log)
    rclpy.init()
    node = rclpy.create_node("bench_node_driver")
    lock = threading.Lock()
    received: list[tuple[float, int]] = []  # (receive wall ns, stamp ns)
    last_diag: dict[str, dict[str, str]] = {}

    def on_image(msg: Any) -> None:
        now = time.time_ns()
        with lock:
            received.append((now, stamp_to_ns(msg.header.stamp)))

    def on_diag(msg: Any) -> None:
        with lock:
            for status in msg.status:
                last_diag[status.name.rsplit(": ", 1)[-1]] = {kv.key: kv.value
                                                              for kv in status.values}

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(Image, "/fused/image", on_image, qos)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, qos)
    pub_t = node.create_publisher(Image, "/thermal/image_raw", 5)
    pub_r = node.create_publisher(Image, "/rgb/image_raw", 5)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    stop = threading.Event()
    published = [0]

    def camera() -> None:
        period, tick = 1.0 / rate, 0
        start = time.monotonic()
        while not stop.is_set():
            due = start + tick * period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ir, vi = pairs[tick % len(pairs)]
            stamp = time.time_ns()
            pub_t.publish(array_to_image(ir, "mono16", stamp, "thermal"))
            pub_r.publish(array_to_image(vi, "bgr8", stamp, "rgb"))
            published[0] += 1
            tick += 1

    deadline = time.monotonic() + 120
    while pub_r.get_subscription_count() < 1 and time.monotonic() < deadline:
        if node_proc.poll() is not None:
            raise SystemExit(f"node exited: {log.read_text()[-2000:]}")
        time.sleep(0.1)
    cam = threading.Thread(target=camera, daemon=True)
    cam.start()
    time.sleep(warmup)
    with lock:
        first = len(received)
    published_start = published[0]
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()
    while time.monotonic() - t0 < duration:
        value = rss_mb(node_proc.pid)
        if value is not None:
            rss.append((time.monotonic() - t0, value))
        time.sleep(min(5.0, max(0.5, duration / 50)))
    elapsed = time.monotonic() - t0
    with lock:
        window = received[first:]
        diag = {k: dict(v) for k, v in last_diag.items()}
    published_window = published[0] - published_start
    stop.set()
    cam.join(timeout=5)
    try:
        executor.shutdown(timeout_sec=5.0)
        spinner.join(timeout=5.0)
        node.destroy_node()
    except Exception as err:  # noqa: BLE001 - measurements are taken; report and go on
        print(f"driver shutdown: {err!r}", file=sys.stderr)
    rclpy.try_shutdown()
    exit_code = stop_node(node_proc)
    latency = [(now - stamp) / 1e6 for now, stamp in window]
    processing = diag.get("processing", {})
    inputs = diag.get("inputs", {})

    def stage(name: str) -> dict[str, float | None]:
        p50 = processing.get(f"latency.{name}.p50_ms")
        p99 = processing.get(f"latency.{name}.p99_ms")
        return {"p50": float(p50) if p50 else None, "p99": float(p99) if p99 else None}

    head = statistics.mean(v for _, v in rss[: max(1, len(rss) // 10)]) if rss else None
    tail = statistics.mean(v for _, v in rss[-max(1, len(rss) // 10):]) if rss else None
    return {
        "fps": len(window) / elapsed,
        "frames": len(window),
        "input_pairs_per_s": published_window / elapsed,
        "end_to_end_ms": percentiles(latency),
        "overhead_ms": stage("overhead"),
        "stages_ms": {s: stage(s) for s in ("convert", "pairing", "preprocess", "fusion",
                                             "colour", "detector", "segmenter", "publish",
                                             "total", "end_to_end")},
        "drops": {k: v for k, v in inputs.items() if k.startswith("drops.")},
        "rss_mb": {"start": head, "end": tail, "max": max((v for _, v in rss), default=None),
                   "growth_pct": (100.0 * (tail - head) / head) if head else None,
                   "samples": len(rss)},
        "node_exit_code": exit_code,
        "backend": processing.get("backend"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--config", type=Path, default=node_params.default_config_path())
    parser.add_argument("--sizes", default="640x480,320x256")
    parser.add_argument("--rate", type=float, default=30.0)
    parser.add_argument("--duration", type=float, default=600.0,
                        help="measured seconds per size (default: 10 minutes)")
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--standalone-seconds", type=float, default=20.0)
    parser.add_argument("--standalone-frames", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    bundle = ensure_bundle(args.bundle)
    values = node_params.validate(node_params.load_params_file(args.config))
    values["backend"] = "onnxruntime"
    results: dict[str, Any] = {"bundle": str(bundle), "rate_hz": args.rate,
                               "duration_s": args.duration, "cpus": os.cpu_count(),
                               "sizes": {}}
    work = REPO / "outputs" / "bench_node"
    work.mkdir(parents=True, exist_ok=True)
    for index, text in enumerate(args.sizes.split(",")):
        size = parse_size(text)
        pairs = load_pairs(size)
        print(f"[{text}] standalone pipeline ...", flush=True)
        alone = standalone(bundle, values, pairs, args.standalone_seconds,
                           args.standalone_frames)
        print(f"[{text}] standalone {alone['fps']:.2f} frames/s; node for "
              f"{args.warmup:.0f}+{args.duration:.0f} s at {args.rate:g} Hz ...", flush=True)
        domain = node_params.private_domain_id(os.getpid() + 11 * index)
        node = node_run(bundle, args.config, size, pairs, args.rate, args.warmup,
                        args.duration, domain, work / f"node_{text}.log")
        # the node cannot beat its input rate: compare with what the pipeline could do on it
        reachable = min(alone["fps"], node["input_pairs_per_s"])
        node["throughput_ratio"] = node["fps"] / reachable if reachable else None
        results["sizes"][text] = {"standalone": alone, "node": node}
        print(json.dumps({"size": text, "standalone_fps": alone["fps"], **{
            k: node[k] for k in ("fps", "throughput_ratio", "overhead_ms", "end_to_end_ms",
                                 "rss_mb", "node_exit_code")}}, indent=1), flush=True)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def print_table(results: dict[str, Any]) -> None:
    def fmt(value: Any, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    print("\n| size | standalone fps | node fps | ratio | overhead p50/p99 ms | "
          "end-to-end p50/p99 ms | RSS start->end MB (growth) |")
    print("|---|---|---|---|---|---|---|")
    for size, r in results["sizes"].items():
        n, a = r["node"], r["standalone"]
        print(f"| {size} | {fmt(a['fps'], 2)} | {fmt(n['fps'], 2)} | "
              f"{fmt(n['throughput_ratio'], 2)} | {fmt(n['overhead_ms']['p50'], 2)} / "
              f"{fmt(n['overhead_ms']['p99'], 2)} | {fmt(n['end_to_end_ms']['p50'], 0)} / "
              f"{fmt(n['end_to_end_ms']['p99'], 0)} | {fmt(n['rss_mb']['start'])} -> "
              f"{fmt(n['rss_mb']['end'])} ({fmt(n['rss_mb']['growth_pct'], 2)} %) |")


if __name__ == "__main__":
    sys.exit(main())
