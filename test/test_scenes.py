"""Tests of the procedural infrared/visible scene generator (numpy + OpenCV, no GPU)."""

from __future__ import annotations

import ast
import csv
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from tdfusion_ros.scenes import (
    DETECTION_CLASSES,
    DETECTION_TO_SEGMENTATION,
    SEGMENTATION_CLASSES,
    Scene,
    generate_scene,
    scene_seed,
    write_dataset,
)
from tdfusion_ros.scenes import generator as scenes

SIZE = (120, 160)  # small scenes keep the statistical tests fast
SEEDS = range(40)


def _grey(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    vis = cv2.cvtColor(scene.vis, cv2.COLOR_BGR2GRAY).astype(np.float64)
    return scene.ir.astype(np.float64), vis


def _target_contrasts(scene: Scene) -> list[tuple[float, float]]:
    """(infrared, visible) |mean(target) - mean(surroundings)| per target box.

    Target pixels: mask pixels of the box's class inside the box; surroundings: pixels of no
    target class in the box grown by a quarter of its size.
    """
    ir, vis = _grey(scene)
    h, w = scene.mask.shape
    targets = np.isin(scene.mask, DETECTION_TO_SEGMENTATION)
    out = []
    for cls, x1, y1, x2, y2 in scene.boxes.astype(int):
        inner = np.zeros((h, w), bool)
        inner[y1:y2, x1:x2] = scene.mask[y1:y2, x1:x2] == DETECTION_TO_SEGMENTATION[cls]
        if inner.sum() < 20:
            continue
        mx, my = max(3, (x2 - x1) // 4), max(3, (y2 - y1) // 4)
        ring = np.zeros((h, w), bool)
        ring[max(y1 - my, 0):y2 + my, max(x1 - mx, 0):x2 + mx] = True
        ring &= ~targets
        if ring.sum() < 20:
            continue
        out.append((abs(ir[inner].mean() - ir[ring].mean()),
                    abs(vis[inner].mean() - vis[ring].mean())))
    return out


def test_module_does_not_import_torch() -> None:
    tree = ast.parse(Path(scenes.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] == "torch"]


def test_class_lists() -> None:
    assert SEGMENTATION_CLASSES[:5] == ("background", "road", "person", "car", "marking")
    assert DETECTION_CLASSES == ("person", "car")
    for det, seg in enumerate(DETECTION_TO_SEGMENTATION):
        assert SEGMENTATION_CLASSES[seg] == DETECTION_CLASSES[det]


def test_same_seed_same_scene_other_seed_differs() -> None:
    a, b, c = generate_scene(123), generate_scene(123), generate_scene(124)
    for field in ("ir", "vis", "mask", "boxes"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.is_night == b.is_night
    assert not np.array_equal(a.ir, c.ir)
    assert not np.array_equal(a.vis, c.vis)
    assert not np.array_equal(a.mask, c.mask)


def test_night_flag_changes_light_not_layout() -> None:
    for seed in range(12):
        day, night = generate_scene(seed, *SIZE, night=False), generate_scene(seed, *SIZE,
                                                                            night=True)
        assert not day.is_night and night.is_night
        np.testing.assert_array_equal(day.mask, night.mask)
        np.testing.assert_array_equal(day.boxes, night.boxes)
        assert not np.array_equal(day.vis, night.vis)
    free = [generate_scene(s).is_night for s in range(40)]
    assert 5 < sum(free) < 35  # None draws both


@pytest.mark.parametrize("height,width", [(64, 64), (65, 97), (240, 320), (101, 64), (480, 640)])
def test_shapes_and_dtypes(height: int, width: int) -> None:
    scene = generate_scene(3, height, width)
    assert scene.ir.shape == (height, width) and scene.ir.dtype == np.uint8
    assert scene.vis.shape == (height, width, 3) and scene.vis.dtype == np.uint8
    assert scene.mask.shape == (height, width) and scene.mask.dtype == np.uint8
    assert scene.mask.max() < len(SEGMENTATION_CLASSES)
    assert scene.boxes.ndim == 2 and scene.boxes.shape[1] == 5
    assert scene.boxes.dtype == np.float32 and len(scene.boxes) >= 1
    assert set(scene.boxes[:, 0].astype(int)) <= set(range(len(DETECTION_CLASSES)))
    assert isinstance(scene.is_night, bool)
    assert (scene.height, scene.width) == (height, width)


@pytest.mark.parametrize("height,width", [(63, 320), (240, 10)])
def test_too_small_is_refused(height: int, width: int) -> None:
    with pytest.raises(ValueError):
        generate_scene(0, height, width)


def test_boxes_inside_image_and_on_their_class() -> None:
    counts = np.zeros(len(DETECTION_CLASSES), int)
    for seed in SEEDS:
        scene = generate_scene(seed, *SIZE)
        h, w = SIZE
        for cls, x1, y1, x2, y2 in scene.boxes:
            assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
            assert x1 == int(x1) and y2 == int(y2)  # whole pixels, x2/y2 exclusive
            patch = scene.mask[int(y1):int(y2), int(x1):int(x2)]
            own = patch == DETECTION_TO_SEGMENTATION[int(cls)]
            assert own.any()
            # tight: each border row/column of the box holds a pixel of some target
            targets = np.isin(patch, DETECTION_TO_SEGMENTATION)
            assert targets[0].any() and targets[-1].any()
            assert targets[:, 0].any() and targets[:, -1].any()
            counts[int(cls)] += 1
        # every target pixel lies in a box of its class
        for det, seg in enumerate(DETECTION_TO_SEGMENTATION):
            covered = np.zeros(SIZE, bool)
            for _, x1, y1, x2, y2 in scene.boxes[scene.boxes[:, 0] == det].astype(int):
                covered[y1:y2, x1:x2] = True
            assert not (scene.mask == seg)[~covered].any()
    assert (counts > 10).all(), counts


def test_night_targets_show_in_infrared_not_in_visible() -> None:
    pairs = np.array([c for s in SEEDS for c in _target_contrasts(generate_scene(s, *SIZE,
                                                                                 night=True))])
    ir_c, vis_c = pairs[:, 0], pairs[:, 1]
    assert len(pairs) > 40
    assert np.median(ir_c) > 50
    assert np.median(ir_c) > 5 * np.median(vis_c)
    # with every target camouflaged, each one is far clearer in the infrared
    hidden = np.array([c for s in range(15) for c in _target_contrasts(
        generate_scene(s, *SIZE, night=True, night_hidden_prob=1.0))])
    assert (hidden[:, 0] > 3 * hidden[:, 1]).mean() > 0.9


def test_day_targets_show_in_both() -> None:
    pairs = np.array([c for s in SEEDS for c in _target_contrasts(generate_scene(s, *SIZE,
                                                                                 night=False))])
    assert len(pairs) > 40
    assert np.median(pairs[:, 0]) > 20
    assert np.median(pairs[:, 1]) > 25
    assert (pairs[:, 1] > 8).mean() > 0.8


def _surface_contrast(scene: Scene, cls: int) -> tuple[float, float] | None:
    """Contrast of a visible-only class against the pixels right around it."""
    ir, vis = _grey(scene)
    inner = scene.mask == cls
    if inner.sum() < 30:
        return None
    kernel = np.ones((5, 5), np.uint8)
    near = cv2.dilate(inner.astype(np.uint8), kernel).astype(bool) & ~inner
    targets = np.isin(scene.mask, DETECTION_TO_SEGMENTATION).astype(np.uint8)
    near &= ~cv2.dilate(targets, np.ones((9, 9), np.uint8)).astype(bool)
    if cls == scenes.SEG_MARKING:
        near &= scene.mask == scenes.SEG_ROAD
    # the infrared is blurred: compare it away from the edges, where any leak would show
    core = cv2.erode(inner.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    if near.sum() < 30 or core.sum() < 10:
        return None
    return (abs(ir[core].mean() - ir[near].mean()), abs(vis[inner].mean() - vis[near].mean()))


def test_markings_have_visible_contrast_only() -> None:
    marks = []
    for seed in range(25):
        c = _surface_contrast(generate_scene(seed, 240, 320, night=False), scenes.SEG_MARKING)
        if c is not None:
            marks.append(c)
    marks_a = np.array(marks)
    assert len(marks_a) >= 20
    assert np.median(marks_a[:, 1]) > 40 and marks_a[:, 1].min() > 15
    assert np.median(marks_a[:, 0]) < 2.0 and marks_a[:, 0].max() < 5.0
    # at night too (headlights and street lights keep the paint visible)
    c = _surface_contrast(generate_scene(2, 240, 320, night=True), scenes.SEG_MARKING)
    assert c is not None and c[0] < 3.0 and c[1] > 5.0


@pytest.mark.parametrize("painter,cls", [("_paint_markings", scenes.SEG_MARKING),
                                         ("_paint_sign", scenes.SEG_SIGN)])
def test_visible_only_painters_leave_infrared_alone(
        monkeypatch: pytest.MonkeyPatch, painter: str, cls: int) -> None:
    """Signs and markings change the visible layer and the mask, never the infrared."""
    original = getattr(scenes, painter)
    seen: list[tuple[bool, bool, bool]] = []

    def spy(cv: scenes._Canvas, *args: object) -> None:
        ir, refl, mask = cv.ir.copy(), cv.refl.copy(), cv.mask.copy()
        original(cv, *args)
        changed = cv.mask != mask
        seen.append((np.array_equal(ir, cv.ir), bool((cv.mask[changed] == cls).all()),
                     bool(changed.any() and not np.array_equal(refl, cv.refl))))

    monkeypatch.setattr(scenes, painter, spy)
    for seed in range(12):
        generate_scene(seed, *SIZE)
    assert len(seen) >= 5
    assert all(ir_same for ir_same, _, _ in seen)
    assert all(cls_ok for _, cls_ok, _ in seen)
    assert sum(drawn for _, _, drawn in seen) >= 5


def test_signs_are_colourful_in_the_visible_image() -> None:
    spreads = []
    for seed in range(12):
        scene = generate_scene(seed, 240, 320, night=False)
        sign = scene.mask == scenes.SEG_SIGN
        if sign.sum() >= 30:
            spreads.append(float(scene.vis[sign].astype(np.float64).std()))
    assert len(spreads) >= 3 and np.median(spreads) > 20, spreads


def test_night_visible_is_dark_noisy_but_not_black() -> None:
    day_means, night_means, night_noise, day_noise = [], [], [], []
    for seed in range(10):
        for night, means, noise in ((False, day_means, day_noise),
                                    (True, night_means, night_noise)):
            vis = cv2.cvtColor(generate_scene(seed, *SIZE, night=night).vis,
                               cv2.COLOR_BGR2GRAY).astype(np.float64)
            means.append(vis.mean())
            # noise relative to signal: residual of a small median filter
            smooth = cv2.medianBlur(vis.astype(np.uint8), 3).astype(np.float64)
            noise.append(np.std(vis - smooth) / max(vis.mean(), 1.0))
    assert all(5 < m < 70 for m in night_means), night_means
    assert np.mean(night_means) < 0.5 * np.mean(day_means)
    assert np.median(night_noise) > 2 * np.median(day_noise)


def test_infrared_sensor_is_soft_with_column_noise() -> None:
    """The sensor model on a flat field and a step: column pattern, noise, blur."""
    rng = np.random.default_rng(0)
    canvas = scenes._Canvas(240, 320)
    canvas.ir[:] = 100.0
    canvas.ir[:, 160:] = 200.0
    ir = scenes._infrared_sensor(canvas, rng, ir_16bit=False).astype(np.float64)
    flat = ir[:, 20:140]
    columns = flat - flat.mean(axis=1, keepdims=True)
    # column to column steps (free of the smooth vignetting) repeat in every row
    top, bottom = np.diff(columns[:120].mean(axis=0)), np.diff(columns[120:].mean(axis=0))
    assert np.corrcoef(top, bottom)[0, 1] > 0.7
    assert np.std(flat - flat.mean(axis=0)) > 0.5  # and temporal noise on top
    edge = ir[:, 150:170].mean(axis=0)
    rising = (edge - edge[0]) / (edge[-1] - edge[0])
    assert int(((rising > 0.1) & (rising < 0.9)).sum()) >= 2  # a soft, not a 1-pixel step


def test_infrared_softer_than_visible() -> None:
    def sharpness(img: np.ndarray) -> float:
        img = img.astype(np.float64)
        return float(np.abs(cv2.Laplacian(img, cv2.CV_64F)).mean() / max(img.std(), 1.0))

    for seed in range(3):
        scene = generate_scene(seed, 240, 320, night=False)
        assert sharpness(scene.ir) < sharpness(cv2.cvtColor(scene.vis, cv2.COLOR_BGR2GRAY))


def test_16bit_infrared() -> None:
    scene16 = generate_scene(5, *SIZE, ir_16bit=True)
    scene8 = generate_scene(5, *SIZE)
    assert scene16.ir.dtype == np.uint16 and scene16.ir.shape == SIZE
    assert 6900 <= int(scene16.ir.min()) and int(scene16.ir.max()) <= 9500
    assert int(scene16.ir.max()) - int(scene16.ir.min()) > 500
    np.testing.assert_array_equal(scene16.vis, scene8.vis)
    np.testing.assert_array_equal(scene16.mask, scene8.mask)
    assert np.corrcoef(scene16.ir.ravel(), scene8.ir.ravel())[0, 1] > 0.999


def _read_labels(path: Path) -> np.ndarray:
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        assert len(row) == 5 and all(len(v.split(".")[1]) == 6 for v in row[1:])
    return np.array(rows, np.float64).reshape(-1, 5)


def test_write_dataset_layout_and_labels(tmp_path: Path) -> None:
    h, w = 96, 128
    out = write_dataset(tmp_path / "synth", 6, seed=3, height=h, width=w, night_fraction=0.5)
    assert out == tmp_path / "synth"
    assert (out / "classes.txt").read_text().split() == list(DETECTION_CLASSES)
    assert (out / "segmentation_classes.txt").read_text().split() == list(SEGMENTATION_CLASSES)
    names = sorted(p.stem for p in (out / "ir").glob("*.png"))
    assert len(names) == 6 and [n[:6] for n in names] == [f"{i:06d}" for i in range(6)]
    assert sum(n.endswith("N") for n in names) == 3
    assert all(n[-1] in "DN" and len(n) == 7 for n in names)
    for sub, ext in (("vi", "png"), ("masks", "png"), ("labels", "txt")):
        assert sorted(p.stem for p in (out / sub).glob(f"*.{ext}")) == names
    with open(out / "scenes.csv", newline="") as f:
        index = list(csv.DictReader(f))
    assert [r["name"] for r in index] == names
    for i, row in enumerate(index):
        name = row["name"]
        assert int(row["seed"]) == scene_seed(3, i)
        scene = generate_scene(int(row["seed"]), h, w, night=name.endswith("N"))
        ir = cv2.imread(str(out / "ir" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        vi = cv2.imread(str(out / "vi" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(ir, scene.ir)  # single channel on disk
        np.testing.assert_array_equal(vi, scene.vis)  # imread gives BGR back
        np.testing.assert_array_equal(mask, scene.mask)
        labels = _read_labels(out / "labels" / f"{name}.txt")
        assert labels.shape == scene.boxes.shape
        assert ((labels[:, 1:] >= 0) & (labels[:, 1:] <= 1)).all()
        cls, cx, cy, bw, bh = labels.T
        back = np.stack([cls, (cx - bw / 2) * w, (cy - bh / 2) * h,
                         (cx + bw / 2) * w, (cy + bh / 2) * h], axis=1)
        np.testing.assert_allclose(back, scene.boxes, atol=1e-3)


def test_write_dataset_16bit_and_all_night(tmp_path: Path) -> None:
    out = write_dataset(tmp_path, 2, seed=1, height=64, width=80, night_fraction=1.0,
                        ir_16bit=True)
    for path in sorted((out / "ir").glob("*.png")):
        assert path.stem.endswith("N")
        assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_command_line(tmp_path: Path) -> None:
    assert scenes.main(["--out", str(tmp_path / "cli"), "--count", "2", "--seed", "4",
                        "--height", "64", "--width", "96"]) == 0
    ir = sorted((tmp_path / "cli" / "ir").glob("*.png"))
    assert len(ir) == 2 and cv2.imread(str(ir[0]), cv2.IMREAD_UNCHANGED).shape == (64, 96)


def test_speed() -> None:
    generate_scene(0)
    times = []
    for seed in range(10):
        start = time.perf_counter()
        generate_scene(seed)
        times.append(time.perf_counter() - start)
    assert np.median(times) < 0.05, times


def test_bicycles_add_cyclists_and_leave_other_scenes_alone(tmp_path: Path) -> None:
    """bicycles=True: each cyclist is a bicycle box (class 2, mask "bicycle") with a rider
    (a person box over it, warm in the infrared); without it nothing changes."""
    assert scenes.SEGMENTATION_CLASSES_WITH_BICYCLES == (*SEGMENTATION_CLASSES, "bicycle")
    assert scenes.DETECTION_CLASSES_WITH_BICYCLES == (*DETECTION_CLASSES, "bicycle")
    for det, seg in enumerate(scenes.DETECTION_TO_SEGMENTATION_WITH_BICYCLES):
        assert (scenes.SEGMENTATION_CLASSES_WITH_BICYCLES[seg]
                == scenes.DETECTION_CLASSES_WITH_BICYCLES[det])
    plain = generate_scene(5, *SIZE)
    assert not (plain.mask == scenes.SEG_BICYCLE).any()
    n_bikes = 0
    for seed in range(12):
        day = generate_scene(seed, *SIZE, night=False, bicycles=True)
        night = generate_scene(seed, *SIZE, night=True, bicycles=True)
        np.testing.assert_array_equal(day.boxes, night.boxes)  # layout from the seed alone
        bikes = day.boxes[day.boxes[:, 0] == scenes.DET_BICYCLE].astype(int)
        people = day.boxes[day.boxes[:, 0] == scenes.DET_PERSON].astype(int)
        for _, x1, y1, x2, y2 in bikes:
            n_bikes += 1
            assert (day.mask[y1:y2, x1:x2] == scenes.SEG_BICYCLE).any()
            # a rider: a person box whose centre lies over the bicycle's box
            cx, cy = (people[:, 1] + people[:, 3]) / 2, (people[:, 2] + people[:, 4]) / 2
            assert ((cx >= x1) & (cx <= x2) & (cy >= y1 - (y2 - y1)) & (cy <= y2)).any()
        covered = np.zeros(SIZE, bool)
        for _, x1, y1, x2, y2 in bikes:
            covered[y1:y2, x1:x2] = True
        assert not (day.mask == scenes.SEG_BICYCLE)[~covered].any()
        assert day.mask.max() < len(scenes.SEGMENTATION_CLASSES_WITH_BICYCLES)
    assert n_bikes >= 12
    out = write_dataset(tmp_path / "d", 2, seed=1, height=64, width=80, bicycles=True)
    assert (out / "classes.txt").read_text().split() == ["person", "car", "bicycle"]
    assert (out / "segmentation_classes.txt").read_text().split()[-1] == "bicycle"
