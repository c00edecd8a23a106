"""Tests for the fusion and segmentation metrics (tdfusion_ros/metrics/fusion.py, segmentation.py).

Hand-computed values on tiny images, a slow per-pixel re-derivation of Qabf, and equality with
the libraries the reference evaluator calls (sewar's vifp, scikit-image's SSIM, scipy's
convolve2d for the Sobel responses).
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tdfusion_ros.metrics import fusion as M
from tdfusion_ros.metrics import segmentation as S

TG, KG, DG = 0.9994, -15.0, 0.5
TA, KA, DA = 0.9879, -22.0, 0.8


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _triple(shape: tuple[int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correlated uint8-valued float images (F, A, B), like a real fusion triple."""
    rng = _rng(seed)
    a = rng.integers(0, 256, shape).astype(np.float64)
    b = np.clip(255 - a + rng.normal(0, 40, shape), 0, 255).round()
    f = np.clip(0.6 * a + 0.4 * b + rng.normal(0, 8, shape), 0, 255)
    return f, a, b


# --------------------------------------------------------------------------- EN


def test_en_constant_is_zero() -> None:
    assert M.en(np.full((4, 4), 37.0)) == 0.0


def test_en_all_256_levels_equally_is_8_bits() -> None:
    img = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert M.en(img) == pytest.approx(8.0, abs=1e-12)


def test_en_hand_cases() -> None:
    two_levels = np.array([[0, 0, 255, 255]] * 4, dtype=np.float64)
    assert M.en(two_levels) == pytest.approx(1.0, abs=1e-12)
    four_levels = np.array([[0, 10, 20, 30]] * 4, dtype=np.float64)
    assert M.en(four_levels) == pytest.approx(2.0, abs=1e-12)
    # round() half to even, as np.round in the reference: 0.5 -> 0, 1.5 -> 2 => {0, 2, 2, 0}.
    # Half-up rounding would give {1, 2, 2, 0}: 1.5 bits.
    assert M.en(np.array([[0.5, 1.5], [2.0, 0.0]])) == pytest.approx(1.0, abs=1e-12)
    # 3 levels with counts 2, 1, 1: H = 0.5*1 + 2 * 0.25*2 = 1.5 bits.
    assert M.en(np.array([[0.4, 0.2], [7.0, 9.0]])) == pytest.approx(1.5, abs=1e-12)


# --------------------------------------------------------------------------- SF


def test_sf_constant_is_zero() -> None:
    assert M.sf(np.full((5, 7), 200.0)) == 0.0


def test_sf_hand_cases() -> None:
    # Horizontal differences 1, 1 (mean square 1); vertical 2, 2 (mean square 4).
    assert M.sf(np.array([[0.0, 1.0], [2.0, 3.0]])) == pytest.approx(math.sqrt(5.0))
    # A single bright pixel of 3 in a 3x3 image: each direction has squares 9, 9 over 6.
    spot = np.zeros((3, 3))
    spot[1, 1] = 3.0
    assert M.sf(spot) == pytest.approx(math.sqrt(3.0 + 3.0))


# --------------------------------------------------------------------------- SCD


def _pearson_loop(x: np.ndarray, y: np.ndarray) -> float:
    xs = [float(v) for v in x.ravel()]
    ys = [float(v) for v in y.ravel()]
    mx = sum(xs) / len(xs)
    my = sum(ys) / len(ys)
    sxy = sum((p - mx) * (q - my) for p, q in zip(xs, ys))
    sxx = sum((p - mx) ** 2 for p in xs)
    syy = sum((q - my) ** 2 for q in ys)
    return sxy / math.sqrt(sxx * syy)


def test_scd_matches_a_plain_loop() -> None:
    f, a, b = _triple((4, 4), seed=3)
    expected = _pearson_loop(f - b, a) + _pearson_loop(f - a, b)
    assert M.scd(f, a, b) == pytest.approx(expected, abs=1e-12)


def test_scd_hand_cases() -> None:
    rng = _rng(4)
    a = rng.integers(0, 128, (4, 4)).astype(np.float64)
    b = rng.integers(0, 128, (4, 4)).astype(np.float64)
    # F = A + B: F - B is A exactly and F - A is B exactly.
    assert M.scd(a + b, a, b) == pytest.approx(2.0, abs=1e-12)
    # F = 2A + B: corr(F - B, A) = 1; corr(F - A, B) = corr(A + B, B).
    expected = 1.0 + _pearson_loop(a + b, b)
    assert M.scd(2 * a + b, a, b) == pytest.approx(expected, abs=1e-12)
    # F = A: F - A is constant, its correlation is undefined.
    assert math.isnan(M.scd(a, a, b))


