"""Dataset loaders and Algorithm 1 batches: published layouts on small fake trees written here,
the real shared detection folder, generated scenes, determinism and the errors on bad data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tdfusion_ros import scenes
from training import datasets
from training.batches import (
    EpochBatches,
    FusionBatch,
    collate_samples,
    derive_generator,
    meta_subsets,
)
from training.datasets import (
    DatasetError,
    GeneratedScenes,
    Sample,
    m3fd_split,
)
from training.meta_learning import Batch

H, W = 32, 40  # fake image size (rows, columns)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: a second thread only adds contention on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image), path


def _pair(folder_ir: Path, folder_vi: Path, name: str, seed: int, suffix: str = ".png",
          size: tuple[int, int] = (H, W)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ir = rng.integers(0, 256, size, dtype=np.uint8)
    vi = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    _write(folder_ir / f"{name}{suffix}", ir)
    _write(folder_vi / f"{name}{suffix}", vi)
    return ir, vi


def _seg_tree(split_dir: Path, names: list[str], dirs: tuple[str, str, str], classes: int
              ) -> dict[str, np.ndarray]:
    """Pairs and class-id label PNGs; a corner of each label map is 255 (ignore)."""
    labels = {}
    for i, name in enumerate(names):
        _pair(split_dir / dirs[0], split_dir / dirs[1], name, i)
        label = np.random.default_rng(100 + i).integers(0, classes, (H, W), dtype=np.uint8)
        label[:3, :3] = 255
        _write(split_dir / dirs[2] / f"{name}.png", label)
        labels[name] = label
    return labels


def _voc(path: Path, objects: list[tuple[str, int, int, int, int]]) -> None:
    body = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin>"
        f"<ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<annotation><size><width>{W}</width><height>{H}</height><depth>3</depth>"
                    f"</size>{body}</annotation>")


def _yolo_tree(root: Path, names: list[str], lines: dict[str, str]) -> None:
    for i, name in enumerate(names):
        _pair(root / "ir", root / "vi", name, i)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{name}.txt").write_text(lines.get(name, ""))
    (root / "classes.txt").write_text("person\ncar\n")


MSRS_NAMES = ["00001D", "00002N", "00003D"]


# --------------------------------------------------------------------------- layouts


def test_msrs_layout(tmp_path: Path) -> None:
    labels = _seg_tree(tmp_path / "MSRS" / "train", MSRS_NAMES,
                       ("ir", "vi", "Segmentation_labels"), 9)
    ds = datasets.msrs(tmp_path / "MSRS", "train")
    assert ds.names == MSRS_NAMES and len(ds) == 3
    assert ds.task == "segmentation" and ds.task_size == (240, 320)
    assert ds.classes == ("unlabeled", "car", "person", "bike", "curve", "car_stop",
                          "guardrail", "color_cone", "bump")
    s = ds[1]
    assert isinstance(s, Sample) and s.name == "00002N"
    for plane in (s.ir_y, s.vis_y):
        assert plane.dtype == np.float32 and plane.shape == (H, W)
        assert 0.0 <= plane.min() and plane.max() <= 1.0
    ir = cv2.imread(str(tmp_path / "MSRS/train/ir/00002N.png"), cv2.IMREAD_UNCHANGED)
    vi = cv2.imread(str(tmp_path / "MSRS/train/vi/00002N.png")).astype(np.float32) / 255
    np.testing.assert_array_equal(s.ir_y, ir.astype(np.float32) / 255)
    np.testing.assert_allclose(s.vis_y, cv2.cvtColor(vi, cv2.COLOR_BGR2YCrCb)[..., 0], atol=1e-6)
    assert s.target.dtype == np.int64
    np.testing.assert_array_equal(s.target, labels["00002N"])
    assert ds[-1].name == "00003D"
    with pytest.raises(IndexError):
        ds[3]
    # the official TDFusion code's folder name for the labels is accepted too
    (tmp_path / "MSRS/train/Segmentation_labels").rename(tmp_path / "MSRS/train/label")
    assert datasets.msrs(tmp_path / "MSRS", "train").names == MSRS_NAMES


def test_fmb_layout(tmp_path: Path) -> None:
    labels = _seg_tree(tmp_path / "FMB" / "test", ["a", "b"], ("Infrared", "Visible", "Label"),
                       15)
    ds = datasets.fmb(tmp_path / "FMB", "test")
    assert len(ds.classes) == 15 and ds.classes[0] == "unlabeled" and ds.classes[14] == "pole"
    assert ds.task_size == (300, 400)
    np.testing.assert_array_equal(ds[1].target, labels["b"])
    with pytest.raises(DatasetError, match="train"):
        datasets.fmb(tmp_path / "FMB", "train")


def _m3fd_tree(root: Path, n: int) -> list[str]:
    names = [f"{i:05d}" for i in range(n)]
    for i, name in enumerate(names):
        _pair(root / "Ir", root / "Vis", name, i)
        _voc(root / "Annotation" / f"{name}.xml",
             [("People", 1, 2, 10, 20), ("car", 5, 5, 40, 32), ("Lamp", 39, 1, 60, 9)])
    return names


def test_m3fd_layout_and_deterministic_split(tmp_path: Path) -> None:
    names = _m3fd_tree(tmp_path / "M3FD", 8)
    train, test = (datasets.m3fd(tmp_path / "M3FD", s) for s in ("train", "test"))
    assert (len(train), len(test)) == (6, 2)  # 3:1 as 3150:1050
    assert set(train.names).isdisjoint(test.names)
    assert sorted(train.names + test.names) == names
    fusion = datasets.m3fd(tmp_path / "M3FD", "fusion_eval")
    assert set(fusion.names) <= set(test.names) and len(fusion) == 2
    assert datasets.m3fd(tmp_path / "M3FD", "test").names == test.names  # deterministic
    assert test.task == "detection" and test.task_size == (192, 256)
    # VOC is 1-based inclusive: xmin 1 -> x1 0; xmax stays; a box past the edge is clipped
    np.testing.assert_allclose(test[0].target, [[0, 0, 1, 10, 20], [1, 4, 4, 40, 32],
                                                [3, 38, 0, 40, 9]])


def test_m3fd_official_split_lists_are_used(tmp_path: Path) -> None:
    _m3fd_tree(tmp_path / "M3FD", 5)
    (tmp_path / "M3FD" / "M3FD_train.txt").write_text("00000.png 1,2,3,4,0\n00003.png\n")
    (tmp_path / "M3FD" / "M3FD_test.txt").write_text("00004.png 1,1,5,5,1\n00001.png\n")
    assert datasets.m3fd(tmp_path / "M3FD", "train").names == ["00000", "00003"]
    assert datasets.m3fd(tmp_path / "M3FD", "test").names == ["00004", "00001"]
    (tmp_path / "M3FD" / "M3FD_test.txt").write_text("00009.png\n")
    with pytest.raises(DatasetError, match="00009"):
        datasets.m3fd(tmp_path / "M3FD", "test")


def test_m3fd_split_sizes_of_the_full_dataset() -> None:
    names = [f"{i:05d}" for i in range(4200)]
    train, test, fusion = (m3fd_split(names, s) for s in ("train", "test", "fusion_eval"))
    assert (len(train), len(test), len(fusion)) == (3150, 1050, 300)
    assert set(train).isdisjoint(test) and set(fusion) <= set(test)
    assert m3fd_split(names, "test", seed=1) != test


def test_llvip_every_tenth_image(tmp_path: Path) -> None:
    root = tmp_path / "LLVIP"
    train = [f"{10001 + i:06d}" for i in range(25)]
    test = [f"{200001 + i:06d}" for i in range(12)]
    for split, names in (("train", train), ("test", test)):
        for i, name in enumerate(names):
            _pair(root / "infrared" / split, root / "visible" / split, name, i, ".jpg")
            _voc(root / "Annotations" / f"{name}.xml", [("person", 3, 4, 13, 30)])
    ds = datasets.llvip(root, "train")
    assert ds.names == ["010001", "010011", "010021"]
    assert datasets.llvip(root, "test").names == ["200001", "200011"]
    assert datasets.llvip(root, "train", every=1).names == train
    assert ds.classes == ("person",) and ds.task_size == (256, 320)
    np.testing.assert_allclose(ds[0].target, [[0, 2, 3, 13, 30]])


def test_yolo_folder_layout(tmp_path: Path) -> None:
    _yolo_tree(tmp_path / "det", ["a", "b"], {"a": "1 0.5 0.5 0.25 0.5\n\n0 0.1 0.1 0.2 0.2\n"})
    ds = datasets.pair_folder(tmp_path / "det")
    assert ds.classes == ("person", "car") and ds.task == "detection"
    a = ds[0].target
    assert a.dtype == np.float32
    # cx 20, cy 16, w 10, h 16 px; the second box is clipped at the image corner
    np.testing.assert_allclose(a, [[1, 15, 8, 25, 24], [0, 0, 0, 8, 6.4]], atol=1e-5)
    assert ds[1].target.shape == (0, 5)  # empty file: no objects


# --------------------------------------------------------------------------- real data


def test_real_det_folder(shared_data: Path) -> None:
    ds = datasets.pair_folder(shared_data / "det")
    assert len(ds) == 46 and ds.classes == ("person", "bicycle", "car")
    counts = np.zeros(3, int)
    for f in ds.files:  # labels only: every box survives the conversion and the clipping
        boxes = datasets.read_yolo_boxes(f.label, (480, 640), 3)
        counts += np.bincount(boxes[:, 0].astype(int), minlength=3)
    assert counts.tolist() == [126, 16, 64]  # SOURCES.md, det/labels

    s = ds[ds.names.index("00055D")]
    assert s.ir_y.shape == s.vis_y.shape == (480, 640)
    batch = collate_samples([s], torch.Generator().manual_seed(0), ds.task, ds.task_size)
    # By hand, first line "0 0.834052 0.505388 0.067349 0.258621" of a 640x480 image:
    # x1 = (0.834052 - 0.067349 / 2) * 640 = 512.2416 -> x 320/640 = 256.1208
    # y1 = (0.505388 - 0.258621 / 2) * 480 = 180.5173 -> x 240/480 = 90.2586
    # x2 = (0.834052 + 0.067349 / 2) * 640 = 555.3450 -> 277.6725
    # y2 = (0.505388 + 0.258621 / 2) * 480 = 304.6553 -> 152.3276
    assert len(batch.boxes[0]) == 3
    np.testing.assert_allclose(batch.boxes[0][0].numpy(),
                               [0, 256.1208, 90.2586, 277.6725, 152.3276], atol=2e-4)
    # ultralytics' targets are normalised to the task image: the file's numbers again
    np.testing.assert_allclose(batch.targets["bboxes"][0].numpy(),
                               [0.834052, 0.505388, 0.067349, 0.258621], atol=1e-6)
    assert batch.targets["cls"][:, 0].tolist() == [0.0, 0.0, 2.0]
    assert batch.targets["batch_idx"].tolist() == [0.0, 0.0, 0.0]
    # halving by area averaging: a task pixel is the mean of its 2x2 source block
    assert batch.ir_task.shape == (1, 1, 240, 320)
    assert float(batch.ir_task[0, 0, 5, 7]) == pytest.approx(
        float(s.ir_y[10:12, 14:16].mean()), abs=1e-6)


def test_real_det_batch_feeds_yolo_loss(shared_data: Path) -> None:
    """The batch format is the one DetectionTask's ultralytics loss takes."""
    from training.task_networks import DetectionTask

    ds = datasets.pair_folder(shared_data / "det")
    batch = collate_samples([ds[0], ds[1]], torch.Generator().manual_seed(0), ds.task,
                            ds.task_size)
    torch.manual_seed(0)
    task = DetectionTask(num_classes=3, input_size=ds.task_size)
    loss = task.loss(batch.vis_task, batch.targets)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0


