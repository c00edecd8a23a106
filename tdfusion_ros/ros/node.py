"""``fusion_node``: the rclpy shell around the fusion pipeline.

    ros2 run tdfusion_ros fusion_node --ros-args --params-file config/fusion.yaml
    ros2 launch tdfusion_ros fusion.launch.py

Thin on purpose (in the manner of ros2/demos and yolo_ros): parameters come from
``node_params``, pairing from ``pairing``, every pixel operation from ``pipeline``; this file
only moves messages. The threads:

* executor thread: subscription callbacks convert each image (no inference, ~1 ms) and push it
  into the pairing core, which keeps at most one pending pair (the newest); services,
  parameter changes and the /diagnostics timer also run here;
* worker thread: takes the newest pair (or, while a camera is silent, the newest single
  image), runs the pipeline and publishes. Callbacks therefore never wait for inference, and
  a pair is never older than one inference time plus one frame when it is processed.

A lifecycle node (rclpy.lifecycle, in Humble and later): configure loads the bundle and its
engines, activate subscribes and starts processing, deactivate unsubscribes. ``autostart``
(default true) runs configure + activate at start, so plain ``ros2 launch`` works; a failed
configure then ends the process with exit code 1 and the reason (e.g. the missing bundle file).
The ``~/enable`` service pauses and resumes processing without touching subscriptions.
Bad messages are dropped and counted by cause, with throttled warnings; nothing a message
carries can end the node.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.parameter import Parameter
from rclpy.qos import (
    QoSDurabilityPolicy,
    QoSHistoryPolicy,
    QoSProfile,
    QoSReliabilityPolicy,
)
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import SetBool

from tdfusion_ros.ros import node_params as params
from tdfusion_ros.ros.pair_sources import BuiltinSource, Frame, MessageFiltersSource
from tdfusion_ros.ros.ros_image import (  # noqa: F401 - the drop causes are part of our API
    BAD_STEP,
    CONVERSION_ERROR,
    DECODE_FAILED,
    TRUNCATED_DATA,
    UNKNOWN_ENCODING,
    ZERO_SIZE,
    ImageConversionError,
    array_to_image,
    classify_conversion_error,
    detections_to_msg,
    image_to_bgr8,
    image_to_mono,
    set_header,
    stamp_to_ns,
)
from tdfusion_ros.runtime.bundle import BundleError
from tdfusion_ros.runtime.engines import EngineError
from tdfusion_ros.runtime.pairing import (
    DUPLICATE_STAMP,
    STAMP_WENT_BACKWARDS,
    Stream,
    pair_drops_after_take,
    seconds_to_ns,
    unaccounted,
)
from tdfusion_ros.runtime.pipeline import (
    FUSION,
    RGB_ONLY,
    THERMAL_ONLY,
    FrameResult,
    FusionPipeline,
    LatencyStats,
    PipelineError,
    PipelineInputError,
    overlay,
)

try:  # Humble and later
    from rclpy.lifecycle import Node as _BaseNode
    from rclpy.lifecycle import State, TransitionCallbackReturn

    HAVE_LIFECYCLE = True
except ImportError:  # pragma: no cover - Foxy/Galactic: a plain node with the same callbacks
    from enum import Enum

    from rclpy.node import Node as _BaseNode

    State = Any  # type: ignore[misc,assignment]

    class TransitionCallbackReturn(Enum):  # type: ignore[no-redef]
        SUCCESS = 0
        FAILURE = 1
        ERROR = 2

    HAVE_LIFECYCLE = False

try:
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover - very old rclpy
    ExternalShutdownException = KeyboardInterrupt  # type: ignore[misc,assignment]

SUCCESS = TransitionCallbackReturn.SUCCESS
FAILURE = TransitionCallbackReturn.FAILURE

PROCESSING_ERROR = "processing_error"
# Why a taken pair or single image was not published (beside the pipeline's input errors).
PUBLISH_FAILED = "publish_failed"
DISCARDED_AT_STOP = "discarded_at_stop"
RATE_WINDOW_S = 2.0
NO_INPUT = "no_input"
# Modes worth a log line when entered (waiting_for_* and paused are transient or asked for).
REPORTED_MODES = (FUSION, RGB_ONLY, THERMAL_ONLY, NO_INPUT)


# ----------------------------------------------------------------------------- the node
def _descriptor(spec: params.Param) -> ParameterDescriptor:
    descriptor = ParameterDescriptor(name=spec.name, description=spec.description,
                                     additional_constraints=spec.constraints(),
                                     read_only=spec.read_only)
    if spec.kind in ("float", "float_array"):
        descriptor.dynamic_typing = True  # accept `1` for 1.0; check_value converts
    if spec.range and spec.kind == "float":
        descriptor.floating_point_range = [FloatingPointRange(
            from_value=float(spec.range[0]), to_value=float(spec.range[1]), step=0.0)]
    elif spec.range and spec.kind == "int":
        descriptor.integer_range = [IntegerRange(
            from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)]
    return descriptor


class FusionNode(_BaseNode):
    """Thermal + RGB in; fused image, detections, segmentation and diagnostics out."""

    def __init__(self, node_name: str = params.NODE_NAME, **kwargs: Any) -> None:
        super().__init__(node_name, **kwargs)
        self.exit_code: int | None = None
        self._values = self._declare_parameters()
        self._state = "unconfigured"
        self._config_error = ""
        self._processing = True
        self._active = False
        self._pipeline: FusionPipeline | None = None
        self._source: BuiltinSource | MessageFiltersSource | None = None
        self._camera_subs: list[Any] = []
        self._mf_filters: list[Any] = []
        self._out_pubs: dict[str, Any] = {}
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._last_valid = {s: self._clock_s() for s in Stream}
        self._arrivals = {s: 0 for s in Stream}
        self._run_length = {s: 0 for s in Stream}  # valid messages since the other's last
        self._ignored_paused = {s: 0 for s in Stream}
        self._outputs = 0
        # What the worker did with what it took, read with the pairer's counters under one
        # lock so /diagnostics always shows balanced books (see ``_accounts``).
        self._accounts_lock = threading.Lock()
        self._published = {FUSION: 0, RGB_ONLY: 0, THERMAL_ONLY: 0}
        self._in_progress = 0
        self._frame_errors: dict[str, int] = {}
        self._mode = "inactive"
        self._logged_mode = ""
        self._last_rgb_frame_id = ""
        self._throttle: dict[str, tuple[float, int]] = {}
        self._rate_history: deque[tuple[float, dict[str, int]]] = deque()
        self._rates: dict[str, float] = {}
        self._latency = LatencyStats(self._values["diagnostics.window"])
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self._diagnostics = self.create_publisher(DiagnosticArray, params.DIAGNOSTICS_TOPIC, 10)
        self._diag_timer = self.create_timer(self._values["diagnostics.period"],
                                             self._publish_diagnostics)
        self._enable_srv = self.create_service(SetBool, params.ENABLE_SERVICE, self._on_enable)
        self._autostart_timer = None
        if self._values["autostart"]:
            self._autostart_timer = self.create_timer(0.0, self._autostart)
        elif not HAVE_LIFECYCLE:
            self.get_logger().warning("rclpy.lifecycle is unavailable (ROS 2 before Humble): "
                                      "autostart=false leaves this plain node idle")

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> dict[str, Any]:
        """Declare every parameter with its description and range; refuse bad values."""
        from rclpy import exceptions

        bad_value = getattr(exceptions, "InvalidParameterValueException", ValueError)
        bad_type = getattr(exceptions, "InvalidParameterTypeException", bad_value)
        values = {}
        for spec in params.PARAMETERS:
            try:
                parameter = self.declare_parameter(spec.name, spec.default, _descriptor(spec))
            except bad_type as err:
                raise params.ParameterError(spec.name, f"wrong type: {err}") from None
            except bad_value as err:
                raise params.ParameterError(spec.name, f"{err} ({spec.constraints()})") from None
            values[spec.name] = parameter.value
        self._refuse_unknown_overrides()
        return params.validate(values)

    def _refuse_unknown_overrides(self) -> None:
        """A name given to this node (params file, ``-p``) that nobody declares is a typo:
        rclpy would keep it silently (``sync.slopp`` would leave ``sync.slop`` at its
        default). ROS's own (``use_sim_time``, ``qos_overrides.*``, anything rclpy declared
        on the node) pass."""
        # rclpy keeps the overrides that apply to this node (node-name and /** blocks, -p) in
        # this attribute from Foxy to Kilted; it has no public accessor.
        overrides = getattr(self, "_parameter_overrides", None) or {}
        unknown = sorted(name for name in overrides
                         if name not in params.BY_NAME and not params.is_ros_parameter(name)
                         and not self.has_parameter(name))
        if unknown:
            raise params.unknown_parameter_error(unknown[0], others=unknown[1:])

    def _current_values(self) -> dict[str, Any]:
        return params.validate({spec.name: self.get_parameter(spec.name).value
                                for spec in params.PARAMETERS})

    def _on_set_parameters(self, changes: list[Parameter]) -> SetParametersResult:
        updates = {}
        for change in changes:
            if change.name not in params.BY_NAME:
                continue
            try:
                value = params.check_value(change.name, change.value)
            except params.ParameterError as err:
                return SetParametersResult(successful=False, reason=str(err))
            if change.name not in params.DYNAMIC and self._state != "unconfigured":
                return SetParametersResult(
                    successful=False,
                    reason=f"'{change.name}' is read at configure: deactivate and clean up the "
                           "node (ros2 lifecycle set), set it, then configure again")
            updates[change.name] = value
        if not updates:
            return SetParametersResult(successful=True)
        candidate = {**self._values, **updates}
        try:
            candidate = params.validate(candidate)
            self._apply_dynamic(candidate, updates)
        except (params.ParameterError, ValueError) as err:
            return SetParametersResult(successful=False, reason=str(err))
        self._values = candidate
        for name, value in updates.items():
            self.get_logger().info(f"parameter {name} = {value!r}")
        return SetParametersResult(successful=True)

    def _apply_dynamic(self, values: dict[str, Any], updates: dict[str, Any]) -> None:
        pipeline = self._pipeline
        if pipeline is None:
            return
        if {"detection.enabled", "segmentation.enabled"} & set(updates):
            pipeline.set_outputs(
                detection=updates.get("detection.enabled"),
                segmentation=updates.get("segmentation.enabled"))
        if any(name.startswith("detection.") and name != "detection.enabled"
               for name in updates):
            settings = params.pipeline_settings(values)
            pipeline.set_thresholds(settings.conf_threshold, settings.iou_threshold,
                                    settings.max_det)

    # ------------------------------------------------------------------ lifecycle
    def _autostart(self) -> None:
        if self._autostart_timer is not None:
            self._autostart_timer.cancel()
            self.destroy_timer(self._autostart_timer)
            self._autostart_timer = None
        if self._transition("configure") != SUCCESS:
            self.get_logger().fatal(f"autostart: configure failed: {self._config_error}")
            self.exit_code = 1
            return
        if self._transition("activate") != SUCCESS:
            self.get_logger().fatal("autostart: activate failed")
            self.exit_code = 1

    def _transition(self, name: str) -> Any:
        if HAVE_LIFECYCLE:
            return getattr(self, f"trigger_{name}")()
        return getattr(self, f"on_{name}")(None)

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        """Read parameters, load the bundle and its engines, create publishers."""
        try:
            values = self._current_values()
            bundle = params.bundle_path(values)
            pipeline = FusionPipeline(bundle, params.pipeline_settings(values),
                                      log=lambda text: self.get_logger().info(
                                          self._with_topic_names(text)))
        except (params.ParameterError, BundleError, PipelineError, EngineError,
                ValueError) as err:
            self._config_error = str(err)
            self.get_logger().error(f"configure failed: {err}")
            return FAILURE
        self._values = values
        self._config_error = ""
        self._pipeline = pipeline
        self._latency = LatencyStats(values["diagnostics.window"])
        out_qos = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=values["output.depth"],
                             reliability=QoSReliabilityPolicy.RELIABLE,
                             durability=QoSDurabilityPolicy.VOLATILE)
        create = getattr(self, "create_lifecycle_publisher", self.create_publisher)
        self._out_pubs = {"image": create(Image, params.IMAGE_TOPIC, out_qos)}
        if pipeline.detector_spec is not None:
            from vision_msgs.msg import Detection2DArray

            self._out_pubs["detections"] = create(Detection2DArray, params.DETECTIONS_TOPIC,
                                                    out_qos)
        if pipeline.segmenter_spec is not None:
            self._out_pubs["segmentation"] = create(Image, params.SEGMENTATION_TOPIC, out_qos)
            self._out_pubs["overlay"] = create(Image, params.OVERLAY_TOPIC, out_qos)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="fusion_worker", daemon=True)
        self._worker.start()
        self._state = "inactive"
        engines = "; ".join(pipeline.describe().values())
        outputs = ", ".join(self._topic_name(pub, name) for name, pub in (
            (params.IMAGE_TOPIC, self._out_pubs["image"]),
            (params.DETECTIONS_TOPIC, self._out_pubs.get("detections")),
            (params.SEGMENTATION_TOPIC, self._out_pubs.get("segmentation")),
            (params.OVERLAY_TOPIC, self._out_pubs.get("overlay"))) if pub is not None)
        self.get_logger().info(f"configured: bundle {pipeline.bundle_file}; {engines}; "
                               f"outputs: {outputs}")
        return SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        """Subscribe to the cameras and start processing."""
        try:
            self._subscribe()
        except Exception as err:  # noqa: BLE001 - e.g. message_filters missing: say so
            self.get_logger().error(f"activate failed: {err}")
            self._unsubscribe()
            return FAILURE
        now = self._clock_s()
        self._last_valid = {s: now for s in Stream}
        self._active = True
        self._state = "active"
        self._mode = "waiting"
        if HAVE_LIFECYCLE:
            super().on_activate(state)  # enables the lifecycle publishers
        thermal_sub, rgb_sub = (self._camera_subs + [None, None])[:2]
        self.get_logger().info(
            f"active: {self._topic_name(thermal_sub, params.THERMAL_TOPIC)} + "
            f"{self._topic_name(rgb_sub, params.RGB_TOPIC)} -> "
            f"{self._topic_name(self._out_pubs.get('image'), params.IMAGE_TOPIC)} "
            f"({self._values['sync.policy']} "
            f"pairing, slop {self._values['sync.slop']} s, thermal offset "
            f"{self._values['sync.thermal_offset']} s)")
        return SUCCESS

    def _resolved(self, name: str) -> str:
        """``name`` as this node uses it: namespace applied, remaps followed."""
        resolve = getattr(self, "resolve_topic_name", None)  # rclpy in Humble and later
        if resolve is not None:
            try:
                return resolve(name)
            except Exception:  # noqa: BLE001 - fall back to the namespace alone
                pass
        if name.startswith("/"):
            return name
        if name.startswith("~"):
            return self.get_fully_qualified_name() + name[1:]
        return f"{self.get_namespace().rstrip('/')}/{name}"

    def _topic_name(self, entity: Any, name: str) -> str:
        """The resolved topic of a publisher/subscription, else of ``name``."""
        topic = getattr(entity, "topic_name", None) if entity is not None else None
        return topic if isinstance(topic, str) and topic else self._resolved(name)

    def _with_topic_names(self, text: str) -> str:
        """The pipeline names outputs as absolute defaults (``/fused/detections``); say the
        topic this node really publishes under its namespace and remaps."""
        for name in (params.SEGMENTATION_TOPIC, params.DETECTIONS_TOPIC, params.IMAGE_TOPIC):
            text = text.replace(f"/{name} ", f"{self._resolved(name)} ")
        return text

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._active = False
        self._unsubscribe()
        self._state = "inactive"
        self._mode = "inactive"
        if HAVE_LIFECYCLE:
            super().on_deactivate(state)
        return SUCCESS

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._teardown()
        self._state = "unconfigured"
        return SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._teardown()
        self._state = "finalized"
        return SUCCESS

    def on_error(self, state: State) -> TransitionCallbackReturn:
        self.get_logger().error("lifecycle error: tearing down to unconfigured")
        self._teardown()
        self._state = "unconfigured"
        return SUCCESS

    def _teardown(self) -> None:
        self._active = False
        self._unsubscribe()
        self._stop.set()
        self._wake.set()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=30.0)
        for publisher in self._out_pubs.values():
            destroy = getattr(self, "destroy_lifecycle_publisher", self.destroy_publisher)
            try:
                destroy(publisher)
            except Exception:  # noqa: BLE001 - already gone at shutdown
                pass
        self._out_pubs = {}
        if self._pipeline is not None:
            self._pipeline.close()
            self._pipeline = None
        self._source = None

    def close(self) -> None:
        """Stop the worker and release engines (SIGINT path: no lifecycle transitions)."""
        self._teardown()

    # ------------------------------------------------------------------ inputs
    def _input_qos(self) -> QoSProfile:
        reliability = (QoSReliabilityPolicy.RELIABLE
                       if self._values["input.reliability"] == "reliable"
                       else QoSReliabilityPolicy.BEST_EFFORT)
        return QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=self._values["input.depth"],
                          reliability=reliability, durability=QoSDurabilityPolicy.VOLATILE)

    def _message_type(self, stream: Stream) -> type:
        key = "input.thermal_transport" if stream is Stream.THERMAL else "input.rgb_transport"
        return CompressedImage if self._values[key] == "compressed" else Image

    def _topic(self, stream: Stream) -> str:
        return params.THERMAL_TOPIC if stream is Stream.THERMAL else params.RGB_TOPIC

    def _subscribe(self) -> None:
        qos = self._input_qos()
        if self._values["sync.policy"] == "message_filters":
            self._subscribe_message_filters(qos)
            return
        self._source = BuiltinSource(params.pairing_config(self._values))
        for stream in Stream:
            self._camera_subs.append(self.create_subscription(
                self._message_type(stream), self._topic(stream),
                lambda msg, s=stream: self._on_message(s, msg), qos))

    def _subscribe_message_filters(self, qos: QoSProfile) -> None:
        try:
            import message_filters
        except ImportError as err:
            raise RuntimeError("sync.policy is message_filters but the package is not "
                               "importable (apt install ros-$ROS_DISTRO-message-filters), "
                               "or use sync.policy: builtin") from err
        source = MessageFiltersSource(self._values["sync.queue_size"])
        self._source = source
        filters = {}
        for stream in Stream:
            sub = message_filters.Subscriber(self, self._message_type(stream),
                                             self._topic(stream), qos_profile=qos)
            sub.registerCallback(lambda msg, s=stream: self._on_message(s, msg))
            filters[stream] = sub
        sync = message_filters.ApproximateTimeSynchronizer(
            [filters[Stream.THERMAL], filters[Stream.RGB]], self._values["sync.queue_size"],
            self._values["sync.slop"])
        sync.registerCallback(self._on_synchronized)
        self._mf_filters = [filters[Stream.THERMAL], filters[Stream.RGB], sync]
        self._camera_subs = [f.sub for f in filters.values()]

    def _unsubscribe(self) -> None:
        for subscription in self._camera_subs:
            try:
                self.destroy_subscription(subscription)
            except Exception:  # noqa: BLE001 - already gone at shutdown
                pass
        self._camera_subs = []
        self._mf_filters = []

    def _on_message(self, stream: Stream, msg: Any) -> None:
        """Convert and push one camera image; never blocks on inference."""
        source = self._source
        if source is None or not self._active:
            return
        self._arrivals[stream] += 1
        if not self._processing:
            self._ignored_paused[stream] += 1
            return
        start = time.perf_counter()
        try:
            image = image_to_mono(msg) if stream is Stream.THERMAL else image_to_bgr8(msg)
        except ImageConversionError as err:
            reason = classify_conversion_error(msg)
            if isinstance(source, MessageFiltersSource):
                source.remember(stream, msg, None)
            source.record_drop(stream, reason)
            self._warn(f"{stream.value}:{reason}",
                       f"dropped a {stream.value} message ({reason}): {err}")
            return
        convert_ms = (time.perf_counter() - start) * 1000.0
        frame = Frame(image, stamp_to_ns(msg.header.stamp), msg.header.frame_id, convert_ms)
        self._last_valid[stream] = self._clock_s()
        self._run_length[stream] += 1
        self._run_length[stream.other] = 0
        if isinstance(source, MessageFiltersSource):
            source.remember(stream, msg, frame)
            self._wake.set()
            return
        push_start = time.perf_counter()
        result = source.push(stream, frame)
        frame.push_ms = (time.perf_counter() - push_start) * 1000.0
        for drop in result.drops:
            if drop.reason in (STAMP_WENT_BACKWARDS, DUPLICATE_STAMP):
                self._warn(f"{drop.stream.value}:{drop.reason}",
                           f"dropped a {drop.stream.value} message ({drop.reason}): stamp "
                           f"{drop.stamp_ns / 1e9:.6f} s is not after the previous one")
        if result.reset:
            self.get_logger().warning(f"{stream.value} stamps jumped back by more than "
                                      f"{self._values['sync.backwards_reset']} s (bag loop or "
                                      "clock reset): pairing restarted")
            if self._pipeline is not None:
                self._pipeline.reset()
        self._wake.set()

    def _on_synchronized(self, thermal_msg: Any, rgb_msg: Any) -> None:
        source = self._source
        if not isinstance(source, MessageFiltersSource) or not self._processing:
            return
        frames = []
        for stream, msg in ((Stream.THERMAL, thermal_msg), (Stream.RGB, rgb_msg)):
            known, frame = source.lookup(stream, msg)
            if not known:
                try:
                    image = (image_to_mono(msg) if stream is Stream.THERMAL
                             else image_to_bgr8(msg))
                except ImageConversionError:
                    frame = None
                else:
                    frame = Frame(image, stamp_to_ns(msg.header.stamp), msg.header.frame_id, 0.0)
            frames.append(frame)
        if frames[0] is None or frames[1] is None:
            source.record_pair_drop("bad_message_in_pair")
            return
        source.offer_pair(frames[0], frames[1])
        self._wake.set()

    # ------------------------------------------------------------------ services
    def _on_enable(self, request: SetBool.Request, response: SetBool.Response
                   ) -> SetBool.Response:
        was = self._processing
        self._processing = bool(request.data)
        if was and not self._processing and self._source is not None:
            self._source.reset("paused")  # stale messages must not pair after resuming
        if self._processing and not was:
            now = self._clock_s()
            self._last_valid = {s: now for s in Stream}
        response.success = True
        response.message = ("processing" if self._processing else "paused") + (
            "" if self._active else f" (node is {self._state}; it processes once active)")
        self.get_logger().info(f"~/enable {request.data}: {response.message}")
        return response

    # ------------------------------------------------------------------ worker
    def _clock_s(self) -> float:
        """The node's clock in seconds: /clock under use_sim_time (a bag replayed slower or
        faster than real time, or paused), else the system clock. Camera silence is judged
        on it, so a replay at half speed is not taken for a silent camera."""
        return self.get_clock().now().nanoseconds / 1e9

    def _silent(self, stream: Stream, now: float) -> float:
        """Seconds (node clock) since the stream's last valid message, or 0 while within the
        timeout. A clock that jumped back (bag loop, /clock restart) restarts the count, and so
        does the first /clock under use_sim_time (before it the node's time is 0, and a camera
        not yet heard from would otherwise count as silent since 1970)."""
        last = self._last_valid[stream]
        if now < last or last <= 0.0:
            self._last_valid[stream] = last = now
        quiet = now - last
        return quiet if quiet > self._values["fallback.timeout"] else 0.0

    def _update_mode(self) -> str:
        """fusion, rgb_only, thermal_only, no_input, waiting_for_*, paused or inactive.

        A camera alone counts as publishing once it sent two valid messages since the other
        camera's last one: after a pause of both, the first message of a pair is not
        processed alone just because it arrived a few milliseconds before its partner.
        """
        if not self._active:
            mode = "inactive"
        elif not self._processing:
            mode = "paused"
        else:
            now = self._clock_s()
            thermal_quiet = self._silent(Stream.THERMAL, now)
            rgb_quiet = self._silent(Stream.RGB, now)
            if thermal_quiet and rgb_quiet:
                mode = NO_INPUT
            elif thermal_quiet:
                alone = self._values["fallback.rgb_alone"] and self._run_length[Stream.RGB] > 1
                mode = RGB_ONLY if alone else "waiting_for_thermal"
            elif rgb_quiet:
                alone = (self._values["fallback.thermal_alone"]
                         and self._run_length[Stream.THERMAL] > 1)
                mode = THERMAL_ONLY if alone else "waiting_for_rgb"
            else:
                mode = FUSION
        with self._lock:
            self._mode = mode
            logged, report = self._logged_mode, mode in REPORTED_MODES
            if report and mode != logged:
                self._logged_mode = mode
        if report and mode != logged:
            self._log_mode(logged, mode)
        return mode

    def _log_mode(self, previous: str, mode: str) -> None:
        log, timeout = self.get_logger(), self._values["fallback.timeout"]
        if mode == RGB_ONLY:
            log.warning(f"thermal camera silent > {timeout} s: publishing the RGB image alone")
        elif mode == THERMAL_ONLY:
            log.warning(f"RGB camera silent > {timeout} s: publishing the thermal image alone")
        elif mode == NO_INPUT:
            log.warning(f"no camera message for {timeout} s: nothing to publish")
        elif previous != "":
            log.info("both cameras publishing: fusing again")

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            while not self._stop.is_set() and self._active and self._processing:
                with self._accounts_lock:  # taken and in progress change together
                    job = self._next_job()
                    self._in_progress = int(job is not None)
                if job is None:
                    break
                outcome = PROCESSING_ERROR  # if _process raises past its own handlers
                try:
                    outcome = self._process(*job)
                finally:
                    self._finish(job[0], outcome)

    def _finish(self, kind: str, outcome: str) -> None:
        """Book the job's fate: published (by kind) or dropped by cause; no longer in progress."""
        with self._accounts_lock:
            if outcome == "published":
                self._published[kind] = self._published.get(kind, 0) + 1
                self._outputs += 1
            else:
                self._count_frame_error(kind, outcome)
            self._in_progress = 0

    def _next_job(self) -> tuple[str, Frame | None, Frame | None] | None:
        source = self._source
        if source is None:
            return None
        pair = source.take()
        if pair is not None:
            return FUSION, pair[0], pair[1]
        mode = self._update_mode()
        if mode == RGB_ONLY:
            frame = source.take_unpaired(Stream.RGB)
            return None if frame is None else (RGB_ONLY, None, frame)
        if mode == THERMAL_ONLY:
            frame = source.take_unpaired(Stream.THERMAL)
            return None if frame is None else (THERMAL_ONLY, frame, None)
        return None

    def _process(self, kind: str, thermal: Frame | None, rgb: Frame | None) -> str:
        """Run and publish one job; returns ``"published"`` or the cause it was dropped for."""
        pipeline = self._pipeline
        if pipeline is None:
            return DISCARDED_AT_STOP
        try:
            if kind == FUSION:
                result = pipeline.process(thermal.image, rgb.image)
            elif kind == RGB_ONLY:
                result = pipeline.process_rgb(rgb.image)
            else:
                result = pipeline.process_thermal(thermal.image)
        except PipelineInputError as err:
            self._warn(f"frame:{err.reason}", f"dropped a {kind} frame ({err.reason}): {err}")
            return err.reason
        except Exception as err:  # noqa: BLE001 - one bad frame must not end the node
            self._warn(f"frame:{PROCESSING_ERROR}:{type(err).__name__}",
                       f"processing a {kind} frame failed: {err}\n{traceback.format_exc()}")
            return PROCESSING_ERROR
        if rgb is not None:
            stamp_ns, frame_id = rgb.stamp_ns, rgb.frame_id
            self._last_rgb_frame_id = frame_id
        else:  # thermal alone: its stamp on the RGB clock, the RGB frame (fused grid)
            stamp_ns = max(0, thermal.stamp_ns + seconds_to_ns(
                self._values["sync.thermal_offset"]))
            frame_id = self._last_rgb_frame_id or thermal.frame_id
        if self._stop.is_set():
            return DISCARDED_AT_STOP
        publish_start = time.perf_counter()
        try:
            self._publish(result, stamp_ns, frame_id)
        except Exception as err:  # noqa: BLE001 - e.g. the context shut down under us
            if not self._stop.is_set() and rclpy.ok():
                self._warn("publish", f"publishing failed: {err}")
            return PUBLISH_FAILED
        publish_ms = (time.perf_counter() - publish_start) * 1000.0
        self._record(result, thermal, rgb, publish_ms, stamp_ns)
        return "published"

    def _count_frame_error(self, kind: str, reason: str) -> None:
        source = self._source
        if kind == FUSION and source is not None:
            source.record_pair_drop(reason)
        else:
            with self._lock:
                self._frame_errors[reason] = self._frame_errors.get(reason, 0) + 1

    def _record(self, result: FrameResult, thermal: Frame | None, rgb: Frame | None,
                publish_ms: float, stamp_ns: int) -> None:
        frames = [f for f in (thermal, rgb) if f is not None]
        convert_ms = sum(f.convert_ms for f in frames)
        pairing_ms = sum(f.push_ms for f in frames)
        timings = dict(result.timings_ms)
        timings["convert"] = convert_ms
        timings["pairing"] = pairing_ms
        timings["publish"] = publish_ms
        timings["inference"] = result.inference_ms
        timings["overhead"] = convert_ms + pairing_ms + result.overhead_ms + publish_ms
        end_to_end = (self.get_clock().now().nanoseconds - stamp_ns) / 1e6
        if end_to_end >= 0:
            timings["end_to_end"] = end_to_end
        self._latency.add(timings)

    # ------------------------------------------------------------------ outputs
    def _publish(self, result: FrameResult, stamp_ns: int, frame_id: str) -> None:
        pubs = self._out_pubs
        pubs["image"].publish(array_to_image(result.fused, self._values["output.encoding"],
                                             stamp_ns, frame_id))
        if result.detections is not None and "detections" in pubs:
            pubs["detections"].publish(self._detections_msg(result, stamp_ns, frame_id))
        if result.class_map is not None and "segmentation" in pubs:
            pubs["segmentation"].publish(array_to_image(result.class_map, "mono8", stamp_ns,
                                                        frame_id))
            pub = pubs.get("overlay")
            if (pub is not None and self._values["segmentation.overlay"]
                    and pub.get_subscription_count() > 0):
                image = overlay(result.fused, result.class_map,
                                self._values["segmentation.overlay_alpha"])
                pub.publish(array_to_image(image, self._values["output.encoding"], stamp_ns,
                                           frame_id))

    def _detections_msg(self, result: FrameResult, stamp_ns: int, frame_id: str) -> Any:
        names = self._pipeline.class_names if self._pipeline is not None else []
        return detections_to_msg(result.detections, names, stamp_ns, frame_id)

    # ------------------------------------------------------------------ logging
    def _warn(self, key: str, text: str) -> None:
        """One warning per kind per ``log_throttle`` seconds, saying how many were held."""
        now = time.monotonic()
        with self._lock:
            last, held = self._throttle.get(key, (-1e18, 0))
            if now - last < self._values["log_throttle"]:
                self._throttle[key] = (last, held + 1)
                return
            self._throttle[key] = (now, 0)
        suffix = f" ({held} more like it since the last warning)" if held else ""
        self.get_logger().warning(text + suffix)

    # ------------------------------------------------------------------ diagnostics
    def _counters(self, stats: dict[str, Any]) -> dict[str, int]:
        return {"thermal": self._arrivals[Stream.THERMAL], "rgb": self._arrivals[Stream.RGB],
                "pairs": int(stats.get("pairs", {}).get("formed", 0)), "outputs": self._outputs}

    def _update_rates(self, counters: dict[str, int]) -> None:
        """Rates over the last RATE_WINDOW_S seconds (or since the previous message)."""
        now = time.monotonic()
        history = self._rate_history
        history.append((now, counters))
        while len(history) > 2 and now - history[1][0] >= RATE_WINDOW_S:
            history.popleft()
        then, before = history[0]
        if now - then > 0:
            self._rates = {k: (counters[k] - before.get(k, 0)) / (now - then) for k in counters}

    def _accounts(self, source: BuiltinSource | MessageFiltersSource | None
                  ) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
        """The pairer's counters and the worker's, read in one consistent snapshot.

        Why: a test or a soak run checks that every message that arrived is explained:
        ``<stream>.arrived`` = ignored while paused + received, and received = paired +
        processed alone + pending + dropped by cause; pairs formed = taken + pending + dropped
        before the take; taken + processed alone = published + dropped after the take + in
        progress. ``unaccounted.*`` is what is left (0 when the books balance; builtin pairing
        only: message_filters keeps its own queues out of sight)."""
        with self._accounts_lock:
            stats = source.stats() if source is not None else {}
            published = dict(self._published)
            in_progress = self._in_progress
            with self._lock:
                frame_errors = dict(self._frame_errors)
        keys: list[tuple[str, Any]] = []
        for stream in Stream:
            keys.append((f"{stream.value}.arrived", self._arrivals[stream]))
            keys.append((f"{stream.value}.ignored_while_paused", self._ignored_paused[stream]))
        pairs = stats.get("pairs", {})
        for key in ("formed", "taken", "pending"):
            keys.append((f"pairs.{key}", int(pairs.get(key, 0))))
        for kind, count in published.items():
            keys.append((f"published.{kind}", count))
        keys.append(("in_progress", in_progress))
        if isinstance(source, BuiltinSource):
            books = unaccounted(stats)
            for stream in Stream:
                counts = stats["streams"][stream.value]
                books[stream.value] += (self._arrivals[stream] - self._ignored_paused[stream]
                                        - int(counts["received"]))
            alone = sum(int(c["processed_alone"]) for c in stats["streams"].values())
            books["frames"] = (int(pairs.get("taken", 0)) + alone - sum(published.values())
                               - sum(pair_drops_after_take(stats).values())
                               - sum(frame_errors.values()) - in_progress)
            keys += [(f"unaccounted.{name}", count) for name, count in books.items()]
        return {"stats": stats, "frame_errors": frame_errors}, keys

    def diagnostics(self) -> DiagnosticArray:
        """The /diagnostics message: inputs, processing and state, as three statuses."""
        snapshot, accounts = self._accounts(self._source)
        stats = snapshot["stats"]
        self._update_rates(self._counters(stats))
        mode = self._update_mode()
        name = self.get_fully_qualified_name()
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()

        inputs: list[tuple[str, Any]] = []
        for key in ("thermal", "rgb", "pairs", "outputs"):
            inputs.append((f"rate.{key}_hz", f"{self._rates.get(key, 0.0):.2f}"))
        for stream, counts in stats.get("streams", {}).items():
            for key in ("received", "accepted", "paired", "processed_alone", "pending"):
                inputs.append((f"{stream}.{key}", counts.get(key, 0)))
            for reason, count in counts.get("dropped", {}).items():
                inputs.append((f"drops.{stream}.{reason}", count))
        for reason, count in stats.get("pairs", {}).items():
            if reason not in ("formed", "admitted", "taken", "pending"):
                inputs.append((f"drops.pair.{reason}", count))
        for reason, count in snapshot["frame_errors"].items():
            inputs.append((f"drops.single.{reason}", count))
        inputs.append(("ignored_while_paused", sum(self._ignored_paused.values())))
        inputs += accounts
        diff = stats.get("stamp_diff") or {}
        for q in ("p50", "p99"):
            if diff.get(f"{q}_ns") is not None:
                inputs.append((f"stamp_diff.{q}_ms", f"{diff[f'{q}_ns'] / 1e6:.3f}"))
        drops = sum(int(v) for k, v in inputs if k.startswith("drops."))
        # builtin pairing only: a non-zero count means a fate the node does not count (a bug)
        lost = sum(abs(int(v)) for k, v in inputs if k.startswith("unaccounted."))
        inputs_level = DiagnosticStatus.WARN if lost else DiagnosticStatus.OK
        inputs_text = f"{self._rates.get('pairs', 0.0):.1f} pairs/s, {drops} dropped in total"
        if lost:
            inputs_text += f", {lost} unaccounted (a counting bug: please report)"
        array.status.append(self._status(f"{name}: inputs", inputs_level, inputs_text, inputs))

        processing: list[tuple[str, Any]] = []
        pipeline = self._pipeline
        if pipeline is not None:
            processing.append(("backend", pipeline.backend))
            for graph, text in pipeline.describe().items():
                processing.append((f"engine.{graph}", text))
            thresholds = pipeline.thresholds
            processing += [("detection.enabled", pipeline.detection_enabled),
                           ("segmentation.enabled", pipeline.segmentation_enabled),
                           ("detection.conf_threshold", thresholds.conf),
                           ("detection.iou_threshold", thresholds.iou),
                           ("detection.max_det", thresholds.max_det)]
            for note in pipeline.notes:
                processing.append(("note", self._with_topic_names(note)))
        summary = self._latency.summary()
        for stage, values in summary.items():
            processing.append((f"latency.{stage}.p50_ms", f"{values['p50']:.2f}"))
            processing.append((f"latency.{stage}.p99_ms", f"{values['p99']:.2f}"))
        total = summary.get("total", {})
        processing_text = (f"{self._rates.get('outputs', 0.0):.1f} frames/s, total p50 "
                           f"{total.get('p50', 0.0):.1f} ms" if total else "no frames yet")
        array.status.append(self._status(f"{name}: processing", DiagnosticStatus.OK,
                                         processing_text, processing))

        fallback = mode if mode in (RGB_ONLY, THERMAL_ONLY) else "none"
        now = self._clock_s()
        state = [("lifecycle_state", self._state), ("enabled", self._processing), ("mode", mode),
                 ("fallback", fallback),
                 ("thermal.silent_s", f"{now - self._last_valid[Stream.THERMAL]:.2f}"),
                 ("rgb.silent_s", f"{now - self._last_valid[Stream.RGB]:.2f}"),
                 ("sync.policy", self._values["sync.policy"])]
        if self._config_error:
            state.append(("configure_error", self._config_error))
        if self._config_error:
            level, text = DiagnosticStatus.ERROR, f"configure failed: {self._config_error}"
        elif mode == FUSION:
            level, text = DiagnosticStatus.OK, "fusing thermal and RGB"
        elif mode in (RGB_ONLY, THERMAL_ONLY):
            silent = "thermal" if mode == RGB_ONLY else "RGB"
            level, text = DiagnosticStatus.WARN, f"fallback {mode}: {silent} camera silent"
        elif mode == "paused":
            level, text = DiagnosticStatus.OK, "paused by ~/enable"
        elif mode == "inactive":
            level, text = DiagnosticStatus.OK, f"lifecycle state {self._state}"
        else:
            level, text = DiagnosticStatus.WARN, mode.replace("_", " ")
        array.status.append(self._status(f"{name}: state", level, text, state))
        return array

    @staticmethod
    def _status(name: str, level: Any, message: str, values: list[tuple[str, Any]]
                ) -> DiagnosticStatus:
        status = DiagnosticStatus(name=name, message=message, hardware_id=params.PACKAGE)
        status.level = level
        status.values = [KeyValue(key=str(k), value=str(v)) for k, v in values]
        return status

    def _publish_diagnostics(self) -> None:
        try:
            self._diagnostics.publish(self.diagnostics())
        except Exception as err:  # noqa: BLE001 - diagnostics must never end the node
            self._warn("diagnostics", f"diagnostics failed: {err}")


