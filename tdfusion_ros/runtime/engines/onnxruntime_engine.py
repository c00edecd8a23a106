"""ONNX Runtime backend: CPU or CUDA execution provider, with every session setting explicit.

Settings that matter for the memory-bound fusion network on a small CPU, and why each is set
rather than left to ONNX Runtime's defaults:

* graph optimisation ``all``: on x86 this includes the NCHWc layout transformer, which runs
  the depthwise and 3x3 convolutions in a blocked layout several times faster than plain NCHW.
* ``threads``: intra-op threads; default = the CPUs this process may use. Inter-op is 1 and
  execution sequential: the graphs are chains, parallel branches would only fight for cores.
* ``spin``: whether idle worker threads busy-wait; off by default. Spinning can shave a little
  latency on an idle machine, but it burns the cores the rest of a ROS system needs, and on a
  busy 2-core machine F ran faster without it (median 4.3 vs 5.3 s at 640x480, measured
  under load), since spinning threads compete with the one doing the work.
* ``memory_pattern``: off by default. ONNX Runtime's memory pattern pre-plans one block
  for all intermediate tensors; for F at 640x480 that doubled peak RSS (965 vs 518 MiB,
  measured) without being faster than the arena's own reuse.
* ``specialise_shapes``: off by default. One session per input size with the dynamic dims
  fixed (``add_free_dimension_override_by_name``), kept for the last few sizes, so that the
  optimiser knows every shape. For the fusion graph as exported now (per-head attention mix,
  sizes read from the inputs: ``training/export.py``) that was 3-16 % faster at 640x480 in
  interleaved runs on 2 busy cores (``benchmarks/bench_pipeline.py --fixed-shape``), for
  ~150 MiB more peak memory (F alone: 924 vs 771 MiB) and a session build at the first frame
  of each new size; the pipeline turns it on for the fusion graph
  (``PipelineSettings.fixed_shape``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from tdfusion_ros.runtime.engines.base import (
    BackendUnavailableError,
    Engine,
    EngineError,
    TensorSpec,
)

OPTIMISATION_LEVELS = ("disable", "basic", "extended", "all")
MAX_SPECIALISED_SESSIONS = 4
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16",
               "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8",
               "tensor(bool)": "bool"}


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as err:  # pragma: no cover - onnxruntime is a runtime dependency
        raise BackendUnavailableError(
            "backend 'onnxruntime' unavailable: the Python package onnxruntime is not "
            "installed (pip install onnxruntime, or onnxruntime-gpu for CUDA)") from err
    return onnxruntime


def cuda_provider_available() -> tuple[bool, str]:
    """Whether this onnxruntime build has the CUDA execution provider, and why not."""
    ort = _import_ort()
    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" in providers:
        return True, "onnxruntime CUDAExecutionProvider available"
    return False, (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (it offers "
                   f"{', '.join(providers)}); install onnxruntime-gpu built for your CUDA")


def default_threads() -> int:
    """CPUs this process may run on (respects taskset/cgroups where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _spec(value: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, (int, str)) else None for d in value.shape)
    return TensorSpec(value.name, shape, _ORT_DTYPES.get(value.type, value.type))


def _is_out_of_memory(err: Exception) -> bool:
    text = str(err).lower()
    return "out of memory" in text or "failed to allocate" in text or "bad_alloc" in text


