"""Parity gate: our F with the official checkpoint reproduces the official network's outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tdfusion_ros.nets.checkpoints import load_network
from tdfusion_ros.runtime.colour import prepare_pair
from tdfusion_ros.runtime.image_io import read_image, to_unit_float

# Where the inputs of each reference output live (see ../shared/data/SOURCES.md).
REFERENCE_INPUTS = {
    "00710N": ("refusion_official/test_cases/infrared", "refusion_official/test_cases/visible"),
    "00906N": ("refusion_official/test_cases/infrared", "refusion_official/test_cases/visible"),
    "00004N": ("det/ir", "det/vi"),
    "00055D": ("det/ir", "det/vi"),
    "00537D": ("det/ir", "det/vi"),
    "01023N": ("det/ir", "det/vi"),
    "TNO_05": ("fusion_eval/ir", "fusion_eval/vi"),
    "RoadScene_3": ("fusion_eval/ir", "fusion_eval/vi"),
}


def network_inputs(data: Path, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    ir_dir, vis_dir = REFERENCE_INPUTS[name]
    ir = to_unit_float(read_image(data / ir_dir / f"{name}.png"))
    vis = to_unit_float(read_image(data / vis_dir / f"{name}.png"))
    pair = prepare_pair(ir, vis)
    return (torch.from_numpy(pair.ir_y)[None, None], torch.from_numpy(pair.vis_y)[None, None])


@pytest.fixture(scope="module")
def official_fusion_net(official_ivif: Path) -> torch.nn.Module:
    return load_network(official_ivif, "fusion")


def test_reference_set_is_complete(shared_data: Path) -> None:
    on_disk = {p.stem for p in (shared_data / "refusion_official" / "reference").glob("*.npy")}
    assert on_disk == set(REFERENCE_INPUTS)


@pytest.mark.parametrize("name", sorted(REFERENCE_INPUTS))
def test_matches_official_output(shared_data: Path, official_fusion_net, name: str) -> None:
    ir, vis = network_inputs(shared_data, name)
    with torch.inference_mode():
        fused = official_fusion_net(ir, vis)[0, 0].numpy()
    reference = np.load(shared_data / "refusion_official" / "reference" / f"{name}.npy")
    assert fused.shape == reference.shape
    assert np.abs(fused - reference).max() <= 1e-4


@pytest.mark.parametrize("name", ["00710N", "RoadScene_3"])
def test_half_precision_close_to_float32(shared_data: Path, official_ivif: Path, name: str):
    ir, vis = network_inputs(shared_data, name)
    net = load_network(official_ivif, "fusion")
    with torch.inference_mode():
        full = net(ir, vis)
        half = net.half()(ir.half(), vis.half()).float()
    assert half.dtype == torch.float32
    assert (full - half).abs().max().item() <= 1e-2
