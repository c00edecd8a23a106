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
        cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
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
        timeout=60,
        check=True,
    )
    assert Path(where.stdout.strip()).resolve().is_relative_to(site.resolve()), where.stdout
    helped = subprocess.run(
        [str(fuse), "--help"],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0, helped.stderr
    assert "--checkpoint" in helped.stdout
