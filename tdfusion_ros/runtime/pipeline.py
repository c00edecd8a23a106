"""The fusion pipeline of one frame, free of ROS: the node and the offline replay share it.

    pipeline = FusionPipeline("models/default", PipelineSettings(backend="onnxruntime"))
    result = pipeline.process(thermal, rgb)          # thermal H x W uint8/uint16, rgb BGR
    result.fused, result.detections, result.class_map, result.timings_ms

Stages, in order: thermal gain control (16-bit radiometric -> 8 bits, stateful so the image
does not flicker), registration onto the RGB pixel grid, luma split (the networks see Y
only), the fusion graph, colour restore (fused Y + the visible chroma), then the detector
(letterbox + ``decode_yolo``) and the segmenter (class map at the fused size) on the fused Y.
Every stage is timed; ``inference_ms`` (engine runs) and ``overhead_ms`` (everything else)
are what a deployment budget is made of.

Single-modality fallback (a camera went silent): ``process_thermal`` / ``process_rgb`` put
the one image on the output grid and use its Y as the fused Y; detection and segmentation
still run. The output is the modality itself (grey thermal, or the RGB image unchanged), not
a network guess at the missing camera, so nothing in it is invented.

A bundle without a detector or segmenter graph disables that output with a log line; the
settings may disable them too. Thresholds can change between frames (``set_thresholds``);
a frame always sees one consistent set. No torch, ultralytics or transformers on this path.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tdfusion_ros.runtime.bundle import Bundle, BundleError, GraphSpec, bundle_file_of, load_bundle
from tdfusion_ros.runtime.colour import is_colour, prepare_pair, restore_colour
from tdfusion_ros.runtime.engines import BACKENDS, EngineError
from tdfusion_ros.runtime.image_io import to_unit_float
from tdfusion_ros.runtime.postprocess import (
    Detections,
    decode_yolo,
    detector_input,
    segmentation_class_map,
    segmenter_input,
)
from tdfusion_ros.runtime.registration import Registration, RegistrationConfig, RegistrationError
from tdfusion_ros.runtime.thermal_gain import GainConfig, ThermalGain

FUSION = "fusion"
THERMAL_ONLY = "thermal_only"
RGB_ONLY = "rgb_only"
MODES = (FUSION, THERMAL_ONLY, RGB_ONLY)
NODE_BACKENDS = tuple(b for b in BACKENDS if b != "torch")  # torch needs the PyTorch module
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp16", "fp32", "int8")
ENGINE_STAGES = ("fusion", "detector", "segmenter")

# Why a frame could not be processed (the node counts these by name).
SIZE_MISMATCH = "size_mismatch"
BAD_IMAGE = "bad_image"

EngineFactory = Callable[[Bundle, str], Any]


class PipelineError(RuntimeError):
    """The pipeline cannot be built (bundle, engine, settings); the message names the file."""


class PipelineInputError(ValueError):
    """One frame that cannot be processed; ``reason`` is a short counter name."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Thresholds:
    """Detector post-processing; replaced as a whole so a frame never sees a mix."""

    conf: float
    iou: float
    max_det: int

    def validate(self) -> Thresholds:
        if not 0.0 <= self.conf <= 1.0:
            raise ValueError(f"detection conf_threshold={self.conf!r} must be in [0, 1]")
        if not 0.0 <= self.iou <= 1.0:
            raise ValueError(f"detection iou_threshold={self.iou!r} must be in [0, 1]")
        if self.max_det < 1:
            raise ValueError(f"detection max_det={self.max_det!r} must be >= 1")
        return self


