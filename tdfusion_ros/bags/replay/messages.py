"""The fused output messages: the typestore that knows vision_msgs, building the node's messages,
decoding them back.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tdfusion_ros.bags.replay.common import _SEC, DETECTIONS_TYPE, IMAGE_TYPE, REPO, ReplayError


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
