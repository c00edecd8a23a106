"""The fusion node over real DDS: the node and a camera/recorder process, own ROS_DOMAIN_ID.

The node process is started exactly as the launch file starts it: ``node_params.launch_spec``
(the launch file's code path) rendered as a ``--ros-args`` command line, with the
large-data environment it sets. The second process is this file run as a script (``driver``):
it plays real pairs from ../shared/data/det (resized to 160x120) at 10 Hz with stamp jitter
and a thermal latency offset, injects bad messages, stops and restarts the thermal camera,
changes a threshold, pauses the node through ``~/enable``, and records everything the node
publishes into a JSON file that the tests below read. The bundle is the tiny one of
test_pipeline.py, so inference takes milliseconds and the test is about the node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as the driver script
    sys.path.insert(0, str(REPO))

from tdfusion_ros.ros import node_params  # noqa: E402

RATE_HZ = 10.0
SIZE = (160, 120)  # w, h of the played images
THERMAL_OFFSET = 0.015  # thermal stamps are this much earlier than RGB's
JITTER = 0.003
FRAME_ID = "rgb_camera_optical"
THERMAL_FRAME_ID = "thermal_camera_optical"
CLASS_NAMES = ["person", "bicycle", "car"]
TEST_OVERRIDES = {
    # what this test changes in config/fusion.yaml (passed as the launch file's `config`)
    "backend": "onnxruntime",
    "engine.threads": 1,
    "sync.slop": 0.01,  # < the offset: pairs form only because the offset is applied
    "sync.thermal_offset": THERMAL_OFFSET,
    "sync.thermal_min_interval": 0.075,
    "sync.rgb_min_interval": 0.075,
    "fallback.timeout": 0.5,
    # reliable and deep: every message sent reaches the node, so the node's books can be held
    # against what was sent (a DDS history overwrite is nobody's count)
    "input.reliability": "reliable",
    "input.depth": 100,
    "diagnostics.period": 0.25,
    "segmentation.overlay": True,
    "log_throttle": 0.0,
}
_domain_counter = 0


def domain_id() -> int:
    """A ROS_DOMAIN_ID of this test process's own (pid based), new for each node start."""
    global _domain_counter
    _domain_counter += 1
    return node_params.private_domain_id(os.getpid() * 7 + 37 * _domain_counter)


def ros_env(domain: int, spec: node_params.LaunchSpec | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(spec.env if spec is not None else node_params.ENVIRONMENT)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("AMENT_PREFIX_PATH", str(Path(sys.executable).resolve().parents[1]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_config(path: Path, overrides: dict[str, Any]) -> Path:
    """config/fusion.yaml with ``overrides`` applied (nested as the file is)."""
    document = yaml.safe_load((REPO / "config" / "fusion.yaml").read_text())
    params = document["/**"]["ros__parameters"]
    for name, value in overrides.items():
        *sections, key = name.split(".")
        target = params
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def start_node(spec: node_params.LaunchSpec, domain: int, log: Path) -> subprocess.Popen:
    command = spec.command([sys.executable, "-m", "tdfusion_ros.node"])
    handle = log.open("w")
    return subprocess.Popen(command, env=ros_env(domain, spec), stdout=handle,
                            stderr=subprocess.STDOUT, cwd=REPO)


def stop(process: subprocess.Popen, timeout: float = 30.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            return -9
    return process.returncode


# ============================================================================ the tests
@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from .test_pipeline import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("node_bundle"))


# Fast DDS now and then never matches a fresh pair of participants (a CI run saw the node and
# the driver unmatched for 90 s while the node ran normally; test_node_start meets the same
# stall). The driver then exits with NEVER_MATCHED before it has sent anything, and the pair is
# started again in a new domain: the scenario's record stays whole. More restarts than this
# would be a problem of its own.
NEVER_MATCHED = 75
MATCH_RESTARTS_ALLOWED = 2


def run_with_driver(spec: node_params.LaunchSpec, work: Path, driver_args: list[str],
                    timeout: float) -> dict[str, Any]:
    """Start the node, run the driver against it, stop the node: what each left behind."""
    restarts: list[str] = []
    while True:
        domain = domain_id()
        node_log = work / f"node{len(restarts)}.log"
        node = start_node(spec, domain, node_log)
        try:
            driver = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "driver", *driver_args],
                env=ros_env(domain), capture_output=True, text=True, timeout=timeout, cwd=REPO)
        finally:
            alive_after_driver = node.poll() is None
            maps = Path(f"/proc/{node.pid}/maps")
            libraries = maps.read_text() if alive_after_driver and maps.exists() else ""
            code = stop(node)
        log = node_log.read_text()
        if driver.returncode != NEVER_MATCHED or len(restarts) == MATCH_RESTARTS_ALLOWED:
            break
        restarts.append(driver.stderr.strip().splitlines()[-1])
    assert driver.returncode == 0, f"driver failed (after restarts {restarts}):\n" \
                                   f"{driver.stdout}\n{driver.stderr}\nnode log:\n{log}"
    if restarts:
        warnings.warn(f"node and driver restarted {len(restarts)}x: {restarts}", stacklevel=2)
    return {"node_exit": code, "node_alive": alive_after_driver, "node_log": log,
            "libraries": libraries, "match_restarts": restarts}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path,
             shared_data: Path) -> dict[str, Any]:
    """Run the node and the driver once; every test below checks one aspect of the record."""
    work = tmp_path_factory.mktemp("node_run")
    config = write_config(work / "fusion.yaml", TEST_OVERRIDES)
    spec = node_params.launch_spec({"config": str(config), "bundle": str(tiny_bundle)})
    out = work / "record.json"
    run = run_with_driver(spec, work, ["--out", str(out), "--data", str(shared_data)], 900)
    libraries = run.pop("libraries")
    record = json.loads(out.read_text())
    record.update(run, torch_loaded="libtorch" in libraries or "/torch/" in libraries,
                  maps_read=bool(libraries))
    return record


