"""The bag builder: real rosbag2 files that rclpy reads back, with the timing they claim.

Bags are read here with rosbags' plain reader and rclpy's deserializer (not with our own
bag_reader), so these tests check the files, not one module against itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import Reader
from sensor_msgs.msg import CompressedImage, Image

from tdfusion_ros.bags.builder import (
    LABELS_FILE,
    BagBuildError,
    TimingConfig,
    build_from_pairs,
    build_from_scenes,
    find_labels,
    load_labels,
    load_segmentation,
    main,
)
from tdfusion_ros.ros.ros_image import stamp_to_ns
from tdfusion_ros.runtime.pairing import Pairer, PairingConfig
from tdfusion_ros.scenes import SEGMENTATION_CLASSES, generate_scene, scene_seed

MS = 1_000_000


def read_bag(path: Path) -> list[tuple[str, int, bytes, object]]:
    """(topic, bag timestamp, CDR bytes, rclpy message) in storage order."""
    classes = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage}
    out = []
    with Reader(path) as reader:
        for conn, timestamp, data in reader.messages():
            out.append((conn.topic, timestamp, bytes(data),
                        deserialize_message(bytes(data), classes[conn.msgtype])))
    return out


def pixels(msg: Image) -> np.ndarray:
    dtype = np.uint16 if msg.encoding == "mono16" else np.uint8
    channels = {"mono8": 1, "mono16": 1, "rgb8": 3, "bgr8": 3}[msg.encoding]
    arr = np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width, channels)
    return arr[:, :, 0] if channels == 1 else arr


def yolo_boxes(path: Path, width: int, height: int) -> list[list[float]]:
    rows = []
    for line in path.read_text().split("\n"):
        if line.strip():
            c, cx, cy, w, h = (float(v) for v in line.split())
            rows.append([c, (cx - w / 2) * width, (cy - h / 2) * height,
                         (cx + w / 2) * width, (cy + h / 2) * height])
    return rows


# --------------------------------------------------------------------------- real pairs
@pytest.fixture(scope="module")
def pairs_bag(tmp_path_factory, shared_data):
    config = TimingConfig(thermal_rate_hz=9, rgb_rate_hz=30, thermal_offset_ms=40, jitter_ms=3,
                          seed=5)
    out = tmp_path_factory.mktemp("pairs") / "bag"
    return build_from_pairs(shared_data / "det", out, config, labels=True, limit=4)


def test_pairs_bag_round_trips_through_rclpy(pairs_bag, shared_data):
    det = shared_data / "det"
    names = sorted(p.stem for p in (det / "ir").glob("*.png"))[:4]
    messages = read_bag(pairs_bag.path)
    written = [f for f in pairs_bag.frames if not f.dropped]
    assert len(messages) == len(written) == pairs_bag.messages
    assert [m[1] for m in messages] == sorted(m[1] for m in messages)  # receive order
    topics = {"thermal": "/thermal/image_raw", "rgb": "/rgb/image_raw"}
    for (topic, receive, _, msg), frame in zip(messages, written, strict=True):
        assert topic == topics[frame.camera]
        assert receive == frame.receive_ns > stamp_to_ns(msg.header.stamp) == frame.stamp_ns
        name = names[frame.scene_index]
        if frame.camera == "thermal":
            assert (msg.encoding, msg.header.frame_id) == ("mono8", "thermal_optical_frame")
            np.testing.assert_array_equal(pixels(msg), cv2.imread(str(det / "ir" / f"{name}.png"),
                                                                  cv2.IMREAD_GRAYSCALE))
        else:
            assert (msg.encoding, msg.header.frame_id) == ("rgb8", "rgb_optical_frame")
            np.testing.assert_array_equal(pixels(msg)[:, :, ::-1],
                                          cv2.imread(str(det / "vi" / f"{name}.png")))
    counts = pairs_bag.counts
    # 4 scenes at 9 Hz (centred on k/9 s): RGB frames j/30 s with round(j * 0.3) <= 3
    assert counts["thermal"].written == 4 and counts["rgb"].written == 12
    info = yaml.safe_load((pairs_bag.path / "metadata.yaml").read_text())
    meta = json.loads(info["rosbag2_bagfile_information"]["custom_data"]
                      ["tdfusion_ros.bag_builder"])
    assert meta["counts"]["rgb"]["written"] == 12
    assert meta["pairing_thermal_offset_ns"] == -40 * MS


def test_sidecar_labels_are_keyed_by_rgb_stamps_and_match_the_source(pairs_bag, shared_data):
    det = shared_data / "det"
    assert find_labels(pairs_bag.path) == pairs_bag.path / LABELS_FILE
    labels = load_labels(pairs_bag.path)
    assert labels.classes == (det / "classes.txt").read_text().split()
    assert labels.image_size == (640, 480) and labels.rgb_topic == "/rgb/image_raw"
    rgb = {stamp_to_ns(m.header.stamp): m for t, _, _, m in read_bag(pairs_bag.path)
           if t == "/rgb/image_raw"}
    assert set(labels.boxes) == set(rgb)
    for stamp, boxes in labels.boxes.items():
        name = labels.sources[stamp]
        # the labels belong to the image carried by that stamp
        np.testing.assert_array_equal(pixels(rgb[stamp])[:, :, ::-1],
                                      cv2.imread(str(det / "vi" / f"{name}.png")))
        expected = yolo_boxes(det / "labels" / f"{name}.txt", 640, 480)
        assert len(expected) > 0
        np.testing.assert_allclose(boxes, expected, atol=1e-3)
    raw = json.loads((pairs_bag.path / LABELS_FILE).read_text())
    first = next(iter(raw["labels"].values()))["boxes"][0]
    assert first["class"] == labels.classes[first["class_id"]]


def test_pairs_resized_as_16bit_counts_with_scaled_labels(tmp_path, shared_data):
    det = shared_data / "det"
    result = build_from_pairs(det, tmp_path / "bag", TimingConfig(ir16=True), labels=True,
                              size=(160, 120), limit=2)
    labels = load_labels(result.path)
    names = sorted(p.stem for p in (det / "ir").glob("*.png"))[:2]
    shown = dict(json.loads((result.path / LABELS_FILE).read_text())["frames"]["thermal"])
    thermal = [m for t, _, _, m in read_bag(result.path) if t == "/thermal/image_raw"]
    assert len(thermal) == 2
    for msg in thermal:
        assert msg.encoding == "mono16" and (msg.width, msg.height) == (160, 120)
        name = names[shown[stamp_to_ns(msg.header.stamp)]]
        ir = cv2.resize(cv2.imread(str(det / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE),
                        (160, 120), interpolation=cv2.INTER_AREA)
        # radiometric counts 7000 + 7 x level, as the scenes' 16-bit infrared
        np.testing.assert_array_equal(pixels(msg), 7000 + 7 * ir.astype(np.uint16))
    for stamp, boxes in labels.boxes.items():
        expected = yolo_boxes(det / "labels" / f"{labels.sources[stamp]}.txt", 160, 120)
        np.testing.assert_allclose(boxes, expected, atol=1e-3)


def test_label_maps_travel_with_the_pairs_resized_by_nearest_neighbour(tmp_path, shared_data):
    src = shared_data / "msrs_det"
    result = build_from_pairs(src, tmp_path / "bag", TimingConfig(seed=2), labels=True,
                              size=(160, 120), limit=3)
    labels = load_labels(result.path)
    assert labels.segmentation_classes == (src / "seg_classes.txt").read_text().split()
    assert len(labels.segmentation_classes) == 9
    assert set(labels.segmentation) == set(labels.boxes)  # every labelled stamp has its map
    rgb = {stamp_to_ns(m.header.stamp): m for t, _, _, m in read_bag(result.path)
           if t == "/rgb/image_raw"}
    for stamp, path in labels.segmentation.items():
        name = labels.sources[stamp]
        assert path == result.path / "seg" / f"{name}.png"
        # the map belongs to the image carried by that stamp
        vis = cv2.resize(cv2.imread(str(src / "vi" / f"{name}.png")), (160, 120),
                         interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(pixels(rgb[stamp])[:, :, ::-1], vis)
        full = cv2.imread(str(src / "seg" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        expected = cv2.resize(full, (160, 120), interpolation=cv2.INTER_NEAREST)
        got = load_segmentation(path)
        np.testing.assert_array_equal(got, expected)
        # nearest neighbour: no class id is invented between two others
        assert set(np.unique(got)) <= set(np.unique(full)) and len(np.unique(got)) > 1
    assert len(list((result.path / "seg").iterdir())) == 3  # one file per source frame


def test_pairs_without_a_map_are_not_labelled_for_segmentation(tmp_path, shared_data):
    det = shared_data / "det"  # of its first five pairs only 00004N has a label map
    result = build_from_pairs(det, tmp_path / "bag", TimingConfig(), labels=True, limit=5)
    labels = load_labels(result.path)
    assert len(labels.segmentation_classes) == 9
    assert {labels.sources[s] for s in labels.segmentation} == {"00004N"}
    assert {labels.sources[s] for s in labels.boxes} == {"00001D", "00002D", "00003N",
                                                         "00004N", "00005N"}
    [path] = set(labels.segmentation.values())
    np.testing.assert_array_equal(load_segmentation(path), cv2.imread(
        str(det / "seg" / "00004N.png"), cv2.IMREAD_UNCHANGED))


def test_label_map_layout_errors_are_named(tmp_path, shared_data):
    src = shared_data / "msrs_det"
    folder = tmp_path / "pairs"
    folder.mkdir()
    for sub in ("ir", "vi", "labels"):
        (folder / sub).mkdir()
        for name in ("00111D.png", "00111D.txt"):
            if (src / sub / name).is_file():
                (folder / sub / name).symlink_to(src / sub / name)
    (folder / "classes.txt").symlink_to(src / "classes.txt")
    (folder / "masks").mkdir()  # masks/ is accepted as well as seg/, but needs its classes
    with pytest.raises(BagBuildError, match="seg_classes.txt"):
        build_from_pairs(folder, tmp_path / "a", labels=True)
    (folder / "segmentation_classes.txt").write_text("background\nroad\n")
    # 00111D's map holds class ids up to 7: not in a 2-class list
    cv2.imwrite(str(folder / "masks" / "00111D.png"),
                cv2.imread(str(src / "seg" / "00111D.png"), cv2.IMREAD_UNCHANGED))
    with pytest.raises(BagBuildError, match=r"class ids \[.*7\] are not in the 2"):
        build_from_pairs(folder, tmp_path / "b", labels=True)
    cv2.imwrite(str(folder / "masks" / "00111D.png"), np.zeros((48, 64), np.uint8))
    with pytest.raises(BagBuildError, match="64x48 does not match its visible image 640x480"):
        build_from_pairs(folder, tmp_path / "c", labels=True)
    ignore = np.full((480, 640), 255, np.uint8)
    ignore[:240] = 1
    cv2.imwrite(str(folder / "masks" / "00111D.png"), ignore)
    labels = load_labels(build_from_pairs(folder, tmp_path / "d", labels=True).path)
    assert labels.segmentation_classes == ["background", "road"]
    assert set(np.unique(load_segmentation(next(iter(labels.segmentation.values()))))) == {1, 255}


# --------------------------------------------------------------------------- timing
@pytest.fixture(scope="module")
def timed_bag(tmp_path_factory):
    config = TimingConfig(thermal_rate_hz=9, rgb_rate_hz=30, thermal_offset_ms=50, jitter_ms=3,
                          drop_prob=0.2, receive_delay_ms=(1.0, 5.0), seed=11, loop=2)
    out = tmp_path_factory.mktemp("timed") / "bag"
    return build_from_scenes(15, out, config, size=(64, 64)), config


@pytest.mark.parametrize("camera,topic,rate,offset_ms", [
    ("thermal", "/thermal/image_raw", 9, 50), ("rgb", "/rgb/image_raw", 30, 0)])
def test_rates_offset_jitter_and_drops_from_the_bag(timed_bag, camera, topic, rate, offset_ms):
    result, config = timed_bag
    msgs = [(r, stamp_to_ns(m.header.stamp)) for t, r, _, m in read_bag(result.path) if t == topic]
    period = 1e9 / rate
    start = config.start_ns
    ks, stamps = [], []
    for receive, stamp in msgs:
        k = round((stamp - start - offset_ms * MS) / period)
        nominal = start + round(k * period) + offset_ms * MS
        assert abs(stamp - nominal) <= 3 * MS  # jitter bound
        assert 1 * MS <= receive - stamp  # received after the stamp, by the delay at least
        ks.append(k)
        stamps.append(stamp)
    assert stamps == sorted(set(stamps))  # strictly increasing per camera
    assert len(set(ks)) == len(ks)
    counts = result.counts[camera]
    assert counts.scheduled == 30 * rate // 9 - (1 if rate == 30 else 0)  # 30 scenes at 9 Hz
    # drops: missing frame numbers in the bag == the dropped count the builder reports
    assert len(set(range(counts.scheduled)) - set(ks)) == counts.dropped
    assert len(msgs) == counts.written and 0 < counts.dropped < counts.scheduled // 2
    jitter = np.array(stamps) - [start + round(k * period) + offset_ms * MS for k in ks]
    assert jitter.std() > 0.5 * MS  # jitter is there, not just allowed


def test_receive_order_and_scene_sampling_pair_up(timed_bag):
    result, config = timed_bag
    msgs = read_bag(result.path)
    receives = [r for _, r, _, _ in msgs]
    assert receives == sorted(receives)
    delays = [r - stamp_to_ns(m.header.stamp) for _, r, _, m in msgs]
    assert 1 * MS <= min(delays) and max(delays) <= 5 * MS
    # each camera shows the scene nearest its exposure time: with the offset corrected, the
    # pairing core pairs every thermal frame with an RGB frame of the same scene
    shown = json.loads((result.path / LABELS_FILE).read_text())["frames"]
    scene_of = {("thermal", s): i for s, i in shown["thermal"]}
    scene_of.update({("rgb", s): i for s, i in shown["rgb"]})
    pairer = Pairer(PairingConfig(slop_ns=20 * MS, thermal_offset_ns=-50 * MS, policy="every",
                                  queue_size=50))
    pairs = []
    for topic, _, _, msg in msgs:
        stream = "thermal" if topic.startswith("/thermal") else "rgb"
        pairer.push(stream, stamp_to_ns(msg.header.stamp), None)
        while (pair := pairer.take()) is not None:
            pairs.append(pair)
    pairer.flush()
    while (pair := pairer.take()) is not None:
        pairs.append(pair)
    assert len(pairs) >= result.counts["thermal"].written * 0.6
    for pair in pairs:
        assert scene_of[("thermal", pair.thermal.stamp_ns)] == scene_of[("rgb", pair.rgb.stamp_ns)]
    # loop=2 over 15 scenes: scene indices run to 29 and the content repeats
    assert max(i for _, i in shown["thermal"]) == 29


def test_scene_pixels_and_masks_are_the_generator_s(timed_bag):
    result, config = timed_bag
    shown = {s: i for s, i in json.loads((result.path / LABELS_FILE).read_text())["frames"]["rgb"]}
    labels = load_labels(result.path)
    assert labels.segmentation_classes == list(SEGMENTATION_CLASSES)
    assert set(labels.segmentation) == set(labels.boxes)
    assert len(list((result.path / "seg").iterdir())) == 15  # loop=2 reuses the 15 maps
    for topic, _, _, msg in read_bag(result.path)[:12]:
        if topic == "/rgb/image_raw":
            stamp = stamp_to_ns(msg.header.stamp)
            index = shown[stamp] % 15
            scene = generate_scene(scene_seed(config.seed, index), 64, 64)
            np.testing.assert_array_equal(pixels(msg)[:, :, ::-1], scene.vis)
            np.testing.assert_array_equal(load_segmentation(labels.segmentation[stamp]),
                                          scene.mask)


# --------------------------------------------------------------------------- options
def test_scenes_with_bicycles_carry_the_bicycle_class(tmp_path):
    out = tmp_path / "bikes"
    assert main(["--out", str(out), "--scenes", "3", "--size", "96x64", "--bicycles",
                 "--seed", "4"]) == 0
    labels = load_labels(out)
    assert labels.classes == ["person", "car", "bicycle"]
    assert labels.segmentation_classes == [*SEGMENTATION_CLASSES, "bicycle"]
    assert any((b[:, 0] == 2).any() for b in labels.boxes.values())
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "x"), "--pairs", str(tmp_path), "--bicycles"])


def test_ir16_compressed_rgb_in_sqlite3(tmp_path):
    config = TimingConfig(ir16=True, rgb_compressed=True, storage="sqlite3", seed=3)
    result = build_from_scenes(3, tmp_path / "bag", config, size=(160, 120))
    assert result.storage_file.suffix == ".db3"
    assert "storage_identifier: sqlite3" in (result.path / "metadata.yaml").read_text()
    msgs = read_bag(result.path)
    assert {t for t, *_ in msgs} == {"/thermal/image_raw", "/rgb/image_raw/compressed"}
    shown = json.loads((result.path / LABELS_FILE).read_text())["frames"]
    index = {s: i for cam in shown.values() for s, i in cam}
    for topic, _, _, msg in msgs:
        scene = generate_scene(scene_seed(3, index[stamp_to_ns(msg.header.stamp)]), 120, 160,
                               ir_16bit=True)
        if topic == "/thermal/image_raw":
            counts = pixels(msg)
            assert msg.encoding == "mono16" and counts.dtype == np.uint16
            assert 6900 <= counts.min() and counts.max() <= 9200  # Boson-like 14-bit counts
            np.testing.assert_array_equal(counts, scene.ir)
        else:
            assert "jpeg" in msg.format
            decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR)
            diff = np.abs(decoded.astype(np.int16) - scene.vis.astype(np.int16))
            mse = float((diff.astype(np.float64) ** 2).mean())
            assert diff.mean() < 8.0 and 10 * np.log10(255.0**2 / mse) > 30.0  # PSNR, q 90
            assert np.abs(decoded.astype(np.int16) - 128).mean() > 3 * diff.mean()


def test_same_seed_gives_identical_bytes_through_the_cli(tmp_path, capsys):
    args = ["--scenes", "4", "--size", "96x64", "--thermal-rate", "9", "--jitter-ms", "4",
            "--drop-prob", "0.3", "--thermal-offset-ms", "25", "--seed", "7"]
    for name in ("a", "b"):
        assert main(["--out", str(tmp_path / name), *args]) == 0
    assert main(["--out", str(tmp_path / "c"), *args[:-1], "8"]) == 0
    assert "wrote" in capsys.readouterr().out
    a, b, c = (read_bag(tmp_path / n) for n in "abc")
    assert [(t, r, d) for t, r, d, _ in a] == [(t, r, d) for t, r, d, _ in b]
    sidecars = [(tmp_path / n / LABELS_FILE).read_bytes() for n in "ab"]
    assert sidecars[0] == sidecars[1]
    maps = [{p.name: p.read_bytes() for p in (tmp_path / n / "seg").iterdir()} for n in "ab"]
    assert maps[0] == maps[1] and len(maps[0]) == 4
    assert [r for _, r, _, _ in a] != [r for _, r, _, _ in c]


def test_bad_arguments_exit_with_a_message(tmp_path, capsys, shared_data):
    out = str(tmp_path / "bag")
    assert main(["--out", out, "--pairs", str(tmp_path / "nowhere")]) == 2
    assert "expected an ir/ folder" in capsys.readouterr().err
    assert main(["--out", out, "--scenes", "2", "--jitter-ms", "20"]) == 2
    assert "reorder stamps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--out", out, "--scenes", "2", "--labels"])
    assert main(["--out", out, "--scenes", "2", "--size", "64x64"]) == 0
    assert main(["--out", out, "--scenes", "2", "--size", "64x64"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["--out", out, "--scenes", "1", "--size", "64x64", "--overwrite"]) == 0
    with pytest.raises(BagBuildError, match="does not look like a bag"):
        build_from_scenes(1, tmp_path, TimingConfig(), size=(64, 64), overwrite=True)
    with pytest.raises(BagBuildError, match="drop"):
        TimingConfig(drop_prob=1.0).validate()
