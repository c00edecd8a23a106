"""Write rosbag2 bags of a thermal and an RGB camera with realistic timing, for replay tests.

    python -m tdfusion_ros.bag_builder --out BAG (--pairs DIR [--labels] | --scenes N) [--seed S]
        [--thermal-rate 9|30] [--rgb-rate 30] [--jitter-ms J] [--thermal-offset-ms O]
        [--drop-prob P] [--ir16] [--rgb-compressed] [--storage mcap|sqlite3] [--size WxH]
        [--loop K]

Why: a robot's bag is what the replay evaluation and the node are judged on, but real bags with
labels are rare. This builds one from aligned pairs (a folder like ``../shared/data/det`` with
``ir/``, ``vi/`` and optionally YOLO ``labels/`` + ``classes.txt`` and class-id label maps
``seg/`` + ``seg_classes.txt``) or from the procedural scene generator, with the timing faults
the pairing core must survive.

Timing model. The source frames form a *scene sequence* shown at ``scene_rate`` (default: the
slower camera's rate); scene ``i`` is centred on time ``i / scene_rate``. Each camera exposes at
its own rate (frame ``k`` at ``k / rate + phase``) and shows the scene nearest that exposure
time, so a 9 Hz thermal camera sees every scene and a 30 Hz RGB camera sees each about 3.3
times. Then, per camera and from separate seeded streams:

* header stamp = exposure + offset (thermal only: ``thermal_offset``, e.g. a Boson's pipeline
  latency) + jitter, uniform in ``[-jitter, +jitter]``; to pair such a bag, set the pairing
  core's ``thermal_offset_ns`` to ``-thermal_offset``;
* receive time (the bag's timestamp) = header stamp + a delay uniform in ``receive_delay``,
  kept in order per camera (a FIFO transport);
* each frame is dropped with probability ``drop_prob`` (never written, but counted).

Messages are written in receive order: ``/thermal/image_raw`` (mono8, or mono16 radiometric
counts with ``--ir16``: 7000 + 7 x level, the 14-bit count range a FLIR Boson publishes; 16-bit
sources are kept as they are) and ``/rgb/image_raw`` (rgb8 by default, as most drivers publish)
or ``/rgb/image_raw/compressed`` (JPEG), frame ids ``thermal_optical_frame`` and
``rgb_optical_frame``.

Serialization: messages are built as rosbags typestore objects (Kilted definitions) and
serialized by rosbags to CDR, which rclpy's ``deserialize_message`` reads exactly. Why not
rclpy's ``serialize_message``: it leaves CDR alignment padding uninitialised, so the same
arguments would not give the same bytes; rosbags zeroes it, is ~10x faster for a 640x480 image
and needs no ROS installation to build a bag.

Labels travel in ``BAG/labels.json`` (next to the storage file), keyed by the RGB header stamp in
ns: boxes in RGB pixels with class ids and names, the class list, and which source frame each
stamp shows. The build parameters and drop counts are in the bag's ``custom_data``. Everything
is deterministic for a seed: the same arguments give byte-identical messages.

Segmentation labels (``--labels`` with a ``seg/`` or ``masks/`` folder and ``seg_classes.txt``
or ``segmentation_classes.txt``; generated scenes always): one PNG per source frame in
``BAG/seg/<source>.png`` (mono8, pixel = class id, 255 = ignore, at the RGB image size: resized
by nearest neighbour with ``--size``), named by the ``seg`` field of each labelled stamp, with
the class list under ``segmentation`` in ``labels.json``. A pair without a map has no ``seg``
field: it is simply not labelled for segmentation.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from tdfusion_ros import paths
from tdfusion_ros.runtime.image_io import ImagePairError, list_pairs, read_image
from tdfusion_ros.scenes import (
    DETECTION_CLASSES,
    DETECTION_CLASSES_WITH_BICYCLES,
    IR16_BASE,
    IR16_GAIN,
    MIN_SIZE,
    SEGMENTATION_CLASSES,
    SEGMENTATION_CLASSES_WITH_BICYCLES,
    generate_scene,
    scene_name,
    scene_seed,
)

__all__ = [
    "BagBuildError",
    "BagLabels",
    "BuildResult",
    "CameraCounts",
    "FrameRecord",
    "FrameSource",
    "LABELS_FILE",
    "PairFolderSource",
    "RGB_FRAME",
    "SceneSource",
    "SourceFrame",
    "THERMAL_FRAME",
    "TimingConfig",
    "build_bag",
    "build_from_pairs",
    "build_from_scenes",
    "find_labels",
    "ir8_to_counts",
    "load_labels",
    "load_segmentation",
    "main",
    "parse_size",
]

THERMAL_TOPIC = "/thermal/image_raw"
RGB_TOPIC = "/rgb/image_raw"
RGB_COMPRESSED_TOPIC = "/rgb/image_raw/compressed"
THERMAL_FRAME = "thermal_optical_frame"
RGB_FRAME = "rgb_optical_frame"
IMAGE_TYPE = "sensor_msgs/msg/Image"
COMPRESSED_TYPE = "sensor_msgs/msg/CompressedImage"
LABELS_FILE = "labels.json"
LABELS_FORMAT = "tdfusion_ros/bag_labels/1"
CUSTOM_DATA_KEY = "tdfusion_ros.bag_builder"
#: 2023-11-14T22:13:20Z: a plausible wall-clock start (stamps far from 0, like a robot's).
DEFAULT_START_NS = 1_700_000_000_000_000_000
VIS_FOLDERS = ("vi", "vis", "visible", "rgb")
SEG_FOLDERS = ("seg", "masks")
SEG_CLASS_FILES = ("seg_classes.txt", "segmentation_classes.txt")
SEG_DIR = "seg"
#: Label-map value of pixels that are not labelled (never counted in IoU).
SEG_IGNORE = 255

_SEC = 1_000_000_000
_MS = 1_000_000
# Independent random streams, so that e.g. changing the drop probability keeps the jitter.
_STREAM_JITTER, _STREAM_DELAY, _STREAM_DROP = 1, 2, 3
_CAMERAS = ("thermal", "rgb")


class BagBuildError(ValueError):
    """Bad arguments or source data; the message says which and why."""


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TimingConfig:
    """Camera timing and message options (times in ms where a person types them)."""

    thermal_rate_hz: float = 30.0
    rgb_rate_hz: float = 30.0
    scene_rate_hz: float | None = None  # None: the slower camera's rate
    jitter_ms: float = 2.0
    thermal_offset_ms: float = 0.0
    drop_prob: float = 0.0
    receive_delay_ms: tuple[float, float] = (1.0, 5.0)
    rgb_phase_ms: float = 0.0
    ir16: bool = False
    rgb_compressed: bool = False
    rgb_encoding: str = "rgb8"
    jpeg_quality: int = 90
    storage: str = "mcap"
    loop: int = 1
    seed: int = 0
    start_ns: int = DEFAULT_START_NS

    @property
    def scene_rate(self) -> float:
        return self.scene_rate_hz or min(self.thermal_rate_hz, self.rgb_rate_hz)

    @property
    def rgb_topic(self) -> str:
        return RGB_COMPRESSED_TOPIC if self.rgb_compressed else RGB_TOPIC

    def validate(self) -> TimingConfig:
        """Refuse settings that would make stamps go backwards or out of range."""
        lo, hi = self.receive_delay_ms
        min_period_ms = 1000.0 / max(self.thermal_rate_hz, self.rgb_rate_hz, 1e-9)
        checks = [
            (self.thermal_rate_hz > 0 and self.rgb_rate_hz > 0, "camera rates must be > 0"),
            (self.scene_rate > 0, "scene rate must be > 0"),
            (self.jitter_ms >= 0, "jitter must be >= 0"),
            (2 * self.jitter_ms < min_period_ms,
             f"jitter +-{self.jitter_ms} ms would reorder stamps of a camera with a "
             f"{min_period_ms:.1f} ms period; keep 2 x jitter below the period"),
            (0.0 <= self.drop_prob < 1.0, "drop probability must be in [0, 1)"),
            (0.0 <= lo <= hi, "receive delay must satisfy 0 <= low <= high"),
            (0.0 <= self.rgb_phase_ms * self.rgb_rate_hz < 1000.0,
             "RGB phase must be in [0, RGB period)"),
            (self.rgb_encoding in ("rgb8", "bgr8"), "RGB encoding must be rgb8 or bgr8"),
            (1 <= self.jpeg_quality <= 100, "JPEG quality must be in 1..100"),
            (self.storage in ("mcap", "sqlite3"), "storage must be mcap or sqlite3"),
            (self.loop >= 1, "loop must be >= 1"),
            (self.start_ns - (abs(self.thermal_offset_ms) + self.jitter_ms) * _MS >= 0,
             "start time minus offset and jitter must stay >= 0"),
        ]
        for ok, why in checks:
            if not ok:
                raise BagBuildError(why)
        return self


# --------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class SourceFrame:
    """One aligned pair ready to publish: thermal (mono8/16), visible BGR, boxes in pixels."""

    name: str
    ir: np.ndarray
    vis: np.ndarray
    boxes: np.ndarray | None  # N x 5 float (class id, x1, y1, x2, y2); None: no labels
    seg: np.ndarray | None = None  # H x W uint8 class ids at the visible size; None: no map


class FrameSource(Protocol):
    """What build_bag needs from a source: a length, frames by index, class names or None."""

    classes: list[str] | None
    segmentation_classes: list[str] | None
    kind: str

    def __len__(self) -> int: ...

    def frame(self, index: int) -> SourceFrame: ...


class PairFolderSource:
    """A folder of aligned pairs (``ir/``, ``vi/``, optional YOLO ``labels/``)."""

    def __init__(self, folder: Path, labels: bool, size: tuple[int, int] | None,
                 limit: int | None) -> None:
        folder = Path(folder)
        vis_dir = next((folder / v for v in VIS_FOLDERS if (folder / v).is_dir()), None)
        if not (folder / "ir").is_dir() or vis_dir is None:
            raise BagBuildError(
                f"{folder}: expected an ir/ folder and one of {', '.join(VIS_FOLDERS)}/")
        try:
            self.pairs = list_pairs(folder / "ir", vis_dir)
        except ImagePairError as exc:
            raise BagBuildError(str(exc)) from None
        if limit is not None:
            self.pairs = self.pairs[: max(limit, 0)]
        if not self.pairs:
            raise BagBuildError(f"{folder}: no pairs selected")
        self.size = size
        self.kind = f"pairs:{folder.name}"
        self.classes: list[str] | None = None
        self.label_dir: Path | None = None
        if labels:
            self.label_dir = folder / "labels"
            if not self.label_dir.is_dir():
                raise BagBuildError(f"--labels given but {self.label_dir} does not exist")
            classes_file = folder / "classes.txt"
            if not classes_file.is_file():
                raise BagBuildError(f"--labels given but {classes_file} does not exist")
            self.classes = _read_classes(classes_file)
        self.segmentation_classes: list[str] | None = None
        self.seg_dir: Path | None = None
        if labels:
            self.seg_dir = next((folder / d for d in SEG_FOLDERS if (folder / d).is_dir()), None)
            seg_file = next((folder / f for f in SEG_CLASS_FILES if (folder / f).is_file()),
                            None)
            if (self.seg_dir is None) != (seg_file is None):
                have = self.seg_dir or seg_file
                raise BagBuildError(
                    f"--labels: {have} exists but not its counterpart: label maps need a "
                    f"{' or '.join(SEG_FOLDERS)}/ folder and {' or '.join(SEG_CLASS_FILES)} "
                    f"in {folder}")
            if seg_file is not None:
                self.segmentation_classes = _read_classes(seg_file)
                if not 0 < len(self.segmentation_classes) <= SEG_IGNORE:
                    raise BagBuildError(f"{seg_file}: expected 1 to {SEG_IGNORE} class names")

    def __len__(self) -> int:
        return len(self.pairs)

    def frame(self, index: int) -> SourceFrame:
        pair = self.pairs[index]
        try:
            ir, vis = read_image(pair.ir), read_image(pair.vis)
        except ImagePairError as exc:
            raise BagBuildError(str(exc)) from None
        if ir.ndim == 3:
            ir = cv2.cvtColor(ir, cv2.COLOR_BGR2GRAY)
        if vis.dtype != np.uint8:
            vis = cv2.convertScaleAbs(vis, alpha=255.0 / 65535.0)
        if vis.ndim == 2:
            vis = cv2.cvtColor(vis, cv2.COLOR_GRAY2BGR)
        seg = None
        if self.seg_dir is not None:
            seg = _read_label_map(self.seg_dir, pair.name, vis.shape[:2],
                                  len(self.segmentation_classes or ()))
        if self.size is not None:
            width, height = self.size
            ir = _resize(ir, width, height)
            vis = _resize(vis, width, height)
            if seg is not None and seg.shape != (height, width):
                seg = cv2.resize(seg, (width, height), interpolation=cv2.INTER_NEAREST)
        elif ir.shape[:2] != vis.shape[:2]:
            raise BagBuildError(
                f"pair {pair.name}: infrared {ir.shape[1]}x{ir.shape[0]} and visible "
                f"{vis.shape[1]}x{vis.shape[0]} differ; give --size to resize both")
        boxes = None
        if self.label_dir is not None:
            boxes = _read_yolo(self.label_dir / f"{pair.name}.txt", vis.shape[1], vis.shape[0],
                               len(self.classes or ()))
        return SourceFrame(pair.name, ir, vis, boxes, seg)


class SceneSource:
    """The procedural scene generator as a frame source (labels always available)."""

    def __init__(self, count: int, seed: int, size: tuple[int, int], ir16: bool,
                 bicycles: bool = False) -> None:
        if count < 1:
            raise BagBuildError(f"scene count must be >= 1, got {count}")
        width, height = size
        if min(width, height) < MIN_SIZE:
            raise BagBuildError(f"scenes need at least {MIN_SIZE}x{MIN_SIZE}, got {width}x{height}")
        self.count, self.seed, self.size, self.ir16 = count, seed, size, ir16
        self.bicycles = bicycles
        self.kind = "scenes with bicycles" if bicycles else "scenes"
        self.classes: list[str] | None = list(DETECTION_CLASSES_WITH_BICYCLES if bicycles
                                              else DETECTION_CLASSES)
        self.segmentation_classes: list[str] | None = list(
            SEGMENTATION_CLASSES_WITH_BICYCLES if bicycles else SEGMENTATION_CLASSES)

    def __len__(self) -> int:
        return self.count

    def frame(self, index: int) -> SourceFrame:
        width, height = self.size
        scene = generate_scene(scene_seed(self.seed, index), height, width, ir_16bit=self.ir16,
                               bicycles=self.bicycles)
        return SourceFrame(scene_name(index, scene.is_night), scene.ir, scene.vis,
                           scene.boxes.astype(np.float64), scene.mask)


def _read_classes(path: Path) -> list[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]


def _read_label_map(folder: Path, name: str, shape: tuple[int, ...],
                    n_classes: int) -> np.ndarray | None:
    """``folder/<name>.png`` as H x W uint8 class ids, checked; None when the pair has none."""
    path = folder / f"{name}.png"
    if not path.is_file():
        return None
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None:
        raise BagBuildError(f"{path}: not a readable image")
    if label.ndim == 3:
        if not all(np.array_equal(label[..., 0], label[..., c])
                   for c in range(1, label.shape[2])):
            raise BagBuildError(f"{path}: a label map must hold one class id per pixel "
                                f"(grey), got a {label.shape[2]}-channel colour image")
        label = label[..., 0]
    if label.shape != tuple(shape[:2]):
        raise BagBuildError(f"{path}: label map {label.shape[1]}x{label.shape[0]} does not "
                            f"match its visible image {shape[1]}x{shape[0]}")
    values = np.unique(label)
    bad = values[(values >= n_classes) & (values != SEG_IGNORE)]
    if bad.size:
        raise BagBuildError(f"{path}: class ids {bad.tolist()} are not in the {n_classes} "
                            f"segmentation classes (nor {SEG_IGNORE}, ignore)")
    return label.astype(np.uint8)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[1] == width and image.shape[0] == height:
        return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def _read_yolo(path: Path, width: int, height: int, n_classes: int) -> np.ndarray:
    """YOLO ``cls cx cy w h`` (or polygon ``cls x y x y ...``) -> N x 5 pixel boxes.

    A missing file means no objects, as in YOLO training sets.
    """
    rows: list[list[float]] = []
    if path.is_file():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            try:
                cls, values = int(parts[0]), [float(v) for v in parts[1:]]
            except ValueError:
                raise BagBuildError(f"{path}:{number}: not a YOLO label line: {line!r}") from None
            if not 0 <= cls < n_classes:
                raise BagBuildError(f"{path}:{number}: class {cls} not in classes.txt "
                                    f"({n_classes} classes)")
            if len(values) == 4:
                cx, cy, w, h = values
                x1, y1, x2, y2 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
            elif len(values) >= 6 and len(values) % 2 == 0:
                xs, ys = values[0::2], values[1::2]
                x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
            else:
                raise BagBuildError(f"{path}:{number}: expected 4 box values or a polygon")
            rows.append([cls, min(max(x1, 0.0), 1.0) * width, min(max(y1, 0.0), 1.0) * height,
                         min(max(x2, 0.0), 1.0) * width, min(max(y2, 0.0), 1.0) * height])
    return np.array(rows, np.float64).reshape(-1, 5)


def ir8_to_counts(ir: np.ndarray) -> np.ndarray:
    """8-bit infrared -> 16-bit radiometric counts (7000 + 7 x level), the scenes' mapping."""
    return (IR16_BASE + np.round(IR16_GAIN * ir.astype(np.float32))).astype(np.uint16)


