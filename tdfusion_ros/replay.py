"""Replay a rosbag through the fusion pipeline before deploying: ``replay_eval``.

    python -m tdfusion_ros.replay BAG [--thermal-topic T] [--rgb-topic T]
        [--config config/fusion.yaml] [--set sync.slop=0.03 ...] [--bundle DIR]
        [--labels BAG/labels.json] [--map-conf 0.001] [--out DIR] [--png]
        [--live [--speed 0.5]]
    ros2 run tdfusion_ros replay_eval BAG ...

Offline mode (the default) reads the bag (a rosbag2 folder, an ``.mcap`` or a ``.db3`` file)
as a stream, pairs thermal and RGB images with the node's pairing core and parameters (the
config file the node reads, the same ``node_params`` conversion), runs the node's
``FusionPipeline`` on every pair, and writes into ``--out``:

* ``fused.mp4`` (OpenCV mp4v) and, with ``--png``, ``fused/<frame>.png``;
* ``detections.json``: COCO style (images with their stamps, categories, scored boxes);
* ``masks/<frame>.png``: segmentation class ids (mono8, the node's fused/segmentation);
* ``fused_bag/``: an MCAP bag with ``/fused/image``, ``/fused/detections``
  (vision_msgs/Detection2DArray) and ``/fused/segmentation``, exactly the messages the node
  would publish, for Foxglove or RViz;
* ``frames.csv`` (one row per pair: stamps, stage timings, detections), ``summary.json``,
  ``summary.md`` and ``report.html`` (fusion metrics over time, pairing statistics and drops,
  latency per stage and throughput, sample frames, mAP per class when labels are given, IoU
  per class and mIoU when the labels carry segmentation label maps).

mAP is a ranking metric: it is computed from detections decoded at ``--map-conf`` (default
0.001, as COCO / ultralytics evaluation; NMS IoU and max_det as deployed) from the same
detector output of each labelled frame, while everything published (``fused_bag``,
``detections.json``, counts, sample boxes) keeps the node's threshold. Segmentation classes are
matched to the label classes by name; mIoU is over the label classes present in the labels or
the predictions.

Frame ``<frame>`` is ``<pair index:06d>_<RGB stamp ns>``. Everything is deterministic: the
pairs are a function of the stamps alone, every pair is processed in order, and two runs on
the same inputs write identical frames, masks, detections and bag messages.

How it stays fast and bounded. Three threads with bounded queues: a reader (read, decode,
pair), the caller's thread (the pipeline only) and a writer (video, PNGs, bag, JSON, the
metric samples and sample frames). Reading and writing thus overlap inference, and memory
does not grow with the bag: nothing per frame is kept except the detections of labelled
frames (for mAP) and small fixed-size statistics. Fusion metrics (~0.2 s per 640x480 frame)
are computed after the run on at most ``--metrics-frames`` evenly spaced pairs, so they never
slow the replay; the report says which.

Live mode (``--live``) then plays the bag over DDS at its recorded rate (``--speed``),
publishing ``/clock``, into the fusion node started exactly as ``fusion.launch.py`` starts
it (``node_params.launch_spec`` rendered as a command line, with ``use_sim_time``), records
what the node publishes into ``live/fused_bag`` and compares it with the offline run: the pairs
the node skipped under load (its newest-pair policy), and, for pairs both processed, fused
images equal within 1/255 and detections with the same classes and IoU > 0.99.

Exit status: 0 done (a damaged bag is processed up to the damage, with a warning that says
where); 1 a failure while running (e.g. the node did not start); 2 bad arguments or input
(no such bag, empty bag, missing topics, unknown message types, missing storage plugin,
bad config or bundle); 3 the bag was damaged and ``--fail-on-damage`` was given; 4 the live
run disagreed with the offline run.

No torch, ultralytics or transformers on this path (ONNX Runtime / TensorRT engines only).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import queue
import random
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from tdfusion_ros import node_params, paths
from tdfusion_ros.bag_reader import (
    COMPRESSED_TYPE,
    BagDamageWarning,
    BagReader,
    BagReadError,
    TopicInfo,
    format_topics,
)
from tdfusion_ros.pairing import Pair, Pairer, PairingConfig, Stream
from tdfusion_ros.pipeline import (
    SIZE_MISMATCH,
    FrameResult,
    FusionPipeline,
    PipelineError,
    PipelineInputError,
    overlay,
    palette,
)
from tdfusion_ros.postprocess import decode_yolo
from tdfusion_ros.registration import Registration
from tdfusion_ros.thermal_gain import ThermalGain

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DAMAGED",
    "EXIT_FAILED",
    "EXIT_LIVE_DIFFERS",
    "ReplayError",
    "ReplayOptions",
    "ReplayResult",
    "compare_runs",
    "fused_typestore",
    "main",
    "replay",
    "resolve_topics",
]

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DAMAGED = 3
EXIT_LIVE_DIFFERS = 4

REPO = Path(__file__).resolve().parents[1]
IMAGE_TYPE = "sensor_msgs/msg/Image"
DETECTIONS_TYPE = "vision_msgs/msg/Detection2DArray"
FUSED_IMAGE_TOPIC = "/" + node_params.IMAGE_TOPIC
FUSED_DETECTIONS_TOPIC = "/" + node_params.DETECTIONS_TOPIC
FUSED_SEGMENTATION_TOPIC = "/" + node_params.SEGMENTATION_TOPIC
DEFAULT_THERMAL_TOPICS = ("/thermal/image_raw", "/thermal/image_raw/compressed")
DEFAULT_RGB_TOPICS = ("/rgb/image_raw", "/rgb/image_raw/compressed")
THERMAL_HINTS = ("thermal", "lwir", "infrared", "flir", "boson", "lepton", "/ir/", "/ir_")
RGB_HINTS = ("rgb", "color", "colour", "visible", "/vis", "/vi/")
STAGE_ORDER = ("read_decode", "pairing", "queue_wait", "preprocess", "fusion", "colour",
               "detector_pre", "detector", "detector_post", "segmenter_pre", "segmenter",
               "segmenter_post", "total", "process_wall", "write")
CSV_STAGES = ("preprocess", "fusion", "colour", "detector_pre", "detector", "detector_post",
              "segmenter_pre", "segmenter", "segmenter_post", "total")
BUILDER_CUSTOM_KEY = "tdfusion_ros.bag_builder"
_SEC = 1_000_000_000
_END = object()
_RESET = object()


class ReplayError(Exception):
    """Bad arguments or input; the message says what and how to fix it (exit status 2)."""

    exit_code = EXIT_BAD_INPUT


class ReplayRunError(ReplayError):
    """Something failed while running (exit status 1)."""

    exit_code = EXIT_FAILED


# --------------------------------------------------------------------------- options
@dataclass
class ReplayOptions:
    bag: Path
    out: Path
    thermal_topic: str | None = None
    rgb_topic: str | None = None
    config: Path | None = None  # None: the package's config/fusion.yaml
    overrides: dict[str, Any] = field(default_factory=dict)  # parameter name -> value
    bundle: Path | None = None
    backend: str | None = None
    labels: Path | None = None
    no_labels: bool = False
    offset_from_bag: bool = False
    png: bool = False
    video: bool = True
    masks: bool = True
    output_bag: bool = True
    metrics_frames: int = 100  # 0: none, -1: every pair
    samples: int = 4
    fps: float | None = None
    max_pairs: int | None = None
    predictions_from_labels: bool = False
    map_conf: float = 0.001  # detections for mAP decoded at this confidence
    overwrite: bool = False
    fail_on_damage: bool = False
    queue_depth: int = 4
    live: bool = False
    speed: float = 1.0
    domain_id: int | None = None
    live_timeout: float = 120.0
    node_command: Sequence[str] | None = None  # default: [python, -m, tdfusion_ros.node]
    log: Callable[[str], None] = field(default=lambda text: print(text, file=sys.stderr))


@dataclass
class ReplayResult:
    out: Path
    summary: dict[str, Any]
    report_html: Path | None
    summary_md: Path | None
    exit_code: int


# --------------------------------------------------------------------------- small helpers
class _Stage:
    """Count, mean, max and percentiles (reservoir of at most ``keep`` samples) of one stage."""

    def __init__(self, keep: int = 20000, seed: int = 0) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self.keep = keep
        self.samples: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.max = max(self.max, value)
        if len(self.samples) < self.keep:
            self.samples.append(value)
        else:
            j = self._rng.randrange(self.count)
            if j < self.keep:
                self.samples[j] = value

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0}
        p50, p99 = np.percentile(np.asarray(self.samples), (50, 99))
        return {"mean": self.total / self.count, "p50": float(p50), "p99": float(p99),
                "max": self.max, "count": self.count}


class _Stages:
    def __init__(self) -> None:
        self._stages: dict[str, _Stage] = {}
        self._lock = threading.Lock()

    def add(self, name: str, value: float) -> None:
        with self._lock:
            stage = self._stages.get(name)
            if stage is None:
                stage = self._stages[name] = _Stage(seed=len(self._stages))
            stage.add(value)

    def summary(self) -> dict[str, dict[str, float]]:
        with self._lock:
            names = sorted(self._stages, key=lambda n: (STAGE_ORDER.index(n)
                                                        if n in STAGE_ORDER else 99, n))
            return {n: self._stages[n].summary() for n in names}


class _Timeline:
    """(x, y) points for a plot in constant memory: halves its resolution when full."""

    def __init__(self, capacity: int = 2000) -> None:
        self.capacity = capacity
        self.stride = 1
        self.xs: list[float] = []
        self.ys: list[float] = []

    def add(self, x: float, y: float, index: int) -> None:
        if index % self.stride:
            return
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > self.capacity:
            self.xs, self.ys = self.xs[::2], self.ys[::2]
            self.stride *= 2


def _put(q: queue.Queue, item: Any, alive: Callable[[], bool]) -> bool:
    """Blocking put that gives up when the consumer died (so no thread hangs forever)."""
    while True:
        try:
            q.put(item, timeout=0.2)
            return True
        except queue.Full:
            if not alive():
                return False


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def _machine() -> str:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpus} CPU(s), {model}, Python {platform.python_version()}"


def _frame_name(index: int, stamp_ns: int) -> str:
    return f"{index:06d}_{stamp_ns}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, Path):
        return str(value)
    return value


# --------------------------------------------------------------------------- typestore
def _vision_msgs_dir() -> Path:
    candidates = [REPO / "interfaces" / "vision_msgs" / "msg"]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory("vision_msgs")) / "msg")
    except Exception:  # noqa: BLE001 - not installed, or AMENT_PREFIX_PATH unset
        pass
    candidates.append(Path(sys.prefix) / "share" / "vision_msgs" / "msg")
    for path in candidates:
        if (path / "Detection2DArray.msg").is_file():
            return path
    raise ReplayError("vision_msgs message definitions not found (looked in "
                      + ", ".join(str(c) for c in candidates) + "); run "
                      "scripts/build_interfaces.sh or install ros-<distro>-vision-msgs")


_TYPESTORE: Any = None
_TYPESTORE_LOCK = threading.Lock()


def fused_typestore() -> Any:
    """rosbags' Kilted typestore plus vision_msgs (from our interfaces/ definitions)."""
    global _TYPESTORE
    with _TYPESTORE_LOCK:
        if _TYPESTORE is None:
            from rosbags.typesys import Stores, get_types_from_msg, get_typestore

            store = get_typestore(Stores.ROS2_KILTED)
            types: dict[str, Any] = {}
            for path in sorted(_vision_msgs_dir().glob("*.msg")):
                types.update(get_types_from_msg(path.read_text(), f"vision_msgs/msg/{path.stem}"))
            store.register(types)
            _TYPESTORE = store
        return _TYPESTORE


