"""TDFusion's training steps (paper Algorithm 1) with fast weights over parameter dicts.

Why fast weights: the meta step needs F' = F - eta * dL_f/dtheta_F as a differentiable
function of G's parameters, and a one-step-adapted task network T', without touching the
real F and T. Following the ``torch.func.functional_call`` MAML recipe, parameters live in
dicts, updated parameters are new tensors, and the networks are evaluated on those dicts. No
module is mutated and nothing is written to disk (the official code swaps ``*_meta``
attributes into F and saves and reloads T every step). Buffers (BatchNorm statistics) are
passed as scratch copies, so a meta step changes no module state except through G's update.

Algorithm 1, per epoch:

* Learning of G, ``meta_step`` on (meta-train, meta-test) batch pairs. The two-stage
  computation is ``inner_update`` followed by ``outer_loss`` (``meta_objective`` chains them):

  - inner update on the meta-train batch:
    F' = F - eta * dL_f(F(a, b), G(a, b)) / dtheta_F, graph kept (second order in theta_G);
    T' = T - eta * dL_t(T(F'(a, b).detach())) / dtheta_T (first order: fused image detached,
    so T' counts as a constant in the meta-gradient);
  - outer loss on the meta-test batch: L_t(T'(F'(a, b))), differentiated w.r.t. theta_G only.

  ``meta_gradient`` returns dL_outer/dtheta_G; ``outer_update`` applies it to G.

  Two exact ways to get it (``MetaConfig.meta_gradient_method``):

  - ``"double_backward"`` (the reference, and the official code's way): build F' with
    ``create_graph=True`` and back-propagate the outer loss through that second-order graph.
  - ``"closed_form"`` (default): only the intensity term of L_f depends on G's weights w, so
    with v = dL_outer/dtheta_F' (meta-test batch) the chain rule gives
    dL_outer/dw = -eta * d/dw [v . dL_int/dtheta_F] = -eta * d/dw sum_p dL_int/dF_p (J_F v)_p,
    with F and the Jacobian-vector product J_F v of F at theta_F on the meta-train crops
    (N pixels, r_ir = F - I_ir, r_vis = F - I_vis):

      paper, L_int = mean(w_ir r_ir^2 + w_vis r_vis^2):
        dL_outer/dw_ir(p) = -eta (2/N) r_ir(p) (J_F v)_p, likewise w_vis with r_vis;
      official, L_int = mean(w_ir^2 r_ir^2) + mean(w_vis^2 r_vis^2):
        dL_outer/dw_ir(p) = -eta (4/N) w_ir(p) r_ir(p) (J_F v)_p, likewise w_vis.

    (With G's softmax, w_vis = 1 - w_ir, the paper form's net effect on w_ir is
    -eta (2/N) (I_vis - I_ir) (J_F v)_p.) Then one vector-Jacobian product through G gives
    dL_outer/dtheta_G. The gradient term of L_f and the lambda * L_t term of ablation III do
    not depend on w and drop out. Cost: F forward/backward (first order) for F', the outer
    loss forward/backward for v, one forward-mode pass of F (``torch.func.jvp``), G forward
    twice (without a graph for w, then with one for the VJP: keeping G's graph through the
    step would hold about 2 GB at the default size) and G backward; no second-order graph is
    kept. With ``fused_image="weighted_sum"`` there is no F' (G
    reaches the outer loss directly), so that ablation always takes the reference path.
* Learning of F and T, ``learning_step`` on every training batch: F by L_f with G's weights
  detached, T by L_t on the detached fused image.

Paper ablations, as options (``MetaConfig``; the default is the paper's method):

* fixed w = 1/2, no G: pass ``loss_net=None`` to ``learning_step``; there is no meta step.
* no gradient term: ``MetaConfig(fusion_loss=FusionLossConfig(use_gradient=False))``.
* F also trained by L_t: ``fusion_task_weight = lambda > 0``; F's objective becomes
  L_f + lambda * L_t(T(F(a, b))) in the F/T phase and, so that the inner update simulates
  F's real update, in F' too.
* no separate F/T phase: ``update_ft_in_meta_step=True``; each meta step then also runs
  ``learning_step`` on its meta-train batch, and the training loop skips the F/T phase.
* fused image replaced by w_a * I_a + w_b * I_b: ``fused_image="weighted_sum"``; F is not
  used, G's weights fuse the images directly (so G is learnt from L_t through T' alone).

Choices where the official code differs or is silent (documented so they can be revisited):

* Which fused image adapts T: F'(meta-train) detached, our choice (T' then adapts to the
  fused image it is tested on); the official ``train.py`` calls F there without its fast
  weights, i.e. the un-updated F.
* T's inner step is plain SGD with eta (the paper's Eq.); the official code takes one step of
  T's Adam optimiser instead and then reloads T's weights from disk (Adam's moments keep that
  step).
* Outer step ``"max_normalised"`` is the official ``outer_update``: one *global* maximum over
  all of G's gradient tensors, theta_G -= lr * g / max(|g|), skipped when max(|g|) = 0; ``lr``
  is the current learning rate of G's optimiser (the official code uses F's, same schedule).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

import torch
from torch import Tensor, nn
from torch.func import functional_call

from training.fusion_loss import FusionLossConfig, FusionLossTerms, fusion_loss_from_config
from training.task_networks import Params, TaskNetwork

__all__ = [
    "Batch",
    "InnerUpdate",
    "LearningStepStats",
    "MetaConfig",
    "MetaGradient",
    "MetaLosses",
    "MetaStepStats",
    "Networks",
    "inner_update",
    "learning_step",
    "meta_gradient",
    "meta_objective",
    "meta_step",
    "outer_loss",
    "outer_update",
    "swap_doubled",
    "trainable_params",
]

OuterStep = Literal["adam", "max_normalised"]
FusedImage = Literal["network", "weighted_sum"]
MetaGradientMethod = Literal["closed_form", "double_backward"]


@dataclass(frozen=True)
class MetaConfig:
    """Settings of both training steps; defaults are the paper's method.

    ``inner_lr`` is eta of the inner updates (the official code uses the current learning rate
    of F's optimiser, 1e-4 decayed by StepLR: pass it with ``dataclasses.replace``).
    ``outer_step``: ``"adam"`` steps G's optimiser (Adam in the paper) with the meta-gradient;
    ``"max_normalised"`` is the official update (module docstring).
    ``meta_gradient_method``: ``"closed_form"`` (JVP of F, then G's VJP) or the reference
    ``"double_backward"``; both exact (module docstring).
    """

    inner_lr: float = 1e-4
    fusion_loss: FusionLossConfig = field(default_factory=FusionLossConfig)
    outer_step: OuterStep = "adam"
    fusion_task_weight: float = 0.0
    fused_image: FusedImage = "network"
    update_ft_in_meta_step: bool = False
    meta_gradient_method: MetaGradientMethod = "closed_form"

    def __post_init__(self) -> None:
        if self.outer_step not in ("adam", "max_normalised"):
            raise ValueError(
                f"outer_step must be 'adam' or 'max_normalised', got {self.outer_step!r}"
            )
        if self.fused_image not in ("network", "weighted_sum"):
            raise ValueError(
                f"fused_image must be 'network' or 'weighted_sum', got {self.fused_image!r}"
            )
        if self.meta_gradient_method not in ("closed_form", "double_backward"):
            raise ValueError(
                "meta_gradient_method must be 'closed_form' or 'double_backward', "
                f"got {self.meta_gradient_method!r}"
            )
        if self.inner_lr < 0 or self.fusion_task_weight < 0:
            raise ValueError("inner_lr and fusion_task_weight must be non-negative")


@dataclass
class Batch:
    """One batch as both losses see it.

    ``ir_crop``/``vis_crop``: (B, 1, h, w) random crops for the fusion loss (256x256 in the
    paper). ``ir_task``/``vis_task``: (B, 1, H, W) whole images resized to the task size.
    ``targets``: what ``TaskNetwork.loss`` takes (labels at task resolution, or boxes).
    """

    ir_crop: Tensor
    vis_crop: Tensor
    ir_task: Tensor
    vis_task: Tensor
    targets: Any


@dataclass
class Networks:
    """F, G and T. ``fusion`` may be None with ``fused_image="weighted_sum"``; ``loss`` None
    is the fixed-weight ablation (w = 1/2)."""

    fusion: nn.Module | None
    loss: nn.Module | None
    task: TaskNetwork


class MetaLosses(NamedTuple):
    """``outer`` keeps its graph to G's parameters when ``meta_objective`` built it (the
    closed-form ``meta_gradient`` returns it detached); the others are detached, for logging."""

    outer: Tensor
    fusion: Tensor
    inner_task: Tensor


class MetaGradient(NamedTuple):
    """``weight_grad``: dL_outer/dw (B, 2, H, W) on the meta-train crops, from the closed form
    (None on the reference path); it shows where on the image the meta step pushes G."""

    grads: Params
    losses: MetaLosses
    weight_grad: Tensor | None = None


class MetaStepStats(NamedTuple):
    fusion_loss: float
    inner_task_loss: float
    outer_task_loss: float
    meta_grad_max: float


class LearningStepStats(NamedTuple):
    fusion_loss: float
    intensity_loss: float
    gradient_loss: float
    task_loss: float


B = TypeVar("B", bound=Batch)


def swap_doubled(batch: B) -> B:
    """The official "swap" augmentation: the batch followed by its copy with infrared and
    visible exchanged, as one batch of twice the size (the official code concatenates so in
    the meta step and in the F/T phase).

    Why: with both orders in every batch, a preference of G for one input slot (e.g. a bias on
    its infrared logit) gets opposite gradients from the two halves, so G has to learn from
    image content. Targets are repeated: a (B, ...) tensor is concatenated with itself;
    ultralytics' dict gets the copy's boxes with ``batch_idx`` shifted by B. Other fields of
    a dataclass subclass are left as they are.
    """
    n = batch.ir_crop.shape[0]
    targets = batch.targets
    if isinstance(targets, Tensor):
        targets = torch.cat((targets, targets))
    elif isinstance(targets, dict) and "batch_idx" in targets:
        targets = {
            k: torch.cat((t, t + n if k == "batch_idx" else t)) for k, t in targets.items()
        }
    else:
        raise TypeError(f"cannot double targets of type {type(targets).__name__}")
    return dataclasses.replace(
        batch,
        ir_crop=torch.cat((batch.ir_crop, batch.vis_crop)),
        vis_crop=torch.cat((batch.vis_crop, batch.ir_crop)),
        ir_task=torch.cat((batch.ir_task, batch.vis_task)),
        vis_task=torch.cat((batch.vis_task, batch.ir_task)),
        targets=targets,
    )


def trainable_params(module: nn.Module) -> Params:
    """``requires_grad`` parameters by name: the tensors a step differentiates."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def _state(module: nn.Module, params: Params) -> Params:
    """``params`` plus scratch copies of the module's buffers, for ``functional_call``.

    Training-mode BatchNorm updates its running statistics in place; on copies, the module's
    own statistics are left as they were.
    """
    return {**{n: b.clone() for n, b in module.named_buffers()}, **params}


def _call(module: nn.Module, params: Params, *args: Tensor) -> Any:
    return functional_call(module, _state(module, params), args)


def _grad(loss: Tensor, params: Params, create_graph: bool = False) -> list[Tensor]:
    """d loss / d params, zeros for parameters the loss does not reach."""
    if not loss.requires_grad:
        return [torch.zeros_like(p) for p in params.values()]
    return list(
        torch.autograd.grad(
            loss,
            list(params.values()),
            create_graph=create_graph,
            allow_unused=True,
            materialize_grads=True,
        )
    )


def _sgd(params: Params, grads: Iterable[Tensor], lr: float) -> Params:
    return {n: p - lr * g for (n, p), g in zip(params.items(), grads)}


def _weights(nets: Networks, g_params: Params | None, ir: Tensor, vis: Tensor) -> Tensor | None:
    """G's per-pixel loss weights (B, 2, H, W), or None for the fixed w = 1/2."""
    if nets.loss is None:
        return None
    if g_params is None:
        return nets.loss(ir, vis)
    return _call(nets.loss, g_params, ir, vis)


def _fuse(
    nets: Networks,
    config: MetaConfig,
    f_params: Params | None,
    g_params: Params | None,
    ir: Tensor,
    vis: Tensor,
) -> Tensor:
    """The fused image: F on ``f_params`` (module's own if None), or w_a I_a + w_b I_b."""
    if config.fused_image == "weighted_sum":
        w = _weights(nets, g_params, ir, vis)
        return 0.5 * (ir + vis) if w is None else w[:, 0:1] * ir + w[:, 1:2] * vis
    if nets.fusion is None:
        raise ValueError("fused_image='network' needs a fusion network")
    if f_params is None:
        return nets.fusion(ir, vis)
    return _call(nets.fusion, f_params, ir, vis)


def _fusion_objective(
    nets: Networks,
    config: MetaConfig,
    batch: Batch,
    f_params: Params | None,
    g_params: Params | None,
    weights: Tensor | None,
) -> tuple[Tensor, FusionLossTerms]:
    """F's training objective: L_f on the crops, plus lambda * L_t if F also learns the task."""
    fused = _fuse(nets, config, f_params, g_params, batch.ir_crop, batch.vis_crop)
    terms = fusion_loss_from_config(
        fused, batch.ir_crop, batch.vis_crop, weights, config.fusion_loss
    )
    objective = terms.total
    if config.fusion_task_weight > 0:
        fused_task = _fuse(nets, config, f_params, g_params, batch.ir_task, batch.vis_task)
        t_now = {n: p.detach() for n, p in nets.task.trainable_params().items()}
        task_loss = nets.task.loss(fused_task, batch.targets, _state(nets.task.model, t_now))
        objective = objective + config.fusion_task_weight * task_loss
    return objective, terms


class InnerUpdate(NamedTuple):
    """Fast weights after the inner update and the losses that made them.

    ``fusion`` (F') keeps its graph to G's parameters; ``task`` (T') is detached: T is adapted
    on the detached fused image, so the meta-gradient treats T' as a constant (first order).
    ``fusion`` is None when ``fused_image="weighted_sum"`` (no F).
    """

    fusion: Params | None
    task: Params
    fusion_loss: Tensor
    task_loss: Tensor


def inner_update(
    nets: Networks, meta_train: Batch, config: MetaConfig, g_params: Params
) -> InnerUpdate:
    """Algorithm 1, inner update on the meta-train batch, G evaluated on ``g_params``."""
    if nets.loss is None:
        raise ValueError("no loss network G: the fixed-weight ablation has no meta step")
    eta = config.inner_lr
    # F' = F - eta * dL_f/dtheta_F, graph kept: F' is a differentiable function of theta_G.
    if config.fused_image == "network":
        f_params = trainable_params(nets.fusion)
        w = _weights(nets, g_params, meta_train.ir_crop, meta_train.vis_crop)
        l_f, _ = _fusion_objective(nets, config, meta_train, f_params, g_params, w)
        f_fast: Params | None = _sgd(f_params, _grad(l_f, f_params, create_graph=True), eta)
    else:  # G's weights fuse directly; there is no F to adapt.
        l_f, f_fast = meta_train.ir_task.new_zeros(()), None
    # T' = T - eta * dL_t/dtheta_T on the detached fused meta-train image (first order).
    t_params = nets.task.trainable_params()
    with torch.no_grad():
        fused = _fuse(nets, config, f_fast, g_params, meta_train.ir_task, meta_train.vis_task)
    l_t = nets.task.loss(fused, meta_train.targets, _state(nets.task.model, t_params))
    t_fast = {n: p.detach() for n, p in _sgd(t_params, _grad(l_t, t_params), eta).items()}
    return InnerUpdate(f_fast, t_fast, l_f, l_t)


def outer_loss(
    nets: Networks, meta_test: Batch, config: MetaConfig, g_params: Params, inner: InnerUpdate
) -> Tensor:
    """Algorithm 1, outer loss on the meta-test batch: L_t(T'(F'(I_a, I_b)))."""
    fused = _fuse(nets, config, inner.fusion, g_params, meta_test.ir_task, meta_test.vis_task)
    return nets.task.loss(fused, meta_test.targets, _state(nets.task.model, inner.task))


def meta_objective(
    nets: Networks,
    meta_train: Batch,
    meta_test: Batch,
    config: MetaConfig,
    g_params: Params,
) -> MetaLosses:
    """Learning of G: the outer task loss as a function of G's parameters.

    ``g_params`` are evaluated, not the module's own tensors, so a finite-difference check can
    perturb them; ``meta_gradient`` passes G's real parameters.
    """
    inner = inner_update(nets, meta_train, config, g_params)
    outer = outer_loss(nets, meta_test, config, g_params, inner)
    return MetaLosses(outer, inner.fusion_loss.detach(), inner.task_loss.detach())


def meta_gradient(
    nets: Networks, meta_train: Batch, meta_test: Batch, config: MetaConfig
) -> MetaGradient:
    """dL_outer/dtheta_G for G's trainable parameters; no ``.grad`` of any module is touched.

    ``config.meta_gradient_method`` picks the closed form or the double backward (module
    docstring); ``fused_image="weighted_sum"`` always uses the latter (there is no F').
    """
    if nets.loss is None:
        raise ValueError("no loss network G: the fixed-weight ablation has no meta step")
    g_params = trainable_params(nets.loss)
    if config.meta_gradient_method == "closed_form" and config.fused_image == "network":
        return _closed_form_meta_gradient(nets, meta_train, meta_test, config, g_params)
    losses = meta_objective(nets, meta_train, meta_test, config, g_params)
    grads = _grad(losses.outer, g_params)
    return MetaGradient(dict(zip(g_params, grads)), losses)


def _closed_form_meta_gradient(
    nets: Networks, meta_train: Batch, meta_test: Batch, config: MetaConfig, g_params: Params
) -> MetaGradient:
    """The meta-gradient as G's VJP of -eta * d/dw (dL_int/dF . J_F v) (module docstring).

    Same F', T' and outer loss as ``inner_update`` + ``outer_loss``, but F' is built first
    order: its dependence on theta_G enters only through the closed form.
    """
    if nets.fusion is None:
        raise ValueError("fused_image='network' needs a fusion network")
    eta = config.inner_lr
    ir, vis = meta_train.ir_crop, meta_train.vis_crop
    # G's weights without a graph: G runs again with one for the final VJP. Holding this
    # forward's graph through the step cost about 2 GB at the default size and set the peak.
    with torch.no_grad():
        w = _weights(nets, g_params, ir, vis)
    f_params = trainable_params(nets.fusion)
    l_f, _ = _fusion_objective(nets, config, meta_train, f_params, None, w)
    # F' = F - eta * dL_f/dtheta_F, first order; leaves, so v = dL_outer/dtheta_F' below.
    f_fast = {
        n: (p - eta * g).detach().requires_grad_(True)
        for (n, p), g in zip(f_params.items(), _grad(l_f, f_params))
    }
    # T' exactly as inner_update: SGD on the detached fused meta-train image of F'.
    t_params = nets.task.trainable_params()
    with torch.no_grad():
        fused_task = _fuse(nets, config, f_fast, None, meta_train.ir_task, meta_train.vis_task)
    l_t = nets.task.loss(fused_task, meta_train.targets, _state(nets.task.model, t_params))
    t_fast = {n: p.detach() for n, p in _sgd(t_params, _grad(l_t, t_params), eta).items()}
    del fused_task
    inner = InnerUpdate(f_fast, t_fast, l_f.detach(), l_t.detach())
    outer = outer_loss(nets, meta_test, config, None, inner)
    v = _grad(outer, f_fast)
    # J_F v at theta_F on the meta-train crops, by forward-mode AD (no graph kept).
    buffers = {n: b.clone() for n, b in nets.fusion.named_buffers()}
    primals = {n: p.detach() for n, p in f_params.items()}

    def fusion_of(params: Params) -> Tensor:
        return functional_call(nets.fusion, {**buffers, **params}, (ir, vis))

    fused, jv = torch.func.jvp(fusion_of, (primals,), (dict(zip(f_params, v)),))
    cotangent = _intensity_weight_cotangent(
        fused, ir, vis, w, jv, config.fusion_loss.intensity_form, eta
    )
    del fused, jv
    grads = torch.autograd.grad(
        _weights(nets, g_params, ir, vis),
        list(g_params.values()),
        cotangent,
        allow_unused=True,
        materialize_grads=True,
    )
    losses = MetaLosses(outer.detach(), inner.fusion_loss, inner.task_loss)
    return MetaGradient(dict(zip(g_params, grads)), losses, cotangent)


def _intensity_weight_cotangent(
    fused: Tensor, ir: Tensor, vis: Tensor, w: Tensor, jv: Tensor, form: str, eta: float
) -> Tensor:
    """dL_outer/dw, (B, 2, H, W): -eta * d/dw sum_p dL_int/dF_p (J_F v)_p (module docstring).

    paper: dL_int/dF_p = (2/N) (w_ir r_ir + w_vis r_vis); official: (2/N) (w_ir^2 r_ir +
    w_vis^2 r_vis), whose derivative in w_ir is (4/N) w_ir r_ir.
    """
    scale = -eta * 2.0 / fused.numel()
    r = torch.cat((fused - ir, fused - vis), dim=1)  # (r_ir, r_vis) per pixel
    if form == "paper":
        return scale * r * jv
    if form == "official":
        return 2.0 * scale * w * r * jv
    raise ValueError(f"intensity_form must be 'paper' or 'official', got {form!r}")


def outer_update(
    loss_net: nn.Module, grads: Params, optimizer: torch.optim.Optimizer, method: OuterStep
) -> None:
    """Apply the meta-gradient to G, leaving ``.grad`` of G's parameters as None afterwards.

    ``"adam"``: ``optimizer.step()`` with the gradients (its lr, betas, state as configured).
    ``"max_normalised"``: theta -= lr * g / m with m the largest |g| over all of G's tensors
    (one global maximum, as the official ``outer_update``), no step when m = 0; ``lr`` is
    ``optimizer.param_groups[0]["lr"]`` so a scheduler on it decays this step too.
    """
    params = dict(loss_net.named_parameters())
    if method == "adam":
        for name, g in grads.items():
            params[name].grad = g.detach()
        optimizer.step()
        for name in grads:
            params[name].grad = None
    elif method == "max_normalised":
        lr = float(optimizer.param_groups[0]["lr"])
        m = _grad_max(grads)
        if m > 0:
            with torch.no_grad():
                for name, g in grads.items():
                    params[name].sub_(lr * g / m)
    else:
        raise ValueError(f"outer step must be 'adam' or 'max_normalised', got {method!r}")


def _grad_max(grads: Params) -> float:
    return max((float(g.detach().abs().max()) for g in grads.values() if g.numel()), default=0.0)


def meta_step(
    nets: Networks,
    meta_train: Batch,
    meta_test: Batch,
    config: MetaConfig,
    g_optimizer: torch.optim.Optimizer,
    f_optimizer: torch.optim.Optimizer | None = None,
    t_optimizer: torch.optim.Optimizer | None = None,
) -> MetaStepStats:
    """One step of the learning of G: meta-gradient, then G's outer update.

    F and T keep their parameters and buffers, unless ``config.update_ft_in_meta_step`` (the
    ablation without a separate F/T phase), which then runs ``learning_step`` on the meta-train
    batch with ``f_optimizer`` and ``t_optimizer``. For multi-GPU training, call
    ``meta_gradient``, average the gradients over ranks, then ``outer_update``.
    """
    result = meta_gradient(nets, meta_train, meta_test, config)
    outer_update(nets.loss, result.grads, g_optimizer, config.outer_step)
    if config.update_ft_in_meta_step:
        learning_step(nets, meta_train, config, f_optimizer, t_optimizer)
    losses = result.losses
    return MetaStepStats(
        float(losses.fusion), float(losses.inner_task), float(losses.outer.detach()),
        _grad_max(result.grads),
    )


def learning_step(
    nets: Networks,
    batch: Batch,
    config: MetaConfig,
    f_optimizer: torch.optim.Optimizer | None,
    t_optimizer: torch.optim.Optimizer,
) -> LearningStepStats:
    """Algorithm 1, learning of F and T, on one batch.

    F: one optimiser step on L_f (plus lambda * L_t when ``fusion_task_weight`` > 0, with T
    held fixed) with G's weights detached. T: one step on L_t of F's output, after F's step and
    detached, as the official code orders them. G is not touched. With
    ``fused_image="weighted_sum"`` there is no F step (``f_optimizer`` may be None).
    """
    if t_optimizer is None:
        raise ValueError("learning_step needs the task network's optimiser")
    zero = batch.ir_task.new_zeros(())
    terms = FusionLossTerms(zero, zero, zero)
    if config.fused_image == "network":
        if f_optimizer is None or nets.fusion is None:
            raise ValueError("learning_step needs F and its optimiser")
        with torch.no_grad():
            w = _weights(nets, None, batch.ir_crop, batch.vis_crop)
        objective, terms = _fusion_objective(nets, config, batch, None, None, w)
        f_optimizer.zero_grad(set_to_none=True)
        objective.backward(inputs=list(trainable_params(nets.fusion).values()))
        f_optimizer.step()
    with torch.no_grad():
        fused = _fuse(nets, config, None, None, batch.ir_task, batch.vis_task)
    t_optimizer.zero_grad(set_to_none=True)
    task_loss = nets.task.loss(fused, batch.targets)
    task_loss.backward(inputs=list(nets.task.trainable_params().values()))
    t_optimizer.step()
    return LearningStepStats(*(float(t.detach()) for t in (*terms, task_loss)))