# --------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class FrameRecord:
    """One camera frame as scheduled: written or dropped."""

    camera: str  # "thermal" or "rgb"
    seq: int  # frame number of that camera, counting dropped frames
    exposure_ns: int
    stamp_ns: int  # header stamp
    receive_ns: int  # bag timestamp
    scene_index: int  # index into the scene sequence (source frame = scene_index % len)
    dropped: bool


@dataclass(frozen=True)
class CameraCounts:
    scheduled: int
    dropped: int
    written: int


def _schedule(config: TimingConfig, camera: str, n_scenes: int) -> list[FrameRecord]:
    """All frames of one camera over the scene sequence, with stamps, delays and drops."""
    thermal = camera == "thermal"
    rate = config.thermal_rate_hz if thermal else config.rgb_rate_hz
    phase_ns = 0 if thermal else round(config.rgb_phase_ms * _MS)
    offset_ns = round(config.thermal_offset_ms * _MS) if thermal else 0
    scene_rate = config.scene_rate

    exposures: list[int] = []
    scenes: list[int] = []
    k = 0
    while True:
        rel = phase_ns + round(k * _SEC / rate)
        index = math.floor(rel * scene_rate / _SEC + 0.5)
        if index >= n_scenes:
            break
        exposures.append(config.start_ns + rel)
        scenes.append(index)
        k += 1
    n = len(exposures)
    cam_id = _CAMERAS.index(camera)
    jitter = round(config.jitter_ms * _MS)
    lo, hi = (round(v * _MS) for v in config.receive_delay_ms)
    jitters = np.random.default_rng([config.seed, _STREAM_JITTER, cam_id]).integers(
        -jitter, jitter + 1, n)
    delays = np.random.default_rng([config.seed, _STREAM_DELAY, cam_id]).integers(lo, hi + 1, n)
    drops = np.random.default_rng([config.seed, _STREAM_DROP, cam_id]).random(n) < config.drop_prob

    frames = []
    last_receive = -1
    for k in range(n):
        stamp = exposures[k] + offset_ns + int(jitters[k])
        receive = max(stamp + int(delays[k]), last_receive + 1)  # FIFO per camera
        last_receive = receive
        frames.append(FrameRecord(camera, k, exposures[k], stamp, receive, scenes[k],
                                  bool(drops[k])))
    return frames


