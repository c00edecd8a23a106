"""The one prepared GPU check: F, the detector and the segmenter at 640x480 on CUDA in fp32 and
fp16, each checked against ONNX Runtime on the CPU, and TensorRT where the machine has it.
Run through ``benchmarks/gpu_check.sh``.

Two steps, because the GPU machine has no copy of ../shared/data and no ultralytics:

    python benchmarks/gpu_check.py prepare --out .gpu_check     # here: bundle + 2 real pairs
    python benchmarks/gpu_check.py run --work .gpu_check --out $OUT   # on the GPU machine

``prepare`` exports the fusion graph of the official checkpoint and, when the task exporters
import, a YOLOv8n detector and a SegFormer-B0 segmenter with seeded random weights (speed and
GPU-vs-CPU parity do not depend on training) at 480x640, into one verified bundle; and the
same three graphs converted to float16 (``fp16/``, float32 inputs and outputs kept),
because ONNX Runtime's CUDA provider runs a graph in the precision it was written in, and
TensorRT 11 builds strongly typed networks.

``run`` reports the machine (GPU, TensorRT, ONNX Runtime providers, and plainly what is
missing), then for each graph: the ONNX Runtime CPU output as the reference; ONNX Runtime CUDA
fp32 and fp16; TensorRT fp16 (the fp32 graph with the FP16 flag; on TensorRT 11 that builds
FP32, so the fp16 graph is built too) and fp32, each with build time, max abs diff, detections
matched and class-map agreement; PyTorch CUDA fp32/fp16 for F; and timings (median of
``--runs``) of preprocess, fusion, detector, segmenter, post-process and the whole frame.
TensorRT builds stop once ``--budget`` seconds have passed, saying which were skipped, so the
run stays within its time limit. Results go to ``<out>/gpu_check.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PAIRS = ("00055D", "00004N")
TASK_HW = (480, 640)
FUSION_TOLERANCE = 1e-2


def prepare(out: Path, data: Path, checkpoint: Path) -> None:
    import torch

    from tdfusion_ros.nets.checkpoints import load_network
    from tdfusion_ros.runtime.bundle import write_bundle
    from training.export import COLOUR_CONVENTION, export_fusion, real_pairs

    bundle = out / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    for name in PAIRS:
        for modality in ("ir", "vi"):
            (out / modality).mkdir(exist_ok=True)
            shutil.copy(data / "det" / modality / f"{name}.png", out / modality / f"{name}.png")
    shutil.copy(checkpoint, out / "fusion_checkpoint.pth")
    net = load_network(checkpoint, "fusion")
    graphs = {"fusion": export_fusion(net, bundle / "fusion.onnx",
                                      check_pairs=real_pairs(data, PAIRS[:1], crop=(96, 128)))}
    try:
        from training import onnx_task_export as tasks
    except ImportError as err:
        print(f"task graphs skipped: {err}")
    else:
        torch.manual_seed(0)
        names = (data / "det" / "classes.txt").read_text().split()
        images = tasks.fused_like_images(data, count=2)
        graphs["detector"] = tasks.export_detector(
            tasks.yolov8n_detector(len(names)), bundle / "detector.onnx", TASK_HW,
            class_names=names, check_images=images)
        graphs["segmenter"] = tasks.export_segmenter(
            tasks.segformer_b0(9), bundle / "segmenter.onnx", TASK_HW,
            class_names=[f"class{i}" for i in range(9)], check_images=images)
    write_bundle(bundle, graphs, colour=COLOUR_CONVENTION, producer="benchmarks/gpu_check.py")
    half = _export_fp16(bundle, out / "fp16", graphs)
    print(f"fp16 graphs: {half}")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"prepared {out} ({size / 2**20:.1f} MiB): {', '.join(graphs)}")


def _export_fp16(bundle: Path, out: Path, graphs: dict[str, Any]) -> dict[str, str]:
    """float16 copies of the bundle's graphs (float32 inputs and outputs kept, so they are fed
    like the others), by ONNX Runtime's own converter."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    out.mkdir(parents=True, exist_ok=True)
    done = {}
    for name in graphs:
        try:
            model = onnx.load(str(bundle / f"{name}.onnx"))
            onnx.save(convert_float_to_float16(model, keep_io_types=True),
                      str(out / f"{name}.onnx"))
            done[name] = "ok"
        except Exception as err:  # noqa: BLE001 - recorded; the run says this graph has no fp16
            done[name] = f"failed: {type(err).__name__}: {err}"[:300]
    (out / "exported.json").write_text(json.dumps(done, indent=1))
    return done