@dataclass(frozen=True)
class PipelineSettings:
    """How to build and run the pipeline; ``None`` thresholds mean the bundle's values."""

    backend: str = "auto"
    device: str = "cpu"
    threads: int = 0  # 0: every CPU this process may use
    spin: bool = False  # ORT busy-wait: faster alone, but steals cores from the robot
    # ORT: run the fusion graph in a session specialised to the frame size (built at the first
    # frame of each size): 3-16 % faster at 640x480 on 2 cores, ~150 MiB more peak memory.
    fixed_shape: bool = True
    precision: str = "fp16"
    cache_dir: str = ""
    detection: bool = True
    segmentation: bool = True
    conf_threshold: float | None = None
    iou_threshold: float | None = None
    max_det: int | None = None
    gain: GainConfig = field(default_factory=GainConfig)
    registration: RegistrationConfig = field(default_factory=RegistrationConfig)

    def validate(self) -> PipelineSettings:
        checks = [
            ("backend", self.backend in NODE_BACKENDS, f"must be one of {NODE_BACKENDS}"),
            ("device", self.device in DEVICES, f"must be one of {DEVICES}"),
            ("threads", self.threads >= 0, "must be >= 0 (0: all CPUs)"),
            ("precision", self.precision in PRECISIONS, f"must be one of {PRECISIONS}"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"pipeline setting {name}={getattr(self, name)!r} {why}")
        self.gain.validate()
        self.registration.validate()
        return self


@dataclass
class FrameResult:
    """What one frame produced; ``fused`` is always H x W x 3 uint8 BGR."""

    mode: str
    fused: np.ndarray
    fused_y: np.ndarray
    detections: Detections | None
    class_map: np.ndarray | None
    timings_ms: dict[str, float]

    @property
    def inference_ms(self) -> float:
        return sum(self.timings_ms.get(stage, 0.0) for stage in ENGINE_STAGES)

    @property
    def overhead_ms(self) -> float:
        return self.timings_ms.get("total", 0.0) - self.inference_ms


class LatencyStats:
    """Rolling per-stage samples (milliseconds) with p50/p99; thread-safe."""

    def __init__(self, window: int = 1000) -> None:
        self.window = max(1, int(window))
        self._lock = threading.Lock()
        self._samples: dict[str, deque[float]] = {}
        self._counts: dict[str, int] = {}

    def add(self, timings: Mapping[str, float]) -> None:
        with self._lock:
            for stage, value in timings.items():
                samples = self._samples.get(stage)
                if samples is None:
                    samples = self._samples[stage] = deque(maxlen=self.window)
                samples.append(float(value))
                self._counts[stage] = self._counts.get(stage, 0) + 1

    def summary(self) -> dict[str, dict[str, float]]:
        """stage -> {p50, p99, mean, max, count} over the window (count: all time)."""
        with self._lock:
            copies = {stage: np.fromiter(s, np.float64, len(s))
                      for stage, s in self._samples.items() if s}
            counts = dict(self._counts)
        out = {}
        for stage, values in copies.items():
            p50, p99 = np.percentile(values, (50, 99))
            out[stage] = {"p50": float(p50), "p99": float(p99), "mean": float(values.mean()),
                          "max": float(values.max()), "count": counts[stage]}
        return out

    def reset(self) -> None:
        with self._lock:
            self._samples.clear()
            self._counts.clear()


_PALETTE: np.ndarray | None = None


def palette() -> np.ndarray:
    """A fixed, distinct BGR colour per class id 0..255 (0, background, stays black)."""
    global _PALETTE
    if _PALETTE is None:
        hue = (np.arange(256) * 47) % 180  # 47 spreads neighbouring ids apart on OpenCV's hue
        hsv = np.stack([hue, np.full(256, 220), np.full(256, 255)], axis=1).astype(np.uint8)
        colours = cv2.cvtColor(hsv[:, None, :], cv2.COLOR_HSV2BGR)[:, 0, :]
        colours[0] = 0
        _PALETTE = colours
    return _PALETTE


def overlay(fused: np.ndarray, class_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The fused image with the class map blended on top (background left as it is)."""
    colours = palette()[class_map]
    blended = cv2.addWeighted(fused, 1.0 - alpha, colours, alpha, 0.0)
    background = class_map == 0
    blended[background] = fused[background]
    return blended


_F255 = np.float32(255.0)


def _is_colour_u8(image: np.ndarray) -> bool:
    """``colour.is_colour`` for uint8 BGR, deciding most colour images on a sparse sample."""
    sample = image[::7, ::7]
    if not (np.array_equal(sample[..., 0], sample[..., 1])
            and np.array_equal(sample[..., 1], sample[..., 2])):
        return True
    return is_colour(image)


def _to_bgr8(unit: np.ndarray) -> np.ndarray:
    """Float [0, 1] (grey or BGR) -> uint8 BGR, rounded and saturated in one OpenCV pass.

    Same values as ``colour.to_uint8`` (round half to even, clip to [0, 255]).
    """
    out = cv2.addWeighted(unit, 255.0, unit, 0.0, 0.0, dtype=cv2.CV_8U)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2BGR) if out.ndim == 2 else out


def _luma_split(thermal: np.ndarray | None, rgb: np.ndarray
                ) -> tuple[np.ndarray | None, np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """(infrared Y, visible Y, fused Y -> uint8 BGR) as ``colour.prepare_pair`` and
    ``restore_colour`` define them, without their extra full-image passes.

    The common case, grey thermal and colour RGB, keeps the visible YCrCb image and writes
    the fused Y into it: at 640x480 about 5 ms instead of 20 ms, equal to the reference up
    to float rounding (a few pixels in a million differ by one 8-bit level). Colour-mapped
    thermal images take the reference path (their chroma is mixed with the visible one).
    """
    grey_thermal = thermal is None or thermal.ndim == 2
    ir_y = None if thermal is None else np.divide(thermal, _F255, dtype=np.float32)
    if grey_thermal and rgb.ndim == 3 and rgb.dtype == np.uint8 and _is_colour_u8(rgb):
        ycrcb = cv2.cvtColor(np.divide(rgb, _F255, dtype=np.float32), cv2.COLOR_BGR2YCrCb)
        vis_y = cv2.extractChannel(ycrcb, 0)

        def restore(fused_y: np.ndarray) -> np.ndarray:
            cv2.insertChannel(np.clip(fused_y, 0.0, 1.0).astype(np.float32, copy=False),
                              ycrcb, 0)
            return _to_bgr8(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR))

        return ir_y, vis_y, restore
    if grey_thermal and rgb.dtype == np.uint8 and (rgb.ndim == 2 or not is_colour(rgb)):
        vis_y = np.divide(rgb if rgb.ndim == 2 else rgb[..., 0], _F255, dtype=np.float32)
        return ir_y, vis_y, lambda fused_y: _to_bgr8(np.clip(fused_y, 0.0, 1.0))
    luma = prepare_pair(to_unit_float(thermal if thermal is not None else rgb),
                        to_unit_float(rgb))

    def restore_reference(fused_y: np.ndarray) -> np.ndarray:
        fused = restore_colour(fused_y, luma.chroma)
        return cv2.cvtColor(fused, cv2.COLOR_GRAY2BGR) if fused.ndim == 2 else fused

    return luma.ir_y, luma.vis_y, restore_reference


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1000.0


def _default_engine_factory(settings: PipelineSettings) -> EngineFactory:
    from tdfusion_ros.runtime.bundle import engine_for

    options: dict[str, Any] = {"device": settings.device, "spin": settings.spin,
                               "precision": settings.precision}
    if settings.threads:
        options["threads"] = settings.threads
    if settings.cache_dir:
        options["cache_dir"] = settings.cache_dir

    def factory(bundle: Bundle, name: str) -> Any:
        extra = {"specialise_shapes": True} if name == "fusion" and settings.fixed_shape else {}
        return engine_for(bundle, name, settings.backend, **options, **extra)

    return factory


class FusionPipeline:
    """Bundle + backend + settings -> per-frame fused image, detections and class map."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        settings: PipelineSettings | None = None,
        *,
        log: Callable[[str], None] | None = None,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.settings = (settings or PipelineSettings()).validate()
        self._log = log or logging.getLogger("tdfusion_ros.pipeline").info
        if isinstance(bundle, Bundle):
            self.bundle = bundle
        else:
            self.bundle = load_bundle(bundle)  # BundleError names the file and the fix
        self.bundle_file = bundle_file_of(self.bundle.root)
        factory = engine_factory or _default_engine_factory(self.settings)
        self.notes: list[str] = []
        self._engines: dict[str, Any] = {}
        try:
            fusion_spec = self.bundle.graph("fusion")
            self._engines["fusion"] = self._load(factory, fusion_spec)
            self._ir_name, self._vis_name = self._fusion_inputs(fusion_spec)
            self._fused_name = fusion_spec.outputs[0].name
            self.detector_spec = self._optional(factory, "detector", self.settings.detection,
                                                "/fused/detections")
            self.segmenter_spec = self._optional(factory, "segmenter",
                                                 self.settings.segmentation,
                                                 "/fused/segmentation")
        except BaseException:
            self.close()
            raise
        self.class_names: list[str] = (self.detector_spec.class_names
                                       if self.detector_spec else [])
        self.segmentation_classes: list[str] = (self.segmenter_spec.class_names
                                                if self.segmenter_spec else [])
        self._bundle_thresholds = self._thresholds_from_bundle()
        self._thresholds = self._bundle_thresholds
        self.set_thresholds(self.settings.conf_threshold, self.settings.iou_threshold,
                            self.settings.max_det)
        self.detection_enabled = self.detector_spec is not None
        self.segmentation_enabled = self.segmenter_spec is not None
        self._gain = ThermalGain(self.settings.gain)
        self._registration = Registration(self.settings.registration)
        self._last_rgb_size: tuple[int, int] | None = None  # (w, h), for thermal-only frames
        self._last_detector_raw: tuple[np.ndarray, Any] | None = None  # (raw output, letterbox)

    # ------------------------------------------------------------------ building
    def _load(self, factory: EngineFactory, spec: GraphSpec) -> Any:
        try:
            return factory(self.bundle, spec.name)
        except (EngineError, BundleError, OSError) as err:
            raise PipelineError(f"{spec.path} (graph '{spec.name}' of {self.bundle_file}): "
                                f"cannot load on backend '{self.settings.backend}': "
                                f"{err}") from err

    def _optional(self, factory: EngineFactory, name: str, wanted: bool,
                  topic: str) -> GraphSpec | None:
        if name not in self.bundle.graphs:
            self._note(f"{self.bundle_file} has no '{name}' graph: {topic} disabled "
                       f"(export one with training/export.py to enable it)")
            return None
        if not wanted:
            self._note(f"{name} disabled by settings: {topic} not produced")
            return None
        spec = self.bundle.graphs[name]
        if spec.input_hw is None:
            raise PipelineError(f"{self.bundle_file}: graph '{name}' has no input_hw; "
                                "re-export the bundle with training/export.py")
        self._engines[name] = self._load(factory, spec)
        return spec

    def _note(self, text: str) -> None:
        self.notes.append(text)
        self._log(text)

    def _fusion_inputs(self, spec: GraphSpec) -> tuple[str, str]:
        names = [t.name for t in spec.inputs]
        if len(names) != 2:
            raise PipelineError(f"{self.bundle_file}: the fusion graph must take two inputs "
                                f"(infrared Y, visible Y), it takes {names}")
        if "ir" in names and "vis" in names:
            return "ir", "vis"
        return names[0], names[1]

    def _thresholds_from_bundle(self) -> Thresholds:
        post = (self.detector_spec.meta.get("postprocess") or {}) if self.detector_spec else {}
        return Thresholds(float(post.get("conf_threshold", 0.25)),
                          float(post.get("iou_threshold", 0.7)),
                          int(post.get("max_det", 300))).validate()

    # ------------------------------------------------------------------ settings
    @property
    def thresholds(self) -> Thresholds:
        return self._thresholds

    def set_thresholds(self, conf: float | None = None, iou: float | None = None,
                       max_det: int | None = None) -> Thresholds:
        """Change detector thresholds between frames; ``None`` = the bundle's value."""
        base = self._bundle_thresholds
        new = Thresholds(base.conf if conf is None else float(conf),
                         base.iou if iou is None else float(iou),
                         base.max_det if max_det is None else int(max_det)).validate()
        self._thresholds = new
        return new

    def set_outputs(self, detection: bool | None = None, segmentation: bool | None = None) -> None:
        """Switch loaded task outputs on or off at run time (unloaded ones stay off)."""
        if detection and self.detector_spec is None:
            raise ValueError("no detector was loaded (missing from the bundle or disabled at "
                             "start); it cannot be switched on now")
        if segmentation and self.segmenter_spec is None:
            raise ValueError("no segmenter was loaded (missing from the bundle or disabled at "
                             "start); it cannot be switched on now")
        if detection is not None:
            self.detection_enabled = bool(detection)
        if segmentation is not None:
            self.segmentation_enabled = bool(segmentation)

    def describe(self) -> dict[str, str]:
        """Graph -> what actually runs (backend, device, precision)."""
        return {name: engine.describe() for name, engine in self._engines.items()}

    @property
    def backend(self) -> str:
        engine = self._engines.get("fusion")
        return f"{engine.backend} on {engine.device}" if engine is not None else "none"

    def reset(self) -> None:
        """Forget temporal state (thermal gain limits) after a clock reset or a bag loop."""
        self._gain.reset()

    def close(self) -> None:
        for engine in self._engines.values():
            try:
                engine.close()
            except Exception:  # noqa: BLE001 - closing must not hide the original error
                pass
        self._engines.clear()

    # ------------------------------------------------------------------ frames
    def _thermal8(self, thermal: np.ndarray) -> np.ndarray:
        if thermal.ndim == 3 and thermal.shape[2] == 3 and thermal.dtype == np.uint8:
            return thermal  # colour-mapped thermal: colour.prepare_pair mixes its chroma
        try:
            return self._gain(thermal)
        except ValueError as err:
            raise PipelineInputError(BAD_IMAGE, f"thermal image: {err}") from None

    @staticmethod
    def _check_rgb(rgb: np.ndarray) -> None:
        ok = rgb.dtype == np.uint8 and (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3))
        if not ok or rgb.size == 0:
            raise PipelineInputError(BAD_IMAGE, f"RGB image must be non-empty H x W x 3 (BGR) "
                                                f"or H x W uint8, got {rgb.shape} {rgb.dtype}")

    def process(self, thermal: np.ndarray, rgb: np.ndarray) -> FrameResult:
        """Fuse one pair: thermal H x W uint8/uint16 (or BGR), rgb H x W x 3 BGR uint8."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        self._check_rgb(rgb)
        t8 = self._thermal8(thermal)
        if self.settings.registration.is_identity and t8.shape[:2] != rgb.shape[:2]:
            raise PipelineInputError(
                SIZE_MISMATCH,
                f"thermal {t8.shape[1]}x{t8.shape[0]} and RGB {rgb.shape[1]}x{rgb.shape[0]} "
                "differ but registration.homography is the identity: set the homography "
                "(python -m tdfusion_ros.calibrate) or feed aligned images")
        try:
            t_reg, rgb_reg = self._registration.apply(t8, rgb)
        except RegistrationError as err:
            raise PipelineInputError(SIZE_MISMATCH, str(err)) from None
        self._last_rgb_size = (rgb.shape[1], rgb.shape[0])
        ir_y, vis_y, restore = _luma_split(t_reg, rgb_reg)
        timings["preprocess"] = _ms(start)

        stage = time.perf_counter()
        feeds = {self._ir_name: ir_y[None, None], self._vis_name: vis_y[None, None]}
        fused_y = self._engines["fusion"].run(feeds)[self._fused_name][0, 0]
        timings["fusion"] = _ms(stage)

        stage = time.perf_counter()
        fused = restore(fused_y)
        timings["colour"] = _ms(stage)
        return self._tasks(FUSION, fused, np.ascontiguousarray(fused_y, np.float32),
                           timings, start)

    def process_thermal(self, thermal: np.ndarray) -> FrameResult:
        """Thermal alone (RGB camera silent), on the grid of the last RGB frame if known."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        t8 = self._thermal8(thermal)
        if t8.ndim == 3:
            t8 = cv2.cvtColor(t8, cv2.COLOR_BGR2GRAY)
        rgb_size = self._last_rgb_size or (t8.shape[1], t8.shape[0])
        (x, y, w, h), out, matrix = self._registration.plan((t8.shape[1], t8.shape[0]), rgb_size)
        if matrix is None:
            grey = t8 if (x, y, w, h) == (0, 0, *rgb_size) else t8[y:y + h, x:x + w]
        else:
            grey = cv2.warpPerspective(t8, matrix, out, flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        fused_y = to_unit_float(grey)
        fused = cv2.cvtColor(np.ascontiguousarray(grey), cv2.COLOR_GRAY2BGR)
        timings["preprocess"] = _ms(start)
        return self._tasks(THERMAL_ONLY, fused, fused_y, timings, start)

    def process_rgb(self, rgb: np.ndarray) -> FrameResult:
        """RGB alone (thermal camera silent): the registered RGB image is the output."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        self._check_rgb(rgb)
        self._last_rgb_size = (rgb.shape[1], rgb.shape[0])
        # The RGB half of Registration.apply (crop, then resize to the output size).
        (x, y, w, h), out, _ = self._registration.plan(self._last_rgb_size, self._last_rgb_size)
        image = rgb if (x, y, w, h) == (0, 0, *self._last_rgb_size) else rgb[y:y + h, x:x + w]
        if out != (w, h):
            shrink = out[0] < w and out[1] < h
            image = cv2.resize(image, out, interpolation=cv2.INTER_AREA if shrink
                               else cv2.INTER_LINEAR)
        fused = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image
        _, fused_y, _ = _luma_split(None, fused)
        timings["preprocess"] = _ms(start)
        return self._tasks(RGB_ONLY, np.ascontiguousarray(fused),
                           np.ascontiguousarray(fused_y, np.float32), timings, start)

    def _tasks(self, mode: str, fused: np.ndarray, fused_y: np.ndarray,
               timings: dict[str, float], start: float) -> FrameResult:
        detections = None
        if self.detection_enabled and self.detector_spec is not None:
            detections = self._detect(fused_y, timings)
        class_map = None
        if self.segmentation_enabled and self.segmenter_spec is not None:
            class_map = self._segment(fused_y, timings)
        timings["total"] = _ms(start)
        return FrameResult(mode, fused, fused_y, detections, class_map, timings)

    def _detect(self, fused_y: np.ndarray, timings: dict[str, float]) -> Detections:
        spec = self.detector_spec
        assert spec is not None
        thresholds = self._thresholds  # one consistent set for this frame
        stage = time.perf_counter()
        center = bool((spec.meta.get("preprocess") or {}).get("center", True))
        tensor, box = detector_input(fused_y, spec.input_hw, center=center)
        timings["detector_pre"] = _ms(stage)
        stage = time.perf_counter()
        raw = self._engines["detector"].run({spec.inputs[0].name: tensor})[spec.outputs[0].name]
        timings["detector"] = _ms(stage)
        self._last_detector_raw = (raw, box)
        stage = time.perf_counter()
        detections = decode_yolo(raw, thresholds.conf, thresholds.iou, thresholds.max_det, box)
        keep = detections.class_ids < len(self.class_names)
        if not keep.all():  # a graph with more classes than names: never publish a bad name
            detections = Detections(detections.xyxy[keep], detections.scores[keep],
                                    detections.class_ids[keep])
        timings["detector_post"] = _ms(stage)
        return detections

    @property
    def last_detector_output(self) -> tuple[np.ndarray, Any] | None:
        """(raw detector output, letterbox) of the last frame that ran the detector: for
        ``decode_yolo`` at other thresholds (e.g. the low confidence an mAP evaluation needs)
        without changing what that frame returned. None before the first such frame."""
        return self._last_detector_raw

    def _segment(self, fused_y: np.ndarray, timings: dict[str, float]) -> np.ndarray:
        spec = self.segmenter_spec
        assert spec is not None
        stage = time.perf_counter()
        tensor = segmenter_input(fused_y, spec.input_hw)
        timings["segmenter_pre"] = _ms(stage)
        stage = time.perf_counter()
        logits = self._engines["segmenter"].run({spec.inputs[0].name: tensor})
        timings["segmenter"] = _ms(stage)
        stage = time.perf_counter()
        class_map = segmentation_class_map(logits[spec.outputs[0].name], fused_y.shape[:2])
        timings["segmenter_post"] = _ms(stage)
        return class_map
