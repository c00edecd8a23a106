"""Files that are either whole or absent: write a temporary file, flush it to disk, rename.

A process killed at any moment (``kill -9``, a power cut after the rename) leaves the target
either as it was before or as it is now, never half-written; at worst a ``NAME.tmp`` beside it,
which the next save overwrites. Used for every checkpoint the trainers write.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "save_torch"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], Any]) -> Path:
    """``write(f)`` into ``PATH.tmp``, flush and fsync it, then rename it onto ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def save_torch(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj, path)``, atomically."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