def _median_time(function: Any, runs: int) -> float:
    function()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _environment() -> dict[str, Any]:
    import onnxruntime

    from tdfusion_ros.runtime.engines import available_backends

    info: dict[str, Any] = {"python": sys.version.split()[0],
                            "onnxruntime": onnxruntime.__version__,
                            "ort_providers": onnxruntime.get_available_providers(),
                            "backends": available_backends()}
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                            text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as err:
        info["nvidia_smi"] = f"unavailable: {err}"
    try:
        import tensorrt

        info["tensorrt"] = tensorrt.__version__
    except ImportError as err:
        info["tensorrt"] = None
        info["tensorrt_missing"] = f"TensorRT is not installed on this machine ({err})"
    from tdfusion_ros.runtime.engines.onnxruntime_engine import cuda_provider_available

    info["ort_cuda"] = cuda_provider_available()[1]
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.cuda.is_available()
    except ImportError:
        info["torch"] = None
    return info


def _matched_detections(reference: Any, other: Any) -> dict[str, Any]:
    """Greedy one-to-one matching of same-class boxes by IoU."""
    used: set[int] = set()
    ious = []
    for box, cls in zip(reference.xyxy, reference.class_ids):
        best, best_j = 0.0, -1
        for j, (cand, cand_cls) in enumerate(zip(other.xyxy, other.class_ids)):
            if j in used or cand_cls != cls:
                continue
            ix = max(0.0, min(box[2], cand[2]) - max(box[0], cand[0]))
            iy = max(0.0, min(box[3], cand[3]) - max(box[1], cand[1]))
            inter = ix * iy
            union = ((box[2] - box[0]) * (box[3] - box[1])
                     + (cand[2] - cand[0]) * (cand[3] - cand[1]) - inter)
            iou = inter / union if union > 0 else 0.0
            if iou > best:
                best, best_j = iou, j
        if best_j >= 0:
            used.add(best_j)
            ious.append(best)
    return {"reference": len(reference), "other": len(other), "matched": len(ious),
            "matched_iou_above_0.9": int(sum(i > 0.9 for i in ious)),
            "min_matched_iou": float(min(ious)) if ious else None}


