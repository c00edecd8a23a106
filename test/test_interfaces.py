"""vision_msgs as built by scripts/build_interfaces.sh (or from a ROS install) matches upstream.

Upstream is ros-perception/vision_msgs 4.1.x (ROS 2 Humble/Jazzy). The field dictionaries and the
RIHS01 type hashes below are written out from upstream, not read from our .msg files, so a field
renamed, retyped or reordered in interfaces/vision_msgs fails here. The wire format is checked
twice: rclpy's CDR is decoded by rosbags' independent CDR codec from the upstream definitions, and
a Detection2DArray crosses DDS between two processes with their own ROS_DOMAIN_ID.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

try:
    import vision_msgs.msg as vmsg
except ImportError as exc:  # a failure, not a skip: the fusion node publishes vision_msgs
    raise ImportError(
        f"vision_msgs is not importable ({exc}); build it with `bash scripts/build_interfaces.sh`"
        " (or install ros-$ROS_DISTRO-vision-msgs on a ROS install)"
    ) from exc

from rclpy.serialization import deserialize_message, serialize_message

from tdfusion_ros.ros import node_params

# get_fields_and_field_types() of upstream vision_msgs 4.1.x, in field order.
UPSTREAM_FIELDS: dict[str, dict[str, str]] = {
    "BoundingBox2D": {"center": "vision_msgs/Pose2D", "size_x": "double", "size_y": "double"},
    "BoundingBox2DArray": {
        "header": "std_msgs/Header",
        "boxes": "sequence<vision_msgs/BoundingBox2D>",
    },
    "BoundingBox3D": {"center": "geometry_msgs/Pose", "size": "geometry_msgs/Vector3"},
    "BoundingBox3DArray": {
        "header": "std_msgs/Header",
        "boxes": "sequence<vision_msgs/BoundingBox3D>",
    },
    "Classification": {
        "header": "std_msgs/Header",
        "results": "sequence<vision_msgs/ObjectHypothesis>",
    },
    "Detection2D": {
        "header": "std_msgs/Header",
        "results": "sequence<vision_msgs/ObjectHypothesisWithPose>",
        "bbox": "vision_msgs/BoundingBox2D",
        "id": "string",
    },
    "Detection2DArray": {
        "header": "std_msgs/Header",
        "detections": "sequence<vision_msgs/Detection2D>",
    },
    "Detection3D": {
        "header": "std_msgs/Header",
        "results": "sequence<vision_msgs/ObjectHypothesisWithPose>",
        "bbox": "vision_msgs/BoundingBox3D",
        "id": "string",
    },
    "Detection3DArray": {
        "header": "std_msgs/Header",
        "detections": "sequence<vision_msgs/Detection3D>",
    },
    "LabelInfo": {
        "header": "std_msgs/Header",
        "class_map": "sequence<vision_msgs/VisionClass>",
        "threshold": "float",
    },
    "ObjectHypothesis": {"class_id": "string", "score": "double"},
    "ObjectHypothesisWithPose": {
        "hypothesis": "vision_msgs/ObjectHypothesis",
        "pose": "geometry_msgs/PoseWithCovariance",
    },
    "Point2D": {"x": "double", "y": "double"},
    "Pose2D": {"position": "vision_msgs/Point2D", "theta": "double"},
    "VisionClass": {"class_id": "uint16", "class_name": "string"},
    "VisionInfo": {
        "header": "std_msgs/Header",
        "method": "string",
        "database_location": "string",
        "database_version": "int32",
    },
}

# RIHS01 type hashes of upstream's own build (rosidl_generator_c's *__description.c of vision_msgs
# 4.1.x). A hash covers field names, types and order of the type and everything it nests.
UPSTREAM_TYPE_HASHES = {
    "BoundingBox2D": "008eacbb0cf8f26e83795547bed013eec3675485ef386ec056d80eaaf1c1ce2f",
    "BoundingBox3D": "bbb73a65c163d7f9bb29009c7bde9f7faa576bd2d23299c4511d19230dab4698",
    "Classification": "f74db28d0eaef3afb78f48bf2161cd709a1383a0309d3454383b25be11345143",
    "Detection2D": "0d12b69df5c593b3455b7346fac8205437a7d4bcb09b9e0e0b2dde787ded38ea",
    "Detection2DArray": "214274120007f4a683866481336b70310268cfa107aebe9d594a6acf75bda968",
    "Detection3D": "ddd703be132ab0b69d33121f1bb034132bfbb3b0ac5f9fb1516005ba1c8a265b",
    "Detection3DArray": "793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018",
    "LabelInfo": "3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783",
    "ObjectHypothesis": "51da43cec11c01957a64d1e05a24acd18aae7745ec30b74348ad5f6d634f7f90",
    "ObjectHypothesisWithPose": "41c12344c0396c48b81df12467c192d99b2a0eb1463c5c37194e4223251c80bc",
    "Point2D": "eab0e83f44ab4de92ceaf76dd7d0e7638f2bdd1d16ffbe16c7a136c48e407247",
    "Pose2D": "b0b5d1d7b4c20dd4fcde3ed1d4b289a919290572007d67a97043814db25d3648",
    "VisionClass": "1e4a11f0fed50b5623cb8ff26ca0e37952a48a9c074d16f804b44e9164c2037a",
    "VisionInfo": "95d3116a17484ad91c9a2686e1d54890bbfc3ff6c6a2de137738c4950d45d284",
}


def _detections() -> vmsg.Detection2DArray:
    """A Detection2DArray with every field of the nested types set to a distinct value."""
    from std_msgs.msg import Header

    header = Header(frame_id="rgb_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 1_700_000_123, 456_789_012
    dets = []
    for i, (name, score) in enumerate([("person", 0.93), ("car", 0.5), ("bicycle", 0.01)]):
        hyp = vmsg.ObjectHypothesisWithPose()
        hyp.hypothesis.class_id, hyp.hypothesis.score = name, score
        hyp.pose.pose.position.x, hyp.pose.pose.position.y = 1.5 + i, -2.25
        hyp.pose.pose.orientation.w = 0.5
        hyp.pose.covariance[0], hyp.pose.covariance[35] = 0.125, 9.0 + i
        bbox = vmsg.BoundingBox2D(size_x=40.0 + i, size_y=80.5)
        bbox.center.position.x, bbox.center.position.y = 320.25 - i, 240.75
        bbox.center.theta = 0.1 * i
        dets.append(vmsg.Detection2D(header=header, results=[hyp], bbox=bbox, id=f"track-{i}"))
    dets[1].results.append(vmsg.ObjectHypothesisWithPose())  # a second hypothesis, all defaults
    return vmsg.Detection2DArray(header=header, detections=dets)


def test_all_upstream_messages_import() -> None:
    missing = [name for name in UPSTREAM_FIELDS if not hasattr(vmsg, name)]
    assert not missing, f"vision_msgs lacks upstream messages {missing}"


@pytest.mark.parametrize("name", sorted(UPSTREAM_FIELDS))
def test_fields_match_upstream(name: str) -> None:
    fields = getattr(vmsg, name).get_fields_and_field_types()
    assert list(fields.items()) == list(UPSTREAM_FIELDS[name].items())


def _share_dir() -> Path:
    import vision_msgs

    # <prefix>/lib/pythonX.Y/site-packages/vision_msgs/__init__.py -> <prefix>/share/vision_msgs
    return Path(vision_msgs.__file__).resolve().parents[4] / "share" / "vision_msgs"


@pytest.mark.parametrize("name", sorted(UPSTREAM_TYPE_HASHES))
def test_type_hash_matches_upstream(name: str) -> None:
    try:
        import rclpy.type_hash  # noqa: F401
    except ImportError:
        pytest.skip("this ROS distribution predates type hashes (Humble)")
    description = _share_dir() / "msg" / f"{name}.json"
    assert description.is_file(), f"type description {description} not installed"
    hashes = json.loads(description.read_text())["type_hashes"]
    ours = {h["type_name"]: h["hash_string"] for h in hashes}
    assert ours[f"vision_msgs/msg/{name}"] == f"RIHS01_{UPSTREAM_TYPE_HASHES[name]}"


def test_serialize_round_trip() -> None:
    msg = _detections()
    raw = serialize_message(msg)
    back = deserialize_message(raw, vmsg.Detection2DArray)
    assert back == msg
    assert back.detections[2].results[0].hypothesis.class_id == "bicycle"
    assert back.detections[1].bbox.center.position.x == 319.25
    assert back.detections[2].results[0].pose.covariance[35] == 11.0
    assert len(back.detections[1].results) == 2
    # Same length; the bytes themselves may differ in (uninitialised) CDR alignment padding.
    assert len(serialize_message(back)) == len(raw)


def _upstream_msg_text(fields: dict[str, str]) -> str:
    """The .msg text of an upstream field dictionary (rosidl IDL type names to .msg ones)."""
    scalar = {"double": "float64", "float": "float32"}
    lines = []
    for field, typ in fields.items():
        suffix = ""
        if typ.startswith("sequence<"):
            typ, suffix = typ[len("sequence<") : -1], "[]"
        lines.append(f"{scalar.get(typ, typ)}{suffix} {field}")
    return "\n".join(lines) + "\n"


def test_wire_format_matches_an_independent_cdr_codec() -> None:
    """rosbags, given only the upstream definitions, decodes rclpy's bytes and vice versa."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = {}
    for name, fields in UPSTREAM_FIELDS.items():
        types.update(get_types_from_msg(_upstream_msg_text(fields), f"vision_msgs/msg/{name}"))
    store.register(types)
    typename = "vision_msgs/msg/Detection2DArray"

    msg = _detections()
    decoded = store.deserialize_cdr(serialize_message(msg), typename)
    assert decoded.header.frame_id == "rgb_optical_frame"
    assert (decoded.header.stamp.sec, decoded.header.stamp.nanosec) == (1_700_000_123, 456_789_012)
    assert len(decoded.detections) == 3
    for ours, theirs in zip(msg.detections, decoded.detections, strict=True):
        assert theirs.id == ours.id
        assert len(theirs.results) == len(ours.results)
        for a, b in zip(ours.results, theirs.results, strict=True):
            assert (b.hypothesis.class_id, b.hypothesis.score) == (
                a.hypothesis.class_id,
                a.hypothesis.score,
            )
            assert (b.pose.pose.position.x, b.pose.pose.orientation.w) == (
                a.pose.pose.position.x,
                a.pose.pose.orientation.w,
            )
            assert list(b.pose.covariance) == list(a.pose.covariance)
        assert (theirs.bbox.center.position.x, theirs.bbox.center.position.y) == (
            ours.bbox.center.position.x,
            ours.bbox.center.position.y,
        )
        assert theirs.bbox.center.theta == ours.bbox.center.theta
        assert (theirs.bbox.size_x, theirs.bbox.size_y) == (ours.bbox.size_x, ours.bbox.size_y)

    # ...and bytes written by rosbags from the upstream definitions read back in rclpy.
    again = bytes(store.serialize_cdr(decoded, typename))
    assert deserialize_message(again, vmsg.Detection2DArray) == msg