# --------------------------------------------------------------------------- results, labels
@dataclass
class BuildResult:
    """What was written; ``frames`` lists every scheduled frame, dropped ones included."""

    path: Path
    storage_file: Path
    labels_file: Path | None
    counts: dict[str, CameraCounts]
    frames: list[FrameRecord]
    topics: dict[str, str]  # camera -> topic
    bytes_written: int
    seconds: float
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def messages(self) -> int:
        return sum(c.written for c in self.counts.values())


@dataclass(frozen=True)
class BagLabels:
    """Sidecar labels: boxes (class id, x1, y1, x2, y2) in RGB pixels by RGB header stamp."""

    classes: list[str]
    boxes: dict[int, np.ndarray]
    sources: dict[int, str]
    image_size: tuple[int, int]  # width, height
    rgb_topic: str
    #: Segmentation label maps: class names and, per labelled RGB stamp, its PNG (absolute).
    segmentation_classes: list[str] | None = None
    segmentation: dict[int, Path] = field(default_factory=dict)


def find_labels(bag: str | Path) -> Path | None:
    """The sidecar of a bag folder (or of a storage file, in its folder), if there is one."""
    bag = Path(bag)
    candidate = (bag if bag.is_dir() else bag.parent) / LABELS_FILE
    return candidate if candidate.is_file() else None


