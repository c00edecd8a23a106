"""Live mode: play the bag over DDS into the fusion node started as the launch file starts it,
record what it publishes, and compare with the offline run.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tdfusion_ros.bags.reader import (
    COMPRESSED_TYPE,
    BagDamageWarning,
    BagReader,
)
from tdfusion_ros.bags.replay.common import (
    _END,
    _SEC,
    DETECTIONS_TYPE,
    FUSED_DETECTIONS_TOPIC,
    FUSED_IMAGE_TOPIC,
    FUSED_SEGMENTATION_TOPIC,
    IMAGE_TYPE,
    REPO,
    ReplayOptions,
)
from tdfusion_ros.bags.replay.compare import compare_runs
from tdfusion_ros.bags.replay.inputs import _Setup
from tdfusion_ros.bags.replay.messages import fused_typestore
from tdfusion_ros.ros import node_params

# =========================================================================== live mode
# Fast DDS with LARGE_DATA sometimes never matches the node and this player (2 of about 35
# starts here, both under load; a third participant started then saw both sides' endpoints;
# once, beside four busy loops, a restarted pair did not see each other at all for 20 s).
# When this player's graph shows the node's endpoints for _STALL_S without a match, or nothing
# is ready after --live-timeout, both are restarted on the next domain, _ATTEMPTS starts in all.
_ATTEMPTS = 3
_STALL_S = 15.0


def _default_domain_id() -> int:
    return node_params.private_domain_id(os.getpid() * 13)


def _next_domain(domain: int) -> int:
    return node_params.private_domain_id(domain)  # the one after, in the safe range


def _announced(node: Any, pubs: Mapping[str, Any], recorder: _LiveRecorder) -> bool:
    """The graph shows the node's camera subscriptions and output publishers."""
    return (all(node.count_subscribers(topic) > 0 for topic in pubs)
            and all(node.count_publishers(sub.topic_name) > 0 for sub in recorder.subs))


def _discovery_state(node: Any, pubs: Mapping[str, Any], recorder: _LiveRecorder) -> str:
    """What this player sees of the node, for an error that says which half is missing."""
    subs = ", ".join(f"{topic} {pub.get_subscription_count()}" for topic, pub in pubs.items())
    advertised = ", ".join(f"{sub.topic_name} {sub.get_publisher_count()}"
                           for sub in recorder.subs)
    names = sorted(name for name in node.get_node_names() if name != node.get_name())
    return (f"matched subscribers on {subs}; matched publishers on {advertised}; other nodes in "
            f"the graph: {', '.join(names) or 'none'}")


class _LiveRecorder:
    """Subscribes to the node's outputs (raw CDR) and writes them to a bag in its own thread."""

    def __init__(self, node: Any, path: Path, topics: dict[str, str], store: Any) -> None:
        from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin, Writer
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        self.store = store
        self.queue: queue.Queue = queue.Queue()
        self.counts = {topic: 0 for topic in topics}
        self.last_output = time.monotonic()
        self.receive_wall: OrderedDict[int, float] = OrderedDict()  # image stamp -> wall time
        self.writer = Writer(path, version=9, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.conns = {}
        self.subs = []
        qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=100,
                         reliability=QoSReliabilityPolicy.RELIABLE)
        for topic, msgtype in topics.items():
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=store)
            cls = Detection2DArray if msgtype == DETECTIONS_TYPE else Image
            self.subs.append(node.create_subscription(
                cls, topic, self._callback(topic), qos, raw=True))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._write, name="live_recorder", daemon=True)
        self.thread.start()

    def _callback(self, topic: str) -> Callable[[bytes], None]:
        def on_message(data: bytes) -> None:
            now = time.monotonic()
            self.last_output = now
            self.counts[topic] += 1
            self.queue.put((topic, time.time_ns(), now, data))
        return on_message

    def _write(self) -> None:
        from tdfusion_ros.bags.reader import _cdr_header

        while True:
            item = self.queue.get()
            if item is _END:
                return
            topic, wall_ns, mono, data = item
            try:
                if topic == FUSED_IMAGE_TOPIC:
                    stamp, _ = _cdr_header(data)
                    self.receive_wall[stamp] = mono
                    while len(self.receive_wall) > 100000:
                        self.receive_wall.popitem(last=False)
                self.writer.write(self.conns[topic], wall_ns, data)
            except BaseException as err:  # noqa: BLE001 - reported after the run
                self.error = err

    def publishers_matched(self) -> bool:
        return all(sub.get_publisher_count() > 0 for sub in self.subs)

    def close(self) -> None:
        self.queue.put(_END)
        self.thread.join()
        self.writer.close()


