"""Fuse infrared/visible image pairs from files with a PyTorch checkpoint of F.

    python -m tdfusion_ros.fuse --ir IR --vis VIS --out DIR [--checkpoint PATH] [--raw]

IR and VIS are two image files or two folders of same-named images. For each pair it writes
``DIR/colour/<name>.png`` (fused Y with the visible chroma), ``DIR/grey/<name>.png`` and, with
``--raw``, the network's float32 output as ``DIR/grey/<name>.npy``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from tdfusion_ros import paths
from tdfusion_ros.nets.checkpoints import CheckpointError, load_network
from tdfusion_ros.runtime.colour import prepare_pair, restore_colour, to_uint8
from tdfusion_ros.runtime.image_io import (
    ImagePairError,
    list_pairs,
    read_pairs,
    stretch_percentiles,
    to_unit_float,
)

# Installed by setup.py under share/tdfusion_ros/models, not next to this module.
DEFAULT_CHECKPOINT_NAME = "models/fusion_default.pt"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but PyTorch sees no CUDA GPU")
    return torch.device(name)


class TorchFuser:
    """F loaded from a checkpoint, applied to one pair of float Y planes at a time."""

    def __init__(self, checkpoint: str | Path, device: str = "cpu", half: bool = False) -> None:
        self.device = pick_device(device)
        self.dtype = torch.float16 if half else torch.float32
        self.net = load_network(checkpoint, "fusion").to(self.device, self.dtype)

    @torch.inference_mode()
    def __call__(self, ir_y: np.ndarray, vis_y: np.ndarray) -> np.ndarray:
        def tensor(plane: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(plane)[None, None].to(self.device, self.dtype)

        return self.net(tensor(ir_y), tensor(vis_y))[0, 0].float().cpu().numpy()


@dataclass(frozen=True)
class FusedPair:
    raw: np.ndarray  # float32 (H, W) network output in (0, 1)
    grey: np.ndarray  # uint8 (H, W)
    colour: np.ndarray  # uint8 (H, W, 3) BGR, or (H, W) when neither source has colour


def load_unit_float(image: np.ndarray, stretch16: bool) -> np.ndarray:
    if image.dtype == np.uint16 and stretch16:
        return stretch_percentiles(image)
    return to_unit_float(image)


def fuse_images(fuser: TorchFuser, ir: np.ndarray, vis: np.ndarray,
                stretch16: bool = False) -> FusedPair:
    """Fuse one pair of 8- or 16-bit images (grey or BGR) of the same size."""
    pair = prepare_pair(load_unit_float(ir, stretch16), load_unit_float(vis, stretch16))
    raw = fuser(pair.ir_y, pair.vis_y)
    return FusedPair(raw=raw, grey=to_uint8(raw), colour=restore_colour(raw, pair.chroma))


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: could not write image")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=paths.program_name("tdfusion_ros.fuse"),
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ir", required=True, help="infrared image file or folder")
    parser.add_argument("--vis", required=True, help="visible image file or folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--checkpoint", default=None,
                        help="F weights: an official TDFusion/ReFusion .pth or ours "
                             f"(default: the package's {DEFAULT_CHECKPOINT_NAME}, here "
                             f"{paths.package_file(DEFAULT_CHECKPOINT_NAME)})")
    parser.add_argument("--raw", action="store_true", help="also save the float32 output (.npy)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--half", action="store_true", help="run F in float16")
    parser.add_argument("--stretch16", action="store_true",
                        help="map 16-bit inputs by their 1st-99th percentiles instead of the "
                             "full 0-65535 range (for radiometric thermal images)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        pairs = list_pairs(args.ir, args.vis)
        checkpoint = args.checkpoint or paths.require(DEFAULT_CHECKPOINT_NAME)
        fuser = TorchFuser(checkpoint, args.device, args.half)
    except (ImagePairError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    failed = []
    for index, pair, ir, vis in read_pairs(pairs, failed):
        fused = fuse_images(fuser, ir, vis, args.stretch16)
        write_png(out / "colour" / f"{pair.name}.png", fused.colour)
        write_png(out / "grey" / f"{pair.name}.png", fused.grey)
        if args.raw:
            np.save(out / "grey" / f"{pair.name}.npy", fused.raw)
        print(f"[{index}/{len(pairs)}] {pair.name} {ir.shape[1]}x{ir.shape[0]}", flush=True)
    print(f"wrote {len(pairs) - len(failed)} fused pair(s) to {out}")
    if failed:
        print(f"error: {len(failed)} pair(s) refused: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
