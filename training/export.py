"""Export trained networks to a model bundle: ONNX graphs, each checked against PyTorch.

    python training/export.py --fusion CKPT --out BUNDLE_DIR [--opset 17] [--naive]

For now the bundle holds the fusion graph; detector and segmenter graphs are added in
:func:`export_task_graphs` (the hook ``training/onnx_task_export.py`` plugs into).

The fusion graph is not a trace of ``FusionNet`` as written but of :class:`FusionGraph`, an
export-time rewrite that computes the same function with fewer passes over full-resolution
feature maps. On a CPU, F's ~37 GFLOP per 640x480 frame come as a few hundred operations
that each stream maps of 16-128 channels at full size through memory, and ONNX Runtime's
fast convolutions need its blocked (NCHWc) layout; so what counts is how often each map is
copied, re-laid-out or re-read besides the arithmetic itself:

* ``chunk`` after a convolution becomes separate convolutions over the row groups of the
  same weights: no Slice copies, and each piece stays in the blocked layout.
* Attention q and k come out of one convolution ordered head by head ([q_h, k_h]), v out of
  another: each head's Gram matrix reads only q and k, and the mix only v.
* The per-pixel LayerNorm over 16 or 32 channels never leaves the blocked layout: the
  centred map is one 1x1 convolution (by I - 11^T / C), its variance another on the squares,
  1 / sqrt(variance) (one channel, the only part out of the blocked layout) comes back as C
  channels through a 1 -> C convolution, and the affine goes into the pointwise convolutions
  that follow. As ONNX Runtime's LayerNormalization it needed a transpose and a reorder on
  each side and ran at about 2 GB/s on rows of 16 values: a quarter of F's time on an Intel
  Xeon (its profile, 12 calls, 248 of 1002 ms). Dividing the centred map by the root moved
  the C-channel map out of the blocked layout and back in each norm (AMD EPYC: F 7 % slower).
* ``F.normalize`` of q and k over all pixels is never materialised: one batched product
  X X^T per head, X = [q_h; k_h], gives q.k^T and, on its diagonal, the squared norms;
  q_hat.k_hat^T is q.k^T / (|q| |k|^T) exactly (with the same eps clamp).
* After the (tiny) softmax, each head's d x d matrix multiplies that head's rows of v: one
  batched (heads, d, d) @ (heads, d, HW) product. (Earlier versions applied blockdiag(A) as
  one dense C x 3C product, two thirds zeros, and then each head's matrix padded with zero
  columns to the rows of one qkv tensor, which made the Gram product 3d x 3d and the mix
  read q and k for nothing: F 5 % slower on an AMD EPYC.) The constant output
  projection stays a 1x1 convolution: ONNX Runtime then adds the residual inside that
  convolution and the residual stream never leaves the blocked layout (this needs the
  symbolic shapes that :func:`annotate_symbolic_shapes` writes into the graph).
  The fusion module's cross attention is built the same way.
* Height and width are read once from the input ``ir`` and passed down: a ``Shape`` of an
  intermediate map makes ONNX Runtime copy that map out of its blocked layout just to read
  its size (one extra full-resolution pass per attention block).

Outputs match ``FusionNet`` to ~1e-6 (float reassociation); the export refuses anything
above 1e-4 on real image pairs from ``../shared/data``.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tdfusion_ros.nets.checkpoints import CheckpointError, load_network  # noqa: E402
from tdfusion_ros.nets.networks import (  # noqa: E402
    CrossAttentionFusion,
    FusionNet,
    RestormerBlock,
)
from tdfusion_ros.runtime.bundle import sha256_of, write_bundle  # noqa: E402
from tdfusion_ros.runtime.colour import prepare_pair  # noqa: E402
from tdfusion_ros.runtime.image_io import read_image, to_unit_float  # noqa: E402

FUSION_FILE = "fusion.onnx"
FUSION_INPUTS = ("ir", "vis")
FUSION_OUTPUT = "fused"
DYNAMIC_DIMS = ("height", "width")
FUSION_TOLERANCE = 1e-4
DEFAULT_OPSET = 17
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_CHECK_PAIRS = ("00055D", "00004N")
NORM_EPS = 1e-12  # F.normalize's eps

COLOUR_CONVENTION = {
    "network_input": "Y of OpenCV YCrCb computed from float32 BGR in [0, 1] (8-bit / 255, "
                     "16-bit / 65535 or percentile-stretched); grey images are used as they "
                     "are",
    "output_chroma": "CrCb of the visible image; when both inputs are colour, each pixel's "
                     "saturation-weighted mix (tdfusion_ros.colour.prepare_pair)",
    "output": "fused Y in (0, 1); colour image = YCrCb(fused Y, chroma) -> BGR",
}


class FusionExportError(RuntimeError):
    """An exported graph that does not reproduce the PyTorch network."""


# -- the export-time rewrite of F ---------------------------------------------------------

def _conv(weight: Tensor, groups: int = 1) -> nn.Conv2d:
    """A bias-free Conv2d holding a copy of ``weight`` ("same" padding, as all of F's are)."""
    out_ch, in_per_group, k, _ = weight.shape
    conv = nn.Conv2d(in_per_group * groups, out_ch, k, padding=k // 2, groups=groups,
                     bias=False)
    conv.weight.data.copy_(weight.detach())
    return conv


def pointwise_then_depthwise(pointwise: nn.Conv2d, depthwise: nn.Conv2d,
                             rows: Sequence[int], norm: nn.LayerNorm | None = None
                             ) -> nn.Sequential:
    """The rows ``rows`` of (depthwise o pointwise): that part of a chunked output, no Slice.

    ``norm``: the LayerNorm in front, whose affine y = gamma * n + beta this pointwise
    convolution takes over (W diag(gamma) n + W beta), so :class:`CentredNorm` can leave it out.
    """
    index = torch.tensor(list(rows))
    weight = pointwise.weight[index].detach()
    if norm is None:
        first = _conv(weight)
    else:
        first = _conv(weight * norm.weight.detach()[None, :, None, None])
        first.bias = nn.Parameter(weight[:, :, 0, 0] @ norm.bias.detach())
    return nn.Sequential(first, _conv(depthwise.weight[index], groups=len(rows)))


def head_grouped_qk_rows(channels: int, heads: int) -> list[int]:
    """Row order [q_h, k_h for each head h] of the q and k parts of a (q; k; v) stacked
    projection: each head's Gram matrix is then one batched product over contiguous rows."""
    dim = channels // heads
    return [part * channels + head * dim + i
            for head in range(heads) for part in range(2) for i in range(dim)]


class CentredNorm(nn.Module):
    """Restormer's per-pixel LayerNorm over channels, without its affine (see
    ``pointwise_then_depthwise``), computed where the map lies (NCHW, blocked in ONNX Runtime):
    x - mean(x) is one 1x1 convolution by the centring matrix I - 11^T / C, the variance one
    more, C -> 1, on the squares. Only that one-channel variance leaves the blocked layout
    (ONNX Runtime has no blocked Sqrt, Div or channel broadcast); its reciprocal root comes
    back as C equal channels through a 1 -> C convolution of ones, and the multiply by it stays
    blocked. Dividing the centred map by the root instead moved the C-channel map out of the
    blocked layout and back again in each norm."""

    def __init__(self, body: nn.LayerNorm) -> None:
        super().__init__()
        channels = body.normalized_shape[0]
        centring = torch.eye(channels) - 1.0 / channels
        self.centre = _conv(centring[:, :, None, None])
        self.mean = _conv(torch.full((1, channels, 1, 1), 1.0 / channels))
        self.broadcast = _conv(torch.ones(channels, 1, 1, 1))
        self.eps = body.eps

    def forward(self, x: Tensor) -> Tensor:
        centred = self.centre(x)
        inverse_std = 1.0 / torch.sqrt(self.mean(centred * centred) + self.eps)
        return centred * self.broadcast(inverse_std)


def attention_matrix(qk: Tensor, q_norm: Tensor, k_norm: Tensor, temperature: Tensor) -> Tensor:
    """softmax(q_hat k_hat^T * t) from q.k^T and the norms, as F.normalize would clamp them."""
    scale = q_norm.clamp_min(NORM_EPS) * k_norm.clamp_min(NORM_EPS)
    return torch.softmax(qk / scale * temperature, dim=-1)


Size = tuple[Any, Any]  # (height, width), traced from the graph input


class GroupedAttention(nn.Module):
    """x + MDTA(norm(x)) from a head-grouped q/k tensor and a v tensor (module docstring)."""

    def __init__(self, block: RestormerBlock) -> None:
        super().__init__()
        attn = block.attn
        self.channels = attn.project_out.weight.shape[0]
        self.heads = attn.temperature.shape[0]
        self.norm = CentredNorm(block.norm1.body)
        self.qk = pointwise_then_depthwise(attn.qkv, attn.qkv_dwconv,
                                           head_grouped_qk_rows(self.channels, self.heads),
                                           block.norm1.body)
        self.v = pointwise_then_depthwise(attn.qkv, attn.qkv_dwconv,
                                          range(2 * self.channels, 3 * self.channels),
                                          block.norm1.body)
        self.temperature = nn.Parameter(attn.temperature.detach().clone())
        self.project = _conv(attn.project_out.weight)
        self.register_buffer("eye", torch.eye(2 * (self.channels // self.heads)))

    def forward(self, x: Tensor, size: Size) -> Tensor:
        heads, dim = self.heads, self.channels // self.heads
        y = self.norm(x)
        qk = self.qk(y).reshape(heads, 2 * dim, -1)
        gram = qk @ qk.transpose(1, 2)
        norms = (gram * self.eye).sum(-1).sqrt()
        attn = attention_matrix(gram[:, :dim, dim:], norms[:, :dim, None],
                                norms[:, None, dim:], self.temperature)
        out = attn @ self.v(y).reshape(heads, dim, -1)
        return x + self.project(out.reshape(1, self.channels, *size))


class GatedFeedForward(nn.Module):
    """x + GDFN(norm(x)) with the gate and value halves as separate convolutions."""

    def __init__(self, block: RestormerBlock) -> None:
        super().__init__()
        ffn = block.ffn
        hidden = ffn.project_out.weight.shape[1]
        self.norm = CentredNorm(block.norm2.body)
        self.gate = pointwise_then_depthwise(ffn.project_in, ffn.dwconv, range(hidden),
                                             block.norm2.body)
        self.value = pointwise_then_depthwise(ffn.project_in, ffn.dwconv,
                                              range(hidden, 2 * hidden), block.norm2.body)
        self.project = ffn.project_out

    def forward(self, x: Tensor, size: Size) -> Tensor:  # noqa: ARG002 - same call as attention
        y = self.norm(x)
        return x + self.project(F.gelu(self.gate(y)) * self.value(y))


def restormer(blocks: nn.Sequential) -> nn.ModuleList:
    layers: list[nn.Module] = []
    for block in blocks:
        assert isinstance(block, RestormerBlock)
        layers += [GroupedAttention(block), GatedFeedForward(block)]
    return nn.ModuleList(layers)


def run_stack(layers: nn.ModuleList, x: Tensor, size: Size) -> Tensor:
    for layer in layers:
        x = layer(x, size)
    return x


class CrossFusion(nn.Module):
    """ReFusion's cross-attention fusion module (AFM) without chunk copies or normalize."""

    def __init__(self, fm: CrossAttentionFusion) -> None:
        super().__init__()
        channels = fm.project_mid1.weight.shape[0]
        self.heads = fm.temperature1.shape[0]

        def part(pw: nn.Conv2d, dw: nn.Conv2d, index: int, size: int = channels) -> nn.Module:
            return pointwise_then_depthwise(pw, dw, range(index * size, (index + 1) * size))

        self.q1, self.k1, self.v1 = (part(fm.qkv1, fm.qkv1_dwconv, i) for i in range(3))
        self.q2, self.k2, self.v2 = (part(fm.qkv2, fm.qkv2_dwconv, i) for i in range(3))
        self.temperature1 = nn.Parameter(fm.temperature1.detach().clone())
        self.temperature2 = nn.Parameter(fm.temperature2.detach().clone())
        self.mid1 = _conv(fm.project_mid1.weight)
        self.mid2 = _conv(fm.project_mid2.weight)
        self.gate1 = part(fm.project_E, fm.project_E_d, 0, 4 * channels)
        self.gate2 = part(fm.project_E, fm.project_E_d, 1, 4 * channels)
        self.e1 = part(fm.project_E1, fm.project_E1_d, 0, 4 * channels)
        self.e2 = part(fm.project_E2, fm.project_E2_d, 0, 4 * channels)
        self.out1, self.out2 = fm.project_out1, fm.project_out2
        self.channels = channels

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, x: Tensor, temperature: Tensor,
                project: nn.Conv2d, size: Size) -> Tensor:
        heads, dim = self.heads, self.channels // self.heads
        q = q.reshape(heads, dim, -1)
        k = k.reshape(heads, dim, -1)
        attn = attention_matrix(q @ k.transpose(1, 2), q.pow(2).sum(-1, keepdim=True).sqrt(),
                                k.pow(2).sum(-1).sqrt().unsqueeze(1), temperature)
        out = (attn @ v.reshape(heads, dim, -1)).reshape(1, self.channels, *size)
        return x + project(out)

    def forward(self, x1: Tensor, x2: Tensor, size: Size) -> Tensor:
        a1 = self._attend(self.q2(x2), self.k1(x1), self.v1(x1), x1, self.temperature1,
                          self.mid1, size)
        a2 = self._attend(self.q1(x1), self.k2(x2), self.v2(x2), x2, self.temperature2,
                          self.mid2, size)
        out = torch.cat((a1, a2), dim=1)
        y1 = F.gelu(self.gate1(out)) * self.e1(a1)
        y2 = F.gelu(self.gate2(out)) * self.e2(a2)
        return out + self.out1(y1) + self.out2(y2)


class FusionGraph(nn.Module):
    """FusionNet, rewritten for export; built from (and sharing no state with) a FusionNet.

    Batch size 1: the runtime fuses one frame at a time.
    """

    def __init__(self, net: FusionNet) -> None:
        super().__init__()
        self.project_in_1 = _conv(net.project_in_1.weight)
        self.project_in_2 = _conv(net.project_in_2.weight)
        self.encoder1 = restormer(net.encoder1)
        self.encoder2 = restormer(net.encoder2)
        self.fuse = CrossFusion(net.FM)
        self.decoder = restormer(net.decoder)
        self.project_out_0 = _conv(net.project_out_0.weight)
        self.project_out_1 = _conv(net.project_out_1.weight)

    def forward(self, ir: Tensor, vis: Tensor) -> Tensor:
        size = (ir.shape[2], ir.shape[3])  # from the input: see the module docstring
        x1 = run_stack(self.encoder1, self.project_in_1(ir), size)
        x2 = run_stack(self.encoder2, self.project_in_2(vis), size)
        x = run_stack(self.decoder, self.fuse(x1, x2, size), size)
        x = F.leaky_relu(self.project_out_0(x), negative_slope=0.01)
        return torch.sigmoid(self.project_out_1(x))


# -- export and parity --------------------------------------------------------------------

def real_pairs(data_dir: str | Path = DEFAULT_DATA, names: Sequence[str] = DEFAULT_CHECK_PAIRS,
               crop: tuple[int, int] | None = None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, infrared Y, visible Y) float32 planes of real MSRS pairs (``det/``).

    ``crop`` (height, width) takes the top-left region, for quick checks.
    """
    root = Path(data_dir) / "det"
    pairs = []
    for name in names:
        planes = prepare_pair(to_unit_float(read_image(root / "ir" / f"{name}.png")),
                              to_unit_float(read_image(root / "vi" / f"{name}.png")))
        ir, vis = planes.ir_y, planes.vis_y
        if crop is not None:
            ir = np.ascontiguousarray(ir[: crop[0], : crop[1]])
            vis = np.ascontiguousarray(vis[: crop[0], : crop[1]])
        pairs.append((name, ir, vis))
    return pairs


def check_fusion_onnx(net: FusionNet, path: str | Path,
                      pairs: Sequence[tuple[str, np.ndarray, np.ndarray]],
                      tolerance: float = FUSION_TOLERANCE) -> dict[str, Any]:
    """Max abs difference between the ONNX graph (ONNX Runtime, CPU) and ``net`` per pair.

    Raises FusionExportError above ``tolerance``.
    """
    from tdfusion_ros.runtime.engines import create_engine

    engine = create_engine(path, "onnxruntime", name="fusion")
    worst, per_pair = 0.0, {}
    for name, ir, vis in pairs:
        with torch.inference_mode():
            expected = net(torch.from_numpy(ir)[None, None],
                           torch.from_numpy(vis)[None, None]).numpy()
        got = engine.run({"ir": ir[None, None], "vis": vis[None, None]})[FUSION_OUTPUT]
        diff = float(np.abs(got - expected).max())
        per_pair[f"{name}@{ir.shape[0]}x{ir.shape[1]}"] = diff
        worst = max(worst, diff)
    engine.close()
    if not worst <= tolerance:
        raise FusionExportError(f"{path}: fused output differs from PyTorch by up to "
                                f"{worst:.3g} (allowed {tolerance:g}): {per_pair}")
    return {"max_abs_diff": worst, "tolerance": tolerance, "pairs": per_pair,
            "backend": engine.describe()}


def annotate_symbolic_shapes(path: Path) -> None:
    """Record every intermediate tensor's shape in terms of ``height`` and ``width``.

    ONNX's own shape inference loses symbolic sizes at the first convolution, and ONNX
    Runtime's blocked-layout pass only fuses a residual Add into the convolution before it
    when it can prove both inputs have the same shape; with dynamic sizes that proof needs
    the dim names. Measured on F at 640x480 (1 thread): 1.59 s with the annotations against
    2.18 s without (and 1.73 s for a session with the sizes fixed, which needs ~20 % more
    memory and a new session per size).
    """
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path))
    onnx.save(SymbolicShapeInference.infer_shapes(model, auto_merge=True), str(path))


def export_fusion(net: FusionNet, path: str | Path, *, opset: int = DEFAULT_OPSET,
                  naive: bool = False,
                  check_pairs: Sequence[tuple[str, np.ndarray, np.ndarray]] = (),
                  tolerance: float = FUSION_TOLERANCE,
                  source: dict[str, str] | None = None) -> dict[str, Any]:
    """Write F as ONNX (inputs ir, vis (1, 1, height, width); output fused), check it.

    ``naive`` exports ``FusionNet`` as written instead of :class:`FusionGraph` (for
    benchmarks). Returns the graph's bundle.yaml entry.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.float().eval()
    module: nn.Module = net if naive else FusionGraph(net).eval()
    dummy = torch.rand(1, 1, 64, 80, generator=torch.Generator().manual_seed(0))
    axes = {name: {2: DYNAMIC_DIMS[0], 3: DYNAMIC_DIMS[1]}
            for name in (*FUSION_INPUTS, FUSION_OUTPUT)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module, (dummy, dummy.flip(-1)), str(path), dynamo=False,
                          opset_version=opset, input_names=list(FUSION_INPUTS),
                          output_names=[FUSION_OUTPUT], dynamic_axes=axes,
                          do_constant_folding=True)
    if not naive:
        annotate_symbolic_shapes(path)
    parity = check_fusion_onnx(net, path, check_pairs, tolerance) if check_pairs else None
    shape = [1, 1, *DYNAMIC_DIMS]
    entry: dict[str, Any] = {
        "task": "fusion",
        "file": path.name,
        "opset": opset,
        "architecture": "TDFusion/ReFusion F" + ("" if naive else
                                                 " (export rewrite, training/export.py)"),
        "input_hw": None,
        "inputs": [{"name": name, "shape": shape, "dtype": "float32"} for name in FUSION_INPUTS],
        "outputs": [{"name": FUSION_OUTPUT, "shape": shape, "dtype": "float32"}],
        "output_format": "fused Y in (0, 1), same size as the inputs",
        "normalisation": {"feed": "infrared Y and visible Y, float32 in [0, 1]",
                          "mean": 0.0, "std": 1.0, "in_graph": True},
    }
    if parity is not None:
        entry["parity"] = parity
    if source:
        entry["source"] = dict(source)
    return entry


def export_task_graphs(args: argparse.Namespace, out: Path) -> dict[str, dict[str, Any]]:
    """bundle.yaml entries "detector"/"segmenter" for each ``--task`` checkpoint (``task.pt``).

    The task networks are rebuilt from the checkpoint's record (task, classes, input size), as
    ``training/train.py`` wrote it, and exported by ``training.onnx_task_export``. Both graphs
    take sides that are multiples of 32: the training input size padded at the bottom/right
    (240x320 -> 256x320), which is what the detector saw in training (``DetectionTask``); the
    runtime letterbox is therefore top-left aligned.
    """
    import torch

    from training.onnx_task_export import export_detector, export_segmenter
    from training.task_networks import task_from_checkpoint

    entries: dict[str, dict[str, Any]] = {}
    for path in args.task or []:
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
            raise SystemExit(f"error: {path}: not a readable task checkpoint ({err})") from err
        if not isinstance(record, dict) or record.get("network") != "task":
            raise SystemExit(f"error: {path}: not a task checkpoint written by training/train.py")
        kind, classes = record["task"], list(record["classes"])
        size = tuple(int(v) for v in record["input_size"])
        padded = tuple(-(-v // 32) * 32 for v in size)
        if kind not in ("detection", "segmentation"):
            raise SystemExit(f"error: {path}: unknown task {kind!r}")
        try:
            task = task_from_checkpoint(record)
        except (ValueError, RuntimeError, KeyError) as err:
            raise SystemExit(f"error: {path}: its network cannot be rebuilt ({err})") from err
        if kind == "detection":
            entries["detector"] = export_detector(
                task.model.eval(), out / "detector.onnx", padded, args.opset,
                class_names=classes, letterbox_center=False,
                conf_threshold=args.conf_threshold, iou_threshold=args.iou_threshold)
        else:
            entries["segmenter"] = export_segmenter(
                task.model.eval(), out / "segmenter.onnx", padded, args.opset,
                class_names=classes)
        # the network by its task.pt name (yolov8n_lite0, lite0_mlp, ...), for the reader
        entries["detector" if kind == "detection" else "segmenter"]["architecture"] = \
            task.architecture
    return entries


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python training/export.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fusion", required=True,
                        help="F checkpoint: official TDFusion/ReFusion .pth or ours")
    parser.add_argument("--out", required=True, help="bundle folder to write")
    parser.add_argument("--task", action="append", metavar="TASK_PT",
                        help="task network checkpoint (task.pt of training/train.py) to export "
                             "as detector.onnx or segmenter.onnx; repeatable")
    parser.add_argument("--conf-threshold", type=float, default=0.25,
                        help="detector score threshold recorded in bundle.yaml (the node's "
                             "default; detection.conf_threshold overrides it)")
    parser.add_argument("--iou-threshold", type=float, default=0.7,
                        help="detector NMS IoU threshold recorded in bundle.yaml")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    parser.add_argument("--naive", action="store_true",
                        help="export FusionNet as written (no rewrite), for comparisons")
    parser.add_argument("--data", default=str(DEFAULT_DATA),
                        help="shared data folder with det/{ir,vi} (default: %(default)s)")
    parser.add_argument("--check-pairs", default=",".join(DEFAULT_CHECK_PAIRS),
                        help="comma-separated det/ pair names for the parity check")
    parser.add_argument("--check-crop", default="",
                        help="HxW crop for the parity check (default: full images)")
    parser.add_argument("--no-check", action="store_true",
                        help="skip the parity check (only when no real data is available)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    try:
        net = load_network(args.fusion, "fusion")
    except CheckpointError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    pairs: list[tuple[str, np.ndarray, np.ndarray]] = []
    if not args.no_check:
        crop = None
        if args.check_crop:
            height, width = (int(v) for v in args.check_crop.lower().split("x"))
            crop = (height, width)
        names = [n for n in args.check_pairs.split(",") if n]
        try:
            pairs = real_pairs(args.data, names, crop)
        except Exception as err:
            print(f"error: parity check pairs unavailable ({err}); pass --data DIR, or "
                  "--no-check to export unverified", file=sys.stderr)
            return 2
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    source = {"checkpoint": Path(args.fusion).name, "sha256": sha256_of(args.fusion)}
    try:
        graphs = {"fusion": export_fusion(net, out / FUSION_FILE, opset=args.opset,
                                          naive=args.naive, check_pairs=pairs,
                                          source=source)}
    except FusionExportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    graphs.update(export_task_graphs(args, out))
    bundle_file = write_bundle(out, graphs, colour=COLOUR_CONVENTION)
    parity = graphs["fusion"].get("parity")
    checked = (f"max abs diff vs PyTorch {parity['max_abs_diff']:.2e} on "
               f"{len(parity['pairs'])} real pair(s)" if parity else "NOT checked (--no-check)")
    print(f"wrote {bundle_file} ({', '.join(graphs)}) in {time.perf_counter() - started:.1f} s;"
          f" fusion {checked}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
