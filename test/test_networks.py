"""F and G: sizes, parameter counts, any input size, fast weights without module mutation."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from tdfusion_ros.nets.networks import FusionNet, LossGenerationNet, count_parameters


def test_parameter_counts_match_the_official_networks() -> None:
    assert count_parameters(FusionNet()) == 59_856
    assert count_parameters(LossGenerationNet()) == 44_529


@pytest.mark.parametrize("height, width", [(17, 23), (64, 48), (1, 5)])
def test_any_size_in_same_size_out(height: int, width: int) -> None:
    torch.manual_seed(0)
    ir, vis = torch.rand(2, 1, height, width), torch.rand(2, 1, height, width)
    with torch.inference_mode():
        fused = FusionNet()(ir, vis)
        weights = LossGenerationNet()(ir, vis)
    assert fused.shape == (2, 1, height, width)
    assert ((fused > 0) & (fused < 1)).all()
    assert weights.shape == (2, 2, height, width)
    assert torch.allclose(weights.sum(1), torch.ones(2, height, width), atol=1e-6)


def test_inputs_are_not_interchangeable() -> None:
    """Infrared goes first: swapping the inputs changes the output of a trained-like net."""
    torch.manual_seed(1)
    net = FusionNet()
    ir, vis = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    with torch.inference_mode():
        assert not torch.allclose(net(ir, vis), net(vis, ir))


def test_fast_weights_leave_the_module_untouched() -> None:
    """functional_call with an updated parameter dict changes the output, not the module."""
    torch.manual_seed(2)
    net = FusionNet()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ir, vis = torch.rand(1, 1, 12, 12), torch.rand(1, 1, 12, 12)
    params = dict(net.named_parameters())
    loss = net(ir, vis).mean()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    fast = {k: p - 0.5 * g for (k, p), g in zip(params.items(), grads)}
    fast_out = functional_call(net, fast, (ir, vis))
    assert not torch.allclose(fast_out, net(ir, vis))
    # the fast output is differentiable w.r.t. the original parameters (second order)
    second = torch.autograd.grad(fast_out.mean(), params["project_out_1.weight"])[0]
    assert torch.isfinite(second).all() and second.abs().sum() > 0
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key
