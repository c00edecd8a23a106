"""Seeded procedural infrared/visible road scenes with segmentation and detection labels.

Why: real aligned infrared/visible pairs with labels are few (the shared MSRS subset holds a
few dozen), which is too little for training smoke tests, CI and ablations. This module makes
any number of deterministic pairs in which each modality carries information the other lacks,
so that a fusion network has something to learn and a task loss has something to reward:

* hot targets (people, cars) are bright in the infrared; at night they are dark, noisy and,
  with probability ``night_hidden_prob`` each, coloured like their surroundings in the
  visible image, so only the infrared finds them;
* road markings and signs exist only in the visible image; the infrared sees the surface
  behind them, so only the visible image finds them.

Geometry comes from a pinhole camera over a flat ground plane (people and cars are sized in
metres, lane lines converge at the vanishing point), so sizes and positions are consistent.
The layout is drawn from its own random stream, so the same seed in day and night modes gives
the same layout, masks and boxes under different lighting: paired day/night scenes.

Only numpy and OpenCV are used, so the generator runs anywhere the package runs.
"""

from __future__ import annotations

import argparse
import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: Segmentation class ids (index = value in ``Scene.mask``). "sign" is visible-only like
#: "marking": traffic signs and their poles, which the infrared sees as the background.
SEGMENTATION_CLASSES = ("background", "road", "person", "car", "marking", "sign")
#: Detection (YOLO) class ids: 0 person, 1 car.
DETECTION_CLASSES = ("person", "car")
#: Segmentation id of each detection class, by detection id.
DETECTION_TO_SEGMENTATION = (2, 3)

SEG_BACKGROUND, SEG_ROAD, SEG_PERSON, SEG_CAR, SEG_MARKING, SEG_SIGN = range(6)
DET_PERSON, DET_CAR = range(2)
#: With ``bicycles=True`` the scenes also hold cyclists: the bicycle is one more class at the
#: end of both lists (its rider is a person), so scenes without bicycles keep their ids.
SEGMENTATION_CLASSES_WITH_BICYCLES = (*SEGMENTATION_CLASSES, "bicycle")
DETECTION_CLASSES_WITH_BICYCLES = (*DETECTION_CLASSES, "bicycle")
DETECTION_TO_SEGMENTATION_WITH_BICYCLES = (2, 3, 6)
SEG_BICYCLE = 6
DET_BICYCLE = 2

#: Default chance that a target is camouflaged (coloured like its surroundings) at night.
NIGHT_HIDDEN_PROB = 0.75
#: 16-bit "radiometric" infrared: counts = IR16_BASE + scene offset (0..250) + IR16_GAIN * level,
#: level being the 8-bit grey value before rounding, so counts stay within about 7000..9100.
IR16_BASE = 7000
IR16_GAIN = 7.0
#: Smallest supported height and width.
MIN_SIZE = 64

_SHIFT = 4  # sub-pixel bits for OpenCV polygon filling
_ONE = float(1 << _SHIFT)
_BGR_TO_Y = np.array([0.114, 0.587, 0.299], np.float32)


@dataclass(frozen=True, eq=False)
class Scene:
    """One aligned infrared/visible pair with its ground truth.

    ``boxes`` rows are (detection class id, x1, y1, x2, y2) in pixels with x2, y2 exclusive
    (x2 - x1 is the width in pixels), so YOLO centre/size follow without +1 terms.
    """

    ir: np.ndarray  # HxW uint8, or uint16 radiometric counts when asked for
    vis: np.ndarray  # HxWx3 uint8, BGR (OpenCV order)
    mask: np.ndarray  # HxW uint8 ids into SEGMENTATION_CLASSES
    boxes: np.ndarray  # Nx5 float32 (class id, x1, y1, x2, y2)
    is_night: bool

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class _Camera:
    """Pinhole camera at height ``cam_h`` metres over flat ground; X right, Z forward."""

    height: int
    width: int
    horizon: float  # image row of the horizon
    vx: float  # image column of the vanishing point
    focal: float  # pixels
    cam_h: float  # metres
    road_x: float  # lateral position of the road centre, metres
    road_half: float  # half width of the road, metres

    @property
    def z_bottom(self) -> float:
        """Ground distance seen by the bottom image row."""
        return self.focal * self.cam_h / (self.height - self.horizon)

    def project(self, x: np.ndarray | float, z: np.ndarray | float,
                up: np.ndarray | float = 0.0) -> np.ndarray:
        """Image points (..., 2) of world points at lateral x, depth z, height ``up``."""
        x, z, up = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(z, np.float64),
                                       np.asarray(up, np.float64))
        u = self.vx + self.focal * x / z
        v = self.horizon + self.focal * (self.cam_h - up) / z
        return np.stack([u, v], axis=-1)

    def ppm(self, z: float) -> float:
        """Pixels per metre at depth z."""
        return self.focal / z


def _sample_camera(rng: np.random.Generator, height: int, width: int) -> _Camera:
    road_half = rng.uniform(3.5, 7.5)
    return _Camera(
        height=height,
        width=width,
        horizon=height * rng.uniform(0.33, 0.5),
        vx=width * rng.uniform(0.35, 0.65),
        focal=width * rng.uniform(0.8, 1.2),
        cam_h=rng.uniform(1.4, 3.0),
        road_x=road_half * rng.uniform(-0.6, 0.6),
        road_half=road_half,
    )


# --------------------------------------------------------------------------- drawing


def _fix(poly: np.ndarray) -> np.ndarray:
    pts = np.clip(np.asarray(poly, np.float64).reshape(-1, 2), -1e6, 1e6)
    return np.round(pts * _ONE).astype(np.int32)


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = 20) -> np.ndarray:
    a = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def _segment(p0: Sequence[float], p1: Sequence[float], half: float) -> np.ndarray:
    """Quad of a thick line from p0 to p1 (limbs, poles)."""
    d = np.subtract(p1, p0, dtype=np.float64)
    n = np.array([-d[1], d[0]]) / max(float(np.hypot(*d)), 1e-9) * half
    return np.array([p0 + n, p1 + n, p1 - n, p0 - n])


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