def test_scd_symmetric_in_sources() -> None:
    f, a, b = _triple((6, 5), seed=5)
    assert M.scd(f, a, b) == pytest.approx(M.scd(f, b, a), abs=1e-12)


# --------------------------------------------------------------------------- VIF


def test_vif_gaussian_window_is_separable_like_sewar() -> None:
    from sewar.utils import Filter, fspecial

    for n in (17, 9, 5, 3):
        taps = M._gaussian_taps(n)
        ref = fspecial(Filter.GAUSSIAN, ws=n, sigma=n / 5)
        np.testing.assert_allclose(np.outer(taps, taps), ref, rtol=0, atol=1e-15)


@pytest.mark.parametrize("shape", [(41, 41), (48, 57), (64, 64)])
def test_vif_equals_sewar(shape: tuple[int, int]) -> None:
    from sewar.full_ref import vifp as sewar_vifp

    f, a, b = _triple(shape, seed=sum(shape))
    expected = (sewar_vifp(a, f, sigma_nsq=2) + sewar_vifp(b, f, sigma_nsq=2)) / 2
    assert M.vif(f, a, b) == pytest.approx(expected, abs=1e-6)
    assert M.vif(f, a, b, backend="sewar") == pytest.approx(expected, abs=1e-12)
    assert M.vifp(a, f) == pytest.approx(sewar_vifp(a, f), abs=1e-6)


def test_vif_with_flat_regions_equals_sewar() -> None:
    """Saturated patches exercise the sigma < eps clamps."""
    from sewar.full_ref import vifp as sewar_vifp

    f, a, b = _triple((60, 70), seed=9)
    a[10:40, 5:50] = 255.0
    f[20:55, 30:70] = 0.0
    expected = (sewar_vifp(a, f) + sewar_vifp(b, f)) / 2
    assert M.vif(f, a, b) == pytest.approx(expected, abs=1e-6)


def test_vif_identity_and_degenerate_inputs() -> None:
    _, a, _ = _triple((48, 48), seed=1)
    assert M.vif(a, a, a) == pytest.approx(1.0, abs=1e-6)
    assert math.isnan(M.vifp(np.full((48, 48), 9.0), a))
    with pytest.raises(ValueError, match="41x41"):
        M.vif(a[:40, :40], a[:40, :40], a[:40, :40])
    with pytest.raises(ValueError, match="backend"):
        M.vif(a, a, a, backend="matlab")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Qabf

