"""The fuse command, run as a user runs it: a separate process on real pairs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from test.conftest import REPO


def run_fuse(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tdfusion_ros.fuse", "--device", "cpu", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.fixture()
def small_pairs(shared_data: Path, tmp_path: Path) -> tuple[Path, Path]:
    """Two real pairs, cropped small so the test stays fast (one grey-visible TNO pair)."""
    ir_dir, vis_dir = tmp_path / "ir", tmp_path / "vi"
    ir_dir.mkdir()
    vis_dir.mkdir()
    for name, sub in (("00055D", "det"), ("TNO_05", "fusion_eval")):
        for src, dst in (("ir", ir_dir), ("vi", vis_dir)):
            image = cv2.imread(str(shared_data / sub / src / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            cv2.imwrite(str(dst / f"{name}.png"), image[100:164, 200:280])
    return ir_dir, vis_dir


def test_folder_of_pairs_with_official_weights(small_pairs, official_ivif, tmp_path) -> None:
    ir_dir, vis_dir = small_pairs
    out = tmp_path / "out"
    result = run_fuse("--checkpoint", str(official_ivif), "--ir", str(ir_dir),
                      "--vis", str(vis_dir), "--out", str(out), "--raw")
    assert result.returncode == 0, result.stderr
    colour = cv2.imread(str(out / "colour" / "00055D.png"), cv2.IMREAD_UNCHANGED)
    assert colour.shape == (64, 80, 3)
    assert cv2.imread(str(out / "colour" / "TNO_05.png"), cv2.IMREAD_UNCHANGED).ndim == 2
    raw = np.load(out / "grey" / "00055D.npy")
    assert raw.dtype == np.float32 and raw.shape == (64, 80)
    grey = cv2.imread(str(out / "grey" / "00055D.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(grey, np.rint(raw * 255).astype(np.uint8))


def test_sixteen_bit_inputs(small_pairs, official_ivif, tmp_path) -> None:
    ir_dir, vis_dir = small_pairs
    ir8 = cv2.imread(str(ir_dir / "00055D.png"), cv2.IMREAD_UNCHANGED)
    vis8 = cv2.imread(str(vis_dir / "00055D.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(tmp_path / "ir16.png"), ir8.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "vis16.png"), vis8.astype(np.uint16) * 257)
    out16, out8 = tmp_path / "o16", tmp_path / "o8"
    for ir, vis, out in ((tmp_path / "ir16.png", tmp_path / "vis16.png", out16),
                         (ir_dir / "00055D.png", vis_dir / "00055D.png", out8)):
        result = run_fuse("--checkpoint", str(official_ivif), "--ir", str(ir), "--vis", str(vis),
                          "--out", str(out), "--raw")
        assert result.returncode == 0, result.stderr
    # x * 257 / 65535 == x / 255: the same fused output
    np.testing.assert_allclose(np.load(out16 / "grey" / "ir16.npy"),
                               np.load(out8 / "grey" / "00055D.npy"), atol=1e-5)


def test_mismatched_pair_is_refused_and_the_rest_fused(small_pairs, official_ivif, tmp_path):
    ir_dir, vis_dir = small_pairs
    vis = cv2.imread(str(vis_dir / "TNO_05.png"), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(vis_dir / "TNO_05.png"), vis[:, :40])
    out = tmp_path / "out"
    result = run_fuse("--checkpoint", str(official_ivif), "--ir", str(ir_dir),
                      "--vis", str(vis_dir), "--out", str(out))
    assert result.returncode == 1
    assert "size mismatch: infrared" in result.stderr and "80x64" in result.stderr
    assert "40x64" in result.stderr
    assert (out / "colour" / "00055D.png").is_file()
    assert not (out / "colour" / "TNO_05.png").exists()


def test_unpaired_names_and_bad_checkpoint(small_pairs, tmp_path) -> None:
    ir_dir, vis_dir = small_pairs
    (vis_dir / "TNO_05.png").rename(vis_dir / "TNO_06.png")
    result = run_fuse("--ir", str(ir_dir), "--vis", str(vis_dir), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "without a partner" in result.stderr and "TNO_06" in result.stderr
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    result = run_fuse("--checkpoint", str(bad), "--ir", str(ir_dir / "00055D.png"),
                      "--vis", str(vis_dir / "00055D.png"), "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert "bad.pth: not a readable PyTorch checkpoint" in result.stderr