class _Canvas:
    """The layers a scene is painted into, all at full resolution.

    ``refl`` is the visible reflectance as seen in daylight (BGR 0..255), ``emis`` light emitted
    at night, ``ir`` the 8-bit-scaled infrared level, ``vamp``/``iamp`` the texture strength of
    each surface, ``inst`` target instance ids (to read exact boxes back).
    """

    def __init__(self, height: int, width: int) -> None:
        self.refl = np.zeros((height, width, 3), np.float32)
        self.emis = np.zeros((height, width, 3), np.float32)
        self.ir = np.zeros((height, width), np.float32)
        self.mask = np.zeros((height, width), np.uint8)
        self.vamp = np.zeros((height, width), np.float32)
        self.iamp = np.zeros((height, width), np.float32)
        self.inst = np.zeros((height, width), np.int32)

    def fill(self, polys: np.ndarray | list[np.ndarray], *, vis: Sequence[float] | None = None,
             ir: float | None = None, cls: int | None = None, vamp: float | None = None,
             iamp: float | None = None, emis: Sequence[float] | None = None,
             inst: int | None = None) -> None:
        """Fill polygons in the given layers; polygons of one call must not overlap."""
        pts = [_fix(p) for p in (polys if isinstance(polys, list) else [polys])]
        if not pts:
            return
        for layer, value in ((self.refl, vis), (self.emis, emis)):
            if value is not None:
                cv2.fillPoly(layer, pts, tuple(float(c) for c in value), cv2.LINE_8, _SHIFT)
        for layer, value in ((self.ir, ir), (self.mask, cls), (self.vamp, vamp),
                             (self.iamp, iamp), (self.inst, inst)):
            if value is not None:
                cv2.fillPoly(layer, pts, float(value), cv2.LINE_8, _SHIFT)


def _luma(bgr: np.ndarray | Sequence[float]) -> float:
    return float(np.dot(np.asarray(bgr, np.float32), _BGR_TO_Y))


def _contrasting(rng: np.random.Generator, background: np.ndarray, palette: np.ndarray,
                 min_diff: float) -> np.ndarray:
    """A palette colour (jittered) whose luma differs from the background's by min_diff."""
    bg = _luma(background)
    for _ in range(12):
        colour = np.clip(palette[rng.integers(len(palette))] + rng.normal(0, 10, 3), 0, 255)
        if abs(_luma(colour) - bg) >= min_diff:
            return colour
    return np.full(3, 20.0 if bg > 128 else 235.0)


_CLOTHES = np.array([[30, 30, 30], [230, 230, 230], [40, 40, 160], [150, 60, 30],
                     [60, 120, 40], [40, 170, 210], [120, 120, 120], [90, 60, 130],
                     [200, 160, 110], [60, 60, 90]], np.float64)
_SKIN = np.array([[150, 180, 220], [110, 140, 190], [70, 100, 150], [45, 65, 105]], np.float64)
_CAR_PAINT = np.array([[235, 235, 235], [25, 25, 25], [175, 175, 170], [40, 40, 170],
                       [150, 80, 30], [90, 90, 90], [40, 140, 200], [60, 90, 40]], np.float64)
_FACADES = np.array([[150, 175, 200], [70, 90, 150], [170, 170, 170], [200, 205, 210],
                     [110, 120, 125], [130, 160, 190]], np.float64)


# --------------------------------------------------------------------------- scene parts


@dataclass
class _Look:
    """Per-scene appearance: visible colours and infrared levels (night dependent)."""

    night: bool
    road_vis: np.ndarray
    road_ir: float
    walk_vis: np.ndarray
    walk_ir: float
    ground_vis: np.ndarray
    ground_ir: float
    tree_vis: np.ndarray
    tree_ir: float
    building_ir: float
    paint_white: np.ndarray
    paint_yellow: np.ndarray


def _sample_look(rng: np.random.Generator, night: bool) -> _Look:
    grey = rng.uniform(80, 115)
    grass = rng.random() < 0.6
    ground = ([rng.uniform(50, 80), rng.uniform(105, 140), rng.uniform(55, 85)] if grass
              else [rng.uniform(80, 110), rng.uniform(115, 140), rng.uniform(135, 160)])
    walk = rng.uniform(150, 185)
    return _Look(
        night=night,
        road_vis=np.array([grey + rng.uniform(-4, 6), grey, grey - rng.uniform(-4, 6)]),
        road_ir=rng.uniform(68, 88) if night else rng.uniform(118, 142),
        walk_vis=np.array([walk, walk + rng.uniform(-5, 5), walk + rng.uniform(-5, 10)]),
        walk_ir=rng.uniform(60, 72) if night else rng.uniform(105, 120),
        ground_vis=np.array(ground),
        ground_ir=rng.uniform(48, 62) if night else rng.uniform(82, 98),
        tree_vis=np.array([rng.uniform(35, 60), rng.uniform(80, 120), rng.uniform(40, 70)]),
        tree_ir=rng.uniform(52, 66) if night else rng.uniform(75, 90),
        building_ir=rng.uniform(70, 90) if night else rng.uniform(88, 112),
        paint_white=np.full(3, rng.uniform(215, 240)),
        paint_yellow=np.array([rng.uniform(30, 60), rng.uniform(180, 210), rng.uniform(220, 240)]),
    )


def _paint_sky_and_ground(cv: _Canvas, cam: _Camera, look: _Look,
                          rng: np.random.Generator) -> None:
    h = int(math.ceil(cam.horizon))
    t = np.linspace(0.0, 1.0, max(h, 1), dtype=np.float32)[:, None] ** 0.7
    top = np.array([rng.uniform(170, 215), rng.uniform(120, 160), rng.uniform(60, 100)])
    low = np.array([rng.uniform(215, 240), rng.uniform(200, 225), rng.uniform(180, 210)])
    ir_top, ir_low = (rng.uniform(15, 30), rng.uniform(38, 50)) if look.night else (
        rng.uniform(28, 45), rng.uniform(58, 75))
    cv.refl[:h] = (top * (1 - t) + low * t)[:, None, :]
    cv.ir[:h] = (ir_top * (1 - t[:, 0]) + ir_low * t[:, 0])[:, None]
    cv.vamp[:h], cv.iamp[:h] = 0.03, 1.5
    cv.refl[h:] = look.ground_vis
    cv.ir[h:] = look.ground_ir
    cv.vamp[h:], cv.iamp[h:] = 0.18, 5.0


