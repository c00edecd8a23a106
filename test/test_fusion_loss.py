"""Tests for the learnable fusion loss (training/fusion_loss.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from tdfusion_ros.nets.networks import LossGenerationNet
from training.fusion_loss import (
    FusionLossConfig,
    fusion_loss,
    fusion_loss_from_config,
    gradient_loss,
    intensity_loss,
    joint_gradient,
    sobel_xy,
)

SHAPE = (2, 1, 16, 16)
FORMS = ("paper", "official")


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=gen, dtype=torch.float64)


def rand_weights(b: int, h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.softmax(
        torch.randn(
            b,
            2,
            h,
            w,
            generator=torch.Generator().manual_seed(seed),
            dtype=torch.float64,
        ),
        dim=1,
    )


def one_hot_ir(b: int, h: int, w: int) -> torch.Tensor:
    weights = torch.zeros(b, 2, h, w, dtype=torch.float64)
    weights[:, 0] = 1.0
    return weights


def np_sobel(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded 3x3 cross-correlation over the last two axes, by explicit loops."""
    padded = np.pad(img, [(0, 0)] * (img.ndim - 2) + [(1, 1), (1, 1)])
    out = np.zeros_like(img)
    h, w = img.shape[-2:]
    for i in range(h):
        for j in range(w):
            out[..., i, j] = (padded[..., i : i + 3, j : j + 3] * kernel).sum(
                axis=(-2, -1)
            )
    return out


# 1. zeros where they must be ---------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_total_zero_when_fused_is_ir_and_sources_agree(form: str) -> None:
    ir = rand(*SHAPE)
    b, _, h, w = SHAPE
    terms = fusion_loss(
        ir.clone(), ir, ir.clone(), one_hot_ir(b, h, w), intensity_form=form
    )
    assert terms.total.item() < 1e-12
    assert terms.intensity.item() < 1e-12
    assert terms.gradient.item() < 1e-12


@pytest.mark.parametrize("form", FORMS)
def test_intensity_zero_when_fused_is_ir_with_full_ir_weight(form: str) -> None:
    ir, vis = rand(*SHAPE, seed=0), rand(*SHAPE, seed=1)
    b, _, h, w = SHAPE
    assert intensity_loss(ir.clone(), ir, vis, one_hot_ir(b, h, w), form).item() == 0.0
    # ...and it is not zero when the weight sits on the (different) visible image.
    assert intensity_loss(ir.clone(), ir, vis, one_hot_ir(b, h, w).flip(1), form) > 1e-3


def test_gradient_zero_when_fused_carries_joint_gradient() -> None:
    img = rand(*SHAPE)
    assert gradient_loss(img.clone(), img, img.clone()).item() < 1e-12
    # A black visible image has zero Sobel response (zero padding included), so the joint
    # gradient is the infrared one, sign kept.
    black = torch.zeros(SHAPE, dtype=torch.float64)
    assert gradient_loss(img.clone(), img, black).item() < 1e-12
    # Flipping the sign of the fused gradients must cost something.
    assert gradient_loss(-img, img, black).item() > 1e-3


def test_sobel_matches_numpy_and_orientation() -> None:
    img = rand(*SHAPE, seed=3)
    kx = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    gx, gy = sobel_xy(img)
    np.testing.assert_allclose(gx.numpy(), np_sobel(img.numpy(), kx), atol=1e-12)
    np.testing.assert_allclose(gy.numpy(), np_sobel(img.numpy(), kx.T), atol=1e-12)
    # Brightness increasing to the right / downwards gives positive x / y responses.
    ramp = torch.arange(8, dtype=torch.float64).expand(1, 1, 8, 8)
    assert torch.all(sobel_xy(ramp)[0][..., 1:-1, 1:-1] == 8.0)
    assert torch.all(sobel_xy(ramp.transpose(-2, -1))[1][..., 1:-1, 1:-1] == 8.0)


