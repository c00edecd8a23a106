"""Algorithm 1's steps: the meta-gradient against finite differences, state hygiene, smoke runs.

The finite-difference tests use the real F and G (narrow, 8x8, float64) and a one-class task
plug-in; the smoke tests use the real SegFormer and YOLOv8 task networks on generated scenes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdfusion_ros.nets.networks import FusionNet, LossGenerationNet
from tdfusion_ros.runtime.colour import split_luma
from tdfusion_ros.scenes import generate_scene
from training.fusion_loss import FusionLossConfig, fusion_loss_from_config
from training.meta_learning import (
    Batch,
    MetaConfig,
    Networks,
    inner_update,
    learning_step,
    meta_gradient,
    meta_step,
    outer_loss,
    swap_doubled,
    trainable_params,
)
from training.task_networks import DetectionTask, SegmentationTask, TaskNetwork, yolo_targets

CLASSES = 3


class TinySegTask(TaskNetwork):
    """A task plugged in with one class: conv-BN-tanh-conv segmenter, cross-entropy."""

    def __init__(self) -> None:
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(), nn.Conv2d(4, CLASSES, 1)
        )
        super().__init__(model, (8, 8))

    def criterion(self, output: Tensor, targets: Tensor, image: Tensor) -> Tensor:
        return F.cross_entropy(output, targets)

    def predict(self, fused: Tensor) -> Tensor:
        return self.run(self.prepare(fused)).argmax(1)


class _Blind(nn.Module):
    """Logits that ignore the image: the task loss does not depend on the fused image."""

    def __init__(self) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.randn(CLASSES, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], CLASSES, *x.shape[-2:])


class BlindTask(TinySegTask):
    def __init__(self) -> None:
        TaskNetwork.__init__(self, _Blind(), (8, 8))


def make_nets(task: TaskNetwork | None = None, seed: int = 0) -> Networks:
    torch.manual_seed(seed)
    task = task or TinySegTask()
    task.model.double()
    return Networks(FusionNet(channels=8).double(), LossGenerationNet(channels=8).double(), task)


def make_batch(seed: int) -> Batch:
    """Crops 8x8 for L_f; whole images 10x12, resized by the task to 8x8, for L_t."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    labels = torch.randint(0, CLASSES, (2, 8, 8), generator=g)
    return Batch(r(2, 1, 8, 8), r(2, 1, 8, 8), r(2, 1, 10, 12), r(2, 1, 10, 12), labels)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: OpenMP's second thread only adds contention (badly so on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def meta_batches(swap: bool) -> tuple[Batch, Batch]:
    """(meta-train, meta-test); ``swap``: each doubled with its ir/vis-swapped copy."""
    batches = make_batch(1), make_batch(2)
    return tuple(swap_doubled(b) for b in batches) if swap else batches


def two_stage(
    nets: Networks,
    config: MetaConfig,
    g_params: dict[str, Tensor],
    task_fast: dict[str, Tensor],
    swap: bool = False,
) -> float:
    """The two-stage computation at ``g_params``, with T' held at ``task_fast``.

    T is adapted on the *detached* fused image, so the meta-gradient differentiates the outer
    loss with T' fixed; the finite difference must hold it fixed too.
    """
    meta_train, meta_test = meta_batches(swap)
    with torch.enable_grad():
        inner = inner_update(nets, meta_train, config, g_params)._replace(task=task_fast)
        return float(outer_loss(nets, meta_test, config, g_params, inner).detach())


CONFIGS = {
    "paper": MetaConfig(inner_lr=0.1),
    "official_intensity": MetaConfig(
        inner_lr=0.1, fusion_loss=FusionLossConfig(intensity_form="official")
    ),
    "no_gradient_term": MetaConfig(inner_lr=0.1, fusion_loss=FusionLossConfig(use_gradient=False)),
    "f_also_by_task": MetaConfig(inner_lr=0.1, fusion_task_weight=0.5),
    "weighted_sum": MetaConfig(inner_lr=0.1, fused_image="weighted_sum"),
}


METHODS = ("closed_form", "double_backward")
FD_CASES = [(name, method, False) for name in CONFIGS for method in METHODS] + [
    (name, "closed_form", True) for name in ("paper", "official_intensity", "f_also_by_task")
]