def _stamps(record: dict, phase: str) -> set[int]:
    return {p["rgb_stamp"] for p in record["played"].get(phase, [])}


def _outputs(record: dict, kind: str, phase: str) -> list[dict]:
    """What the node published for the RGB stamps played in ``phase`` (by stamp, not by when
    it arrived here)."""
    stamps = _stamps(record, phase)
    return [o for o in record["outputs"][kind] if o["stamp"] in stamps]


def _images(record: dict, phase: str) -> dict[int, dict]:
    return {o["stamp"]: o for o in _outputs(record, "image", phase)}


def _delta(record: dict, phase: str, since: str | None = None) -> dict[str, int]:
    """The change of the node's books over ``phase`` (since the snapshot before it, or since
    ``since``), each snapshot taken with the node idle."""
    names = [b["phase"] for b in record["books"]]
    index = names.index(phase)
    before = record["books"][names.index(since) if since else index - 1]["books"]
    after = record["books"][index]["books"]
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}


def _causes(delta: dict[str, int], *ignore: str) -> dict[str, int]:
    """Drops by ``<stream>.<cause>`` that happened, less the ``ignore``d ones."""
    return {k[len("drops."):]: v for k, v in delta.items()
            if k.startswith("drops.") and v and k[len("drops."):] not in ignore}


def _books_balance(record: dict) -> None:
    """Every snapshot: the node explains every message (``unaccounted.*`` 0) and, after the
    start, every message sent arrived."""
    for snap in record["books"]:
        books, sent, lost = snap["books"], snap["sent"], snap["lost_at_start"]
        leftover = {k: v for k, v in books.items() if k.startswith("unaccounted.") and v}
        assert len([k for k in books if k.startswith("unaccounted.")]) == 4, books
        assert not leftover, f"after {snap['phase']}: {leftover} in {books}"
        for stream in ("thermal", "rgb"):
            assert books[f"{stream}.arrived"] == sent[stream] - lost[stream], snap


def _fused_or_skipped(delta: dict[str, int], played: int, phase: str) -> None:
    """Each of ``played`` clean pairs was formed, then published or skipped because a newer
    pair replaced it while inference was busy; nothing else."""
    assert delta["pairs.formed"] == played, (phase, delta)
    skipped = delta.get("drops.pair.superseded_by_newer_pair", 0)
    assert delta["published.fusion"] + skipped == played, (phase, delta)
    assert _causes(delta, "pair.superseded_by_newer_pair") == {}, (phase, delta)


def test_books_balance_at_every_phase(scenario: dict) -> None:
    assert [b["phase"] for b in scenario["books"]] == [
        "startup", "nominal", "bad_inputs", "thermal_back", "strict", "paused", "resumed"]
    _books_balance(scenario)
    # and not only when idle: each /diagnostics is one consistent snapshot of the books
    leftover = [d["inputs"] for d in scenario["diagnostics"]
                if any(k.startswith("unaccounted.") and v != "0" for k, v in d["inputs"].items())]
    assert not leftover, leftover[:2]


def test_outputs_for_played_pairs(scenario: dict) -> None:
    played = scenario["played"]["nominal"]
    delta = _delta(scenario, "nominal")
    assert delta["thermal.arrived"] == delta["rgb.arrived"] == len(played) == 40, delta
    _fused_or_skipped(delta, len(played), "nominal")
    got = _images(scenario, "nominal")
    assert len(got) == delta["published.fusion"] >= 1, (len(got), delta)
    # the newest pair is never skipped: the last one played is processed once the node is free
    assert played[-1]["rgb_stamp"] in got, scenario["node_log"][-3000:]
    for image in got.values():
        assert image["frame_id"] == FRAME_ID
        assert (image["width"], image["height"]) == SIZE
        assert image["encoding"] == "bgr8" and not image["equals_rgb"]


def test_detections_are_well_formed(scenario: dict) -> None:
    detections = _outputs(scenario, "detections", "nominal")
    images = _images(scenario, "nominal")
    # published together with each image
    assert sorted(d["stamp"] for d in detections) == sorted(images)
    assert sum(len(d["boxes"]) for d in detections) > 0
    for array in detections:
        assert array["stamp"] in images and array["frame_id"] == FRAME_ID
        for box in array["boxes"]:
            assert box["frame_id"] == FRAME_ID and box["stamp"] == array["stamp"]
            assert box["results"] == 1 and box["class_id"] in CLASS_NAMES
            assert 0.0 < box["score"] <= 1.0
            x1, x2 = box["cx"] - box["w"] / 2, box["cx"] + box["w"] / 2
            y1, y2 = box["cy"] - box["h"] / 2, box["cy"] + box["h"] / 2
            assert box["w"] > 0 and box["h"] > 0
            assert -1e-3 <= x1 and x2 <= SIZE[0] + 1e-3 and -1e-3 <= y1 and y2 <= SIZE[1] + 1e-3