# --------------------------------------------------------------------------- generated scenes


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_generated_scenes_equal_a_written_folder(tmp_path: Path, task: str) -> None:
    scenes.write_dataset(tmp_path / "sc", 3, seed=7, height=64, width=80)
    live = GeneratedScenes(3, task, seed=7, height=64, width=80)
    disk = datasets.scene_folder(tmp_path / "sc", task, task_size=(64, 80))
    assert live.names == disk.names and live.classes == disk.classes
    assert live.task_size == disk.task_size == (64, 80)
    for a, b in zip(live, disk):
        np.testing.assert_array_equal(a.ir_y, b.ir_y)
        np.testing.assert_array_equal(a.vis_y, b.vis_y)
        if task == "segmentation":
            assert a.target.dtype == np.int64 and a.target.shape == (64, 80)
            np.testing.assert_array_equal(a.target, b.target)
        else:
            assert a.target.shape[0] > 0
            np.testing.assert_allclose(a.target, b.target, atol=1e-3)  # 6-decimal txt


# --------------------------------------------------------------------------- batches


@pytest.fixture
def seg_dataset(tmp_path: Path) -> datasets.FileDataset:
    _seg_tree(tmp_path / "MSRS" / "train", MSRS_NAMES, ("ir", "vi", "Segmentation_labels"), 9)
    return datasets.msrs(tmp_path / "MSRS", "train")


