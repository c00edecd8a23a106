"""TensorRT backend: an engine built from the bundle's ONNX at first use and cached on disk.

* Precision: FP16 by default. TensorRT 8.6/10.x (JetPack 6) take ``BuilderFlag.FP16``;
  TensorRT 11 removed weak typing, so there the graph builds in FP32 and ``precision`` says
  so (an FP16 graph would have to be exported as such). INT8 uses entropy calibration over a
  folder of image pairs (``ir/`` and ``vi/`` with the same file names); the calibration
  table is cached beside the engines. TensorRT 11 has no calibrator API: INT8 is refused there.
* Shapes: one engine per input size (an optimisation profile with min = opt = max), built
  the first time that size is run unless ``input_shapes`` builds it up front.
* Cache: ``<stem>-<precision>-<shape>-<key>.engine`` with a JSON sidecar holding the full key
  (ONNX sha256, TensorRT version, GPU name and compute capability, precision, input shapes)
  and the engine file's own sha256. A sidecar that does not match, an engine file whose hash
  differs, or one TensorRT cannot deserialise is rebuilt, never used.
* Missing TensorRT or GPU raises :class:`BackendUnavailableError` naming what is missing; nothing
  here ever falls back to the CPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tdfusion_ros.runtime.engines.base import (
    BackendUnavailableError,
    Engine,
    EngineError,
    TensorSpec,
)
from tdfusion_ros.runtime.engines.cuda_driver import (
    CudaContext,
    GpuInfo,
    GpuOutOfMemoryError,
    probe_gpu,
)

PRECISIONS = ("fp16", "fp32", "int8")
DEFAULT_WORKSPACE = 1 << 30
CALIBRATION_IMAGES = 64


def import_tensorrt() -> Any:
    """The tensorrt module, or BackendUnavailableError saying how to get it."""
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailableError(
            "TensorRT is not installed (Python module 'tensorrt' not importable): on a Jetson "
            "it comes with JetPack (apt install python3-libnvinfer); on a desktop pip install "
            "tensorrt; or choose backend='onnxruntime'") from err
    return tensorrt


def tensorrt_status(device_id: int = 0) -> tuple[GpuInfo | None, str]:
    """(GPU, "") when TensorRT can run here, else (None, every reason it cannot)."""
    reasons = []
    try:
        import_tensorrt()
    except BackendUnavailableError as err:
        reasons.append(str(err))
    gpu, why = probe_gpu(device_id)
    if gpu is None:
        reasons.append(why)
    return (gpu, "") if not reasons else (None, "; ".join(reasons))


def default_cache_dir() -> Path:
    base = os.environ.get("TDFUSION_ENGINE_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tdfusion_ros" / "tensorrt"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _shape_tag(shapes: Mapping[str, Sequence[int]]) -> str:
    return "_".join("x".join(str(d) for d in shape) for _, shape in sorted(shapes.items()))


class _Logger:
    """Keeps TensorRT's warnings and errors so a failed build can say why."""

    def __init__(self, trt: Any) -> None:
        outer = self

        class Capture(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity: Any, msg: str) -> None:
                if int(severity) <= int(trt.ILogger.Severity.WARNING):
                    outer.messages.append(str(msg))

        self.messages: list[str] = []
        self.logger = Capture()

    def tail(self, count: int = 5) -> str:
        return " | ".join(self.messages[-count:]) or "no message from TensorRT"