def test_segmentation_size_and_dtype(scenario: dict) -> None:
    masks = _outputs(scenario, "segmentation", "nominal")
    images = _images(scenario, "nominal")
    assert sorted(m["stamp"] for m in masks) == sorted(images)
    for mask in masks:
        assert mask["stamp"] in images and mask["frame_id"] == FRAME_ID
        assert (mask["width"], mask["height"]) == SIZE
        assert mask["encoding"] == "mono8" and mask["step"] == SIZE[0]
        assert set(mask["classes"]) <= {0, 1, 2}
    overlays = _outputs(scenario, "overlay", "nominal")
    assert overlays and all((o["width"], o["height"]) == SIZE for o in overlays)


def test_diagnostics_present(scenario: dict) -> None:
    diags = scenario["diagnostics"]
    assert len(diags) >= 5
    fusing = [d for d in diags if d["phase"] == "nominal" and d["state"]["mode"] == "fusion"]
    assert len(fusing) >= 3
    last_nominal = fusing[len(fusing) // 2]
    assert last_nominal["state"]["lifecycle_state"] == "active"
    assert last_nominal["level"] == 0 and last_nominal["state"]["fallback"] == "none"
    inputs, processing = last_nominal["inputs"], last_nominal["processing"]
    for key in ("rate.thermal_hz", "rate.rgb_hz", "rate.pairs_hz", "rate.outputs_hz"):
        assert key in inputs
    # the node's RGB rate against the rate this driver achieved (it falls behind when loaded)
    sent_hz = 40 / scenario["play_seconds"]["nominal"]
    rates = sorted(float(d["inputs"]["rate.rgb_hz"]) for d in fusing)
    assert 0.25 * sent_hz <= rates[len(rates) // 2] <= 2.0 * sent_hz, (rates, sent_hz)
    assert "onnxruntime" in processing["backend"]
    for stage in ("total", "fusion", "overhead", "end_to_end"):
        assert float(processing[f"latency.{stage}.p99_ms"]) >= \
            float(processing[f"latency.{stage}.p50_ms"]) >= 0.0


def test_bad_inputs_are_dropped_and_counted(scenario: dict) -> None:
    """Each bad message is dropped under its own cause, its partner for having none; the
    size-mismatched pair (sent to an idle node, so never skipped) is dropped after the take."""
    assert scenario["node_alive"], scenario["node_log"][-3000:]
    delta = _delta(scenario, "bad_inputs")
    assert delta["thermal.arrived"] == 21 and delta["rgb.arrived"] == 20, delta  # + one late
    assert _causes(delta, "pair.superseded_by_newer_pair") == {
        "thermal.unknown_encoding": 1, "rgb.no_partner_within_slop": 1,  # tick 3
        "rgb.zero_size": 1, "thermal.no_partner_within_slop": 2,  # ticks 6 and 9
        "rgb.truncated_data": 1,
        "pair.size_mismatch": 1,  # tick 12
        "thermal.stamp_went_backwards": 1,  # tick 15's late copy
    }, delta
    assert delta["pairs.formed"] == 17, delta
    skipped = delta.get("drops.pair.superseded_by_newer_pair", 0)
    assert delta["published.fusion"] + skipped + 1 == 17, delta
    played = scenario["played"]["bad_inputs"]
    got = _images(scenario, "bad_inputs")
    assert len(got) == delta["published.fusion"], (len(got), delta)
    assert not [p for p in played if p["bad"] and p["rgb_stamp"] in got and
                p is not played[15]], "an output for a tick whose pair was bad"
    assert played[-1]["rgb_stamp"] in got
    log = scenario["node_log"]
    assert "unknown_encoding" in log and "truncated_data" in log and "Traceback" not in log


def test_camera_stopping_and_returning(scenario: dict) -> None:
    delta = _delta(scenario, "thermal_back")
    stopped = scenario["played"]["thermal_stopped"]
    back = scenario["played"]["thermal_back"]
    assert delta["rgb.arrived"] == len(stopped) + len(back) and \
        delta["thermal.arrived"] == len(back), delta
    # RGB frames waiting for a thermal partner go when the queue is full, when the fallback
    # takes a newer one, or when the returning thermal frames are too far; a thermal frame
    # whose RGB partner went out alone has none.
    allowed = {"rgb.queue_overflow", "rgb.superseded_by_newer_single",
               "rgb.no_partner_within_slop", "thermal.no_partner_within_slop",
               "pair.superseded_by_newer_pair"}
    assert set(_causes(delta)) <= allowed, delta
    outputs = _outputs(scenario, "image", "thermal_stopped")
    assert all(o["equals_rgb"] for o in outputs), (  # no thermal: the RGB image, unchanged
        [(o["stamp"], o["equals_rgb"]) for o in outputs], stopped[:3], delta)
    alone = outputs + [o for o in _outputs(scenario, "image", "thermal_back") if o["equals_rgb"]]
    assert len(alone) == delta["published.rgb_only"] and len(outputs) >= 5, (len(alone), delta)
    modes = [d["state"]["mode"] for d in scenario["diagnostics"]
             if d["phase"] == "thermal_stopped"]
    assert "rgb_only" in modes
    fallback = [d for d in scenario["diagnostics"] if d["state"]["mode"] == "rgb_only"][-1]
    assert fallback["state"]["fallback"] == "rgb_only" and fallback["level"] == 1
    fused = [o for o in _outputs(scenario, "image", "thermal_back") if not o["equals_rgb"]]
    assert len(fused) == delta["published.fusion"] >= 5, (len(fused), delta)
    assert back[-1]["rgb_stamp"] in {o["stamp"] for o in fused}
    after = [d["state"]["mode"] for d in scenario["diagnostics"] if d["phase"] == "thermal_back"]
    assert "fusion" in after and [m for m in after if m != "no_input"][-1] == "fusion"


def test_thresholds_change_at_run_time(scenario: dict) -> None:
    results = scenario["services"]
    assert results["set_conf_0.99"]["successful"]
    assert not results["set_conf_1.5"]["successful"]
    assert "detection.conf_threshold" in results["set_conf_1.5"]["reason"]
    assert not results["set_slop"]["successful"]  # read at configure: refused while active
    delta = _delta(scenario, "strict")
    _fused_or_skipped(delta, 8, "strict")
    strict = _outputs(scenario, "detections", "strict")
    assert len(strict) == delta["published.fusion"] >= 1 and all(not d["boxes"] for d in strict)


def test_enable_pauses_and_resumes(scenario: dict) -> None:
    results = scenario["services"]
    assert results["disable"]["success"] and results["enable"]["success"]
    delta = _delta(scenario, "paused")
    assert delta["thermal.ignored_while_paused"] == delta["rgb.ignored_while_paused"] == 10
    assert delta["ignored_while_paused"] == 20 and delta["thermal.received"] == 0, delta
    assert not any(v for k, v in delta.items() if k.startswith("published.")), delta
    # pausing resets the pairing: what waited is discarded, under that name
    assert set(_causes(delta)) <= {"thermal.discarded_at_reset", "rgb.discarded_at_reset"}
    assert not _images(scenario, "paused")
    paused = [d for d in scenario["diagnostics"] if d["phase"] == "paused"]
    assert paused and paused[-1]["state"]["enabled"] == "False"
    delta = _delta(scenario, "resumed")
    _fused_or_skipped(delta, 10, "resumed")
    resumed = _images(scenario, "resumed")
    assert len(resumed) == delta["published.fusion"] >= 1
    assert scenario["played"]["resumed"][-1]["rgb_stamp"] in resumed



def test_clean_shutdown_on_sigint(scenario: dict) -> None:
    assert scenario["node_exit"] == 0, scenario["node_log"][-3000:]
    assert "Traceback" not in scenario["node_log"]


def test_node_imports_no_torch(scenario: dict) -> None:
    """The running node process mapped no torch library."""
    assert scenario["maps_read"] and not scenario["torch_loaded"]


def test_driver_without_a_node_says_it_never_matched(shared_data: Path, tmp_path: Path
                                                     ) -> None:
    """The restart above hinges on this exit: no node in the domain, nothing sent, code 75."""
    out = tmp_path / "record.json"
    driver = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "driver", "--out", str(out),
         "--data", str(shared_data), "--match-timeout", "3"],
        env=ros_env(domain_id()), capture_output=True, text=True, timeout=120, cwd=REPO)
    assert driver.returncode == NEVER_MATCHED, driver.stdout + driver.stderr
    assert "never matched the node in 3 s: thermal subscribers 0" in driver.stderr
    assert not out.exists()


