"""Loading and saving F and G weights: the official files as published, and our own format.

Official TDFusion/ReFusion files are plain state_dicts whose convolutions (``MetaConv2d``) are
stored twice, as ``X.weight`` and ``X.conv.weight``. Our format is a small dict with the kind
of network, a format version and a clean state_dict. Both load with ``weights_only=True``: a
checkpoint is data, never code.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from tdfusion_ros.nets.networks import FusionNet, LossGenerationNet

FORMAT = "tdfusion_ros"
FORMAT_VERSION = 1
NetworkKind = Literal["fusion", "loss_generation"]
NETWORKS: dict[str, type[nn.Module]] = {"fusion": FusionNet, "loss_generation": LossGenerationNet}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the file named in the message."""


def read_checkpoint(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or "
                                  "corrupt (unpickling failed)") from err
        raise CheckpointError(
            f"{path}: refused to load: it holds Python objects other than tensors and plain "
            f"containers (found {found.group(1)}), which could run code when unpickled; "
            "save a plain state_dict"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint, truncated or "
                              f"corrupt ({type(err).__name__}: {err})") from err


def clean_official_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ``X.conv.weight`` duplicates of official MetaConv2d layers.

    The official forward pass uses ``X.weight``; a file holding only ``X.conv.weight`` is
    renamed to it.
    """
    clean: dict[str, Tensor] = {}
    for key, value in state.items():
        if key.endswith(".conv.weight"):
            outer = key[: -len(".conv.weight")] + ".weight"
            if outer in state:
                continue
            key = outer
        clean[key] = value
    return clean


def _state_dict_of(payload: Any, path: Path, kind: NetworkKind) -> dict[str, Tensor]:
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"{path}: format version {payload.get('version')} is not "
                                  f"supported (this code reads version {FORMAT_VERSION})")
        if payload.get("network") != kind:
            raise CheckpointError(f"{path}: holds a '{payload.get('network')}' network, "
                                  f"expected '{kind}'")
        state = payload.get("state_dict")
    else:
        state = payload
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{path}: not a state_dict (expected a mapping of parameter "
                              f"names to tensors, found {type(state).__name__})")
    return clean_official_state_dict(state)


def check_architecture(state: dict[str, Tensor], model: nn.Module, path: Path) -> None:
    """Name the missing, unexpected and mis-shaped keys instead of a bare load error."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mis_shaped = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if not (missing or unexpected or mis_shaped):
        return

    def show(keys: list[str]) -> str:
        return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {show(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {show(unexpected)}")
    if mis_shaped:
        detail = [f"{k} {found[k]} vs {expected[k]}" for k in mis_shaped]
        parts.append(f"{len(mis_shaped)} of the wrong shape: {show(detail)}")
    raise CheckpointError(f"{path}: does not fit {type(model).__name__} "
                          f"({'; '.join(parts)})")


def load_network(path: str | Path, kind: NetworkKind = "fusion") -> nn.Module:
    """Build F or G and fill it from an official or our own checkpoint (on the CPU, float32)."""
    path = Path(path)
    model = NETWORKS[kind]()
    state = _state_dict_of(read_checkpoint(path), path, kind)
    check_architecture(state, model, path)
    model.load_state_dict({k: v.float() for k, v in state.items()})
    return model.eval()


def save_network(
    model: nn.Module, path: str | Path, kind: NetworkKind, meta: dict[str, Any] | None = None
) -> Path:
    """Write our format atomically, so an interrupted save never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "network": kind,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "meta": meta or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path
