"""Estimate the thermal -> RGB homography and write it into a config file.

    python -m tdfusion_ros.calibrate --points corr.csv [--ransac 3] --config config/fusion.yaml
    python -m tdfusion_ros.calibrate --pair t1.png r1.png --pair t2.png r2.png [--points ...]

``--points``: a CSV (``thermal_x, thermal_y, rgb_x, rgb_y`` per row, header optional, ``#``
comments) or YAML file (a list of ``{thermal: [x, y], rgb: [x, y]}`` or of 4 numbers, either at
the top level or under ``points:``/``correspondences:``) of matching pixels; at least 4.
``--pair``: frame pairs for intensity alignment: ECC (``cv2.findTransformECC``) on
gradient-magnitude maps, coarse to fine, one estimate per pair, combined by the per-point
median (a pair whose content misleads ECC does not pull the result). With both, the points give
the starting guess and ECC refines it. The reprojection error on the points is printed.

``--config`` updates only the ``registration:`` section of a YAML file, in place as text, so
comments and all other keys stay as they were (the result is parsed back and checked); if the
file has no such section, one is added under its single ``ros__parameters:`` block or at the
top level; a missing file is created.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from tdfusion_ros.runtime.image_io import ImagePairError, read_image
from tdfusion_ros.runtime.registration import (
    RegistrationConfig,
    RegistrationError,
    project,
    scale_matrix,
    suggest_crop,
)

SECTION = "registration"


class CalibrationError(ValueError):
    """Bad input to the calibration (file, points, images) or a failed estimate."""


# --------------------------------------------------------------------------- correspondences
_COLUMNS = ("thermal_x", "thermal_y", "rgb_x", "rgb_y")


def _check_points(values: list[list[float]], where: str) -> tuple[np.ndarray, np.ndarray]:
    table = np.asarray(values, np.float64).reshape(-1, 4)
    if not np.all(np.isfinite(table)):
        raise CalibrationError(f"{where}: coordinates must be finite numbers")
    if len(table) < 4:
        raise CalibrationError(f"{where}: {len(table)} correspondence(s); a homography needs 4+")
    return table[:, :2].copy(), table[:, 2:].copy()


def _read_csv(path: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    rows = []
    order = list(range(4))
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for index, row in enumerate(csv.reader(io.StringIO("\n".join(lines)))):
        cells = [c.strip() for c in row if c.strip()]
        if index == 0 and cells and not _is_number(cells[0]):
            names = [c.lower() for c in cells]
            if sorted(names) != sorted(_COLUMNS):
                raise CalibrationError(
                    f"{path}: header {cells} must name the columns {', '.join(_COLUMNS)}"
                )
            order = [names.index(c) for c in _COLUMNS]
            continue
        if len(cells) != 4:
            raise CalibrationError(
                f"{path}: row {index + 1} ({','.join(row)!r}) has {len(cells)} values, "
                "expected 4: thermal_x, thermal_y, rgb_x, rgb_y"
            )
        try:
            rows.append([float(cells[i]) for i in order])
        except ValueError:
            raise CalibrationError(
                f"{path}: row {index + 1} ({','.join(row)!r}) is not numeric"
            ) from None
    return _check_points(rows, str(path))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_yaml(path: Path, text: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{path}: not valid YAML: {exc}") from None
    if isinstance(data, dict):
        for key in ("points", "correspondences"):
            if key in data:
                data = data[key]
                break
    if not isinstance(data, list):
        raise CalibrationError(
            f"{path}: expected a list of correspondences (or one under 'points:')"
        )
    rows = []
    for index, item in enumerate(data):
        where = f"{path}: entry {index + 1} ({item!r})"
        try:
            if isinstance(item, dict):
                values = [*item["thermal"], *item["rgb"]]
            else:
                values = list(item)
            if len(values) != 4:
                raise ValueError
            rows.append([float(v) for v in values])
        except (KeyError, TypeError, ValueError):
            raise CalibrationError(
                f"{where} must be {{thermal: [x, y], rgb: [x, y]}} or [tx, ty, rx, ry]"
            ) from None
    return _check_points(rows, str(path))


def read_correspondences(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(thermal N x 2, rgb N x 2) pixel coordinates from a CSV or YAML file."""
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"{path}: no such correspondence file")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() in (".yaml", ".yml"):
        return _read_yaml(path, text)
    return _read_csv(path, text)