def test_joint_gradient_picks_larger_magnitude_with_sign() -> None:
    ir, vis = rand(*SHAPE, seed=4), rand(*SHAPE, seed=5)
    jx, jy = joint_gradient(ir, vis)
    for joint, g_ir, g_vis in zip((jx, jy), sobel_xy(ir), sobel_xy(vis)):
        pick_ir = g_ir.abs() >= g_vis.abs()
        assert 0 < pick_ir.sum() < pick_ir.numel()  # both sources get picked somewhere
        assert torch.equal(joint[pick_ir], g_ir[pick_ir])
        assert torch.equal(joint[~pick_ir], g_vis[~pick_ir])
    # Gradient term by hand: the sum of the two per-direction L1 means.
    fused = rand(*SHAPE, seed=6)
    fx, fy = sobel_xy(fused)
    expected = (fx - jx).abs().mean() + (fy - jy).abs().mean()
    torch.testing.assert_close(
        gradient_loss(fused, ir, vis), expected, rtol=0, atol=1e-14
    )


# 2. intensity term by hand -----------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_intensity_matches_numpy(form: str) -> None:
    fused, ir, vis = (rand(*SHAPE, seed=s) for s in (10, 11, 12))
    weights = rand_weights(SHAPE[0], *SHAPE[2:])
    f, a, v, w = (t.numpy() for t in (fused, ir, vis, weights))
    w_ir, w_vis = w[:, 0:1], w[:, 1:2]
    if form == "official":  # mse(w_a*(A-F)) + mse(w_b*(B-F)), as the released code
        expected = np.mean((w_ir * (a - f)) ** 2) + np.mean((w_vis * (v - f)) ** 2)
    else:
        expected = np.mean(w_ir * (f - a) ** 2 + w_vis * (f - v) ** 2)
    got = intensity_loss(fused, ir, vis, weights, form).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_official_form_is_paper_form_with_squared_weights() -> None:
    fused, ir, vis = (rand(*SHAPE, seed=s) for s in (20, 21, 22))
    weights = rand_weights(SHAPE[0], *SHAPE[2:], seed=23)
    official = intensity_loss(fused, ir, vis, weights, "official")
    torch.testing.assert_close(
        official, intensity_loss(fused, ir, vis, weights**2, "paper")
    )
    assert abs(official - intensity_loss(fused, ir, vis, weights, "paper")) > 1e-4


def test_total_combines_terms_and_config() -> None:
    fused, ir, vis = (rand(*SHAPE, seed=s) for s in (30, 31, 32))
    weights = rand_weights(SHAPE[0], *SHAPE[2:], seed=33)
    terms = fusion_loss(fused, ir, vis, weights, alpha=2.5)
    torch.testing.assert_close(terms.total, terms.intensity + 2.5 * terms.gradient)
    assert terms.gradient > 0
    no_grad = fusion_loss_from_config(
        fused, ir, vis, weights, FusionLossConfig(use_gradient=False)
    )
    assert no_grad.gradient.item() == 0.0
    torch.testing.assert_close(no_grad.total, terms.intensity)
    official = fusion_loss_from_config(
        fused, ir, vis, weights, FusionLossConfig(intensity_form="official")
    )
    torch.testing.assert_close(
        official.intensity, intensity_loss(fused, ir, vis, weights, "official")
    )


def test_float32_works() -> None:
    fused, ir, vis = (rand(*SHAPE, seed=s).float() for s in (40, 41, 42))
    terms = fusion_loss(fused, ir, vis, rand_weights(SHAPE[0], *SHAPE[2:]).float())
    assert terms.total.dtype == torch.float32 and torch.isfinite(terms.total)


