"""Training-step speed on the CPU: our Algorithm 1 steps (training/meta_learning.py) next to
the same computation done the way the official TDFusion code does it.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_training.py [--sizes small|default]
        [--repeats 3] [--tasks segmentation,detection] [--threads 1] [--no-memory] [--profile]

Why a baseline in the benchmark: issue 11 asks our meta iteration to be at least 2.5x faster
than the official way with at most half its peak memory and the same numbers, so all run here,
on the same state, batches and machine. Three meta iterations side by side:

* ``ours``: ``meta_gradient`` with its default closed form (first-order F', the outer loss
  back-propagated to F' only, one forward-mode JVP of F, one VJP through G).
* ``reference``: ``meta_gradient`` with ``meta_gradient_method="double_backward"`` (F' built
  with ``create_graph=True``, the outer loss back-propagated through the second-order graph).
* ``official``: the official way, reproduced from HaowenBai/TDFusion (train.py, utils.py,
  nets/ReFusion.py) on our networks and losses:

* meta iteration (inner + outer update): T's state_dict saved to a file; L_f on the crops
  back-propagated with ``backward(create_graph=True)`` to every leaf (F's and G's .grad);
  F's weights swapped for F' = p - eta * p.grad by attribute assignment (the MetaModule
  ``*_meta`` swap); G run on the task-size images and its output thrown away (as the official
  code does); F' on them with a graph, detached (the official code runs the un-updated F
  there, ``meta=False``; ours uses F', and so does the baseline, same cost); T stepped in
  place by its optimiser (SGD with eta, so T' equals ours; the official code takes an Adam
  step, which costs about the same); the
  outer L_t(T'(F'(meta-test))) back-propagated to every leaf (G, F and T); G's max-normalised
  update from .grad; F's weights put back and T reloaded from the file.
* fusion-learning iteration (F/T step): as the official loop, G's weights computed with a
  graph and detached, G also run on the task-size images (unused), F on them with a graph,
  detached; one Adam step each for F and T.

Ours and reference are ``meta_gradient`` + ``outer_update`` (what ``meta_step`` and train.py
do); the F/T step is ``learning_step`` (ours) against the official loop. All start every
repetition from the same saved state and RNG seed (SegFormer has drop-path and dropout); the
report gives the largest difference from the official way of the outer loss and of G's
gradients (meta), and of F's and T's weights after the step (F/T). The batch of 2 is what the
official code feeds: one image and its infrared/visible-swapped copy.

Timing: one process per task runs the methods in turn (order reversed every repetition,
A B C C B A ..., so a drift in machine load hits all alike), after ``--warmup`` untimed
rounds. Medians of wall and CPU (``time.process_time``, all threads) seconds; ratios are
official / method. The machine is shared (``uptime`` is printed before and after), so trust
CPU time over wall time. Peak memory: a fresh process per (task, method, step), one step each,
its own ``ru_maxrss``. At the default size the reference meta iteration peaks near 12 GB and
the official one near 15 GB; the script refuses to start with less than ``--min-free-gb``
available and runs one child process at a time. ``--profile`` prints, instead of the table,
the CPU seconds of each stage of one meta iteration (the reference path by its stages) and
its top operators (torch.profiler, self CPU time).
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TASKS = ("segmentation", "detection")
METHODS = ("ours", "reference", "official")
STEPS = ("meta", "learn")
#: The reference path differs from ours in the meta step only.
STEP_METHODS = {"meta": METHODS, "learn": ("ours", "official")}


@dataclass(frozen=True)
class Size:
    """Pair size (H, W), fusion crop side, task input (H, W), batch size."""

    pair: tuple[int, int]
    crop: int
    task: tuple[int, int]
    batch: int = 2


SIZES = {
    # The paper's MSRS setting: 480x640 pairs, 256 crops, task loss at 240x320, batch 2.
    "default": Size((480, 640), 256, (240, 320)),
    "small": Size((120, 160), 64, (64, 96)),
}
#: Rough peak RSS (GB) of the largest child per size, for the free-memory check.
NEEDED_GB = {"default": 16.0, "small": 2.0}


# ----------------------------------------------------------------------------- set-up


@dataclass
class Setup:
    """Everything a step needs; ``snapshot`` holds the state every repetition starts from."""

    nets: Any
    config: Any
    meta_train: Any
    meta_test: Any
    snapshot: dict[str, dict]


def build(task: str, size: Size, seed: int = 0) -> Setup:
    """Networks, the two batches of a meta iteration and a snapshot to start every run from."""
    import torch

    from tdfusion_ros.nets.networks import FusionNet, LossGenerationNet
    from training.batches import collate_samples, derive_generator
    from training.datasets import GeneratedScenes
    from training.meta_learning import MetaConfig, Networks
    from training.task_networks import DetectionTask, SegmentationTask

    data = GeneratedScenes(2 * size.batch, task, seed=seed, height=size.pair[0],
                           width=size.pair[1], task_size=size.task)
    samples = [data[i] for i in range(len(data))]
    batches = [collate_samples(samples[k * size.batch:(k + 1) * size.batch],
                               derive_generator(seed, k), data.task, data.task_size, size.crop)
               for k in range(2)]
    torch.manual_seed(seed)
    task_net = (SegmentationTask if task == "segmentation" else DetectionTask)(
        len(data.classes), size.task)
    nets = Networks(FusionNet().train(), LossGenerationNet().train(), task_net)
    task_net.model.train()
    # The official outer update; the closed-form meta-gradient (the default) for "ours".
    config = MetaConfig(outer_step="max_normalised", meta_gradient_method="closed_form")
    setup = Setup(nets, config, batches[0], batches[1], {})
    setup.snapshot = {name: copy.deepcopy(m.state_dict()) for name, m in modules(nets).items()}
    return setup


def modules(nets: Any) -> dict[str, Any]:
    return {"fusion": nets.fusion, "loss": nets.loss, "task": nets.task.model}


def restore(setup: Setup, seed: int = 1) -> None:
    """Every network back to the snapshot, no .grad anywhere, the RNG reseeded."""
    import torch

    for name, module in modules(setup.nets).items():
        module.load_state_dict(setup.snapshot[name])
        module.zero_grad(set_to_none=True)
    gc.collect()
    trim_heap()
    torch.manual_seed(seed)


def trim_heap() -> None:
    """Give freed heap back to the OS (glibc), so that one method's leftovers do not inflate
    the next one's page faults or this process's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def optimisers(setup: Setup) -> dict[str, Any]:
    """Fresh optimisers as train.py builds them (Adam, lr 1e-4)."""
    import torch

    nets = setup.nets
    return {
        "fusion": torch.optim.Adam(nets.fusion.parameters(), lr=1e-4),
        "loss": torch.optim.Adam(nets.loss.parameters(), lr=1e-4),
        "task": torch.optim.Adam(nets.task.trainable_params().values(), lr=1e-4),
        # The official inner step of T is an optimiser step on the module; SGD with eta
        # makes T' the same as ours.
        "task_inner": torch.optim.SGD(nets.task.trainable_params().values(),
                                      lr=setup.config.inner_lr),
    }


