"""Replay's constants, exit codes, errors, options and result, and the small helpers the offline
and live runs share.
"""

from __future__ import annotations

import errno
import math
import os
import platform
import queue
import random
import resource
import shutil
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tdfusion_ros.ros import node_params

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_DAMAGED = 3
EXIT_LIVE_DIFFERS = 4

REPO = Path(__file__).resolve().parents[3]  # the folder that holds tdfusion_ros/
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


class OutputWriteError(ReplayRunError):
    """An output could not be written (full disk, read-only folder): the path and the cause."""

    def __init__(self, path: str | Path, reason: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(f"cannot write {path}: {reason}")
        self.path = Path(path)
        self.reason = reason
        self.exit_code = exit_code  # EXIT_BAD_INPUT when found before the replay starts


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_nearly_full(path: str | Path) -> bool:
    """Under 1 MiB free where ``path`` is (or would be)."""
    try:
        return shutil.disk_usage(_existing(Path(path).parent)).free < 1 << 20
    except OSError:
        return False


def why_not_written(path: str | Path, err: BaseException | None = None) -> str:
    """What stopped a write, in words: the error's errno, else what the file system says."""
    code = getattr(err, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "no space left on the device (the disk is full): free space, or choose another --out"
    if code == errno.EROFS:
        return "the file system is read-only: choose another --out"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied: choose another --out"
    folder = _existing(Path(path).parent)
    if disk_nearly_full(path):
        return ("no space left on the device (the disk is full): free space, or choose "
                "another --out")
    if not os.access(folder, os.W_OK):
        return "the folder is not writable (read-only or no permission): choose another --out"
    if err is not None:
        return getattr(err, "strerror", None) or str(err) or type(err).__name__
    return "the write failed"


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """OSError inside becomes an OutputWriteError naming ``path`` and the cause."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as err:
        target = err.filename or path  # the file the system names, else the one being written
        raise OutputWriteError(target, why_not_written(target, err)) from err


def imwrite(path: Path, image: np.ndarray, params: Sequence[int] = ()) -> None:
    """cv2.imwrite that raises (OpenCV only returns False on a full disk or a read-only
    folder)."""
    import cv2

    with writing(path):
        ok = cv2.imwrite(str(path), image, list(params))
    if not ok:
        Path(path).unlink(missing_ok=True)  # whatever part of it reached the disk
        raise OutputWriteError(path, why_not_written(path))


def write_text_whole(path: str | Path, text: str) -> Path:
    """``path`` holds ``text`` in full or is left as it was: written to ``PATH.tmp``, flushed to
    disk, renamed; on failure the tmp file is removed and OutputWriteError names ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with writing(path):
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
    seg_class_map: Path | None = None  # YAML: label class -> segmenter class (None: by name)
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