@pytest.mark.parametrize(("name", "method", "swap"), FD_CASES)
def test_meta_gradient_matches_finite_differences(name: str, method: str, swap: bool) -> None:
    """dL_outer/dtheta_G (second order through F') equals central differences, float64, by
    the closed form (JVP of F, VJP of G) and by the double backward, swap-doubled too."""
    config = replace(CONFIGS[name], meta_gradient_method=method)
    nets = make_nets()
    meta_train, meta_test = meta_batches(swap)
    grads = meta_gradient(nets, meta_train, meta_test, config).grads
    base = {k: p.detach().clone() for k, p in trainable_params(nets.loss).items()}
    task_fast = inner_update(nets, meta_train, config, base).task
    eps = 1e-6
    checks = []
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):  # random directions over all of G's parameters
        v = {k: torch.randn(p.shape, generator=gen, dtype=p.dtype) for k, p in base.items()}
        checks.append((v, sum(float((grads[k] * v[k]).sum()) for k in base)))
    for name, i in (("prelu.weight", 0), ("project_out_1.weight", 5)):  # single coordinates
        v = {k: torch.zeros_like(p) for k, p in base.items()}
        v[name].view(-1)[i] = 1.0
        checks.append((v, float(grads[name].view(-1)[i])))
    for v, analytic in checks:
        plus = two_stage(nets, config, {k: p + eps * v[k] for k, p in base.items()}, task_fast,
                         swap)
        minus = two_stage(nets, config, {k: p - eps * v[k] for k, p in base.items()}, task_fast,
                          swap)
        numeric = (plus - minus) / (2 * eps)
        assert analytic != 0.0
        assert abs(numeric - analytic) < 1e-3 * abs(analytic), (numeric, analytic)


@pytest.mark.parametrize(("name", "swap"), [(n, s) for n in CONFIGS for s in (False, True)])
def test_closed_form_equals_double_backward(name: str, swap: bool) -> None:
    """Same gradients (to rounding) and losses by both paths; weighted_sum has no F', so both
    settings take the double backward there and agree trivially."""
    nets = make_nets()
    results = [
        meta_gradient(nets, *meta_batches(swap), replace(CONFIGS[name], meta_gradient_method=m))
        for m in METHODS
    ]
    fast, reference = results
    assert fast.grads.keys() == reference.grads.keys()
    scale = max(float(g.abs().max()) for g in reference.grads.values())
    assert scale > 0
    for key, g in reference.grads.items():
        torch.testing.assert_close(fast.grads[key], g, rtol=1e-9, atol=1e-12 * scale, msg=key)
    for a, b in zip(fast.losses, reference.losses):
        assert float(a.detach()) == pytest.approx(float(b.detach()), rel=1e-12)


class _WeightMap(nn.Module):
    """A "G" whose output is its parameter: dL_outer/dtheta_G is then dL_outer/dw itself."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.rand(shape, dtype=torch.float64))

    def forward(self, ir: Tensor, vis: Tensor) -> Tensor:
        return self.w


@pytest.mark.parametrize("name", ["paper", "official_intensity"])
def test_closed_form_weight_gradient_is_dl_dw(name: str) -> None:
    """``weight_grad`` (where the meta step pushes G, per pixel) equals the double backward's
    dL_outer/dw; the experiment's meta-gradient contrast is read from it."""
    nets = make_nets()
    meta_train, meta_test = meta_batches(swap=True)
    nets.loss = _WeightMap((meta_train.ir_crop.shape[0], 2, 8, 8))
    fast = meta_gradient(nets, meta_train, meta_test, CONFIGS[name])
    reference = meta_gradient(
        nets, meta_train, meta_test, replace(CONFIGS[name], meta_gradient_method="double_backward")
    )
    assert reference.weight_grad is None
    assert float(fast.weight_grad.abs().max()) > 0
    torch.testing.assert_close(fast.weight_grad, reference.grads["w"], rtol=1e-9, atol=1e-15)


