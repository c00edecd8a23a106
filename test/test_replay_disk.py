"""replay_eval on a full disk and into a read-only folder: a clear error naming the path, exit
status 1 (2 when refused before the replay starts), and never a report that looks complete.

The disk is real: a tmpfs of a few hundred kilobytes mounted for the test (root and mount
needed; as root, chmod 0555 does not stop writes, so the read-only folder is a tmpfs remounted
read-only, or, for another user, a folder chmod 0555). Where neither is possible the tests are
skipped with the reason. The bag and bundle are test_replay's: five pairs at 160x128, real ONNX
graphs.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from test.test_replay import det_bag, run_cli, tiny_bundle  # noqa: F401 - fixtures

REPORT = ("report.html", "summary.md", "summary.json")
PAGE = 4096


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"needs root and mount for a small tmpfs: {result.stderr.strip()}")


@contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("a full disk needs a small tmpfs, which needs root")
    path.mkdir(parents=True, exist_ok=True)
    _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _replay_args(bag: Path, bundle: Path, out: Path) -> list:
    return [bag, "--bundle", bundle, "--out", out, "--offset-from-bag", "--png",
            "--metrics-frames", "2"]


def _footprint(folder: Path) -> dict[str, int]:
    """Bytes each file of a replay takes on a tmpfs (whole pages)."""
    return {str(p.relative_to(folder)): -(-p.stat().st_size // PAGE) * PAGE
            for p in folder.rglob("*") if p.is_file()}


def _assert_no_report(out: Path) -> None:
    left = sorted(p.name for p in out.rglob("*"))
    assert not [n for n in REPORT if (out / n).exists()], left
    assert not [n for n in left if n.endswith(".tmp")], left
    if (out / "detections.json").exists():  # whole, or not there
        json.loads((out / "detections.json").read_text())


def test_a_full_disk_names_the_file_and_leaves_no_report(
        tmp_path: Path, det_bag: Path, tiny_bundle: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    whole = tmp_path / "whole"
    code, _, err = run_cli(_replay_args(det_bag, tiny_bundle, whole), capsys)
    assert code == 0, err
    sizes = _footprint(whole)
    report_bytes = sum(sizes[n] for n in REPORT)
    total = sum(sizes.values())
    # the disk fills while frames are written, then while the report is
    for size, where in ((total // 4, None), (total - report_bytes // 2, "report.html")):
        disk = tmp_path / f"disk{size}"
        with tmpfs(disk, size):
            out = disk / "out"
            code, _, err = run_cli(_replay_args(det_bag, tiny_bundle, out), capsys)
            assert code == 1, err
            line = err.strip().splitlines()[-1]
            assert line.startswith(f"error: cannot write {out}/"), line
            assert "the disk is full" in line and "no report was written" in line, line
            if where:
                assert f"{out / where}:" in line, line
            _assert_no_report(out)
    # the video alone (OpenCV's writer does not say when it fails): 24 kB for 26 kB of video
    with tmpfs(tmp_path / "video_disk", 24 * 1024) as disk:
        out = disk / "out"
        code, _, err = run_cli([det_bag, "--bundle", tiny_bundle, "--out", out, "--no-bag",
                                "--no-masks", "--samples", "0", "--metrics-frames", "0"], capsys)
        assert code == 1, err
        line = err.strip().splitlines()[-1]
        assert line.startswith(f"error: cannot write {out / 'fused.mp4'}: "), line
        assert "frames reached the file" in line and "the disk is full" in line, line
        _assert_no_report(out)


@contextmanager
def read_only_folder(path: Path) -> Iterator[Path]:
    """``path`` (created, empty) that this process cannot write into."""
    if os.geteuid() != 0:
        path.mkdir(parents=True)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    with tmpfs(path, 1 << 20):
        _mount("-o", "remount,ro", str(path))
        yield path


def test_a_read_only_folder_is_refused_before_the_replay_naming_it(
        tmp_path: Path, det_bag: Path, tiny_bundle: Path,  # noqa: F811
        capsys: pytest.CaptureFixture[str]) -> None:
    with read_only_folder(tmp_path / "ro") as folder:
        for out in (folder, folder / "new" / "out"):  # existing, or to be created
            code, _, err = run_cli(_replay_args(det_bag, tiny_bundle, out), capsys)
            assert code == 2, err
            line = err.strip().splitlines()[-1]
            assert line.startswith(f"error: cannot write {out}: "), line
            assert "choose another --out" in line and "nothing was written" in line, line
            assert not (folder / "new").exists()
        assert not [p for p in folder.rglob("*") if p.is_file()]
