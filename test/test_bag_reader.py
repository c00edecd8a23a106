"""The streaming bag reader: what it yields, and what it says about bad bags.

Expected values come from rosbags' plain reader plus rclpy's deserializer, not from the module
under test; bad bags are real files (truncated, corrupted, empty, wrong types).
"""

from __future__ import annotations

import shutil
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from rosbags.rosbag2 import (
    CompressionFormat,
    CompressionMode,
    Reader,
    StoragePlugin,
    Writer,
)
from rosbags.typesys import Stores, get_typestore
from sensor_msgs.msg import CompressedImage, Image

from tdfusion_ros.bags.builder import TimingConfig, build_from_scenes
from tdfusion_ros.bags.reader import (
    BagDamagedError,
    BagDamageWarning,
    BagOpenError,
    BagReader,
    EmptyBagError,
    MissingTopicError,
    StoragePluginError,
    UnsupportedTypeError,
    decode_image,
    list_topics,
    main,
)
from tdfusion_ros.ros.ros_image import stamp_to_ns

THERMAL, RGB = "/thermal/image_raw", "/rgb/image_raw"
MODES = {THERMAL: "mono", RGB: "bgr8"}
STORE = get_typestore(Stores.ROS2_KILTED)


def expected(path: Path) -> list[tuple[str, int, int, np.ndarray]]:
    """(topic, receive, stamp, pixels as the replay wants them) via rosbags + rclpy."""
    out = []
    with Reader(path) as reader:
        for conn, t, data in reader.messages():
            kind = Image if conn.msgtype.endswith("/Image") else CompressedImage
            msg = deserialize_message(bytes(data), kind)
            if kind is CompressedImage:
                out.append((conn.topic, t, stamp_to_ns(msg.header.stamp), None))
                continue
            dtype = np.uint16 if msg.encoding == "mono16" else np.uint8
            chans = 3 if msg.encoding in ("rgb8", "bgr8") else 1
            px = np.frombuffer(bytes(msg.data), dtype).reshape(msg.height, msg.width, chans)
            px = px[:, :, 0] if chans == 1 else (px[:, :, ::-1] if msg.encoding == "rgb8" else px)
            out.append((conn.topic, t, stamp_to_ns(msg.header.stamp), px))
    return sorted(out, key=lambda m: m[1])


def read_all(reader: BagReader, **kwargs) -> list:
    return [(m.topic, m.receive_ns, m.stamp_ns, m.image) for m in reader.messages(**kwargs)]


def same(got: list, want: list) -> None:
    assert [g[:3] for g in got] == [w[:3] for w in want]
    for g, w in zip(got, want, strict=True):
        if w[3] is not None:
            np.testing.assert_array_equal(g[3], w[3])


@pytest.fixture(scope="module")
def bag(tmp_path_factory) -> Path:
    """~60 images of 160x120 in 1 MB chunks: 16 scenes, thermal 9 Hz, RGB 30 Hz, drops."""
    config = TimingConfig(thermal_rate_hz=9, rgb_rate_hz=30, thermal_offset_ms=30,
                          drop_prob=0.1, seed=2)
    out = tmp_path_factory.mktemp("reader") / "bag"
    return build_from_scenes(16, out, config, size=(160, 120)).path


@pytest.fixture(scope="module")
def full(bag) -> list:
    return expected(bag)


def test_streams_in_receive_order_with_stamps_and_pixels(bag, full):
    reader = BagReader(bag, [THERMAL, RGB], modes=MODES)
    topics = {t.name: (t.msgtype, t.count) for t in reader.topics}
    assert topics == {THERMAL: ("sensor_msgs/msg/Image", sum(m[0] == THERMAL for m in full)),
                      RGB: ("sensor_msgs/msg/Image", sum(m[0] == RGB for m in full))}
    got = read_all(reader)
    same(got, full)
    assert reader.damage is None and reader.messages_read == len(full) > 50
    first = next(reader.messages())
    assert (first.frame_id, first.encoding) in (("thermal_optical_frame", "mono8"),
                                                ("rgb_optical_frame", "rgb8"))
    assert list_topics(bag) == reader.topics
    # one topic only, and "auto" decoding: grey stays 2-D, colour becomes BGR
    rgb_only = read_all(BagReader(bag, [RGB]))
    same(rgb_only, [m for m in full if m[0] == RGB])


