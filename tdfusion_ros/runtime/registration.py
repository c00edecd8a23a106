"""Bring a thermal image onto the RGB camera's pixel grid: homography, crop, output size.

Real rigs are not pixel-aligned like the datasets. The config holds a 3x3 homography that maps
thermal pixel coordinates to RGB pixel coordinates (row-major, 9 numbers: ROS parameters are
flat arrays), an optional crop ``[x, y, w, h]`` in RGB pixels (the region both cameras see)
and an optional output size ``[w, h]``; ``[0, 0, 0, 0]`` / ``[0, 0]`` mean none. Both images
come out with the same size. The thermal image is warped once with the composed matrix
(homography, then crop, then scale), so it is interpolated only once; pixel centres follow
OpenCV's ``resize`` convention so thermal and RGB stay aligned after scaling.

Aligned data (identity homography, same sizes, no crop or scaling) takes a no-op path: the
input arrays are returned as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


class RegistrationError(ValueError):
    """A registration config or an image pair that cannot be registered as configured."""


def _numbers(value: Any, count: int, name: str) -> list[float]:
    flat = np.asarray(value, dtype=np.float64).ravel() if value is not None else np.zeros(0)
    if flat.size != count or not np.all(np.isfinite(flat)):
        raise RegistrationError(
            f"registration.{name} must be {count} finite numbers, got {value!r}"
        )
    return [float(v) for v in flat]


@dataclass(frozen=True)
class RegistrationConfig:
    """Homography (thermal -> RGB pixels, row-major), crop (x, y, w, h) and output (w, h)."""

    homography: tuple[float, ...] = IDENTITY
    crop: tuple[int, int, int, int] | None = None
    output_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        # plain Python numbers, so configs compare equal however they were built
        object.__setattr__(self, "homography", tuple(float(v) for v in self.homography))
        if self.crop is not None:
            object.__setattr__(self, "crop", tuple(int(v) for v in self.crop))
        if self.output_size is not None:
            object.__setattr__(self, "output_size", tuple(int(v) for v in self.output_size))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> RegistrationConfig:
        """From the ``registration`` section of a config (missing keys: defaults)."""
        values = dict(values or {})
        unknown = set(values) - {"homography", "crop", "output_size"}
        if unknown:
            raise RegistrationError(f"unknown registration key(s): {', '.join(sorted(unknown))}")
        try:
            h = tuple(_numbers(values.get("homography", IDENTITY), 9, "homography"))
            crop = values.get("crop")
            crop_t = None
            if crop is not None:
                c = _numbers(crop, 4, "crop")
                if any(v != int(v) for v in c):
                    raise RegistrationError(f"registration.crop must be integers, got {crop!r}")
                crop_t = None if c[2] == 0 and c[3] == 0 else tuple(int(v) for v in c)
            size = values.get("output_size")
            size_t = None
            if size is not None:
                s = _numbers(size, 2, "output_size")
                if any(v != int(v) for v in s):
                    raise RegistrationError(
                        f"registration.output_size must be integers, got {size!r}"
                    )
                size_t = None if s == [0, 0] else (int(s[0]), int(s[1]))
        except (TypeError, ValueError) as exc:
            if isinstance(exc, RegistrationError):
                raise
            raise RegistrationError(f"bad registration section: {exc}") from None
        return cls(h, crop_t, size_t).validate()

    def to_mapping(self) -> dict[str, list]:
        """ROS-parameter-friendly values (flat float list; zeros for 'none')."""
        return {
            "homography": [float(v) for v in self.homography],
            "crop": list(self.crop) if self.crop else [0, 0, 0, 0],
            "output_size": list(self.output_size) if self.output_size else [0, 0],
        }

    @property
    def matrix(self) -> np.ndarray:
        return np.array(self.homography, np.float64).reshape(3, 3)

    def validate(self) -> RegistrationConfig:
        h = self.matrix
        if abs(h[2, 2]) < 1e-12 or abs(np.linalg.det(h)) < 1e-12:
            raise RegistrationError(f"registration.homography is singular: {list(self.homography)}")
        if self.crop is not None and (min(self.crop[:2]) < 0 or min(self.crop[2:]) <= 0):
            raise RegistrationError(
                f"registration.crop {list(self.crop)} needs x, y >= 0 and w, h > 0"
            )
        if self.output_size is not None and min(self.output_size) <= 0:
            raise RegistrationError(
                f"registration.output_size {list(self.output_size)} must be positive"
            )
        return self

    @property
    def is_identity(self) -> bool:
        h = self.matrix / self.matrix[2, 2]
        return bool(np.allclose(h, np.eye(3), rtol=0, atol=1e-9))


def scale_matrix(src_w: int, src_h: int, dst_w: int, dst_h: int) -> np.ndarray:
    """Pixel-centre scaling as cv2.resize does it: x' = (x + 0.5) * s - 0.5."""
    sx, sy = dst_w / src_w, dst_h / src_h
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], np.float64)


