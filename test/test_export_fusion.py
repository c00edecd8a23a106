"""Fusion export: the official checkpoint through training/export.py into a bundle, run by ONNX
Runtime, compared with PyTorch on real MSRS pairs at two sizes (the graph's H and W are dynamic).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from tdfusion_ros.nets.checkpoints import load_network
from tdfusion_ros.nets.networks import FusionNet
from tdfusion_ros.runtime.bundle import load_bundle
from tdfusion_ros.runtime.engines import create_engine
from training.export import (
    FusionExportError,
    FusionGraph,
    check_fusion_onnx,
    main,
    real_pairs,
)


@pytest.fixture(scope="module")
def official_net(official_ivif: Path) -> FusionNet:
    return load_network(official_ivif, "fusion")


@pytest.fixture(scope="module")
def bundle_dir(official_ivif: Path, shared_data: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> Path:
    out = tmp_path_factory.mktemp("bundle")
    code = main(["--fusion", str(official_ivif), "--out", str(out), "--data", str(shared_data),
                 "--check-pairs", "00055D", "--check-crop", "64x96"])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def two_sizes(shared_data: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Real pairs at two different sizes (day and night scene)."""
    return (real_pairs(shared_data, ["00055D"], crop=(96, 128))
            + real_pairs(shared_data, ["00004N"], crop=(120, 200)))


def test_export_matches_pytorch_at_two_sizes(bundle_dir: Path, official_net: FusionNet,
                                             two_sizes: list) -> None:
    path = load_bundle(bundle_dir).graph("fusion").path
    parity = check_fusion_onnx(official_net, path, two_sizes, tolerance=1e-4)
    assert set(parity["pairs"]) == {"00055D@96x128", "00004N@120x200"}
    assert parity["max_abs_diff"] <= 1e-4


def test_bundle_records_fusion_graph(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    spec = bundle.graph("fusion")
    assert [t.name for t in spec.inputs] == ["ir", "vis"]
    assert spec.inputs[0].shape == (1, 1, "height", "width")
    assert [t.name for t in spec.outputs] == ["fused"]
    assert spec.meta["parity"]["max_abs_diff"] <= 1e-4
    assert spec.meta["source"]["checkpoint"] == "ReFusion_IVIF.pth"
    assert "network_input" in bundle.colour and "output_chroma" in bundle.colour


def test_graph_records_symbolic_sizes(bundle_dir: Path) -> None:
    """ONNX Runtime keeps F's residual stream in its fast layout only with these annotations."""
    import onnx

    model = onnx.load(str(bundle_dir / "fusion.onnx"))
    full_size = [v.name for v in model.graph.value_info
                 if [d.dim_param for d in v.type.tensor_type.shape.dim][2:] == ["height",
                                                                                "width"]]
    assert len(full_size) > 100


def _matmul_gflop(model, height: int, width: int) -> float:
    """GFLOP of the graph's MatMul nodes at one size, from the recorded symbolic shapes."""
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in model.graph.value_info}

    def size(dim) -> int:
        return dim if isinstance(dim, int) else eval(dim, {"height": height, "width": width})

    total = 0.0
    for node in model.graph.node:
        if node.op_type in ("MatMul", "FusedMatMul"):
            a, b = ([size(d) for d in shapes[name]] for name in node.input[:2])
            batch = int(np.prod(a[:-2]))
            total += 2.0 * batch * a[-2] * a[-1] * b[-1]
    return total / 1e9


def test_attention_products_do_only_the_needed_work(bundle_dir: Path) -> None:
    """At 640x480 the attention's products (Gram matrices of q and k, the per-head mix of v)
    cost 1.26 GFLOP; with Gram matrices over q, k and v and the mix padded to their rows they
    cost 2.9, and with the mix as one dense C x 3C product 8.1."""
    import onnx

    model = onnx.load(str(bundle_dir / "fusion.onnx"))
    assert _matmul_gflop(model, 480, 640) < 1.5