def test_undecoded_messages_decode_the_same_later(bag, full):
    reader = BagReader(bag, [THERMAL, RGB])
    raw = list(reader.messages(decode=False))
    assert all(m.image is None and m.raw is not None for m in raw)
    decoded = [(m.topic, m.receive_ns, m.stamp_ns, decode_image(m.msgtype, m.raw, MODES[m.topic]))
               for m in raw]
    same(decoded, full)


def test_sqlite3_mono16_and_compressed(tmp_path):
    config = TimingConfig(ir16=True, rgb_compressed=True, storage="sqlite3", seed=4)
    path = build_from_scenes(3, tmp_path / "bag", config, size=(96, 64)).path
    want = expected(path)
    got = list(BagReader(path, [THERMAL, RGB + "/compressed"]).messages())
    assert [(m.topic, m.receive_ns, m.stamp_ns) for m in got] == [w[:3] for w in want]
    for m, w in zip(got, want, strict=True):
        if m.topic == THERMAL:
            assert m.image.dtype == np.uint16 and m.encoding == "mono16"
            np.testing.assert_array_equal(m.image, w[3])
        else:
            assert m.image.shape == (64, 96, 3) and "jpeg" in m.encoding


# --------------------------------------------------------------------------- damage
def _copy(bag: Path, tmp: Path, bare: bool) -> tuple[Path, Path]:
    if bare:
        mcap = tmp / "cut.mcap"
        shutil.copy(next(bag.glob("*.mcap")), mcap)
        return mcap, mcap
    folder = tmp / "cut"
    shutil.copytree(bag, folder)
    return folder, next(folder.glob("*.mcap"))


@pytest.mark.parametrize("fraction", [0.3, 0.75])
@pytest.mark.parametrize("bare", [False, True], ids=["folder", "bare-mcap"])
def test_truncated_mcap_yields_the_intact_prefix_then_says_where(bag, full, tmp_path, fraction,
                                                                 bare):
    path, mcap = _copy(bag, tmp_path, bare)
    size = int(mcap.stat().st_size * fraction)
    with open(mcap, "r+b") as f:
        f.truncate(size)
    reader = BagReader(path, [THERMAL, RGB], modes=MODES)
    assert reader.recovery_note
    with pytest.warns(BagDamageWarning, match="damaged"):
        got = read_all(reader)
    assert 0 < len(got) < len(full)
    same(got, full[:len(got)])  # an exact prefix, pixels included
    # the cut loses at most the messages of the chunk it goes through (~1 MB)
    assert len(got) >= fraction * len(full) - 25
    damage = reader.damage
    assert damage.messages_read == len(got) and damage.last_receive_ns == got[-1][1]
    assert damage.file == mcap and 0 < damage.byte_offset < size
    if not bare:
        assert damage.expected_messages == len(full)
    text = damage.describe()
    assert f"after {len(got)} message(s)" in text and f"at byte {damage.byte_offset}" in text
    # strict: the same prefix, then an exception carrying the same report
    strict = BagReader(path, [THERMAL, RGB], modes=MODES, strict=True)
    seen = []
    with pytest.raises(BagDamagedError) as info:
        for m in strict.messages():
            seen.append(m.receive_ns)
    assert seen == [g[1] for g in got] and info.value.damage == damage


