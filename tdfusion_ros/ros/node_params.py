"""The fusion node's parameters, topics and launch arguments: one source for every user.

The node declares exactly these parameters (with their descriptions and ranges), the launch
file takes its argument defaults and builds its parameters, remaps and environment here, the
CI test starts the node process with :meth:`LaunchSpec.command`, which renders the same spec
as a ``--ros-args`` command line, and the offline replay turns a config file into the same
pairing and pipeline settings the node uses. Nothing is copied, so none of them can drift.

ROS-free on purpose (no rclpy import): the launch file, the replay and the tests import it
without a ROS context. Values are validated here, with a message that names the parameter.
"""

from __future__ import annotations

import array
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tdfusion_ros import paths
from tdfusion_ros.runtime.pairing import PairingConfig, seconds_to_ns
from tdfusion_ros.runtime.pipeline import DEVICES, NODE_BACKENDS, PRECISIONS, PipelineSettings
from tdfusion_ros.runtime.registration import IDENTITY, RegistrationConfig, RegistrationError
from tdfusion_ros.runtime.thermal_gain import MODES as GAIN_MODES
from tdfusion_ros.runtime.thermal_gain import GainConfig

PACKAGE = "tdfusion_ros"
EXECUTABLE = "fusion_node"
NODE_NAME = "fusion_node"

# Topic names as the node uses them (relative: a namespace moves them; remaps rename them).
THERMAL_TOPIC = "thermal/image_raw"
RGB_TOPIC = "rgb/image_raw"
IMAGE_TOPIC = "fused/image"
DETECTIONS_TOPIC = "fused/detections"
SEGMENTATION_TOPIC = "fused/segmentation"
OVERLAY_TOPIC = "fused/segmentation_overlay"
DIAGNOSTICS_TOPIC = "/diagnostics"
ENABLE_SERVICE = "~/enable"

# Images of this size need Fast DDS's large-data transport (../shared/ENVIRONMENT.md): with the
# default transports best-effort 640x512 frames were lost entirely and reliable ones stalled.
ENVIRONMENT = {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}

# ROS 2 calls domain IDs 0-101 safe on Linux: above, a participant's UDP ports
# (7400 + 250 * domain + ...) fall in the kernel's ephemeral range (32768-60999).
MAX_SAFE_DOMAIN_ID = 101


def private_domain_id(seed: int) -> int:
    """A domain ID in 1..101 picked by ``seed``, for runs that must not mix with the robot's
    (domain 0) or each other's traffic."""
    return 1 + seed % MAX_SAFE_DOMAIN_ID


TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("best_effort", "reliable")
SYNC_POLICIES = ("builtin", "message_filters")
ENCODINGS = ("bgr8", "rgb8")


