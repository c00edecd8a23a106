"""TDFusion's two networks: the fusion network F and the loss-generation network G.

F is the ReFusion architecture that TDFusion trains (Restormer encoders per modality, a
cross-attention fusion module, a Restormer decoder). Module names follow the official code so
its checkpoints map key-for-key (see ``checkpoints.py``). Both are plain ``nn.Module``s:
meta-learning runs them with ``torch.func.functional_call`` on a parameter dict instead of
mutating their weights.

Every layer is size-preserving (stride 1, "same" padding), so both networks take any H and W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

CHANNELS = 16
HEADS = 8
BLOCKS = 2


def pointwise(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, bias=False)


def depthwise(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels, bias=False)


def conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels at every pixel (Restormer's ``WithBias_LayerNorm``).

    Computed channels-last with ``F.layer_norm`` so that ONNX export yields a single
    LayerNormalization op instead of a chain of reductions.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.LayerNorm(channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def channel_attention(q: Tensor, k: Tensor, v: Tensor, temperature: Tensor) -> Tensor:
    """Transposed (channel-to-channel) attention: cost grows with H*W only linearly."""
    b, c, h, w = v.shape
    heads = temperature.shape[0]
    q = F.normalize(q.reshape(b, heads, c // heads, h * w), dim=-1)
    k = F.normalize(k.reshape(b, heads, c // heads, h * w), dim=-1)
    attn = torch.softmax(q @ k.transpose(-2, -1) * temperature, dim=-1)
    return (attn @ v.reshape(b, heads, c // heads, h * w)).reshape(b, c, h, w)


class MultiDConvHeadTransposedAttention(nn.Module):
    """Restormer's MDTA."""

    def __init__(self, channels: int, heads: int = HEADS) -> None:
        super().__init__()
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = pointwise(channels, 3 * channels)
        self.qkv_dwconv = depthwise(3 * channels)
        self.project_out = pointwise(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        return self.project_out(channel_attention(q, k, v, self.temperature))


class GatedDConvFeedForward(nn.Module):
    """Restormer's GDFN with expansion factor 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        hidden = 2 * channels
        self.project_in = pointwise(channels, 2 * hidden)
        self.dwconv = depthwise(2 * hidden)
        self.project_out = pointwise(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


class RestormerBlock(nn.Module):
    def __init__(self, channels: int, heads: int = HEADS) -> None:
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.attn = MultiDConvHeadTransposedAttention(channels, heads)
        self.norm2 = ChannelLayerNorm(channels)
        self.ffn = GatedDConvFeedForward(channels)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def restormer_stack(channels: int, blocks: int = BLOCKS) -> nn.Sequential:
    return nn.Sequential(*[RestormerBlock(channels) for _ in range(blocks)])


class CrossAttentionFusion(nn.Module):
    """ReFusion's fusion module (AFM): each stream attends to the other, then a gated mix."""

    def __init__(self, channels: int = CHANNELS, heads: int = HEADS) -> None:
        super().__init__()
        self.temperature1 = nn.Parameter(torch.ones(heads, 1, 1))
        self.temperature2 = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv1 = pointwise(channels, 3 * channels)
        self.qkv1_dwconv = depthwise(3 * channels)
        self.qkv2 = pointwise(channels, 3 * channels)
        self.qkv2_dwconv = depthwise(3 * channels)
        self.project_mid1 = pointwise(channels, channels)
        self.project_mid2 = pointwise(channels, channels)
        self.project_E = pointwise(2 * channels, 8 * channels)
        self.project_E_d = depthwise(8 * channels)
        self.project_E1 = pointwise(channels, 4 * channels)
        self.project_E1_d = depthwise(4 * channels)
        self.project_E2 = pointwise(channels, 4 * channels)
        self.project_E2_d = depthwise(4 * channels)
        self.project_out1 = pointwise(4 * channels, 2 * channels)
        self.project_out2 = pointwise(4 * channels, 2 * channels)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        q1, k1, v1 = self.qkv1_dwconv(self.qkv1(x1)).chunk(3, dim=1)
        q2, k2, v2 = self.qkv2_dwconv(self.qkv2(x2)).chunk(3, dim=1)
        x1 = x1 + self.project_mid1(channel_attention(q2, k1, v1, self.temperature1))
        x2 = x2 + self.project_mid2(channel_attention(q1, k2, v2, self.temperature2))
        out = torch.cat((x1, x2), dim=1)
        g1, g2 = self.project_E_d(self.project_E(out)).chunk(2, dim=1)
        y1 = F.gelu(g1) * self.project_E1_d(self.project_E1(x1))
        y2 = F.gelu(g2) * self.project_E2_d(self.project_E2(x2))
        return out + self.project_out1(y1) + self.project_out2(y2)


class FusionNet(nn.Module):
    """F: (infrared Y, visible Y) in [0, 1], each (B, 1, H, W) -> fused Y in (0, 1)."""

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.project_in_1 = conv3x3(1, channels)
        self.project_in_2 = conv3x3(1, channels)
        self.encoder1 = restormer_stack(channels)
        self.encoder2 = restormer_stack(channels)
        self.FM = CrossAttentionFusion(channels)
        self.decoder = restormer_stack(2 * channels)
        self.project_out_0 = conv3x3(2 * channels, channels)
        self.project_out_1 = conv3x3(channels, 1)

    def forward(self, ir: Tensor, vis: Tensor) -> Tensor:
        x1 = self.encoder1(self.project_in_1(ir))
        x2 = self.encoder2(self.project_in_2(vis))
        x = self.decoder(self.FM(x1, x2))
        x = F.leaky_relu(self.project_out_0(x), negative_slope=0.01)
        return torch.sigmoid(self.project_out_1(x))


class LossGenerationNet(nn.Module):
    """G (the official ``LPN``): per-pixel weights (w_ir, w_vis) of the fusion loss.

    The softmax over its two output channels makes w_ir + w_vis = 1 at every pixel.
    """

    def __init__(self, channels: int = CHANNELS) -> None:
        super().__init__()
        self.project_in_1 = conv3x3(1, channels)
        self.project_in_2 = conv3x3(1, channels)
        self.encoder1 = restormer_stack(channels)
        self.encoder2 = restormer_stack(channels)
        self.decoder = restormer_stack(2 * channels)
        self.project_out_0 = conv3x3(2 * channels, channels)
        self.prelu = nn.PReLU(num_parameters=1)
        self.project_out_1 = conv3x3(channels, 2)

    def forward(self, ir: Tensor, vis: Tensor) -> Tensor:
        x1 = self.encoder1(self.project_in_1(ir))
        x2 = self.encoder2(self.project_in_2(vis))
        x = torch.cat((x1, x2), dim=1)
        x = self.prelu(self.project_out_0(self.decoder(x)))
        return torch.softmax(self.project_out_1(x), dim=1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