def test_truncated_zstd_chunked_mcap(bag, full, tmp_path):
    """Chunks compressed with zstd (as rosbag2 can record): the scan decompresses partially."""
    path = tmp_path / "zstd"
    writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    with Reader(bag) as reader, writer:
        conns = {}
        for conn, t, data in reader.messages():
            if conn.topic not in conns:
                conns[conn.topic] = writer.add_connection(conn.topic, conn.msgtype,
                                                          typestore=STORE)
            writer.write(conns[conn.topic], t, data)
    mcap = next(path.glob("*.mcap"))
    with open(mcap, "r+b") as f:
        f.truncate(mcap.stat().st_size * 6 // 10)
    reader = BagReader(path, [THERMAL, RGB], modes=MODES)
    with pytest.warns(BagDamageWarning, match="cut off"):
        got = read_all(reader)
    assert len(full) * 0.3 < len(got) < len(full)
    same(got, full[:len(got)])


def test_recording_that_never_wrote_metadata_reads_fully(bag, full, tmp_path):
    folder = tmp_path / "crashed"
    shutil.copytree(bag, folder)
    (folder / "metadata.yaml").unlink()
    reader = BagReader(folder, [THERMAL, RGB], modes=MODES)
    assert "metadata.yaml is missing" in reader.recovery_note
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same(read_all(reader), full)
    assert reader.damage is None


def test_corrupt_mcap_chunk_with_intact_index(bag, full, tmp_path):
    path, mcap = _copy(bag, tmp_path, bare=False)
    data = bytearray(mcap.read_bytes())
    # the length field of a message record mid-file (47 bytes before its frame id: opcode,
    # length, channel, sequence, two times, CDR header, stamp, string length)
    at = data.index(b"rgb_optical_frame", len(data) // 2) - 46
    data[at:at + 8] = b"\xff" * 8
    mcap.write_bytes(bytes(data))
    reader = BagReader(path, [THERMAL, RGB], modes=MODES)
    with pytest.warns(BagDamageWarning):
        got = read_all(reader)
    assert 0 < len(got) < len(full)
    same(got, full[:len(got)])
    assert reader.damage.file == mcap and reader.damage.messages_read == len(got)
    assert "corrupt storage data" in reader.damage.describe()


def test_sqlite3_damage(tmp_path):
    path = build_from_scenes(6, tmp_path / "bag", TimingConfig(storage="sqlite3"),
                             size=(160, 120)).path
    want = expected(path)
    db = next(path.glob("*.db3"))
    pristine = db.read_bytes()
    # pages overwritten mid-file: the rows before are delivered, then the damage is reported
    data = bytearray(pristine)
    page = len(data) * 6 // 10 // 4096 * 4096
    data[page:page + 3 * 4096] = b"\xff" * (3 * 4096)
    db.write_bytes(bytes(data))
    reader = BagReader(path, [THERMAL, RGB], modes=MODES)
    with pytest.warns(BagDamageWarning, match="malformed"):
        got = read_all(reader)
    assert 0 < len(got) < len(want)
    same(got, want[:len(got)])
    # a truncated sqlite3 file cannot be opened at all: a clear error, not a traceback
    db.write_bytes(pristine[: len(pristine) // 2])
    with pytest.raises(BagOpenError, match="damaged"):
        BagReader(path, [THERMAL, RGB])


# --------------------------------------------------------------------------- refusals
def _write(path: Path, storage: str = "mcap", topics=(), messages=()) -> Path:
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for topic, msgtype in topics:
            if msgtype in STORE.types:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=STORE)
            else:
                conns[topic] = writer.add_connection(topic, msgtype, msgdef="int32 x",
                                                     rihs01="RIHS01_" + "0" * 64)
        for topic, t, data in messages:
            writer.write(conns[topic], t, data)
    return path


def _string_msg(text: str) -> bytes:
    return bytes(STORE.serialize_cdr(STORE.types["std_msgs/msg/String"](data=text),
                                     "std_msgs/msg/String"))


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_empty_bags(tmp_path, storage):
    with pytest.raises(EmptyBagError, match="no messages.*\n.*/thermal/image_raw"):
        BagReader(_write(tmp_path / "a", storage, [(THERMAL, "sensor_msgs/msg/Image")]))
    with pytest.raises(EmptyBagError, match="no topics"):
        BagReader(_write(tmp_path / "b", storage))
    assert list_topics(tmp_path / "a")[0].count == 0


def test_missing_topic_lists_what_the_bag_holds(bag):
    with pytest.raises(MissingTopicError) as info:
        BagReader(bag, ["/camera/thermal", RGB])
    text = str(info.value)
    assert "/camera/thermal" in text and THERMAL in text and "sensor_msgs/msg/Image" in text
    assert {t.name for t in info.value.available} == {THERMAL, RGB}


def test_topics_that_are_not_images(tmp_path, bag):
    path = _write(tmp_path / "b", topics=[("/chatter", "std_msgs/msg/String"),
                                          ("/custom", "my_robot_msgs/msg/Blob"),
                                          (RGB, "sensor_msgs/msg/Image")],
                  messages=[("/chatter", 1, _string_msg("hi")),
                            ("/custom", 2, b"\x00\x01\x00\x00\x07\x00\x00\x00")])
    for topic, msgtype in (("/chatter", "std_msgs/msg/String"),
                           ("/custom", "my_robot_msgs/msg/Blob")):
        with pytest.raises(UnsupportedTypeError, match=f"{topic} carries {msgtype}"):
            BagReader(path, [topic])
    with pytest.raises(EmptyBagError, match=RGB):
        BagReader(path, [RGB])
    only_text = _write(tmp_path / "c", topics=[("/chatter", "std_msgs/msg/String")],
                       messages=[("/chatter", 1, _string_msg("hi"))])
    with pytest.raises(MissingTopicError, match="no image topics"):
        BagReader(only_text)


def test_undecodable_image_is_skipped_and_counted(tmp_path):
    good = STORE.types["sensor_msgs/msg/Image"]
    header = STORE.types["std_msgs/msg/Header"]
    stamp = STORE.types["builtin_interfaces/msg/Time"]

    def image(t: int, data_len: int) -> bytes:
        msg = good(header=header(stamp=stamp(sec=1, nanosec=t), frame_id="f"), height=4,
                   width=4, encoding="mono8", is_bigendian=0, step=4,
                   data=np.zeros(data_len, np.uint8))
        return bytes(STORE.serialize_cdr(msg, "sensor_msgs/msg/Image"))

    path = _write(tmp_path / "b", topics=[(THERMAL, "sensor_msgs/msg/Image")],
                  messages=[(THERMAL, 1, image(1, 16)), (THERMAL, 2, image(2, 5)),
                            (THERMAL, 3, b"\x00\x01\x00\x00garbage!!!!"),
                            (THERMAL, 4, image(4, 16))])
    reader = BagReader(path, [THERMAL])
    got = list(reader.messages())
    assert [m.stamp_ns for m in got] == [1_000_000_001, 1_000_000_004]
    assert reader.skipped_count == 2 and reader.damage is None
    assert "data length 5" in reader.skipped[0].reason and reader.skipped[0].index == 1


def test_storage_and_metadata_problems(tmp_path, bag):
    folder = tmp_path / "plugin"
    shutil.copytree(bag, folder)
    meta = folder / "metadata.yaml"
    meta.write_text(meta.read_text().replace("storage_identifier: mcap",
                                             "storage_identifier: cloudstore"))
    with pytest.raises(StoragePluginError, match="'cloudstore' is not available"):
        BagReader(folder)
    meta.write_text("rosbag2_bagfile_information: [unclosed")
    with pytest.raises(BagOpenError, match="unreadable bag metadata"):
        BagReader(folder)
    ros1 = tmp_path / "old.bag"
    ros1.write_bytes(b"#ROSBAG V2.0\n")
    with pytest.raises(StoragePluginError, match="ROS 1"):
        BagReader(ros1)
    with pytest.raises(BagOpenError, match="no such bag"):
        BagReader(tmp_path / "nowhere")
    junk = tmp_path / "junk.mcap"
    junk.write_bytes(b"not an mcap file at all")
    with pytest.raises(BagOpenError, match="not an MCAP file"):
        BagReader(junk)


def test_memory_does_not_grow_with_bag_length(tmp_path):
    """Peak traced memory while reading an 8x longer bag stays about the same (streaming)."""
    peaks, sizes = [], []
    for loop in (1, 8):
        path = build_from_scenes(4, tmp_path / f"l{loop}", TimingConfig(loop=loop, seed=1),
                                 size=(320, 240)).path
        sizes.append(sum(f.stat().st_size for f in path.iterdir()))
        reader = BagReader(path, [THERMAL, RGB], modes=MODES)
        tracemalloc.start()
        n = sum(1 for _ in reader.messages())
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert n == 8 * loop
    assert peaks[1] < 1.3 * peaks[0] + 512 * 1024, peaks
    assert peaks[1] < sizes[1] / 2, (peaks, sizes)  # a few chunks, not the bag


def test_cli_reports_topics_and_damage(bag, tmp_path, capsys):
    assert main([str(bag)]) == 0
    out = capsys.readouterr().out
    assert THERMAL in out and "read" in out
    path, mcap = _copy(bag, tmp_path, bare=True)
    with open(mcap, "r+b") as f:
        f.truncate(mcap.stat().st_size // 2)
    assert main([str(path)]) == 1
    assert "damaged" in capsys.readouterr().err
    assert main([str(bag), "--topic", "/nope"]) == 1
    assert "/nope" in capsys.readouterr().err
