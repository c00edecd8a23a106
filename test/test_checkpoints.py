"""Checkpoint loading: official files, our format, and files that must be refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tdfusion_ros.nets.checkpoints import CheckpointError, load_network, save_network
from tdfusion_ros.nets.networks import FusionNet, LossGenerationNet


def test_official_file_loads_both_duplicate_keys_consistently(official_ivif: Path) -> None:
    raw = torch.load(official_ivif, map_location="cpu", weights_only=True)
    net = load_network(official_ivif, "fusion")
    assert torch.equal(net.project_in_1.weight, raw["project_in_1.weight"])
    assert torch.equal(net.FM.project_E.weight, raw["FM.project_E.conv.weight"])


def test_file_with_only_inner_conv_keys_loads(official_ivif: Path, tmp_path: Path) -> None:
    raw = torch.load(official_ivif, map_location="cpu", weights_only=True)
    inner_only = {
        k: v for k, v in raw.items()
        if k.endswith(".conv.weight") or f"{k[:-len('.weight')]}.conv.weight" not in raw
    }
    torch.save(inner_only, tmp_path / "inner.pth")
    net = load_network(tmp_path / "inner.pth", "fusion")
    assert torch.equal(net.decoder[1].ffn.dwconv.weight, raw["decoder.1.ffn.dwconv.weight"])


@pytest.mark.parametrize(
    "kind, cls", [("fusion", FusionNet), ("loss_generation", LossGenerationNet)]
)
def test_our_format_round_trips(tmp_path: Path, kind: str, cls: type) -> None:
    torch.manual_seed(3)
    net = cls()
    path = save_network(net, tmp_path / "net.pt", kind, meta={"epoch": 4})
    loaded = load_network(path, kind)
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert not (tmp_path / "net.pt.tmp").exists()


def test_wrong_network_kind_is_named(tmp_path: Path) -> None:
    path = save_network(LossGenerationNet(), tmp_path / "g.pt", "loss_generation")
    with pytest.raises(CheckpointError, match=r"g\.pt.*'loss_generation'.*expected 'fusion'"):
        load_network(path, "fusion")


def test_wrong_architecture_lists_the_keys(official_ivif: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        load_network(official_ivif, "loss_generation")
    message = str(err.value)
    assert "ReFusion_IVIF.pth" in message
    assert "missing: prelu.weight" in message
    assert "project_out_1.weight (1, 16, 3, 3) vs (2, 16, 3, 3)" in message


def test_truncated_file_is_refused(official_ivif: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(official_ivif.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: not a readable"):
        load_network(truncated)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickle_with_code_is_refused_without_running_it(tmp_path: Path, capfd) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"project_in_1.weight": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to load.*print"):
        load_network(path)
    assert "this must never run" not in capfd.readouterr().out


def test_non_state_dict_and_missing_file(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "notes.pt")
    with pytest.raises(CheckpointError, match=r"notes\.pt: not a state_dict"):
        load_network(tmp_path / "notes.pt")
    with pytest.raises(CheckpointError, match=r"absent\.pt: checkpoint file not found"):
        load_network(tmp_path / "absent.pt")
