"""Registration (homography, crop, output size) and the calibration CLI that estimates it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from tdfusion_ros.runtime.registration import (
    Registration,
    RegistrationConfig,
    RegistrationError,
    project,
    suggest_crop,
)
from tdfusion_ros.tools.calibrate import (
    CalibrationError,
    combine_homographies,
    ecc_homography,
    fit_homography,
    main,
    read_correspondences,
    read_registration,
    reprojection_errors,
    set_yaml_section,
    update_config_file,
)

REPO = Path(__file__).resolve().parents[1]


def rig_homography(rot_deg: float, scale: float, tx: float, ty: float, persp: float = 0.0):
    c, s = np.cos(np.radians(rot_deg)), np.sin(np.radians(rot_deg))
    return np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty], [persp, -persp, 1]])


def grid(width: int, height: int) -> np.ndarray:
    return np.stack(np.meshgrid(np.linspace(0, width - 1, 9),
                                np.linspace(0, height - 1, 7)), -1).reshape(-1, 2)


def grid_error(a: np.ndarray, b: np.ndarray, size=(640, 480)) -> np.ndarray:
    points = grid(*size)
    return np.linalg.norm(project(a, points) - project(b, points), axis=1)


@pytest.fixture(scope="module")
def msrs_pair(shared_data: Path) -> tuple[np.ndarray, np.ndarray]:
    det = shared_data / "det"
    return (cv2.imread(str(det / "ir" / "01583D.png"), cv2.IMREAD_GRAYSCALE),
            cv2.imread(str(det / "vi" / "01583D.png"), cv2.IMREAD_COLOR))


def thermal_view(ir: np.ndarray, to_rgb: np.ndarray, size=(640, 480)) -> np.ndarray:
    """What a thermal camera with this thermal -> RGB homography would see of an aligned IR."""
    return cv2.warpPerspective(ir, to_rgb, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)


# ------------------------------------------------------------------------ applying it
def test_aligned_data_is_a_no_op(msrs_pair) -> None:
    ir, vi = msrs_pair
    thermal, rgb = Registration().apply(ir, vi)
    assert thermal is ir and rgb is vi


def test_identity_with_crop_slices_both_alike(msrs_pair) -> None:
    ir, vi = msrs_pair
    thermal, rgb = Registration(RegistrationConfig(crop=(10, 20, 300, 200))).apply(ir, vi)
    np.testing.assert_array_equal(thermal, ir[20:220, 10:310])
    np.testing.assert_array_equal(rgb, vi[20:220, 10:310])


def test_homography_brings_thermal_onto_the_rgb_grid(msrs_pair) -> None:
    ir, vi = msrs_pair
    to_rgb = rig_homography(1.5, 1.6, 12, -8, 1e-5)  # a 400x300 thermal camera, rotated
    thermal = thermal_view(ir, to_rgb, (400, 300))
    crop = suggest_crop(to_rgb, (400, 300), (640, 480))
    config = RegistrationConfig(tuple(to_rgb.ravel()), crop=crop)
    out_thermal, out_rgb = Registration(config).apply(thermal, vi)
    x, y, w, h = crop
    assert out_thermal.shape == out_rgb.shape[:2] == (h, w)
    expected = ir[y:y + h, x:x + w].astype(int)
    assert np.abs(out_thermal.astype(int) - expected)[5:-5, 5:-5].mean() < 4
    # the same registration without the homography is visibly wrong
    wrong = Registration(RegistrationConfig(crop=crop)).plan((400, 300), (640, 480))
    assert wrong[2] is not None  # sizes differ: a warp is needed even for identity


def test_output_size_scales_both_images_consistently(msrs_pair) -> None:
    ir, vi = msrs_pair
    crop, size = (40, 30, 560, 420), (280, 210)
    to_rgb = rig_homography(0.0, 1.0, 0, 0)
    config = RegistrationConfig(tuple(to_rgb.ravel()), crop=crop, output_size=size)
    out_thermal, out_rgb = Registration(config).apply(ir.copy(), vi)
    assert out_thermal.shape == (210, 280) and out_rgb.shape == (210, 280, 3)
    reference = cv2.resize(ir[30:450, 40:600], size, interpolation=cv2.INTER_LINEAR)
    assert np.abs(out_thermal.astype(int) - reference)[2:-2, 2:-2].mean() < 2.5
    np.testing.assert_array_equal(out_rgb, cv2.resize(vi[30:450, 40:600], size,
                                                      interpolation=cv2.INTER_AREA))


def test_sixteen_bit_thermal_is_warped_in_place_of_depth() -> None:
    thermal = np.random.default_rng(0).integers(20000, 30000, (120, 160), np.uint16)
    config = RegistrationConfig(tuple(rig_homography(0, 2.0, 0.5, 0.5).ravel()))
    out, rgb = Registration(config).apply(thermal, np.zeros((240, 320, 3), np.uint8))
    assert out.dtype == np.uint16 and out.shape == (240, 320)


def test_config_mapping_round_trip_and_errors() -> None:
    h = rig_homography(2, 1.1, 3, 4, 2e-6)
    config = RegistrationConfig.from_mapping(
        {"homography": h.tolist(), "crop": [1, 2, 30, 40], "output_size": [0, 0]})
    assert config.crop == (1, 2, 30, 40) and config.output_size is None
    assert RegistrationConfig.from_mapping(config.to_mapping()) == config
    assert RegistrationConfig.from_mapping(None).is_identity
    bad = [({"homography": [1, 0, 0, 0, 1, 0, 0, 0]}, "homography must be 9 finite numbers"),
           ({"homography": [1, 0, 0, 0, 1, 0, 0, 0, float("nan")]}, "9 finite numbers"),
           ({"homography": [1, 2, 3, 2, 4, 6, 0, 0, 1]}, "singular"),
           ({"crop": [0, 0, -5, 10]}, "crop"),
           ({"crop": [0.5, 0, 5, 10]}, "crop must be integers"),
           ({"output_size": [10]}, "output_size must be 2"),
           ({"homograpy": [1] * 9}, "unknown registration key")]
    for values, match in bad:
        with pytest.raises(RegistrationError, match=match):
            RegistrationConfig.from_mapping(values)
    too_big = Registration(RegistrationConfig(crop=(600, 0, 100, 100)))
    with pytest.raises(RegistrationError, match="does not fit the 640x480 RGB image"):
        too_big.apply(np.zeros((480, 640), np.uint8), np.zeros((480, 640, 3), np.uint8))


def test_suggested_crop_is_the_overlap_for_a_shift() -> None:
    to_rgb = rig_homography(0, 1.0, 25, -10)
    assert suggest_crop(to_rgb, (640, 480), (640, 480)) == (25, 0, 615, 470)


# ------------------------------------------------------------------------ estimating it
def synthetic_points(truth: np.ndarray, count: int, noise_px: float, seed: int):
    rng = np.random.default_rng(seed)
    thermal = rng.uniform([0, 0], [640, 512], (count, 2))
    rgb = project(truth, thermal) + rng.normal(0, noise_px, (count, 2))
    return thermal, rgb


def test_points_recover_a_known_homography() -> None:
    truth = rig_homography(-2.0, 1.25, 30, -12, 3e-5)
    thermal, rgb = synthetic_points(truth, 60, 0.2, seed=1)  # sub-pixel corner detections
    matrix, _ = fit_homography(thermal, rgb)
    assert grid_error(matrix, truth, (640, 512)).max() < 0.5
    assert 0.15 < np.sqrt(np.mean(reprojection_errors(matrix, thermal, rgb) ** 2)) < 0.4
    # five gross mismatches: least squares is pulled away, RANSAC is not
    rgb[:5] += 60
    assert grid_error(fit_homography(thermal, rgb)[0], truth, (640, 512)).max() > 2
    robust, inliers = fit_homography(thermal, rgb, ransac_px=2.0)
    assert grid_error(robust, truth, (640, 512)).max() < 0.5
    assert not inliers[:5].any() and inliers[5:].mean() > 0.95


def test_ecc_recovers_a_known_warp_on_a_real_pair(msrs_pair) -> None:
    """Warp the real IR by a known small homography; ECC on edges must find that warp.

    Cross-modal ECC's answer for the unwarped pair is the reference (MSRS pairs are aligned
    only to a few pixels, so 'identity' is not exact truth); the known warp must show up on
    top of it to within half a pixel.
    """
    ir, vi = msrs_pair
    known = rig_homography(1.0, 1.02, 6, -4, 1e-5)
    reference, _ = ecc_homography(ir, vi)
    found, score = ecc_homography(thermal_view(ir, known), vi)
    errors = grid_error(found, reference @ known)
    assert errors.mean() < 0.5 and errors.max() < 1.0, errors
    assert grid_error(np.eye(3), known).mean() > 5  # the warp was not negligible
    assert 0.1 < score < 1
    # same modality: the alignment itself is exact
    same, _ = ecc_homography(thermal_view(ir, known), cv2.cvtColor(ir, cv2.COLOR_GRAY2BGR))
    assert grid_error(same, known).max() < 0.1


def test_combining_estimates_ignores_an_outlier() -> None:
    truth = rig_homography(1, 1.0, 5, 5)
    estimates = [truth, truth @ rig_homography(0, 1, 0.2, 0), truth @ rig_homography(0, 1, 40, 0)]
    matrix, deviation = combine_homographies(estimates, (640, 480))
    assert grid_error(matrix, truth).max() < 0.25 and deviation[2] > 35 > deviation[0]


# ------------------------------------------------------------------------ files and config
def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    "content, match",
    [
        ("thermal_x,thermal_y,rgb_x,rgb_y\n1,2,3,4\n5,6,7,8\n9,1,2,3\n", "3 correspondence"),
        ("1,2,3,4\n5,6,7\n", r"row 2 \('5,6,7'\) has 3 values"),
        ("1,2,3,4\n5,six,7,8\n", "row 2 .* is not numeric"),
        ("tx,ty,rx,ry\n1,2,3,4\n", "header .* must name the columns"),
        ("0,0,0,0\n1,1,1,1\n2,2,2,2\n3,3,3,3\n", "no homography fits these points"),
    ],
)
def test_bad_csv_files_give_clear_errors(tmp_path: Path, content: str, match: str) -> None:
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(CalibrationError, match=match):
        fit_homography(*read_correspondences(path))


def test_yaml_correspondences_and_their_errors(tmp_path: Path) -> None:
    truth = rig_homography(0, 1.5, 10, 20)
    thermal, rgb = synthetic_points(truth, 6, 0.0, seed=2)
    good = write(tmp_path / "good.yaml", yaml.safe_dump({"points": [
        {"thermal": t.tolist(), "rgb": r.tolist()} for t, r in zip(thermal, rgb)]}))
    got_thermal, got_rgb = read_correspondences(good)
    np.testing.assert_allclose(got_thermal, thermal)
    np.testing.assert_allclose(got_rgb, rgb)
    flat = write(tmp_path / "flat.yml",
                 yaml.safe_dump([[*t.tolist(), *r.tolist()] for t, r in zip(thermal, rgb)]))
    np.testing.assert_allclose(read_correspondences(flat)[1], rgb)
    for content, match in (("points: {a: 1}\n", "expected a list"),
                           ("- {thermal: [1, 2]}\n", r"entry 1 .* must be"),
                           ("- [1, 2, 3]\n", "entry 1"), ("[: bad\n", "not valid YAML")):
        with pytest.raises(CalibrationError, match=match):
            read_correspondences(write(tmp_path / "bad.yaml", content))
    with pytest.raises(CalibrationError, match="no such correspondence file"):
        read_correspondences(tmp_path / "missing.csv")


ROS_PARAMS = """\
# Fusion node parameters (documented)
/**:
  ros__parameters:
    # input topics
    thermal_topic: /thermal/image_raw
    registration:
      # thermal -> RGB pixels (identity for aligned data)
      homography:
      - 1.0
      - 0.0
      - 0.0
      - 0.0
      - 1.0
      - 0.0
      - 0.0
      - 0.0
      - 1.0
      # region both cameras see; zeros: none
      crop: [0, 0, 0, 0]
    sync:
      slop: 0.02  # seconds
"""


def test_config_update_keeps_comments_and_other_keys(tmp_path: Path) -> None:
    path = write(tmp_path / "fusion.yaml", ROS_PARAMS)
    before = yaml.safe_load(path.read_text())
    config = RegistrationConfig(tuple(rig_homography(1, 1.1, 3.5, -2, 1e-6).ravel()),
                                crop=(4, 5, 600, 400), output_size=(320, 240))
    update_config_file(path, config)
    text = path.read_text()
    for comment in ("# Fusion node parameters", "# input topics", "# region both cameras see",
                    "# thermal -> RGB pixels (identity", "# seconds"):
        assert comment in text
    assert read_registration(path) == config
    after = yaml.safe_load(text)
    params, old = after["/**"]["ros__parameters"], before["/**"]["ros__parameters"]
    assert params["sync"] == old["sync"] and params["thermal_topic"] == old["thermal_topic"]
    update_config_file(path, config)  # idempotent
    assert path.read_text() == text


def test_config_update_creates_or_adds_the_section(tmp_path: Path) -> None:
    config = RegistrationConfig(tuple(rig_homography(0, 2, 1e-7, 0).ravel()))
    new = tmp_path / "new.yaml"
    update_config_file(new, config)
    assert read_registration(new) == config
    plain = write(tmp_path / "plain.yaml", "model:\n  bundle: models/default  # the bundle\n")
    update_config_file(plain, config)
    assert yaml.safe_load(plain.read_text())["model"] == {"bundle": "models/default"}
    assert read_registration(plain) == config
    node = write(tmp_path / "node.yaml", "fusion_node:\n  ros__parameters:\n    a: 1\n")
    update_config_file(node, config)
    params = yaml.safe_load(node.read_text())["fusion_node"]["ros__parameters"]
    assert params["a"] == 1 and params["registration"]["homography"][0] == 2.0
    inline = write(tmp_path / "inline.yaml", "registration: {crop: [1, 1, 5, 5]}\nb: 2\n")
    update_config_file(inline, config)
    assert read_registration(inline).crop is None  # to_mapping writes every key
    assert yaml.safe_load(inline.read_text())["b"] == 2
    with pytest.raises(CalibrationError, match="several 'registration:' sections"):
        set_yaml_section("a:\n  registration: {}\nb:\n  registration: {}\n", {"crop": [0] * 4})
    with pytest.raises(CalibrationError, match="not valid YAML"):
        set_yaml_section("a: [\n", {"crop": [0] * 4})


def test_cli_points_to_config_and_its_errors(tmp_path: Path, capsys) -> None:
    truth = rig_homography(0.5, 1.25, 20, 10, 1e-5)
    thermal, rgb = synthetic_points(truth, 12, 0.2, seed=3)
    points = tmp_path / "corr.csv"
    points.write_text("thermal_x,thermal_y,rgb_x,rgb_y\n" + "".join(
        f"{a:.3f},{b:.3f},{c:.3f},{d:.3f}\n" for (a, b), (c, d) in zip(thermal, rgb)))
    config = write(tmp_path / "fusion.yaml", ROS_PARAMS)
    code = main(["--points", str(points), "--config", str(config), "--crop", "auto",
                 "--thermal-size", "640,512", "--rgb-size", "1280,720"])
    out = capsys.readouterr().out
    assert code == 0 and "reprojection error RMS" in out and "wrote the registration" in out
    written = read_registration(config)
    assert grid_error(written.matrix, truth, (640, 512)).max() < 0.5
    assert written.crop == suggest_crop(written.matrix, (640, 512), (1280, 720))
    assert main(["--points", str(tmp_path / "nope.csv")]) == 2
    assert "no such correspondence file" in capsys.readouterr().err
    assert main([]) == 2
    assert "give --points" in capsys.readouterr().err


def test_cli_runs_as_a_module_on_real_frames(tmp_path: Path, msrs_pair) -> None:
    ir, vi = msrs_pair
    known = rig_homography(0.5, 1.0, 3, -2)
    thermal = tmp_path / "thermal.png"
    rgb = tmp_path / "rgb.png"
    cv2.imwrite(str(thermal), thermal_view(ir, known)[::2, ::2])
    cv2.imwrite(str(rgb), vi[::2, ::2])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "tdfusion_ros.calibrate", "--pair", str(thermal), str(rgb)],
        capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "edge correlation" in result.stdout and "homography:" in result.stdout
    parsed = yaml.safe_load(result.stdout[result.stdout.index("registration:"):])
    assert len(parsed["registration"]["homography"]) == 9