def _node_counters(msg: Any) -> dict[str, str]:
    """Every key/value of the node's last /diagnostics message, prefixed by its status."""
    counters: dict[str, str] = {}
    for status in msg.status:
        for kv in status.values:
            if kv.key != "note":
                counters[f"{status.name.split(':')[-1].strip()}: {kv.key}"] = kv.value
    return counters


def _node_value(msg: Any, key: str) -> str | None:
    """One value of the node's /diagnostics message (any status), or None."""
    if msg is None:
        return None
    for status in msg.status:
        for kv in status.values:
            if kv.key == key:
                return kv.value
    return None


def _node_idle(msg: Any) -> bool:
    """The node reports nothing in progress and no pair waiting (older nodes: assume idle)."""
    busy = [_node_value(msg, k) for k in ("in_progress", "pairs.pending")]
    return all(v in (None, "0") for v in busy)


def _node_frame_ms(msg: Any) -> float:
    """The node's own p99 time per frame, from its /diagnostics (0 if none yet)."""
    try:
        return float(_node_value(msg, "latency.total.p99_ms") or 0.0)
    except ValueError:
        return 0.0


def run_live(opts: ReplayOptions, setup: _Setup, offline: Mapping[str, Any]) -> dict[str, Any]:
    """Play the bag into the node over DDS with /clock, record its outputs, compare them."""
    live_dir = opts.out / "live"
    live_dir.mkdir(parents=True, exist_ok=True)
    domain = opts.domain_id if opts.domain_id is not None else _default_domain_id()
    result: dict[str, Any] = {"speed": opts.speed, "domain_id": domain, "played": 0,
                              "outputs": {}, "bag": str(live_dir / "fused_bag"),
                              "node_log": str(live_dir / "node.log")}
    pipe = setup.pipeline
    out_topics = {FUSED_IMAGE_TOPIC: IMAGE_TYPE}
    if pipe.detection_enabled:
        out_topics[FUSED_DETECTIONS_TOPIC] = DETECTIONS_TYPE
    if pipe.segmentation_enabled:
        out_topics[FUSED_SEGMENTATION_TOPIC] = IMAGE_TYPE
    try:
        spec = node_params.launch_spec({
            "config": str(setup.effective_config), "bundle": str(setup.bundle),
            "use_sim_time": "true", "thermal_topic": setup.thermal_topic,
            "rgb_topic": setup.rgb_topic})
    except node_params.ParameterError as err:
        result["error"] = f"cannot build the node's launch arguments: {err}"
        return result
    command = spec.command(list(opts.node_command or [sys.executable, "-m",
                                                      "tdfusion_ros.node"]))
    result["node_command"] = " ".join(command)
    for key, value in spec.env.items():
        os.environ.setdefault(key, value)  # our participant needs the same transport
    for attempt in range(1, _ATTEMPTS + 1):
        result["domain_id"] = domain
        result["note"] = (
            f"The bag was played over DDS (ROS_DOMAIN_ID {domain}, Fast DDS large-data "
            f"transport) at {opts.speed:g}x its recorded rate with /clock, into the fusion node "
            "started as fusion.launch.py starts it (same parameters file, use_sim_time:=true). "
            "The node processes the newest pair and skips the others when inference is slower "
            "than the cameras; pairs both processed are compared with the offline outputs.")
        retry = _attempt(opts, setup, offline, command, spec.env, domain, out_topics, result)
        if not retry or attempt == _ATTEMPTS:
            break
        failed_log = live_dir / f"node.attempt{attempt}.log"
        (live_dir / "node.log").replace(failed_log)
        shutil.rmtree(live_dir / "fused_bag", ignore_errors=True)
        opts.log(f"live: {result.pop('error')}; the node's log is kept in {failed_log}. "
                 f"Restarting the node and the player on ROS_DOMAIN_ID {_next_domain(domain)} "
                 f"(attempt {attempt + 1} of {_ATTEMPTS})")
        result.pop("node_exit", None)
        result["retried_after"] = result.get("retried_after", []) + [domain]
        domain = _next_domain(domain)
    if "error" in result:
        tail = (live_dir / "node.log").read_text(errors="replace")[-3000:]
        result["node_log_tail"] = tail
        opts.log(f"live: {result['error']}\nnode log (end):\n{tail}")
        return result
    offline_bag = Path(offline["outputs"]["bag"]) if offline["outputs"].get("bag") else None
    if offline_bag is None:
        result["error"] = "the offline run wrote no bag (--no-bag): nothing to compare with"
        return result
    result["comparison"] = compare_runs(offline_bag, live_dir / "fused_bag",
                                        thermal16=bool(offline["frames"].get("thermal_16bit")))
    cmp_ = result["comparison"]
    opts.log(f"live: {cmp_['both']} pairs processed by both, {cmp_['skipped_by_node']} skipped "
             f"by the node, images equal {cmp_['images_equal']}/{cmp_['both']}, detections "
             f"equal {cmp_['detections_equal']}/{cmp_['detections_compared']}")
    return result


