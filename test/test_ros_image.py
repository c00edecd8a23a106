"""Image message conversion against cv_bridge's encoding table, on real sensor_msgs classes.

Expected pixels are built by hand from cv_bridge's documented conversions (channel swaps,
byte order, row padding, BT.601 YUV, Bayer pattern naming), not by calling the code under test.
"""

from __future__ import annotations

import array

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image

from tdfusion_ros.ros.ros_image import (
    ENCODINGS,
    ImageConversionError,
    array_to_compressed,
    array_to_image,
    image_to_array,
    image_to_bgr8,
    image_to_mono,
    stamp_to_ns,
)


def make_image(encoding: str, width: int, height: int, step: int, data: bytes,
               big_endian: bool = False) -> Image:
    msg = Image()
    msg.encoding, msg.width, msg.height, msg.step = encoding, width, height, step
    msg.is_bigendian = int(big_endian)
    msg.data = array.array("B", data)
    return msg


def rows(*row_bytes: list[int], pad: int = 0) -> bytes:
    return b"".join(bytes(r) + b"\xee" * pad for r in row_bytes)


# ---------------------------------------------------------------- per-encoding pixel values
def test_mono8_and_8uc1_with_row_padding() -> None:
    for enc in ("mono8", "8UC1"):
        msg = make_image(enc, 3, 2, 5, rows([1, 2, 3], [4, 5, 6], pad=2))
        np.testing.assert_array_equal(image_to_mono(msg), [[1, 2, 3], [4, 5, 6]])
        np.testing.assert_array_equal(image_to_bgr8(msg)[1, 2], [6, 6, 6])


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_16_bit_little_and_big_endian_with_odd_padding(encoding: str) -> None:
    values = np.array([[0x1234, 0xFFFF, 0], [1, 0x8001, 0x00FF]], np.uint16)
    little = [[v & 0xFF, v >> 8] for v in values.flat]
    big = [[v >> 8, v & 0xFF] for v in values.flat]
    step = 3 * 2 + 1  # an odd step: rows start unaligned
    le = rows(sum(little[:3], []), sum(little[3:], []), pad=1)
    be = rows(sum(big[:3], []), sum(big[3:], []), pad=1)
    out_le = image_to_mono(make_image(encoding, 3, 2, step, le, big_endian=False))
    out_be = image_to_mono(make_image(encoding, 3, 2, step, be, big_endian=True))
    assert out_le.dtype == np.uint16 and out_be.dtype == np.uint16
    np.testing.assert_array_equal(out_le, values)
    np.testing.assert_array_equal(out_be, values)


def test_16_bit_to_bgr8_scales_by_255_over_65535_like_cv_bridge() -> None:
    values = np.array([[0, 257, 257 * 200, 65535]], np.uint16)
    msg = make_image("mono16", 4, 1, 8, values.astype("<u2").tobytes())
    np.testing.assert_array_equal(image_to_bgr8(msg)[0, :, 1], [0, 1, 200, 255])


def test_colour_orders_become_bgr() -> None:
    r, g, b, a = 10, 20, 30, 7
    cases = {
        "rgb8": [r, g, b], "bgr8": [b, g, r], "8UC3": [b, g, r],
        "rgba8": [r, g, b, a], "bgra8": [b, g, r, a],
    }
    for enc, px in cases.items():
        n = len(px)
        msg = make_image(enc, 2, 1, 2 * n + 3, rows(px + [0] * n, pad=3))
        out = image_to_bgr8(msg)
        assert out.shape == (1, 2, 3) and out.dtype == np.uint8, enc
        np.testing.assert_array_equal(out[0, 0], [b, g, r], err_msg=enc)
        np.testing.assert_array_equal(out[0, 1], [0, 0, 0], err_msg=enc)
        # a colour image on the thermal input is reduced to luma (BT.601 weights)
        assert image_to_mono(msg)[0, 0] == round(0.299 * r + 0.587 * g + 0.114 * b), enc


def bt601_limited(y: int, u: int, v: int) -> np.ndarray:
    """BGR from limited-range BT.601 YCbCr, the conversion OpenCV's 4:2:2 codes implement."""
    c, d, e = 1.164 * (y - 16), u - 128, v - 128
    bgr = [c + 2.018 * d, c - 0.391 * d - 0.813 * e, c + 1.596 * e]
    return np.clip(np.round(bgr), 0, 255)


