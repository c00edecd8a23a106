"""sensor_msgs/Image and CompressedImage <-> numpy, without cv_bridge (not installable here).

The encodings and conversions follow cv_bridge's table (ROS 2 ``cv_bridge.cpp``): 8- and
16-bit grey, RGB/BGR with or without alpha, YUV 4:2:2 (``yuv422`` is UYVY, ``yuv422_yuy2``
is YUYV) and 8-bit Bayer (ROS ``bayer_rggb8`` is OpenCV ``BayerBG``, and so on). As in
cv_bridge, ``step`` may pad rows, ``is_bigendian`` is honoured for 16-bit data, and 16 -> 8
bit scales by 255/65535. Generic ``8UC3`` is taken as BGR, OpenCV's order.

Readers only need the message fields, so they also accept the message classes of ``rosbags``
(offline replay). Anything malformed raises ``ImageConversionError`` with the reason; no other
exception type escapes, so the node can drop the message and count it.
"""

from __future__ import annotations

import array
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

NATIVE_BIG_ENDIAN = sys.byteorder == "big"


class ImageConversionError(ValueError):
    """A message that cannot be turned into pixels (or pixels into a message)."""


@dataclass(frozen=True)
class Encoding:
    """How one ROS encoding is laid out and converted (OpenCV codes; None: no conversion)."""

    depth: type  # np.uint8 or np.uint16
    channels: int
    to_bgr: int | None
    to_grey: int | None


_G2BGR = cv2.COLOR_GRAY2BGR
ENCODINGS: dict[str, Encoding] = {
    "mono8": Encoding(np.uint8, 1, _G2BGR, None),
    "8UC1": Encoding(np.uint8, 1, _G2BGR, None),
    "mono16": Encoding(np.uint16, 1, _G2BGR, None),
    "16UC1": Encoding(np.uint16, 1, _G2BGR, None),
    "bgr8": Encoding(np.uint8, 3, None, cv2.COLOR_BGR2GRAY),
    "8UC3": Encoding(np.uint8, 3, None, cv2.COLOR_BGR2GRAY),
    "rgb8": Encoding(np.uint8, 3, cv2.COLOR_RGB2BGR, cv2.COLOR_RGB2GRAY),
    "bgra8": Encoding(np.uint8, 4, cv2.COLOR_BGRA2BGR, cv2.COLOR_BGRA2GRAY),
    "rgba8": Encoding(np.uint8, 4, cv2.COLOR_RGBA2BGR, cv2.COLOR_RGBA2GRAY),
    "yuv422": Encoding(np.uint8, 2, cv2.COLOR_YUV2BGR_UYVY, cv2.COLOR_YUV2GRAY_UYVY),
    "uyvy": Encoding(np.uint8, 2, cv2.COLOR_YUV2BGR_UYVY, cv2.COLOR_YUV2GRAY_UYVY),
    "yuv422_yuy2": Encoding(np.uint8, 2, cv2.COLOR_YUV2BGR_YUY2, cv2.COLOR_YUV2GRAY_YUY2),
    "yuyv": Encoding(np.uint8, 2, cv2.COLOR_YUV2BGR_YUY2, cv2.COLOR_YUV2GRAY_YUY2),
    "bayer_rggb8": Encoding(np.uint8, 1, cv2.COLOR_BayerBG2BGR, cv2.COLOR_BayerBG2GRAY),
    "bayer_bggr8": Encoding(np.uint8, 1, cv2.COLOR_BayerRG2BGR, cv2.COLOR_BayerRG2GRAY),
    "bayer_gbrg8": Encoding(np.uint8, 1, cv2.COLOR_BayerGR2BGR, cv2.COLOR_BayerGR2GRAY),
    "bayer_grbg8": Encoding(np.uint8, 1, cv2.COLOR_BayerGB2BGR, cv2.COLOR_BayerGB2GRAY),
}
_YUV = ("yuv422", "uyvy", "yuv422_yuy2", "yuyv")
# Encodings whose single channel is already what a thermal consumer wants.
_GREY = ("mono8", "8UC1", "mono16", "16UC1")


# --------------------------------------------------------------------------- stamps
# Why a camera message was dropped before pairing: the counter names of the node's
# /diagnostics (drops.<stream>.<cause>) and of replay_eval's summary, shared so both count
# the same message under the same name.
UNKNOWN_ENCODING = "unknown_encoding"
ZERO_SIZE = "zero_size"
TRUNCATED_DATA = "truncated_data"
BAD_STEP = "bad_step"
DECODE_FAILED = "decode_failed"
CONVERSION_ERROR = "conversion_error"


def classify_conversion_error(msg: Any) -> str:
    """Drop cause of a message the readers here refused, from its fields (not the error
    text). Works on rclpy and rosbags messages alike."""
    if is_compressed(msg):
        return DECODE_FAILED if len(msg.data) else TRUNCATED_DATA
    if msg.encoding not in ENCODINGS:
        return UNKNOWN_ENCODING
    if msg.width == 0 or msg.height == 0:
        return ZERO_SIZE
    if len(msg.data) != msg.step * msg.height:
        return TRUNCATED_DATA
    if msg.step < msg.width:
        return BAD_STEP
    return CONVERSION_ERROR


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (rclpy or rosbags) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def set_header(msg: Any, stamp_ns: int, frame_id: str) -> None:
    """Fill a message header from integer nanoseconds (negative stamps are refused)."""
    if stamp_ns < 0:
        raise ImageConversionError(f"stamp {stamp_ns} ns is negative")
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    msg.header.frame_id = frame_id