def _paint_buildings(cv: _Canvas, cam: _Camera, look: _Look, geo: np.random.Generator,
                     app: np.random.Generator) -> None:
    """Facades along both road sides, with windows (lit at random at night)."""
    z_min = max(0.5 * cam.z_bottom, 1.0)
    facades = []
    for side in (-1.0, 1.0):
        if geo.random() < 0.2:
            continue
        z = z_min + geo.uniform(0, 15)
        while z < 160:
            length = geo.uniform(8, 35)
            facades.append((side, geo.uniform(3, 9), z, z + length, geo.uniform(6, 25),
                            geo.random() < 0.85))
            z += length + geo.uniform(0, 12)
    facades.sort(key=lambda f: -f[2])  # far first
    for side, setback, z0, z1, tall, present in facades:
        colour = np.clip(_FACADES[app.integers(len(_FACADES))] + app.normal(0, 12, 3), 0, 255)
        window_vis = np.array([app.uniform(60, 95), app.uniform(50, 75), app.uniform(40, 60)])
        lit_share = app.uniform(0.1, 0.5)
        if not present:
            continue
        x = cam.road_x + side * (cam.road_half + setback)
        quad = cam.project(x, [z0, z1, z1, z0], [0, 0, tall, tall])
        ir = look.building_ir + app.uniform(-6, 6)
        cv.fill(quad, vis=colour, ir=ir, cls=SEG_BACKGROUND, vamp=0.06, iamp=3.0)
        floors = np.arange(1.0, tall - 1.5, 3.2)
        cols = np.arange(z0 + 1.0, z1 - 1.5, 3.0)
        if len(floors) == 0 or len(cols) == 0:
            continue
        # windows narrower than a pixel or so would only add aliasing
        if 1.4 * cam.ppm(z0) < 1.5:
            continue
        zz, hh = np.meshgrid(cols, floors)
        zz, hh = zz.ravel(), hh.ravel()
        corners = cam.project(x, np.stack([zz, zz + 1.5, zz + 1.5, zz], 1),
                              np.stack([hh, hh, hh + 1.5, hh + 1.5], 1))
        wins = list(corners)
        cv.fill(wins, vis=window_vis, ir=ir - 6.0)
        lit = app.random(len(wins)) < lit_share
        if look.night and lit.any():
            glow = np.array([90, 190, 240]) * app.uniform(0.4, 0.9)
            cv.fill([w for w, on in zip(wins, lit) if on], emis=glow, ir=ir - 2.0)


def _paint_road(cv: _Canvas, cam: _Camera, look: _Look, geo: np.random.Generator) -> None:
    """Sidewalks and asphalt."""
    z_near = max(0.5 * cam.z_bottom, 0.5)
    z_far = cam.focal * cam.cam_h / 0.5  # half a pixel below the horizon
    left, right = cam.road_x - cam.road_half, cam.road_x + cam.road_half
    walk = geo.uniform(2.0, 4.5)
    walk_poly = cam.project([left - walk, right + walk, right + walk, left - walk],
                            [z_near, z_near, z_far, z_far])
    cv.fill(walk_poly, vis=look.walk_vis, ir=look.walk_ir, cls=SEG_BACKGROUND, vamp=0.08,
            iamp=3.0)
    road_poly = cam.project([left, right, right, left], [z_near, z_near, z_far, z_far])
    cv.fill(road_poly, vis=look.road_vis, ir=look.road_ir, cls=SEG_ROAD, vamp=0.10, iamp=4.0)


def _paint_markings(cv: _Canvas, cam: _Camera, look: _Look, geo: np.random.Generator) -> None:
    """Lane lines (dashed between lanes, sometimes solid edges), zebra crossings and arrows.

    Paint only: nothing is drawn into the infrared, which keeps seeing the asphalt.
    """
    z_near = max(0.5 * cam.z_bottom, 0.5)
    z_far = cam.focal * cam.cam_h / 0.5
    left, right = cam.road_x - cam.road_half, cam.road_x + cam.road_half
    lanes = 2 if cam.road_half < 5.0 else int(geo.integers(2, 5))
    lane_w = 2.0 * cam.road_half / lanes
    half_w = geo.uniform(0.08, 0.12)
    dash, period = geo.uniform(2.0, 4.0), geo.uniform(8.0, 13.0)
    phase = geo.uniform(0, period)
    z_end = min(z_far, 300.0)
    starts = np.arange(z_near - phase, z_end, period)
    starts = starts[starts + dash > z_near]
    z0 = np.maximum(starts, z_near)
    z1 = starts + dash
    centre_yellow = lanes == 2 and geo.random() < 0.35
    edges = geo.random() < 0.7
    white, yellow = look.paint_white, look.paint_yellow
    for k in range(1, lanes):
        x = left + k * lane_w
        if centre_yellow:
            for dx in (-0.15, 0.15):
                line = cam.project([x + dx - half_w, x + dx + half_w, x + dx + half_w,
                                    x + dx - half_w], [z_near, z_near, z_end, z_end])
                cv.fill(line, vis=yellow, cls=SEG_MARKING, vamp=0.05)
            continue
        xs = np.array([x - half_w, x + half_w, x + half_w, x - half_w])
        quads = cam.project(xs[None, :], np.stack([z0, z0, z1, z1], 1))
        cv.fill(list(quads), vis=white, cls=SEG_MARKING, vamp=0.05)
    if edges:
        for x in (left + 0.3, right - 0.3):
            line = cam.project([x - half_w, x + half_w, x + half_w, x - half_w],
                               [z_near, z_near, z_end, z_end])
            cv.fill(line, vis=white, cls=SEG_MARKING, vamp=0.05)
    if geo.random() < 0.3:  # zebra crossing
        zc = cam.z_bottom + geo.uniform(1.0, 15.0)
        depth = geo.uniform(2.5, 4.0)
        xs = np.arange(left + 0.4, right - 0.6, 1.0)
        quads = cam.project(np.stack([xs, xs + 0.5, xs + 0.5, xs], 1),
                            np.array([zc, zc, zc + depth, zc + depth])[None, :])
        cv.fill(list(quads), vis=white, cls=SEG_MARKING, vamp=0.05)
    if geo.random() < 0.4:  # straight-ahead arrow painted in a lane
        x = left + (int(geo.integers(lanes)) + 0.5) * lane_w
        za = cam.z_bottom + geo.uniform(1.0, 20.0)
        shaft = cam.project([x - 0.12, x + 0.12, x + 0.12, x - 0.12],
                            [za, za, za + 3.0, za + 3.0])
        head = cam.project([x - 0.45, x + 0.45, x], [za + 3.0, za + 3.0, za + 4.5])
        cv.fill(shaft, vis=white, cls=SEG_MARKING, vamp=0.05)
        cv.fill(head, vis=white, cls=SEG_MARKING, vamp=0.05)


@dataclass
class _Prop:
    """A roadside object: a tree, street light or sign."""

    kind: str
    x: float
    z: float
    size: float
    tall: float
    variant: int
    blobs: np.ndarray | None = None  # trees: crown blobs (dx, dy, radius) in crown sizes


