"""Scenes in which only per-pixel selection of the source helps (the controlled experiment's task).

Each object's class is carried by one modality only, as a weak, slightly blurred level above or
below the ambient ("up" / "down"); the other modality paints the same object in two or three
patches of strong, sharp, random-sign contrast. Ellipses carry their class in the infrared,
rectangles in the visible image. The ambient of each modality is hot or cold at random and
independently, so "the brighter source" says nothing about "the informative source".

Why this gives the learned loss headroom: an average of the sources (w = 1/2) buries the class
level under paint of random sign, and the fusion loss's gradient term copies the strong edges
of whichever modality is uninformative; only the intensity term, whose per-pixel weights G
sets, can make F carry the informative level. An oracle weight map (the informative modality
per object) shows how much that is worth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

CLASSES = ("background", "ellipse_up", "ellipse_down", "rect_up", "rect_down")
OBJECT_CLASSES = (1, 2, 3, 4)
#: Which modality carries the class: 1 infrared, 2 visible (0 for background).
INFORMATIVE_IR, INFORMATIVE_VIS = 1, 2
AMBIENT_LEVELS = (0.35, 0.65)  # cold, hot


@dataclass(frozen=True)
class Amplitudes:
    """Grey levels (0..1) of the scene's signals; the calibration ladder scales these."""

    class_level: float = 0.08  # |informative level - ambient|
    class_blur: float = 1.0  # Gaussian sigma (pixels) of the informative level's edge
    paint_min: float = 0.08  # |paint| is uniform in [paint_min, paint_max], random sign
    paint_max: float = 0.30
    paint_blur: float = 0.0  # Gaussian sigma (pixels) of the paint's edges; 0: sharp
    noise: float = 0.02
    background_variation: float = 0.05  # smooth ambient variation (both modalities)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class SceneSet:
    """Arrays for ``n`` scenes: (n, H, W) float32 planes, uint8 labels and informative maps."""

    ir: np.ndarray
    vis: np.ndarray
    label: np.ndarray
    informative: np.ndarray

    def __len__(self) -> int:
        return len(self.ir)


def _smooth_field(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    coarse = rng.uniform(-1.0, 1.0, (4, 4)).astype(np.float32)
    return amplitude * cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def _object_mask(rng: np.random.Generator, size: int, family: int) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    cx, cy = (int(v) for v in rng.integers(10, size - 10, 2))
    if family == 0:  # ellipse
        axes = tuple(int(v) for v in rng.integers(6, 13, 2))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:  # axis-aligned rectangle
        hw, hh = (int(v) for v in rng.integers(5, 11, 2))
        mask[max(cy - hh, 0):cy + hh, max(cx - hw, 0):cx + hw] = 1
    return mask.astype(bool)


def _patches(rng: np.random.Generator, mask: np.ndarray) -> list[np.ndarray]:
    """The object cut by one or two random lines into patches that are painted separately."""
    ys, xs = np.nonzero(mask)
    parts = [mask]
    for _ in range(int(rng.integers(1, 3))):
        angle = rng.uniform(0, np.pi)
        i = int(rng.integers(len(ys)))
        side = (xs - xs[i]) * np.cos(angle) + (ys - ys[i]) * np.sin(angle) > 0
        cut = np.zeros_like(mask)
        cut[ys[side], xs[side]] = True
        parts = [p for part in parts for p in (part & cut, part & ~cut) if p.any()]
    return parts


def make_scene(rng: np.random.Generator, size: int, amp: Amplitudes
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ir, vis, label, informative) for one scene of ``size`` x ``size`` pixels."""
    planes = [np.full((size, size), rng.choice(AMBIENT_LEVELS), np.float32)
              + _smooth_field(rng, size, amp.background_variation) for _ in range(2)]
    label = np.zeros((size, size), np.uint8)
    informative = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(2, 5))):
        family = int(rng.integers(2))  # 0 ellipse (class in ir), 1 rectangle (class in vis)
        for _attempt in range(20):
            mask = _object_mask(rng, size, family)
            grown = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            if not (grown & (label > 0)).any():
                break
        else:
            continue
        up = bool(rng.integers(2))
        label[mask] = 1 + 2 * family + (0 if up else 1)
        informative[mask] = INFORMATIVE_IR if family == 0 else INFORMATIVE_VIS
        info, other = (0, 1) if family == 0 else (1, 0)
        level = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), amp.class_blur)
        planes[info] += (1.0 if up else -1.0) * amp.class_level * level
        paint = np.zeros((size, size), np.float32)
        for patch in _patches(rng, mask):
            paint[patch] = rng.uniform(amp.paint_min, amp.paint_max) * rng.choice((-1.0, 1.0))
        if amp.paint_blur > 0:
            paint = cv2.GaussianBlur(paint, (0, 0), amp.paint_blur)
        planes[other] += paint
    ir, vis = (np.clip(p + rng.normal(0, amp.noise, p.shape), 0, 1).astype(np.float32)
               for p in planes)
    return ir, vis, label, informative


def make_scenes(count: int, seed: int, size: int = 64, amp: Amplitudes | None = None) -> SceneSet:
    """``count`` scenes from one seed (the same seed gives the same scenes)."""
    rng = np.random.default_rng(seed)
    amp = amp or Amplitudes()
    scenes = [make_scene(rng, size, amp) for _ in range(count)]
    return SceneSet(*(np.stack(a) for a in zip(*scenes)))


def _dilate_each(masks: np.ndarray, pixels: int) -> np.ndarray:
    """Each (H, W) mask of a (..., H, W) stack grown by ``pixels`` (square neighbourhood)."""
    kernel = np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8)
    flat = masks.reshape(-1, *masks.shape[-2:]).astype(np.uint8)
    return np.stack([cv2.dilate(m, kernel) > 0 for m in flat]).reshape(masks.shape)


def oracle_weights(informative: np.ndarray, surround: int = 0) -> np.ndarray:
    """(..., 2, H, W) weights: the informative modality on objects, 1/2 on the background.

    ``surround`` > 0 also gives the informative modality a band of that many pixels around
    each object (1/2 where bands of both families meet), so the object's level is compared with
    a surround of the same modality; 0 is the pre-registered oracle.
    """
    on_ir, on_vis = informative == INFORMATIVE_IR, informative == INFORMATIVE_VIS
    if surround > 0:
        on_ir, on_vis = _dilate_each(on_ir, surround), _dilate_each(on_vis, surround)
        on_ir, on_vis = on_ir & ~on_vis, on_vis & ~on_ir
    w_ir = np.where(on_ir, 1.0, np.where(on_vis, 0.0, 0.5)).astype(np.float32)
    return np.stack((w_ir, 1.0 - w_ir), axis=-3)