class _InterruptFlag:
    """SIGINT sets a flag instead of raising KeyboardInterrupt.

    A Ctrl-C in a terminal reaches the node twice (the terminal signals the whole process
    group and ``ros2 launch`` forwards its own), and the second one can land anywhere in the
    cleanup (joining the worker mid-frame, destroying subscriptions). With a flag there is no
    exception to escape: the spin loop sees it within one spin timeout and the cleanup runs
    to the end whatever else arrives.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1

    def install(self) -> bool:
        try:
            signal.signal(signal.SIGINT, self)
        except ValueError:  # not the main thread (an embedding application): leave it
            return False
        return True


def _init_rclpy(args: list[str], own_sigint: bool) -> None:
    """rclpy.init without its SIGINT handler when ours is installed (rclpy keeps SIGTERM)."""
    if own_sigint:
        try:
            from rclpy.signals import SignalHandlerOptions

            rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.SIGTERM)
            return
        except (ImportError, TypeError):  # before Humble: rclpy's handler chains to ours
            pass
    rclpy.init(args=args)


def _quietly(step: Any) -> None:
    """One cleanup step; after a shutdown (SIGTERM) the handles may already be gone."""
    try:
        step()
    except Exception:  # noqa: BLE001 - the process is ending; the rest must still run
        pass


def main(args: list[str] | None = None) -> int:
    """Console script ``fusion_node``: exit 0 on SIGINT, 1 on a failed start, 2 on bad params.

    Called from the main thread it owns SIGINT for the rest of the process (see
    ``_InterruptFlag``); it is meant to end the process.
    """
    interrupted = _InterruptFlag()
    own_sigint = interrupted.install()  # first: a Ctrl-C during start-up is handled too
    try:
        return _run(args if args is not None else sys.argv, interrupted, own_sigint)
    finally:
        if own_sigint:
            # While the interpreter finalizes (seconds, with ONNX Runtime sessions to free)
            # Python puts SIG_DFL back for the signals it handles, so a late SIGINT would
            # kill the process with -2; an ignored signal stays ignored. A node that must
            # end still gets SIGTERM, then SIGKILL, from ros2 launch.
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(args: list[str], interrupted: _InterruptFlag, own_sigint: bool) -> int:
    _init_rclpy(args, own_sigint)
    from rclpy.executors import SingleThreadedExecutor

    try:
        node = FusionNode()
    except params.ParameterError as err:
        rclpy.logging.get_logger(params.NODE_NAME).fatal(f"bad parameter: {err}")
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and node.exit_code is None and not interrupted.count:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # KeyboardInterrupt: only where our handler could not be installed
    finally:
        if interrupted.count:
            _exit_if_cleanup_hangs(node)
        _quietly(node.close)
        _quietly(lambda: executor.remove_node(node))
        _quietly(node.destroy_node)
        _quietly(rclpy.try_shutdown)
    return node.exit_code or 0


#: Seconds the cleanup after Ctrl-C may take before the process ends without it.
CLEANUP_DEADLINE_S = 10.0


def _exit_if_cleanup_hangs(node: FusionNode) -> None:
    """A watchdog for the SIGINT path: a robot's operator who pressed Ctrl-C expects the node
    to end. If releasing the worker, the engines or the DDS entities blocks (seen rarely, when
    the signal lands while the first frame's sessions are being built), the process ends with
    the node's exit code after ``CLEANUP_DEADLINE_S`` instead of waiting for SIGKILL."""
    def give_up() -> None:
        try:
            sys.stderr.write(f"[fusion_node] cleanup took over {CLEANUP_DEADLINE_S:.0f} s after "
                             "Ctrl-C; exiting without it\n")
            sys.stderr.flush()
        finally:
            os._exit(node.exit_code or 0)

    timer = threading.Timer(CLEANUP_DEADLINE_S, give_up)
    timer.daemon = True
    timer.start()


if __name__ == "__main__":
    sys.exit(main())