def test_graph_reads_its_size_from_the_inputs_only(bundle_dir: Path) -> None:
    """A Shape of an intermediate map costs ONNX Runtime a copy of that map out of its blocked
    layout, so only the inputs' sizes are read."""
    import onnx

    model = onnx.load(str(bundle_dir / "fusion.onnx"))
    read = {node.input[0] for node in model.graph.node if node.op_type == "Shape"}
    assert read and read <= {"ir", "vis"}


def test_layer_norms_stay_in_the_maps_layout(bundle_dir: Path) -> None:
    """ONNX Runtime's LayerNormalization needs channels-last rows, so each one cost a transpose
    and a layout reorder on both sides (and a quarter of F's time on an Intel CPU); the graph
    computes the norms with convolutions instead."""
    import onnx

    model = onnx.load(str(bundle_dir / "fusion.onnx"))
    ops = [node.op_type for node in model.graph.node]
    channels_last = [node for node in model.graph.node if node.op_type == "Transpose"
                     and list(onnx.helper.get_attribute_value(node.attribute[0])) == [0, 2, 3, 1]]
    assert "LayerNormalization" not in ops and not channels_last
    assert ops.count("Conv") >= 100  # the centring and variance convolutions are there


def test_only_the_attention_products_leave_the_blocked_layout(bundle_dir: Path,
                                                             tmp_path: Path) -> None:
    """Each move of a full map between ONNX Runtime's blocked layout and plain NCHW is a pass
    over it. As ONNX Runtime optimises the graph on this CPU, full maps come back into the
    blocked layout only after the 8 attention products (6 Restormer attentions, 2 in the fusion
    module): not after the norms, whose one-channel scale alone leaves it."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for name, value in (("height", 64), ("width", 96)):
        options.add_free_dimension_override_by_name(name, value)
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    options.log_severity_level = 3  # its warning that the file suits this CPU only
    ort.InferenceSession(str(bundle_dir / "fusion.onnx"), options,
                         providers=["CPUExecutionProvider"])
    ops = [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    if "ReorderOutput" not in ops:
        pytest.skip("ONNX Runtime uses no blocked layout on this CPU")
    assert ops.count("ReorderInput") == 8


def test_parity_check_refuses_a_graph_from_other_weights(bundle_dir: Path,
                                                         official_net: FusionNet,
                                                         two_sizes: list) -> None:
    other = copy.deepcopy(official_net)
    with torch.no_grad():
        other.project_out_1.weight.mul_(1.05)
    with pytest.raises(FusionExportError, match="differs from PyTorch"):
        check_fusion_onnx(other, bundle_dir / "fusion.onnx", two_sizes[:1])


def test_torch_backend_matches_the_graph(bundle_dir: Path, official_net: FusionNet,
                                         two_sizes: list) -> None:
    _, ir, vis = two_sizes[0]
    feeds = {"ir": ir[None, None], "vis": vis[None, None]}
    graph = create_engine(bundle_dir / "fusion.onnx", "onnxruntime", specialise_shapes=True)
    dev = create_engine(bundle_dir / "fusion.onnx", "torch", torch_module=official_net)
    assert dev.backend == "torch" and dev.inputs == graph.inputs
    diff = np.abs(graph.run(feeds)["fused"] - dev.run(feeds)["fused"]).max()
    assert diff <= 1e-4


def test_rewrite_equals_fusionnet_for_other_weights() -> None:
    """The rewrite is exact algebra, not tuned to one checkpoint: random weights, odd size."""
    torch.manual_seed(3)
    net = FusionNet().eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if "temperature" in name or name.endswith("body.weight"):
                param.copy_(0.5 + torch.rand_like(param))
            elif name.endswith("body.bias"):
                param.copy_(0.1 * torch.randn_like(param))
    ir, vis = torch.rand(1, 1, 37, 53), torch.rand(1, 1, 37, 53)
    with torch.inference_mode():
        expected = net(ir, vis)
        got = FusionGraph(net).eval()(ir, vis)
    assert (got - expected).abs().max().item() <= 1e-5


def test_cli_refuses_a_bad_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    assert main(["--fusion", str(bad), "--out", str(tmp_path / "out"), "--no-check"]) == 2
    assert not (tmp_path / "out" / "bundle.yaml").exists()