class Probe:
    """What a step reports besides its result: CPU seconds per stage, the official way's
    temp file and the wall seconds of its disk I/O."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.io = 0.0
        self.stages: list[tuple[str, float]] = []
        self._last = time.process_time()

    def mark(self, stage: str) -> None:
        now = time.process_time()
        self.stages.append((stage, now - self._last))
        self._last = now


# ----------------------------------------------------------------------------- ours


def ours_meta(setup: Setup, opts: dict[str, Any], probe: Probe,
              method: str = "closed_form") -> dict[str, Any]:
    """``meta_gradient`` + ``outer_update``: what ``meta_step`` and train.py run."""
    from training.meta_learning import meta_gradient, outer_update

    config = replace(setup.config, meta_gradient_method=method)
    result = meta_gradient(setup.nets, setup.meta_train, setup.meta_test, config)
    probe.mark(f"meta_gradient ({method})")
    outer_update(setup.nets.loss, result.grads, opts["loss"], config.outer_step)
    probe.mark("G update")
    return {"outer": result.losses.outer.detach(), "fusion": result.losses.fusion,
            "inner_task": result.losses.inner_task, "grads": result.grads}


def reference_meta(setup: Setup, opts: dict[str, Any], probe: Probe) -> dict[str, Any]:
    return ours_meta(setup, opts, probe, "double_backward")


def reference_meta_staged(setup: Setup, opts: dict[str, Any], probe: Probe
                          ) -> dict[str, Any]:
    """The reference path's own steps (``meta_objective``'s two calls, then the gradient),
    called one by one to time each; used by ``--profile`` only."""
    import torch

    from training.meta_learning import inner_update, outer_loss, outer_update, trainable_params

    nets, config = setup.nets, setup.config
    g_params = trainable_params(nets.loss)
    inner = inner_update(nets, setup.meta_train, config, g_params)
    probe.mark("inner update: F' (graph kept) and T'")
    outer = outer_loss(nets, setup.meta_test, config, g_params, inner)
    probe.mark("outer forward F'(test), T'")
    grads = torch.autograd.grad(outer, list(g_params.values()), allow_unused=True,
                                materialize_grads=True)
    probe.mark("outer backward to G only")
    grads = dict(zip(g_params, grads))
    outer_update(nets.loss, grads, opts["loss"], config.outer_step)
    probe.mark("G update")
    return {"outer": outer.detach(), "fusion": inner.fusion_loss.detach(),
            "inner_task": inner.task_loss.detach(), "grads": grads}


def ours_learn(setup: Setup, opts: dict[str, Any], _probe: Probe) -> None:
    from training.meta_learning import learning_step

    learning_step(setup.nets, setup.meta_train, setup.config, opts["fusion"], opts["task"])


# ----------------------------------------------------------------------------- official way


@contextmanager
def fast_weights_swapped(module: Any, fast: dict[str, Any]) -> Iterator[None]:
    """F's weights replaced by ``fast`` through attribute assignment, then put back.

    An instance attribute shadows the registered parameter for every ``self.weight`` read in
    ``forward`` (the effect of the official MetaModule's ``*_meta`` attributes), while the
    parameter itself stays registered for the optimiser and ``state_dict``.
    """
    owners = []
    for name, tensor in fast.items():
        owner_name, _, attr = name.rpartition(".")
        owner = module.get_submodule(owner_name)
        object.__setattr__(owner, attr, tensor)
        owners.append((owner, attr))
    try:
        yield
    finally:
        for owner, attr in owners:
            object.__delattr__(owner, attr)


def official_meta(setup: Setup, opts: dict[str, Any], probe: Probe) -> dict[str, Any]:
    """One meta iteration (inner + outer update) the official way (module docstring)."""
    import torch

    from training.fusion_loss import fusion_loss_from_config

    nets, config = setup.nets, setup.config
    fusion, loss_net, task = nets.fusion, nets.loss, nets.task
    mt, ms, eta = setup.meta_train, setup.meta_test, config.inner_lr
    t0 = time.perf_counter()
    torch.save(task.model.state_dict(), probe.path)
    probe.io += time.perf_counter() - t0
    for module in (fusion, loss_net, task.model):
        module.zero_grad(set_to_none=True)
    probe.mark("save T to disk")
    # Inner update of F: L_f back-propagated to every leaf with a graph, F' from .grad.
    fused = fusion(mt.ir_crop, mt.vis_crop)
    weights = loss_net(mt.ir_crop, mt.vis_crop)
    terms = fusion_loss_from_config(fused, mt.ir_crop, mt.vis_crop, weights, config.fusion_loss)
    terms.total.backward(create_graph=True, retain_graph=True)
    fast = {n: p - eta * p.grad for n, p in fusion.named_parameters()}
    probe.mark("inner update of F: F' (graph kept, to F and G)")
    with fast_weights_swapped(fusion, fast):
        # Inner update of T, in place: G's weights at task size are computed and unused there.
        loss_net(mt.ir_task, mt.vis_task).detach()
        probe.mark("G on task images (unused)")
        fused_t = fusion(mt.ir_task, mt.vis_task).detach()
        inner_task = task.loss(fused_t, mt.targets)
        inner_task.backward()
        opts["task_inner"].step()
        probe.mark("inner update of T (in place)")
        # Outer loss on the meta-test batch, back-propagated to every leaf.
        loss_net.zero_grad(set_to_none=True)
        outer = task.loss(fusion(ms.ir_task, ms.vis_task), ms.targets)
        probe.mark("outer forward F'(test), T'")
        outer.backward()
        probe.mark("outer backward to G, F and T")
    grads = {n: p.grad.detach().clone() for n, p in loss_net.named_parameters()}
    official_outer_update(loss_net, float(opts["loss"].param_groups[0]["lr"]))
    probe.mark("G update")
    t0 = time.perf_counter()
    task.model.load_state_dict(torch.load(probe.path, weights_only=True))
    probe.io += time.perf_counter() - t0
    for module in (fusion, loss_net, task.model):  # frees the graph that F's .grad holds
        module.zero_grad(set_to_none=True)
    probe.mark("load T from disk, free .grad")
    return {"outer": outer.detach(), "fusion": terms.total.detach(),
            "inner_task": inner_task.detach(), "grads": grads}


def official_outer_update(loss_net: Any, lr: float) -> None:
    """theta -= lr * grad / (largest |grad| over all of G), skipped when that is zero."""
    import torch

    with torch.no_grad():
        largest = max(float(p.grad.abs().max()) for p in loss_net.parameters())
        if largest > 0:
            for p in loss_net.parameters():
                p.add_(-lr * (p.grad / largest))


def official_learn(setup: Setup, opts: dict[str, Any], _probe: Probe) -> None:
    """One F/T step as the official loop (module docstring)."""
    from training.fusion_loss import fusion_loss_from_config

    nets, config, b = setup.nets, setup.config, setup.meta_train
    fusion, loss_net, task = nets.fusion, nets.loss, nets.task
    opts["fusion"].zero_grad()
    fused = fusion(b.ir_crop, b.vis_crop)
    weights = loss_net(b.ir_crop, b.vis_crop).detach()
    fusion_loss_from_config(fused, b.ir_crop, b.vis_crop, weights,
                            config.fusion_loss).total.backward()
    opts["fusion"].step()
    opts["task"].zero_grad()
    loss_net(b.ir_task, b.vis_task).detach()
    fused_t = fusion(b.ir_task, b.vis_task).detach()
    task.loss(fused_t, b.targets).backward()
    opts["task"].step()


RUNNERS = {("ours", "meta"): ours_meta, ("ours", "learn"): ours_learn,
           ("reference", "meta"): reference_meta,
           ("official", "meta"): official_meta, ("official", "learn"): official_learn}


# ----------------------------------------------------------------------------- children


def measure(setup: Setup, method: str, step: str, path: str, staged: bool = False
            ) -> dict[str, Any]:
    """One step from the snapshot: times, and what to compare between the methods."""
    restore(setup)
    opts = optimisers(setup)
    run = reference_meta_staged if staged and (method, step) == ("reference", "meta") else \
        RUNNERS[method, step]
    wall, cpu = time.perf_counter(), time.process_time()
    probe = Probe(path)
    out = run(setup, opts, probe)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if step == "learn":  # the weights the step produced
        nets = setup.nets
        out = {"fusion": {n: p.detach().clone() for n, p in nets.fusion.named_parameters()},
               "task": {n: p.detach().clone() for n, p in nets.task.model.named_parameters()}}
    return {"wall": wall, "cpu": cpu, "out": out, "io": probe.io, "stages": probe.stages}


def max_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def compare(step: str, ours: dict[str, Any], base: dict[str, Any]) -> dict[str, float]:
    """What ``ours`` (either of our methods) computed against the official way's numbers."""
    if step == "meta":
        return {"outer_ours": float(ours["outer"]), "outer_official": float(base["outer"]),
                "outer_diff": abs(float(ours["outer"]) - float(base["outer"])),
                "inner_task_diff": abs(float(ours["inner_task"]) - float(base["inner_task"])),
                "fusion_diff": abs(float(ours["fusion"]) - float(base["fusion"])),
                "grad_diff": max_diff(ours["grads"], base["grads"]),
                "grad_max": max(float(g.abs().max()) for g in ours["grads"].values())}
    return {"fusion_weight_diff": max_diff(ours["fusion"], base["fusion"]),
            "task_weight_diff": max_diff(ours["task"], base["task"])}


def child_time(args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved timings and the equality check for one task."""
    setup = build(args.task, SIZES[args.sizes])
    times: dict[str, dict[str, list]] = {f"{m}/{s}": {"wall": [], "cpu": [], "io": []}
                                         for s in STEPS for m in STEP_METHODS[s]}
    checks: dict[str, list[dict[str, float]]] = {f"{m}/{s}": [] for s in STEPS
                                                 for m in STEP_METHODS[s] if m != "official"}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "interim_task.pth")
        for rep in range(args.warmup + args.repeats):
            for step in STEPS:
                methods = STEP_METHODS[step]
                order = methods if rep % 2 == 0 else methods[::-1]
                results = {}
                for method in order:
                    results[method] = measure(setup, method, step, path)
                    if rep >= args.warmup:
                        for key in ("wall", "cpu", "io"):
                            times[f"{method}/{step}"][key].append(results[method][key])
                    print(f"  {args.task} rep {rep}{' (warm-up)' if rep < args.warmup else ''}"
                          f" {step} {method}: {results[method]['wall']:.2f} s wall, "
                          f"{results[method]['cpu']:.2f} s CPU", file=sys.stderr, flush=True)
                for method in methods:
                    if method != "official":
                        checks[f"{method}/{step}"].append(compare(
                            step, results[method]["out"], results["official"]["out"]))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"times": times, "checks": checks, "peak_gb": peak_gb}


def child_memory(args: argparse.Namespace) -> dict[str, Any]:
    """One step of one method in this fresh process: peak RSS, after set-up and overall."""
    setup = build(args.task, SIZES[args.sizes])
    setup_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(setup, args.method, args.step, os.path.join(tmp, "interim_task.pth"))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"setup_gb": setup_kb / 2**20, "peak_gb": peak_kb / 2**20,
            "wall": result["wall"], "cpu": result["cpu"]}


def child_profile(args: argparse.Namespace) -> dict[str, Any]:
    """CPU seconds per stage and top operators (self CPU) of one meta iteration each way.

    One warm-up iteration each, then one timed by stages (ours through ``meta_gradient``'s
    own calls), then one under torch.profiler.
    """
    from torch.profiler import ProfilerActivity, profile

    setup = build(args.task, SIZES[args.sizes])
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "interim_task.pth")
        for method in METHODS:
            measure(setup, method, "meta", path)
            staged = measure(setup, method, "meta", path, staged=True)
            print(f"\n{args.task}, {method} meta iteration: {staged['cpu']:.2f} s CPU, "
                  f"{staged['wall']:.2f} s wall; CPU seconds by stage:")
            for stage, seconds in staged["stages"]:
                print(f"  {seconds:8.2f}  {stage}")
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                measure(setup, method, "meta", path)
            tables[method] = prof.key_averages().table(sort_by="self_cpu_time_total",
                                                        row_limit=args.top)
    for method, table in tables.items():
        print(f"\n{args.task}, {method} meta iteration under torch.profiler, top operators "
              f"by self CPU time (profiler overhead included):\n{table}")
    return {}


def run_child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=r"Using backward\(\) with create_graph=True")
    result = {"time": child_time, "memory": child_memory, "profile": child_profile}[args.child](
        args)
    print(json.dumps(result))


def spawn(args: argparse.Namespace, **extra: str) -> dict[str, Any]:
    """Run this script as a child with ``extra`` options; its last stdout line is JSON."""
    cmd = [sys.executable, __file__, "--sizes", args.sizes, "--threads", str(args.threads),
           "--repeats", str(args.repeats), "--warmup", str(args.warmup), "--top", str(args.top)]
    for key, value in extra.items():
        cmd += [f"--{key}", value]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, check=False)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"child {' '.join(extra.values())} failed (exit {proc.returncode})")
    if extra.get("child") == "profile":
        print("\n".join(lines[:-1]))
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------- report


def available_gb() -> float:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def uptime() -> str:
    """``uptime``'s line (load of the shared machine), or the load averages without it."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def report(args: argparse.Namespace, timing: dict[str, Any], memory: dict[str, Any]) -> None:
    size = SIZES[args.sizes]
    print(f"\nSizes '{args.sizes}': pairs {size.pair[0]}x{size.pair[1]}, crops {size.crop}x"
          f"{size.crop}, task input {size.task[0]}x{size.task[1]}, batch {size.batch} (one "
          f"image + its swapped copy); {args.threads} thread(s); medians of {args.repeats} "
          f"interleaved repetition(s) after {args.warmup} warm-up")
    head = (f"{'task':<13}{'step':<6}{'method':<10}{'wall':>8}{'CPU':>8}{'off/CPU':>8}"
            f"{'off/wall':>9}{'I/O':>7}{'peak':>9}{'peak/off':>9}")
    print(head)
    print("-" * len(head))
    for task in args.tasks:
        t = timing[task]["times"]
        for step in STEPS:
            off = t[f"official/{step}"]
            fw, fc = median(off["wall"]), median(off["cpu"])
            off_mem = memory.get((task, "official", step))
            for method in STEP_METHODS[step]:
                m = t[f"{method}/{step}"]
                w, c = median(m["wall"]), median(m["cpu"])
                mem = memory.get((task, method, step))
                peak = f"{mem['peak_gb']:>7.2f}GB" if mem else f"{'-':>9}"
                share = (f"{mem['peak_gb'] / off_mem['peak_gb']:>8.2f}x" if mem and off_mem
                         else f"{'-':>9}")
                io = f"{median(m['io']):>6.2f}s" if method == "official" else f"{'':>7}"
                print(f"{task:<13}{step:<6}{method:<10}{w:>7.2f}s{c:>7.2f}s{fc / c:>7.2f}x"
                      f"{fw / w:>8.2f}x{io}{peak}{share}")
    print("(meta = inner + outer update of G; learn = one F/T step. ours = closed-form "
          "meta-gradient (JVP of F, VJP of G), reference = double backward, official = the "
          "official code's way. off/CPU, off/wall: official time / this method's (the goal: "
          ">= 2.5x for ours in meta); I/O: the official T save + load inside its step; peak: "
          "ru_maxrss of a fresh process running one step; peak/off: this peak / the official "
          "one (the goal: <= 0.5x for ours in meta))")
    if memory:
        setup_gb = {task: max(v["setup_gb"] for k, v in memory.items() if k[0] == task)
                    for task in args.tasks}
        print("RSS after set-up (imports, networks, data), before any step: " + ", ".join(
            f"{task} {gb:.2f} GB" for task, gb in setup_gb.items()))
    print("Peak RSS of the timing process (all methods, one after the other): " + ", ".join(
        f"{task} {timing[task]['peak_gb']:.2f} GB" for task in args.tasks))
    print("\nSame numbers? Largest |method - official| over all repetitions, warm-up included:")
    for task in args.tasks:
        checks = timing[task]["checks"]
        learn = checks["ours/learn"]
        for method in ("ours", "reference"):
            meta = checks[f"{method}/meta"]
            print(f"  {task}, {method}: outer loss {meta[0]['outer_ours']:.6f} vs "
                  f"{meta[0]['outer_official']:.6f} (official), |diff| "
                  f"{max(c['outer_diff'] for c in meta):.2e}; inner L_f |diff| "
                  f"{max(c['fusion_diff'] for c in meta):.2e}, inner L_t |diff| "
                  f"{max(c['inner_task_diff'] for c in meta):.2e}; G gradients max |diff| "
                  f"{max(c['grad_diff'] for c in meta):.2e} (max |grad| "
                  f"{max(c['grad_max'] for c in meta):.2e})")
        print(f"  {task}, F/T step weights max |diff| F "
              f"{max(c['fusion_weight_diff'] for c in learn):.2e}, T "
              f"{max(c['task_weight_diff'] for c in learn):.2e}")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", choices=sorted(SIZES), default="default")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed repetitions first")
    parser.add_argument("--tasks", default=",".join(TASKS),
                        help="comma-separated: segmentation, detection")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: steadiest CPU times on a shared machine)")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the table: CPU seconds by stage and top operators of "
                        "one meta iteration each way")
    parser.add_argument("--top", type=int, default=15, help="operators shown by --profile")
    parser.add_argument("--min-free-gb", type=float, default=None,
                        help="refuse to start below this available memory (default: per size)")
    parser.add_argument("--child", choices=("time", "memory", "profile"), help=argparse.SUPPRESS)
    parser.add_argument("--task", choices=TASKS, help=argparse.SUPPRESS)
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if isinstance(args.tasks, str):
        args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = set(args.tasks) - set(TASKS)
    if unknown or not args.tasks:
        parser.error(f"--tasks: choose from {', '.join(TASKS)}")
    if args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be positive, --warmup non-negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    if args.child:
        run_child(args)
        return
    need = NEEDED_GB[args.sizes] if args.min_free_gb is None else args.min_free_gb
    free = available_gb()
    if free < need:
        raise SystemExit(f"only {free:.1f} GB available, the '{args.sizes}' runs need about "
                         f"{need:.0f} GB (--min-free-gb to override)")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{free:.1f} GB available; one child process at a time")
    print(f"uptime at the start: {uptime()}")
    if args.profile:
        for task in args.tasks:
            spawn(args, child="profile", task=task)
        return
    timing, memory = {}, {}
    for task in args.tasks:
        timing[task] = spawn(args, child="time", task=task)
        if not args.no_memory:
            for step in STEPS:
                for method in STEP_METHODS[step]:
                    memory[task, method, step] = spawn(
                        args, child="memory", task=task, method=method, step=step)
    report(args, timing, memory)
    print(f"uptime at the end: {uptime()}")


if __name__ == "__main__":
    main()