def load_labels(path: str | Path) -> BagLabels:
    """Read a sidecar written by :func:`build_bag` (a bag folder or the JSON file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / LABELS_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("format") != LABELS_FORMAT:
            raise BagBuildError(f"{path}: not a {LABELS_FORMAT} file")
        boxes, sources, seg = {}, {}, {}
        for stamp, entry in data["labels"].items():
            rows = [[b["class_id"], *b["box"]] for b in entry["boxes"]]
            boxes[int(stamp)] = np.array(rows, np.float64).reshape(-1, 5)
            sources[int(stamp)] = entry["source"]
            if entry.get("seg"):
                seg[int(stamp)] = path.parent / entry["seg"]
        seg_section = data.get("segmentation")
        seg_classes = list(seg_section["classes"]) if seg_section else None
        if seg and seg_classes is None:
            raise BagBuildError(f"{path}: frames name label maps but there is no "
                                "'segmentation' section with their classes")
        return BagLabels(list(data["classes"]), boxes, sources,
                         (int(data["image_size"][0]), int(data["image_size"][1])),
                         data["rgb_topic"], seg_classes, seg)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BagBuildError(f"{path}: cannot read labels: {exc}") from None


def load_segmentation(path: str | Path) -> np.ndarray:
    """One label map of a sidecar (``BagLabels.segmentation[stamp]``): H x W uint8 class ids."""
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8:
        raise BagBuildError(f"{path}: not a mono8 label map")
    return label


def _labels_json(config: TimingConfig, classes: list[str], size: tuple[int, int],
                 entries: dict[int, dict[str, Any]], frames: list[FrameRecord],
                 seg_classes: list[str] | None = None) -> str:
    """The sidecar text: readable header, one line per labelled RGB stamp."""
    written = [f for f in frames if not f.dropped]
    head: dict[str, Any] = {
        "format": LABELS_FORMAT,
        "rgb_topic": config.rgb_topic,
        "rgb_frame_id": RGB_FRAME,
        "image_size": list(size),
        "classes": classes,
        "stamp_key": "RGB header stamp in ns",
    }
    if seg_classes is not None:
        head["segmentation"] = {
            "classes": seg_classes, "ignore_index": SEG_IGNORE,
            "maps": "the 'seg' field of a stamp: PNG (mono8, pixel = class id) at image_size, "
                    "relative to this file; stamps without it are not labelled for "
                    "segmentation"}
    # Which scene each written message shows: the ground truth for pairing checks.
    shown = {cam: [[f.stamp_ns, f.scene_index] for f in written if f.camera == cam]
             for cam in _CAMERAS}
    compact = {"separators": (",", ":")}
    rows = ",\n".join(f'  "{k}": {json.dumps(v, **compact)}' for k, v in sorted(entries.items()))
    return (json.dumps(head, indent=1)[:-2] + ',\n "labels": {\n' + rows + "\n },\n"
            + f' "frames": {json.dumps(shown, **compact)}\n}}\n')


def _box_entries(boxes: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    return [{"class_id": int(b[0]), "class": classes[int(b[0])],
             "box": [round(float(v), 3) for v in b[1:]]} for b in boxes]


# --------------------------------------------------------------------------- writing
class _Messages:
    """Image / CompressedImage CDR from numpy (the layouts of ros_image.array_to_image)."""

    def __init__(self) -> None:
        from rosbags.typesys import Stores, get_typestore

        self.store = get_typestore(Stores.ROS2_KILTED)
        types = self.store.types
        self.image = types[IMAGE_TYPE]
        self.compressed = types[COMPRESSED_TYPE]
        self.header = types["std_msgs/msg/Header"]
        self.time = types["builtin_interfaces/msg/Time"]

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        sec, nanosec = divmod(int(stamp_ns), _SEC)
        return self.header(stamp=self.time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def raw(self, pixels: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> memoryview:
        """mono8 / mono16 from 2-D arrays, rgb8 / bgr8 from BGR arrays; little-endian data."""
        if encoding == "rgb8":
            pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        pixels = np.ascontiguousarray(pixels, pixels.dtype.newbyteorder("<"))
        height, width = pixels.shape[:2]
        msg = self.image(header=self._header(stamp_ns, frame_id), height=height, width=width,
                         encoding=encoding, is_bigendian=0,
                         step=width * pixels.itemsize * (pixels.shape[2] if pixels.ndim == 3
                                                         else 1),
                         data=pixels.reshape(-1).view(np.uint8))
        return self.store.serialize_cdr(msg, IMAGE_TYPE)

    def jpeg(self, bgr: np.ndarray, quality: int, stamp_ns: int, frame_id: str) -> memoryview:
        """CompressedImage with compressed_image_transport's format string."""
        ok, encoded = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise BagBuildError(f"OpenCV could not encode a {bgr.shape} image as JPEG")
        msg = self.compressed(header=self._header(stamp_ns, frame_id),
                              format="bgr8; jpeg compressed bgr8", data=encoded.reshape(-1))
        return self.store.serialize_cdr(msg, COMPRESSED_TYPE)


