"""Luma/chroma handling around the fusion network."""

from __future__ import annotations

import cv2
import numpy as np

from tdfusion_ros.runtime.colour import combine_chroma, is_colour, prepare_pair, restore_colour


def random_bgr(seed: int, shape=(20, 30)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def test_luma_is_opencv_ycrcb_on_float_pixels() -> None:
    vis = random_bgr(0).astype(np.float32) / 255
    grey = np.random.default_rng(1).random((20, 30), dtype=np.float32)
    pair = prepare_pair(grey, vis)
    b, g, r = vis[..., 0], vis[..., 1], vis[..., 2]
    np.testing.assert_allclose(pair.vis_y, 0.299 * r + 0.587 * g + 0.114 * b, atol=1e-5)
    np.testing.assert_array_equal(pair.ir_y, grey)
    np.testing.assert_array_equal(pair.chroma, cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb)[..., 1:])


def test_visible_colour_comes_back_when_fused_equals_visible_luma() -> None:
    vis = random_bgr(2)
    pair = prepare_pair(np.zeros((20, 30), np.float32), vis.astype(np.float32) / 255)
    restored = restore_colour(pair.vis_y, pair.chroma)
    assert restored.shape == vis.shape
    assert np.abs(restored.astype(int) - vis.astype(int)).max() <= 1


def test_grey_inputs_give_grey_output() -> None:
    grey_as_bgr = np.repeat(random_bgr(3)[..., :1], 3, axis=2)
    assert not is_colour(grey_as_bgr)
    pair = prepare_pair(grey_as_bgr.astype(np.float32) / 255, grey_as_bgr[..., 0] / 255.0)
    assert pair.chroma is None
    assert restore_colour(pair.vis_y, pair.chroma).ndim == 2


def test_chroma_mix_prefers_the_saturated_source() -> None:
    neutral = np.full((2, 2, 2), 0.5, np.float32)
    red = np.full((2, 2, 2), 0.5, np.float32)
    red[..., 0] = 0.8
    np.testing.assert_allclose(combine_chroma(neutral, red), red)
    np.testing.assert_allclose(combine_chroma(neutral, neutral), neutral)
    blue = np.full((2, 2, 2), 0.5, np.float32)
    blue[..., 1] = 0.9
    mixed = combine_chroma(red, blue)
    # Cr: only red deviates -> red's; Cb: only blue deviates -> blue's
    np.testing.assert_allclose(mixed[..., 0], 0.8)
    np.testing.assert_allclose(mixed[..., 1], 0.9)
    half = combine_chroma(np.full((1, 1, 2), 0.7, np.float32), np.full((1, 1, 2), 0.4, np.float32))
    # weights 0.2 and 0.1: (0.7 * 0.2 + 0.4 * 0.1) / 0.3
    np.testing.assert_allclose(half, 0.6, atol=1e-6)


def test_colour_mapped_infrared_and_colour_visible_are_combined() -> None:
    ir_colour = cv2.applyColorMap(random_bgr(4)[..., 0], cv2.COLORMAP_JET).astype(np.float32) / 255
    vis = random_bgr(5).astype(np.float32) / 255
    pair = prepare_pair(ir_colour, vis)
    ir_crcb = cv2.cvtColor(ir_colour, cv2.COLOR_BGR2YCrCb)[..., 1:]
    vis_crcb = cv2.cvtColor(vis, cv2.COLOR_BGR2YCrCb)[..., 1:]
    np.testing.assert_allclose(pair.chroma, combine_chroma(ir_crcb, vis_crcb))


def test_restore_colour_equals_the_plain_float_formula(shared_data) -> None:
    """One rounding pass gives the same bytes as clip, YCrCb -> BGR, x 255, rint, clip."""
    from tdfusion_ros.runtime.colour import to_uint8
    from tdfusion_ros.runtime.image_io import read_image, to_unit_float

    def plain(fused_y: np.ndarray, chroma: np.ndarray | None) -> np.ndarray:
        y = np.clip(fused_y, 0.0, 1.0)
        if chroma is not None:
            y = cv2.cvtColor(np.concatenate([y[..., None], chroma], axis=2),
                             cv2.COLOR_YCrCb2BGR)
        return np.clip(np.rint(y * 255.0), 0, 255).astype(np.uint8)

    rng = np.random.default_rng(6)
    for name in ("00055D", "00004N"):
        pair = prepare_pair(to_unit_float(read_image(shared_data / "det" / "ir" / f"{name}.png")),
                            to_unit_float(read_image(shared_data / "det" / "vi" / f"{name}.png")))
        out_of_range = (pair.vis_y * 1.4 - 0.2).astype(np.float32)
        noise = rng.uniform(-0.1, 1.1, pair.vis_y.shape).astype(np.float32)
        for fused_y in (pair.vis_y, pair.ir_y, out_of_range, noise):
            for chroma in (pair.chroma, None):
                np.testing.assert_array_equal(restore_colour(fused_y, chroma),
                                              plain(fused_y, chroma))
    # Around every half step of the 8-bit scale, and outside [0, 1].
    steps = (np.arange(-40, 256 * 8 + 40) / 8 / 255).astype(np.float32)
    steps = np.concatenate([steps, np.nextafter(steps, 2), np.nextafter(steps, -2)])
    np.testing.assert_array_equal(to_uint8(steps.reshape(4, -1)),
                                  np.clip(np.rint(steps.reshape(4, -1) * 255.0), 0, 255)
                                  .astype(np.uint8))
