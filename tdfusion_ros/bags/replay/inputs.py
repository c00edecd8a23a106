"""Everything resolved before reading a bag: output folder, topics, parameters (config +
overrides), pipeline and labels.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tdfusion_ros.bags.reader import (
    COMPRESSED_TYPE,
    BagReader,
    BagReadError,
    TopicInfo,
    format_topics,
)
from tdfusion_ros.bags.replay.common import (
    BUILDER_CUSTOM_KEY,
    DEFAULT_RGB_TOPICS,
    DEFAULT_THERMAL_TOPICS,
    EXIT_BAD_INPUT,
    RGB_HINTS,
    THERMAL_HINTS,
    OutputWriteError,
    ReplayError,
    ReplayOptions,
    why_not_written,
    write_text_whole,
    writing,
)
from tdfusion_ros.ros import node_params
from tdfusion_ros.runtime.pairing import PairingConfig
from tdfusion_ros.runtime.pipeline import (
    FusionPipeline,
    PipelineError,
)


# --------------------------------------------------------------------------- topics, config
def resolve_topics(topics: Sequence[TopicInfo], thermal: str | None,
                   rgb: str | None) -> tuple[str, str]:
    """The thermal and RGB topics: as given, the node's defaults, or the one obvious match.

    Raises ReplayError listing the bag's topics when a choice is impossible.
    """
    from tdfusion_ros.bags.reader import IMAGE_TYPES

    images = [t for t in topics if t.msgtype in IMAGE_TYPES]
    names = {t.name for t in topics}

    def pick(given: str | None, defaults: Sequence[str], hints: Sequence[str], what: str,
             flag: str, exclude: str | None) -> str:
        if given:
            return given
        for name in defaults:
            if name in names:
                return name
        matches = [t.name for t in images if t.name != exclude
                   and any(h in t.name.lower() for h in hints)]
        if len(matches) == 1:
            return matches[0]
        why = ("several image topics look like it: " + ", ".join(matches) if matches
               else f"none of {', '.join(defaults)} is in the bag")
        raise ReplayError(f"cannot tell which topic is the {what} camera ({why}); pass "
                          f"{flag}. The bag holds:\n{format_topics(topics)}")

    thermal_topic = pick(thermal, DEFAULT_THERMAL_TOPICS, THERMAL_HINTS, "thermal",
                         "--thermal-topic", None)
    rgb_topic = pick(rgb, DEFAULT_RGB_TOPICS, RGB_HINTS, "RGB", "--rgb-topic", thermal_topic)
    if thermal_topic == rgb_topic:
        raise ReplayError(f"thermal and RGB topics are both {thermal_topic}; pass "
                          f"--thermal-topic and --rgb-topic. The bag holds:\n"
                          f"{format_topics(topics)}")
    return thermal_topic, rgb_topic


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ReplayError(f"--set takes NAME=VALUE (e.g. sync.slop=0.03), got {text!r}")
    name, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ReplayError(f"--set {text}: value is not YAML ({err})") from None
    return name.strip(), value


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for name, value in values.items():
        *sections, key = name.split(".")
        target = tree
        for section in sections:
            target = target.setdefault(section, {})
        target[key] = value
    return tree


def _bag_custom_data(bag: Path) -> dict[str, Any]:
    """The bag builder's record (build parameters, the pairing offset), if there is one."""
    meta = (bag if bag.is_dir() else bag.parent) / "metadata.yaml"
    try:
        info = yaml.safe_load(meta.read_text()).get("rosbag2_bagfile_information", {})
        text = (info.get("custom_data") or {}).get(BUILDER_CUSTOM_KEY)
        return json.loads(text) if text else {}
    except (OSError, AttributeError, ValueError, yaml.YAMLError):
        return {}


def _bag_duration_ns(bag: Path) -> int | None:
    try:
        from rosbags.rosbag2 import Reader

        with Reader(bag) as reader:
            return int(reader.duration) if reader.message_count > 1 else None
    except Exception:  # noqa: BLE001 - damaged or odd bags: the caller falls back
        return None


# --------------------------------------------------------------------------- the offline run
@dataclass
class _Setup:
    """Everything resolved before reading: topics, parameters, pipeline, labels."""

    reader: BagReader
    thermal_topic: str
    rgb_topic: str
    values: dict[str, Any]
    pairing: PairingConfig
    effective_config: Path
    pipeline: FusionPipeline
    bundle: Path
    labels: Any  # bag_builder.BagLabels or None
    labels_file: Path | None
    est_pairs: int
    fps: float
    notes: list[str]
    warnings: list[str]
    seg_class_map: dict[str, str | None] | None = None  # label class -> segmenter class
    seg_class_map_file: Path | None = None