def _attempt(opts: ReplayOptions, setup: _Setup, offline: Mapping[str, Any],
             command: list[str], node_env: Mapping[str, str], domain: int,
             out_topics: dict[str, str], result: dict[str, Any]) -> bool:
    """Start the node, play, record; fills ``result``. True: discovery stalled, worth a retry."""
    live_dir = opts.out / "live"
    env = dict(os.environ)
    env.update(node_env)
    env["ROS_DOMAIN_ID"] = str(domain)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env["PYTHONUNBUFFERED"] = "1"
    log_file = (live_dir / "node.log").open("w")
    node_proc = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                 cwd=str(REPO), start_new_session=True)
    opts.log(f"live: started the node (pid {node_proc.pid}, ROS_DOMAIN_ID {domain}); log "
             f"{live_dir / 'node.log'}")
    recorder = None
    context = None
    retry = False
    try:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        context = rclpy.Context()
        rclpy.init(context=context, domain_id=domain)
        node = rclpy.create_node("tdfusion_replay_player", context=context)
        store = fused_typestore()
        recorder = _LiveRecorder(node, live_dir / "fused_bag", out_topics, store)
        last_diag: list[Any] = [None, 0]

        def on_diagnostics(msg: Any) -> None:
            last_diag[0] = msg
            last_diag[1] += 1

        from diagnostic_msgs.msg import DiagnosticArray

        node.create_subscription(DiagnosticArray, node_params.DIAGNOSTICS_TOPIC,
                                 on_diagnostics, 10)
        total = offline["timing"]["stages"].get("total", {})
        result["expected_ms"] = total.get("p99") or 0.0
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        spinner = threading.Thread(target=_spin, args=(executor, context), daemon=True)
        spinner.start()
        played, latency = _play(opts, setup, node, recorder, node_proc, result, last_diag)
        result["played"] = played
        if latency:
            arr = np.asarray(latency)
            result["latency_ms"] = {"p50": float(np.percentile(arr, 50)),
                                    "p99": float(np.percentile(arr, 99)),
                                    "mean": float(arr.mean()), "count": len(latency)}
        if last_diag[0] is not None:
            result["node_counters"] = _node_counters(last_diag[0])
    except _NotReadyError as err:
        result["error"] = str(err)
        retry = node_proc.poll() is None
    except _LiveError as err:
        result["error"] = str(err)
    except Exception as err:  # noqa: BLE001 - the report says what happened
        result["error"] = f"{type(err).__name__}: {err}"
    finally:
        result["node_exit"] = _stop_process(node_proc)
        log_file.close()
        if recorder is not None:
            recorder.close()
            result["outputs"] = {t.rsplit("/", 1)[-1]: n for t, n in recorder.counts.items()}
            if recorder.error is not None and "error" not in result:
                result["error"] = f"recording failed: {recorder.error}"
        if context is not None:
            try:
                import rclpy

                rclpy.try_shutdown(context=context)
            except Exception:  # noqa: BLE001
                pass
    return retry


class _LiveError(Exception):
    pass


class _NotReadyError(_LiveError):
    """The node runs but this player and it have not matched: a discovery problem."""


def _spin(executor: Any, context: Any) -> None:
    try:
        while context.ok():
            executor.spin_once(timeout_sec=0.05)
    except Exception:  # noqa: BLE001 - shutting down
        pass