def _place_props(cam: _Camera, geo: np.random.Generator) -> list[_Prop]:
    props = []
    z_lo = cam.z_bottom * 1.1
    for side in (-1.0, 1.0):
        edge = cam.road_x + side * cam.road_half
        for _ in range(int(geo.integers(0, 5))):  # trees
            blobs = np.column_stack([geo.uniform(-0.7, 0.7, 3), geo.uniform(-0.5, 0.4, 3),
                                     geo.uniform(0.6, 0.8, 3)])
            props.append(_Prop("tree", edge + side * geo.uniform(1.5, 4.0),
                               z_lo + geo.exponential(25.0), geo.uniform(1.4, 2.6),
                               geo.uniform(3.0, 5.5), 0, np.vstack([[0.0, 0.0, 1.0], blobs])))
        if geo.random() < 0.5:  # a row of street lights
            spacing, z = geo.uniform(18, 30), z_lo + geo.uniform(0, 15)
            while z < 110:
                props.append(_Prop("lamp", edge + side * 0.5, z, 0.0, geo.uniform(6, 8), 0))
                z += spacing
    for _ in range(int(geo.integers(0, 3))):  # signs
        side = 1.0 if geo.random() < 0.5 else -1.0
        props.append(_Prop("sign", cam.road_x + side * (cam.road_half + geo.uniform(0.4, 2.0)),
                           z_lo + geo.uniform(0, 35), geo.uniform(0.6, 0.95),
                           geo.uniform(1.9, 2.6), int(geo.integers(4))))
    props.sort(key=lambda p: -p.z)
    return props


def _paint_props(cv: _Canvas, cam: _Camera, look: _Look, props: list[_Prop],
                 app: np.random.Generator) -> list[tuple[np.ndarray, float]]:
    """Draw props; returns the lamps (image position, depth) for night lighting."""
    lamps = []
    for p in props:
        ppm = cam.ppm(p.z)
        foot = cam.project(p.x, p.z)
        if p.kind == "tree":
            crown = cam.project(p.x, p.z, p.tall)
            trunk = _segment(foot, crown, max(0.15 * ppm, 0.5))
            cv.fill(trunk, vis=(40, 60, 80), ir=look.tree_ir + 4, cls=SEG_BACKGROUND,
                    vamp=0.1, iamp=2.0)
            for dx, dy, r in p.blobs:
                blob = _ellipse(crown[0] + dx * p.size * ppm, crown[1] + dy * p.size * ppm,
                                r * p.size * ppm, 0.9 * r * p.size * ppm)
                cv.fill(blob, vis=look.tree_vis * app.uniform(0.85, 1.15), ir=look.tree_ir,
                        cls=SEG_BACKGROUND, vamp=0.22, iamp=5.0)
        elif p.kind == "lamp":
            top = cam.project(p.x, p.z, p.tall)
            half = max(0.08 * ppm, 0.5)
            cv.fill(_segment(foot, top, half), vis=(120, 120, 125))
            side = -1.0 if p.x > cam.road_x else 1.0
            head = cam.project(p.x + side * 1.5, p.z, p.tall)
            cv.fill(_segment(top, head, half), vis=(120, 120, 125))
            cv.fill(_ellipse(head[0], head[1] + half, 3 * half, 1.5 * half), vis=(200, 200, 200),
                    emis=(170, 220, 255))
            lamps.append((cam.project(p.x + side * 1.5, p.z), p.z))
        else:
            _paint_sign(cv, cam, p, app)
    return lamps


def _paint_sign(cv: _Canvas, cam: _Camera, p: _Prop, app: np.random.Generator) -> None:
    """A traffic sign: colour and pattern in the visible image only (no ``ir=``)."""
    ppm = cam.ppm(p.z)
    foot = cam.project(p.x, p.z)
    centre = cam.project(p.x, p.z, p.tall + p.size / 2)
    r = p.size / 2 * ppm
    cv.fill(_segment(foot, centre, max(0.04 * ppm, 0.5)), vis=(150, 150, 150), cls=SEG_SIGN)
    cx, cy = centre
    if p.variant == 0:  # prohibition: red ring, white disc, dark bar
        cv.fill(_ellipse(cx, cy, r, r), vis=(35, 35, 200), cls=SEG_SIGN, vamp=0.03)
        cv.fill(_ellipse(cx, cy, 0.75 * r, 0.75 * r), vis=(235, 235, 235))
        cv.fill(_rect(cx - 0.5 * r, cy - 0.12 * r, cx + 0.5 * r, cy + 0.12 * r), vis=(30, 30, 30))
    elif p.variant == 1:  # blue mandatory disc with a white arrow
        cv.fill(_ellipse(cx, cy, r, r), vis=(170, 90, 25), cls=SEG_SIGN, vamp=0.03)
        cv.fill(_segment((cx, cy + 0.55 * r), (cx, cy - 0.1 * r), 0.13 * r), vis=(240, 240, 240))
        cv.fill(np.array([[cx - 0.4 * r, cy - 0.1 * r], [cx + 0.4 * r, cy - 0.1 * r],
                          [cx, cy - 0.6 * r]]), vis=(240, 240, 240))
    elif p.variant == 2:  # warning triangle
        tri = np.array([[cx, cy - r], [cx + 1.05 * r, cy + 0.8 * r], [cx - 1.05 * r, cy + 0.8 * r]])
        cv.fill(tri, vis=(35, 35, 200), cls=SEG_SIGN, vamp=0.03)
        inner = np.stack([cx + 0.68 * (tri[:, 0] - cx), cy + 0.68 * (tri[:, 1] - cy) + 0.05 * r],
                         1)
        cv.fill(inner, vis=(40, 200, 235))
        cv.fill(_rect(cx - 0.07 * r, cy - 0.35 * r, cx + 0.07 * r, cy + 0.25 * r), vis=(20, 20, 20))
    else:  # green direction board with "text" bars
        board = _rect(cx - 1.4 * r, cy - 0.8 * r, cx + 1.4 * r, cy + 0.8 * r)
        cv.fill(board, vis=(60, 130, 30), cls=SEG_SIGN, vamp=0.03)
        rows = [cy - 0.45 * r, cy + 0.15 * r]
        bars = [_rect(cx - 1.2 * r, y, cx - 1.2 * r + app.uniform(0.8, 2.3) * r, y + 0.3 * r)
                for y in rows]
        cv.fill(bars, vis=(235, 235, 235))


@dataclass
class _Target:
    det: int  # detection class id
    x: float
    z: float
    size: np.ndarray  # metres: person (height, girth), car (width, height)
    pose: np.ndarray  # free shape parameters
    view: int  # cars: 0 rear, 1 side facing right, -1 side facing left
    box: np.ndarray  # approximate image box before drawing


def _target_box(cam: _Camera, det: int, x: float, z: float, size: np.ndarray) -> np.ndarray:
    fx, fy = cam.project(x, z)
    ppm = cam.ppm(z)
    if det == DET_PERSON:
        h = size[0] * ppm
        return np.array([fx - 0.25 * h, fy - h, fx + 0.25 * h, fy])
    w, h = size[0] * ppm, size[1] * ppm  # cars and cyclists (bicycle and rider)
    return np.array([fx - 0.5 * w, fy - h, fx + 0.5 * w, fy])


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over the smaller area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    small = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(small, 1e-9)


