"""Colour handling around a network that fuses luminance only.

As in the paper, the networks see the Y channel (OpenCV YCrCb) of each image; the colour fused
image takes the fused Y and the chroma of the visible image. Everything works in float32 in
[0, 1], where OpenCV's neutral chroma is 0.5. Y is computed from the float image, without
rounding to 8 bits first (the official reference outputs were made that way).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

NEUTRAL_CHROMA = 0.5


def is_colour(image: np.ndarray) -> bool:
    """Three channels that are not all equal (a grey image saved as RGB counts as grey)."""
    if image.ndim != 3:
        return False
    return not (np.array_equal(image[..., 0], image[..., 1])
                and np.array_equal(image[..., 1], image[..., 2]))


def split_luma(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(Y, CrCb) of a float [0, 1] grey or BGR image; CrCb is None for grey images."""
    image = image.astype(np.float32, copy=False)
    if not is_colour(image):
        return (image[..., 0] if image.ndim == 3 else image), None
    ycrcb = cv2.cvtColor(image, cv2.COLOR_BGR2YCrCb)
    return ycrcb[..., 0], ycrcb[..., 1:]


def combine_chroma(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mix two CrCb planes, each pixel weighted by its distance from neutral.

    The rule of the classic fusion toolboxes: the more saturated source wins, and a grey
    source (neutral chroma) contributes nothing.
    """
    wa, wb = np.abs(a - NEUTRAL_CHROMA), np.abs(b - NEUTRAL_CHROMA)
    total = wa + wb
    mixed = (a * wa + b * wb) / np.where(total > 0, total, 1.0)
    return np.where(total > 0, mixed, NEUTRAL_CHROMA).astype(np.float32)


@dataclass(frozen=True)
class LumaPair:
    """Network inputs of one pair plus the chroma to put back on the fused Y."""

    ir_y: np.ndarray
    vis_y: np.ndarray
    chroma: np.ndarray | None


def prepare_pair(ir: np.ndarray, vis: np.ndarray) -> LumaPair:
    """Split float [0, 1] images into the fusion inputs and the chroma of the output."""
    ir_y, ir_chroma = split_luma(ir)
    vis_y, vis_chroma = split_luma(vis)
    if ir_chroma is not None and vis_chroma is not None:
        chroma = combine_chroma(ir_chroma, vis_chroma)
    else:
        chroma = vis_chroma if vis_chroma is not None else ir_chroma
    return LumaPair(np.ascontiguousarray(ir_y), np.ascontiguousarray(vis_y), chroma)


def restore_colour(fused_y: np.ndarray, chroma: np.ndarray | None) -> np.ndarray:
    """Fused float Y (H, W) -> uint8 BGR image, or uint8 grey when there is no chroma.

    Y is clipped to [0, 1] before the colour conversion (a Y outside it would shift the
    colours); the result is then rounded and saturated in one pass.
    """
    fused_y = np.asarray(fused_y, dtype=np.float32)
    if chroma is None:
        return to_uint8(fused_y)  # the saturation to [0, 255] is the clip
    ycrcb = np.empty(fused_y.shape + (3,), np.float32)
    np.clip(fused_y, 0.0, 1.0, out=ycrcb[..., 0])
    ycrcb[..., 1:] = chroma
    return to_uint8(cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2BGR, dst=ycrcb))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] -> uint8: x * 255 rounded half to even, saturated to [0, 255].

    float32 images with up to 4 channels take one OpenCV pass (same values: the product is
    formed in float32 either way); anything else takes numpy's four.
    """
    image = np.asarray(image)
    if (image.dtype == np.float32 and image.ndim in (2, 3) and image.size
            and (image.ndim == 2 or image.shape[2] <= 4)):
        return cv2.addWeighted(image, 255.0, image, 0.0, 0.0, dtype=cv2.CV_8U)
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
