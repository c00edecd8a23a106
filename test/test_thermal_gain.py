"""Gain control: exact fixed mapping, no flicker under noise, adaptation to a scene change."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from tdfusion_ros.runtime.thermal_gain import GainConfig, ThermalGain, percentile_limits


@pytest.fixture(scope="module")
def radiometric_scene(shared_data: Path) -> np.ndarray:
    """A real MSRS infrared frame stretched to a Boson-like count range (16-bit)."""
    ir = cv2.imread(str(shared_data / "det" / "ir" / "00055D.png"), cv2.IMREAD_GRAYSCALE)
    return (ir.astype(np.uint16) * 8 + 21000).astype(np.uint16)


def test_fixed_range_maps_exactly() -> None:
    gain = ThermalGain(GainConfig(mode="fixed", fixed_low=1000, fixed_high=2020))
    counts = np.arange(0, 4096, dtype=np.uint16).reshape(64, 64)
    expected = np.clip(np.rint((counts.astype(np.float64) - 1000) * 255 / 1020), 0, 255)
    out = gain(counts)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    assert out.flat[1000] == 0 and out.flat[2020] == 255 and out.flat[1004] == 1
    assert gain.limits == (1000.0, 2020.0)


def test_eight_bit_input_passes_through() -> None:
    image = np.random.default_rng(0).integers(0, 256, (20, 30), np.uint8)
    gain = ThermalGain()
    assert gain(image) is image and gain.limits is None


def test_first_frame_sets_the_percentile_limits(radiometric_scene: np.ndarray) -> None:
    gain = ThermalGain(GainConfig(subsample=1, low_percentile=2, high_percentile=98))
    out = gain(radiometric_scene)
    lo, hi = (np.percentile(radiometric_scene, q, method="inverted_cdf") for q in (2, 98))
    assert gain.limits == (lo, hi)
    assert (out == 0).mean() == pytest.approx((radiometric_scene <= lo).mean(), abs=1e-9)
    assert percentile_limits(radiometric_scene, 0, 100) == (radiometric_scene.min(),
                                                            radiometric_scene.max())


def noisy_frames(scene: np.ndarray, count: int, seed: int) -> list[np.ndarray]:
    """Sensor noise plus a small hot object of varying size, which moves the 99th percentile."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        frame = scene.astype(np.float64) + rng.normal(0, 15, scene.shape)
        side = int(rng.integers(0, 70))
        frame[10:10 + side, 10:10 + side] = 24500
        frames.append(np.clip(frame, 0, 65535).astype(np.uint16))
    return frames


def flicker(outputs: list[np.ndarray]) -> float:
    """Mean change of frame brightness between consecutive frames, in grey levels."""
    means = np.array([o.mean() for o in outputs])
    return float(np.abs(np.diff(means)).mean())


def test_smoothing_reduces_flicker(radiometric_scene: np.ndarray) -> None:
    frames = noisy_frames(radiometric_scene, 30, seed=1)
    raw = ThermalGain(GainConfig(smoothing=0.0))
    smooth = ThermalGain(GainConfig(smoothing=0.9))
    f_raw = flicker([raw(f) for f in frames])
    f_smooth = flicker([smooth(f) for f in frames])
    assert f_raw > 1.0  # the unsmoothed image visibly pumps
    assert f_smooth < 0.3 * f_raw, (f_smooth, f_raw)


def test_limits_follow_a_scene_change_within_a_few_frames(radiometric_scene: np.ndarray) -> None:
    cold = radiometric_scene
    hot = (radiometric_scene.astype(np.int32) * 2 + 4000).clip(0, 65535).astype(np.uint16)
    start = percentile_limits(cold[::2, ::2], 1, 99)
    target = percentile_limits(hot[::2, ::2], 1, 99)
    jump = max(abs(a - b) for a, b in zip(start, target))
    gain = ThermalGain(GainConfig(smoothing=0.8))
    for _ in range(10):
        gain(cold)
    first = gain(hot)
    assert abs(gain.limits[0] - target[0]) > 0.7 * jump  # no jump on one frame...
    assert (first == 255).mean() > 0.5
    for _ in range(20):  # ...but within 1 % of the jump after 21 frames (0.8 ** 21 < 0.01)
        gain(hot)
    assert all(abs(a - b) < 0.01 * jump for a, b in zip(gain.limits, target))
    for _ in range(20):
        out = gain(hot)
    assert abs(float(out.mean()) - float(ThermalGain()(hot).mean())) < 1


def test_uniform_scene_does_not_amplify_noise_to_full_range() -> None:
    flat = np.full((40, 50), 30000, np.uint16)
    flat[0, 0] = 30003
    out = ThermalGain(GainConfig(min_span=64))(flat)
    assert out.min() == 128 and out.max() == 139  # 3 counts over a 64-count window


def test_bad_configuration_and_input_are_named() -> None:
    with pytest.raises(ValueError, match="thermal gain parameter smoothing=1.0"):
        ThermalGain(GainConfig(smoothing=1.0))
    with pytest.raises(ValueError, match="thermal gain parameter fixed_low=500"):
        ThermalGain(GainConfig(mode="fixed", fixed_low=500, fixed_high=500))
    with pytest.raises(ValueError, match="low_percentile"):
        ThermalGain(GainConfig(low_percentile=99, high_percentile=1))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        ThermalGain()(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        ThermalGain()(np.zeros((4, 4, 3), np.uint16))