def test_collate_segmentation_shapes_and_padding(seg_dataset) -> None:
    samples = [seg_dataset[0], seg_dataset[1]]
    batch = collate_samples(samples, torch.Generator().manual_seed(0), seg_dataset.task,
                            seg_dataset.task_size)
    assert isinstance(batch, Batch) and isinstance(batch, FusionBatch)
    assert batch.names == ("00001D", "00002N") and batch.boxes is None
    for t in (batch.ir_crop, batch.vis_crop):
        assert t.shape == (2, 1, 256, 256) and t.dtype == torch.float32
    for t in (batch.ir_task, batch.vis_task):
        assert t.shape == (2, 1, 240, 320) and t.dtype == torch.float32
    assert batch.targets.shape == (2, 240, 320) and batch.targets.dtype == torch.int64
    s = samples[1]
    # the 32x40 image is smaller than the crop: used whole at the top left, mirrored beyond
    np.testing.assert_array_equal(batch.ir_crop[1, 0, :H, :W].numpy(), s.ir_y)
    np.testing.assert_array_equal(batch.vis_crop[1, 0, H:2 * H, :W].numpy(), s.vis_y[::-1])
    np.testing.assert_array_equal(batch.ir_crop[1, 0, :H, W:2 * W].numpy(), s.ir_y[:, ::-1])
    # nearest-neighbour labels: no new values, the ignore corner stays ignore
    assert set(batch.targets[1].unique().tolist()) <= set(np.unique(s.target).tolist())
    assert int(batch.targets[1, 0, 0]) == 255
    moved = batch.to("cpu")
    assert isinstance(moved, FusionBatch) and torch.equal(moved.targets, batch.targets)