class TensorRTEngine(Engine):
    """A graph compiled by TensorRT for one GPU, one precision and one input size at a time."""

    def __init__(self, path: str | Path, *, precision: str = "fp16", device_id: int = 0,
                 cache_dir: str | Path | None = None,
                 input_shapes: Mapping[str, Sequence[int]] | None = None,
                 int8_calibration: str | Path | None = None,
                 workspace_bytes: int = DEFAULT_WORKSPACE, name: str | None = None) -> None:
        path = Path(path)
        if precision not in PRECISIONS:
            raise EngineError(f"TensorRT precision must be one of {PRECISIONS}, got "
                              f"{precision!r}")
        if not path.is_file():
            raise EngineError(f"{path}: ONNX file not found; export the bundle with "
                              "`python training/export.py` or point to the bundle folder")
        gpu, why = tensorrt_status(device_id)
        if gpu is None:
            raise BackendUnavailableError(
                f"backend 'tensorrt' unavailable on this machine: {why}. Nothing was started "
                "on the CPU in its place: ask for backend='onnxruntime' (or 'auto') to run there")
        trt = import_tensorrt()
        if precision == "int8":
            if int8_calibration is None:
                raise EngineError("INT8 needs calibration data: pass int8_calibration=<folder "
                                  "with ir/ and vi/ image pairs>")
            if not hasattr(trt, "IInt8EntropyCalibrator2") or _major(trt) >= 11:
                raise BackendUnavailableError(
                    f"TensorRT {trt.__version__} has no implicit INT8 calibration (removed in "
                    "11.x); use precision 'fp16', or TensorRT 10 (JetPack 6)")
        self._trt = trt
        self._gpu = gpu
        self._path = path
        self._onnx_sha256 = file_sha256(path)
        self._requested = precision
        self._fp16_flag = hasattr(trt.BuilderFlag, "FP16")
        actual = "fp32" if precision == "fp16" and not self._fp16_flag else precision
        self._cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._calibration = Path(int8_calibration) if int8_calibration else None
        self._workspace = workspace_bytes
        self._log = _Logger(trt)
        self._cuda = CudaContext(device_id)
        self._runtime = trt.Runtime(self._log.logger)
        self._engines: dict[tuple[tuple[str, tuple[int, ...]], ...], dict[str, Any]] = {}
        inputs, outputs = self._parse_io()
        super().__init__(
            name=name or path.stem, inputs=inputs, outputs=outputs, backend="tensorrt",
            device=f"cuda:{device_id} ({gpu.name})", precision=actual,
            details={"tensorrt": trt.__version__, "cache_dir": str(self._cache_dir)},
        )
        if precision == "fp16" and not self._fp16_flag:
            self.details["note"] = (f"TensorRT {trt.__version__} has no FP16 builder flag "
                                    "(strong typing only): built in FP32")
        if input_shapes:
            self._engine_for({k: tuple(int(d) for d in v) for k, v in input_shapes.items()})

    # -- building -------------------------------------------------------------------------
    def _network(self, builder: Any) -> tuple[Any, Any]:
        trt = self._trt
        flags = 0
        creation = getattr(trt, "NetworkDefinitionCreationFlag", None)
        if _major(trt) < 10 and creation is not None and hasattr(creation, "EXPLICIT_BATCH"):
            flags = 1 << int(creation.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self._log.logger)
        if not parser.parse(self._path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise EngineError(f"{self._path}: TensorRT cannot parse the ONNX graph: {errors}")
        return network, parser

    def _parse_io(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        builder = self._trt.Builder(self._log.logger)
        network, _parser = self._network(builder)

        def spec(tensor: Any) -> TensorSpec:
            # TensorRT reports dynamic dims as -1; naming them by axis makes inputs that share
            # an axis (the fusion graph's ir and vis planes) be checked as one size.
            dims = tuple(int(d) if int(d) >= 0 else f"dim{axis}"
                         for axis, d in enumerate(tensor.shape))
            return TensorSpec(tensor.name, dims, np.dtype(self._trt.nptype(tensor.dtype)).name)

        inputs = tuple(spec(network.get_input(i)) for i in range(network.num_inputs))
        outputs = tuple(spec(network.get_output(i)) for i in range(network.num_outputs))
        return inputs, outputs

    def _key(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
        key = {"onnx_sha256": self._onnx_sha256, "tensorrt": str(self._trt.__version__),
               "gpu": self._gpu.name, "compute_capability": list(self._gpu.compute_capability),
               "precision": self.precision,
               "input_shapes": {k: list(v) for k, v in sorted(shapes.items())}}
        if self._calibration is not None and self.precision == "int8":
            key["calibration"] = self._calibration_digest()
        return key

    def _cache_paths(self, shapes: Mapping[str, tuple[int, ...]],
                     key: dict[str, Any]) -> tuple[Path, Path]:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        stem = f"{self._path.stem}-{self.precision}-{_shape_tag(shapes)}-{digest}"
        return self._cache_dir / f"{stem}.engine", self._cache_dir / f"{stem}.json"

    def _load_cached(self, engine_path: Path, meta_path: Path, key: dict[str, Any]) -> Any:
        """A deserialised engine, or None with the reason recorded, if the cache is unusable."""
        if not engine_path.is_file() or not meta_path.is_file():
            self.details["cache"] = "miss"
            return None
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            self.details["cache"] = "rebuilt: unreadable sidecar"
            return None
        if meta.get("key") != key:
            self.details["cache"] = "rebuilt: stale (key changed)"
            return None
        data = engine_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
            self.details["cache"] = "rebuilt: corrupt (engine hash mismatch)"
            return None
        engine = self._runtime.deserialize_cuda_engine(data)
        if engine is None:
            self.details["cache"] = "rebuilt: TensorRT could not deserialise it"
            return None
        self.details["cache"] = "hit"
        return engine

    def _build(self, shapes: Mapping[str, tuple[int, ...]]) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._log.logger)
        network, _parser = self._network(builder)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self._workspace)
        profile = builder.create_optimization_profile()
        for name, shape in shapes.items():
            profile.set_shape(name, shape, shape, shape)
        config.add_optimization_profile(profile)
        if self.precision == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        calibrator = None
        if self.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            if self._fp16_flag:
                config.set_flag(trt.BuilderFlag.FP16)  # layers INT8 cannot take run in FP16
            calibrator = _make_calibrator(trt, self, shapes)
            config.int8_calibrator = calibrator
            config.set_calibration_profile(profile)
        self._log.messages.clear()
        self._cuda.make_current()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            tail = self._log.tail()
            if "out of memory" in tail.lower():
                raise EngineError(f"{self._path}: GPU out of memory while building the "
                                  f"TensorRT engine ({tail}); free GPU memory or lower "
                                  "workspace_bytes")
            raise EngineError(f"{self._path}: TensorRT engine build failed: {tail}")
        return bytes(serialized)

    def _engine_for(self, shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
        lookup = tuple(sorted(shapes.items()))
        if lookup in self._engines:
            return self._engines[lookup]
        key = self._key(shapes)
        engine_path, meta_path = self._cache_paths(shapes, key)
        engine = self._load_cached(engine_path, meta_path, key)
        if engine is None:
            data = self._build(shapes)
            _atomic_write(engine_path, data)
            meta = {"key": key, "engine_sha256": hashlib.sha256(data).hexdigest()}
            _atomic_write(meta_path, json.dumps(meta, indent=1).encode())
            engine = self._runtime.deserialize_cuda_engine(data)
            if engine is None:
                raise EngineError(f"{self._path}: TensorRT could not load the engine it just "
                                  f"built: {self._log.tail()}")
        self.details["engine_file"] = str(engine_path)
        context = engine.create_execution_context()
        if context is None:
            raise EngineError(f"{self._path}: could not create a TensorRT execution context "
                              f"(GPU memory?): {self._log.tail()}")
        prepared = self._bind(engine, context, shapes)
        self._engines[lookup] = prepared
        return prepared

    def _bind(self, engine: Any, context: Any, shapes: dict[str, tuple[int, ...]]
              ) -> dict[str, Any]:
        trt = self._trt
        self._cuda.make_current()
        buffers: dict[str, tuple[int, np.ndarray | None, int]] = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, shapes[name])
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            pointer = self._cuda.alloc(nbytes)
            context.set_tensor_address(name, pointer)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            host = None if is_input else np.empty(shape, dtype)
            buffers[name] = (pointer, host, nbytes)
        return {"engine": engine, "context": context, "buffers": buffers}

    # -- running --------------------------------------------------------------------------
    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._cuda is None:
            raise EngineError(f"{self.name}: engine is closed")
        prepared = self._engine_for({k: tuple(v.shape) for k, v in feeds.items()})
        self._cuda.make_current()
        buffers = prepared["buffers"]
        for name, array in feeds.items():
            pointer, _, nbytes = buffers[name]
            self._cuda.to_device(pointer, array.ctypes.data, nbytes)
        self._log.messages.clear()
        if not prepared["context"].execute_async_v3(self._cuda.stream):
            tail = self._log.tail()
            if "out of memory" in tail.lower():
                raise GpuOutOfMemoryError(f"{self.name}: GPU out of memory running the TensorRT "
                                          f"engine ({tail}); free GPU memory held by other "
                                          "processes, or use a smaller input")
            raise EngineError(f"{self.name}: TensorRT execution failed: {tail}")
        outputs = {}
        for spec in self.outputs:
            pointer, host, nbytes = buffers[spec.name]
            assert host is not None
            self._cuda.to_host(host.ctypes.data, pointer, nbytes)
            outputs[spec.name] = host
        self._cuda.synchronize()
        return {name: value.copy() for name, value in outputs.items()}

    def close(self) -> None:
        self._engines.clear()
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None  # type: ignore[assignment]
        super().close()

    # -- INT8 calibration -----------------------------------------------------------------
    def _calibration_digest(self) -> str:
        assert self._calibration is not None
        digest = hashlib.sha256()
        for path in sorted(self._calibration.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(f"{path.relative_to(self._calibration)}:{stat.st_size}".encode())
        return digest.hexdigest()[:16]

    def calibration_feeds(self, shapes: Mapping[str, tuple[int, ...]]
                          ) -> list[dict[str, np.ndarray]]:
        """Network inputs made from the calibration pairs, resized to the engine's size.

        Two-input graphs (fusion) get (infrared Y, visible Y); one-input graphs (detector,
        segmenter, which see the fused Y) get the visible Y as a stand-in for a fused image.
        """
        import cv2

        from tdfusion_ros.runtime.colour import prepare_pair
        from tdfusion_ros.runtime.image_io import read_image, to_unit_float

        assert self._calibration is not None
        ir_dir, vis_dir = self._calibration / "ir", self._calibration / "vi"
        if not ir_dir.is_dir() or not vis_dir.is_dir():
            raise EngineError(f"{self._calibration}: INT8 calibration folder needs ir/ and vi/ "
                              "subfolders of same-named images")
        names = sorted(p.name for p in ir_dir.iterdir() if (vis_dir / p.name).is_file())
        if not names:
            raise EngineError(f"{self._calibration}: no image pairs for INT8 calibration")
        feeds = []
        for name in names[:CALIBRATION_IMAGES]:
            pair = prepare_pair(to_unit_float(read_image(ir_dir / name)),
                                to_unit_float(read_image(vis_dir / name)))
            planes = [pair.ir_y, pair.vis_y] if len(self.inputs) == 2 else [pair.vis_y]
            feed = {}
            for spec, plane in zip(self.inputs, planes):
                height, width = shapes[spec.name][-2:]
                resized = cv2.resize(plane, (width, height), interpolation=cv2.INTER_AREA)
                feed[spec.name] = np.ascontiguousarray(
                    resized.reshape(shapes[spec.name]).astype(np.float32))
            feeds.append(feed)
        return feeds


def _make_calibrator(trt: Any, engine: TensorRTEngine,
                     shapes: Mapping[str, tuple[int, ...]]) -> Any:
    cache_file = engine._cache_dir / (
        f"{engine._path.stem}-{_shape_tag(shapes)}-{engine._calibration_digest()}.calib")
    cuda = engine._cuda

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._feeds: list[dict[str, np.ndarray]] | None = None
            self._index = 0
            self._pointers = {name: cuda.alloc(int(np.prod(shape)) * 4)
                              for name, shape in shapes.items()}

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str], *args: Any) -> list[int] | None:
            if self._feeds is None:
                self._feeds = engine.calibration_feeds(shapes)
            if self._index >= len(self._feeds):
                return None
            feed = self._feeds[self._index]
            self._index += 1
            for name in names:
                array = feed[name]
                cuda.to_device(self._pointers[name], array.ctypes.data, array.nbytes)
            cuda.synchronize()
            return [self._pointers[name] for name in names]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: Any) -> None:
            _atomic_write(cache_file, bytes(cache))

    return Calibrator()
