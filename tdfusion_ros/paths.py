"""Where the package's own data files (models, config, launch) are, installed or not.

``setup.py`` installs them under ``<prefix>/share/tdfusion_ros/`` while the Python package
goes to ``<prefix>/lib/pythonX.Y/site-packages/``, so a path relative to ``__file__`` only
works in a source checkout. The lookup order:

1. the source checkout this module runs from (it holds ``package.xml``), so that a developer
   running from the repository, or a ``colcon build --symlink-install``, sees the files they
   edit;
2. the ament index (``get_package_share_directory``), i.e. a sourced colcon install;
3. the install prefix this module sits in (``<prefix>/share/tdfusion_ros``), for an installed
   console script run without sourcing ``setup.bash``.

ROS-free: ``ament_index_python`` is optional, and nothing here imports rclpy.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = "tdfusion_ros"
_MODULE_ROOT = Path(__file__).resolve().parents[1]  # the folder that holds tdfusion_ros/


def source_root() -> Path | None:
    """The repository this module runs from, or None when it runs from an install."""
    return _MODULE_ROOT if (_MODULE_ROOT / "package.xml").is_file() else None


def _ament_share() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # noqa: BLE001 - not installed, or AMENT_PREFIX_PATH unset
        return None


def _prefix_share() -> Path | None:
    """``<prefix>/share/tdfusion_ros`` for ``<prefix>/lib/pythonX.Y/site-packages``."""
    for parent in _MODULE_ROOT.parents:
        share = parent / "share" / PACKAGE
        if (share / "package.xml").is_file():
            return share
        if parent.name == "lib":  # <prefix>/lib: the prefix is next; stop after it
            share = parent.parent / "share" / PACKAGE
            return share if (share / "package.xml").is_file() else None
    return None


def candidates(relative: str) -> list[Path]:
    """Every place ``relative`` is looked for, in order."""
    roots = [source_root(), _ament_share(), _prefix_share()]
    seen: list[Path] = []
    for root in roots:
        if root is not None and root / relative not in seen:
            seen.append(root / relative)
    return seen


def package_file(relative: str) -> Path:
    """The first existing ``relative`` (e.g. ``models/default``) of the package.

    When none exists, the first candidate (or the source-tree path) is returned, so the
    caller's "no such file" message names a real place; :func:`require` raises instead.
    """
    found = candidates(relative)
    for path in found:
        if path.exists():
            return path
    return found[0] if found else _MODULE_ROOT / relative


def require(relative: str) -> Path:
    """Like :func:`package_file`, but FileNotFoundError naming every place looked in."""
    found = candidates(relative)
    for path in found:
        if path.exists():
            return path
    where = ", ".join(str(p) for p in found) or str(_MODULE_ROOT / relative)
    raise FileNotFoundError(
        f"{relative} of package {PACKAGE} not found (looked in {where}); source the "
        "workspace's install/setup.bash or run from the repository")


def program_name(module: str) -> str:
    """The program name for ``--help`` and usage lines, as the user started it.

    An installed console script sits in ``<prefix>/lib/tdfusion_ros/<name>`` (setup.cfg's
    script_dir), which is what ``ros2 run tdfusion_ros <name>`` runs; ``python -m module``
    leaves the module's file in ``argv[0]``.
    """
    import sys

    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    name = argv0.name
    if not name or name in ("-c", "-m", "__main__.py") or name.endswith(".py"):
        return f"python -m {module}"
    if argv0.parent.name == PACKAGE and argv0.parent.parent.name == "lib":
        return f"ros2 run {PACKAGE} {name}"
    return name
