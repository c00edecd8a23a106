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
