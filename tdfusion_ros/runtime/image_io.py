"""Reading image pairs from disk, with errors that name the file and the problem.

No torch here: the runtime node and the offline tools share this module.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class ImagePairError(ValueError):
    """An image pair that cannot be fused as given."""


def read_image(path: str | Path) -> np.ndarray:
    """Read an 8- or 16-bit grey or colour image (BGR order, alpha dropped)."""
    path = Path(path)
    if not path.is_file():
        raise ImagePairError(f"{path}: no such image file")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImagePairError(f"{path}: not a readable image (corrupt, truncated or unknown format)")
    if image.dtype not in (np.uint8, np.uint16):
        raise ImagePairError(f"{path}: unsupported pixel type {image.dtype}; expected 8 or 16 bit")
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or min(image.shape[:2]) == 0:
        raise ImagePairError(f"{path}: unsupported image shape {image.shape}")
    return np.ascontiguousarray(image)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Scale an 8- or 16-bit image to float32 in [0, 1] by the full range of its type."""
    scale = 255.0 if image.dtype == np.uint8 else 65535.0
    return image.astype(np.float32) / np.float32(scale)


def stretch_percentiles(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Map the [low, high] percentile range to [0, 1].

    16-bit radiometric thermal images use a few thousand counts of their 65535 range, so a
    full-range scaling would leave them almost black.
    """
    lo, hi = np.percentile(image, (low, high))
    if hi <= lo:
        return np.zeros(image.shape, np.float32)
    return np.clip((image.astype(np.float32) - lo) / np.float32(hi - lo), 0.0, 1.0)


def check_pair(ir: np.ndarray, vis: np.ndarray, ir_name: str, vis_name: str) -> None:
    """Refuse pairs that are not pixel-aligned: resizing here would hide a registration error."""
    if ir.shape[:2] != vis.shape[:2]:
        raise ImagePairError(
            f"size mismatch: infrared {ir_name} is {ir.shape[1]}x{ir.shape[0]} but visible "
            f"{vis_name} is {vis.shape[1]}x{vis.shape[0]} (WxH); the pair must be registered "
            "to the same pixel grid first"
        )
    if ir.dtype != vis.dtype:
        raise ImagePairError(
            f"bit depth mismatch: infrared {ir_name} is {ir.dtype} but visible {vis_name} is "
            f"{vis.dtype}; convert both to the same depth"
        )


@dataclass(frozen=True)
class PairPaths:
    name: str
    ir: Path
    vis: Path


def list_pairs(ir: str | Path, vis: str | Path) -> list[PairPaths]:
    """Pairs from two files, or from two folders of same-named images (names without suffix)."""
    ir, vis = Path(ir), Path(vis)
    if ir.is_file() and vis.is_file():
        return [PairPaths(ir.stem, ir, vis)]
    for path in (ir, vis):
        if not path.exists():
            raise ImagePairError(f"{path}: no such file or folder")
    if not (ir.is_dir() and vis.is_dir()):
        raise ImagePairError(f"give two files or two folders, not a file and a folder: {ir}, {vis}")

    def by_stem(folder: Path) -> dict[str, Path]:
        return {
            p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
        }

    ir_files, vis_files = by_stem(ir), by_stem(vis)
    unpaired = sorted(set(ir_files) ^ set(vis_files))
    if unpaired:
        shown = ", ".join(unpaired[:10]) + (" ..." if len(unpaired) > 10 else "")
        raise ImagePairError(
            f"{len(unpaired)} image(s) without a partner between {ir} and {vis}: {shown}"
        )
    if not ir_files:
        raise ImagePairError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {ir}")
    return [PairPaths(name, ir_files[name], vis_files[name]) for name in sorted(ir_files)]


def read_pairs(pairs: Sequence[PairPaths],
               refused: list[str]) -> Iterator[tuple[int, PairPaths, np.ndarray, np.ndarray]]:
    """(index from 1, pair, infrared, visible) for every pair that reads and is pixel-aligned.

    A pair that does not is reported on stderr as skipped and its name appended to ``refused``.
    """
    for index, pair in enumerate(pairs, 1):
        try:
            ir, vis = read_image(pair.ir), read_image(pair.vis)
            check_pair(ir, vis, str(pair.ir), str(pair.vis))
        except ImagePairError as err:
            print(f"skipped {pair.name}: {err}", file=sys.stderr)
            refused.append(pair.name)
            continue
        yield index, pair, ir, vis