class Registration:
    """Applies one RegistrationConfig to thermal/RGB pairs; warp matrices are cached per size."""

    def __init__(self, config: RegistrationConfig | None = None) -> None:
        self.config = (config or RegistrationConfig()).validate()
        self._cache: dict[tuple, tuple] = {}

    def plan(self, thermal_size: tuple[int, int], rgb_size: tuple[int, int]) -> tuple:
        """(crop rect, output size, thermal matrix or None for slicing) for these sizes (w, h)."""
        key = (thermal_size, rgb_size)
        if key in self._cache:
            return self._cache[key]
        rgb_w, rgb_h = rgb_size
        crop = self.config.crop or (0, 0, rgb_w, rgb_h)
        x, y, w, h = crop
        if x + w > rgb_w or y + h > rgb_h:
            raise RegistrationError(
                f"registration.crop {list(crop)} does not fit the {rgb_w}x{rgb_h} RGB image"
            )
        out = self.config.output_size or (w, h)
        matrix = None
        if not (self.config.is_identity and thermal_size == rgb_size and out == (w, h)):
            shift = np.array([[1, 0, -x], [0, 1, -y], [0, 0, 1]], np.float64)
            matrix = scale_matrix(w, h, *out) @ shift @ self.config.matrix
        self._cache[key] = (crop, out, matrix)
        return self._cache[key]

    def apply(self, thermal: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(thermal, rgb) on the common output grid; unchanged arrays for aligned data."""
        if min(thermal.shape[:2]) == 0 or min(rgb.shape[:2]) == 0:
            raise RegistrationError(f"empty image: thermal {thermal.shape}, rgb {rgb.shape}")
        thermal_size = (thermal.shape[1], thermal.shape[0])
        rgb_size = (rgb.shape[1], rgb.shape[0])
        (x, y, w, h), out, matrix = self.plan(thermal_size, rgb_size)
        full = (x, y, w, h) == (0, 0, *rgb_size)
        rgb_out = rgb if full else rgb[y:y + h, x:x + w]
        if out != (w, h):
            shrink = out[0] < w and out[1] < h
            rgb_out = cv2.resize(rgb_out, out, interpolation=cv2.INTER_AREA if shrink
                                 else cv2.INTER_LINEAR)
        if matrix is None:
            thermal_out = thermal if full else thermal[y:y + h, x:x + w]
        else:
            thermal_out = cv2.warpPerspective(thermal, matrix, out, flags=cv2.INTER_LINEAR,
                                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        return thermal_out, rgb_out


def project(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to N x 2 points."""
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    homogeneous = np.hstack([pts, np.ones((len(pts), 1))]) @ np.asarray(matrix, np.float64).T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def suggest_crop(
    matrix: np.ndarray, thermal_size: Sequence[int], rgb_size: Sequence[int]
) -> tuple[int, int, int, int]:
    """Largest axis-aligned RGB rectangle whose pixel centres all fall inside the thermal view.

    Exact for the convex, roughly upright quadrilaterals that a real rig's homography gives.
    """
    tw, th = thermal_size
    rw, rh = rgb_size
    tl, tr, br, bl = project(matrix, [[0, 0], [tw - 1, 0], [tw - 1, th - 1], [0, th - 1]])
    x0 = max(math.ceil(max(tl[0], bl[0]) - 1e-9), 0)
    x1 = min(math.floor(min(tr[0], br[0]) + 1e-9), rw - 1)
    y0 = max(math.ceil(max(tl[1], tr[1]) - 1e-9), 0)
    y1 = min(math.floor(min(bl[1], br[1]) + 1e-9), rh - 1)
    if x1 < x0 or y1 < y0:
        raise RegistrationError("the thermal image does not overlap the RGB image")
    return (x0, y0, x1 - x0 + 1, y1 - y0 + 1)
