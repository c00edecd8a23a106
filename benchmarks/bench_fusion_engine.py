"""Fusion network speed, side by side on the same real frames: PyTorch eager, a naive ONNX
export, and our export-time rewrite (training/export.py) on ONNX Runtime.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fusion_engine.py [--threads 2] [--repeats 3]

Each variant runs in its own process, so its peak RSS is its own (the ONNX Runtime ones never
import torch, like the node), and all of them see the same frames: real MSRS pairs from
../shared/data/det at 640x480 and resized (INTER_AREA) to 320x256. Per-frame seconds are
wall-clock times of engine.run (PyTorch: the forward pass) after one warm-up run per size; the
table shows the median and the minimum. Outputs are compared with PyTorch's (max abs diff).
Timings depend on what else the machine is doing: the script prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_CHECKPOINT = REPO.parent / "shared" / "data" / "refusion_official" / "models" / \
    "ReFusion_IVIF.pth"
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_PAIRS = ("00055D", "00004N", "00537D")
SIZES = ((256, 320), (480, 640))
# ONNX Runtime's own defaults (how ../shared/ENVIRONMENT.md measured the naive export), against
# our engine's defaults: no memory pattern, no thread spinning (see onnxruntime_engine).
ORT_DEFAULTS = {"specialise_shapes": False, "memory_pattern": True, "spin": True}


def load_frames(data: Path, names: list[str], work: Path) -> dict[str, Path]:
    """Save (n, 2, H, W) float32 stacks of (ir Y, vis Y) per size; same frames for everyone."""
    import cv2

    from training.export import real_pairs

    pairs = real_pairs(data, names)
    stacks = {}
    for height, width in SIZES:
        frames = []
        for _, ir, vis in pairs:
            if ir.shape != (height, width):
                ir = cv2.resize(ir, (width, height), interpolation=cv2.INTER_AREA)
                vis = cv2.resize(vis, (width, height), interpolation=cv2.INTER_AREA)
            frames.append(np.stack([ir, vis]))
        path = work / f"frames_{height}x{width}.npy"
        np.save(path, np.stack(frames).astype(np.float32))
        stacks[f"{height}x{width}"] = path
    return stacks


def child(args: argparse.Namespace) -> None:
    """Time one variant on one frame stack; print a JSON line (runs in its own process)."""
    frames = np.load(args.frames)
    outputs = []
    times = []
    if args.variant == "pytorch":
        import torch

        from tdfusion_ros.nets.checkpoints import load_network

        torch.set_num_threads(args.threads)
        net = load_network(args.checkpoint, "fusion")

        def run(frame: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                return net(torch.from_numpy(frame[0])[None, None],
                           torch.from_numpy(frame[1])[None, None]).numpy()
        describe = f"PyTorch {torch.__version__} eager, {args.threads} threads"
    else:
        from tdfusion_ros.runtime.engines import create_engine

        options = json.loads(args.engine_options)
        engine = create_engine(args.onnx, "onnxruntime", threads=args.threads, **options)

        def run(frame: np.ndarray) -> np.ndarray:
            return engine.run({"ir": frame[0][None, None], "vis": frame[1][None, None]})["fused"]
        describe = engine.describe()
    run(frames[0])  # warm-up: session/shape set-up, allocator growth
    for frame in frames:
        best = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run(frame)
            best.append(time.perf_counter() - start)
        times.extend(best)
        outputs.append(out[0, 0])
    np.save(args.output, np.stack(outputs))
    print(json.dumps({"times": times, "peak_rss_mib": peak_rss_mib(), "describe": describe}))


def peak_rss_mib() -> float:
    """This process's peak RSS since exec (VmHWM). Not ru_maxrss: Linux carries the parent's
    peak at fork into a child's ru_maxrss, which would charge the parent's torch to ORT."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def export_graphs(checkpoint: Path, work: Path) -> dict[str, Path]:
    from tdfusion_ros.nets.checkpoints import load_network
    from training.export import export_fusion

    net = load_network(checkpoint, "fusion")
    naive = work / "naive.onnx"
    rewrite = work / "rewrite.onnx"
    export_fusion(net, naive, naive=True)
    export_fusion(net, rewrite)
    return {"naive": naive, "rewrite": rewrite}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", default=",".join(DEFAULT_PAIRS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per frame")
    parser.add_argument("--onnx", type=Path, default=None,
                        help="time this fusion graph as the rewrite instead of exporting one")
    parser.add_argument("--skip-pytorch-large", action="store_true",
                        help="skip PyTorch eager at 640x480 (about 4 s a frame)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--frames", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    parser.add_argument("--engine-options", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_fusion_") as tmp:
        work = Path(tmp)
        stacks = load_frames(args.data, [n for n in args.pairs.split(",") if n], work)
        graphs = export_graphs(args.checkpoint, work)
        if args.onnx is not None:
            graphs["rewrite"] = args.onnx
        variants = [
            ("pytorch", None, {}),
            ("ort naive, ORT default settings", graphs["naive"], ORT_DEFAULTS),
            ("ort naive, our engine settings", graphs["naive"], {}),
            ("ort rewrite, our engine settings", graphs["rewrite"], {}),
            ("ort rewrite, fixed-size sessions", graphs["rewrite"],
             {"specialise_shapes": True}),
        ]
        results = []
        print(f"load average before: {os.getloadavg()}", flush=True)
        for size, frames in stacks.items():
            reference = None
            for label, onnx_path, options in variants:
                if label == "pytorch" and size == "480x640" and args.skip_pytorch_large:
                    continue
                slug = "".join(c if c.isalnum() else "_" for c in label)
                out_file = work / f"out_{slug}_{size}.npy"
                command = [sys.executable, __file__, "--child", "--variant",
                           "pytorch" if onnx_path is None else "onnx",
                           "--frames", str(frames), "--output", str(out_file),
                           "--threads", str(args.threads), "--repeats", str(args.repeats),
                           "--checkpoint", str(args.checkpoint)]
                if onnx_path is not None:
                    command += ["--onnx", str(onnx_path)]
                    command += ["--engine-options", json.dumps(options)]
                done = subprocess.run(command, capture_output=True, text=True,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
                if done.returncode != 0:
                    print(done.stdout, done.stderr, file=sys.stderr)
                    return 1
                record = json.loads(done.stdout.strip().splitlines()[-1])
                fused = np.load(out_file)
                if label == "pytorch":
                    reference = fused
                diff = float(np.abs(fused - reference).max()) if reference is not None else None
                times = np.array(record["times"])
                row = {"size": size, "variant": label, "median_s": float(np.median(times)),
                       "min_s": float(times.min()), "peak_rss_mib": record["peak_rss_mib"],
                       "max_abs_diff_vs_pytorch": diff, "engine": record["describe"]}
                results.append(row)
                diff_text = "-" if diff is None else f"{diff:.1e}"
                print(f"{size:>8} {label:34s} median {row['median_s']:.3f} s  min "
                      f"{row['min_s']:.3f} s  peak RSS {row['peak_rss_mib']:7.0f} MiB  "
                      f"max|diff| {diff_text}", flush=True)
        print(f"load average after: {os.getloadavg()}")
        if args.json:
            args.json.write_text(json.dumps({"threads": args.threads, "results": results,
                                             "cpu_count": os.cpu_count()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