def _place_targets(cam: _Camera, geo: np.random.Generator,
                   bicycles: bool = False) -> list[_Target]:
    """People and cars (and cyclists) on the ground plane, at most 30 % hidden behind each
    other."""
    n_person, n_car = int(geo.integers(0, 6)), int(geo.integers(0, 4))
    if n_person + n_car == 0:
        n_person = 1
    n_bike = int(geo.integers(1, 3)) if bicycles else 0  # drawn only then: same scenes without
    min_px = max(8.0, 0.05 * cam.height)
    left, right = cam.road_x - cam.road_half, cam.road_x + cam.road_half
    lanes = max(2, int(round(cam.road_half / 2.0)))
    targets: list[_Target] = []
    for det in [DET_PERSON] * n_person + [DET_CAR] * n_car + [DET_BICYCLE] * n_bike:
        for _ in range(30):
            pose = geo.uniform(-1.0, 1.0, 4)
            view = 0
            if det == DET_PERSON:
                size = np.array([geo.uniform(1.5, 1.9), geo.uniform(0.9, 1.15)])
                x = geo.uniform(left - 3.0, right + 3.0)
            elif det == DET_BICYCLE:  # side view, riding along the road's edge or across
                view = 1 if geo.random() < 0.5 else -1
                size = np.array([geo.uniform(1.65, 1.85), geo.uniform(1.65, 1.85)])
                x = (left + geo.uniform(0.3, 1.5) if geo.random() < 0.5
                     else right - geo.uniform(0.3, 1.5))
            else:
                view = int(geo.choice([0, 0, 0, 1, -1]))
                size = (np.array([geo.uniform(1.7, 1.95), geo.uniform(1.4, 1.75)]) if view == 0
                        else np.array([geo.uniform(4.0, 4.8), geo.uniform(1.35, 1.6)]))
                lane = int(geo.integers(lanes))
                x = left + (lane + 0.5) * (2 * cam.road_half / lanes) + geo.uniform(-0.4, 0.4)
            z_max = min(cam.focal * size[0 if det == DET_PERSON else -1] / min_px,
                        cam.z_bottom * 25.0)
            z_min = cam.z_bottom * 1.02
            if z_max <= z_min:
                z_max = z_min * 1.01
            z = z_min * (z_max / z_min) ** geo.random()
            box = _target_box(cam, det, x, z, size)
            inside = (min(box[2], cam.width) - max(box[0], 0.0)) / (box[2] - box[0])
            if inside < 0.6 or any(_overlap(box, t.box) > 0.3 for t in targets):
                continue
            targets.append(_Target(det, x, z, size, pose, view, box))
            break
    targets.sort(key=lambda t: -t.z)
    return targets


def _local_colour(cv: _Canvas, box: np.ndarray) -> np.ndarray:
    h, w = cv.mask.shape
    x0, y0 = int(np.clip(box[0], 0, w - 1)), int(np.clip(box[1], 0, h - 1))
    x1, y1 = int(np.clip(box[2], x0 + 1, w)), int(np.clip(box[3], y0 + 1, h))
    return cv.refl[y0:y1, x0:x1].reshape(-1, 3).mean(axis=0).astype(np.float64)


def _paint_person(cv: _Canvas, cam: _Camera, t: _Target, inst: int, look: _Look,
                  app: np.random.Generator, hidden: bool) -> None:
    fx, fy = cam.project(t.x, t.z)
    h = t.size[0] * cam.ppm(t.z)
    g = t.size[1]  # girth factor
    lean = 0.03 * h * t.pose[0]
    base_ir = app.uniform(185, 225) if look.night else app.uniform(170, 205)
    head_ir = base_ir + app.uniform(10, 25)
    bg = _local_colour(cv, t.box)
    skin = np.clip(_SKIN[app.integers(len(_SKIN))] + app.normal(0, 8, 3), 0, 255)
    shirt = _contrasting(app, bg, _CLOTHES, 45.0)
    trousers = _contrasting(app, bg, _CLOTHES, 45.0)
    if hidden:  # camouflaged: the visible image shows (almost) the surroundings
        skin, shirt, trousers = (np.clip(bg + app.normal(0, 4, 3), 0, 255) for _ in range(3))
    common = {"cls": SEG_PERSON, "inst": inst}
    hip_y, sh_y = fy - 0.5 * h, fy - 0.82 * h
    for s in (-1.0, 1.0):  # legs
        foot_x = fx + s * (0.03 + 0.06 * abs(t.pose[1])) * h
        cv.fill(_segment((fx + lean * 0.3 + s * 0.05 * g * h, hip_y), (foot_x, fy - 0.02 * h),
                         0.045 * g * h), vis=trousers * app.uniform(0.85, 1.0),
                ir=base_ir - app.uniform(5, 15), **common)
    torso = np.array([[fx + lean - 0.13 * g * h, sh_y], [fx + lean + 0.13 * g * h, sh_y],
                      [fx + lean * 0.3 + 0.1 * g * h, hip_y + 0.02 * h],
                      [fx + lean * 0.3 - 0.1 * g * h, hip_y + 0.02 * h]])
    cv.fill(torso, vis=shirt, ir=base_ir, **common)
    for s, swing in ((-1.0, t.pose[2]), (1.0, t.pose[3])):  # arms
        shoulder = (fx + lean + s * 0.12 * g * h, sh_y + 0.02 * h)
        hand = (shoulder[0] + s * 0.04 * h + swing * 0.08 * h, fy - 0.47 * h)
        cv.fill(_segment(shoulder, hand, 0.035 * g * h), vis=shirt * 0.92, ir=base_ir + 3,
                **common)
    cv.fill(_ellipse(fx + lean, fy - 0.92 * h, 0.065 * h, 0.08 * h), vis=skin, ir=head_ir,
            **common)


