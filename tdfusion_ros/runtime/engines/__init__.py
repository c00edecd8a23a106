"""Inference engines for the bundle's ONNX graphs, behind one small interface.

    engine = create_engine("models/default/fusion.onnx", backend="auto")
    fused = engine.run({"ir": ir_y, "vis": vis_y})["fused"]
    print(engine.describe())   # which backend, device and precision actually run

Backends: ``onnxruntime`` (CPU; ``device="cuda"`` for its CUDA provider), ``tensorrt``
(builds and caches an engine at first use) and ``torch`` (development: runs the PyTorch
module the graph came from). ``auto`` takes TensorRT when it is importable and a GPU is
present, else ONNX Runtime's CUDA provider, else ONNX Runtime on the CPU, and records why in
``engine.selection``. An explicit request never falls back: asking for ``tensorrt`` on a
machine without it raises :class:`BackendUnavailableError` saying what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tdfusion_ros.runtime.engines.base import (
    BackendUnavailableError,
    Engine,
    EngineError,
    TensorSpec,
    check_feeds,
)

__all__ = [
    "BACKENDS",
    "BackendUnavailableError",
    "Engine",
    "EngineError",
    "TensorSpec",
    "available_backends",
    "check_feeds",
    "create_engine",
]

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


def _tensorrt_reason(device_id: int) -> str:
    from tdfusion_ros.runtime.engines.tensorrt_engine import tensorrt_status

    gpu, why = tensorrt_status(device_id)
    return "" if gpu is not None else why


def _ort_cuda_reason(device_id: int) -> str:
    from tdfusion_ros.runtime.engines.cuda_driver import probe_gpu
    from tdfusion_ros.runtime.engines.onnxruntime_engine import cuda_provider_available

    available, why = cuda_provider_available()
    if not available:
        return why
    gpu, why = probe_gpu(device_id)
    return "" if gpu is not None else why


def available_backends(device_id: int = 0) -> dict[str, str]:
    """Each concrete backend -> "" when it can run here, else why not."""
    reasons = {"tensorrt": _tensorrt_reason(device_id),
               "onnxruntime-cuda": _ort_cuda_reason(device_id),
               "onnxruntime-cpu": ""}
    try:
        import importlib.util

        reasons["torch"] = "" if importlib.util.find_spec("torch") else "PyTorch not installed"
    except ValueError:  # pragma: no cover
        reasons["torch"] = "PyTorch not importable"
    return reasons


def _verify_hash(path: Path, expected_sha256: str) -> None:
    from tdfusion_ros.runtime.engines.tensorrt_engine import file_sha256

    actual = file_sha256(path)
    if actual != expected_sha256.lower():
        raise EngineError(f"{path}: sha256 {actual} does not match the expected "
                          f"{expected_sha256}; the file changed after export: re-export it "
                          "or restore the original")


def create_engine(
    onnx_path: str | Path,
    backend: str = "auto",
    *,
    name: str | None = None,
    device: str = "cpu",
    device_id: int = 0,
    threads: int | None = None,
    optimisation: str = "all",
    spin: bool = False,
    specialise_shapes: bool = False,
    memory_pattern: bool = False,
    precision: str = "fp16",
    cache_dir: str | Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    int8_calibration: str | Path | None = None,
    torch_module: Any = None,
    expected_sha256: str | None = None,
) -> Engine:
    """Load one ONNX graph on the requested backend.

    ``device`` applies to ``onnxruntime`` ("cpu" or "cuda") and ``torch``; ``precision``,
    ``cache_dir``, ``input_shapes`` and ``int8_calibration`` to ``tensorrt``; ``threads``,
    ``optimisation``, ``spin``, ``specialise_shapes`` and ``memory_pattern`` to ONNX Runtime
    (see ``onnxruntime_engine`` for why each is set as it is).
    ``torch_module`` is the PyTorch module for the ``torch`` backend (required there).
    """
    path = Path(onnx_path)
    if backend not in BACKENDS:
        raise EngineError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise EngineError(f"{path}: ONNX file not found; export the bundle with "
                          "`python training/export.py` or point to the bundle folder")
    if expected_sha256 is not None:
        _verify_hash(path, expected_sha256)
    ort_options = {"threads": threads, "optimisation": optimisation, "spin": spin,
                   "specialise_shapes": specialise_shapes, "memory_pattern": memory_pattern,
                   "name": name}

    if backend == "onnxruntime":
        from tdfusion_ros.runtime.engines.onnxruntime_engine import OnnxRuntimeEngine

        engine: Engine = OnnxRuntimeEngine(path, device=device, device_id=device_id,
                                           **ort_options)
        engine.selection = f"requested onnxruntime on {device}"
        return engine
    if backend == "tensorrt":
        from tdfusion_ros.runtime.engines.tensorrt_engine import TensorRTEngine

        engine = TensorRTEngine(path, precision=precision, device_id=device_id,
                                cache_dir=cache_dir, input_shapes=input_shapes,
                                int8_calibration=int8_calibration, name=name)
        engine.selection = "requested tensorrt"
        return engine
    if backend == "torch":
        return _torch_engine(path, torch_module, device, name)

    skipped = []
    why = _tensorrt_reason(device_id)
    if not why:
        from tdfusion_ros.runtime.engines.tensorrt_engine import TensorRTEngine

        engine = TensorRTEngine(path, precision=precision, device_id=device_id,
                                cache_dir=cache_dir, input_shapes=input_shapes,
                                int8_calibration=int8_calibration, name=name)
        engine.selection = "auto: tensorrt (importable, GPU present)"
        return engine
    skipped.append(f"tensorrt skipped ({why})")
    why = _ort_cuda_reason(device_id)
    from tdfusion_ros.runtime.engines.onnxruntime_engine import OnnxRuntimeEngine

    if not why:
        engine = OnnxRuntimeEngine(path, device="cuda", device_id=device_id, **ort_options)
        engine.selection = "auto: onnxruntime CUDA; " + "; ".join(skipped)
        return engine
    skipped.append(f"onnxruntime CUDA skipped ({why})")
    engine = OnnxRuntimeEngine(path, device="cpu", **ort_options)
    engine.selection = "auto: onnxruntime CPU; " + "; ".join(skipped)
    return engine


def _torch_engine(path: Path, module: Any, device: str, name: str | None) -> Engine:
    if module is None:
        raise EngineError("backend 'torch' runs the PyTorch module the graph was exported "
                          "from, not the ONNX file: pass torch_module=... (for the fusion "
                          "graph, tdfusion_ros.nets.checkpoints.load_network(checkpoint))")
    from tdfusion_ros.runtime.engines.onnxruntime_engine import OnnxRuntimeEngine
    from tdfusion_ros.runtime.engines.torch_engine import TorchEngine

    # The ONNX file still defines the interface, so a torch engine is a drop-in for the others.
    reference = OnnxRuntimeEngine(path, optimisation="disable", threads=1)
    engine = TorchEngine(module, reference.inputs, reference.outputs, device=device,
                         name=name or path.stem)
    reference.close()
    engine.selection = "requested torch"
    return engine