class _Messages:
    """The node's output messages as rosbags objects serialized to CDR."""

    def __init__(self, class_names: Sequence[str], encoding: str) -> None:
        self.store = fused_typestore()
        t = self.store.types
        self.t = t
        self.class_names = list(class_names)
        self.encoding = encoding

    def header(self, stamp_ns: int, frame_id: str) -> Any:
        sec, nanosec = divmod(int(stamp_ns), _SEC)
        return self.t["std_msgs/msg/Header"](
            stamp=self.t["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
            frame_id=frame_id)

    def image(self, pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Any:
        if encoding == "rgb8":
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        pixels = np.ascontiguousarray(pixels)
        height, width = pixels.shape[:2]
        channels = pixels.shape[2] if pixels.ndim == 3 else 1
        msg = self.t[IMAGE_TYPE](header=self.header(stamp_ns, frame_id), height=height,
                                 width=width, encoding=encoding, is_bigendian=0,
                                 step=width * channels, data=pixels.reshape(-1))
        return self.store.serialize_cdr(msg, IMAGE_TYPE)

    def detections(self, det: Any, stamp_ns: int, frame_id: str) -> Any:
        t = self.t
        header = self.header(stamp_ns, frame_id)
        items = []
        for (x1, y1, x2, y2), score, cls in zip(det.xyxy.tolist(), det.scores.tolist(),
                                                 det.class_ids.tolist()):
            name = self.class_names[cls] if cls < len(self.class_names) else str(cls)
            pose = t["geometry_msgs/msg/PoseWithCovariance"](
                pose=t["geometry_msgs/msg/Pose"](
                    position=t["geometry_msgs/msg/Point"](x=0.0, y=0.0, z=0.0),
                    orientation=t["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)),
                covariance=np.zeros(36, np.float64))
            hypothesis = t["vision_msgs/msg/ObjectHypothesisWithPose"](
                hypothesis=t["vision_msgs/msg/ObjectHypothesis"](class_id=name,
                                                                 score=float(score)),
                pose=pose)
            bbox = t["vision_msgs/msg/BoundingBox2D"](
                center=t["vision_msgs/msg/Pose2D"](
                    position=t["vision_msgs/msg/Point2D"](x=(x1 + x2) / 2.0, y=(y1 + y2) / 2.0),
                    theta=0.0),
                size_x=x2 - x1, size_y=y2 - y1)
            items.append(t["vision_msgs/msg/Detection2D"](header=header, results=[hypothesis],
                                                          bbox=bbox, id=""))
        msg = t[DETECTIONS_TYPE](header=header, detections=items)
        return self.store.serialize_cdr(msg, DETECTIONS_TYPE)


def _decode_detections(store: Any, raw: Any) -> tuple[int, list[tuple[str, float, float,
                                                                        float, float, float]]]:
    """(stamp, [(class, score, x1, y1, x2, y2)]) of a Detection2DArray's CDR."""
    msg = store.deserialize_cdr(raw, DETECTIONS_TYPE)
    stamp = msg.header.stamp.sec * _SEC + msg.header.stamp.nanosec
    boxes = []
    for det in msg.detections:
        hyp = det.results[0].hypothesis if det.results else None
        cx, cy = det.bbox.center.position.x, det.bbox.center.position.y
        w, h = det.bbox.size_x, det.bbox.size_y
        boxes.append((hyp.class_id if hyp else "", float(hyp.score) if hyp else 0.0,
                      cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    return stamp, boxes


def _decode_image(store: Any, raw: Any) -> tuple[int, np.ndarray]:
    msg = store.deserialize_cdr(raw, IMAGE_TYPE)
    stamp = msg.header.stamp.sec * _SEC + msg.header.stamp.nanosec
    channels = msg.step // max(msg.width, 1)
    data = np.asarray(msg.data, np.uint8).reshape(msg.height, msg.step)[:, :msg.width * channels]
    image = data.reshape(msg.height, msg.width, channels) if channels > 1 else data
    if msg.encoding == "rgb8":
        image = image[..., ::-1]
    return stamp, image


# --------------------------------------------------------------------------- topics, config
def resolve_topics(topics: Sequence[TopicInfo], thermal: str | None,
                   rgb: str | None) -> tuple[str, str]:
    """The thermal and RGB topics: as given, the node's defaults, or the one obvious match.

    Raises ReplayError listing the bag's topics when a choice is impossible.
    """
    from tdfusion_ros.bag_reader import IMAGE_TYPES

    images = [t for t in topics if t.msgtype in IMAGE_TYPES]
    names = {t.name for t in topics}

    def pick(given: str | None, defaults: Sequence[str], hints: Sequence[str], what: str,
             flag: str, exclude: str | None) -> str:
        if given:
            return given
        for name in defaults:
            if name in names:
                return name
        matches = [t.name for t in images if t.name != exclude
                   and any(h in t.name.lower() for h in hints)]
        if len(matches) == 1:
            return matches[0]
        why = ("several image topics look like it: " + ", ".join(matches) if matches
               else f"none of {', '.join(defaults)} is in the bag")
        raise ReplayError(f"cannot tell which topic is the {what} camera ({why}); pass "
                          f"{flag}. The bag holds:\n{format_topics(topics)}")

    thermal_topic = pick(thermal, DEFAULT_THERMAL_TOPICS, THERMAL_HINTS, "thermal",
                         "--thermal-topic", None)
    rgb_topic = pick(rgb, DEFAULT_RGB_TOPICS, RGB_HINTS, "RGB", "--rgb-topic", thermal_topic)
    if thermal_topic == rgb_topic:
        raise ReplayError(f"thermal and RGB topics are both {thermal_topic}; pass "
                          f"--thermal-topic and --rgb-topic. The bag holds:\n"
                          f"{format_topics(topics)}")
    return thermal_topic, rgb_topic


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ReplayError(f"--set takes NAME=VALUE (e.g. sync.slop=0.03), got {text!r}")
    name, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ReplayError(f"--set {text}: value is not YAML ({err})") from None
    return name.strip(), value


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in values.items():
        *sections, key = name.split(".")
        target = tree
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    return tree


def _bag_custom_data(bag: Path) -> dict[str, Any]:
    """The bag builder's record (build parameters, the pairing offset), if there is one."""
    meta = (bag if bag.is_dir() else bag.parent) / "metadata.yaml"
    try:
        info = yaml.safe_load(meta.read_text()).get("rosbag2_bagfile_information", {})
        text = (info.get("custom_data") or {}).get(BUILDER_CUSTOM_KEY)
        return json.loads(text) if text else {}
    except (OSError, AttributeError, ValueError, yaml.YAMLError):
        return {}


def _bag_duration_ns(bag: Path) -> int | None:
    try:
        from rosbags.rosbag2 import Reader

        with Reader(bag) as reader:
            return int(reader.duration) if reader.message_count > 1 else None
    except Exception:  # noqa: BLE001 - damaged or odd bags: the caller falls back
        return None


# --------------------------------------------------------------------------- geometry
def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    if union <= 0:
        return 1.0 if a == b else 0.0
    return inter / union


def _labels_to_fused(boxes: np.ndarray, label_size: tuple[int, int],
                     rgb_size: tuple[int, int], plan: tuple) -> np.ndarray:
    """Label boxes (class, x1, y1, x2, y2 in labelled-image pixels) -> fused-image pixels."""
    if boxes.size == 0:
        return boxes.reshape(0, 5)
    (x, y, w, h), (ow, oh), _ = plan
    out = boxes.astype(np.float64).copy()
    sx, sy = rgb_size[0] / label_size[0], rgb_size[1] / label_size[1]
    out[:, [1, 3]] = (out[:, [1, 3]] * sx - x) * (ow / w)
    out[:, [2, 4]] = (out[:, [2, 4]] * sy - y) * (oh / h)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, ow)
    out[:, [2, 4]] = out[:, [2, 4]].clip(0, oh)
    keep = (out[:, 3] > out[:, 1]) & (out[:, 4] > out[:, 2])
    return out[keep]


def _label_map_to_fused(label: np.ndarray, rgb_size: tuple[int, int], plan: tuple) -> np.ndarray:
    """A label map (class ids at the labelled image size) -> the fused grid, nearest neighbour.

    The same geometry as the RGB image's (``Registration.apply``): scale to the RGB size, crop,
    resize to the output size.
    """
    (x, y, w, h), (ow, oh), _ = plan
    if (label.shape[1], label.shape[0]) != tuple(rgb_size):
        label = cv2.resize(label, tuple(rgb_size), interpolation=cv2.INTER_NEAREST)
    label = label[y:y + h, x:x + w]
    if (ow, oh) != (w, h):
        label = cv2.resize(label, (ow, oh), interpolation=cv2.INTER_NEAREST)
    return label


class _SegEval:
    """Pixel confusion of the segmenter's class maps against the sidecar's label maps.

    Classes are matched by name (case and surrounding spaces ignored). The matrix holds the
    label classes first, then the segmenter's classes the labels lack (their pixels count as
    misses of the labelled class), then one bucket for class ids the segmenter has no name for.
    mIoU is over the label classes only.
    """

    def __init__(self, label_classes: Sequence[str], seg_classes: Sequence[str],
                 from_labels: bool) -> None:
        from tdfusion_ros.metrics import ConfusionMatrix

        key = {n.strip().lower(): i for i, n in enumerate(label_classes)}
        self.label_classes = list(label_classes)
        self.seg_classes = list(seg_classes)
        self.from_labels = from_labels
        self.extra = [n for n in seg_classes if n.strip().lower() not in key]
        self.names = [*self.label_classes, *self.extra, "(segmenter id without a name)"]
        self.lut = np.full(256, len(self.names) - 1, np.uint8)
        self.matched: dict[str, str] = {}
        for j, name in enumerate(seg_classes):
            i = key.get(name.strip().lower())
            if i is None:
                self.lut[j] = len(self.label_classes) + self.extra.index(name)
            else:
                self.lut[j] = i
                self.matched[self.label_classes[i]] = name
        self.cm = ConfusionMatrix(len(self.names), ignore_index=255)
        self.frames = 0

    @classmethod
    def create(cls, setup: _Setup, from_labels: bool) -> _SegEval | None:
        labels = setup.labels
        if labels is None or not labels.segmentation_classes:
            return None
        if len(labels.segmentation_classes) + len(setup.pipeline.segmentation_classes) + 1 > 255:
            raise ReplayError("too many segmentation classes to score (at most 254 in all)")
        return cls(labels.segmentation_classes, setup.pipeline.segmentation_classes,
                   from_labels)

    def add(self, label_file: Path, class_map: np.ndarray | None, rgb_size: tuple[int, int],
            plan: tuple) -> None:
        from tdfusion_ros.bag_builder import load_segmentation

        if class_map is None and not self.from_labels:
            return
        label = _label_map_to_fused(load_segmentation(label_file), rgb_size, plan)
        n = len(self.label_classes)
        bad = np.unique(label[(label >= n) & (label != 255)])
        if bad.size:
            raise ValueError(f"label map {label_file} holds class ids {bad.tolist()} outside "
                             f"its {n} classes")
        if self.from_labels:
            pred = np.where(label == 255, 0, label)
        else:
            if class_map.shape != label.shape:
                raise ValueError(f"class map {class_map.shape} and label map {label.shape} "
                                 "differ in size on the fused grid")
            pred = self.lut[class_map]
        self.cm.update(pred, label)
        self.frames += 1


# --------------------------------------------------------------------------- the offline run
@dataclass
class _Setup:
    """Everything resolved before reading: topics, parameters, pipeline, labels."""

    reader: BagReader
    thermal_topic: str
    rgb_topic: str
    values: dict[str, Any]
    pairing: PairingConfig
    effective_config: Path
    pipeline: FusionPipeline
    bundle: Path
    labels: Any  # bag_builder.BagLabels or None
    labels_file: Path | None
    est_pairs: int
    fps: float
    notes: list[str]
    warnings: list[str]


class _Offline:
    """One offline replay: reader thread -> pipeline (this thread) -> writer thread."""

    def __init__(self, opts: ReplayOptions, setup: _Setup) -> None:
        self.opts = opts
        self.s = setup
        self.out = opts.out
        self.stages = _Stages()
        self.timeline = _Timeline()
        self.in_q: queue.Queue = queue.Queue(maxsize=max(1, opts.queue_depth))
        self.out_q: queue.Queue = queue.Queue(maxsize=max(1, opts.queue_depth))
        self.stop = threading.Event()
        self.reader_error: BaseException | None = None
        self.writer_error: BaseException | None = None
        self.pairer: Pairer[Any] = Pairer(setup.pairing)
        self.pair_errors: dict[str, int] = {}
        self.pairs_queued = 0
        self.processed = 0
        self.process_s = 0.0
        self.fused_size: tuple[int, int] | None = None
        # writer state
        self.det_per_class: dict[str, int] = {}
        self.total_dets = 0
        self.gt: list[np.ndarray] = []
        self.preds: list[np.ndarray] = []
        self.labelled_seen = 0
        self.unmapped: dict[str, int] = {}
        self.eval_preds = 0  # detections scored for mAP (at --map-conf)
        self.seg = _SegEval.create(setup, opts.predictions_from_labels)
        self.samples: list[dict[str, Any]] = []
        self.metric_files: list[tuple[int, int, Path]] = []
        self.video_frames = 0
        self.bag_messages = 0
        self.ir16 = False
        self.reader_cpu_s = 0.0
        self.writer_cpu_s = 0.0
        self.process_cpu_s = 0.0

    # ------------------------------------------------------------------ reader thread
    def _read(self) -> None:
        thermal_topic = self.s.thermal_topic
        limit = self.opts.max_pairs
        try:
            last = time.perf_counter()
            for msg in self.s.reader.messages():
                now = time.perf_counter()
                self.stages.add("read_decode", (now - last) * 1000.0)
                if self.stop.is_set():
                    break
                stream = Stream.THERMAL if msg.topic == thermal_topic else Stream.RGB
                result = self.pairer.push(stream, msg.stamp_ns, msg)
                if result.reset and not _put(self.in_q, _RESET, self._consumer_alive):
                    return
                self.stages.add("pairing", (time.perf_counter() - now) * 1000.0)
                if not self._forward():
                    return
                if limit is not None and self.pairs_queued >= limit:
                    break
                last = time.perf_counter()
            else:
                self.pairer.flush()
                self._forward()
        except BaseException as err:  # noqa: BLE001 - reported by the caller
            self.reader_error = err
        finally:
            self.reader_cpu_s = time.thread_time()
            _put(self.in_q, _END, self._consumer_alive)

    def _forward(self) -> bool:
        limit = self.opts.max_pairs
        while True:
            if limit is not None and self.pairs_queued >= limit:
                return True
            pair = self.pairer.take()
            if pair is None:
                return True
            if not _put(self.in_q, pair, self._consumer_alive):
                return False
            self.pairs_queued += 1

    def _consumer_alive(self) -> bool:
        return not self.stop.is_set()

    # ------------------------------------------------------------------ pipeline (caller)
    def run(self) -> float:
        """Process every pair; returns the wall time from the first read to the last write."""
        reader = threading.Thread(target=self._read, name="replay_reader", daemon=True)
        writer = threading.Thread(target=self._write_loop, name="replay_writer", daemon=True)
        started = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu0 = usage.ru_utime + usage.ru_stime
        writer.start()
        reader.start()
        pipeline = self.s.pipeline
        writer_alive = writer.is_alive
        try:
            while True:
                wait = time.perf_counter()
                try:
                    item = self.in_q.get(timeout=0.5)
                except queue.Empty:
                    if not reader.is_alive() and self.in_q.empty():
                        break  # the reader gave up without its end marker
                    continue
                if item is _END:
                    break
                if item is _RESET:
                    pipeline.reset()
                    _put(self.out_q, _RESET, writer_alive)
                    continue
                pair: Pair[Any] = item
                begin = time.perf_counter()
                self.stages.add("queue_wait", (begin - wait) * 1000.0)
                try:
                    result = pipeline.process(pair.thermal.payload.image, pair.rgb.payload.image)
                except PipelineInputError as err:
                    self.pair_errors[err.reason] = self.pair_errors.get(err.reason, 0) + 1
                    if not _put(self.out_q, ("error", pair, err.reason), writer_alive):
                        break
                    continue
                except Exception as err:  # an engine failure: stop, keep what was written
                    raise ReplayRunError(
                        f"the pipeline failed on pair {pair.index} (RGB stamp "
                        f"{pair.rgb.stamp_ns} ns): {type(err).__name__}: {err}") from err
                elapsed = time.perf_counter() - begin
                self.process_s += elapsed
                self.stages.add("process_wall", elapsed * 1000.0)
                for stage, value in result.timings_ms.items():
                    self.stages.add(stage, value)
                self.timeline.add(self.processed, result.timings_ms.get("total", 0.0),
                                  self.processed)
                raw_det = None  # decoded again at --map-conf by the writer, for mAP
                labels = self.s.labels
                if (result.detections is not None and labels is not None
                        and pair.rgb.stamp_ns in labels.boxes):
                    raw_det = pipeline.last_detector_output
                if self.writer_error is not None or not _put(
                        self.out_q, ("frame", self.processed, pair, result, raw_det),
                        writer_alive):
                    break
                self.processed += 1
        except KeyboardInterrupt:
            self.s.warnings.append("interrupted (Ctrl-C): the outputs hold the pairs processed "
                                   "so far")
        finally:
            self.stop.set()
            _put(self.out_q, _END, writer_alive)
            writer.join()
            reader.join(timeout=30)
            usage = resource.getrusage(resource.RUSAGE_SELF)
            self.process_cpu_s = usage.ru_utime + usage.ru_stime - cpu0
        if self.writer_error is not None:
            raise ReplayRunError(f"writing outputs failed: {self.writer_error}") \
                from self.writer_error
        if self.reader_error is not None:
            err = self.reader_error
            if isinstance(err, BagReadError):
                raise ReplayError(str(err)) from err
            raise ReplayRunError(f"reading the bag failed: {type(err).__name__}: {err}") from err
        return time.perf_counter() - started

    # ------------------------------------------------------------------ writer thread
    def _write_loop(self) -> None:
        try:
            self._open_outputs()
            while True:
                item = self.out_q.get()
                if item is _END:
                    break
                begin = time.perf_counter()
                if item is _RESET:
                    self.gain.reset()
                elif item[0] == "error":
                    _, pair, reason = item
                    if reason == SIZE_MISMATCH:  # the pipeline's gain ran before that check
                        self._thermal8(pair.thermal.payload.image)
                else:
                    _, index, pair, result, raw_det = item
                    self._write_frame(index, pair, result, raw_det)
                    self.stages.add("write", (time.perf_counter() - begin) * 1000.0)
        except BaseException as err:  # noqa: BLE001 - reported by run()
            self.writer_error = err
            self.stop.set()
            while True:  # unblock the pipeline thread
                try:
                    if self.out_q.get(timeout=0.5) is _END:
                        break
                except queue.Empty:
                    if not threading.main_thread().is_alive():
                        break
        finally:
            try:
                self._close_outputs()
            except BaseException as err:  # noqa: BLE001
                if self.writer_error is None:
                    self.writer_error = err
            self.writer_cpu_s = time.thread_time()

    def _open_outputs(self) -> None:
        opts, out = self.opts, self.out
        pipe = self.s.pipeline
        self.gain = ThermalGain(pipe.settings.gain)  # mirrors the pipeline's, for the metrics
        self.registration = Registration(pipe.settings.registration)
        self.encoding = self.s.values["output.encoding"]
        self.messages = _Messages(pipe.class_names, self.encoding)
        self.video = None
        if opts.png:
            (out / "fused").mkdir(parents=True, exist_ok=True)
        if opts.masks and pipe.segmentation_enabled:
            (out / "masks").mkdir(parents=True, exist_ok=True)
        (out / "samples").mkdir(parents=True, exist_ok=True)
        self.tmp = out / ".replay_tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.coco_images = (self.tmp / "images.jsonl").open("w")
        self.coco_anns = (self.tmp / "annotations.jsonl").open("w")
        self.ann_id = 0
        self.csv = (out / "frames.csv").open("w")
        self.csv.write("frame,pair_index,rgb_stamp_ns,thermal_stamp_ns,stamp_diff_ms,"
                       "rgb_receive_ns,mode,detections," + ",".join(f"{s}_ms" for s in
                                                                 CSV_STAGES) + "\n")
        self.bag_writer = None
        if opts.output_bag:
            from rosbags.rosbag2 import StoragePlugin, Writer

            self.bag_writer = Writer(out / "fused_bag", version=9,
                                     storage_plugin=StoragePlugin.MCAP)
            self.bag_writer.open()
            store = self.messages.store
            self.conn_image = self.bag_writer.add_connection(FUSED_IMAGE_TOPIC, IMAGE_TYPE,
                                                             typestore=store)
            self.conn_det = (self.bag_writer.add_connection(FUSED_DETECTIONS_TOPIC,
                                                            DETECTIONS_TYPE, typestore=store)
                             if pipe.detection_enabled else None)
            self.conn_seg = (self.bag_writer.add_connection(FUSED_SEGMENTATION_TOPIC,
                                                            IMAGE_TYPE, typestore=store)
                             if pipe.segmentation_enabled else None)
        self.last_log_ns = -1
        est = max(self.s.est_pairs, 1)
        if opts.max_pairs is not None:
            est = min(est, opts.max_pairs)
        n_metric = est if opts.metrics_frames < 0 else min(opts.metrics_frames, est)
        self.metric_every = 0 if n_metric <= 0 else max(1, math.ceil(est / n_metric))
        n_samples = min(max(opts.samples, 0), est)
        self.sample_targets = sorted({round(i * (est - 1) / max(n_samples - 1, 1))
                                      for i in range(n_samples)}) if n_samples else []
        self.last_frame: tuple | None = None
        self.label_classes = list(self.s.labels.classes) if self.s.labels is not None else []
        self.class_to_label = {name: i for i, name in enumerate(self.label_classes)}

    def _thermal8(self, thermal: np.ndarray) -> np.ndarray | None:
        try:
            return self.gain(thermal)
        except ValueError:
            return None

    def _write_frame(self, index: int, pair: Pair[Any], result: FrameResult,
                     raw_det: tuple[np.ndarray, Any] | None = None) -> None:
        thermal_msg, rgb_msg = pair.thermal.payload, pair.rgb.payload
        stamp, frame_id = rgb_msg.stamp_ns, rgb_msg.frame_id
        name = _frame_name(index, stamp)
        fused = result.fused
        height, width = fused.shape[:2]
        self.fused_size = (width, height)
        t8 = self._thermal8(thermal_msg.image)
        if thermal_msg.image.dtype == np.uint16:
            self.ir16 = True

        # video and PNGs
        if self.opts.video:
            if self.video is None:
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")
                self.video = cv2.VideoWriter(str(self.out / "fused.mp4"), fourcc, self.s.fps,
                                             (width, height))
                self.video_size = (width, height)
                if not self.video.isOpened():
                    self.s.warnings.append("OpenCV could not open an mp4v video writer: no "
                                           "fused.mp4 (use --png)")
                    self.opts.video = False
            if self.opts.video:
                frame = fused if (width, height) == self.video_size else cv2.resize(
                    fused, self.video_size)
                self.video.write(frame)
                self.video_frames += 1
        if self.opts.png:
            cv2.imwrite(str(self.out / "fused" / f"{name}.png"), fused)
        class_map = result.class_map
        if class_map is not None and self.opts.masks:
            cv2.imwrite(str(self.out / "masks" / f"{name}.png"), class_map.astype(np.uint8))

        # the node's messages
        if self.bag_writer is not None:
            log_ns = max(int(rgb_msg.receive_ns), self.last_log_ns + 1)
            self.last_log_ns = log_ns
            self.bag_writer.write(self.conn_image, log_ns,
                                  self.messages.image(fused, self.encoding, stamp, frame_id))
            self.bag_messages += 1
            if self.conn_det is not None and result.detections is not None:
                self.bag_writer.write(self.conn_det, log_ns,
                                      self.messages.detections(result.detections, stamp,
                                                               frame_id))
                self.bag_messages += 1
            if self.conn_seg is not None and class_map is not None:
                self.bag_writer.write(self.conn_seg, log_ns,
                                      self.messages.image(class_map.astype(np.uint8), "mono8",
                                                          stamp, frame_id))
                self.bag_messages += 1

        # COCO JSON and the per-frame table
        det = result.detections
        n_det = 0 if det is None else len(det)
        self.coco_images.write(json.dumps({
            "id": index + 1, "file_name": name, "width": width, "height": height,
            "stamp_ns": stamp, "thermal_stamp_ns": thermal_msg.stamp_ns,
            "frame_id": frame_id}) + "\n")
        names = self.s.pipeline.class_names
        if det is not None:
            for (x1, y1, x2, y2), score, cls in zip(det.xyxy.tolist(), det.scores.tolist(),
                                                     det.class_ids.tolist()):
                self.ann_id += 1
                w, h = x2 - x1, y2 - y1
                self.coco_anns.write(json.dumps({
                    "id": self.ann_id, "image_id": index + 1, "category_id": int(cls) + 1,
                    "bbox": [round(x1, 3), round(y1, 3), round(w, 3), round(h, 3)],
                    "area": round(w * h, 3), "score": round(float(score), 5),
                    "iscrowd": 0}) + "\n")
                label = names[cls] if cls < len(names) else str(cls)
                self.det_per_class[label] = self.det_per_class.get(label, 0) + 1
            self.total_dets += n_det
        timings = result.timings_ms
        self.csv.write(",".join([
            name, str(pair.index), str(stamp), str(thermal_msg.stamp_ns),
            f"{pair.diff_ns / 1e6:.3f}", str(rgb_msg.receive_ns), result.mode, str(n_det),
            *(f"{timings[s]:.3f}" if s in timings else "" for s in CSV_STAGES)]) + "\n")

        # ground truth and predictions for mAP
        gt_fused = None
        labels = self.s.labels
        if labels is not None and stamp in labels.boxes:
            self.labelled_seen += 1
            rgb_size = (rgb_msg.image.shape[1], rgb_msg.image.shape[0])
            plan = self.registration.plan((thermal_msg.image.shape[1],
                                           thermal_msg.image.shape[0]), rgb_size)
            gt_fused = _labels_to_fused(labels.boxes[stamp], labels.image_size, rgb_size, plan)
            if self.seg is not None and stamp in labels.segmentation:
                self.seg.add(labels.segmentation[stamp], result.class_map, rgb_size, plan)
            if self.opts.predictions_from_labels:
                preds = np.concatenate([gt_fused, np.ones((len(gt_fused), 1))], axis=1)
            else:
                rows = []
                scored = det
                if raw_det is not None:  # the same detector output at the evaluation threshold
                    t = self.s.pipeline.thresholds
                    scored = decode_yolo(raw_det[0], self.opts.map_conf, t.iou, t.max_det,
                                         raw_det[1])
                if scored is not None:
                    for row in scored.as_rows():
                        cls = int(row[0])
                        label = names[cls] if cls < len(names) else str(cls)
                        mapped = self.class_to_label.get(label)
                        if mapped is None:
                            self.unmapped[label] = self.unmapped.get(label, 0) + 1
                            continue
                        rows.append([mapped, *row[1:]])
                preds = np.array(rows, np.float64).reshape(-1, 6)
            self.eval_preds += len(preds)
            self.gt.append(gt_fused)
            self.preds.append(preds)

        # metric samples (metrics are computed after the run) and sample frames
        luma = None
        if self.metric_every and index % self.metric_every == 0 and t8 is not None:
            luma = self._network_inputs(t8, rgb_msg.image)
            if luma is not None:
                path = self.tmp / f"m_{index:06d}.npy"
                fused_y = np.clip(np.rint(result.fused_y * 255.0), 0, 255).astype(np.uint8)
                np.save(path, np.stack([fused_y, *luma]))
                self.metric_files.append((index, stamp, path))
        if index in self.sample_targets:
            self._sample(index, pair, result, t8, gt_fused)
            self.last_frame = None
        else:
            self.last_frame = (index, pair, result, t8, gt_fused)

    def _network_inputs(self, t8: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """The registered 8-bit thermal and the visible Y, as the fusion network saw them."""
        from tdfusion_ros.colour import prepare_pair
        from tdfusion_ros.image_io import to_unit_float

        try:
            t_reg, rgb_reg = self.registration.apply(t8, rgb)
        except ValueError:
            return None
        luma = prepare_pair(to_unit_float(t_reg), to_unit_float(rgb_reg))
        return tuple(np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)
                     for y in (luma.ir_y, luma.vis_y))

    def _sample(self, index: int, pair: Pair[Any], result: FrameResult,
                t8: np.ndarray | None, gt: np.ndarray | None) -> None:
        fused = result.fused
        height, width = fused.shape[:2]
        scale = 320.0 / width if width < 320 else min(1.0, 360.0 / width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        panels = []
        inputs = self._network_inputs(t8, pair.rgb.payload.image) if t8 is not None else None
        if inputs is not None:
            panels.append(_label_panel(cv2.cvtColor(inputs[0], cv2.COLOR_GRAY2BGR), size,
                                       "thermal"))
            try:
                _, rgb_reg = self.registration.apply(t8, pair.rgb.payload.image)
                panels.append(_label_panel(rgb_reg, size, "RGB"))
            except ValueError:
                pass
        boxed = fused.copy()
        if gt is not None:
            for row in gt:
                _dashed_rect(boxed, row[1:5], (255, 255, 255))
        det = result.detections
        names = self.s.pipeline.class_names
        if det is not None:
            colours = palette()
            for (x1, y1, x2, y2), score, cls in zip(det.xyxy.tolist(), det.scores.tolist(),
                                                     det.class_ids.tolist()):
                colour = tuple(int(c) for c in colours[(cls % 255) + 1])
                cv2.rectangle(boxed, (round(x1), round(y1)), (round(x2), round(y2)), colour, 2)
                text = f"{names[cls] if cls < len(names) else cls} {score:.2f}"
                cv2.putText(boxed, text, (round(x1), max(10, round(y1) - 3)),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
        title = "fused" + (" + detections" if det is not None else "") + (
            " (labels dashed)" if gt is not None else "")
        panels.append(_label_panel(boxed, size, title))
        if result.class_map is not None:
            panels.append(_label_panel(overlay(fused, result.class_map), size, "segmentation"))
        strip = np.concatenate(panels, axis=1)
        file = f"sample_{index:06d}.jpg"
        cv2.imwrite(str(self.out / "samples" / file), strip, [cv2.IMWRITE_JPEG_QUALITY, 85])
        self.samples.append({"index": index, "stamp_ns": pair.rgb.payload.stamp_ns,
                             "file": f"samples/{file}", "detections": 0 if det is None
                             else len(det)})

    def _close_outputs(self) -> None:
        if getattr(self, "last_frame", None) is not None and len(self.samples) < len(
                self.sample_targets):
            self._sample(*self.last_frame)
        self.last_frame = None
        if getattr(self, "video", None) is not None:
            self.video.release()
        if getattr(self, "bag_writer", None) is not None:
            self.bag_writer.close()
        for handle in ("csv", "coco_images", "coco_anns"):
            if hasattr(self, handle):
                getattr(self, handle).close()
        if hasattr(self, "coco_images"):
            self._write_coco()

    def _write_coco(self) -> None:
        """detections.json assembled from the streamed parts (constant memory)."""
        names = self.s.pipeline.class_names
        with (self.out / "detections.json").open("w") as out:
            out.write('{"info": ' + json.dumps({
                "description": "tdfusion_ros replay_eval detections (COCO style; bbox x, y, w,"
                               " h in fused-image pixels; category_id = class index + 1)",
                "bag": str(self.opts.bag), "bundle": str(self.s.bundle)}))
            out.write(',\n"categories": ' + json.dumps(
                [{"id": i + 1, "name": n} for i, n in enumerate(names)]))
            for key, part in (("images", "images.jsonl"), ("annotations", "annotations.jsonl")):
                out.write(f',\n"{key}": [')
                first = True
                with (self.tmp / part).open() as lines:
                    for line in lines:
                        out.write(("\n" if first else ",\n") + line.rstrip("\n"))
                        first = False
                out.write("]")
            out.write("}\n")


def _label_panel(image: np.ndarray, size: tuple[int, int], text: str) -> np.ndarray:
    panel = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    if panel.ndim == 2:
        panel = cv2.cvtColor(panel, cv2.COLOR_GRAY2BGR)
    cv2.putText(panel, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(panel, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return panel


def _dashed_rect(image: np.ndarray, box: Sequence[float], colour: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    dash = 5
    for xa in range(x1, x2, 2 * dash):
        xb = min(xa + dash, x2)
        cv2.line(image, (xa, y1), (xb, y1), colour, 1)
        cv2.line(image, (xa, y2), (xb, y2), colour, 1)
    for ya in range(y1, y2, 2 * dash):
        yb = min(ya + dash, y2)
        cv2.line(image, (x1, ya), (x1, yb), colour, 1)
        cv2.line(image, (x2, ya), (x2, yb), colour, 1)


# --------------------------------------------------------------------------- set-up
def _prepare_out(out: Path, overwrite: bool) -> None:
    ours = ("summary.json", "report.html", "fused_bag", "frames.csv")
    if out.exists() and any(out.iterdir()):
        if not any((out / name).exists() for name in ours):
            raise ReplayError(f"output folder {out} exists and holds other files; choose "
                              "another --out")
        if not overwrite:
            raise ReplayError(f"output folder {out} holds an earlier replay; pass --overwrite "
                              "to replace it")
        for name in ("fused", "masks", "samples", "fused_bag", "live", ".replay_tmp"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("fused.mp4", "detections.json", "frames.csv", "summary.json",
                     "summary.md", "report.html", "fusion_params.yaml"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def _setup(opts: ReplayOptions) -> _Setup:
    notes: list[str] = []
    warn: list[str] = []
    bag = Path(opts.bag)
    if not bag.exists():
        raise ReplayError(f"bag {bag} does not exist (give a rosbag2 folder, an .mcap or a "
                          ".db3 file)")
    # the bag and its topics (listing them when the choice is wrong)
    from tdfusion_ros.bag_reader import MissingTopicError

    try:
        topics = BagReader(bag, None).topics
    except MissingTopicError as err:  # no image topic at all: resolve_topics says so
        topics = err.available
    except BagReadError as err:
        raise ReplayError(str(err)) from None
    thermal_topic, rgb_topic = resolve_topics(topics, opts.thermal_topic, opts.rgb_topic)
    try:
        reader = BagReader(bag, [thermal_topic, rgb_topic],
                           modes={thermal_topic: "mono", rgb_topic: "bgr8"})
    except BagReadError as err:
        raise ReplayError(str(err)) from None
    by_name = {t.name: t for t in reader.topics}
    if reader.recovery_note:
        warn.append(f"bag {bag} is read by a recovery scan: {reader.recovery_note}")

    # parameters: the node's config file, then the command line
    config = Path(opts.config) if opts.config else node_params.default_config_path()
    try:
        values = node_params.load_params_file(config)
    except node_params.ParameterError as err:
        raise ReplayError(str(err)) from None
    values.pop("use_sim_time", None)
    values.update(opts.overrides)
    if opts.bundle is not None:
        values["bundle"] = str(Path(opts.bundle).resolve())
    if opts.backend:
        values["backend"] = opts.backend
    values["input.thermal_transport"] = ("compressed" if by_name[thermal_topic].msgtype
                                         == COMPRESSED_TYPE else "raw")
    values["input.rgb_transport"] = ("compressed" if by_name[rgb_topic].msgtype
                                     == COMPRESSED_TYPE else "raw")
    built = _bag_custom_data(bag)
    bag_offset_ns = built.get("pairing_thermal_offset_ns")
    if opts.offset_from_bag:
        if bag_offset_ns is None:
            raise ReplayError(f"--offset-from-bag: bag {bag} records no thermal offset (it was "
                              "not written by tdfusion_ros.bag_builder); use --set "
                              "sync.thermal_offset=SECONDS")
        values["sync.thermal_offset"] = bag_offset_ns / 1e9
        notes.append(f"sync.thermal_offset = {bag_offset_ns / 1e9:g} s, from the bag's "
                     "bag_builder record")
    try:
        values = node_params.validate(values)
    except node_params.ParameterError as err:
        raise ReplayError(str(err)) from None
    if (bag_offset_ns is not None and not opts.offset_from_bag
            and node_params.seconds_to_ns(values["sync.thermal_offset"]) != bag_offset_ns):
        warn.append(f"the bag builder recorded thermal stamps late by {-bag_offset_ns / 1e6:g} "
                    f"ms (pair with sync.thermal_offset = {bag_offset_ns / 1e9:g} s) but the "
                    f"config has {values['sync.thermal_offset']:g} s; pass --offset-from-bag "
                    "if the bag should be paired as built")
    if values["sync.policy"] != "builtin":
        warn.append(f"sync.policy is {values['sync.policy']}: the offline replay pairs with the "
                    "builtin core (message_filters is not deterministic)")
    pairing = dataclasses.replace(node_params.pairing_config(values), policy="every")
    effective = opts.out / "fusion_params.yaml"
    effective.write_text(
        "# The parameters of this replay (config file + command line), in the node's format:\n"
        f"# source: {config}\n"
        + yaml.safe_dump({"/**": {"ros__parameters": _nest(values)}}, sort_keys=False))

    # the pipeline (same settings as the node)
    bundle = node_params.bundle_path(values)
    try:
        pipeline = FusionPipeline(bundle, node_params.pipeline_settings(values),
                                  log=notes.append)
    except (PipelineError, ValueError, OSError) as err:
        raise ReplayError(f"cannot build the pipeline: {err}") from None

    # labels
    labels = None
    labels_file = None
    if not opts.no_labels:
        from tdfusion_ros.bag_builder import BagBuildError, find_labels, load_labels

        labels_file = Path(opts.labels) if opts.labels else find_labels(bag)
        if labels_file is not None:
            if not labels_file.exists():
                raise ReplayError(f"labels file {labels_file} does not exist")
            try:
                labels = load_labels(labels_file)
            except BagBuildError as err:
                raise ReplayError(str(err)) from None
            if labels.rgb_topic != rgb_topic:
                warn.append(f"the labels were made for {labels.rgb_topic}, the RGB topic is "
                            f"{rgb_topic}")
    if not 0.0 <= opts.map_conf <= 1.0:
        raise ReplayError(f"map_conf {opts.map_conf!r} must be in [0, 1]")
    if opts.predictions_from_labels and labels is None:
        raise ReplayError("--predictions-from-labels needs labels (--labels FILE)")

    counts = [by_name[thermal_topic].count, by_name[rgb_topic].count]
    est_pairs = min(c for c in counts if c is not None) if all(
        c is not None for c in counts) else 100
    fps = opts.fps
    if fps is None:
        duration = _bag_duration_ns(bag)
        fps = est_pairs / (duration / 1e9) if duration else 10.0
        if pairing.max_rate_hz:
            fps = min(fps, pairing.max_rate_hz)
        fps = float(min(max(round(fps, 2), 1.0), 120.0))
    return _Setup(reader, thermal_topic, rgb_topic, values, pairing, effective, pipeline,
                  bundle, labels, labels_file, est_pairs, fps, notes, warn)


# --------------------------------------------------------------------------- after the run
def _fusion_metrics(run: _Offline) -> dict[str, Any]:
    from tdfusion_ros.metrics import fusion_metrics

    files = run.metric_files
    if not files:
        reason = ("--metrics-frames 0" if run.opts.metrics_frames == 0 else "no frame processed"
                  if not run.processed else "no frame could be sampled")
        return {"frames": 0, "note": f"fusion metrics not computed ({reason})"}
    started = time.perf_counter()
    series: dict[str, list[Any]] = {"index": [], "time_s": []}
    t0 = None
    for index, stamp, path in files:
        fused, ir, vis = np.load(path)
        values = fusion_metrics(fused, ir, vis)
        t0 = stamp if t0 is None else t0
        series["index"].append(index)
        series["time_s"].append(round((stamp - t0) / 1e9, 4))
        for name, value in values.items():
            series.setdefault(name, []).append(float(value))
    means = {name: float(np.nanmean(v)) if np.isfinite(v).any() else None
             for name, v in ((n, np.asarray(series[n], np.float64))
                             for n in series if n not in ("index", "time_s"))}
    every = run.metric_every
    note = (f"EN, SF, SCD, VIF, Qabf and SSIM of the fused Y against the network's inputs "
            f"(registered 8-bit thermal, visible Y), on {len(files)} of {run.processed} pairs")
    note += (" (every pair)." if every == 1 else
             f" (one pair in every {every}: subsampled to at most --metrics-frames "
             f"{run.opts.metrics_frames}; computed after the replay, "
             f"{time.perf_counter() - started:.1f} s, so they do not slow it).")
    return {"frames": len(files), "of": run.processed, "every": every, "means": means,
            "series": series, "seconds": time.perf_counter() - started, "note": note}


def _detection_eval(run: _Offline) -> dict[str, Any] | None:
    s = run.s
    if s.labels is None:
        return None
    from tdfusion_ros.detection_metrics import detection_metrics

    classes = list(s.labels.classes)
    thresholds = s.pipeline.thresholds
    base = {"labels_file": str(s.labels_file), "classes": classes,
            "frames_labelled": len(s.labels.boxes), "frames_evaluated": len(run.gt),
            "predictions_from_labels": run.opts.predictions_from_labels,
            "unmapped_predictions": dict(run.unmapped),
            "map_conf": run.opts.map_conf, "deployed_conf": thresholds.conf,
            "iou_threshold": thresholds.iou, "max_det": thresholds.max_det,
            "predictions_evaluated": run.eval_preds}
    if not run.gt:
        base["note"] = ("no processed pair has a labelled RGB stamp: check that the labels "
                        "belong to this bag")
        base.update({"mAP50": None, "mAP75": None, "mAP50-95": None, "AP50": {},
                     "AP50-95": {}, "num_gt": {}})
        return base
    if not run.s.pipeline.detection_enabled and not run.opts.predictions_from_labels:
        base["note"] = "the bundle has no detector (or detection is disabled): no mAP"
        base.update({"mAP50": None, "mAP75": None, "mAP50-95": None, "AP50": {},
                     "AP50-95": {}, "num_gt": {}})
        return base
    result = detection_metrics(run.gt, run.preds, classes)
    base.update(result)
    note = (f"COCO mAP (pycocotools) over the {len(run.gt)} processed pairs whose RGB stamp "
            f"is labelled ({len(s.labels.boxes)} labelled RGB frames in {s.labels_file}); "
            "boxes in fused-image pixels.")
    if run.opts.predictions_from_labels:
        note += (" DEBUG: the predictions are the labels themselves "
                 "(--predictions-from-labels), so mAP must be exactly 1.")
    else:
        note += (f" Scored detections ({run.eval_preds}) are decoded at conf "
                 f"{run.opts.map_conf:g} (--map-conf; NMS IoU {thresholds.iou:g}, at most "
                 f"{thresholds.max_det} per frame, as deployed) from the same detector outputs: "
                 "mAP ranks detections, so it needs the low-confidence ones too. Everything "
                 f"published (fused_bag, detections.json, counts, sample boxes) uses the "
                 f"node's conf {thresholds.conf:g}.")
    if run.unmapped:
        note += (f" Detector classes not in the labels were ignored: "
                 f"{', '.join(f'{k} ({v})' for k, v in sorted(run.unmapped.items()))}.")
    base["note"] = note
    return base


def _segmentation_eval(run: _Offline) -> dict[str, Any] | None:
    seg, s = run.seg, run.s
    if seg is None:
        return None
    k = len(seg.label_classes)
    base: dict[str, Any] = {
        "labels_file": str(s.labels_file), "classes": seg.label_classes,
        "segmenter_classes": seg.seg_classes, "matched": seg.matched,
        "label_classes_not_in_segmenter": [n for n in seg.label_classes if n not in seg.matched],
        "segmenter_classes_not_in_labels": seg.extra,
        "frames_labelled": len(s.labels.segmentation), "frames_evaluated": seg.frames,
        "predictions_from_labels": seg.from_labels,
        "mIoU": None, "mAcc": None, "aAcc": None, "IoU": {}, "Acc": {}, "label_pixels": {},
        "predicted_outside_labels": {}}
    if not s.pipeline.segmentation_enabled and not seg.from_labels:
        base["note"] = ("the labels carry label maps but the bundle has no segmenter (or "
                        "segmentation is disabled): no mIoU")
        return base
    if not seg.frames:
        base["note"] = ("no processed pair has a labelled RGB stamp with a label map: check "
                        "that the labels belong to this bag")
        return base
    result = seg.cm.compute()
    matrix = seg.cm.matrix
    iou = result["IoU"][:k]
    acc = result["Acc"][:k]
    finite = [v for v in iou if math.isfinite(v)]
    finite_acc = [v for v in acc if math.isfinite(v)]
    base.update({
        "IoU": dict(zip(seg.label_classes, iou)), "Acc": dict(zip(seg.label_classes, acc)),
        "mIoU": float(np.mean(finite)) if finite else None,
        "mAcc": float(np.mean(finite_acc)) if finite_acc else None,
        "aAcc": result["aAcc"],
        "classes_in_mIoU": [n for n, v in zip(seg.label_classes, iou) if math.isfinite(v)],
        "label_pixels": {n: int(v) for n, v in zip(seg.label_classes, matrix[:k].sum(axis=1))},
        "predicted_outside_labels": {n: int(v) for n, v in zip(seg.names[k:],
                                                                matrix[:, k:].sum(axis=0))
                                     if v}})
    note = (f"Pixel IoU per label class over the {seg.frames} processed pairs whose RGB stamp "
            f"has a label map ({len(s.labels.segmentation)} in {s.labels_file}), on the fused "
            "grid (label maps moved there by nearest neighbour), label 255 ignored. mIoU is "
            f"the mean over the {len(finite)} of {k} label classes present in the labels or "
            "the predictions (a class absent from both has no IoU). Segmenter classes are "
            "matched to label classes by name.")
    if seg.from_labels:
        note += (" DEBUG: the predictions are the label maps themselves "
                 "(--predictions-from-labels), so every IoU must be exactly 1.")
    missing = base["label_classes_not_in_segmenter"]
    if missing and not seg.from_labels:
        note += (f" Label classes the segmenter does not have (IoU 0 where present): "
                 f"{', '.join(missing)}.")
    if seg.extra and not seg.from_labels:
        note += (f" Segmenter classes not in the labels (their pixels count as misses of the "
                 f"labelled class, not in mIoU): {', '.join(seg.extra)}.")
    base["note"] = note
    return base


def _cleanup_tmp(out: Path) -> None:
    shutil.rmtree(out / ".replay_tmp", ignore_errors=True)


# --------------------------------------------------------------------------- entry point
def replay(opts: ReplayOptions, argv: Sequence[str] | None = None) -> ReplayResult:
    """Run the offline replay (and the live one with ``opts.live``), write outputs and report.

    Raises ReplayError (bad input, exit 2) or ReplayRunError (exit 1).
    """
    from tdfusion_ros import report

    opts.out = Path(opts.out)
    _prepare_out(opts.out, opts.overwrite)
    t_setup = time.perf_counter()
    setup = _setup(opts)
    fused_typestore()  # one-time costs out of the timed run
    from rosbags.rosbag2 import Reader, Writer  # noqa: F401
    load_s = time.perf_counter() - t_setup
    log = opts.log
    for warning in setup.warnings:
        log(f"warning: {warning}")
    log(f"replay: {opts.bag} ({setup.thermal_topic} + {setup.rgb_topic}) through "
        f"{setup.bundle} on {setup.pipeline.backend}; outputs in {opts.out}")
    run = _Offline(opts, setup)
    try:
        wall = run.run()
    except BaseException:
        setup.pipeline.close()
        raise
    rss_replay = _peak_rss_mb()  # before the metrics and mAP of the report
    reader = setup.reader
    damage = reader.damage.describe() if reader.damage is not None else None
    if damage:
        setup.warnings.append(damage)
        log(f"warning: {damage}; the outputs hold everything before the damage")
    skipped_by_stream: dict[str, dict[str, int]] = {}
    for topic, causes in reader.skipped_by_cause.items():
        # Counted as the node counts them: dropped on arrival, by stream and cause.
        stream = Stream.THERMAL if topic == setup.thermal_topic else Stream.RGB
        for cause, count in sorted(causes.items()):
            run.pairer.record_drop(stream, cause, count)
            per = skipped_by_stream.setdefault(stream.value, {})
            per[cause] = per.get(cause, 0) + count
    if reader.skipped_count:
        causes_text = "; ".join(
            f"{stream} {', '.join(f'{c} {n}' for c, n in causes.items())}"
            for stream, causes in sorted(skipped_by_stream.items()))
        text = (f"{reader.skipped_count} message(s) could not be decoded and were skipped "
                f"({causes_text}; first: {reader.skipped[0].reason})")
        setup.warnings.append(text)
        log(f"warning: {text}")
    if run.processed == 0:
        setup.warnings.append("no pair was processed: check the topics, sync.slop and "
                              "sync.thermal_offset (see the pairing drops)")
        log("warning: no pair was processed")

    stats = run.pairer.stats()
    stats["pair_errors"] = dict(run.pair_errors)
    stats["pairs"]["limited_by_max_pairs"] = (opts.max_pairs is not None
                                              and run.pairs_queued >= opts.max_pairs)
    metrics = _fusion_metrics(run)
    det_eval = _detection_eval(run)
    seg_eval = _segmentation_eval(run)
    _cleanup_tmp(opts.out)

    io_cpu = run.reader_cpu_s + run.writer_cpu_s
    io_share = io_cpu / run.process_cpu_s if run.process_cpu_s > 0 else None
    fps_replay = run.processed / wall if wall > 0 else None
    fps_pipeline = run.processed / run.process_s if run.process_s > 0 else None
    ratio = fps_replay / fps_pipeline if fps_replay and fps_pipeline else None
    timing_note = (
        f"{run.processed} pairs in {wall:.2f} s from the first read to the last write: "
        f"{fps_replay or 0:.2f} pairs/s; the pipeline alone took {run.process_s:.2f} s of "
        f"that ({fps_pipeline or 0:.2f} pairs/s), so reading, decoding and writing (in their "
        f"own threads) cost {100 * (1 - (ratio or 1)):.1f}% of the throughput. They used "
        f"{io_cpu:.2f} s of CPU (reader {run.reader_cpu_s:.2f} s, writer "
        f"{run.writer_cpu_s:.2f} s), {100 * (io_share or 0):.1f}% of the "
        f"{run.process_cpu_s:.2f} CPU-seconds of the run: the most inference can lose to "
        "them when it uses every core. Loading the "
        f"bundle and opening the bag took {load_s:.2f} s. read_decode and pairing are per "
        "message (reader thread), write per frame (writer thread; it includes decoding the "
        "detector output again at --map-conf for mAP and the IoU counts), queue_wait is how "
        "long the pipeline waited for its next pair; the others are the pipeline's stages.")
    bag_topics = [{"name": t.name, "type": t.msgtype, "count": t.count} for t in reader.topics]
    by_name = {t.name: t for t in reader.topics}
    summary: dict[str, Any] = {
        "tool": "tdfusion_ros replay_eval",
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "command": " ".join(["replay_eval", *(argv or [])]),
        "bag": {
            "path": str(opts.bag), "storage": _storage_name(opts.bag), "topics": bag_topics,
            "thermal_topic": setup.thermal_topic, "rgb_topic": setup.rgb_topic,
            "thermal_type": by_name[setup.thermal_topic].msgtype,
            "rgb_type": by_name[setup.rgb_topic].msgtype,
            "messages_read": reader.messages_read, "damage": damage,
            "skipped_messages": reader.skipped_count,
            "skipped_by_cause": skipped_by_stream,
            "recovery_note": reader.recovery_note,
        },
        "config": {
            "file": str(opts.config or node_params.default_config_path()),
            "overrides": dict(opts.overrides), "effective_file": str(setup.effective_config),
            "pairing": {"slop_s": setup.values["sync.slop"],
                        "thermal_offset_s": setup.values["sync.thermal_offset"],
                        "queue_size": setup.values["sync.queue_size"],
                        "max_rate_hz": setup.values["sync.max_rate"],
                        "policy": "every pair, in order (the node: newest pair)"},
            "notes": setup.notes,
        },
        "bundle": {"path": str(setup.bundle), "graphs": setup.pipeline.describe()
                   if setup.pipeline._engines else {},
                   "class_names": setup.pipeline.class_names,
                   "segmentation_classes": setup.pipeline.segmentation_classes,
                   "backend": setup.pipeline.backend},
        "outputs": _outputs(opts, run),
        "pairing": stats,
        "frames": {"processed": run.processed, "size": list(run.fused_size or ()) or None,
                   "detections": run.total_dets, "detections_per_class": run.det_per_class,
                   "video_fps": setup.fps, "thermal_16bit": run.ir16},
        "timing": {"wall_s": wall, "load_s": load_s, "pipeline_s": run.process_s,
                   "fps_replay": fps_replay, "fps_pipeline": fps_pipeline,
                   "replay_vs_pipeline": ratio, "stages": run.stages.summary(),
                   "cpu_s": {"process": run.process_cpu_s, "reader": run.reader_cpu_s,
                             "writer": run.writer_cpu_s, "io_share": io_share},
                   "timeline": {"index": run.timeline.xs, "total_ms": run.timeline.ys},
                   "peak_rss_replay_mb": rss_replay, "peak_rss_mb": _peak_rss_mb(),
                   "machine": _machine(),
                   "threads": setup.values["engine.threads"], "note": timing_note},
        "metrics": metrics,
        "detection_eval": det_eval,
        "segmentation_eval": seg_eval,
        "samples": run.samples,
        "live": None,
        "warnings": setup.warnings,
    }
    exit_code = 0
    if not opts.live:
        setup.pipeline.close()
    else:
        try:
            summary["live"] = run_live(opts, setup, summary)
        finally:
            setup.pipeline.close()
        if summary["live"].get("error"):
            exit_code = EXIT_FAILED
        elif not summary["live"].get("comparison", {}).get("agree"):
            exit_code = EXIT_LIVE_DIFFERS
    summary = _jsonable(summary)
    (opts.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    html_path, md_path = report.write_report(opts.out, summary)
    if damage and exit_code == 0 and opts.fail_on_damage:
        exit_code = EXIT_DAMAGED
    return ReplayResult(opts.out, summary, html_path, md_path, exit_code)


def _storage_name(bag: Path) -> str:
    bag = Path(bag)
    if bag.suffix == ".mcap":
        return "mcap"
    if bag.suffix == ".db3":
        return "sqlite3"
    try:
        info = yaml.safe_load((bag / "metadata.yaml").read_text())
        return str(info["rosbag2_bagfile_information"]["storage_identifier"])
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return "?"


def _outputs(opts: ReplayOptions, run: _Offline) -> dict[str, str | None]:
    out = opts.out
    pipe = run.s.pipeline
    return {
        "report": str(out / "report.html"),
        "summary": str(out / "summary.md"),
        "video": str(out / "fused.mp4") if opts.video and run.video_frames else None,
        "png_frames": str(out / "fused") if opts.png else None,
        "masks": str(out / "masks") if opts.masks and pipe.segmentation_enabled else None,
        "detections": str(out / "detections.json"),
        "bag": str(out / "fused_bag") if opts.output_bag else None,
        "frames_table": str(out / "frames.csv"),
        "parameters": str(out / "fusion_params.yaml"),
        "samples": str(out / "samples"),
    }


# =========================================================================== live mode
def _default_domain_id() -> int:
    return 1 + (os.getpid() * 13) % 200


class _LiveRecorder:
    """Subscribes to the node's outputs (raw CDR) and writes them to a bag in its own thread."""

    def __init__(self, node: Any, path: Path, topics: dict[str, str], store: Any) -> None:
        from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin, Writer
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        self.store = store
        self.queue: queue.Queue = queue.Queue()
        self.counts = {topic: 0 for topic in topics}
        self.last_output = time.monotonic()
        self.receive_wall: OrderedDict[int, float] = OrderedDict()  # image stamp -> wall time
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.conns = {}
        self.subs = []
        qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=100,
                         reliability=QoSReliabilityPolicy.RELIABLE)
        for topic, msgtype in topics.items():
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=store)
            cls = Detection2DArray if msgtype == DETECTIONS_TYPE else Image
            self.subs.append(node.create_subscription(
                cls, topic, self._callback(topic), qos, raw=True))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="live_recorder", daemon=True)
        self.thread.start()

    def _callback(self, topic: str) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            now = time.monotonic()
            self.last_output = now
            self.counts[topic] += 1
            self.queue.put((topic, time.time_ns(), now, data))
        return on_message

    def _write(self) -> None:
        from tdfusion_ros.bag_reader import _cdr_header

        while True:
            item = self.queue.get()
            if item is _END:
                return
            topic, wall_ns, mono, data = item
            try:
                if topic == FUSED_IMAGE_TOPIC:
                    stamp, _ = _cdr_header(data)
                    self.receive_wall[stamp] = mono
                    while len(self.receive_wall) > 100000:
                        self.receive_wall.popitem(last=False)
                self.writer.write(self.conns[topic], wall_ns, data)
            except BaseException as err:  # noqa: BLE001 - reported after the run
                self.error = err

    def publishers_matched(self) -> bool:
        return all(sub.get_publisher_count() > 0 for sub in self.subs)

    def close(self) -> None:
        self.queue.put(_END)
        self.thread.join()
        self.writer.close()


def _node_counters(msg: Any) -> dict[str, str]:
    """Every key/value of the node's last /diagnostics message, prefixed by its status."""
    counters: dict[str, str] = {}
    for status in msg.status:
        for kv in status.values:
            if kv.key != "note":
                counters[f"{status.name.split(':')[-1].strip()}: {kv.key}"] = kv.value
    return counters


def run_live(opts: ReplayOptions, setup: _Setup, offline: Mapping[str, Any]) -> dict[str, Any]:
    """Play the bag into the node over DDS with /clock, record its outputs, compare them."""
    live_dir = opts.out / "live"
    live_dir.mkdir(parents=True, exist_ok=True)
    domain = opts.domain_id if opts.domain_id is not None else _default_domain_id()
    result: dict[str, Any] = {"speed": opts.speed, "domain_id": domain, "played": 0,
                              "outputs": {}, "bag": str(live_dir / "fused_bag"),
                              "node_log": str(live_dir / "node.log")}
    pipe = setup.pipeline
    out_topics = {FUSED_IMAGE_TOPIC: IMAGE_TYPE}
    if pipe.detection_enabled:
        out_topics[FUSED_DETECTIONS_TOPIC] = DETECTIONS_TYPE
    if pipe.segmentation_enabled:
        out_topics[FUSED_SEGMENTATION_TOPIC] = IMAGE_TYPE
    try:
        spec = node_params.launch_spec({
            "config": str(setup.effective_config), "bundle": str(setup.bundle),
            "use_sim_time": "true", "thermal_topic": setup.thermal_topic,
            "rgb_topic": setup.rgb_topic})
    except node_params.ParameterError as err:
        result["error"] = f"cannot build the node's launch arguments: {err}"
        return result
    command = spec.command(list(opts.node_command or [sys.executable, "-m",
                                                      "tdfusion_ros.node"]))
    env = dict(os.environ)
    env.update(spec.env)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env["PYTHONUNBUFFERED"] = "1"
    result["node_command"] = " ".join(command)
    result["note"] = (
        f"The bag was played over DDS (ROS_DOMAIN_ID {domain}, Fast DDS large-data transport) "
        f"at {opts.speed:g}x its recorded rate with /clock, into the fusion node started as "
        "fusion.launch.py starts it (same parameters file, use_sim_time:=true). The node "
        "processes the newest pair and skips the others when inference is slower than the "
        "cameras; pairs both processed are compared with the offline outputs.")
    for key, value in spec.env.items():
        os.environ.setdefault(key, value)  # our participant needs the same transport
    log_file = (live_dir / "node.log").open("w")
    node_proc = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                 cwd=str(REPO), start_new_session=True)
    opts.log(f"live: started the node (pid {node_proc.pid}, ROS_DOMAIN_ID {domain}); log "
             f"{live_dir / 'node.log'}")
    recorder = None
    context = None
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        node = rclpy.create_node("tdfusion_replay_player", context=context)
        store = fused_typestore()
        recorder = _LiveRecorder(node, live_dir / "fused_bag", out_topics, store)
        last_diag: list[Any] = [None, 0]

        def on_diagnostics(msg: Any) -> None:
            last_diag[0] = msg
            last_diag[1] += 1

        from diagnostic_msgs.msg import DiagnosticArray

        node.create_subscription(DiagnosticArray, node_params.DIAGNOSTICS_TOPIC,
                                 on_diagnostics, 10)
        total = offline["timing"]["stages"].get("total", {})
        result["expected_ms"] = total.get("p99") or 0.0
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor, context), daemon=True)
        spinner.start()
        played, latency = _play(opts, setup, node, recorder, node_proc, result, last_diag)
        result["played"] = played
        if latency:
            arr = np.asarray(latency)
            result["latency_ms"] = {"p50": float(np.percentile(arr, 50)),
                                    "p99": float(np.percentile(arr, 99)),
                                    "mean": float(arr.mean()), "count": len(latency)}
        if last_diag[0] is not None:
            result["node_counters"] = _node_counters(last_diag[0])
    except _LiveError as err:
        result["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - the report says what happened
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        result["node_exit"] = _stop_process(node_proc)
        log_file.close()
        if recorder is not None:
            recorder.close()
            result["outputs"] = {t.rsplit("/", 1)[-1]: n for t, n in recorder.counts.items()}
            if recorder.error is not None and "error" not in result:
                result["error"] = f"recording failed: {recorder.error}"
        if context is not None:
            try:
                import rclpy

                rclpy.try_shutdown(context=context)
            except Exception:  # noqa: BLE001
                pass
    if "error" in result:
        tail = (live_dir / "node.log").read_text(errors="replace")[-3000:]
        result["node_log_tail"] = tail
        opts.log(f"live: {result['error']}\nnode log (end):\n{tail}")
        return result
    offline_bag = Path(offline["outputs"]["bag"]) if offline["outputs"].get("bag") else None
    if offline_bag is None:
        result["error"] = "the offline run wrote no bag (--no-bag): nothing to compare with"
        return result
    result["comparison"] = compare_runs(offline_bag, live_dir / "fused_bag",
                                        thermal16=bool(offline["frames"].get("thermal_16bit")))
    cmp_ = result["comparison"]
    opts.log(f"live: {cmp_['both']} pairs processed by both, {cmp_['skipped_by_node']} skipped "
             f"by the node, images equal {cmp_['images_equal']}/{cmp_['both']}, detections "
             f"equal {cmp_['detections_equal']}/{cmp_['detections_compared']}")
    return result


class _LiveError(Exception):
    pass


def _spin(executor: Any, context: Any) -> None:
    try:
        while context.ok():
            executor.spin_once(timeout_sec=0.05)
    except Exception:  # noqa: BLE001 - shutting down
        pass


def _stop_process(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    return proc.returncode


def _clock_msg(ns: int) -> Any:
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    sec, nanosec = divmod(int(ns), _SEC)
    return Clock(clock=Time(sec=sec, nanosec=nanosec))


def _play(opts: ReplayOptions, setup: _Setup, node: Any, recorder: _LiveRecorder,
          node_proc: subprocess.Popen, result: dict[str, Any],
          diagnostics: list[Any]) -> tuple[int, list[float]]:
    """Wait for the node, play the bag in real time (scaled), wait for its last outputs."""
    from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    reader = BagReader(opts.bag, [setup.thermal_topic, setup.rgb_topic])
    types = {t.name: t.msgtype for t in reader.topics}
    qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                     reliability=QoSReliabilityPolicy.RELIABLE)
    pubs = {topic: node.create_publisher(CompressedImage if types[topic] == COMPRESSED_TYPE
                                         else Image, topic, qos)
            for topic in (setup.thermal_topic, setup.rgb_topic)}
    clock = node.create_publisher(Clock, "/clock", 10)
    start_ns = reader.start_ns or 0
    clock.publish(_clock_msg(start_ns))

    # wait until the node is active: subscribed to both cameras, publishing its outputs
    deadline = time.monotonic() + opts.live_timeout
    while True:
        if node_proc.poll() is not None:
            raise _LiveError(f"the node exited with code {node_proc.returncode} before it was "
                             "ready")
        ready = (all(p.get_subscription_count() > 0 for p in pubs.values())
                 and recorder.publishers_matched())
        if ready:
            break
        if time.monotonic() > deadline:
            raise _LiveError(f"the node was not ready after {opts.live_timeout:g} s (no "
                             "subscription to the camera topics or no outputs advertised)")
        clock.publish(_clock_msg(start_ns))
        time.sleep(0.1)
    for _ in range(5):  # let both directions finish discovery
        clock.publish(_clock_msg(start_ns))
        time.sleep(0.1)

    # play
    speed = opts.speed
    sent: OrderedDict[int, float] = OrderedDict()  # RGB stamp -> wall time published
    played = 0
    t0_bag: int | None = None
    t0_wall = 0.0
    last_clock = 0.0
    now_bag = start_ns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BagDamageWarning)
        for msg in reader.messages(decode=False):
            if t0_bag is None:
                t0_bag, t0_wall = msg.receive_ns, time.monotonic()
            target = t0_wall + (msg.receive_ns - t0_bag) / 1e9 / speed
            while True:
                now = time.monotonic()
                if now - last_clock >= 0.01:
                    now_bag = min(msg.receive_ns, t0_bag + int((now - t0_wall) * speed * 1e9))
                    clock.publish(_clock_msg(now_bag))
                    last_clock = now
                if now >= target:
                    break
                time.sleep(min(0.005, target - now))
            if node_proc.poll() is not None:
                raise _LiveError(f"the node exited with code {node_proc.returncode} during "
                                 "playback")
            clock.publish(_clock_msg(msg.receive_ns))
            now_bag = msg.receive_ns
            pubs[msg.topic].publish(bytes(msg.raw))
            if msg.topic == setup.rgb_topic:
                sent[msg.stamp_ns] = time.monotonic()
                while len(sent) > 100000:
                    sent.popitem(last=False)
            played += 1
    # drain: the clock stays at the end of the bag (no camera timeout), wait for quiet
    # (the node may still be working on its last pair: allow a few of the offline run's
    # slowest frames after the later of the end of playback and its last output)
    timing = result.get("expected_ms") or 0.0
    quiet = max(3.0, 4.0 * timing / 1000.0)
    played_until = time.monotonic()
    end = played_until + max(30.0, opts.live_timeout)
    while time.monotonic() < end:
        if node_proc.poll() is not None:
            break
        if time.monotonic() - max(recorder.last_output, played_until) > quiet:
            break
        clock.publish(_clock_msg(now_bag))
        time.sleep(0.1)
    # one more /diagnostics (its timer runs on the simulated clock): step the clock past it
    seen = diagnostics[1]
    period_ns = node_params.seconds_to_ns(setup.values["diagnostics.period"])
    deadline = time.monotonic() + 3.0
    while diagnostics[1] == seen and time.monotonic() < deadline and node_proc.poll() is None:
        now_bag += period_ns // 4 + 1
        clock.publish(_clock_msg(now_bag))
        time.sleep(0.05)
    latency = [(recorder.receive_wall[s] - w) * 1000.0 for s, w in sent.items()
               if s in recorder.receive_wall]
    return played, latency


# --------------------------------------------------------------------------- comparison
def _iter_topic(bag: Path, topic: str) -> Iterator[Any]:
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        if not conns:
            return
        for _, _, data in reader.messages(connections=conns):
            yield data


def compare_runs(offline_bag: Path, live_bag: Path, *, thermal16: bool = False,
                 image_tolerance: int = 1, iou_min: float = 0.99) -> dict[str, Any]:
    """Compare the node's outputs with the offline run's, pair by pair (by RGB stamp).

    Both bags hold the pairs in processing order; the live one is a subsequence of the
    offline one (the node skips pairs), so a merge in order reads each bag once.
    """
    from tdfusion_ros.bag_reader import _cdr_header

    store = fused_typestore()
    offline_stamps = [_cdr_header(raw)[0] for raw in _iter_topic(offline_bag, FUSED_IMAGE_TOPIC)]
    position = {stamp: i for i, stamp in enumerate(offline_stamps)}
    live_stamps = [_cdr_header(raw)[0] for raw in _iter_topic(live_bag, FUSED_IMAGE_TOPIC)]
    both_list = [s for s in live_stamps if s in position]
    both = set(both_list)
    ordered = all(position[a] < position[b] for a, b in zip(both_list, both_list[1:]))
    skipped = [s for s in offline_stamps if s not in both]
    result: dict[str, Any] = {
        "offline_pairs": len(offline_stamps), "live_outputs": len(live_stamps),
        "both": len(both), "skipped_by_node": len(skipped),
        "skipped_stamps": skipped[:200],
        "live_only": len(live_stamps) - len(both_list), "mismatches": [],
        "images_equal": 0, "image_max_abs_diff": 0, "detections_compared": 0,
        "detections_equal": 0, "segmentation_compared": 0, "segmentation_equal": 0,
        "in_order": ordered,
        # offline pair indices the node processed (for the report's strip; bounded)
        "node_processed": sorted(position[s] for s in both)[:20000],
    }
    mismatches = result["mismatches"]

    def pairs(topic: str) -> Iterator[tuple[int, Any, Any]]:
        """(stamp, offline raw, live raw) for stamps in both, merging in processing order."""
        live_iter = (raw for raw in _iter_topic(live_bag, topic)
                     if _cdr_header(raw)[0] in both)
        off_iter = iter(_iter_topic(offline_bag, topic))
        for live_raw in live_iter:
            stamp = _cdr_header(live_raw)[0]
            for off_raw in off_iter:
                if _cdr_header(off_raw)[0] == stamp:
                    yield stamp, off_raw, live_raw
                    break
            else:
                return

    for stamp, off_raw, live_raw in pairs(FUSED_IMAGE_TOPIC):
        _, a = _decode_image(store, off_raw)
        _, b = _decode_image(store, live_raw)
        if a.shape != b.shape:
            mismatches.append({"stamp_ns": stamp, "what": f"image size {b.shape} != {a.shape}"})
            continue
        diff = int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max()) if a.size else 0
        result["image_max_abs_diff"] = max(result["image_max_abs_diff"], diff)
        if diff <= image_tolerance:
            result["images_equal"] += 1
        else:
            mismatches.append({"stamp_ns": stamp, "what": f"fused image differs by up to "
                                                          f"{diff}/255"})
    for stamp, off_raw, live_raw in pairs(FUSED_DETECTIONS_TOPIC):
        result["detections_compared"] += 1
        _, a = _decode_detections(store, off_raw)
        _, b = _decode_detections(store, live_raw)
        problem = _compare_boxes(a, b, iou_min)
        if problem is None:
            result["detections_equal"] += 1
        else:
            mismatches.append({"stamp_ns": stamp, "what": problem})
    for stamp, off_raw, live_raw in pairs(FUSED_SEGMENTATION_TOPIC):
        result["segmentation_compared"] += 1
        _, a = _decode_image(store, off_raw)
        _, b = _decode_image(store, live_raw)
        if a.shape == b.shape and np.array_equal(a, b):
            result["segmentation_equal"] += 1
        else:
            share = float((a == b).mean()) if a.shape == b.shape else 0.0
            mismatches.append({"stamp_ns": stamp, "what": f"segmentation differs ({share:.4f} "
                                                          "of pixels equal)"})
    result["agree"] = bool(
        result["both"] > 0 and result["images_equal"] == result["both"]
        and result["detections_equal"] == result["detections_compared"]
        and result["segmentation_equal"] == result["segmentation_compared"])
    if mismatches and thermal16:
        result["note"] = ("16-bit thermal with a smoothed percentile gain: the node's gain "
                          "state follows the pairs it processed, so after a skipped pair its "
                          "8-bit thermal can differ slightly from the offline run's")
    result["mismatches"] = mismatches[:200]
    return result


def _compare_boxes(a: list[tuple], b: list[tuple], iou_min: float) -> str | None:
    if len(a) != len(b):
        return f"{len(b)} detections live, {len(a)} offline"
    unused = list(range(len(b)))
    for box in a:
        best, best_iou = None, -1.0
        for j in unused:
            if b[j][0] != box[0]:
                continue
            iou = _box_iou(box[2:], b[j][2:])
            if iou > best_iou:
                best, best_iou = j, iou
        if best is None or best_iou <= iou_min:
            return (f"no live box of class {box[0]} with IoU > {iou_min} "
                    f"(best {best_iou:.4f})")
        unused.remove(best)
    return None


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
            from tdfusion_ros.bag_reader import list_topics

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
