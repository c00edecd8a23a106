"""The rules between the package's layers (ARCHITECTURE.md): the runtime, the metrics, the scene
generator, the bag tools and the node's parameters import neither torch nor rclpy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "ultralytics", "transformers", "rclpy")

# Every module of these subpackages, and these modules, must import without HEAVY.
LIGHT_PACKAGES = ("runtime", "metrics", "scenes", "bags")
LIGHT_MODULES = ("tdfusion_ros.ros.node_params", "tdfusion_ros.ros.ros_image",
                 "tdfusion_ros.tools.calibrate", "tdfusion_ros.paths")


def _modules(package: str) -> list[str]:
    root = REPO / "tdfusion_ros" / package
    names = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "__main__.py":
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("package", LIGHT_PACKAGES)
def test_subpackage_imports_no_torch_or_rclpy(package: str) -> None:
    modules = _modules(package) + (list(LIGHT_MODULES) if package == "runtime" else [])
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120, cwd=REPO)