def test_lifecycle_and_compressed_input_in_process(tiny_bundle: Path, tmp_path: Path) -> None:
    """autostart false: nothing loads until configure; a bad bundle fails configure and can
    be fixed; CompressedImage input; cleanup releases the engines; and no torch imported."""
    script = textwrap.dedent(f"""
        import sys, time
        import numpy as np
        import rclpy
        from rclpy.parameter import Parameter
        from sensor_msgs.msg import CompressedImage
        from tdfusion_ros.ros.node import FusionNode, SUCCESS, FAILURE
        from tdfusion_ros.runtime.pairing import Stream
        from tdfusion_ros.ros.ros_image import array_to_compressed, array_to_image
        rclpy.init(args=["node", "--ros-args", "-p", "bundle:={tmp_path / 'missing'}",
                         "-p", "backend:=onnxruntime", "-p", "autostart:=false",
                         "-p", "input.rgb_transport:=compressed"])
        node = FusionNode()
        for _ in range(5):
            rclpy.spin_once(node, timeout_sec=0.02)
        assert node._pipeline is None and node.exit_code is None
        assert node.trigger_configure() == FAILURE
        assert "missing" in node._config_error
        assert node.set_parameters([Parameter("bundle", value="{tiny_bundle}")])[0].successful
        assert node.trigger_configure() == SUCCESS
        refused = node.set_parameters([Parameter("sync.slop", value=0.05)])[0]
        assert not refused.successful and "configure" in refused.reason
        assert node.trigger_activate() == SUCCESS
        assert [s.msg_type for s in node._camera_subs] == [
            __import__("sensor_msgs.msg").msg.Image, CompressedImage]
        rng = np.random.default_rng(0)
        thermal = rng.integers(0, 65535, (48, 64), dtype=np.uint16)
        rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
        for i in range(1, 5):
            node._on_message(Stream.THERMAL, array_to_image(thermal, "mono16", i * 10**8, "t"))
            node._on_message(Stream.RGB, array_to_compressed(rgb, "jpeg", 90, i * 10**8, "c"))
        deadline = time.monotonic() + 60
        while node._outputs < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert node._outputs >= 1, node._source.stats()
        assert node.trigger_deactivate() == SUCCESS and not node._camera_subs
        assert node.trigger_cleanup() == SUCCESS and node._pipeline is None
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
        heavy = sorted(m for m in ("torch", "ultralytics", "transformers") if m in sys.modules)
        sys.exit(f"heavy modules imported: {{heavy}}" if heavy else 0)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ros_env(domain_id()), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------ failures at start
def test_missing_bundle_fails_at_configure_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "no_bundle_here"
    spec = node_params.launch_spec({"bundle": str(missing), "backend": "onnxruntime"})
    node = start_node(spec, domain_id(), tmp_path / "node.log")
    try:
        code = node.wait(timeout=120)
    finally:
        stop(node)
    log = (tmp_path / "node.log").read_text()
    assert code == 1, log
    assert str(missing / "bundle.yaml") in log and "configure failed" in log


def test_bad_parameter_is_named_at_start(tmp_path: Path, tiny_bundle: Path) -> None:
    config = write_config(tmp_path / "bad.yaml", {"detection.iou_threshold": 3.0})
    spec = node_params.launch_spec({"config": str(config), "bundle": str(tiny_bundle)})
    node = start_node(spec, domain_id(), tmp_path / "node.log")
    try:
        code = node.wait(timeout=120)
    finally:
        stop(node)
    log = (tmp_path / "node.log").read_text()
    assert code == 2 and "detection.iou_threshold" in log, log


def test_message_filters_policy(tmp_path: Path, tiny_bundle: Path, shared_data: Path) -> None:
    """sync.policy message_filters: only where the package exists (a real ROS install)."""
    pytest.importorskip("message_filters")
    overrides = {**TEST_OVERRIDES, "sync.policy": "message_filters",
                 "sync.thermal_offset": 0.0, "sync.slop": 0.03}
    config = write_config(tmp_path / "mf.yaml", overrides)
    spec = node_params.launch_spec({"config": str(config), "bundle": str(tiny_bundle)})
    out = tmp_path / "record.json"
    run = run_with_driver(spec, tmp_path, ["--out", str(out), "--data", str(shared_data),
                                           "--short", "--offset", "0"], 240)
    code = run["node_exit"]
    record = json.loads(out.read_text())
    played = record["played"]["nominal"]
    got = _images(record, "nominal")
    assert sum(p["rgb_stamp"] in got for p in played) >= 0.9 * len(played)
    assert code == 0


def test_message_filters_wiring_with_a_stand_in(tiny_bundle: Path) -> None:
    """The node's use of message_filters' Python API (Subscriber(node, type, topic,
    qos_profile=...), registerCallback, ApproximateTimeSynchronizer(fs, queue_size, slop)),
    checked here against a minimal stand-in module; the real package is tested above."""
    script = textwrap.dedent(f"""
        import sys, time, types
        import numpy as np
        import rclpy
        mf = types.ModuleType("message_filters")
        class SimpleFilter:
            def __init__(self):
                self.callbacks = {{}}
            def registerCallback(self, cb, *args):
                self.callbacks[len(self.callbacks)] = (cb, args)
            def signalMessage(self, *msg):
                for cb, args in list(self.callbacks.values()):
                    cb(*(msg + args))
        class Subscriber(SimpleFilter):
            def __init__(self, *args, **kwargs):
                SimpleFilter.__init__(self)
                self.sub = args[0].create_subscription(*args[1:], self.callback, **kwargs)
            def callback(self, msg):
                self.signalMessage(msg)
        class ApproximateTimeSynchronizer(SimpleFilter):  # exact stamps are enough here
            def __init__(self, fs, queue_size, slop):
                SimpleFilter.__init__(self)
                assert queue_size >= 2 and slop > 0
                self.queues = [{{}} for _ in fs]
                for i, f in enumerate(fs):
                    f.registerCallback(self.add, i)
            def add(self, msg, i):
                stamp = (msg.header.stamp.sec, msg.header.stamp.nanosec)
                self.queues[i][stamp] = msg
                if all(stamp in q for q in self.queues):
                    self.signalMessage(*[q.pop(stamp) for q in self.queues])
        mf.Subscriber, mf.ApproximateTimeSynchronizer = Subscriber, ApproximateTimeSynchronizer
        sys.modules["message_filters"] = mf
        from tdfusion_ros.ros.node import FusionNode
        from tdfusion_ros.ros.ros_image import array_to_image
        rclpy.init(args=["node", "--ros-args", "-p", "bundle:={tiny_bundle}",
                         "-p", "backend:=onnxruntime", "-p", "autostart:=false",
                         "-p", "sync.policy:=message_filters"])
        node = FusionNode()
        from tdfusion_ros.ros.node import SUCCESS
        assert node.trigger_configure() == SUCCESS and node.trigger_activate() == SUCCESS
        thermal_sub, rgb_sub, sync = node._mf_filters
        rng = np.random.default_rng(0)
        ir = rng.integers(0, 255, (48, 64), dtype=np.uint8)
        vi = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        for i in range(1, 4):
            thermal_sub.callback(array_to_image(ir, "mono8", i * 10**8, "t"))
            rgb_sub.callback(array_to_image(vi, "bgr8", i * 10**8, "c"))
            deadline = time.monotonic() + 30
            while node._outputs < i and time.monotonic() < deadline:
                time.sleep(0.02)
        bad = array_to_image(ir, "mono8", 5 * 10**8, "t")
        bad.encoding = "bogus"
        thermal_sub.callback(bad)
        rgb_sub.callback(array_to_image(vi, "bgr8", 5 * 10**8, "c"))
        stats = node._source.stats()
        assert node._outputs == 3, stats
        assert stats["pairs"]["formed"] == 3 and stats["pairs"]["bad_message_in_pair"] == 1
        assert stats["streams"]["thermal"]["dropped"] == {{"unknown_encoding": 1}}, stats
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=ros_env(domain_id()), timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_launch_spec_is_what_the_launch_file_uses() -> None:
    """The launch file builds its node from node_params (shared, not copied)."""
    import ast

    text = (REPO / "launch" / "fusion.launch.py").read_text()
    tree = ast.parse(text, "fusion.launch.py")  # launch/launch_ros are not importable here
    assert "node_params.launch_spec(" in text and "node_params.launch_arguments()" in text
    # ROS arguments go in ros_arguments: launch_ros writes the one --ros-args itself, so a
    # "--ros-args" in `arguments` would put a second one on the command line.
    nodes = [c for c in ast.walk(tree) if isinstance(c, ast.Call)
             and getattr(c.func, "id", getattr(c.func, "attr", "")) == "Node"]
    assert len(nodes) == 1
    keywords = {k.arg: k.value for k in nodes[0].keywords}
    assert "ros_arguments" in keywords
    assert not any(isinstance(c, ast.Constant) and c.value == "--ros-args"
                   for c in ast.walk(nodes[0]))
    spec = node_params.launch_spec({"namespace": "robot", "rgb_topic": "/cam/rgb/compressed"})
    args = spec.ros_arguments()
    assert args[args.index("--params-file") + 1] == str(node_params.default_config_path())
    assert "__ns:=/robot" in " ".join(args) and "rgb/image_raw:=/cam/rgb/compressed" in args
    assert spec.env["FASTDDS_BUILTIN_TRANSPORTS"] == "LARGE_DATA"
    assert spec.parameters[0] == str(node_params.default_config_path())


def test_config_documents_every_parameter() -> None:
    values = node_params.load_params_file(REPO / "config" / "fusion.yaml")
    assert set(values) == set(node_params.BY_NAME)
    assert node_params.validate(values) == node_params.defaults()
    resolved = node_params.resolve_config(overrides={"sync.slop": 0.05})
    assert node_params.pairing_config(resolved, "every").slop_ns == 50_000_000
    text = (REPO / "config" / "fusion.yaml").read_text()
    for spec in node_params.PARAMETERS:
        assert spec.description.split()[0] in text


# ============================================================================ the driver
def _load_pairs(data: Path, count: int) -> list[tuple[Any, Any]]:
    import cv2

    names = sorted(p.stem for p in (data / "det" / "vi").glob("*.png"))[:count]
    pairs = []
    for name in names:
        ir = cv2.imread(str(data / "det" / "ir" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        vi = cv2.imread(str(data / "det" / "vi" / f"{name}.png"), cv2.IMREAD_COLOR)
        pairs.append((cv2.resize(ir, SIZE, interpolation=cv2.INTER_AREA),
                      cv2.resize(vi, SIZE, interpolation=cv2.INTER_AREA)))
    return pairs


def driver_main(argv: list[str]) -> int:  # noqa: C901 - one scenario, read top to bottom
    import argparse
    import random

    import numpy as np
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rcl_interfaces.srv import SetParameters
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image
    from std_srvs.srv import SetBool
    from vision_msgs.msg import Detection2DArray

    from tdfusion_ros.ros.ros_image import array_to_image, image_to_array, stamp_to_ns

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--short", action="store_true", help="nominal phase only")
    parser.add_argument("--offset", type=float, default=THERMAL_OFFSET)
    parser.add_argument("--match-timeout", type=float, default=90.0)
    args = parser.parse_args(argv)
    rng = random.Random(6)
    pairs = _load_pairs(Path(args.data), 12)

    rclpy.init()
    node = Node("fusion_test_driver")
    reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    # deep enough that no message is overwritten before the node takes it, however slow it is
    pub_thermal = node.create_publisher(Image, "/thermal/image_raw", 100)
    pub_rgb = node.create_publisher(Image, "/rgb/image_raw", 100)
    lock = threading.Lock()
    phase = ["startup"]
    sent_rgb: dict[int, Any] = {}
    record: dict[str, Any] = {"played": {}, "services": {},
                              "outputs": {"image": [], "detections": [], "segmentation": [],
                                          "overlay": []},
                              "diagnostics": [], "books": [], "play_seconds": {}}

    def on_image(kind: str, msg: Any) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        pixels = image_to_array(msg)
        entry = {"phase": phase[0], "stamp": stamp, "frame_id": msg.header.frame_id,
                 "width": msg.width, "height": msg.height, "encoding": msg.encoding,
                 "step": msg.step}
        if kind == "image":
            sent = sent_rgb.get(stamp)
            entry["equals_rgb"] = bool(sent is not None and sent.shape == pixels.shape
                                       and np.array_equal(sent, pixels))
        if kind == "segmentation":
            entry["classes"] = sorted(int(v) for v in np.unique(pixels))
        with lock:
            record["outputs"][kind].append(entry)

    def on_detections(msg: Any) -> None:
        boxes = [{"stamp": stamp_to_ns(d.header.stamp), "frame_id": d.header.frame_id,
                  "results": len(d.results),
                  "class_id": d.results[0].hypothesis.class_id if d.results else None,
                  "score": d.results[0].hypothesis.score if d.results else None,
                  "cx": d.bbox.center.position.x, "cy": d.bbox.center.position.y,
                  "w": d.bbox.size_x, "h": d.bbox.size_y} for d in msg.detections]
        with lock:
            record["outputs"]["detections"].append(
                {"phase": phase[0], "stamp": stamp_to_ns(msg.header.stamp),
                 "frame_id": msg.header.frame_id, "boxes": boxes})

    def on_diagnostics(msg: Any) -> None:
        entry: dict[str, Any] = {"phase": phase[0]}
        for status in msg.status:
            part = status.name.rsplit(": ", 1)[-1]
            entry[part] = {kv.key: kv.value for kv in status.values}
            if part == "state":
                entry["level"] = int.from_bytes(status.level, "little") \
                    if isinstance(status.level, bytes) else int(status.level)
        if "state" in entry:
            with lock:
                record["diagnostics"].append(entry)

    for kind, topic in (("image", "/fused/image"), ("segmentation", "/fused/segmentation"),
                        ("overlay", "/fused/segmentation_overlay")):
        node.create_subscription(Image, topic, lambda m, k=kind: on_image(k, m), reliable)
    node.create_subscription(Detection2DArray, "/fused/detections", on_detections, reliable)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, reliable)
    enable = node.create_client(SetBool, "/fusion_node/enable")
    set_params = node.create_client(SetParameters, "/fusion_node/set_parameters")
    executor = MultiThreadedExecutor(num_threads=2)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()

    def close() -> None:
        """Shut our side down; this must not fail the run (a callback may still be running
        in the spinner while the executor stops)."""
        try:
            executor.shutdown(timeout_sec=5.0)
            spinner.join(timeout=5.0)
            node.destroy_node()
        except Exception as err:  # noqa: BLE001
            print(f"driver shutdown: {err!r}", file=sys.stderr)
        rclpy.try_shutdown()

    def wait_for(predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.05)

    def call(client: Any, request: Any) -> Any:
        wait_for(client.service_is_ready, 30, f"service {client.srv_name}")
        future = client.call_async(request)
        wait_for(future.done, 30, f"reply of {client.srv_name}")
        return future.result()

    def active() -> bool:
        with lock:
            return any(d["state"].get("lifecycle_state") == "active"
                       for d in record["diagnostics"])

    def matched() -> bool:
        return (pub_thermal.get_subscription_count() >= 1
                and pub_rgb.get_subscription_count() >= 1 and active())

    try:
        wait_for(matched, args.match_timeout, "the node")
    except TimeoutError:
        with lock:
            states = [d["state"].get("lifecycle_state") for d in record["diagnostics"]]
        print(f"never matched the node in {args.match_timeout:.0f} s: thermal subscribers "
              f"{pub_thermal.get_subscription_count()}, rgb subscribers "
              f"{pub_rgb.get_subscription_count()}, node states seen {states[-3:]} "
              f"of {len(states)} diagnostics", file=sys.stderr)
        close()
        return NEVER_MATCHED  # nothing sent yet: the test starts both sides again
    wait_for(lambda: node.count_publishers("/fused/image") >= 1, 30, "fused/image")

    now_ns = lambda: node.get_clock().now().nanoseconds  # noqa: E731
    tick = [0]
    last_nominal = [0]
    sent = {"thermal": 0, "rgb": 0}  # every message published to the node, bad ones too
    lost_at_start = {"thermal": 0, "rgb": 0, "images": 0}  # before both sides had matched

    def books() -> dict[str, int]:
        """The node's counters (inputs status of its last /diagnostics) as integers."""
        with lock:
            inputs = record["diagnostics"][-1]["inputs"] if record["diagnostics"] else {}
        return {k: int(v) for k, v in inputs.items() if v.lstrip("-").isdigit()}

    def delivered() -> int:
        with lock:
            return len(record["outputs"]["image"])

    def wait_idle(what: str, exact: bool = True, timeout: float = 120.0) -> dict[str, int]:
        """Wait until the node has gone idle on everything sent: every message arrived (when
        ``exact``), nothing pending or in progress, its counters unchanged over two
        /diagnostics, and every image it published received here. Pacing follows the node,
        not the clock; the deadline is for a node that is stuck, and says where it stands."""
        deadline = time.monotonic() + timeout
        with lock:
            seen = len(record["diagnostics"])
        previous: dict[str, int] | None = None
        while True:
            with lock:
                count = len(record["diagnostics"])
            if count > seen:
                seen = count
                now = books()
                published = sum(v for k, v in now.items() if k.startswith("published."))
                idle = now.get("in_progress", 1) == 0 and now.get("pairs.pending", 1) == 0
                if exact:
                    idle = (idle and delivered() >= published - lost_at_start["images"]
                            and all(now.get(f"{s}.arrived") == sent[s] - lost_at_start[s]
                                    for s in sent))
                if idle and now == previous:
                    return now
                previous = now
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the node did not go idle after {what} within {timeout:.0f} s: sent "
                    f"{sent} (lost before matching {lost_at_start}), {delivered()} images "
                    f"received here; its books: {json.dumps(books(), sort_keys=True)}")
            time.sleep(0.02)

    def snapshot(name: str, exact: bool = True) -> dict[str, int]:
        """The books once idle after phase ``name``; the tests compare consecutive ones."""
        now = wait_idle(f"phase {name}", exact)
        record["books"].append({"phase": name, "books": now, "sent": dict(sent),
                                "lost_at_start": dict(lost_at_start)})
        return now

    def play(name: str, count: int, thermal_on: bool = True, bad: dict | None = None,
             until: Any = None, idle_around: tuple[int, ...] = ()) -> None:
        """``count`` ticks at RATE_HZ (more, up to 60 s, while ``until()`` is false: the node
        has not shown the behaviour yet); ``bad`` maps tick index -> injection; the node is
        let go idle before and after each tick in ``idle_around``, so that tick's fate does
        not depend on whether the worker was busy."""
        phase[0] = name
        played = record["played"].setdefault(name, [])
        # a phase that follows the last one at once keeps the cameras' cadence: its first
        # stamps are a period after the last ones (not a few ms, which would pair across)
        ahead_ns = max(0, last_nominal[0] + int(1e9 / RATE_HZ) - now_ns())
        start, start_ns = time.monotonic() + ahead_ns / 1e9, now_ns() + ahead_ns
        i = 0
        while i < count or (until is not None and not until() and i < count + 60 * RATE_HZ):
            if i in idle_around:  # then restart the clock (the stamps leave a gap)
                wait_idle(f"tick {i} of {name}")
                start = time.monotonic() - i / RATE_HZ
                start_ns = now_ns() - int(i * 1e9 / RATE_HZ)
            due = start + i / RATE_HZ
            time.sleep(max(0.0, due - time.monotonic()))
            ir, vi = pairs[tick[0] % len(pairs)]
            tick[0] += 1
            # stamped at the planned time, as a camera stamps its exposures: a driver that
            # wakes late (a loaded machine) must not send stamps that go backwards
            nominal = start_ns + int(i * 1e9 / RATE_HZ)
            last_nominal[0] = nominal
            rgb_stamp = nominal + int(rng.uniform(-JITTER, JITTER) * 1e9)
            thermal_stamp = nominal - int(args.offset * 1e9) + int(
                rng.uniform(-JITTER, JITTER) * 1e9)
            mono16 = (ir.astype(np.uint16) * 200 + 5000)  # a radiometric-looking thermal
            thermal_msg = array_to_image(mono16, "mono16", thermal_stamp, THERMAL_FRAME_ID)
            rgb_msg = array_to_image(vi, "rgb8" if i % 2 else "bgr8", rgb_stamp, FRAME_ID)
            injection = (bad or {}).get(i)
            if injection == "unknown_encoding":
                thermal_msg.encoding = "bogus16"
            elif injection == "zero_size":
                rgb_msg.width = rgb_msg.height = rgb_msg.step = 0
                rgb_msg.data = array_to_image(np.zeros((1, 1), np.uint8), "mono8").data[:0]
            elif injection == "truncated_data":
                rgb_msg.data = rgb_msg.data[: len(rgb_msg.data) // 2]
            elif injection == "size_mismatch":
                small = np.ascontiguousarray(mono16[::2, ::2])
                thermal_msg = array_to_image(small, "mono16", thermal_stamp, THERMAL_FRAME_ID)
            sent_rgb[rgb_stamp] = vi
            if thermal_on:
                pub_thermal.publish(thermal_msg)
                sent["thermal"] += 1
            pub_rgb.publish(rgb_msg)
            sent["rgb"] += 1
            if injection == "stamp_went_backwards":
                late = array_to_image(mono16, "mono16", thermal_stamp - 50_000_000,
                                      THERMAL_FRAME_ID)
                pub_thermal.publish(late)
                sent["thermal"] += 1
            played.append({"rgb_stamp": rgb_stamp, "thermal_stamp": thermal_stamp,
                           "t": time.monotonic() - start, "bad": injection is not None,
                           "thermal": thermal_on})
            i += 1
        record["play_seconds"][name] = time.monotonic() - start

    def grew(key: str, by: int) -> Any:
        base = books().get(key, 0)
        return lambda: books().get(key, 0) >= base + by

    # startup: play until a fused image came back (both directions matched), then book what
    # never reached the node as lost before matching: from here on every message must arrive
    play("startup", 1, until=lambda: delivered() >= 1)
    idle = snapshot("startup", exact=False)
    for stream in sent:
        lost_at_start[stream] = sent[stream] - idle[f"{stream}.arrived"]
    lost_at_start["images"] = sum(v for k, v in idle.items()
                                  if k.startswith("published.")) - delivered()
    record["books"][-1]["lost_at_start"] = dict(lost_at_start)
    play("nominal", 40)
    snapshot("nominal")
    if not args.short:
        bad = {3: "unknown_encoding", 6: "zero_size", 9: "truncated_data", 12: "size_mismatch",
               15: "stamp_went_backwards"}
        play("bad_inputs", 20, bad=bad, idle_around=(12, 13))
        snapshot("bad_inputs")
        play("thermal_stopped", 20, thermal_on=False, until=grew("published.rgb_only", 5))
        play("thermal_back", 15, until=grew("published.fusion", 5))
        snapshot("thermal_back")

        def set_param(name: str, value: Any) -> dict:
            request = SetParameters.Request()
            request.parameters = [Parameter(name, value=value).to_parameter_msg()]
            result = call(set_params, request).results[0]
            return {"successful": result.successful, "reason": result.reason}

        record["services"]["set_conf_0.99"] = set_param("detection.conf_threshold", 0.99)
        record["services"]["set_conf_1.5"] = set_param("detection.conf_threshold", 1.5)
        record["services"]["set_slop"] = set_param("sync.slop", 0.05)
        play("strict", 8)
        snapshot("strict")
        record["services"]["set_conf_back"] = set_param("detection.conf_threshold", -1.0)
        reply = call(enable, SetBool.Request(data=False))
        record["services"]["disable"] = {"success": reply.success, "message": reply.message}
        play("paused", 10)
        snapshot("paused")
        # a diagnostic that arrives once the node is enabled again is not a "paused" one
        phase[0] = "enabling"
        reply = call(enable, SetBool.Request(data=True))
        record["services"]["enable"] = {"success": reply.success, "message": reply.message}
        play("resumed", 10)
        snapshot("resumed")
    phase[0] = "end"
    with lock:
        Path(args.out).write_text(json.dumps(record))
    close()
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "driver":
    sys.exit(driver_main(sys.argv[2:]))