#: The class-map value that sends a label class to "ignore" (label id 255: not scored).
IGNORE_NAMES = ("ignore", "~", "")


def load_class_map(path: Path) -> dict[str, str | None]:
    """A label-class -> segmenter-class map from a YAML file (``--seg-class-map``).

    The file is a mapping of label class names to segmenter class names; ``null`` or
    ``ignore`` drops a label class from scoring (its pixels count as label 255). An optional
    top-level ``classes:`` key holds the mapping, beside free-form keys such as
    ``description``. Label classes the map does not name keep their own name.
    """
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ReplayError(f"--seg-class-map {path}: cannot read it: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("classes"), dict):
        data = data["classes"]
    if not isinstance(data, dict) or not data:
        raise ReplayError(f"--seg-class-map {path}: expected a mapping of label class names "
                          "to segmenter class names (or null to ignore a class)")
    out: dict[str, str | None] = {}
    for key, value in data.items():
        if value is not None and not isinstance(value, str):
            raise ReplayError(f"--seg-class-map {path}: {key!r} maps to {value!r}, not a class "
                              "name (or null)")
        name = None if value is None or value.strip().lower() in IGNORE_NAMES else value
        out[str(key)] = name
    return out


# --------------------------------------------------------------------------- set-up
def _prepare_out(out: Path, overwrite: bool) -> None:
    ours = ("summary.json", "report.html", "fused_bag", "frames.csv")
    if out.exists() and any(out.iterdir()):
        if not any((out / name).exists() for name in ours):
            raise ReplayError(f"output folder {out} exists and holds other files; choose "
                              "another --out")
        if not overwrite:
            raise ReplayError(f"output folder {out} holds an earlier replay; pass --overwrite "
                              "to replace it")
        _check_writable(out)  # before anything of the earlier replay is removed
        # the report first: a folder left half-cleared must not look like a finished replay
        for name in ("summary.json", "report.html", "summary.md", "fused.mp4",
                     "detections.json", "frames.csv", "fusion_params.yaml"):
            with writing(out / name):
                (out / name).unlink(missing_ok=True)
        for name in ("fused", "masks", "samples", "fused_bag", "live", ".replay_tmp"):
            shutil.rmtree(out / name, ignore_errors=True)
    _check_writable(out)


def _check_writable(out: Path) -> None:
    """A folder it cannot create or write to (read-only, no permission) is refused before any
    work, naming the folder."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".replay_write_check"
        probe.touch()
        probe.unlink()
    except OSError as err:
        raise OutputWriteError(out, why_not_written(out, err), EXIT_BAD_INPUT) from err


def _setup(opts: ReplayOptions) -> _Setup:
    notes: list[str] = []
    warn: list[str] = []
    bag = Path(opts.bag)
    if not bag.exists():
        raise ReplayError(f"bag {bag} does not exist (give a rosbag2 folder, an .mcap or a "
                          ".db3 file)")
    # the bag and its topics (listing them when the choice is wrong)
    from tdfusion_ros.bags.reader import MissingTopicError

    try:
        topics = BagReader(bag, None).topics
    except MissingTopicError as err:  # no image topic at all: resolve_topics says so
        topics = err.available
    except BagReadError as err:
        raise ReplayError(str(err)) from None
    thermal_topic, rgb_topic = resolve_topics(topics, opts.thermal_topic, opts.rgb_topic)
    try:
        reader = BagReader(bag, [thermal_topic, rgb_topic],
                           modes={thermal_topic: "mono", rgb_topic: "bgr8"})
    except BagReadError as err:
        raise ReplayError(str(err)) from None
    by_name = {t.name: t for t in reader.topics}
    if reader.recovery_note:
        warn.append(f"bag {bag} is read by a recovery scan: {reader.recovery_note}")

    # parameters: the node's config file, then the command line
    config = Path(opts.config) if opts.config else node_params.default_config_path()
    try:
        values = node_params.load_params_file(config)
    except node_params.ParameterError as err:
        raise ReplayError(str(err)) from None
    values.pop("use_sim_time", None)
    values.update(opts.overrides)
    if opts.bundle is not None:
        values["bundle"] = str(Path(opts.bundle).resolve())
    if opts.backend:
        values["backend"] = opts.backend
    values["input.thermal_transport"] = ("compressed" if by_name[thermal_topic].msgtype
                                         == COMPRESSED_TYPE else "raw")
    values["input.rgb_transport"] = ("compressed" if by_name[rgb_topic].msgtype
                                     == COMPRESSED_TYPE else "raw")
    built = _bag_custom_data(bag)
    bag_offset_ns = built.get("pairing_thermal_offset_ns")
    if opts.offset_from_bag:
        if bag_offset_ns is None:
            raise ReplayError(f"--offset-from-bag: bag {bag} records no thermal offset (it was "
                              "not written by tdfusion_ros.bag_builder); use --set "
                              "sync.thermal_offset=SECONDS")
        values["sync.thermal_offset"] = bag_offset_ns / 1e9
        notes.append(f"sync.thermal_offset = {bag_offset_ns / 1e9:g} s, from the bag's "
                     "bag_builder record")
    try:
        values = node_params.validate(values)
    except node_params.ParameterError as err:
        raise ReplayError(str(err)) from None
    if (bag_offset_ns is not None and not opts.offset_from_bag
            and node_params.seconds_to_ns(values["sync.thermal_offset"]) != bag_offset_ns):
        warn.append(f"the bag builder recorded thermal stamps late by {-bag_offset_ns / 1e6:g} "
                    f"ms (pair with sync.thermal_offset = {bag_offset_ns / 1e9:g} s) but the "
                    f"config has {values['sync.thermal_offset']:g} s; pass --offset-from-bag "
                    "if the bag should be paired as built")
    if values["sync.policy"] != "builtin":
        warn.append(f"sync.policy is {values['sync.policy']}: the offline replay pairs with the "
                    "builtin core (message_filters is not deterministic)")
    pairing = dataclasses.replace(node_params.pairing_config(values), policy="every")
    effective = opts.out / "fusion_params.yaml"
    write_text_whole(
        effective,
        "# The parameters of this replay (config file + command line), in the node's format:\n"
        f"# source: {config}\n"
        + yaml.safe_dump({"/**": {"ros__parameters": _nest(values)}}, sort_keys=False))

    # the pipeline (same settings as the node)
    bundle = node_params.bundle_path(values)
    try:
        pipeline = FusionPipeline(bundle, node_params.pipeline_settings(values),
                                  log=notes.append)
    except (PipelineError, ValueError, OSError) as err:
        raise ReplayError(f"cannot build the pipeline: {err}") from None

    # labels
    labels = None
    labels_file = None
    if not opts.no_labels:
        from tdfusion_ros.bags.builder import BagBuildError, find_labels, load_labels

        labels_file = Path(opts.labels) if opts.labels else find_labels(bag)
        if labels_file is not None:
            if not labels_file.exists():
                raise ReplayError(f"labels file {labels_file} does not exist")
            try:
                labels = load_labels(labels_file)
            except BagBuildError as err:
                raise ReplayError(str(err)) from None
            if labels.rgb_topic != rgb_topic:
                warn.append(f"the labels were made for {labels.rgb_topic}, the RGB topic is "
                            f"{rgb_topic}")
    if not 0.0 <= opts.map_conf <= 1.0:
        raise ReplayError(f"map_conf {opts.map_conf!r} must be in [0, 1]")
    if opts.predictions_from_labels and labels is None:
        raise ReplayError("--predictions-from-labels needs labels (--labels FILE)")
    seg_class_map = None
    if opts.seg_class_map is not None:
        map_file = Path(opts.seg_class_map)
        if not map_file.exists() and len(map_file.parts) == 1:  # a name in the package's config/
            from tdfusion_ros import paths

            bare = map_file.name if map_file.suffix else f"{map_file.name}.yaml"
            map_file = paths.package_file(f"config/{bare}")
        opts.seg_class_map = map_file
        seg_class_map = load_class_map(map_file)
    elif (labels is not None and labels.segmentation_classes
          and pipeline.segmentation_classes and pipeline.segmentation_enabled):
        have = {n.strip().lower() for n in pipeline.segmentation_classes}
        missing = [n for n in labels.segmentation_classes if n.strip().lower() not in have]
        if missing:
            warn.append(f"label classes {', '.join(missing)} have no segmenter class of the "
                        "same name, so they count as misses in mIoU; pass --seg-class-map "
                        "FILE to map them onto the segmenter's classes (generated scenes onto "
                        "an MFNet segmenter such as models/default's: --seg-class-map "
                        "scenes_to_mfnet, i.e. config/scenes_to_mfnet.yaml)")

    counts = [by_name[thermal_topic].count, by_name[rgb_topic].count]
    est_pairs = min(c for c in counts if c is not None) if all(
        c is not None for c in counts) else 100
    fps = opts.fps
    if fps is None:
        duration = _bag_duration_ns(bag)
        fps = est_pairs / (duration / 1e9) if duration else 10.0
        if pairing.max_rate_hz:
            fps = min(fps, pairing.max_rate_hz)
        fps = float(min(max(round(fps, 2), 1.0), 120.0))
    return _Setup(reader, thermal_topic, rgb_topic, values, pairing, effective, pipeline,
                  bundle, labels, labels_file, est_pairs, fps, notes, warn, seg_class_map,
                  Path(opts.seg_class_map) if opts.seg_class_map is not None else None)