def fit_homography(
    thermal: np.ndarray, rgb: np.ndarray, ransac_px: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares (or RANSAC) homography thermal -> RGB, and the inlier mask."""
    method, threshold = (cv2.RANSAC, float(ransac_px)) if ransac_px else (0, 3.0)
    try:
        matrix, mask = cv2.findHomography(thermal, rgb, method, threshold)
    except cv2.error as exc:
        raise CalibrationError(f"cv2.findHomography failed: {exc}") from None
    if matrix is None or abs(np.linalg.det(matrix)) < 1e-12:
        raise CalibrationError(
            "no homography fits these points (collinear or repeated points?)"
        )
    return matrix / matrix[2, 2], mask.ravel().astype(bool)


def reprojection_errors(matrix: np.ndarray, thermal: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """Distance in RGB pixels between each mapped thermal point and its RGB point."""
    return np.linalg.norm(project(matrix, thermal) - rgb, axis=1)


# --------------------------------------------------------------------------- ECC alignment
def edge_map(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Locally normalised gradient magnitude: edges both cameras see, at comparable strength.

    Thermal and visible intensities are unrelated (often inverted); their edges coincide. The
    local normalisation keeps strong visible texture from outweighing faint thermal edges.
    """
    grey = image if image.ndim == 2 else cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
    grey = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), sigma)
    magnitude = cv2.magnitude(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3),
                              cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    local = cv2.GaussianBlur(magnitude, (0, 0), 8.0)
    return magnitude / (local + 1e-3 * float(magnitude.mean()) + 1e-12)


def _shrink(image: np.ndarray, factor: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = image.shape[:2]
    size = (max(8, round(w / factor)), max(8, round(h / factor)))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA) if factor > 1 else image
    return small, scale_matrix(w, h, *size)


def ecc_homography(
    thermal: np.ndarray,
    rgb: np.ndarray,
    init: np.ndarray | None = None,
    levels: Sequence[int] = (4, 2, 1),
    iterations: int = 100,
    sigma: float = 1.0,
) -> tuple[np.ndarray, float]:
    """Refine a thermal -> RGB homography on one frame pair; returns (matrix, correlation).

    ECC finds W with thermal(W x) ~ rgb(x), i.e. RGB -> thermal; the result is its inverse.
    The coarsest level fits an affine warp when the start is affine (more robust), then the
    full homography.
    """
    th_h, th_w = thermal.shape[:2]
    if init is None:
        init = scale_matrix(th_w, th_h, rgb.shape[1], rgb.shape[0])
    init = np.asarray(init, np.float64) / init[2, 2]
    warp = np.linalg.inv(init)  # RGB -> thermal
    affine_start = bool(np.allclose(init[2, :2], 0))
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, int(iterations), 1e-6)
    score = float("nan")
    for i, factor in enumerate(levels):
        tmpl, s_tmpl = _shrink(rgb, factor)
        inp, s_inp = _shrink(thermal, factor)
        local = s_inp @ warp @ np.linalg.inv(s_tmpl)
        local /= local[2, 2]
        motion = cv2.MOTION_AFFINE if (i == 0 and affine_start) else cv2.MOTION_HOMOGRAPHY
        start = local[:2] if motion == cv2.MOTION_AFFINE else local
        try:
            score, found = cv2.findTransformECC(
                edge_map(tmpl, sigma), edge_map(inp, sigma), start.astype(np.float32), motion,
                criteria, None, 5)
        except cv2.error as exc:
            message = str(exc).strip().splitlines()[-1]
            raise CalibrationError(f"ECC did not converge at 1/{factor} scale: {message}") from None
        found = found.astype(np.float64)
        if found.shape[0] == 2:
            found = np.vstack([found, [0.0, 0.0, 1.0]])
        warp = np.linalg.inv(s_inp) @ found @ s_tmpl
    matrix = np.linalg.inv(warp)
    return matrix / matrix[2, 2], float(score)