def build_bag(source: FrameSource, out: str | Path, config: TimingConfig,
              *, overwrite: bool = False) -> BuildResult:
    """Write the bag for a frame source; see the module docstring for the timing model."""
    from rosbags.rosbag2 import StoragePlugin, Writer

    config.validate()
    messages = _Messages()
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise BagBuildError(f"{out} exists; remove it or pass --overwrite")
        if out.is_dir() and ((out / "metadata.yaml").is_file() or not any(out.iterdir())):
            shutil.rmtree(out)
        else:
            raise BagBuildError(f"{out} exists and does not look like a bag; not removing it")

    n_scenes = len(source) * config.loop
    frames = sorted(
        (f for cam in _CAMERAS for f in _schedule(config, cam, n_scenes)),
        key=lambda f: (f.receive_ns, _CAMERAS.index(f.camera), f.seq))
    counts = {}
    for cam in _CAMERAS:
        own = [f for f in frames if f.camera == cam]
        dropped = sum(f.dropped for f in own)
        counts[cam] = CameraCounts(len(own), dropped, len(own) - dropped)
    if any(c.written == 0 for c in counts.values()):
        raise BagBuildError(f"a camera would publish nothing ({counts}); lower --drop-prob "
                            "or use more frames")

    # A thermal offset makes thermal frames of an older scene arrive among newer RGB frames;
    # keep enough recent scenes that each is rendered once.
    lag_ns = abs(config.thermal_offset_ms * _MS) + config.jitter_ms * _MS \
        + config.receive_delay_ms[1] * _MS
    capacity = 3 + math.ceil(lag_ns * config.scene_rate / _SEC)
    cache: OrderedDict[int, SourceFrame] = OrderedDict()

    def scene(index: int) -> SourceFrame:
        key = index % len(source)
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
        frame = source.frame(key)
        if config.ir16 and frame.ir.dtype == np.uint8:
            frame = replace(frame, ir=ir8_to_counts(frame.ir))
        cache[key] = frame
        if len(cache) > capacity:
            cache.popitem(last=False)
        return frame

    classes = source.classes
    seg_classes = source.segmentation_classes if classes is not None else None
    seg_png: dict[str, bytes] = {}  # source name -> encoded label map, written after the bag
    label_entries: dict[int, dict[str, Any]] = {}
    size: tuple[int, int] | None = None
    typestore = messages.store
    plugin = StoragePlugin.MCAP if config.storage == "mcap" else StoragePlugin.SQLITE3
    writer = Writer(out, version=9, storage_plugin=plugin)
    started = time.perf_counter()
    nbytes = 0
    try:
        writer.open()
        conns = {
            "thermal": writer.add_connection(THERMAL_TOPIC, IMAGE_TYPE, typestore=typestore),
            "rgb": writer.add_connection(
                config.rgb_topic, COMPRESSED_TYPE if config.rgb_compressed else IMAGE_TYPE,
                typestore=typestore),
        }
        for f in frames:
            if f.dropped:
                continue
            src = scene(f.scene_index)
            if f.camera == "thermal":
                encoding = "mono16" if src.ir.dtype == np.uint16 else "mono8"
                data = messages.raw(src.ir, encoding, f.stamp_ns, THERMAL_FRAME)
            else:
                size = (int(src.vis.shape[1]), int(src.vis.shape[0]))
                if config.rgb_compressed:
                    data = messages.jpeg(src.vis, config.jpeg_quality, f.stamp_ns, RGB_FRAME)
                else:
                    data = messages.raw(src.vis, config.rgb_encoding, f.stamp_ns, RGB_FRAME)
                if src.boxes is not None and classes is not None:
                    label_entries[f.stamp_ns] = {
                        "source": src.name, "scene_index": f.scene_index,
                        "boxes": _box_entries(src.boxes, classes)}
                    if src.seg is not None and seg_classes is not None:
                        if src.name not in seg_png:
                            ok, png = cv2.imencode(".png", src.seg)
                            if not ok:
                                raise BagBuildError(f"cannot encode the label map of {src.name}")
                            seg_png[src.name] = png.tobytes()
                        label_entries[f.stamp_ns]["seg"] = f"{SEG_DIR}/{src.name}.png"
            nbytes += len(data)
            writer.write(conns[f.camera], f.receive_ns, data)
        summary = {
            "seed": config.seed,
            "source": source.kind,
            "source_frames": len(source),
            "timing": asdict(config),
            "counts": {cam: asdict(c) for cam, c in counts.items()},
            "topics": {"thermal": THERMAL_TOPIC, "rgb": config.rgb_topic},
            "pairing_thermal_offset_ns": -round(config.thermal_offset_ms * _MS),
        }
        writer.set_custom_data(CUSTOM_DATA_KEY, json.dumps(summary, sort_keys=True))
        writer.close()
    except BaseException:
        writer.abort()
        shutil.rmtree(out, ignore_errors=True)
        raise
    seconds = time.perf_counter() - started

    labels_file = None
    if classes is not None and size is not None:
        labels_file = out / LABELS_FILE
        labels_file.write_text(_labels_json(config, classes, size, label_entries, frames,
                                            seg_classes))
        if seg_png:
            (out / SEG_DIR).mkdir()
            for name, png in seg_png.items():
                (out / SEG_DIR / f"{name}.png").write_bytes(png)
    storage_file = next(p for p in out.iterdir() if p.suffix in (".mcap", ".db3"))
    return BuildResult(out, storage_file, labels_file, counts, frames,
                       {"thermal": THERMAL_TOPIC, "rgb": config.rgb_topic}, nbytes, seconds,
                       summary)