def test_yuv422_is_uyvy_and_yuy2_is_yuyv() -> None:
    y0, y1, u, v = 16, 235, 128, 128  # black then white, no chroma
    uyvy = make_image("yuv422", 2, 1, 4, bytes([u, y0, v, y1]))
    yuyv = make_image("yuv422_yuy2", 2, 1, 4, bytes([y0, u, y1, v]))
    for msg in (uyvy, yuyv):
        np.testing.assert_array_equal(image_to_bgr8(msg)[0], [[0, 0, 0], [255, 255, 255]])
        np.testing.assert_array_equal(image_to_mono(msg)[0], [y0, y1])
    y, u, v = 120, 90, 200  # a reddish colour
    for enc, data in (("yuv422", [u, y, v, y]), ("yuv422_yuy2", [y, u, y, v])):
        out = image_to_bgr8(make_image(enc, 2, 1, 4, bytes(data)))
        expected = bt601_limited(y, u, v)
        assert np.abs(out[0, 0].astype(int) - expected).max() <= 2, (enc, out[0, 0], expected)
        assert out[0, 0, 2] > out[0, 0, 0]  # red above blue


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_patterns_demosaic_a_flat_colour(pattern: str) -> None:
    value = {"r": 200, "g": 100, "b": 10}
    tile = np.array([[value[pattern[0]], value[pattern[1]]],
                     [value[pattern[2]], value[pattern[3]]]], np.uint8)
    mosaic = np.tile(tile, (4, 4))  # 8x8, pattern starts at the top-left pixel
    msg = make_image(f"bayer_{pattern}8", 8, 8, 8, mosaic.tobytes())
    np.testing.assert_array_equal(image_to_bgr8(msg)[3:5, 3:5].reshape(-1, 3), [[10, 100, 200]] * 4)
    assert abs(int(image_to_mono(msg)[4, 4]) - round(0.299 * 200 + 0.587 * 100 + 0.114 * 10)) <= 1


def test_unpadded_native_data_is_a_read_only_view() -> None:
    msg = make_image("bgr8", 4, 2, 12, bytes(range(24)))
    out = image_to_array(msg)
    assert not out.flags.writeable
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "fields, match",
    [
        (("jpeg2000", 2, 2, 2, 4), "unsupported image encoding 'jpeg2000'"),
        (("mono8", 0, 2, 0, 0), "zero size"),
        (("mono8", 2, 0, 2, 0), "zero size"),
        (("rgb8", 4, 2, 11, 22), r"step 11 < width\*bytes_per_pixel = 4\*3"),
        (("mono16", 4, 2, 8, 15), r"data length 15 != step\*height = 8\*2 = 16"),
        (("mono8", 4, 2, 4, 9), "data length 9 != step"),
        (("yuv422", 3, 1, 6, 6), "even width"),
    ],
)
def test_bad_messages_raise_image_conversion_error(fields: tuple, match: str) -> None:
    enc, width, height, step, size = fields
    msg = make_image(enc, width, height, step, bytes(size))
    with pytest.raises(ImageConversionError, match=match):
        image_to_bgr8(msg)
    with pytest.raises(ImageConversionError):
        image_to_mono(msg)


def test_random_garbage_never_raises_another_exception_type() -> None:
    rng = np.random.default_rng(0)
    encodings = list(ENCODINGS) + ["", "32FC1", "bgr16", "MONO8"]
    for _ in range(400):
        width, height = (int(v) for v in rng.integers(0, 7, 2))
        enc = encodings[rng.integers(len(encodings))]
        step = int(rng.integers(0, 30))
        size = step * height if rng.random() < 0.6 else int(rng.integers(0, 80))
        msg = make_image(enc, width, height, step, rng.integers(0, 256, size, np.uint8).tobytes(),
                         big_endian=bool(rng.integers(2)))
        for convert in (image_to_bgr8, image_to_mono):
            try:
                out = convert(msg)
            except ImageConversionError:
                continue
            assert out.shape[:2] == (height, width)
    bad = CompressedImage()
    bad.format = "jpeg"
    for payload in (b"", b"\xff\xd8\xff\xe0garbage", bytes(range(256))):
        bad.data = array.array("B", payload)
        with pytest.raises(ImageConversionError, match="compressed image"):
            image_to_bgr8(bad)


def test_building_refuses_mismatched_arrays() -> None:
    with pytest.raises(ImageConversionError, match="bgr8 needs 3 channel"):
        array_to_image(np.zeros((4, 4), np.uint8), "bgr8")
    with pytest.raises(ImageConversionError, match="mono16 needs 1 channel"):
        array_to_image(np.zeros((4, 4), np.uint8), "mono16")
    with pytest.raises(ImageConversionError, match="zero size"):
        array_to_image(np.zeros((0, 4, 3), np.uint8), "bgr8")
    with pytest.raises(ImageConversionError, match="negative"):
        array_to_image(np.zeros((2, 2), np.uint8), "mono8", stamp_ns=-1)