def _stop_process(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
    return proc.returncode


def _clock_msg(ns: int) -> Any:
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    sec, nanosec = divmod(int(ns), _SEC)
    return Clock(clock=Time(sec=sec, nanosec=nanosec))


def _play(opts: ReplayOptions, setup: _Setup, node: Any, recorder: _LiveRecorder,
          node_proc: subprocess.Popen, result: dict[str, Any],
          diagnostics: list[Any]) -> tuple[int, list[float]]:
    """Wait for the node, play the bag in real time (scaled), wait for its last outputs."""
    from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import CompressedImage, Image

    reader = BagReader(opts.bag, [setup.thermal_topic, setup.rgb_topic])
    types = {t.name: t.msgtype for t in reader.topics}
    qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                     reliability=QoSReliabilityPolicy.RELIABLE)
    pubs = {topic: node.create_publisher(CompressedImage if types[topic] == COMPRESSED_TYPE
                                         else Image, topic, qos)
            for topic in (setup.thermal_topic, setup.rgb_topic)}
    clock = node.create_publisher(Clock, "/clock", 10)
    start_ns = reader.start_ns or 0
    clock.publish(_clock_msg(start_ns))

    # wait until the node is active: subscribed to both cameras, publishing its outputs
    deadline = time.monotonic() + opts.live_timeout
    announced_since: float | None = None
    while True:
        if node_proc.poll() is not None:
            raise _LiveError(f"the node exited with code {node_proc.returncode} before it was "
                             "ready")
        ready = (all(p.get_subscription_count() > 0 for p in pubs.values())
                 and recorder.publishers_matched())
        if ready:
            break
        now = time.monotonic()
        if _announced(node, pubs, recorder):
            announced_since = announced_since or now
            if now - announced_since > _STALL_S:
                raise _NotReadyError(
                    f"discovery stalled: the node's topics were announced {_STALL_S:g} s ago "
                    f"but none matched this player ({_discovery_state(node, pubs, recorder)})")
        else:
            announced_since = None
        if now > deadline:
            raise _NotReadyError(f"the node was not ready after {opts.live_timeout:g} s "
                                 f"({_discovery_state(node, pubs, recorder)})")
        clock.publish(_clock_msg(start_ns))
        time.sleep(0.1)
    for _ in range(5):  # let both directions finish discovery
        clock.publish(_clock_msg(start_ns))
        time.sleep(0.1)

    # play
    speed = opts.speed
    sent: OrderedDict[int, float] = OrderedDict()  # RGB stamp -> wall time published
    played = 0
    t0_bag: int | None = None
    t0_wall = 0.0
    last_clock = 0.0
    now_bag = start_ns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BagDamageWarning)
        for msg in reader.messages(decode=False):
            if t0_bag is None:
                t0_bag, t0_wall = msg.receive_ns, time.monotonic()
            target = t0_wall + (msg.receive_ns - t0_bag) / 1e9 / speed
            while True:
                now = time.monotonic()
                if now - last_clock >= 0.01:
                    now_bag = min(msg.receive_ns, t0_bag + int((now - t0_wall) * speed * 1e9))
                    clock.publish(_clock_msg(now_bag))
                    last_clock = now
                if now >= target:
                    break
                time.sleep(min(0.005, target - now))
            if node_proc.poll() is not None:
                raise _LiveError(f"the node exited with code {node_proc.returncode} during "
                                 "playback")
            clock.publish(_clock_msg(msg.receive_ns))
            now_bag = msg.receive_ns
            pubs[msg.topic].publish(bytes(msg.raw))
            if msg.topic == setup.rgb_topic:
                sent[msg.stamp_ns] = time.monotonic()
                while len(sent) > 100000:
                    sent.popitem(last=False)
            played += 1
    # drain: the clock stays at the end of the bag (no camera timeout), wait for quiet
    # (the node may still be working on its last pair: allow a few of its slowest frames, as
    # it reports them or as the offline run saw them, after the later of the end of playback
    # and its last output), then ask for one more /diagnostics; until it shows the node idle
    # (nothing in progress, no pair pending), wait again: a loaded machine is slow, not done.
    played_until = time.monotonic()
    end = played_until + max(30.0, opts.live_timeout)
    period_ns = node_params.seconds_to_ns(setup.values["diagnostics.period"])
    while True:
        quiet = max(3.0, 4.0 * max(result.get("expected_ms") or 0.0,
                                   _node_frame_ms(diagnostics[0])) / 1000.0)
        while time.monotonic() < end and node_proc.poll() is None:
            if time.monotonic() - max(recorder.last_output, played_until) > quiet:
                break
            clock.publish(_clock_msg(now_bag))
            time.sleep(0.1)
        # one more /diagnostics (its timer runs on the simulated clock): step the clock past it
        seen = diagnostics[1]
        deadline = time.monotonic() + 3.0
        while (diagnostics[1] == seen and time.monotonic() < deadline
               and node_proc.poll() is None):
            now_bag += period_ns // 4 + 1
            clock.publish(_clock_msg(now_bag))
            time.sleep(0.05)
        if _node_idle(diagnostics[0]) or time.monotonic() >= end or node_proc.poll() is not None:
            break
        time.sleep(0.5)  # still busy: give it time before asking again
    latency = [(recorder.receive_wall[s] - w) * 1000.0 for s, w in sent.items()
               if s in recorder.receive_wall]
    return played, latency