H1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
H3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def _conv2_same_loop(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """MATLAB conv2(img, kernel, 'same') for a 3x3 kernel, zeros outside the image."""
    h, w = img.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            acc = 0.0
            for u in range(3):
                for v in range(3):
                    r, c = i - u + 1, j - v + 1
                    if 0 <= r < h and 0 <= c < w:
                        acc += kernel[u, v] * img[r, c]
            out[i, j] = acc
    return out


def _qabf_loop(f: np.ndarray, a: np.ndarray, b: np.ndarray, quirk: bool) -> float:
    """Per-pixel Qabf written the way the MATLAB evaluator reads."""

    def strength_angle(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sx = _conv2_same_loop(img, H3)
        sy = _conv2_same_loop(img, H1)
        g = np.sqrt(sx ** 2 + sy ** 2)
        alpha = np.zeros_like(g)
        for idx in np.ndindex(g.shape):
            alpha[idx] = math.pi / 2 if sx[idx] == 0 else math.atan(sy[idx] / sx[idx])
        return g, alpha

    g_f, a_f = strength_angle(f)
    num = 0.0
    den = 0.0
    for src in (a, b):
        g_s, a_s = strength_angle(src)
        for idx in np.ndindex(g_s.shape):
            gs, gf = g_s[idx], g_f[idx]
            if gs > gf:
                ratio = gf / gs
            elif gs == gf:
                ratio = gf if quirk else 1.0
            else:
                ratio = gs / gf
            orient = 1 - abs(a_s[idx] - a_f[idx]) / (math.pi / 2)
            q = TG / (1 + math.exp(KG * (ratio - DG))) * TA / (1 + math.exp(KA * (orient - DA)))
            num += q * gs
            den += gs
    return num / den


def test_sobel_matches_reference_convolution() -> None:
    from scipy.signal import convolve2d

    img = _rng(2).integers(0, 256, (6, 9)).astype(np.float64)
    sx, sy = M._sobel(img, "zero")
    # The reference evaluator: convolve2d(img, h, mode='same'), zero fill.
    np.testing.assert_array_equal(sx, convolve2d(img, H3, mode="same"))
    np.testing.assert_array_equal(sy, convolve2d(img, H1, mode="same"))
    np.testing.assert_array_equal(sx, _conv2_same_loop(img, H3))
    # Replicated edges: for a 1-pixel border, scipy's 'symm' boundary is edge replication.
    rx, ry = M._sobel(img, "replicate")
    np.testing.assert_array_equal(rx, convolve2d(img, H3, mode="same", boundary="symm"))
    np.testing.assert_array_equal(ry, convolve2d(img, H1, mode="same", boundary="symm"))
    with pytest.raises(ValueError, match="border"):
        M._sobel(img, "wrap")  # type: ignore[arg-type]


@pytest.mark.parametrize("quirk", [True, False])
@pytest.mark.parametrize("stripes", [False, True])
def test_qabf_matches_per_pixel_loop(quirk: bool, stripes: bool) -> None:
    f, a, b = _triple((5, 6), seed=11)
    f[0, :] = a[0, :]  # some pixels with gA == gF to exercise the equal branch
    if stripes:
        # Horizontal stripes: Sx = 0 inside, so A's orientation is the pi/2 special case.
        a = np.repeat(np.array([[0.0], [90.0], [30.0], [200.0], [10.0]]), 6, axis=1)
    expected = _qabf_loop(f, a, b, quirk)
    assert M.qabf(f, a, b, official_quirk=quirk) == pytest.approx(expected, abs=1e-12)


def test_qabf_perfect_fusion_reaches_the_model_maximum() -> None:
    # A 0/255 pattern: every nonzero Sobel strength is at least 255.
    img = np.zeros((8, 8))
    img[2:6, 3:7] = 255.0
    img[0, 0] = 255.0
    q_max = TG / (1 + math.exp(KG * (1 - DG))) * TA / (1 + math.exp(KA * (1 - DA)))
    # Without the quirk, G = 1 and A = 1 everywhere: exactly the model's maximum, ~0.9748.
    assert M.qabf(img, img, img, official_quirk=False) == pytest.approx(q_max, abs=1e-12)
    # With it G = gF >= 255 wherever gA == gF, so Qg saturates at Tg: a different value.
    q_quirk = TG * TA / (1 + math.exp(KA * (1 - DA)))
    assert M.qabf(img, img, img, official_quirk=True) == pytest.approx(q_quirk, abs=1e-12)
    assert q_quirk - q_max > 5e-4


def test_qabf_border_choice_matters_and_degenerate_is_nan() -> None:
    f, a, b = _triple((12, 12), seed=6)
    assert M.qabf(f, a, b, border="zero") != pytest.approx(M.qabf(f, a, b, border="replicate"))
    # Zero padding gives a constant image border "edges" (as in the reference), so only an
    # all-zero pair has no gradient at all; with replicated borders any constant pair has none.
    zeros = np.zeros((6, 6))
    assert math.isnan(M.qabf(f[:6, :6], zeros, zeros))
    flat = np.full((6, 6), 50.0)
    assert not math.isnan(M.qabf(f[:6, :6], flat, flat))
    assert math.isnan(M.qabf(f[:6, :6], flat, flat, border="replicate"))


# --------------------------------------------------------------------------- SSIM


def test_ssim_equals_scikit_image_mean() -> None:
    from skimage.metrics import structural_similarity

    f, a, b = _triple((32, 40), seed=8)
    f8, a8, b8 = (x.astype(np.uint8) for x in (f, a, b))
    expected = (structural_similarity(f8, a8) + structural_similarity(f8, b8)) / 2
    assert M.ssim(f, a, b) == pytest.approx(expected, abs=1e-12)


def test_ssim_truncates_like_np_uint8() -> None:
    _, a, _ = _triple((16, 16), seed=2)
    a = np.minimum(a, 254.0)
    # uint8(a + 0.9) == uint8(a): truncation, not rounding.
    assert M.ssim(a + 0.9, a, a) == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------- fusion_metrics


def test_fusion_metrics_keys_and_agreement_with_single_functions() -> None:
    f, a, b = _triple((48, 64), seed=12)
    out = M.fusion_metrics(f, a, b)
    assert list(out) == ["EN", "SF", "SCD", "VIF", "Qabf", "SSIM"]
    assert all(isinstance(v, float) for v in out.values())
    assert out["EN"] == M.en(f)
    assert out["SF"] == M.sf(f)
    assert out["SCD"] == M.scd(f, a, b)
    assert out["VIF"] == M.vif(f, a, b)
    assert out["Qabf"] == M.qabf(f, a, b)
    assert out["SSIM"] == M.ssim(f, a, b)
    assert M.fusion_metrics(f, a, b, official_quirk=False)["Qabf"] == M.qabf(
        f, a, b, official_quirk=False
    )


def test_fusion_metrics_uint8_and_float_inputs_agree() -> None:
    f, a, b = _triple((48, 48), seed=13)
    f = f.round()
    as_u8 = M.fusion_metrics(f.astype(np.uint8), a.astype(np.uint8), b.astype(np.uint8))
    as_float = M.fusion_metrics(f, a, b)
    as_hw1 = M.fusion_metrics(f[..., None], a[..., None], b[..., None])
    for key, value in as_float.items():
        assert as_u8[key] == pytest.approx(value, abs=1e-12)
        assert as_hw1[key] == pytest.approx(value, abs=1e-12)


def test_fusion_metrics_rejects_colour_and_mismatched_shapes() -> None:
    f, a, b = _triple((48, 48), seed=14)
    with pytest.raises(ValueError, match="grey"):
        M.fusion_metrics(np.stack([f, f, f], axis=-1), a, b)
    with pytest.raises(ValueError, match="mismatch"):
        M.fusion_metrics(f, a[:-1], b)
    with pytest.raises(ValueError, match="grey"):
        M.en(np.zeros((4, 4, 3)))


def test_runtime_imports_stay_light() -> None:
    """Importing and using the numpy metrics pulls in neither torch nor the optional libs."""
    code = (
        "import sys, numpy as np\n"
        "from tdfusion_ros.metrics import fusion as M\n"
        "x = np.arange(48 * 48, dtype=float).reshape(48, 48) % 251\n"
        "M.en(x); M.sf(x); M.scd(x, x.T, x); M.vif(x, x.T, x); M.qabf(x, x.T, x)\n"
        "bad = [m for m in ('torch', 'ultralytics', 'sewar', 'skimage', 'scipy')"
        " if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=repo)


# --------------------------------------------------------------------------- segmentation


def test_segmentation_hand_confusion() -> None:
    label = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])  # the 2 sits on an ignored pixel
    out = S.segmentation_metrics(pred, label, num_classes=4)
    # Rows (label) x columns (pred): [[1, 1, 0], [0, 2, 0], [1, 0, 0]], class 3 unseen.
    np.testing.assert_allclose(out["IoU"][:3], [1 / 3, 2 / 3, 0.0])
    np.testing.assert_allclose(out["Acc"][:3], [1 / 2, 1.0, 0.0])
    assert math.isnan(out["IoU"][3]) and math.isnan(out["Acc"][3])
    assert out["mIoU"] == pytest.approx(1 / 3)
    assert out["mAcc"] == pytest.approx(1 / 2)
    assert out["aAcc"] == pytest.approx(3 / 5)


def test_confusion_matrix_accumulates_over_images() -> None:
    rng = _rng(21)
    preds = [rng.integers(0, 5, (7, 9)) for _ in range(3)]
    labels = [rng.integers(0, 5, (7, 9)) for _ in range(3)]
    labels[1][0, :] = 255
    cm = S.ConfusionMatrix(5)
    for p, lab in zip(preds, labels):
        cm.update(p, lab)
    joined = S.segmentation_metrics(np.concatenate(preds), np.concatenate(labels), 5)
    assert cm.compute() == joined
    assert cm.matrix.sum() == 3 * 63 - 9
    cm.reset()
    assert cm.matrix.sum() == 0


def test_segmentation_class_only_predicted() -> None:
    out = S.segmentation_metrics(np.array([0, 1, 1]), np.array([0, 0, 0]), num_classes=2)
    assert out["IoU"] == pytest.approx([1 / 3, 0.0])
    assert out["Acc"][0] == pytest.approx(1 / 3)
    assert math.isnan(out["Acc"][1])  # recall of a class with no labelled pixel: undefined
    assert out["mIoU"] == pytest.approx(1 / 6)
    assert out["mAcc"] == pytest.approx(1 / 3)


def test_segmentation_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="label"):
        S.segmentation_metrics(np.array([0, 1]), np.array([0, 3]), num_classes=3)
    with pytest.raises(ValueError, match="prediction"):
        S.segmentation_metrics(np.array([0, 7]), np.array([0, 1]), num_classes=3)
    with pytest.raises(ValueError, match="mismatch"):
        S.segmentation_metrics(np.zeros((2, 2), int), np.zeros((2, 3), int), num_classes=3)
    everything_ignored = S.segmentation_metrics(np.array([9]), np.array([255]), num_classes=2)
    assert math.isnan(everything_ignored["mIoU"]) and math.isnan(everything_ignored["aAcc"])


if __name__ == "__main__":
    M._benchmark()
