"""TDFusion's learnable fusion loss L_f = L_int + alpha * L_grad (paper Eq. 1-3).

The per-pixel weights (w_ir, w_vis) come from the loss-generation network G, so the loss
must stay differentiable in those weights: meta-learning back-propagates through it into
G's parameters. Nothing here mutates a module; pass G's output in as a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

IntensityForm = Literal["paper", "official"]

_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


class FusionLossTerms(NamedTuple):
    """Scalar tensors: ``total = intensity + alpha * gradient``."""

    total: Tensor
    intensity: Tensor
    gradient: Tensor


@dataclass(frozen=True)
class FusionLossConfig:
    """Loss settings; ``use_gradient=False`` is the ablation without the gradient term."""

    alpha: float = 1.0
    intensity_form: IntensityForm = "paper"
    use_gradient: bool = True


def sobel_xy(img: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel x and y responses of a (B, 1, H, W) image, zero padded to keep H and W.

    Cross-correlation (``F.conv2d``) as in the official ``Sobelxy`` module; the same
    operator is applied to every image, so the gradient signs are comparable.
    """
    kx = torch.tensor(_SOBEL_X, dtype=img.dtype, device=img.device).view(1, 1, 3, 3)
    ky = kx.transpose(-2, -1)
    return F.conv2d(img, kx, padding=1), F.conv2d(img, ky, padding=1)


def joint_gradient(ir: Tensor, vis: Tensor) -> tuple[Tensor, Tensor]:
    """Per direction, the source gradient of larger magnitude, sign kept (ties -> ir)."""
    joint = []
    for g_ir, g_vis in zip(sobel_xy(ir), sobel_xy(vis)):
        joint.append(torch.where(g_ir.abs() >= g_vis.abs(), g_ir, g_vis))
    return joint[0], joint[1]


def intensity_loss(
    fused: Tensor,
    ir: Tensor,
    vis: Tensor,
    weights: Tensor | None,
    intensity_form: IntensityForm = "paper",
) -> Tensor:
    """Weighted intensity term L_int.

    ``"paper"`` (Eq. 2): mean over pixels of ``w_ir (F - I_ir)^2 + w_vis (F - I_vis)^2``.
    ``"official"``: the released code's ``mse(w_ir (I_ir - F)) + mse(w_vis (I_vis - F))``,
    which squares the weights, i.e. ``mean(w_ir^2 (F - I_ir)^2) + mean(w_vis^2 ...)``;
    this is not Eq. 2. ``weights=None`` fixes ``w_ir = w_vis = 1/2`` (ablation I).
    """
    _check_inputs(fused, ir, vis, weights)
    w_ir, w_vis = _split_weights(weights, fused)
    if intensity_form == "paper":
        pass
    elif intensity_form == "official":
        w_ir, w_vis = w_ir * w_ir, w_vis * w_vis
    else:
        raise ValueError(
            f"intensity_form must be 'paper' or 'official', got {intensity_form!r}"
        )
    return (w_ir * (fused - ir) ** 2 + w_vis * (fused - vis) ** 2).mean()


def gradient_loss(fused: Tensor, ir: Tensor, vis: Tensor) -> Tensor:
    """L_grad = ``l1(Sx F, joint_x) + l1(Sy F, joint_y)``.

    The sum (not the mean) of the two per-direction L1 means, as in the official code.
    """
    _check_inputs(fused, ir, vis, None)
    gx, gy = sobel_xy(fused)
    jx, jy = joint_gradient(ir, vis)
    return F.l1_loss(gx, jx) + F.l1_loss(gy, jy)


def fusion_loss(
    fused: Tensor,
    ir: Tensor,
    vis: Tensor,
    weights: Tensor | None,
    alpha: float = 1.0,
    intensity_form: IntensityForm = "paper",
    use_gradient: bool = True,
) -> FusionLossTerms:
    """L_f = L_int + alpha * L_grad for (B, 1, H, W) images and (B, 2, H, W) weights.

    ``weights`` channel 0 is w_ir, channel 1 is w_vis (G's softmax output); ``None`` means
    fixed 1/2 each. With ``use_gradient=False`` the gradient term is reported as zero.
    """
    intensity = intensity_loss(fused, ir, vis, weights, intensity_form)
    if use_gradient:
        gradient = gradient_loss(fused, ir, vis)
    else:
        gradient = fused.new_zeros(())
    return FusionLossTerms(intensity + alpha * gradient, intensity, gradient)


def fusion_loss_from_config(
    fused: Tensor,
    ir: Tensor,
    vis: Tensor,
    weights: Tensor | None,
    config: FusionLossConfig,
) -> FusionLossTerms:
    """``fusion_loss`` with its settings taken from a ``FusionLossConfig``."""
    return fusion_loss(
        fused,
        ir,
        vis,
        weights,
        config.alpha,
        config.intensity_form,
        config.use_gradient,
    )


def _split_weights(weights: Tensor | None, like: Tensor) -> tuple[Tensor, Tensor]:
    if weights is None:
        half = like.new_full((), 0.5)
        return half, half
    return weights[:, 0:1], weights[:, 1:2]


def _check_inputs(
    fused: Tensor, ir: Tensor, vis: Tensor, weights: Tensor | None
) -> None:
    shapes = {"fused": fused.shape, "ir": ir.shape, "vis": vis.shape}
    if fused.dim() != 4 or fused.shape[1] != 1:
        raise ValueError(f"fused must be (B, 1, H, W), got {tuple(fused.shape)}")
    if ir.shape != fused.shape or vis.shape != fused.shape:
        desc = ", ".join(f"{k}={tuple(v)}" for k, v in shapes.items())
        raise ValueError(f"fused, ir and vis must have the same shape, got {desc}")
    if weights is not None:
        b, _, h, w = fused.shape
        if weights.shape != (b, 2, h, w):
            raise ValueError(
                f"weights must be (B, 2, H, W) = {(b, 2, h, w)} to match fused "
                f"{tuple(fused.shape)}, got {tuple(weights.shape)}"
            )
