"""`colcon build` of the ament_python package tdfusion_ros, as a ROS user would build it.

Real colcon (colcon-core + colcon-ros from requirements/dev.txt) builds the repo into a pytest tmp
folder: build, install and log bases there, and a private COLCON_HOME so a user's
~/.colcon/defaults.yaml cannot change the command. Discovery is cheap: `--base-paths <repo>`
identifies the repo root itself as a package (it holds package.xml), and colcon's recursive crawl
stops at a package, so .venv, ../shared and interfaces/ are never walked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "tdfusion_ros"


def _colcon() -> list[str]:
    script = Path(sys.executable).parent / "colcon"
    if script.is_file():
        return [str(script)]
    found = shutil.which("colcon")
    assert found, "colcon not found: install requirements/dev.txt (colcon-common-extensions)"
    return [found]


def test_colcon_build_installs_the_package(tmp_path: Path) -> None:
    env = dict(os.environ)
    env["COLCON_HOME"] = str(tmp_path / "colcon_home")
    env.pop("COLCON_DEFAULTS_FILE", None)
    build, install, log = tmp_path / "build", tmp_path / "install", tmp_path / "log"
    cmd = [
        *_colcon(),
        "--log-base",
        str(log),
        "build",
        "--base-paths",
        str(REPO),
        "--packages-select",
        PACKAGE,
        "--build-base",
        str(build),
        "--install-base",
        str(install),
        "--event-handlers",
        "console_cohesion+",
        "summary+",
    ]
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    output = f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
    assert proc.returncode == 0, output
    assert "1 package finished" in proc.stdout, output

    prefix = install / PACKAGE
    package_xml = prefix / "share" / PACKAGE / "package.xml"
    assert package_xml.is_file(), output
    assert package_xml.read_text() == (REPO / "package.xml").read_text()
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / PACKAGE).is_file()
    fuse = prefix / "lib" / PACKAGE / "fuse"
    assert fuse.is_file() and os.access(fuse, os.X_OK), output

    # The installed console script runs, from the installed copy of the package.
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(prefix)}))
    site = purelib if purelib.is_dir() else next(prefix.glob("lib/python3*/site-packages"))
    assert (site / PACKAGE / "__init__.py").is_file()
    run_env = dict(env, PYTHONPATH=str(site))
    where = subprocess.run(
        [sys.executable, "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)"],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert Path(where.stdout.strip()).resolve().is_relative_to(site.resolve()), where.stdout
    helped = subprocess.run(
        [str(fuse), "--help"],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "--checkpoint" in helped.stdout
    share = prefix / "share" / PACKAGE
    assert helped.stdout.startswith(f"usage: ros2 run {PACKAGE} fuse "), helped.stdout
    assert str(share / "models" / "fusion_default.pt") in "".join(helped.stdout.split())
    for script in ("bag_builder", "replay_eval"):
        usage = subprocess.run([str(prefix / "lib" / PACKAGE / script), "--help"], cwd=tmp_path,
                               env=run_env, capture_output=True, text=True, timeout=300,
                               check=False)
        assert usage.stdout.startswith(f"usage: ros2 run {PACKAGE} {script} "), usage.stdout

    # The installed copy finds its own files: through the ament index when the install is
    # on AMENT_PREFIX_PATH, else next to itself; never in site-packages.
    for ament in (str(prefix), ""):
        found = subprocess.run(
            [sys.executable, "-c", "from tdfusion_ros.ros import node_params as p; "
             "print(p.default_config_path()); print(p.default_bundle_path())"],
            cwd=tmp_path, env=dict(run_env, AMENT_PREFIX_PATH=ament), capture_output=True,
            text=True, timeout=300, check=True)
        assert found.stdout.split() == [str(share / "config" / "fusion.yaml"),
                                        str(share / "models" / "default")], found.stdout

    # ... and the installed fuse fuses with its default checkpoint (no --checkpoint).
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for name in ("ir", "vis"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), rng.integers(0, 256, (24, 32), np.uint8))
    fused = subprocess.run(
        [str(fuse), "--ir", str(tmp_path / "ir.png"), "--vis", str(tmp_path / "vis.png"),
         "--out", str(tmp_path / "fused"), "--device", "cpu"],
        cwd=tmp_path, env=dict(run_env, AMENT_PREFIX_PATH=str(prefix)), capture_output=True,
        text=True, timeout=300, check=False)
    assert fused.returncode == 0, fused.stdout + fused.stderr
    assert (tmp_path / "fused" / "grey" / "ir.png").is_file(), fused.stdout  # named by --ir

    # `colcon test` runs pytest (setup.py's test extra), not unittest: a pytest-only module
    # and the launch_testing one (skipped where launch_testing is missing) pass through it.
    tested = subprocess.run(
        [*_colcon(), "--log-base", str(log), "test", "--base-paths", str(REPO),
         "--packages-select", PACKAGE, "--build-base", str(build), "--install-base",
         str(install), "--event-handlers", "console_cohesion+", "--pytest-args",
         "test/test_launch.py", "test/test_thermal_gain.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = f"{tested.stdout}\n{tested.stderr}"
    assert tested.returncode == 0, output
    report = (build / PACKAGE / "pytest.xml").read_text()
    assert 'name="test_fixed_range_maps_exactly"' in report, report
    assert "launch_testing" in report or "test_fuses_and_reports" in report, report
    results = subprocess.run(
        [*_colcon(), "test-result", "--test-result-base", str(build), "--all"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert results.returncode == 0, results.stdout + results.stderr + output
    assert " 0 errors, 0 failures" in results.stdout, results.stdout


# Python modules that are ROS packages but not installed in this venv (a real ROS install has
# them); the rest are found in the ament index of AMENT_PREFIX_PATH.
ROS_ONLY_ON_A_ROS_INSTALL = {"launch", "launch_ros", "launch_testing", "launch_testing_ros",
                             "message_filters"}
# Third-party modules the runtime imports -> their rosdep keys (None: no key; README says how).
PYTHON_KEYS = {"numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml",
               "onnxruntime": "python3-onnxruntime-pip", "rosbags": None, "pycocotools": None}


def _imported_modules(files: list[Path]) -> set[str]:
    import ast

    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module.split(".")[0])
    return names


def test_package_xml_declares_what_the_code_imports() -> None:
    """Every ROS package the runtime imports is an exec_depend, every test_depend is used
    by a test, and a package that ships launch files depends on ros2launch."""
    import xml.etree.ElementTree as ET

    from ament_index_python.packages import get_packages_with_prefixes

    root = ET.parse(REPO / "package.xml").getroot()
    exec_deps = {e.text for e in root.findall("exec_depend")}
    test_deps = {e.text for e in root.findall("test_depend")}
    ros_packages = set(get_packages_with_prefixes()) | ROS_ONLY_ON_A_ROS_INSTALL
    runtime = sorted((REPO / "tdfusion_ros").rglob("*.py")) + sorted(
        (REPO / "launch").glob("*.py"))
    imported = _imported_modules(runtime)
    missing = sorted((imported & ros_packages) - exec_deps)
    assert not missing, f"imported but not declared in package.xml: {missing}"
    for module, key in PYTHON_KEYS.items():
        assert module in imported, f"{module} is no longer imported: update PYTHON_KEYS"
        if key is not None:
            assert key in exec_deps, f"{module}: exec_depend {key} missing"
    assert list((REPO / "launch").glob("*.launch.py")) and "ros2launch" in exec_deps
    tests = _imported_modules(sorted((REPO / "test").glob("*.py")))
    unused = sorted(d for d in test_deps if d != "python3-pytest" and d not in tests)
    assert not unused, f"test_depend(s) no test uses: {unused}"
    unused_exec = sorted(d for d in exec_deps & ros_packages
                         if d not in imported and d not in {"ros2launch", "std_msgs",
                                                            "lifecycle_msgs"})
    assert not unused_exec, f"exec_depend(s) nothing imports: {unused_exec}"


def _pytest(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_pinned_pytest_accepts_launch_testings_legacy_hooks(tmp_path: Path) -> None:
    """launch_testing's pytest plugin (Humble to Kilted releases) implements collection hooks
    with the legacy ``path`` argument; a pytest that rejects them cannot run launch tests."""
    (tmp_path / "legacy_plugin.py").write_text(
        "def pytest_pycollect_makemodule(path, parent):\n    return None\n")
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert True\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    proc = _pytest(["-p", "legacy_plugin", "-W", "ignore", "test_one.py"], tmp_path, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout


def test_tests_needing_training_packages_skip_where_they_are_missing(tmp_path: Path) -> None:
    """On a robot (rosdep's runtime only) `colcon test` skips the modules that need torch,
    saying so; CI, where everything must be installed, still fails."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path / 'fake'}{os.pathsep}{REPO}")
    env.pop("CI", None)
    proc = _pytest(["-rs", "test/test_networks.py", "test/test_thermal_gain.py"], REPO, env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 skipped" in proc.stdout and "needs 'torch'" in proc.stdout, proc.stdout
    proc = _pytest(["test/test_networks.py"], REPO, dict(env, CI="true"))
    assert proc.returncode != 0 and "No module named 'torch'" in proc.stdout, proc.stdout