# One script, two roles. The publisher reads a serialized Detection2DArray (hex) on stdin and
# publishes it until the subscriber has gone; the subscriber prints what it received, in hex,
# with the type name and type hash that DDS discovery reports for the publisher.
_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message, serialize_message
    from vision_msgs.msg import Detection2DArray

    role, topic, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    rclpy.init()
    node = Node("vision_msgs_test_" + role)
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    deadline = time.monotonic() + timeout
    if role == "pub":
        msg = deserialize_message(bytes.fromhex(sys.stdin.read().strip()), Detection2DArray)
        pub = node.create_publisher(Detection2DArray, topic, qos)
        seen = sent = 0
        while time.monotonic() < deadline:
            n = pub.get_subscription_count()
            if n:
                seen = 1
                pub.publish(msg)
                sent += 1
            elif seen:
                break  # the subscriber got its message and left
            time.sleep(0.05)
        print(json.dumps({"sent": sent}), flush=True)
    else:
        def type_hash(info):  # None where rclpy predates type hashes (Humble)
            h = getattr(info, "topic_type_hash", None)
            return None if h is None else "RIHS%02d_%s" % (h.version, h.value.hex())

        got = []
        node.create_subscription(Detection2DArray, topic, got.append, qos)
        while not got and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        infos = node.get_publishers_info_by_topic(topic)
        print(json.dumps({
            "received": [serialize_message(m).hex() for m in got[:1]],
            "publishers": [
                [i.topic_type, type_hash(i)] for i in infos
            ],
        }), flush=True)
    node.destroy_node()
    rclpy.shutdown()
    """
)


def test_detection2d_array_over_dds_between_two_processes(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["ROS_DOMAIN_ID"] = str(node_params.private_domain_id(os.getpid()))  # own domain
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["ROS_LOG_DIR"] = str(tmp_path / "ros_log")
    env.pop("RMW_IMPLEMENTATION", None)
    topic = f"/test_interfaces_{os.getpid()}/detections"
    timeout = 20.0
    msg = _detections()

    cmd = [sys.executable, "-c", _CHILD]
    sub = subprocess.Popen(
        [*cmd, "sub", topic, str(timeout)], env=env, stdout=subprocess.PIPE, text=True
    )
    pub = subprocess.Popen(
        [*cmd, "pub", topic, str(timeout)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pub_out, _ = pub.communicate(serialize_message(msg).hex(), timeout=timeout + 15)
        sub_out, _ = sub.communicate(timeout=timeout + 15)
    finally:
        for proc in (pub, sub):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert pub.returncode == 0 and sub.returncode == 0, (pub_out, sub_out)
    assert json.loads(pub_out.strip().splitlines()[-1])["sent"] >= 1
    result = json.loads(sub_out.strip().splitlines()[-1])
    assert result["received"], f"subscriber got nothing over DDS: {result}"
    received = deserialize_message(bytes.fromhex(result["received"][0]), vmsg.Detection2DArray)
    assert received == msg
    assert received.detections[0].results[0].hypothesis.class_id == "person"
    # What discovery says about the publisher: the upstream type name and type hash.
    expected_hash = f"RIHS01_{UPSTREAM_TYPE_HASHES['Detection2DArray']}"
    publishers = [p for p in result["publishers"] if p[1] is not None] or [
        [p[0], expected_hash] for p in result["publishers"]
    ]
    assert ["vision_msgs/msg/Detection2DArray", expected_hash] in publishers, result
