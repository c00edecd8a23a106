"""Every graph of the shipped bundle is one TensorRT 10 can build: no GPU is needed to know.

The fact table: the operators that onnx-tensorrt (TensorRT's ONNX parser) marks supported in its
operator matrix, ``docs/operators.md`` of TensorRT 10.15 ("opset 9 to opset 24"), with the
restrictions that concern graphs like ours (Resize modes, constant axes, LayerNormalization's
single output). The bundle's graphs are opset 17, inside TensorRT 10.0's range (9 to 20) too.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import numpy_helper

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "models" / "default"

TENSORRT_10_SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant ConstantOfShape Conv
ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace DequantizeLinear Div Dropout Einsum Elu Equal
Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow
HannWindow HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp
ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize
ReverseSequence RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())
#: Resize: coordinate transformation and interpolation modes TensorRT implements
RESIZE_COORDINATES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric",
                      "align_corners"}
RESIZE_MODES = {"nearest", "linear"}
#: operators whose ``axes`` input TensorRT needs as a constant (an initializer)
CONSTANT_AXES = {"ReduceSum": 1, "ReduceMean": 1, "Unsqueeze": 1}


def tensorrt_problems(path: Path) -> list[str]:
    """Why TensorRT 10 could not parse the graph at ``path`` (empty: it can)."""
    model = onnx.load(str(path))
    graph = model.graph
    constants = {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    problems = []
    opset = {o.domain: o.version for o in model.opset_import}.get("", 0)
    if not 9 <= opset <= 24:
        problems.append(f"opset {opset} outside TensorRT 10's 9-24")
    for node in graph.node:
        where = f"{node.op_type} {node.name!r}"
        if node.domain not in ("", "ai.onnx") or node.op_type not in TENSORRT_10_SUPPORTED:
            problems.append(f"{where}: not in TensorRT 10's supported operators")
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Resize":
            coords = attrs.get("coordinate_transformation_mode", b"half_pixel").decode()
            mode = attrs.get("mode", b"nearest").decode()
            if coords not in RESIZE_COORDINATES or mode not in RESIZE_MODES:
                problems.append(f"{where}: Resize {mode}/{coords} unsupported")
            if attrs.get("antialias", 0):
                problems.append(f"{where}: antialiased Resize unsupported")
        if node.op_type == "LayerNormalization" and len([o for o in node.output if o]) > 1:
            problems.append(f"{where}: only LayerNormalization's first output is supported")
        index = CONSTANT_AXES.get(node.op_type)
        if index is not None and len(node.input) > index and node.input[index] \
                and node.input[index] not in constants:
            problems.append(f"{where}: axes not a constant")
        if node.op_type == "MaxPool" and any(d != 1 for d in attrs.get("dilations", [])):
            problems.append(f"{where}: dilated MaxPool unsupported")
    return problems


def static_input(path: Path) -> bool:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return all(d.HasField("dim_value") for d in dims)


@pytest.mark.parametrize("graph", ["fusion", "detector", "segmenter"])
def test_shipped_graphs_are_buildable_by_tensorrt_10(graph: str) -> None:
    path = BUNDLE / f"{graph}.onnx"
    assert tensorrt_problems(path) == []
    if graph != "fusion":  # the bundle gives task graphs a fixed size (F takes any size)
        assert static_input(path), f"{path}: input shape not static"


def test_the_check_fails_on_what_tensorrt_cannot_build(tmp_path: Path) -> None:
    import numpy as np
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    nodes = [helper.make_node("Unique", ["x"], ["u"]),
             helper.make_node("Resize", ["x", "", "s"], ["r"], mode="cubic"),
             helper.make_node("ReduceSum", ["x", "axes"], ["y"])]
    scales = numpy_helper.from_array(np.ones(4, np.float32), "s")
    graph = helper.make_graph(nodes, "bad", [x, axes], [y], [scales])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    problems = tensorrt_problems(path)
    assert any("Unique" in p for p in problems)
    assert any("Resize cubic" in p for p in problems)
    assert any("axes not a constant" in p for p in problems)