def _window(image: np.ndarray, crop: np.ndarray) -> tuple[int, int]:
    size = crop.shape[0]
    for top in range(image.shape[0] - size + 1):
        for left in range(image.shape[1] - size + 1):
            if np.array_equal(image[top:top + size, left:left + size], crop):
                return top, left
    raise AssertionError("crop is no window of the image")


def test_collate_crops_the_same_window_of_both_images(seg_dataset) -> None:
    samples = list(seg_dataset)
    batch = collate_samples(samples, np.random.default_rng(3), "segmentation", (24, 20),
                            crop_size=16)
    assert batch.ir_crop.shape == (3, 1, 16, 16) and batch.targets.shape == (3, 24, 20)
    windows = []
    for i, s in enumerate(samples):
        window = _window(s.ir_y, batch.ir_crop[i, 0].numpy())
        vis = s.vis_y[window[0]:window[0] + 16, window[1]:window[1] + 16]
        np.testing.assert_array_equal(batch.vis_crop[i, 0].numpy(), vis)
        windows.append(window)
    assert len(set(windows)) > 1  # random positions, not a fixed corner


def test_collate_is_deterministic_given_the_seed(seg_dataset) -> None:
    samples = list(seg_dataset)

    def crops(gen) -> torch.Tensor:
        return collate_samples(samples, gen, "segmentation", (24, 20), crop_size=16).ir_crop

    for make in (lambda s: torch.Generator().manual_seed(s), np.random.default_rng):
        assert torch.equal(crops(make(5)), crops(make(5)))
        assert not torch.equal(crops(make(5)), crops(make(6)))
    with pytest.raises(TypeError, match="generator"):
        crops(5)


def test_detection_collate_targets(tmp_path: Path) -> None:
    _yolo_tree(tmp_path / "det", ["a", "b", "c"],
               {"a": "1 0.5 0.5 0.25 0.5\n", "c": "0 0.25 0.5 0.5 0.5\n1 0.5 0.5 1 1\n"})
    ds = datasets.pair_folder(tmp_path / "det", task_size=(64, 96))
    batch = collate_samples(list(ds), torch.Generator().manual_seed(0), ds.task, ds.task_size)
    t = batch.targets
    assert t["batch_idx"].tolist() == [0.0, 2.0, 2.0]
    assert t["cls"].shape == (3, 1) and t["cls"].dtype == torch.float32
    assert t["bboxes"].shape == (3, 4) and t["bboxes"].dtype == torch.float32
    np.testing.assert_allclose(t["bboxes"].numpy(), [[0.5, 0.5, 0.25, 0.5], [0.25, 0.5, 0.5, 0.5],
                                                     [0.5, 0.5, 1.0, 1.0]], atol=1e-6)
    # pixel boxes scaled with the image: 40x32 -> 96x64 (x 2.4, y 2)
    np.testing.assert_allclose(batch.boxes[0].numpy(), [[1, 36, 16, 60, 48]], atol=1e-4)
    assert batch.boxes[1].shape == (0, 5)