# --------------------------------------------------------------------------- reading
def _buffer(data: Any) -> np.ndarray:
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (TypeError, ValueError, OverflowError) as exc:
            raise ImageConversionError(f"image data is not a byte sequence: {exc}") from None


def _lookup(encoding: str) -> Encoding:
    try:
        return ENCODINGS[encoding]
    except (KeyError, TypeError):
        known = ", ".join(ENCODINGS)
        raise ImageConversionError(
            f"unsupported image encoding {encoding!r}; supported: {known}"
        ) from None


def image_to_array(msg: Any) -> np.ndarray:
    """The pixels of a sensor_msgs/Image as stored (cv_bridge's ``passthrough``).

    Shape (H, W) or (H, W, C), native byte order. Without row padding or byte swapping
    the result is a read-only view of ``msg.data`` (no copy).
    """
    enc = _lookup(msg.encoding)
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ImageConversionError(f"image has zero size ({width}x{height}, WxH)")
    itemsize = np.dtype(enc.depth).itemsize
    row_bytes = width * enc.channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} < width*bytes_per_pixel = {width}*{enc.channels * itemsize} "
            f"for {msg.encoding}"
        )
    data = _buffer(msg.data)
    if data.size != step * height:
        raise ImageConversionError(
            f"data length {data.size} != step*height = {step}*{height} = {step * height}"
        )
    if msg.encoding in _YUV and width % 2:
        raise ImageConversionError(f"{msg.encoding} needs an even width, got {width}")
    big = bool(msg.is_bigendian)
    dtype = np.dtype(enc.depth).newbyteorder(">" if big else "<")
    if enc.channels == 1:
        shape, strides = (height, width), (step, itemsize)
    else:
        shape = (height, width, enc.channels)
        strides = (step, enc.channels * itemsize, itemsize)
    pixels = np.ndarray(shape, dtype=dtype, buffer=data, strides=strides)
    if itemsize > 1 and big != NATIVE_BIG_ENDIAN:
        pixels = pixels.astype(dtype.newbyteorder("="))
    elif not pixels.flags.c_contiguous:
        pixels = np.ascontiguousarray(pixels)
    else:
        pixels = pixels.view(pixels.dtype.newbyteorder("="))
        pixels.flags.writeable = False
    return pixels


def _cvt(pixels: np.ndarray, code: int, encoding: str) -> np.ndarray:
    try:
        return cv2.cvtColor(pixels, code)
    except cv2.error as exc:
        shape = "x".join(map(str, pixels.shape))
        raise ImageConversionError(
            f"OpenCV cannot convert {encoding} {shape}: {str(exc).strip().splitlines()[-1]}"
        ) from None


def image_to_bgr8(msg: Any) -> np.ndarray:
    """A colour camera image (Image or CompressedImage) as an H x W x 3 uint8 BGR array."""
    if is_compressed(msg):
        return _decoded_to_bgr8(compressed_to_array(msg))
    enc = _lookup(msg.encoding)
    pixels = image_to_array(msg)
    if enc.depth is np.uint16:
        pixels = cv2.convertScaleAbs(pixels, alpha=255.0 / 65535.0)
    if enc.to_bgr is None:
        return pixels
    return _cvt(pixels, enc.to_bgr, msg.encoding)


def image_to_mono(msg: Any) -> np.ndarray:
    """A thermal image (Image or CompressedImage) as H x W uint8 or uint16 (depth kept)."""
    if is_compressed(msg):
        decoded = compressed_to_array(msg)
        if decoded.ndim == 2:
            return decoded
        code = cv2.COLOR_BGRA2GRAY if decoded.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        return _cvt(decoded, code, msg.format)
    enc = _lookup(msg.encoding)
    pixels = image_to_array(msg)
    if msg.encoding in _GREY:
        return pixels
    return _cvt(pixels, enc.to_grey, msg.encoding)


# --------------------------------------------------------------------------- compressed
def is_compressed(msg: Any) -> bool:
    return hasattr(msg, "format") and not hasattr(msg, "encoding")


# compressed_depth_image_transport prefixes its PNG with a 12-byte ConfigHeader.
_DEPTH_HEADER_BYTES = 12


def compressed_to_array(msg: Any) -> np.ndarray:
    """Decode a CompressedImage (JPEG, PNG, ...): BGR / BGRA or grey, 8 or 16 bit."""
    data = _buffer(msg.data)
    fmt = str(msg.format)
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        data = data[_DEPTH_HEADER_BYTES:]
    if data.size == 0:
        raise ImageConversionError(f"compressed image ({fmt!r}) has no data")
    try:
        decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        decoded = None
    if decoded is None or decoded.size == 0:
        raise ImageConversionError(
            f"compressed image ({fmt!r}, {data.size} bytes) could not be decoded"
        )
    if decoded.dtype not in (np.uint8, np.uint16):
        raise ImageConversionError(f"compressed image decodes to {decoded.dtype}, not 8/16 bit")
    return decoded