def build_from_pairs(folder: str | Path, out: str | Path, config: TimingConfig | None = None,
                     *, labels: bool = False, size: tuple[int, int] | None = None,
                     limit: int | None = None, overwrite: bool = False) -> BuildResult:
    """A bag from a folder of aligned pairs (``ir/`` + ``vi/``, optional YOLO labels)."""
    return build_bag(PairFolderSource(Path(folder), labels, size, limit), out,
                     config or TimingConfig(), overwrite=overwrite)


def build_from_scenes(count: int, out: str | Path, config: TimingConfig | None = None, *,
                      size: tuple[int, int] = (640, 480), overwrite: bool = False,
                      bicycles: bool = False) -> BuildResult:
    """A bag from ``count`` procedural scenes (seeded by ``config.seed``), always labelled;
    ``bicycles`` adds cyclists (class "bicycle")."""
    config = config or TimingConfig()
    return build_bag(SceneSource(count, config.seed, size, config.ir16, bicycles), out, config,
                     overwrite=overwrite)


# --------------------------------------------------------------------------- command line
def parse_size(text: str) -> tuple[int, int]:
    """``WxH`` -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return width, height


def _delay(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"delay must look like 1,5 (ms), got {text!r}") from None
    return lo, hi


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit status 2 with a message on bad arguments or source data."""
    parser = argparse.ArgumentParser(
        prog=paths.program_name("tdfusion_ros.bag_builder"),
        description="Write a rosbag2 bag of a thermal and an RGB camera with realistic timing.")
    parser.add_argument("--out", required=True, type=Path, metavar="BAG",
                        help="bag folder to create")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", type=Path, metavar="DIR",
                     help="folder with ir/ and vi/ (and labels/)")
    src.add_argument("--scenes", type=int, metavar="N", help="N procedural scenes")
    parser.add_argument("--bicycles", action="store_true",
                        help="with --scenes: add cyclists (label class 'bicycle'; the rider "
                             "is a person)")
    parser.add_argument("--labels", action="store_true",
                        help="with --pairs: write YOLO labels/ + classes.txt (and label maps "
                             "seg/ + seg_classes.txt, when there) to the sidecar")
    parser.add_argument("--limit", type=int, metavar="N",
                        help="with --pairs: only the first N pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--thermal-rate", type=float, default=30.0, help="Hz (e.g. 9 or 30)")
    parser.add_argument("--rgb-rate", type=float, default=30.0, help="Hz")
    parser.add_argument("--scene-rate", type=float, help="Hz (default: the slower camera)")
    parser.add_argument("--jitter-ms", type=float, default=2.0,
                        help="header stamp jitter, uniform +-J ms")
    parser.add_argument("--thermal-offset-ms", type=float, default=0.0,
                        help="thermal stamps late by O ms (pair with thermal_offset = -O)")
    parser.add_argument("--rgb-phase-ms", type=float, default=0.0,
                        help="RGB exposure phase against the thermal camera")
    parser.add_argument("--receive-delay-ms", type=_delay, default=(1.0, 5.0), metavar="LO,HI",
                        help="bag timestamp = stamp + uniform delay (default 1,5)")
    parser.add_argument("--drop-prob", type=float, default=0.0,
                        help="chance that each frame is dropped")
    parser.add_argument("--ir16", action="store_true", help="thermal as mono16 counts")
    parser.add_argument("--rgb-compressed", action="store_true", help="RGB as JPEG")
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--rgb-encoding", choices=("rgb8", "bgr8"), default="rgb8")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    parser.add_argument("--size", type=parse_size, metavar="WxH",
                        help="resize to WxH (scenes: default 640x480)")
    parser.add_argument("--loop", type=int, default=1, metavar="K",
                        help="repeat the frames K times")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bag")
    args = parser.parse_args(argv)
    if args.labels and args.pairs is None:
        parser.error("--labels goes with --pairs (scenes always carry labels)")
    if args.bicycles and args.scenes is None:
        parser.error("--bicycles goes with --scenes")
    config = TimingConfig(
        thermal_rate_hz=args.thermal_rate, rgb_rate_hz=args.rgb_rate,
        scene_rate_hz=args.scene_rate, jitter_ms=args.jitter_ms,
        thermal_offset_ms=args.thermal_offset_ms, drop_prob=args.drop_prob,
        receive_delay_ms=args.receive_delay_ms, rgb_phase_ms=args.rgb_phase_ms, ir16=args.ir16,
        rgb_compressed=args.rgb_compressed, rgb_encoding=args.rgb_encoding,
        jpeg_quality=args.jpeg_quality, storage=args.storage, loop=args.loop, seed=args.seed)
    try:
        if args.pairs is not None:
            result = build_from_pairs(args.pairs, args.out, config, labels=args.labels,
                                      size=args.size, limit=args.limit, overwrite=args.overwrite)
        else:
            result = build_from_scenes(args.scenes, args.out, config,
                                       size=args.size or (640, 480), overwrite=args.overwrite,
                                       bicycles=args.bicycles)
    except BagBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    c = result.counts
    mb = result.bytes_written / 1e6
    print(f"wrote {result.path} ({config.storage}): {c['thermal'].written} thermal on "
          f"{result.topics['thermal']}, {c['rgb'].written} RGB on {result.topics['rgb']} "
          f"(dropped {c['thermal'].dropped} + {c['rgb'].dropped}); {mb:.1f} MB in "
          f"{result.seconds:.2f} s ({result.messages / max(result.seconds, 1e-9):.0f} msg/s)")
    if result.labels_file is not None:
        maps = result.path / SEG_DIR
        n_maps = sum(1 for _ in maps.glob("*.png")) if maps.is_dir() else 0
        print(f"labels: {result.labels_file}"
              + (f" (+ {n_maps} segmentation label maps in {maps})" if n_maps else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