def test_epoch_batches_resume_and_workers(seg_dataset) -> None:
    def epoch(**kw) -> list[FusionBatch]:
        return list(EpochBatches(seg_dataset, [2, 0, 1, 2, 1], 2, seed=11, keys=(4, 1),
                                 crop_size=16, **kw))

    full = epoch()
    assert [b.names for b in full] == [("00003D", "00001D"), ("00002N", "00003D"), ("00002N",)]
    assert len(epoch(drop_last=True)) == 2
    resumed = epoch(start=1)
    for a, b in zip(full[1:], resumed, strict=True):
        assert torch.equal(a.ir_crop, b.ir_crop) and torch.equal(a.targets, b.targets)
    loader = DataLoader(EpochBatches(seg_dataset, [2, 0, 1, 2, 1], 2, seed=11, keys=(4, 1),
                                     crop_size=16), batch_size=None, num_workers=2)
    for a, b in zip(full, loader, strict=True):
        assert isinstance(b, FusionBatch) and torch.equal(a.vis_crop, b.vis_crop)
    other = list(EpochBatches(seg_dataset, [2, 0, 1, 2, 1], 2, seed=11, keys=(5, 1),
                              crop_size=16))
    assert not torch.equal(full[0].ir_crop, other[0].ir_crop)


def test_derive_generator_streams() -> None:
    def draw(*keys: int) -> list[int]:
        return torch.randint(1000, (5,), generator=derive_generator(*keys)).tolist()

    assert draw(0, 1, 2) == draw(0, 1, 2)
    assert len({tuple(draw(0, 1, k)) for k in range(5)}) == 5


def test_meta_subsets_are_disjoint() -> None:
    train, test = meta_subsets(1000, torch.Generator().manual_seed(0))
    assert len(train) == len(test) == 200
    assert len(set(train)) == 200 and set(train).isdisjoint(test)
    assert all(0 <= i < 1000 for i in train + test)
    assert (train, test) == meta_subsets(1000, torch.Generator().manual_seed(0))
    assert train != meta_subsets(1000, torch.Generator().manual_seed(1))[0]
    small = meta_subsets(7, np.random.default_rng(0))  # fewer than 2M: n // 2 each
    assert len(small[0]) == len(small[1]) == 3 and set(small[0]).isdisjoint(small[1])
    assert len(meta_subsets(10, np.random.default_rng(0), size=4)[1]) == 4
    with pytest.raises(ValueError, match="at least 2"):
        meta_subsets(1, np.random.default_rng(0))


def test_build_dataset_by_name(tmp_path: Path) -> None:
    ds = datasets.build_dataset("scenes", count=2, task="segmentation", height=64, width=64)
    assert len(ds) == 2 and ds.task == "segmentation"
    with pytest.raises(ValueError, match="known: fmb"):
        datasets.build_dataset("kitti")


# --------------------------------------------------------------------------- bad inputs