def _decoded_to_bgr8(decoded: np.ndarray) -> np.ndarray:
    if decoded.dtype == np.uint16:
        decoded = cv2.convertScaleAbs(decoded, alpha=255.0 / 65535.0)
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2BGR)
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2BGR)
    return decoded


# --------------------------------------------------------------------------- building
def _byte_array(pixels: np.ndarray) -> array.array:
    # One copy; assigning bytes or a list would make older generated setters check each item.
    out = array.array("B")
    out.frombytes(np.ascontiguousarray(pixels).data.cast("B"))
    return out


def array_to_image(
    pixels: np.ndarray, encoding: str = "bgr8", stamp_ns: int = 0, frame_id: str = ""
) -> Any:
    """Build a sensor_msgs/Image; a BGR array is swapped when ``encoding`` is rgb8.

    Accepted: bgr8/rgb8/8UC3 from H x W x 3 uint8 BGR, bgra8/rgba8 from H x W x 4 BGRA,
    mono8/8UC1 from H x W uint8, mono16/16UC1 from H x W uint16.
    """
    from sensor_msgs.msg import Image

    enc = _lookup(encoding)
    if encoding in _YUV or encoding.startswith("bayer_"):
        raise ImageConversionError(f"building {encoding} images is not supported")
    expected = (pixels.ndim == 2) if enc.channels == 1 else (
        pixels.ndim == 3 and pixels.shape[2] == enc.channels
    )
    if not expected or pixels.dtype != enc.depth:
        raise ImageConversionError(
            f"{encoding} needs {enc.channels} channel(s) of {np.dtype(enc.depth).name}, got "
            f"shape {pixels.shape} {pixels.dtype}"
        )
    if min(pixels.shape[:2]) == 0:
        raise ImageConversionError(f"cannot build an image of zero size {pixels.shape}")
    if encoding == "rgb8":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    elif encoding == "rgba8":
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGRA2RGBA)
    msg = Image()
    set_header(msg, stamp_ns, frame_id)
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(NATIVE_BIG_ENDIAN and pixels.dtype.itemsize > 1)
    msg.step = int(pixels.shape[1] * enc.channels * pixels.dtype.itemsize)
    msg.data = _byte_array(pixels)
    return msg


def array_to_compressed(
    pixels: np.ndarray,
    fmt: str = "jpeg",
    quality: int = 90,
    stamp_ns: int = 0,
    frame_id: str = "",
) -> Any:
    """Build a sensor_msgs/CompressedImage (``jpeg`` or ``png``) from BGR or grey pixels.

    ``format`` follows compressed_image_transport, e.g. ``"bgr8; jpeg compressed bgr8"``.
    """
    from sensor_msgs.msg import CompressedImage

    if fmt not in ("jpeg", "png"):
        raise ImageConversionError(f"compressed format must be jpeg or png, got {fmt!r}")
    if pixels.size == 0 or pixels.ndim not in (2, 3):
        raise ImageConversionError(f"cannot compress an array of shape {pixels.shape}")
    grey = pixels.ndim == 2
    if pixels.dtype == np.uint16 and not (grey and fmt == "png"):
        raise ImageConversionError("16-bit images can only be compressed as grey png")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageConversionError(f"cannot compress {pixels.dtype} pixels")
    encoding = ("mono16" if pixels.dtype == np.uint16 else "mono8") if grey else "bgr8"
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if fmt == "jpeg" else []
    ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", pixels, params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode {pixels.shape} as {fmt}")
    msg = CompressedImage()
    set_header(msg, stamp_ns, frame_id)
    msg.format = f"{encoding}; {fmt} compressed {encoding}"
    msg.data = _byte_array(encoded)
    return msg


def detections_to_msg(detections: Any, names: list[str], stamp_ns: int, frame_id: str) -> Any:
    """vision_msgs/Detection2DArray of ``postprocess.Detections``: bbox centre/size in pixels,
    ``results[0].hypothesis`` = class name (or the id when unnamed) and score."""
    from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

    array = Detection2DArray()
    set_header(array, stamp_ns, frame_id)
    for (x1, y1, x2, y2), score, cls in zip(detections.xyxy.tolist(),
                                             detections.scores.tolist(),
                                             detections.class_ids.tolist()):
        det = Detection2D()
        det.header = array.header
        hypothesis = ObjectHypothesisWithPose()
        hypothesis.hypothesis.class_id = names[cls] if cls < len(names) else str(cls)
        hypothesis.hypothesis.score = float(score)
        det.results.append(hypothesis)
        det.bbox.center.position.x = (x1 + x2) / 2.0
        det.bbox.center.position.y = (y1 + y2) / 2.0
        det.bbox.center.theta = 0.0
        det.bbox.size_x = x2 - x1
        det.bbox.size_y = y2 - y1
        array.detections.append(det)
    return array