def _paint_car(cv: _Canvas, cam: _Camera, t: _Target, inst: int, look: _Look,
               app: np.random.Generator, hidden: bool) -> list[np.ndarray]:
    """Draw a car; returns its tail-light polygons (lit at night unless the car is hidden)."""
    cx, by = cam.project(t.x, t.z)
    ppm = cam.ppm(t.z)
    w, h = t.size[0] * ppm, t.size[1] * ppm
    body_ir = app.uniform(120, 155) if look.night else app.uniform(150, 180)
    hot_ir = app.uniform(190, 230)
    glass_ir = app.uniform(85, 105)
    bg = _local_colour(cv, t.box)
    paint = _contrasting(app, bg, _CAR_PAINT, 40.0)
    glass = np.array([app.uniform(50, 80), app.uniform(40, 60), app.uniform(35, 50)])
    tyre, trim = np.full(3, 25.0), np.full(3, 45.0)
    red, plate, hub = np.array([40, 40, 190.0]), np.full(3, 225.0), np.full(3, 140.0)
    if hidden:
        paint, glass, tyre, trim, red, plate, hub = (
            np.clip(bg + app.normal(0, 4, 3), 0, 255) for _ in range(7))
    common = {"cls": SEG_CAR, "inst": inst}

    def px(ax: float, ay: float) -> list[float]:
        return [cx + ax * w, by + ay * h]

    lights: list[np.ndarray] = []
    if t.view == 0:  # rear view
        for s in (-1.0, 1.0):
            cv.fill(np.array([px(s * 0.30, -0.25), px(s * 0.46, -0.25), px(s * 0.46, 0.0),
                              px(s * 0.30, 0.0)]), vis=tyre, ir=hot_ir, **common)
        c = 0.05
        body = np.array([px(-0.5 + c, -0.62), px(0.5 - c, -0.62), px(0.5, -0.55),
                         px(0.5, -0.18), px(0.47, -0.12), px(-0.47, -0.12), px(-0.5, -0.18),
                         px(-0.5, -0.55)])
        cv.fill(body, vis=paint, ir=body_ir, **common)
        cabin = np.array([px(-0.36, -1.0), px(0.36, -1.0), px(0.45, -0.6), px(-0.45, -0.6)])
        cv.fill(cabin, vis=paint * 0.95, ir=body_ir - 5, **common)
        cv.fill(np.array([px(-0.33, -0.95), px(0.33, -0.95), px(0.40, -0.65),
                          px(-0.40, -0.65)]), vis=glass, ir=glass_ir)
        cv.fill(np.array([px(-0.42, -0.2), px(0.42, -0.2), px(0.42, -0.13), px(-0.42, -0.13)]),
                vis=trim, ir=hot_ir - 15)
        cv.fill(np.array([px(-0.1, -0.36), px(0.1, -0.36), px(0.1, -0.27), px(-0.1, -0.27)]),
                vis=plate)
        lights = [np.array([px(s * 0.36, -0.55), px(s * 0.47, -0.55), px(s * 0.47, -0.45),
                            px(s * 0.36, -0.45)]) for s in (-1.0, 1.0)]
        cv.fill(lights, vis=red)
    else:  # side view, ``view`` = driving direction
        d = float(t.view)
        body = np.array([px(-0.5, -0.55), px(0.5, -0.5), px(0.5, -0.2), px(0.47, -0.12),
                         px(-0.47, -0.12), px(-0.5, -0.2)])
        body[:, 0] = cx + d * (body[:, 0] - cx)
        cv.fill(body, vis=paint, ir=body_ir, **common)
        cabin = np.array([px(-0.18, -1.0), px(0.14, -1.0), px(0.28, -0.53), px(-0.33, -0.53)])
        cabin[:, 0] = cx + d * (cabin[:, 0] - cx)
        cv.fill(cabin, vis=paint * 0.95, ir=body_ir - 5, **common)
        for a0, a1 in ((-0.3, -0.04), (-0.01, 0.22)):
            win = np.array([px(a0 + 0.04, -0.93), px(a1 - 0.02, -0.93), px(a1 + 0.02, -0.58),
                            px(a0, -0.58)])
            win[:, 0] = cx + d * (win[:, 0] - cx)
            cv.fill(win, vis=glass, ir=glass_ir)
        engine = _rect(*px(0.3, -0.48), *px(0.5, -0.22))
        engine[:, 0] = cx + d * (engine[:, 0] - cx)
        cv.fill(engine, ir=body_ir + 25)
        for a in (-0.32, 0.32):
            r = 0.17 * h
            wx = cx + d * a * w
            cv.fill(_ellipse(wx, by - r, r, r), vis=tyre, ir=hot_ir, **common)
            cv.fill(_ellipse(wx, by - r, 0.5 * r, 0.5 * r), vis=hub)
    return lights


def _paint_cyclist(cv: _Canvas, cam: _Camera, t: _Target, inst: int, rider: int,
                   look: _Look, app: np.random.Generator, hidden: bool) -> None:
    """A bicycle seen from the side (instance ``inst``) and its rider (instance ``rider``).

    The bicycle is at the air's temperature (its frame a little cooler than the road, the
    tyres a little warmer); the rider is warm like a pedestrian.
    """
    cx, by = cam.project(t.x, t.z)
    ppm = cam.ppm(t.z)
    d = float(t.view)
    scale = t.size[0] / 1.75

    def px(ax: float, ay: float) -> np.ndarray:  # metres along the direction of travel, up
        return np.array([cx + d * ax * scale * ppm, by - ay * scale * ppm])

    bg = _local_colour(cv, t.box)
    frame_vis = _contrasting(app, bg, _CAR_PAINT, 40.0)
    tyre_vis = np.full(3, 28.0)
    shirt = _contrasting(app, bg, _CLOTHES, 45.0)
    trousers = _contrasting(app, bg, _CLOTHES, 45.0)
    skin = np.clip(_SKIN[app.integers(len(_SKIN))] + app.normal(0, 8, 3), 0, 255)
    if hidden:
        frame_vis, tyre_vis, shirt, trousers, skin = (
            np.clip(bg + app.normal(0, 4, 3), 0, 255) for _ in range(5))
    frame_ir = look.road_ir + app.uniform(-14, -6)
    tyre_ir = look.road_ir + app.uniform(2, 10)
    body_ir = app.uniform(185, 225) if look.night else app.uniform(170, 205)
    tube = max(0.025 * scale * ppm, 0.5)
    bike = {"cls": SEG_BICYCLE, "inst": inst}
    r = 0.34
    rear, front = px(-0.525, r), px(0.525, r)
    for hub in (rear, front):  # wheels: rings of short thick segments
        a = np.linspace(0.0, 2.0 * np.pi, 17)
        ring = np.stack([hub[0] + r * scale * ppm * np.cos(a),
                         hub[1] + r * scale * ppm * np.sin(a)], 1)
        for p0, p1 in zip(ring[:-1], ring[1:]):
            cv.fill(_segment(p0, p1, max(0.03 * scale * ppm, 0.5)), vis=tyre_vis, ir=tyre_ir,
                    **bike)
    bracket, seat, head, bar = px(-0.05, 0.30), px(-0.22, 0.86), px(0.42, 0.88), px(0.38, 1.0)
    for p0, p1 in ((rear, bracket), (rear, seat), (bracket, seat), (bracket, head),
                   (seat, head), (head, front), (head, bar)):
        cv.fill(_segment(p0, p1, tube), vis=frame_vis, ir=frame_ir, **bike)
    cv.fill(_segment(px(-0.32, 0.92), px(-0.14, 0.92), 1.5 * tube), vis=tyre_vis,
            ir=frame_ir, **bike)  # saddle
    person = {"cls": SEG_PERSON, "inst": rider}
    hip, shoulder = px(-0.2, 0.98), px(0.12, 1.42)
    knee = px(0.12 + 0.06 * t.pose[0], 0.72)
    pedal = px(-0.05 + 0.15 * t.pose[1], 0.30 - 0.12 * abs(t.pose[1]))
    limb = max(0.05 * scale * ppm, 0.5)
    cv.fill(_segment(hip, knee, 1.3 * limb), vis=trousers, ir=body_ir - 8, **person)
    cv.fill(_segment(knee, pedal, limb), vis=trousers * 0.9, ir=body_ir - 12, **person)
    cv.fill(_segment(hip, shoulder, 2.4 * limb), vis=shirt, ir=body_ir, **person)
    cv.fill(_segment(shoulder, bar, 0.8 * limb), vis=shirt * 0.92, ir=body_ir + 3, **person)
    centre = px(0.22, 1.6)
    cv.fill(_ellipse(centre[0], centre[1], 0.11 * scale * ppm, 0.13 * scale * ppm), vis=skin,
            ir=body_ir + app.uniform(10, 25), **person)