class ParameterError(ValueError):
    """A parameter value the node cannot run with; the message starts with its name."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"parameter '{name}': {message}")
        self.name = name


@dataclass(frozen=True)
class Param:
    """One node parameter. ``dynamic`` ones may change while the node is active."""

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    length: int | None = None  # arrays of a fixed length
    dynamic: bool = False
    read_only: bool = False

    @property
    def kind(self) -> str:
        """bool, int, float, str, float_array or int_array."""
        value = self.default
        if isinstance(value, (list, tuple)):
            return "float_array" if isinstance(value[0], float) else "int_array"
        return type(value).__name__

    def constraints(self) -> str:
        parts = []
        if self.choices:
            parts.append("one of: " + ", ".join(self.choices))
        if self.range:
            parts.append(f"range [{self.range[0]:g}, {self.range[1]:g}]")
        if self.length:
            parts.append(f"exactly {self.length} numbers")
        if self.read_only:
            parts.append("read at start")
        else:
            parts.append("changeable at run time" if self.dynamic else "read at configure")
        return "; ".join(parts)


P = Param
PARAMETERS: tuple[Param, ...] = (
    P("autostart", True, "Configure and activate at start, so plain `ros2 launch` runs the "
      "node; false leaves it unconfigured for a lifecycle manager.", read_only=True),
    P("bundle", "", "Model bundle folder (or its bundle.yaml); empty: the package's default "
      "bundle models/default."),
    P("backend", "auto", "Inference backend; auto: TensorRT with a GPU, else ONNX Runtime CUDA, "
      "else ONNX Runtime CPU. The one that runs is logged and in /diagnostics.",
      choices=NODE_BACKENDS),
    P("engine.device", "cpu", "ONNX Runtime device when backend is onnxruntime.",
      choices=DEVICES),
    P("engine.threads", 0, "ONNX Runtime intra-op threads; 0: every CPU this process may use.",
      range=(0, 256)),
    P("engine.spin", False, "Let idle ONNX Runtime threads busy-wait: a little less latency, "
      "but they burn cores the rest of the robot needs."),
    P("engine.precision", "fp16", "TensorRT precision (int8 needs a calibration cache).",
      choices=PRECISIONS),
    P("engine.cache_dir", "", "TensorRT engine cache folder; empty: the backend's default."),
    P("input.thermal_transport", "raw", "Thermal input type: raw = sensor_msgs/Image, "
      "compressed = sensor_msgs/CompressedImage (remap the topic to .../compressed).",
      choices=TRANSPORTS),
    P("input.rgb_transport", "raw", "RGB input type: raw = sensor_msgs/Image, compressed = "
      "sensor_msgs/CompressedImage.", choices=TRANSPORTS),
    P("input.reliability", "best_effort", "Input QoS reliability (sensor-data profile "
      "otherwise); best_effort also accepts reliable publishers.", choices=RELIABILITIES),
    P("input.depth", 5, "Input QoS history depth.", range=(1, 100)),
    P("sync.policy", "builtin", "Pairing: builtin = our approximate-time core (latency offset, "
      "drop counters, deterministic); message_filters = its ApproximateTimeSynchronizer "
      "(needs the package; no offset).", choices=SYNC_POLICIES),
    P("sync.slop", 0.02, "Largest stamp difference of a pair, seconds (after the offset).",
      range=(0.0, 10.0)),
    P("sync.thermal_offset", 0.0, "Added to thermal stamps before pairing, seconds: the "
      "thermal camera's latency relative to the RGB one.", range=(-10.0, 10.0)),
    P("sync.queue_size", 10, "Messages kept per camera while waiting for a partner.",
      range=(2, 1000)),
    P("sync.max_rate", 0.0, "Process at most this many pairs per second (by stamp); 0: "
      "as many as inference allows.", range=(0.0, 1000.0)),
    P("sync.thermal_min_interval", 0.0, "Lower bound on the thermal camera's frame spacing, "
      "seconds (e.g. 3/4 of its period): lets pairs be decided without waiting for the next "
      "frame. 0: unknown.", range=(0.0, 10.0)),
    P("sync.rgb_min_interval", 0.0, "Same for the RGB camera.", range=(0.0, 10.0)),
    P("sync.backwards_reset", 1.0, "A stamp jump back of at least this many seconds (bag "
      "loop, clock reset) restarts pairing; smaller steps back drop the message. 0: never.",
      range=(0.0, 3600.0)),
    P("thermal_gain.mode", "percentile", "16-bit thermal to 8 bits: percentile clip with "
      "temporal smoothing, or a fixed count range. 8-bit input passes unchanged.",
      choices=GAIN_MODES),
    P("thermal_gain.low_percentile", 1.0, "Lower clip percentile.", range=(0.0, 100.0)),
    P("thermal_gain.high_percentile", 99.0, "Upper clip percentile.", range=(0.0, 100.0)),
    P("thermal_gain.smoothing", 0.9, "Weight of the previous limits per frame (0: none); "
      "stops the image pumping when a hot object enters.", range=(0.0, 0.999)),
    P("thermal_gain.fixed_low", 0, "Fixed mode: counts mapped to 0.", range=(0, 65535)),
    P("thermal_gain.fixed_high", 65535, "Fixed mode: counts mapped to 255.", range=(0, 65535)),
    P("thermal_gain.min_span", 16.0, "Smallest count range mapped to 0..255 (a flat scene is "
      "not stretched into noise).", range=(1.0, 65535.0)),
    P("thermal_gain.subsample", 2, "Percentiles from every n-th pixel and row.",
      range=(1, 16)),
    P("registration.homography", list(IDENTITY), "Thermal -> RGB pixels, row-major 3x3 "
      "(python -m tdfusion_ros.calibrate writes it); identity for aligned cameras.",
      length=9),
    P("registration.crop", [0, 0, 0, 0], "[x, y, w, h] region of the RGB image both cameras "
      "see; zeros: the whole image.", length=4),
    P("registration.output_size", [0, 0], "[w, h] of the fused image; zeros: the crop size.",
      length=2),
    P("detection.enabled", True, "Run the detector and publish fused/detections (only if the "
      "bundle has one; switching on at run time needs it loaded at configure).", dynamic=True),
    P("detection.conf_threshold", -1.0, "Score threshold; negative: the bundle's value.",
      range=(-1.0, 1.0), dynamic=True),
    P("detection.iou_threshold", -1.0, "NMS IoU threshold; negative: the bundle's value.",
      range=(-1.0, 1.0), dynamic=True),
    P("detection.max_det", 0, "Most boxes per image; 0: the bundle's value.",
      range=(0, 10000), dynamic=True),
    P("segmentation.enabled", True, "Run the segmenter and publish fused/segmentation (only "
      "if the bundle has one).", dynamic=True),
    P("segmentation.overlay", False, "Also publish fused/segmentation_overlay (colour classes "
      "on the fused image, for viewing; computed only while someone subscribes).",
      dynamic=True),
    P("segmentation.overlay_alpha", 0.5, "Overlay opacity.", range=(0.0, 1.0), dynamic=True),
    P("output.encoding", "bgr8", "Encoding of fused/image.", choices=ENCODINGS),
    P("output.depth", 5, "Output QoS history depth (reliable).", range=(1, 100)),
    P("fallback.thermal_alone", True, "When the RGB camera is silent, publish from the thermal "
      "camera alone (grey).", dynamic=True),
    P("fallback.rgb_alone", True, "When the thermal camera is silent, publish the RGB image "
      "alone.", dynamic=True),
    P("fallback.timeout", 1.0, "A camera without a valid message for this long, seconds, is "
      "silent.", range=(0.05, 3600.0), dynamic=True),
    P("diagnostics.period", 1.0, "Seconds between /diagnostics messages.",
      range=(0.05, 60.0)),
    P("diagnostics.window", 300, "Frames in the latency percentiles.", range=(10, 100000)),
    P("log_throttle", 5.0, "Seconds between repeated warnings of one kind (bad messages, "
      "drops).", range=(0.0, 3600.0), dynamic=True),
)
del P
BY_NAME: dict[str, Param] = {p.name: p for p in PARAMETERS}
DYNAMIC = frozenset(p.name for p in PARAMETERS if p.dynamic)
# Parameters of ROS itself (rclpy declares them, or reads them for its own entities); accepted
# in config files and on the command line, never refused as unknown.
ROS_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})
ROS_PARAMETER_PREFIXES = ("qos_overrides.",)


def is_ros_parameter(name: str) -> bool:
    """A parameter that belongs to ROS (``use_sim_time``, ``qos_overrides.*``), not to us."""
    return name in ROS_PARAMETERS or name.startswith(ROS_PARAMETER_PREFIXES)


def unknown_parameter_error(name: str, where: str = "",
                            others: Sequence[str] = ()) -> ParameterError:
    """The error for a name that is neither ours nor ROS's, with the closest of ours."""
    import difflib

    close = difflib.get_close_matches(name, list(BY_NAME), n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    place = f" in {where}" if where else ""
    more = f"; also unknown: {', '.join(others)}" if others else ""
    return ParameterError(name, f"unknown parameter{place}{hint}{more} (config/fusion.yaml "
                                "lists every parameter)")


def defaults() -> dict[str, Any]:
    return {p.name: (list(p.default) if isinstance(p.default, list) else p.default)
            for p in PARAMETERS}


# ------------------------------------------------------------------------- validation
def check_value(name: str, value: Any) -> Any:
    """``value`` converted to the parameter's type, or ParameterError naming it."""
    spec = BY_NAME.get(name)
    if spec is None:
        raise unknown_parameter_error(name)
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            raise ParameterError(name, f"must be true or false, got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ParameterError(name, f"must be a string, got {value!r}")
        if spec.choices and value not in spec.choices:
            raise ParameterError(name, f"{value!r} is not one of {', '.join(spec.choices)}")
        return value
    if kind in ("int", "float"):
        value = _number(name, value, integer=kind == "int")
        if spec.range and not spec.range[0] <= value <= spec.range[1]:
            raise ParameterError(name, f"{value!r} is outside [{spec.range[0]:g}, "
                                       f"{spec.range[1]:g}]")
        return value
    # rclpy hands arrays over as lists or array.array, depending on where they came from
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, array.array)) \
            or (spec.length and len(value) != spec.length):
        raise ParameterError(name, f"must be a list of {spec.length} numbers, got {value!r}")
    return [_number(name, v, integer=kind == "int_array") for v in value]