def test_swap_doubled_exchanges_the_sources_and_repeats_the_targets() -> None:
    batch = make_batch(7)
    doubled = swap_doubled(batch)
    for first, second in (("ir_crop", "vis_crop"), ("ir_task", "vis_task")):
        a, b = getattr(doubled, first), getattr(doubled, second)
        assert torch.equal(a[:2], getattr(batch, first)) and torch.equal(a[2:], b[:2])
        assert torch.equal(b[2:], getattr(batch, first))
    assert torch.equal(doubled.targets, torch.cat((batch.targets, batch.targets)))
    boxes = [torch.tensor([[0.0, 1, 1, 4, 5]]), torch.tensor([[1.0, 2, 2, 6, 6], [0, 0, 0, 3, 3]])]
    detection = Batch(batch.ir_crop, batch.vis_crop, batch.ir_task, batch.vis_task,
                      yolo_targets(boxes, (10, 12)))
    doubled = swap_doubled(detection).targets
    assert doubled["batch_idx"].tolist() == [0, 1, 1, 2, 3, 3]
    assert torch.equal(doubled["bboxes"][3:], detection.targets["bboxes"])
    with pytest.raises(TypeError, match="cannot double targets"):
        swap_doubled(replace(batch, targets=[1, 2]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("fused_image", ["network", "weighted_sum"])
def test_meta_gradient_is_zero_when_task_ignores_the_image(fused_image: str, method: str) -> None:
    nets = make_nets(BlindTask())
    config = MetaConfig(inner_lr=0.1, fused_image=fused_image, meta_gradient_method=method)
    result = meta_gradient(nets, make_batch(1), make_batch(2), config)
    assert result.losses.outer > 0
    assert set(result.grads) == set(trainable_params(nets.loss))
    assert all(torch.count_nonzero(g) == 0 for g in result.grads.values())


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def _assert_same(module: nn.Module, snap: dict[str, Tensor]) -> None:
    for k, v in module.state_dict().items():
        assert torch.equal(v, snap[k]), f"{k} changed"


@pytest.mark.parametrize("outer_step", ["adam", "max_normalised"])
def test_meta_step_changes_only_g(outer_step: str) -> None:
    """F and T (parameters and BatchNorm statistics) unchanged, no stray .grad; G updated as
    its optimiser (Adam) or the global max-normalised step says."""
    nets = make_nets()
    config = MetaConfig(inner_lr=0.1, outer_step=outer_step)
    expected = meta_gradient(nets, make_batch(1), make_batch(2), config).grads
    f_snap, t_snap, g_snap = map(_snapshot, (nets.fusion, nets.task.model, nets.loss))
    shadow = copy.deepcopy(nets.loss)
    g_opt = torch.optim.Adam(nets.loss.parameters(), lr=1e-3, eps=1e-10)
    shadow_opt = torch.optim.Adam(shadow.parameters(), lr=1e-3, eps=1e-10)

    stats = meta_step(nets, make_batch(1), make_batch(2), config, g_opt)

    _assert_same(nets.fusion, f_snap)
    _assert_same(nets.task.model, t_snap)
    for module in (nets.fusion, nets.task.model, nets.loss):
        assert all(p.grad is None for p in module.parameters())
    g_max = max(float(g.abs().max()) for g in expected.values())
    assert stats.meta_grad_max == pytest.approx(g_max, rel=1e-9)
    assert all(math.isfinite(x) for x in stats)
    if outer_step == "adam":
        for name, p in shadow.named_parameters():
            p.grad = expected[name]
        shadow_opt.step()
        for (name, p), q in zip(nets.loss.named_parameters(), shadow.parameters()):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-12, msg=name)
    else:
        for name, p in nets.loss.named_parameters():
            step = g_snap[name] - p.detach()
            torch.testing.assert_close(step, 1e-3 * expected[name] / g_max, rtol=1e-9, atol=1e-15)
        largest = max(float((g_snap[n] - p.detach()).abs().max())
                      for n, p in nets.loss.named_parameters())
        assert largest == pytest.approx(1e-3, rel=1e-9)


def _expected_sgd(nets: Networks, batch: Batch, config: MetaConfig, lr: float):
    """F then T after one SGD step of the F/T phase, computed directly on copies."""
    f, t = copy.deepcopy(nets.fusion), copy.deepcopy(nets.task.model)
    task = copy.copy(nets.task)
    task.model = t
    w = nets.loss(batch.ir_crop, batch.vis_crop).detach()
    obj = fusion_loss_from_config(
        f(batch.ir_crop, batch.vis_crop), batch.ir_crop, batch.vis_crop, w, config.fusion_loss
    ).total
    if config.fusion_task_weight:
        obj = obj + config.fusion_task_weight * task.loss(f(batch.ir_task, batch.vis_task),
                                                          batch.targets)
    grads = torch.autograd.grad(obj, list(f.parameters()))
    with torch.no_grad():
        for p, g in zip(f.parameters(), grads):
            p -= lr * g
        fused = f(batch.ir_task, batch.vis_task)
    grads = torch.autograd.grad(task.loss(fused, batch.targets), list(t.parameters()))
    with torch.no_grad():
        for p, g in zip(t.parameters(), grads):
            p -= lr * g
    return f, t


@pytest.mark.parametrize("task_weight", [0.0, 0.5])
def test_learning_step_trains_f_and_t_with_detached_g(task_weight: float) -> None:
    nets = make_nets()
    config = MetaConfig(fusion_task_weight=task_weight)
    batch = make_batch(4)
    f_ref, t_ref = _expected_sgd(nets, batch, config, lr=0.05)
    g_snap = _snapshot(nets.loss)
    f_opt = torch.optim.SGD(nets.fusion.parameters(), lr=0.05)
    t_opt = torch.optim.SGD(nets.task.model.parameters(), lr=0.05)

    stats = learning_step(nets, batch, config, f_opt, t_opt)

    _assert_same(nets.loss, g_snap)
    assert all(p.grad is None for p in nets.loss.parameters())
    for a, b in zip(nets.fusion.parameters(), f_ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(nets.task.model.parameters(), t_ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert stats.fusion_loss == pytest.approx(stats.intensity_loss + stats.gradient_loss)
    assert stats.task_loss > 0


def test_ablation_switches() -> None:
    """No G: F/T phase only. Weighted sum: F untouched. No F/T phase: all three move."""
    nets = make_nets()
    batch = make_batch(5)
    no_g = Networks(nets.fusion, None, nets.task)
    f_opt = torch.optim.SGD(nets.fusion.parameters(), lr=0.05)
    t_opt = torch.optim.SGD(nets.task.model.parameters(), lr=0.05)
    g_opt = torch.optim.Adam(nets.loss.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="no loss network"):
        meta_gradient(no_g, batch, make_batch(6), MetaConfig())
    f_snap = _snapshot(nets.fusion)
    learning_step(no_g, batch, MetaConfig(), f_opt, t_opt)
    with pytest.raises(AssertionError):
        _assert_same(nets.fusion, f_snap)

    f_snap = _snapshot(nets.fusion)
    weighted = MetaConfig(fused_image="weighted_sum")
    stats = learning_step(nets, batch, weighted, None, t_opt)
    _assert_same(nets.fusion, f_snap)
    assert stats.fusion_loss == 0.0

    snaps = [_snapshot(m) for m in (nets.fusion, nets.loss, nets.task.model)]
    joint = MetaConfig(inner_lr=0.1, update_ft_in_meta_step=True)
    meta_step(nets, batch, make_batch(6), joint, g_opt, f_opt, t_opt)
    for module, snap in zip((nets.fusion, nets.loss, nets.task.model), snaps):
        with pytest.raises(AssertionError):
            _assert_same(module, snap)
    with pytest.raises(ValueError, match="outer_step"):
        replace(joint, outer_step="sgd")
    with pytest.raises(ValueError, match="meta_gradient_method"):
        replace(joint, meta_gradient_method="finite_differences")


def _scene_batch(seeds: range, kind: str, crop: int = 32) -> Batch:
    """Generated 64x64 scenes: a crop for L_f, the whole image (= task size) for L_t."""
    scenes = [generate_scene(s, 64, 64) for s in seeds]
    ir = torch.stack([torch.from_numpy(s.ir.astype(np.float32) / 255)[None] for s in scenes])
    vis = torch.stack(
        [torch.from_numpy(split_luma(s.vis.astype(np.float32) / 255)[0])[None] for s in scenes]
    )
    if kind == "segmentation":
        targets = torch.stack([torch.from_numpy(s.mask).long() for s in scenes])
    else:
        targets = yolo_targets([s.boxes for s in scenes], (64, 64))
    return Batch(ir[..., :crop, :crop], vis[..., :crop, :crop], ir, vis, targets)


@pytest.mark.parametrize("kind", ["segmentation", "detection"])
def test_real_task_meta_and_learning_steps(kind: str) -> None:
    """One meta step and one F/T step with SegFormer / YOLOv8: finite, G gets a gradient."""
    torch.manual_seed(0)
    task = SegmentationTask(6, (64, 64)) if kind == "segmentation" else DetectionTask(2, (64, 64))
    nets = Networks(FusionNet(), LossGenerationNet(), task)
    g_opt = torch.optim.Adam(nets.loss.parameters(), lr=1e-4, eps=1e-10)
    f_opt = torch.optim.Adam(nets.fusion.parameters(), lr=1e-4)
    t_opt = torch.optim.Adam(task.model.parameters(), lr=1e-4)
    g_snap, t_snap = _snapshot(nets.loss), _snapshot(task.model)

    meta = meta_step(nets, _scene_batch(range(2), kind), _scene_batch(range(2, 4), kind),
                     MetaConfig(), g_opt)
    assert all(math.isfinite(x) for x in meta), meta
    assert meta.meta_grad_max > 0
    with pytest.raises(AssertionError):
        _assert_same(nets.loss, g_snap)
    _assert_same(task.model, t_snap)

    learn = learning_step(nets, _scene_batch(range(4, 6), kind), MetaConfig(), f_opt, t_opt)
    assert all(math.isfinite(x) for x in learn), learn