def _paint_targets(cv: _Canvas, cam: _Camera, look: _Look, targets: list[_Target],
                   app: np.random.Generator, hidden_prob: float) -> np.ndarray:
    rows = []
    riders = {}  # bicycle instance -> its rider's instance
    for inst, t in enumerate(targets, start=1):
        hidden = bool(app.random() < hidden_prob) and look.night
        if t.det == DET_PERSON:
            _paint_person(cv, cam, t, inst, look, app, hidden)
        elif t.det == DET_BICYCLE:
            riders[inst] = len(targets) + 1 + len(riders)
            _paint_cyclist(cv, cam, t, inst, riders[inst], look, app, hidden)
        else:
            lights = _paint_car(cv, cam, t, inst, look, app, hidden)
            if look.night and not hidden and lights:
                cv.fill(lights, emis=(60, 60, 255))
    h, w = cv.mask.shape
    for inst, t in enumerate(targets, start=1):
        x0, y0 = int(max(math.floor(t.box[0]) - 2, 0)), int(max(math.floor(t.box[1]) - 2, 0))
        x1, y1 = int(min(math.ceil(t.box[2]) + 3, w)), int(min(math.ceil(t.box[3]) + 3, h))
        for det, k in ((t.det, inst), (DET_PERSON, riders.get(inst))):
            if k is None:
                continue
            ys, xs = np.nonzero(cv.inst[y0:y1, x0:x1] == k)
            if len(xs) == 0:
                continue
            rows.append([det, x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1,
                         y0 + ys.max() + 1])
    return np.asarray(rows, np.float32).reshape(-1, 5)


# --------------------------------------------------------------------------- sensors


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Unit-scale smooth random field (bicubic upsampled white noise)."""
    gh, gw = int(height / cell) + 2, int(width / cell) + 2
    grid = rng.standard_normal((gh, gw), dtype=np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _apply_texture(cv: _Canvas, rng: np.random.Generator) -> None:
    h, w = cv.mask.shape
    cell = max(h, w) / 8.0
    vis_field = (0.7 * _smooth_noise(rng, h, w, cell)
                 + 0.5 * _smooth_noise(rng, h, w, cell / 6.0))
    grain = rng.standard_normal((h, w), dtype=np.float32)
    cv.refl *= (1.0 + cv.vamp * vis_field)[..., None]
    cv.refl += (cv.vamp * 35.0 * grain)[..., None]
    # independent texture in the infrared: temperature does not follow paint
    ir_field = 0.8 * _smooth_noise(rng, h, w, cell) + 0.4 * _smooth_noise(rng, h, w, cell / 5)
    cv.ir += cv.iamp * ir_field


def _night_light(cv: _Canvas, cam: _Camera, rng: np.random.Generator,
                 lamps: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """Per-pixel BGR illumination at night: dim ambient, headlights, street light pools."""
    h, w = cv.mask.shape
    ambient = rng.uniform(0.05, 0.11)
    light = np.empty((h, w, 3), np.float32)
    light[:] = ambient * np.array([rng.uniform(1.0, 1.25), 1.0, rng.uniform(0.75, 0.95)])
    ys = np.arange(h, dtype=np.float32)[:, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    if rng.random() < 0.7:  # own headlights light the road ahead
        t = np.clip((ys - cam.horizon) / (h - cam.horizon), 0.0, 1.0)
        spread = 0.15 * w + 0.45 * w * t
        beam = rng.uniform(0.15, 0.35) * t ** 1.5 * np.exp(-((xs - cam.vx) / spread) ** 2)
        light += beam[..., None] * np.array([0.95, 1.0, 1.05], np.float32)
    for (gx, gy), z in lamps:
        sigma = 4.0 * cam.ppm(z)
        amp = rng.uniform(0.25, 0.5)
        if z > 60.0:  # far pools are too small to matter, and would pile up at the horizon
            continue
        pool = amp * np.exp(
            -((xs - gx) ** 2 + ((ys - gy) * 1.6) ** 2) / (2 * sigma ** 2))
        light += pool[..., None] * np.array([0.45, 0.75, 1.1], np.float32)
    return light


def _visible_sensor(cv: _Canvas, cam: _Camera, night: bool, rng: np.random.Generator,
                    lamps: list[tuple[np.ndarray, float]]) -> np.ndarray:
    h, w = cv.mask.shape
    if night:
        vis = cv.refl * _night_light(cv, cam, rng, lamps) + cv.emis
        vis = vis * rng.uniform(0.8, 1.0) + rng.uniform(3.0, 9.0)  # flat, lifted blacks
        sigma = rng.uniform(3.0, 6.0)
    else:
        tint = rng.uniform(0.94, 1.06, 3).astype(np.float32)
        vis = cv.refl * (rng.uniform(0.85, 1.1) * tint)
        sigma = rng.uniform(1.0, 3.0)
    vis += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(sigma)
    return np.clip(vis + 0.5, 0, 255).astype(np.uint8)


def _infrared_sensor(cv: _Canvas, rng: np.random.Generator, ir_16bit: bool) -> np.ndarray:
    """Soft optics, vignetting, column fixed-pattern and temporal noise."""
    h, w = cv.mask.shape
    scale = max(1.0, min(h, w) / 240.0)
    ir = cv2.GaussianBlur(cv.ir, (0, 0), rng.uniform(0.7, 1.5) * scale)
    ys = (np.arange(h, dtype=np.float32)[:, None] - h / 2) / (h / 2)
    xs = (np.arange(w, dtype=np.float32)[None, :] - w / 2) / (w / 2)
    ir -= rng.uniform(0.0, 8.0) * (xs ** 2 + ys ** 2) / 2
    ir += rng.normal(0.0, rng.uniform(0.8, 2.5), w).astype(np.float32)[None, :]
    ir += rng.standard_normal((h, w), dtype=np.float32) * np.float32(rng.uniform(1.0, 2.5))
    offset = rng.uniform(0.0, 250.0)
    if ir_16bit:
        counts = IR16_BASE + offset + IR16_GAIN * ir
        return np.clip(counts + 0.5, 0, 65535).astype(np.uint16)
    return np.clip(ir + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- public API


def generate_scene(seed: int, height: int = 240, width: int = 320, night: bool | None = None,
                   ir_16bit: bool = False, *,
                   night_hidden_prob: float = NIGHT_HIDDEN_PROB,
                   bicycles: bool = False) -> Scene:
    """A deterministic aligned infrared/visible scene with masks and boxes.

    ``night`` None draws day or night from the seed; forcing it keeps the layout (masks and
    boxes are the same for day and night of one seed). ``night_hidden_prob`` is the chance
    that a target is camouflaged in the visible image at night (1.0: always). ``bicycles``
    adds one or two cyclists (classes ``*_WITH_BICYCLES``: the bicycle is class "bicycle",
    its rider a person); without it the scene is exactly what it always was.
    """
    if height < MIN_SIZE or width < MIN_SIZE:
        raise ValueError(f"scene size {height}x{width} is below {MIN_SIZE}x{MIN_SIZE}")
    if not 0.0 <= night_hidden_prob <= 1.0:
        raise ValueError(f"night_hidden_prob {night_hidden_prob} is not in [0, 1]")
    root = np.random.default_rng(seed)
    coin = bool(root.random() < 0.5)
    is_night = coin if night is None else bool(night)
    # Separate streams: layout never depends on lighting, so day/night pairs share it.
    geo, app, sensor = root.spawn(3)
    cam = _sample_camera(geo, int(height), int(width))
    look = _sample_look(app, is_night)
    cv = _Canvas(int(height), int(width))
    _paint_sky_and_ground(cv, cam, look, app)
    _paint_buildings(cv, cam, look, geo, app)
    _paint_road(cv, cam, look, geo)
    _paint_markings(cv, cam, look, geo)
    props = _place_props(cam, geo)
    targets = _place_targets(cam, geo, bicycles)
    lamps = _paint_props(cv, cam, look, props, app)
    _apply_texture(cv, sensor)
    boxes = _paint_targets(cv, cam, look, targets, app, night_hidden_prob)
    vis = _visible_sensor(cv, cam, is_night, sensor, lamps)
    ir = _infrared_sensor(cv, sensor, ir_16bit)
    return Scene(ir=ir, vis=vis, mask=cv.mask, boxes=boxes, is_night=is_night)


def scene_seed(seed: int, index: int) -> int:
    """Seed of scene ``index`` of a dataset written with ``seed`` (independent streams)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])