def combine_homographies(
    matrices: Sequence[np.ndarray], thermal_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point median of several estimates over a grid; (matrix, mean deviation per input)."""
    w, h = thermal_size
    grid = np.stack(np.meshgrid(np.linspace(0, w - 1, 9), np.linspace(0, h - 1, 7)), -1)
    grid = grid.reshape(-1, 2)
    mapped = np.stack([project(m, grid) for m in matrices])
    median = np.median(mapped, axis=0)
    matrix, _ = cv2.findHomography(grid, median, 0)
    deviation = np.linalg.norm(mapped - project(matrix, grid)[None], axis=2).mean(axis=1)
    return matrix / matrix[2, 2], deviation


# --------------------------------------------------------------------------- config file
def _scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise CalibrationError(f"cannot write {value!r} as a registration value")
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    number = float(value)
    if not math.isfinite(number):
        raise CalibrationError(f"cannot write {number} as a registration value")
    text = repr(number)  # the shortest text that reads back as the same float
    mantissa, _, exponent = text.partition("e")
    if "." not in mantissa:
        mantissa += ".0"  # YAML 1.1 (PyYAML) reads 1e-06 as a string and 1 as an int
    return mantissa + (f"e{exponent}" if exponent else "")


def _flow(value: Any) -> str:
    if isinstance(value, (list, tuple, np.ndarray)):
        return "[" + ", ".join(_scalar(v) for v in np.asarray(value).ravel().tolist()) + "]"
    return _scalar(value)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _is_content(line: str) -> bool:
    stripped = line.strip()
    return bool(stripped) and not stripped.startswith("#")


def _block_end(lines: list[str], start: int, indent: int) -> int:
    """Index after the last line of the block whose key sits at ``indent``.

    The block holds more indented lines and, as YAML allows, ``- item`` lines at ``indent``.
    """
    end = start
    for i in range(start, len(lines)):
        if _is_content(lines[i]):
            line_indent = _indent(lines[i])
            sequence_item = line_indent == indent and lines[i].lstrip().startswith("-")
            if line_indent < indent or (line_indent == indent and not sequence_item):
                break
            end = i + 1
    return end


def _find_key(lines: list[str], key: str, lo: int = 0, hi: int | None = None,
              indent: int | None = None) -> list[int]:
    pattern = re.compile(r"^( *)" + re.escape(key) + r"\s*:(\s.*)?$")
    found = []
    for i in range(lo, len(lines) if hi is None else hi):
        match = pattern.match(lines[i].rstrip("\n"))
        if match and (indent is None or len(match.group(1)) == indent):
            found.append(i)
    return found


def _section_path(tree: Any, key: str, path: tuple = ()) -> tuple | None:
    if isinstance(tree, dict):
        if key in tree:
            return (*path, key)
        for k, v in tree.items():
            sub = _section_path(v, key, (*path, k))
            if sub is not None:
                return sub
    return None


def set_yaml_section(text: str, values: dict[str, Any], section: str = SECTION) -> str:
    """Return ``text`` with ``section``'s keys set to ``values``; everything else untouched."""
    try:
        before = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise CalibrationError(f"the config file is not valid YAML: {exc}") from None
    if before is None:
        before = {}
    if not isinstance(before, dict):
        raise CalibrationError("the config file's top level is not a mapping")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    headers = _find_key(lines, section)
    if len(headers) > 1:
        where = ", ".join(str(i + 1) for i in headers)
        raise CalibrationError(f"several '{section}:' sections (lines {where}); edit by hand")
    if headers:
        path = _section_path(before, section)
        old = (_get(before, path) if path else None) or {}
        if not isinstance(old, dict):
            raise CalibrationError(f"'{section}' in the config file is not a mapping")
        lines = _update_block(lines, headers[0], section, values, old)
    else:
        parents = _find_key(lines, "ros__parameters")
        if len(parents) > 1:
            raise CalibrationError(
                "several ros__parameters blocks; add a registration: section by hand"
            )
        if parents:
            top = parents[0]
            end = _block_end(lines, top + 1, _indent(lines[top]))
            children = [ln for ln in lines[top + 1:end] if _is_content(ln)]
            child = _indent(children[0]) if children else _indent(lines[top]) + 2
            path = (*_section_path(before, "ros__parameters"), section)
        else:
            end, child, path = len(lines), 0, (section,)
        block = [f"{' ' * child}{section}:\n"] + _render(values, child + 2, comment=True)
        lines[end:end] = block
    new_text = "".join(lines)
    _verify(before, new_text, path, values)
    return new_text


def _get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _render(values: dict[str, Any], indent: int, comment: bool) -> list[str]:
    out = []
    for key, value in values.items():
        if comment and key == "homography":
            out.append(f"{' ' * indent}# thermal -> RGB pixels, row-major 3x3 "
                       "(python -m tdfusion_ros.calibrate)\n")
        out.append(_entry(key, value, indent))
    return out


def _entry(key: str, value: Any, indent: int) -> str:
    """``key: [..]``; a 3x3 matrix as three rows of one flow list, for people to read."""
    flat = np.asarray(value).ravel().tolist() if isinstance(value, (list, tuple)) else None
    if key != "homography" or flat is None or len(flat) != 9:
        return f"{' ' * indent}{key}: {_flow(value)}\n"
    lead = f"{' ' * indent}{key}: ["
    rows = [", ".join(_scalar(v) for v in flat[i:i + 3]) for i in (0, 3, 6)]
    return lead + (",\n" + " " * len(lead)).join(rows) + "]\n"


def _update_block(lines: list[str], header: int, section: str, values: dict[str, Any],
                  old: dict[str, Any]) -> list[str]:
    indent = _indent(lines[header])
    inline = lines[header].split(":", 1)[1].split("#", 1)[0].strip()
    end = _block_end(lines, header + 1, indent)
    if inline and inline not in ("~", "null", "{}"):
        # a flow mapping on the header line: rewrite the section as a block
        merged = {**old, **values}
        lines[header:header + 1] = [f"{' ' * indent}{section}:\n"] + _render(
            merged, indent + 2, comment=False)
        return lines
    if inline:
        lines[header] = f"{' ' * indent}{section}:\n"
    children = [i for i in range(header + 1, end) if _is_content(lines[i])]
    child = _indent(lines[children[0]]) if children else indent + 2
    for key, value in values.items():
        rendered = _entry(key, value, child)
        found = _find_key(lines, key, header + 1, end, child)
        if found:
            start = found[0]
            stop = _block_end(lines, start + 1, child)
            stop = max(stop, start + 1)
            lines[start:stop] = [rendered]
            end -= stop - start - 1
        else:
            added = _render({key: value}, child, comment=True)
            lines[end:end] = added
            end += len(added)
    return lines


def _verify(before: dict, new_text: str, path: tuple, values: dict[str, Any]) -> None:
    try:
        after = yaml.safe_load(new_text)
    except yaml.YAMLError:
        after = None
    expected = yaml.safe_load(yaml.safe_dump(before))
    parent = expected
    for key in path[:-1]:
        if parent.get(key) is None:
            parent[key] = {}
        parent = parent[key]
    section = parent.get(path[-1]) or {}
    parent[path[-1]] = {**section, **yaml.safe_load(yaml.safe_dump(
        {k: np.asarray(v).tolist() for k, v in values.items()}))}
    if not _same(after, expected):
        raise CalibrationError(
            "could not update the config file safely; add this section by hand:\n"
            + "".join(_render(values, 2, comment=False))
        )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def update_config_file(path: str | Path, registration: RegistrationConfig) -> None:
    """Write ``registration`` into a YAML config file (created if missing), keeping the rest."""
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    new_text = set_yaml_section(text, registration.to_mapping())
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(new_text, encoding="utf-8")
    tmp.replace(path)


def read_registration(path: str | Path) -> RegistrationConfig:
    """The ``registration:`` section of a YAML config file (defaults when absent)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CalibrationError(f"{path}: cannot read config: {exc}") from None
    where = _section_path(data, SECTION)
    return RegistrationConfig.from_mapping(_get(data, where) if where else None)


# --------------------------------------------------------------------------- CLI
def _ints(text: str, count: int, name: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise CalibrationError(f"{name} needs {count} comma-separated integers, got {text!r}")
    return values


def _print_errors(label: str, errors: np.ndarray, inliers: np.ndarray | None = None) -> None:
    kept = errors if inliers is None else errors[inliers]
    extra = "" if inliers is None else f", {int(inliers.sum())}/{len(errors)} inliers"
    print(f"{label}: reprojection error RMS {math.sqrt(float(np.mean(kept ** 2))):.3f} px, "
          f"median {float(np.median(kept)):.3f} px, max {float(kept.max()):.3f} px{extra}")


def run(args: argparse.Namespace) -> RegistrationConfig:
    if not args.points and not args.pair:
        raise CalibrationError("give --points FILE and/or at least one --pair THERMAL RGB")
    matrix = None
    points = None
    if args.points:
        points = read_correspondences(args.points)
        matrix, inliers = fit_homography(*points, ransac_px=args.ransac)
        _print_errors("points", reprojection_errors(matrix, *points),
                      inliers if args.ransac else None)
    thermal_size = rgb_size = None
    if args.pair:
        estimates = []
        for thermal_path, rgb_path in args.pair:
            try:
                thermal, rgb = read_image(thermal_path), read_image(rgb_path)
            except ImagePairError as exc:
                raise CalibrationError(str(exc)) from None
            thermal_size = (thermal.shape[1], thermal.shape[0])
            rgb_size = (rgb.shape[1], rgb.shape[0])
            try:
                found, score = ecc_homography(thermal, rgb, init=matrix)
            except CalibrationError as exc:
                print(f"warning: {thermal_path} / {rgb_path}: {exc}; pair skipped",
                      file=sys.stderr)
                continue
            print(f"ECC {thermal_path} / {rgb_path}: edge correlation {score:.3f}")
            estimates.append(found)
        if not estimates:
            raise CalibrationError("ECC failed on every frame pair")
        matrix, deviation = combine_homographies(estimates, thermal_size)
        for (thermal_path, _), dev in zip(args.pair, deviation):
            flag = "  <- disagrees with the others" if dev > 3 else ""
            print(f"  {thermal_path}: {dev:.2f} px from the combined estimate{flag}")
        if points is not None:
            _print_errors("points after ECC", reprojection_errors(matrix, *points))
    if args.thermal_size:
        thermal_size = _ints(args.thermal_size, 2, "--thermal-size")
    if args.rgb_size:
        rgb_size = _ints(args.rgb_size, 2, "--rgb-size")
    crop = None
    if args.crop == "auto":
        if not (thermal_size and rgb_size):
            raise CalibrationError("--crop auto needs --pair images or --thermal-size/--rgb-size")
        crop = suggest_crop(matrix, thermal_size, rgb_size)
    elif args.crop and args.crop != "none":
        crop = _ints(args.crop, 4, "--crop")
    size = _ints(args.output_size, 2, "--output-size") if args.output_size else None
    config = RegistrationConfig(tuple(float(v) for v in matrix.ravel()), crop, size).validate()
    np.set_printoptions(suppress=True, precision=6)
    print("homography (thermal -> RGB pixels):")
    print(matrix)
    if crop:
        print(f"crop [x, y, w, h]: {list(crop)}")
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tdfusion_ros.calibrate",
        description="Estimate the thermal -> RGB homography and write it into a config file.",
    )
    parser.add_argument("--points", help="CSV or YAML file of thermal x,y -> rgb x,y pixels")
    parser.add_argument("--ransac", type=float, metavar="PX",
                        help="use RANSAC with this inlier threshold in pixels")
    parser.add_argument("--pair", nargs=2, action="append", metavar=("THERMAL", "RGB"),
                        help="a frame pair for ECC edge alignment (repeatable)")
    parser.add_argument("--config", help="YAML file whose 'registration:' section is updated")
    parser.add_argument("--crop", help="'auto' (largest region both see), 'none' or X,Y,W,H")
    parser.add_argument("--output-size", help="W,H of the fused output (default: crop size)")
    parser.add_argument("--thermal-size", help="W,H of thermal frames (for --crop auto)")
    parser.add_argument("--rgb-size", help="W,H of RGB frames (for --crop auto)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = run(args)
        if args.config:
            update_config_file(args.config, config)
            print(f"wrote the registration section of {args.config}")
        else:
            print("registration section (no --config given):")
            print(f"{SECTION}:")
            print("".join(_render(config.to_mapping(), 2, comment=False)), end="")
    except (CalibrationError, RegistrationError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
