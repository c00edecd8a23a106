"""Train F alone with the fixed-weight fusion loss (w = 1/2, the paper's ablation I) on
generated scenes, on the CPU, in a few minutes.

This makes the repository's default weights (``models/fusion_default.pt``) from our own code and
data, so the fuse command, the node and the demo work with nothing downloaded. It is not
TDFusion's task-driven training (``training/train.py``); it gives a sensible fusion to start from.

    python training/pretrain_fusion.py --out models/fusion_default.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tdfusion_ros.nets.checkpoints import save_network  # noqa: E402
from tdfusion_ros.nets.networks import FusionNet  # noqa: E402
from tdfusion_ros.runtime.colour import prepare_pair  # noqa: E402
from tdfusion_ros.runtime.image_io import to_unit_float  # noqa: E402
from tdfusion_ros.scenes import generate_scene  # noqa: E402
from training.fusion_loss import fusion_loss  # noqa: E402


def scene_batch(rng: np.random.Generator, batch: int, crop: int) -> tuple[torch.Tensor, ...]:
    """Random crops of freshly generated scenes, as (ir_y, vis_y) tensors in [0, 1]."""
    irs, viss = [], []
    for _ in range(batch):
        scene = generate_scene(int(rng.integers(2**31)), 240, 320)
        pair = prepare_pair(to_unit_float(scene.ir), to_unit_float(scene.vis))
        top, left = rng.integers(0, 240 - crop + 1), rng.integers(0, 320 - crop + 1)
        irs.append(pair.ir_y[top:top + crop, left:left + crop])
        viss.append(pair.vis_y[top:top + crop, left:left + crop])
    return (torch.from_numpy(np.stack(irs))[:, None], torch.from_numpy(np.stack(viss))[:, None])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="models/fusion_default.pt")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    net = FusionNet()
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, args.steps)
    start = time.time()
    for step in range(1, args.steps + 1):
        ir, vis = scene_batch(rng, args.batch, args.crop)
        loss = fusion_loss(net(ir, vis), ir, vis, weights=None).total
        if not torch.isfinite(loss):
            raise SystemExit(f"error: non-finite loss {loss.item()} at step {step}")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps} loss {loss.item():.5f} "
                  f"({time.time() - start:.0f} s)", flush=True)
    meta = {"trained_by": "training/pretrain_fusion.py", "loss": "fixed w=1/2 + gradient",
            "data": "tdfusion_ros.scenes generated scenes",
            **{k: v for k, v in vars(args).items() if k != "out"}}
    path = save_network(net, args.out, "fusion", meta=meta)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
