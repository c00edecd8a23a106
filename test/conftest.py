"""Shared fixtures: the real data in ../shared/data, used by path and never copied."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TDFUSION_SHARED_DATA", REPO.parent / "shared" / "data"))
OFFICIAL_IVIF = SHARED_DATA / "refusion_official" / "models" / "ReFusion_IVIF.pth"

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


# Modules of requirements/training.txt (and onnx, which builds the tests' tiny bundles) that a
# ROS workspace installed by rosdep does not have. A test module that cannot import one is
# reported as skipped, naming it, so `colcon test` on a robot runs the rest; in CI their
# absence stays an error.
DEV_ONLY_MODULES = ("torch", "torchvision", "ultralytics", "transformers", "onnx", "sewar",
                    "skimage", "scipy", "tensorboard", "tqdm")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if not report.failed or os.environ.get("CI") or not isinstance(collector, pytest.Module):
        return
    text = str(report.longrepr)
    for name in DEV_ONLY_MODULES:
        if f"No module named '{name}'" in text:
            report.outcome = "skipped"
            report.longrepr = (str(collector.path), 0,
                               f"Skipped: needs '{name}' (requirements/training.txt), "
                               "not installed here")
            return


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real pairs; in CI their absence is a failure, elsewhere a skip."""
    if not SHARED_DATA.is_dir():
        message = f"real data folder {SHARED_DATA} not found (set TDFUSION_SHARED_DATA)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return SHARED_DATA


@pytest.fixture(scope="session")
def official_ivif(shared_data: Path) -> Path:
    return shared_data / "refusion_official" / "models" / "ReFusion_IVIF.pth"