class OnnxRuntimeEngine(Engine):
    """A graph in an ONNX Runtime session (``device`` "cpu" or "cuda")."""

    def __init__(self, path: str | Path, *, device: str = "cpu", device_id: int = 0,
                 threads: int | None = None, optimisation: str = "all", spin: bool = False,
                 specialise_shapes: bool = False, memory_pattern: bool = False,
                 name: str | None = None,
                 optimised_model_path: str | Path | None = None) -> None:
        ort = _import_ort()
        path = Path(path)
        if not path.is_file():
            raise EngineError(f"{path}: ONNX file not found; export the bundle with "
                              "`python training/export.py` or point to the bundle folder")
        if device not in ("cpu", "cuda"):
            raise EngineError(f"onnxruntime device must be 'cpu' or 'cuda', got {device!r}")
        if optimisation not in OPTIMISATION_LEVELS:
            raise EngineError(f"optimisation must be one of {OPTIMISATION_LEVELS}, "
                              f"got {optimisation!r}")
        if device == "cuda":
            available, reason = cuda_provider_available()
            if not available:
                raise BackendUnavailableError(
                    f"backend 'onnxruntime' on CUDA unavailable: {reason}")
        self._ort = ort
        self._path = path
        self._want_cuda = device == "cuda"
        self._device_id = device_id
        self._threads = threads or default_threads()
        self._optimisation = optimisation
        self._spin = spin
        self._specialise = specialise_shapes
        self._memory_pattern = memory_pattern
        self._optimised_model_path = optimised_model_path
        self._sessions: OrderedDict[tuple[tuple[str, int], ...], Any] = OrderedDict()
        self._base = self._make_session({}, metadata_only=specialise_shapes)
        named = any(isinstance(d, str) for v in self._base.get_inputs() for d in v.shape)
        if specialise_shapes and not named:
            # Nothing to fix per size (static graph, or unnamed dynamic dims): one session.
            self._base = self._make_session({})
            self._specialise = False
        used = self._base.get_providers()[0]
        if device == "cuda" and used != "CUDAExecutionProvider":
            raise BackendUnavailableError(
                f"{path}: onnxruntime could not start the CUDA execution provider (session "
                f"fell back to {used}); check the CUDA/cuDNN libraries that onnxruntime-gpu "
                "needs, or use the CPU")
        super().__init__(
            name=name or path.stem,
            inputs=tuple(_spec(v) for v in self._base.get_inputs()),
            outputs=tuple(_spec(v) for v in self._base.get_outputs()),
            backend="onnxruntime",
            device=f"cuda:{device_id}" if device == "cuda" else "cpu",
            precision="fp32",
            details={"provider": used, "optimisation": optimisation,
                     "threads": self._threads, "spin": spin,
                     "specialise_shapes": self._specialise,
                     "memory_pattern": memory_pattern, "ort": ort.__version__},
        )

    def _options(self, overrides: dict[str, int], metadata_only: bool = False) -> Any:
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }["disable" if metadata_only else self._optimisation]
        options.intra_op_num_threads = self._threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.enable_mem_pattern = self._memory_pattern
        options.enable_cpu_mem_arena = True
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning",
                                         "1" if self._spin else "0")
        for dim, value in overrides.items():
            options.add_free_dimension_override_by_name(dim, value)
        if self._optimised_model_path is not None and not metadata_only:
            options.optimized_model_filepath = str(self._optimised_model_path)
        return options

    def _make_session(self, overrides: dict[str, int], metadata_only: bool = False) -> Any:
        providers: list[Any] = ["CPUExecutionProvider"]
        if self._want_cuda:
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": self._device_id}))
        try:
            return self._ort.InferenceSession(str(self._path),
                                              self._options(overrides, metadata_only),
                                              providers=providers)
        except Exception as err:  # ORT raises its own exception types from C++
            if _is_out_of_memory(err):
                raise EngineError(f"{self._path}: out of memory while loading the graph: "
                                  "free memory or use a smaller input") from err
            raise EngineError(f"{self._path}: onnxruntime could not load the graph: "
                              f"{err}") from err

    def _session_for(self, feeds: dict[str, np.ndarray]) -> Any:
        if not self._specialise:
            return self._base
        binding: dict[str, int] = {}
        for spec in self.inputs:
            for want, got in zip(spec.shape, feeds[spec.name].shape):
                if isinstance(want, str):
                    binding[want] = int(got)
        if not binding:
            return self._base
        key = tuple(sorted(binding.items()))
        session = self._sessions.get(key)
        if session is None:
            session = self._make_session(binding)
            self._sessions[key] = session
            while len(self._sessions) > MAX_SPECIALISED_SESSIONS:
                self._sessions.popitem(last=False)
        else:
            self._sessions.move_to_end(key)
        return session

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._base is None:
            raise EngineError(f"{self.name}: engine is closed")
        session = self._session_for(feeds)
        try:
            values = session.run(None, feeds)
        except Exception as err:
            if _is_out_of_memory(err):
                where = "GPU" if self.device.startswith("cuda") else "host"
                raise EngineError(
                    f"{self.name}: {where} out of memory running the graph at input shapes "
                    f"{ {k: v.shape for k, v in feeds.items()} }; use a smaller input, free "
                    "memory held by other processes, or run on the CPU") from err
            raise EngineError(f"{self.name}: onnxruntime failed: {err}") from err
        return {spec.name: value for spec, value in zip(self.outputs, values)}

    def close(self) -> None:
        self._sessions.clear()
        self._base = None
        super().close()
