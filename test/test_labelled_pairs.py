"""The default model's data: the labelled MSRS folders, the recorded split, scenes mixed in."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from training.batches import collate_samples
from training.config import load_config
from training.datasets import DatasetError
from training.labelled_pairs import day_night_split, labelled_pairs

REPO = Path(__file__).resolve().parents[1]
MFNET = ("unlabeled", "car", "person", "bike", "curve", "car_stop", "guardrail", "color_cone",
         "bump")


@pytest.fixture(scope="module")
def roots(shared_data: Path) -> list[Path]:
    return [shared_data / "msrs_det", shared_data / "det"]


@pytest.fixture(scope="module")
def val_names() -> list[str]:
    return load_config(REPO / "config" / "train_default.yaml").data.options["val_names"]


def test_recorded_split_is_the_seeded_day_night_split(roots, val_names) -> None:
    every = sorted(p.stem for r in roots for p in (r / "ir").glob("*.png"))
    train, val = day_night_split(every, 0.15, seed=0)
    assert val == sorted(val_names)
    assert not set(train) & set(val) and len(train) + len(val) == len(every) == 308
    day, night = sum(n.endswith("D") for n in val), sum(n.endswith("N") for n in val)
    assert abs(day - night) <= 1 and day + night == 47
    assert day_night_split(list(reversed(every)), 0.15, seed=0) == (train, val)
    assert day_night_split(every, 0.15, seed=1)[1] != val


def test_detection_split_shapes_classes_and_boxes(roots, val_names) -> None:
    train = labelled_pairs(roots, "detection", split="train", val_names=val_names)
    val = labelled_pairs(roots, "detection", split="val", val_names=val_names)
    assert train.classes == val.classes == ("person", "bicycle", "car")
    assert (len(train), len(val)) == (261, 47)
    assert not set(train.names) & set(val.names)
    sample = val[val.names.index("00008N")]
    assert sample.ir_y.shape == sample.vis_y.shape == (480, 640)
    assert sample.ir_y.dtype == np.float32 and 0 <= sample.ir_y.min() <= sample.ir_y.max() <= 1
    boxes = sample.target
    lines = (roots[1] / "labels" / "00008N.txt").read_text().split("\n")
    assert boxes.shape == (len([x for x in lines if x.strip()]), 5)
    assert set(boxes[:, 0].astype(int)) <= {0, 1, 2}
    first = [float(v) for v in lines[0].split()]
    cx, cy = (boxes[0, 1] + boxes[0, 3]) / 2 / 640, (boxes[0, 2] + boxes[0, 4]) / 2 / 480
    assert boxes[0, 0] == first[0] and cx == pytest.approx(first[1], abs=1e-4)
    assert cy == pytest.approx(first[2], abs=1e-4)


def test_segmentation_uses_only_pairs_with_maps(roots, val_names) -> None:
    train = labelled_pairs(roots, "segmentation", split="train", val_names=val_names)
    val = labelled_pairs(roots, "segmentation", split="val", val_names=val_names)
    assert train.classes == MFNET
    # det/ has maps for its 34 MSRS-test pairs only: 262 + 34 pairs have maps
    assert len(train) + len(val) == 296 and set(val.names) <= set(val_names)
    sample = val[0]
    assert sample.target.shape == (480, 640) and sample.target.dtype == np.int64
    assert set(np.unique(sample.target)) <= set(range(9))


def test_generated_scenes_join_training_with_msrs_classes(roots, val_names) -> None:
    det = labelled_pairs(roots, "detection", split="train", val_names=val_names,
                         scenes_count=3, scenes_size=(240, 320))
    assert len(det) == 264 and det.names[-1].startswith("scene_")
    boxes = np.concatenate([det[i].target for i in range(261, 264)])
    assert len(boxes) and set(boxes[:, 0].astype(int)) <= {0, 2}  # person, car; no bicycle
    seg = labelled_pairs(roots, "segmentation", split="train", val_names=val_names,
                         scenes_count=3, scenes_size=(240, 320))
    maps = np.stack([seg[i].target for i in range(len(seg) - 3, len(seg))])
    assert set(np.unique(maps)) <= {0, 1, 2} and {1, 2} & set(np.unique(maps))
    val = labelled_pairs(roots, "detection", split="val", val_names=val_names, scenes_count=3)
    assert len(val) == 47  # never in validation
    batch = collate_samples([det[0], det[263]], np.random.default_rng(0), "detection",
                            (240, 320), 128)
    assert batch.ir_task.shape == (2, 1, 240, 320)


def _copy_root(src: Path, dst: Path, names: list[str]) -> Path:
    for sub, ext in (("ir", ".png"), ("vi", ".png"), ("labels", ".txt"), ("seg", ".png")):
        (dst / sub).mkdir(parents=True)
        for n in names:
            shutil.copy(src / sub / f"{n}{ext}", dst / sub / f"{n}{ext}")
    for f in ("classes.txt", "seg_classes.txt"):
        shutil.copy(src / f, dst / f)
    return dst


def test_missing_and_mismatched_files_are_named(tmp_path, roots) -> None:
    names = sorted(p.stem for p in (roots[0] / "ir").glob("*.png"))[:4]
    root = _copy_root(roots[0], tmp_path / "a", names)
    (root / "labels" / f"{names[0]}.txt").unlink()
    with pytest.raises(DatasetError, match=f"no label file.*{names[0]}"):
        labelled_pairs([root], "detection", split="all")
    (root / "vi" / f"{names[1]}.png").unlink()
    with pytest.raises(DatasetError, match=f"no image in .*vi.*{names[1]}"):
        labelled_pairs([root], "segmentation", split="all")
    other = _copy_root(roots[0], tmp_path / "b", names[2:3])
    (other / "classes.txt").write_text("person\ncar\n")
    ok = _copy_root(roots[0], tmp_path / "c", names[3:4])
    with pytest.raises(DatasetError, match="classes"):
        labelled_pairs([ok, other], "detection", split="all")
    dup = _copy_root(roots[0], tmp_path / "d", names[3:4])
    with pytest.raises(DatasetError, match="in two roots"):
        labelled_pairs([ok, dup], "detection", split="all")
    small = _copy_root(roots[0], tmp_path / "e", names[2:3])
    import cv2

    cv2.imwrite(str(small / "seg" / f"{names[2]}.png"), np.zeros((10, 10), np.uint8))
    dataset = labelled_pairs([small], "segmentation", split="all")
    with pytest.raises(DatasetError, match="label map is 10x10"):
        dataset[0]
    with pytest.raises(DatasetError, match="folder not found"):
        labelled_pairs([tmp_path / "nowhere"], "detection")