def test_missing_folders_are_named(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        datasets.msrs(tmp_path / "nowhere")
    _seg_tree(tmp_path / "MSRS" / "train", ["x"], ("ir", "vi", "Segmentation_labels"), 9)
    (tmp_path / "MSRS/train/vi/x.png").unlink()
    (tmp_path / "MSRS/train/vi").rmdir()
    with pytest.raises(DatasetError, match=r"no visible folder \(looked for vi\)"):
        datasets.msrs(tmp_path / "MSRS")
    with pytest.raises(DatasetError, match="Annotation"):
        _pair(tmp_path / "M3FD/Ir", tmp_path / "M3FD/Vis", "00000", 0)
        datasets.m3fd(tmp_path / "M3FD")
    _yolo_tree(tmp_path / "det", ["a"], {})
    (tmp_path / "det" / "classes.txt").unlink()
    with pytest.raises(DatasetError, match="classes.txt"):
        datasets.pair_folder(tmp_path / "det")


def test_unpaired_names_are_listed(tmp_path: Path) -> None:
    _seg_tree(tmp_path / "MSRS" / "train", MSRS_NAMES, ("ir", "vi", "Segmentation_labels"), 9)
    (tmp_path / "MSRS/train/vi/00002N.png").unlink()
    (tmp_path / "MSRS/train/Segmentation_labels/00003D.png").unlink()
    with pytest.raises(DatasetError, match="unpaired") as err:
        datasets.msrs(tmp_path / "MSRS")
    assert "00002N" in str(err.value) and "00003D" in str(err.value)
    assert "00001D" not in str(err.value)


def test_missing_yolo_labels(tmp_path: Path) -> None:
    _yolo_tree(tmp_path / "det", ["a", "b"], {})
    (tmp_path / "det/labels/b.txt").unlink()
    with pytest.raises(DatasetError, match="no label file.*: b"):
        datasets.pair_folder(tmp_path / "det")
    ds = datasets.pair_folder(tmp_path / "det", allow_missing_labels=True)
    assert ds[1].target.shape == (0, 5)


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    _seg_tree(tmp_path / "MSRS" / "train", ["x"], ("ir", "vi", "Segmentation_labels"), 9)
    _write(tmp_path / "MSRS/train/vi/x.png", np.zeros((H, W + 1, 3), np.uint8))
    ds = datasets.msrs(tmp_path / "MSRS")
    with pytest.raises(DatasetError, match=r"size mismatch.*ir/x\.png.*vi/x\.png"):
        ds[0]


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    _seg_tree(tmp_path / "MSRS" / "train", ["x", "y"], ("ir", "vi", "Segmentation_labels"), 9)
    (tmp_path / "MSRS/train/ir/y.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    ds = datasets.msrs(tmp_path / "MSRS")
    ds[0]
    with pytest.raises(DatasetError, match=r"ir/y\.png: not a readable image"):
        ds[1]
    with pytest.raises(DatasetError, match=r"(?s)1 bad sample.*ir/y\.png"):
        ds.validate()


def test_bad_label_maps_are_named(tmp_path: Path) -> None:
    labels = _seg_tree(tmp_path / "FMB" / "train", ["p", "q", "r"],
                       ("Infrared", "Visible", "Label"), 15)
    bad = labels["p"].copy()
    bad[5, 5] = 15
    _write(tmp_path / "FMB/train/Label/p.png", bad)
    _write(tmp_path / "FMB/train/Label/q.png", np.zeros((H + 2, W), np.uint8))
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 2] = 200
    _write(tmp_path / "FMB/train/Label/r.png", colour)
    ds = datasets.fmb(tmp_path / "FMB")
    with pytest.raises(DatasetError, match=r"Label/p\.png: class ids 15 are outside 0\.\.14"):
        ds[0]
    with pytest.raises(DatasetError, match=r"Label/q\.png: label map is 40x34"):
        ds[1]
    with pytest.raises(DatasetError, match=r"Label/r\.png: a colour image"):
        ds[2]


@pytest.mark.parametrize(("text", "message"), [
    ("0 0.5 0.5 0.1 0.1\n1 0.5 0.5 0.1\n", r"a\.txt:2: expected 5 fields"),
    ("2 0.5 0.5 0.1 0.1\n", r"a\.txt:1: class 2 is not an id in 0\.\.1"),
    ("0 0.5 half 0.1 0.1\n", r"a\.txt:1: non-numeric"),
    ("0 12 40 30 30\n", r"a\.txt:1: box .* not normalised"),
])
def test_bad_yolo_lines_are_named(tmp_path: Path, text: str, message: str) -> None:
    _yolo_tree(tmp_path / "det", ["a"], {"a": text})
    with pytest.raises(DatasetError, match=message):
        datasets.pair_folder(tmp_path / "det")[0]


def test_bad_voc_files_are_named(tmp_path: Path) -> None:
    root = tmp_path / "M3FD"
    _m3fd_tree(root, 3)
    _voc(root / "Annotation/00001.xml", [("Tram", 1, 1, 5, 5)])
    (root / "Annotation/00002.xml").write_text("<annotation><object><name>Car</name>")
    ds = datasets.m3fd(root, "all")
    with pytest.raises(DatasetError, match=r"00001\.xml: object class 'Tram'"):
        ds[1]
    with pytest.raises(DatasetError, match=r"00002\.xml: not a valid VOC XML"):
        ds[2]
    _voc(root / "Annotation/00002.xml", [("Car", 1, 1, "x", 5)])  # type: ignore[list-item]
    with pytest.raises(DatasetError, match=r"00002\.xml: object 'Car' has no numeric bndbox"):
        ds[2]