def run(work: Path, out: Path, runs: int, budget: float) -> dict[str, Any]:

    from tdfusion_ros.runtime.bundle import load_bundle
    from tdfusion_ros.runtime.colour import prepare_pair, restore_colour
    from tdfusion_ros.runtime.engines import EngineError, create_engine
    from tdfusion_ros.runtime.image_io import read_image, to_unit_float
    from tdfusion_ros.runtime.postprocess import (
        decode_yolo,
        detector_input,
        segmentation_class_map,
        segmenter_input,
    )

    result: dict[str, Any] = {"environment": _environment()}
    print(json.dumps(result["environment"], indent=1), flush=True)
    bundle = load_bundle(work / "bundle")
    name = PAIRS[0]
    ir_raw = read_image(work / "ir" / f"{name}.png")
    vis_raw = read_image(work / "vi" / f"{name}.png")

    def preprocess() -> Any:
        return prepare_pair(to_unit_float(ir_raw), to_unit_float(vis_raw))

    pair = preprocess()
    feeds = {"ir": pair.ir_y[None, None], "vis": pair.vis_y[None, None]}
    stages: dict[str, dict[str, float]] = {"preprocess": {"cpu": _median_time(preprocess, runs)}}
    engines: dict[str, dict[str, Any]] = {}
    graphs = [g for g in ("fusion", "detector", "segmenter") if g in bundle.graphs]
    started = time.perf_counter()
    for graph in graphs:
        path = bundle.graph(graph).path
        half_path = work / "fp16" / f"{graph}.onnx"
        engines[graph] = {"onnxruntime": create_engine(path, "onnxruntime",
                                                       specialise_shapes=True, name=graph)}
        # Build up front (input_shapes), so the build is timed apart from the runs.
        shapes = ({k: v.shape for k, v in feeds.items()} if graph == "fusion" else
                  {t.name: tuple(t.shape) for t in bundle.graph(graph).inputs})
        candidates = [("onnxruntime-cuda-fp32", path, "onnxruntime", {"device": "cuda"}),
                      ("onnxruntime-cuda-fp16", half_path, "onnxruntime", {"device": "cuda"}),
                      ("tensorrt", path, "tensorrt", {"precision": "fp16"}),
                      ("tensorrt-fp32", path, "tensorrt", {"precision": "fp32"}),
                      ("tensorrt-fp16-graph", half_path, "tensorrt", {"precision": "fp16"})]
        for label, onnx_path, backend, options in candidates:
            if not onnx_path.is_file():
                result.setdefault("not_run", {})[f"{graph} {label}"] = f"{onnx_path} missing"
                continue
            if backend == "tensorrt":
                if time.perf_counter() - started > budget:
                    result.setdefault("not_run", {})[f"{graph} {label}"] = (
                        f"skipped: the {budget:.0f} s budget for builds was spent")
                    continue
                options = {**options, "cache_dir": out / "engine_cache",
                           "input_shapes": shapes}
            try:
                start = time.perf_counter()
                engine = create_engine(onnx_path, backend, name=graph, **options)
                engines[graph][label] = engine
                result.setdefault("load_s", {})[f"{graph} {label}"] = (
                    time.perf_counter() - start)
                result.setdefault("engines", {})[f"{graph} {label}"] = engine.describe()
            except EngineError as err:
                result.setdefault("not_run", {})[f"{graph} {label}"] = str(err)
                print(f"{graph}: {label} not run: {err}", flush=True)

    fused_ref = engines["fusion"]["onnxruntime"].run(feeds)["fused"]
    outputs: dict[str, dict[str, Any]] = {"fusion": {"onnxruntime": fused_ref}}
    for backend, engine in engines["fusion"].items():
        stages.setdefault("fusion", {})[backend] = _median_time(lambda e=engine: e.run(feeds),
                                                                runs)
        if backend != "onnxruntime":
            fused = engine.run(feeds)["fused"]
            outputs["fusion"][backend] = fused
            result.setdefault("parity", {})[f"fusion {backend}"] = {
                "max_abs_diff": float(np.abs(fused - fused_ref).max()),
                "tolerance": FUSION_TOLERANCE}
    _torch_fusion(work, feeds, fused_ref, runs, stages, result)

    fused_y = fused_ref[0, 0]
    if "detector" in engines:
        spec = bundle.graph("detector")
        hw = spec.input_hw or TASK_HW
        x, box = detector_input(fused_y, hw)
        post = spec.meta["postprocess"]
        raw_ref = engines["detector"]["onnxruntime"].run({"image": x})["raw"]
        reference = decode_yolo(raw_ref, 0.05, post["iou_threshold"], box=box)
        stages["detector_input"] = {"cpu": _median_time(lambda: detector_input(fused_y, hw),
                                                        runs)}
        for backend, engine in engines["detector"].items():
            stages.setdefault("detector", {})[backend] = _median_time(
                lambda e=engine: e.run({"image": x}), runs)
            if backend != "onnxruntime":
                raw = engine.run({"image": x})["raw"]
                result.setdefault("parity", {})[f"detector {backend}"] = {
                    "max_abs_diff_raw": float(np.abs(raw - raw_ref).max()),
                    **_matched_detections(reference, decode_yolo(raw, 0.05, post["iou_threshold"],
                                                                 box=box))}
        stages["detector_postprocess"] = {"cpu": _median_time(
            lambda: decode_yolo(raw_ref, post["conf_threshold"], post["iou_threshold"], box=box),
            runs)}
    if "segmenter" in engines:
        hw = bundle.graph("segmenter").input_hw or TASK_HW
        s_in = segmenter_input(fused_y, hw)
        logits_ref = engines["segmenter"]["onnxruntime"].run({"image": s_in})["logits"]
        map_ref = segmentation_class_map(logits_ref, fused_y.shape)
        stages["segmenter_input"] = {"cpu": _median_time(lambda: segmenter_input(fused_y, hw),
                                                         runs)}
        for backend, engine in engines["segmenter"].items():
            stages.setdefault("segmenter", {})[backend] = _median_time(
                lambda e=engine: e.run({"image": s_in}), runs)
            if backend != "onnxruntime":
                logits = engine.run({"image": s_in})["logits"]
                agreement = float(np.mean(segmentation_class_map(logits, fused_y.shape)
                                          == map_ref))
                result.setdefault("parity", {})[f"segmenter {backend}"] = {
                    "class_map_agreement": agreement}
        stages["segmenter_postprocess"] = {"cpu": _median_time(
            lambda: segmentation_class_map(logits_ref, fused_y.shape), runs)}
    colour = _median_time(lambda: restore_colour(fused_y, pair.chroma), runs)
    stages["colour_restore"] = {"cpu": colour}
    result["stages_s"] = stages
    backends = {b for g in graphs for b in stages.get(g, {})}
    for backend in sorted(backends):
        if all(backend in stages.get(g, {}) for g in graphs):
            cpu_stages = sum(v["cpu"] for k, v in stages.items() if "cpu" in v)
            result.setdefault("frame_s", {})[backend] = cpu_stages + sum(
                stages[g][backend] for g in graphs)
    # A second load must come from the engine cache, not a rebuild.
    if "tensorrt" in engines.get("fusion", {}):
        start = time.perf_counter()
        again = create_engine(bundle.graph("fusion").path, "tensorrt", precision="fp16",
                              cache_dir=out / "engine_cache",
                              input_shapes={k: v.shape for k, v in feeds.items()})
        again.run(feeds)
        result["tensorrt_cached_load_s"] = time.perf_counter() - start
        result["tensorrt_cache_state"] = again.details.get("cache")
    for per_graph in engines.values():
        for engine in per_graph.values():
            engine.close()
    return result


