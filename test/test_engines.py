"""Bundles and engines on real ONNX Runtime sessions, with a small hand-built fusion-shaped graph.

The graph has the fusion graph's interface (ir, vis (1, 1, height, width) -> fused) and a
3x3 convolution, so shape handling, hashing and backend selection are exercised for real in
milliseconds; the exported F itself is covered by test_export_fusion.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from tdfusion_ros.runtime.bundle import BundleError, load_bundle, write_bundle
from tdfusion_ros.runtime.engines import (
    BackendUnavailableError,
    EngineError,
    available_backends,
    create_engine,
)
from tdfusion_ros.runtime.engines.cuda_driver import probe_gpu

REPO = Path(__file__).resolve().parents[1]
KERNEL = np.array([[0.0, 0.1, 0.0], [0.1, 0.6, 0.1], [0.0, 0.1, 0.0]], np.float32)


def tiny_fusion_graph(path: Path) -> Path:
    """fused = sigmoid(conv3x3(ir) + conv3x3(vis) - 0.5), dynamic height and width."""
    dims = [1, 1, "height", "width"]
    weight = numpy_helper.from_array(KERNEL.reshape(1, 1, 3, 3), "weight")
    offset = numpy_helper.from_array(np.array(-0.5, np.float32), "offset")
    nodes = [
        helper.make_node("Conv", ["ir", "weight"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["vis", "weight"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["a", "b"], ["s"]),
        helper.make_node("Add", ["s", "offset"], ["t"]),
        helper.make_node("Sigmoid", ["t"], ["fused"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_fusion",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in ("ir", "vis")],
        [helper.make_tensor_value_info("fused", TensorProto.FLOAT, dims)],
        [weight, offset])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def expected_fused(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    import cv2

    def conv(x: np.ndarray) -> np.ndarray:
        return cv2.filter2D(x, -1, KERNEL, borderType=cv2.BORDER_CONSTANT)

    return 1.0 / (1.0 + np.exp(-(conv(ir) + conv(vis) - 0.5)))


def fusion_entry(file: str = "fusion.onnx") -> dict:
    shape = [1, 1, "height", "width"]
    return {"task": "fusion", "file": file, "opset": 17,
            "inputs": [{"name": "ir", "shape": shape, "dtype": "float32"},
                       {"name": "vis", "shape": shape, "dtype": "float32"}],
            "outputs": [{"name": "fused", "shape": shape, "dtype": "float32"}],
            "normalisation": {"feed": "Y in [0, 1]", "mean": 0.0, "std": 1.0,
                              "in_graph": True}}


@pytest.fixture()
def bundle_dir(tmp_path: Path) -> Path:
    tiny_fusion_graph(tmp_path / "fusion.onnx")
    write_bundle(tmp_path, {"fusion": fusion_entry()}, colour={"network_input": "Y"})
    return tmp_path


@pytest.fixture()
def planes() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return (rng.random((1, 1, 24, 40), dtype=np.float32),
            rng.random((1, 1, 24, 40), dtype=np.float32))


def test_bundle_round_trip(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    spec = bundle.graph("fusion")
    assert spec.path == bundle_dir / "fusion.onnx"
    assert [t.name for t in spec.inputs] == ["ir", "vis"]
    assert spec.inputs[0].shape == (1, 1, "height", "width")
    assert spec.meta["normalisation"]["in_graph"] is True
    assert bundle.colour == {"network_input": "Y"}
    document = yaml.safe_load((bundle_dir / "bundle.yaml").read_text())
    assert document["graphs"]["fusion"]["sha256"] == spec.sha256
    # Writing again from what was loaded gives the same graphs (a true round trip).
    write_bundle(bundle_dir, {"fusion": spec.meta}, colour=bundle.colour)
    again = load_bundle(bundle_dir).graph("fusion")
    assert again.meta == spec.meta


def test_task_graph_entries_are_validated(bundle_dir: Path) -> None:
    detector = {**fusion_entry("detector.onnx"), "task": "detection", "input_hw": [32, 32],
                "inputs": [{"name": "image", "shape": [1, 1, 32, 32], "dtype": "float32"}],
                "class_names": ["person", "car"],
                "postprocess": {"conf_threshold": 0.25, "iou_threshold": 0.7, "max_det": 300}}
    tiny_fusion_graph(bundle_dir / "detector.onnx")
    write_bundle(bundle_dir, {"fusion": fusion_entry(), "detector": detector})
    spec = load_bundle(bundle_dir).graph("detector")
    assert spec.class_names == ["person", "car"] and spec.input_hw == (32, 32)
    bad = {**detector, "postprocess": {"conf_threshold": 1.5, "iou_threshold": 0.7}}
    with pytest.raises(BundleError, match="conf_threshold"):
        write_bundle(bundle_dir, {"fusion": fusion_entry(), "detector": bad})
    with pytest.raises(BundleError, match="class_names"):
        write_bundle(bundle_dir, {"fusion": fusion_entry(),
                                  "detector": {k: v for k, v in detector.items()
                                               if k != "class_names"}})


def test_hash_mismatch_is_refused_naming_the_file(bundle_dir: Path) -> None:
    path = bundle_dir / "fusion.onnx"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError) as err:
        load_bundle(bundle_dir)
    message = str(err.value)
    assert str(path) in message and "sha256" in message and "re-export" in message


def test_missing_onnx_is_refused(bundle_dir: Path) -> None:
    (bundle_dir / "fusion.onnx").unlink()
    with pytest.raises(BundleError, match="fusion.onnx is missing"):
        load_bundle(bundle_dir)
    with pytest.raises(EngineError, match="not found"):
        create_engine(bundle_dir / "fusion.onnx", "onnxruntime")


def test_missing_bundle_and_unknown_keys_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle here"):
        load_bundle(tmp_path / "elsewhere")
    bundle_file = bundle_dir / "bundle.yaml"
    document = yaml.safe_load(bundle_file.read_text())
    document["graphs"]["fusion"]["thresholds"] = 0.5
    bundle_file.write_text(yaml.safe_dump(document))
    with pytest.raises(BundleError, match=r"unknown key\(s\) \['thresholds'\]"):
        load_bundle(bundle_dir)
    del document["graphs"]["fusion"]["thresholds"]
    document["version"] = 99
    bundle_file.write_text(yaml.safe_dump(document))
    with pytest.raises(BundleError, match="version 99 is not supported"):
        load_bundle(bundle_dir)
    document["version"] = 1
    document["graphs"]["tracker"] = document["graphs"]["fusion"]
    bundle_file.write_text(yaml.safe_dump(document))
    with pytest.raises(BundleError, match="unknown graph name"):
        load_bundle(bundle_dir)


def test_engine_runs_the_graph(bundle_dir: Path, planes: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vis = planes
    engine = create_engine(load_bundle(bundle_dir).graph("fusion").path, "onnxruntime")
    fused = engine.run({"ir": ir, "vis": vis})["fused"]
    assert fused.shape == ir.shape and fused.dtype == np.float32
    np.testing.assert_allclose(fused[0, 0], expected_fused(ir[0, 0], vis[0, 0]), atol=1e-5)
    assert engine.details["threads"] >= 1 and engine.details["optimisation"] == "all"


def test_wrong_shapes_give_clear_errors(bundle_dir: Path,
                                        planes: tuple[np.ndarray, np.ndarray]) -> None:
    ir, vis = planes
    engine = create_engine(bundle_dir / "fusion.onnx", "onnxruntime", name="fusion")
    with pytest.raises(EngineError, match=r"input 'ir' has shape \(24, 40\).*expected rank 4"):
        engine.run({"ir": ir[0, 0], "vis": vis})
    with pytest.raises(EngineError, match="axis 1 must be 1"):
        engine.run({"ir": np.repeat(ir, 3, axis=1), "vis": vis})
    with pytest.raises(EngineError, match="'height' is 12 for input 'vis' but 24 for 'ir'"):
        engine.run({"ir": ir, "vis": vis[:, :, :12]})
    with pytest.raises(EngineError, match=r"is float64, expected float32.*astype"):
        engine.run({"ir": ir.astype(np.float64), "vis": vis})
    with pytest.raises(EngineError, match=r"missing \['vis'\]"):
        engine.run({"ir": ir})


def test_tensorrt_request_fails_clearly_without_tensorrt(bundle_dir: Path) -> None:
    reason = available_backends()["tensorrt"]
    if not reason:
        pytest.skip("TensorRT and a GPU are present here; the GPU check covers this path")
    with pytest.raises(BackendUnavailableError) as err:
        create_engine(bundle_dir / "fusion.onnx", "tensorrt")
    message = str(err.value)
    assert "TensorRT" in message or "GPU" in message
    assert "onnxruntime" in message or "GPU" in message  # says what to do instead


def test_onnxruntime_cuda_request_fails_clearly_without_cuda(bundle_dir: Path) -> None:
    if not available_backends()["onnxruntime-cuda"]:
        pytest.skip("onnxruntime CUDA is available here")
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        create_engine(bundle_dir / "fusion.onnx", "onnxruntime", device="cuda")


def test_auto_reports_onnxruntime_cpu_and_why(bundle_dir: Path,
                                              planes: tuple[np.ndarray, np.ndarray]) -> None:
    reasons = available_backends()
    if not reasons["tensorrt"] or not reasons["onnxruntime-cuda"]:
        pytest.skip("a GPU backend is available here")
    engine = create_engine(bundle_dir / "fusion.onnx", "auto")
    assert (engine.backend, engine.device) == ("onnxruntime", "cpu")
    assert engine.selection.startswith("auto: onnxruntime CPU")
    assert "tensorrt skipped" in engine.selection and "CUDA skipped" in engine.selection
    assert "onnxruntime on cpu" in engine.describe()
    ir, vis = planes
    assert engine.run({"ir": ir, "vis": vis})["fused"].shape == ir.shape


def test_gpu_probe_without_gpu_says_why() -> None:
    gpu, why = probe_gpu()
    if gpu is not None:
        pytest.skip(f"a GPU is present: {gpu.name}")
    assert "GPU" in why or "libcuda" in why


def test_shape_specialised_sessions_match(bundle_dir: Path) -> None:
    plain = create_engine(bundle_dir / "fusion.onnx", "onnxruntime", specialise_shapes=False)
    special = create_engine(bundle_dir / "fusion.onnx", "onnxruntime", specialise_shapes=True,
                            threads=1, spin=True)
    rng = np.random.default_rng(1)
    for height, width in ((16, 24), (40, 32), (16, 24)):
        feeds = {n: rng.random((1, 1, height, width), dtype=np.float32) for n in ("ir", "vis")}
        np.testing.assert_array_equal(plain.run(feeds)["fused"], special.run(feeds)["fused"])
    assert len(special._sessions) == 2  # one per size, reused
    assert plain.details["specialise_shapes"] is False and not plain._sessions


def test_expected_hash_is_checked(bundle_dir: Path) -> None:
    with pytest.raises(EngineError, match="does not match the expected"):
        create_engine(bundle_dir / "fusion.onnx", "onnxruntime", expected_sha256="0" * 64)
    sha = load_bundle(bundle_dir).graph("fusion").sha256
    assert create_engine(bundle_dir / "fusion.onnx", "onnxruntime", expected_sha256=sha)


def test_unknown_backend_and_torch_without_module(bundle_dir: Path) -> None:
    with pytest.raises(EngineError, match="unknown backend 'cuda'"):
        create_engine(bundle_dir / "fusion.onnx", "cuda")
    with pytest.raises(EngineError, match="torch_module"):
        create_engine(bundle_dir / "fusion.onnx", "torch")


def test_runtime_path_imports_no_torch(bundle_dir: Path) -> None:
    """What the node imports to run a bundle must not pull in torch, ultralytics, transformers."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from tdfusion_ros.runtime.bundle import engine_for, load_bundle
        engine = engine_for(load_bundle({str(bundle_dir)!r}), "fusion", "auto")
        x = np.zeros((1, 1, 8, 8), np.float32)
        engine.run({{"ir": x, "vis": x}})
        heavy = sorted(m for m in ("torch", "ultralytics", "transformers") if m in sys.modules)
        print("heavy:", heavy)
        sys.exit(1 if heavy else 0)
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