def scene_name(index: int, is_night: bool) -> str:
    """File stem as in MSRS: running number plus D (day) or N (night)."""
    return f"{index:06d}{'N' if is_night else 'D'}"


def yolo_lines(boxes: np.ndarray, height: int, width: int) -> list[str]:
    """YOLO label lines ``class cx cy w h`` normalised to [0, 1], 6 decimals."""
    lines = []
    for cls, x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 5):
        lines.append(f"{int(cls)} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} "
                     f"{(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}")
    return lines


def write_dataset(out_dir: str | Path, count: int, seed: int = 0, height: int = 240,
                  width: int = 320, night_fraction: float = 0.5, *,
                  ir_16bit: bool = False, bicycles: bool = False) -> Path:
    """Write ``count`` scenes in the layout of the real detection folder.

    ``ir/`` grey PNG (16-bit when asked), ``vi/`` colour PNG, ``labels/`` YOLO txt, ``masks/``
    class-id PNG, plus ``classes.txt``, ``segmentation_classes.txt`` and ``scenes.csv``
    (name, seed, night) so that any scene can be regenerated. Exactly
    round(count * night_fraction) scenes are night scenes, at seeded positions.
    """
    if count < 0:
        raise ValueError(f"count {count} is negative")
    if not 0.0 <= night_fraction <= 1.0:
        raise ValueError(f"night_fraction {night_fraction} is not in [0, 1]")
    out = Path(out_dir)
    for sub in ("ir", "vi", "labels", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    det_classes = DETECTION_CLASSES_WITH_BICYCLES if bicycles else DETECTION_CLASSES
    seg_classes = SEGMENTATION_CLASSES_WITH_BICYCLES if bicycles else SEGMENTATION_CLASSES
    (out / "classes.txt").write_text("\n".join(det_classes) + "\n")
    (out / "segmentation_classes.txt").write_text("\n".join(seg_classes) + "\n")
    nights = np.random.default_rng(seed).permutation(count) < round(count * night_fraction)
    with open(out / "scenes.csv", "w", newline="") as index_file:
        writer = csv.writer(index_file)
        writer.writerow(["name", "seed", "night"])
        for i in range(count):
            s = scene_seed(seed, i)
            scene = generate_scene(s, height, width, night=bool(nights[i]), ir_16bit=ir_16bit,
                                   bicycles=bicycles)
            name = scene_name(i, scene.is_night)
            for sub, image in (("ir", scene.ir), ("vi", scene.vis), ("masks", scene.mask)):
                if not cv2.imwrite(str(out / sub / f"{name}.png"), image):
                    raise OSError(f"could not write {out / sub / name}.png")
            lines = yolo_lines(scene.boxes, height, width)
            (out / "labels" / f"{name}.txt").write_text("".join(f"{ln}\n" for ln in lines))
            writer.writerow([name, s, int(scene.is_night)])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m tdfusion_ros.scenes --out DIR --count N --seed S``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--count", required=True, type=int, help="number of scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--night-fraction", type=float, default=0.5)
    parser.add_argument("--ir16", action="store_true", help="16-bit radiometric infrared PNGs")
    parser.add_argument("--bicycles", action="store_true",
                        help="add cyclists (class 'bicycle' at the end of both class lists)")
    args = parser.parse_args(argv)
    out = write_dataset(args.out, args.count, args.seed, args.height, args.width,
                        args.night_fraction, ir_16bit=args.ir16, bicycles=args.bicycles)
    print(f"wrote {args.count} scenes to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