# 3. derivative w.r.t. the fused image ------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_gradcheck_wrt_fused_and_weights(form: str) -> None:
    shape = (1, 1, 6, 7)
    ir, vis = rand(*shape, seed=50), rand(*shape, seed=51)
    fused = rand(*shape, seed=52).requires_grad_()
    weights = rand_weights(1, 6, 7, seed=53).requires_grad_()
    # Random data keeps every |Sx F - joint| away from the kink at 0.
    fx, fy = sobel_xy(fused.detach())
    jx, jy = joint_gradient(ir, vis)
    assert min((fx - jx).abs().min(), (fy - jy).abs().min()) > 1e-4

    def loss(f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return fusion_loss(f, ir, vis, w, intensity_form=form).total

    assert torch.autograd.gradcheck(loss, (fused, weights), eps=1e-7, atol=1e-8)


# 4. derivative w.r.t. G's parameters -------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_gradient_wrt_generator_parameters_matches_finite_differences(
    form: str,
) -> None:
    torch.manual_seed(0)
    net = LossGenerationNet().double().eval()
    params = {k: v.detach().clone() for k, v in net.named_parameters()}
    ir, vis, fused = (rand(*SHAPE, seed=s) for s in (60, 61, 62))

    def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
        weights = functional_call(net, p, (ir, vis))
        return fusion_loss(fused, ir, vis, weights, intensity_form=form).total

    live = {k: v.clone().requires_grad_() for k, v in params.items()}
    grads = dict(zip(live, torch.autograd.grad(loss(live), list(live.values()))))

    # For each tensor, check its entry with the largest gradient: tiny gradients drown in
    # the forward pass's rounding noise, which the central difference amplifies by 1/eps.
    names = [
        "project_out_1.weight",
        "prelu.weight",
        "project_in_1.weight",
        "encoder1.0.attn.qkv.weight",
        "encoder2.1.ffn.project_out.weight",
        "decoder.0.attn.temperature",
    ]
    eps = 1e-5
    for name in names:
        flat_idx = grads[name].abs().argmax()
        idx = tuple(int(i) for i in torch.unravel_index(flat_idx, grads[name].shape))
        plus = {k: v.clone() for k, v in params.items()}
        minus = {k: v.clone() for k, v in params.items()}
        plus[name][idx] += eps
        minus[name][idx] -= eps
        numeric = ((loss(plus) - loss(minus)) / (2 * eps)).item()
        analytic = grads[name][idx].item()
        assert abs(analytic) > 1e-9, f"{name}{idx}: gradient too small to check"
        rel = abs(analytic - numeric) / max(abs(analytic), abs(numeric))
        assert rel < 1e-4, f"{name}{idx}: autograd {analytic} vs finite diff {numeric}"


# 5. G's weights are a partition of unity ---------------------------------------------------


@pytest.mark.parametrize("hw", [(16, 16), (15, 13)])
def test_generator_weights_sum_to_one(hw: tuple[int, int]) -> None:
    torch.manual_seed(1)
    net = LossGenerationNet().eval()
    gen = torch.Generator().manual_seed(2)
    ir, vis = (torch.rand(2, 1, *hw, generator=gen) for _ in range(2))
    with torch.no_grad():
        weights = net(ir, vis)
    assert weights.shape == (2, 2, *hw)
    assert torch.all(weights >= 0)
    assert (weights.sum(dim=1) - 1).abs().max().item() < 1e-6


# 6. fixed-weight mode ----------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_fixed_weights_equal_explicit_halves(form: str) -> None:
    fused, ir, vis = (rand(*SHAPE, seed=s) for s in (70, 71, 72))
    halves = torch.full((SHAPE[0], 2, *SHAPE[2:]), 0.5, dtype=torch.float64)
    fixed = fusion_loss(fused, ir, vis, None, intensity_form=form)
    explicit = fusion_loss(fused, ir, vis, halves, intensity_form=form)
    for a, b in zip(fixed, explicit):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


# 7. bad input ------------------------------------------------------------------------------


def test_mismatched_image_shapes_raise() -> None:
    fused, ir = rand(*SHAPE), rand(*SHAPE)
    vis = rand(2, 1, 16, 15)
    with pytest.raises(ValueError, match=r"vis=\(2, 1, 16, 15\)"):
        fusion_loss(fused, ir, vis, None)


def test_bad_weights_shape_raises() -> None:
    fused, ir, vis = rand(*SHAPE), rand(*SHAPE), rand(*SHAPE)
    with pytest.raises(ValueError, match=r"got \(2, 1, 16, 16\)"):
        fusion_loss(fused, ir, vis, rand(*SHAPE))


def test_multichannel_fused_and_bad_form_raise() -> None:
    img = rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"\(2, 3, 16, 16\)"):
        fusion_loss(img, img, img, None)
    one = rand(*SHAPE)
    with pytest.raises(ValueError, match="intensity_form"):
        fusion_loss(one, one, one, None, intensity_form="squared")  # type: ignore[arg-type]