def _torch_fusion(work: Path, feeds: dict[str, np.ndarray], reference: np.ndarray, runs: int,
                  stages: dict[str, dict[str, float]], result: dict[str, Any]) -> None:
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        return
    from tdfusion_ros.nets.checkpoints import load_network

    net = load_network(work / "fusion_checkpoint.pth", "fusion").cuda()
    ir = torch.from_numpy(feeds["ir"]).cuda()
    vis = torch.from_numpy(feeds["vis"]).cuda()
    for label, dtype in (("torch-cuda-fp32", torch.float32), ("torch-cuda-fp16", torch.float16)):
        model = net.to(dtype)

        def step(model: Any = model, dtype: Any = dtype) -> Any:
            with torch.inference_mode():
                out = model(ir.to(dtype), vis.to(dtype)).float().cpu().numpy()
            return out

        stages.setdefault("fusion", {})[label] = _median_time(step, runs)
        result.setdefault("parity", {})[f"fusion {label}"] = {
            "max_abs_diff": float(np.abs(step() - reference).max()),
            "tolerance": FUSION_TOLERANCE}
    result["gpu"] = torch.cuda.get_device_name(0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("--out", type=Path, default=REPO / ".gpu_check")
    prep.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    prep.add_argument("--checkpoint", type=Path, default=REPO.parent / "shared" / "data" /
                      "refusion_official" / "models" / "ReFusion_IVIF.pth")
    go = sub.add_parser("run")
    go.add_argument("--work", type=Path, default=REPO / ".gpu_check")
    go.add_argument("--out", type=Path, required=True)
    go.add_argument("--runs", type=int, default=20)
    go.add_argument("--budget", type=float, default=150.0,
                    help="seconds after which no further TensorRT engine is built")
    args = parser.parse_args()
    if args.step == "prepare":
        prepare(args.out, args.data, args.checkpoint)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args.work, args.out, args.runs, args.budget)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({k: v for k, v in result.items() if k != "environment"}, indent=1,
                     default=str))
    failed = [k for k, v in result.get("parity", {}).items()
              if "max_abs_diff" in v and k.startswith("fusion ")
              and v["max_abs_diff"] > FUSION_TOLERANCE]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