def _number(name: str, value: Any, integer: bool) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ParameterError(name, f"must be a number, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise ParameterError(name, f"must be an integer, got {value!r}")
        return int(value)
    if not math.isfinite(value):
        raise ParameterError(name, f"must be finite, got {value!r}")
    return float(value)


def validate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter checked alone and against the others; defaults fill the gaps."""
    merged = defaults()
    for name, value in values.items():
        if is_ros_parameter(name):
            continue
        merged[name] = check_value(name, value)
    for name, builder in (("thermal_gain.*", gain_config), ("sync.*", pairing_config),
                          ("registration.*", registration_config)):
        try:
            builder(merged)
        except ParameterError:
            raise
        except (ValueError, RegistrationError) as err:
            raise ParameterError(_named(str(err), name), str(err)) from None
    if merged["sync.policy"] == "message_filters" and merged["sync.thermal_offset"] != 0.0:
        raise ParameterError("sync.thermal_offset", "message_filters has no latency offset; "
                             "use sync.policy: builtin, or set the offset to 0")
    return merged


_SECTION_KEYS = {
    # pairing / gain / registration errors name their own fields; map them back to ours.
    "slop_ns": "sync.slop", "thermal_offset_ns": "sync.thermal_offset",
    "queue_size": "sync.queue_size", "max_rate_hz": "sync.max_rate",
    "thermal_min_interval_ns": "sync.thermal_min_interval",
    "rgb_min_interval_ns": "sync.rgb_min_interval", "backwards_reset_ns": "sync.backwards_reset",
    "low_percentile": "thermal_gain.low_percentile",
    "high_percentile": "thermal_gain.high_percentile", "smoothing": "thermal_gain.smoothing",
    "fixed_low": "thermal_gain.fixed_low", "fixed_high": "thermal_gain.fixed_high",
    "min_span": "thermal_gain.min_span", "registration.homography": "registration.homography",
    "registration.crop": "registration.crop",
    "registration.output_size": "registration.output_size",
}


def _named(message: str, fallback: str) -> str:
    for key, name in _SECTION_KEYS.items():
        if key in message:
            return name
    return fallback


# ------------------------------------------------------------------------- settings
def pairing_config(values: Mapping[str, Any], policy: str = "newest") -> PairingConfig:
    """The pairing core's settings; the node's policy is ``newest`` (at most one pending
    pair), an offline replay that must process every pair passes ``every``."""
    return PairingConfig(
        slop_ns=seconds_to_ns(values["sync.slop"]),
        thermal_offset_ns=seconds_to_ns(values["sync.thermal_offset"]),
        queue_size=int(values["sync.queue_size"]),
        max_rate_hz=float(values["sync.max_rate"]),
        policy=policy,
        thermal_min_interval_ns=seconds_to_ns(values["sync.thermal_min_interval"]),
        rgb_min_interval_ns=seconds_to_ns(values["sync.rgb_min_interval"]),
        backwards_reset_ns=seconds_to_ns(values["sync.backwards_reset"]),
    ).validate()


def gain_config(values: Mapping[str, Any]) -> GainConfig:
    return GainConfig(
        mode=values["thermal_gain.mode"],
        low_percentile=float(values["thermal_gain.low_percentile"]),
        high_percentile=float(values["thermal_gain.high_percentile"]),
        smoothing=float(values["thermal_gain.smoothing"]),
        fixed_low=int(values["thermal_gain.fixed_low"]),
        fixed_high=int(values["thermal_gain.fixed_high"]),
        min_span=float(values["thermal_gain.min_span"]),
        subsample=int(values["thermal_gain.subsample"]),
    ).validate()


def registration_config(values: Mapping[str, Any]) -> RegistrationConfig:
    return RegistrationConfig.from_mapping({
        "homography": values["registration.homography"],
        "crop": values["registration.crop"],
        "output_size": values["registration.output_size"],
    })


def _threshold(value: float) -> float | None:
    return None if value < 0 else float(value)


def pipeline_settings(values: Mapping[str, Any]) -> PipelineSettings:
    """The pipeline the node runs, from (validated) parameter values."""
    return PipelineSettings(
        backend=values["backend"],
        device=values["engine.device"],
        threads=int(values["engine.threads"]),
        spin=bool(values["engine.spin"]),
        precision=values["engine.precision"],
        cache_dir=values["engine.cache_dir"],
        detection=bool(values["detection.enabled"]),
        segmentation=bool(values["segmentation.enabled"]),
        conf_threshold=_threshold(values["detection.conf_threshold"]),
        iou_threshold=_threshold(values["detection.iou_threshold"]),
        max_det=int(values["detection.max_det"]) or None,
        gain=gain_config(values),
        registration=registration_config(values),
    ).validate()


def default_bundle_path() -> Path:
    """The package's models/default: source checkout, else the installed share folder."""
    return paths.package_file("models/default")


def default_config_path() -> Path:
    """The package's config/fusion.yaml: source checkout, else the installed share folder."""
    return paths.package_file("config/fusion.yaml")


def bundle_path(values: Mapping[str, Any]) -> Path:
    return Path(values["bundle"]).expanduser() if values.get("bundle") else default_bundle_path()


# ------------------------------------------------------------------------- config files
def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def load_params_file(path: str | Path, node_name: str = NODE_NAME) -> dict[str, Any]:
    """Flat parameter values from a ROS 2 parameters file (``/**`` or the node's block).

    Unknown names are refused, naming the file: a typo would otherwise be ignored silently.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ParameterError("config", f"{path}: cannot read it as YAML ({err})") from None
    if not isinstance(document, Mapping):
        raise ParameterError("config", f"{path}: not a ROS 2 parameters file (a mapping of "
                                       "node name to ros__parameters)")
    values: dict[str, Any] = {}
    matched = False
    for key, block in document.items():
        name = str(key).strip("/")
        if name not in ("**", "*", node_name, f"**/{node_name}"):
            continue
        if not isinstance(block, Mapping) or not isinstance(block.get("ros__parameters"),
                                                            Mapping):
            raise ParameterError("config", f"{path}: '{key}' has no ros__parameters mapping")
        values.update(_flatten(block["ros__parameters"]))
        matched = True
    if not matched:
        raise ParameterError("config", f"{path}: no '/**' or '{node_name}' block")
    for name in values:
        if name not in BY_NAME and not is_ros_parameter(name):
            raise unknown_parameter_error(name, str(path))
    return values


def resolve_config(config: str | Path | None = None,
                   overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Validated values from a parameters file (default: config/fusion.yaml) plus overrides,
    as the node would see them: the offline replay's way to run what the node runs."""
    values = load_params_file(config or default_config_path())
    values.update(overrides or {})
    return validate(values)


# ------------------------------------------------------------------------- launching
@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


REMAP_ARGUMENTS: dict[str, tuple[str, str]] = {
    # launch argument -> (the node's topic name, default target)
    "thermal_topic": (THERMAL_TOPIC, "/thermal/image_raw"),
    "rgb_topic": (RGB_TOPIC, "/rgb/image_raw"),
    "fused_image_topic": (IMAGE_TOPIC, IMAGE_TOPIC),
    "detections_topic": (DETECTIONS_TOPIC, DETECTIONS_TOPIC),
    "segmentation_topic": (SEGMENTATION_TOPIC, SEGMENTATION_TOPIC),
    "overlay_topic": (OVERLAY_TOPIC, OVERLAY_TOPIC),
}


def launch_arguments() -> list[LaunchArgument]:
    """What ``fusion.launch.py`` declares; empty strings keep the config file's value."""
    args = [
        LaunchArgument("config", str(default_config_path()), "ROS 2 parameters file of the "
                       "node (config/fusion.yaml documents every parameter)"),
        LaunchArgument("bundle", "", "model bundle folder; empty: the config's value "
                       "(default: the package's models/default)"),
        LaunchArgument("backend", "", "auto | onnxruntime | tensorrt; empty: the config's"),
        LaunchArgument("namespace", "", "namespace of the node and its fused/* topics"),
        LaunchArgument("use_sim_time", "false", "follow /clock (bag replay)"),
        LaunchArgument("log_level", "info", "node log level"),
    ]
    for name, (topic, target) in REMAP_ARGUMENTS.items():
        args.append(LaunchArgument(name, target, f"topic for the node's '{topic}'"))
    return args


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class LaunchSpec:
    """How to start the node: what the launch file passes, renderable as a command line."""

    config: str
    overrides: dict[str, Any]
    remappings: tuple[tuple[str, str], ...]
    namespace: str = ""
    name: str = NODE_NAME
    log_level: str = "info"
    env: dict[str, str] = field(default_factory=lambda: dict(ENVIRONMENT))

    @property
    def parameters(self) -> list[Any]:
        """launch_ros ``Node(parameters=...)``: the file, then the overrides."""
        return [self.config, dict(self.overrides)] if self.overrides else [self.config]

    def ros_arguments(self) -> list[str]:
        """The same as ``--ros-args ...`` (what launch_ros renders for Node)."""
        args = ["--ros-args", "--log-level", self.log_level, "-r", f"__node:={self.name}"]
        if self.namespace:
            args += ["-r", f"__ns:={_absolute(self.namespace)}"]
        args += ["--params-file", self.config]
        for key, value in self.overrides.items():
            args += ["-p", f"{key}:={json.dumps(value)}"]
        for source, target in self.remappings:
            args += ["-r", f"{source}:={target}"]
        return args

    def command(self, executable: Sequence[str]) -> list[str]:
        """``executable`` (e.g. [python, -m, tdfusion_ros.node]) with the ROS arguments."""
        return [*executable, *self.ros_arguments()]


def _absolute(namespace: str) -> str:
    return namespace if namespace.startswith("/") else f"/{namespace}"


def launch_spec(arguments: Mapping[str, Any] | None = None) -> LaunchSpec:
    """The node's start from launch-argument values (missing ones take their defaults)."""
    values = {a.name: a.default for a in launch_arguments()}
    values.update({k: v for k, v in (arguments or {}).items() if v is not None})
    unknown = set(values) - {a.name for a in launch_arguments()}
    if unknown:
        raise ParameterError(sorted(unknown)[0], "unknown launch argument")
    config = str(Path(str(values["config"])).expanduser())
    if not Path(config).is_file():
        raise ParameterError("config", f"{config}: no such parameters file")
    overrides: dict[str, Any] = {}
    if values["bundle"]:
        overrides["bundle"] = str(values["bundle"])
    if values["backend"]:
        overrides["backend"] = check_value("backend", str(values["backend"]))
    overrides["use_sim_time"] = _truthy(values["use_sim_time"])
    remaps = tuple((topic, str(values[arg])) for arg, (topic, _) in REMAP_ARGUMENTS.items()
                   if str(values[arg]) and str(values[arg]) != topic)
    return LaunchSpec(config=config, overrides=overrides, remappings=remaps,
                      namespace=str(values["namespace"]).strip(),
                      log_level=str(values["log_level"]))
