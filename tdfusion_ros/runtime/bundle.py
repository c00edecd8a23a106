"""The model bundle: a folder of ONNX graphs and the ``bundle.yaml`` that describes them.

``bundle.yaml`` records everything the runtime needs and nothing it has to guess: for each
graph its file and sha256, opset, named inputs and outputs with shapes (fixed sizes as ints,
dynamic ones by name), normalisation, and per task the class names, input size and
post-processing thresholds; at the top, the colour convention of the fusion inputs/outputs.

Loading is strict on purpose. A deployed robot that silently runs a graph other than the one
exported, or ignores a key it does not understand, fails in ways nobody can diagnose from
its output; so a missing file, a hash mismatch, an unknown key or a malformed value is an
error that names the file and says what to do. No torch here: the node reads bundles.

    format: tdfusion_ros.bundle
    version: 1
    created: '2026-11-26T12:00:00+00:00'
    producer: training/export.py
    colour: {network_input: ..., output_chroma: ...}
    graphs:
      fusion:    {task: fusion, file: fusion.onnx, sha256: ..., opset: 17, inputs: [...], ...}
      detector:  {task: detection, input_hw: [480, 640], class_names: [...], ...}
      segmenter: {task: segmentation, input_hw: [...], class_names: [...], ...}
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from tdfusion_ros.runtime.engines.base import TensorSpec

BUNDLE_FILE = "bundle.yaml"
FORMAT = "tdfusion_ros.bundle"
VERSION = 1
EXPORT_COMMAND = "python training/export.py --fusion CKPT --out BUNDLE_DIR"

GRAPH_TASKS = {"fusion": "fusion", "detector": "detection", "segmenter": "segmentation"}
TOP_REQUIRED = {"format", "version", "graphs"}
TOP_OPTIONAL = {"created", "producer", "colour", "notes"}
GRAPH_REQUIRED = {"task", "file", "sha256", "opset", "inputs", "outputs"}
GRAPH_OPTIONAL = {"architecture", "input_hw", "output_format", "normalisation", "preprocess",
                  "parity", "source"}
TASK_REQUIRED = {"fusion": set(), "detection": {"input_hw", "class_names", "postprocess"},
                 "segmentation": {"input_hw", "class_names"}}
TASK_OPTIONAL = {"fusion": set(), "detection": {"strides"},
                 "segmentation": {"output_stride"}}
POSTPROCESS_KEYS = {"conf_threshold", "iou_threshold", "max_det", "class_offset",
                    "class_wise_nms"}
SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(ValueError):
    """A bundle that cannot be used as it is; the message says which file and what to do."""


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class GraphSpec:
    """One graph of a bundle; ``meta`` holds every key of its bundle.yaml entry."""

    name: str
    task: str
    path: Path
    sha256: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    meta: dict[str, Any]

    @property
    def input_hw(self) -> tuple[int, int] | None:
        hw = self.meta.get("input_hw")
        return None if hw is None else (int(hw[0]), int(hw[1]))

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names") or [])


@dataclass(frozen=True)
class Bundle:
    root: Path
    graphs: dict[str, GraphSpec]
    colour: dict[str, Any]
    created: str
    producer: str

    def graph(self, name: str) -> GraphSpec:
        if name not in self.graphs:
            have = ", ".join(sorted(self.graphs)) or "none"
            raise BundleError(f"{self.root / BUNDLE_FILE}: no '{name}' graph (it has: {have}); "
                              "export one into this bundle with training/export.py")
        return self.graphs[name]


def _fail(where: str, problem: str, fix: str = "") -> BundleError:
    advice = fix or f"re-export the bundle with `{EXPORT_COMMAND}`"
    return BundleError(f"{where}: {problem}; {advice}")


def _check_keys(where: str, entry: Mapping[str, Any], required: set[str],
                optional: set[str]) -> None:
    unknown = sorted(set(entry) - required - optional)
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown} (allowed: "
                           f"{', '.join(sorted(required | optional))})",
                    "this bundle was written by another version or edited by hand: remove the "
                    f"key(s) or re-export with `{EXPORT_COMMAND}`")
    missing = sorted(required - set(entry))
    if missing:
        raise _fail(where, f"missing key(s) {missing}")


def _tensor_list(where: str, value: Any) -> tuple[TensorSpec, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(where, "must be a non-empty list of {name, shape, dtype}")
    specs = []
    for index, item in enumerate(value):
        here = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise _fail(here, "must be a mapping {name, shape, dtype}")
        _check_keys(here, item, {"name", "shape"}, {"dtype"})
        shape = item["shape"]
        if not isinstance(item["name"], str) or not isinstance(shape, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d >= 0) or isinstance(d, str)
            for d in shape
        ):
            raise _fail(here, "name must be a string and shape a list of non-negative ints "
                              "or dim names")
        specs.append(TensorSpec(item["name"], tuple(shape), str(item.get("dtype", "float32"))))
    return tuple(specs)


def _check_task_values(where: str, task: str, entry: Mapping[str, Any]) -> None:
    hw = entry.get("input_hw")
    if hw is not None and not (isinstance(hw, list) and len(hw) == 2 and all(
            isinstance(d, int) and d > 0 for d in hw)):
        raise _fail(f"{where}.input_hw", f"must be [height, width] positive ints, got {hw!r}")
    if task in ("detection", "segmentation"):
        names = entry["class_names"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str)
                                                                for n in names):
            raise _fail(f"{where}.class_names", "must be a non-empty list of strings")
    if task == "detection":
        post = entry["postprocess"]
        if not isinstance(post, Mapping):
            raise _fail(f"{where}.postprocess", "must be a mapping")
        _check_keys(f"{where}.postprocess", post, {"conf_threshold", "iou_threshold"},
                    POSTPROCESS_KEYS - {"conf_threshold", "iou_threshold"})
        for key in ("conf_threshold", "iou_threshold"):
            value = post[key]
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
                raise _fail(f"{where}.postprocess.{key}", f"must be in [0, 1], got {value!r}")


def _graph_spec(bundle_file: Path, name: str, entry: Any, verify: bool) -> GraphSpec:
    where = f"{bundle_file}: graphs.{name}"
    if name not in GRAPH_TASKS:
        raise _fail(where, f"unknown graph name (known: {', '.join(GRAPH_TASKS)})",
                    f"rename or remove it, or re-export with `{EXPORT_COMMAND}`")
    if not isinstance(entry, Mapping):
        raise _fail(where, "must be a mapping")
    task = entry.get("task")
    if task != GRAPH_TASKS[name]:
        raise _fail(where, f"task must be '{GRAPH_TASKS[name]}', got {task!r}")
    _check_keys(where, entry, GRAPH_REQUIRED | TASK_REQUIRED[task],
                GRAPH_OPTIONAL | TASK_OPTIONAL[task])
    file = entry["file"]
    if not isinstance(file, str) or not file or PurePosixPath(file).is_absolute() or (
            ".." in PurePosixPath(file).parts):
        raise _fail(f"{where}.file", f"must be a file name inside the bundle folder, got "
                                     f"{file!r}")
    digest = entry["sha256"]
    if not isinstance(digest, str) or not SHA256.match(digest):
        raise _fail(f"{where}.sha256", "must be 64 lowercase hex digits")
    opset = entry["opset"]
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 7:
        raise _fail(f"{where}.opset", f"must be an int >= 7, got {opset!r}")
    _check_task_values(where, task, entry)
    path = bundle_file.parent / file
    if verify:
        if not path.is_file():
            raise BundleError(
                f"{bundle_file}: graph '{name}' file {path} is missing; the bundle folder is "
                f"incomplete: copy the whole folder, or re-export with `{EXPORT_COMMAND}`")
        actual = sha256_of(path)
        if actual != digest:
            raise BundleError(
                f"{path}: sha256 is {actual} but {bundle_file.name} records {digest}: the file "
                "changed after export (edited, truncated or swapped); refusing to load it. "
                f"Restore the original file or re-export with `{EXPORT_COMMAND}`")
    return GraphSpec(name=name, task=task, path=path, sha256=digest, opset=opset,
                     inputs=_tensor_list(f"{where}.inputs", entry["inputs"]),
                     outputs=_tensor_list(f"{where}.outputs", entry["outputs"]),
                     meta=dict(entry))


def bundle_file_of(path: str | Path) -> Path:
    path = Path(path)
    return path / BUNDLE_FILE if path.is_dir() or path.suffix not in (".yaml", ".yml") else path


def parse_bundle(document: Any, bundle_file: Path, verify: bool = True) -> Bundle:
    """Validate a loaded bundle.yaml document (and, with ``verify``, the files it names)."""
    where = str(bundle_file)
    if not isinstance(document, Mapping):
        raise _fail(where, "is not a YAML mapping")
    _check_keys(where, document, TOP_REQUIRED, TOP_OPTIONAL)
    if document["format"] != FORMAT:
        raise _fail(where, f"format is {document['format']!r}, expected {FORMAT!r}")
    if document["version"] != VERSION:
        raise _fail(where, f"version {document['version']!r} is not supported (this code "
                           f"reads version {VERSION})",
                    "update tdfusion_ros, or re-export the bundle with this version's "
                    "training/export.py")
    graphs = document["graphs"]
    if not isinstance(graphs, Mapping) or not graphs:
        raise _fail(f"{where}: graphs", "must be a non-empty mapping of graph name to entry")
    colour = document.get("colour") or {}
    if not isinstance(colour, Mapping):
        raise _fail(f"{where}: colour", "must be a mapping")
    specs = {name: _graph_spec(bundle_file, name, entry, verify)
             for name, entry in graphs.items()}
    return Bundle(root=bundle_file.parent, graphs=specs, colour=dict(colour),
                  created=str(document.get("created", "")),
                  producer=str(document.get("producer", "")))


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read ``bundle.yaml`` (given its folder or the file) and check every graph's sha256."""
    bundle_file = bundle_file_of(path)
    if not bundle_file.is_file():
        raise BundleError(f"{bundle_file}: no bundle here; make one with `{EXPORT_COMMAND}`")
    try:
        document = yaml.safe_load(bundle_file.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise BundleError(f"{bundle_file}: not readable YAML ({err}); re-export with "
                          f"`{EXPORT_COMMAND}`") from err
    return parse_bundle(document, bundle_file, verify)


class _Dumper(yaml.SafeDumper):
    """Block style, except short lists of scalars (shapes, sizes) on one line; no aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(item, (int, float, str, bool)) or item is None for item in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def write_bundle(root: str | Path, graphs: Mapping[str, Mapping[str, Any]],
                 colour: Mapping[str, Any] | None = None, producer: str = "training/export.py",
                 notes: str | None = None) -> Path:
    """Write ``root/bundle.yaml`` for graph files already in ``root``.

    Each graph's sha256 is computed here from the file (a value passed in must agree), and
    the result is validated exactly as ``load_bundle`` would before it is written atomically.
    """
    root = Path(root)
    entries: dict[str, dict[str, Any]] = {}
    for name, meta in graphs.items():
        entry = dict(meta)
        path = root / str(entry.get("file", ""))
        if not path.is_file():
            raise BundleError(f"{path}: graph '{name}' file not found in the bundle folder")
        actual = sha256_of(path)
        if entry.get("sha256") not in (None, actual):
            raise BundleError(f"{path}: the exporter recorded sha256 {entry['sha256']} but the "
                              f"file has {actual}; it changed after export, export it again")
        entry["sha256"] = actual
        entries[name] = entry
    document: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "producer": producer,
    }
    if colour:
        document["colour"] = dict(colour)
    if notes:
        document["notes"] = notes
    document["graphs"] = entries
    # Plain types only, exactly as a reload will see them.
    document = yaml.safe_load(yaml.dump(document, Dumper=_Dumper, sort_keys=False))
    bundle_file = root / BUNDLE_FILE
    parse_bundle(document, bundle_file, verify=True)
    text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=BUNDLE_FILE, suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a bundle is meant to be shared
    os.replace(tmp, bundle_file)
    return bundle_file


def engine_for(bundle: Bundle, name: str, backend: str = "auto", **options: Any) -> Any:
    """Create an engine for one graph of a verified bundle (see ``engines.create_engine``)."""
    from tdfusion_ros.runtime.engines import create_engine

    spec = bundle.graph(name)
    return create_engine(spec.path, backend, name=name, **options)