# ---------------------------------------------------------------- round trips
def test_built_images_survive_rclpy_serialization() -> None:
    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (48, 64, 3), np.uint8)
    grey16 = rng.integers(0, 65536, (48, 64), np.uint16)
    stamp = 1_700_000_123_456_789_012
    cases = [(bgr, "bgr8", image_to_bgr8), (bgr, "rgb8", image_to_bgr8),
             (bgr[..., 0].copy(), "mono8", image_to_mono), (grey16, "mono16", image_to_mono)]
    for pixels, enc, read in cases:
        msg = array_to_image(pixels, enc, stamp_ns=stamp, frame_id="cam")
        back = deserialize_message(serialize_message(msg), Image)
        assert back.encoding == enc and back.header.frame_id == "cam"
        assert stamp_to_ns(back.header.stamp) == stamp
        np.testing.assert_array_equal(read(back), pixels, err_msg=enc)
    rgb_msg = array_to_image(bgr, "rgb8")
    np.testing.assert_array_equal(np.frombuffer(rgb_msg.data, np.uint8)[:3], bgr[0, 0, ::-1])


def test_hand_built_padded_big_endian_message_survives_serialization() -> None:
    values = np.array([[1, 2, 3], [40000, 50000, 65535]], np.uint16)
    data = rows(list(values[0].astype(">u2").tobytes()), list(values[1].astype(">u2").tobytes()),
                pad=4)
    msg = make_image("16UC1", 3, 2, 10, data, big_endian=True)
    back = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(image_to_mono(back), values)


def test_compressed_round_trips() -> None:
    rng = np.random.default_rng(2)
    smooth = cv2_blur(rng.integers(0, 256, (48, 64, 3), np.uint8))
    grey16 = rng.integers(0, 65536, (48, 64), np.uint16)
    png = deserialize_message(serialize_message(array_to_compressed(smooth, "png")),
                              CompressedImage)
    assert png.format == "bgr8; png compressed bgr8"
    np.testing.assert_array_equal(image_to_bgr8(png), smooth)
    jpeg = array_to_compressed(smooth, "jpeg", quality=95, stamp_ns=5, frame_id="rgb")
    assert jpeg.format == "bgr8; jpeg compressed bgr8" and stamp_to_ns(jpeg.header.stamp) == 5
    assert np.abs(image_to_bgr8(jpeg).astype(int) - smooth).mean() < 3
    png16 = array_to_compressed(grey16, "png")
    assert png16.format == "mono16; png compressed mono16"
    np.testing.assert_array_equal(image_to_mono(png16), grey16)
    # compressed_depth_image_transport: a 12-byte config header before the PNG
    depth = CompressedImage()
    depth.format = "16UC1; compressedDepth png"
    depth.data = array.array("B", bytes(12) + bytes(png16.data))
    np.testing.assert_array_equal(image_to_mono(depth), grey16)
    # a colour JPEG on the thermal input is reduced to grey
    assert image_to_mono(jpeg).shape == (48, 64)
    with pytest.raises(ImageConversionError, match="16-bit"):
        array_to_compressed(grey16, "jpeg")


def cv2_blur(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(image, (7, 7), 2)


def test_rosbags_messages_are_read_like_rclpy_ones() -> None:
    """The offline replay reads rosbags' message classes: same fields, numpy data."""
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    pixels = np.random.default_rng(3).integers(0, 256, (6, 8, 3), np.uint8)
    raw = bytes(serialize_message(array_to_image(pixels, "rgb8", stamp_ns=42)))
    msg = store.deserialize_cdr(raw, "sensor_msgs/msg/Image")
    assert isinstance(msg.data, np.ndarray)
    np.testing.assert_array_equal(image_to_bgr8(msg), pixels)
    assert stamp_to_ns(msg.header.stamp) == 42


def test_agrees_with_rosbags_image_where_installed() -> None:
    """Cross-check with the maintained ``rosbags-image`` converter (skips if absent).

    Unpadded rows only: rosbags-image 0.10.4 ignores ``step`` (reads padded rows wrongly).
    16-bit sources are compared to within 1 (see below).
    """
    rosbags_image = pytest.importorskip("rosbags.image")
    rng = np.random.default_rng(4)
    width, height = 8, 6
    for enc, spec in ENCODINGS.items():
        if enc in ("8UC1", "8UC3", "16UC1"):
            continue  # generic types: rosbags-image has no colour meaning for them
        itemsize = np.dtype(spec.depth).itemsize
        step = width * spec.channels * itemsize
        msg = make_image(enc, width, height, step,
                         rng.integers(0, 256, step * height, np.uint8).tobytes())
        theirs = rosbags_image.message_to_cvimage(msg, "bgr8").astype(int)
        # 16 -> 8 bit: cv_bridge rounds x*255/65535, rosbags-image truncates: 1 apart at most
        tolerance = 1 if itemsize == 2 else 0
        assert np.abs(image_to_bgr8(msg).astype(int) - theirs).max() <= tolerance, enc
