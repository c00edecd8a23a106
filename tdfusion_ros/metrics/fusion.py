"""Image-fusion metrics (EN, SF, SCD, VIF, Qabf, SSIM), comparable with the TDFusion evaluator.

The fusion metrics follow the definitions of the TDFusion reference evaluator (`Evaluator.py` of
the official code, itself derived from the usual MATLAB fusion toolbox), so numbers computed here
can sit next to the paper's tables. All of them work on 8-bit grey images: the fused image F,
the infrared image A and the visible image B, given as uint8 or float arrays holding 0..255.
They are computed in float64.

* EN, SF: of F alone. SCD, Qabf: of the triple. VIF, SSIM: the mean of the (A, F) and (B, F)
  pair values, as in TDFusion's evaluator (older evaluators, e.g. CDDFuse's, report the sum:
  multiply by 2 to compare with those).
* Only numpy is needed at import time; scikit-image (SSIM) and sewar (optional VIF backend) are
  imported inside the functions that use them, so the runtime can import this module.

Degenerate inputs give nan rather than an exception: SCD of a constant difference image, Qabf
when neither source has any gradient, VIF when the reference is constant (as sewar does).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "en",
    "fusion_metrics",
    "qabf",
    "scd",
    "sf",
    "ssim",
    "vif",
    "vifp",
]

# Xydeas-Petrovic Qabf constants (sigmoid gains and offsets for strength and orientation).
QABF_TG, QABF_KG, QABF_DG = 0.9994, -15.0, 0.5
QABF_TA, QABF_KA, QABF_DA = 0.9879, -22.0, 0.8

# VIF constants of the pixel-domain VIF (Sheikh & Bovik), identical to sewar 0.4.10's vifp.
_VIF_EPS = 1e-10
_VIF_SIGMA_NSQ = 2.0

SobelBorder = Literal["zero", "replicate"]
VifBackend = Literal["numpy", "sewar"]


# --------------------------------------------------------------------------- input handling


def _as_grey(image: np.ndarray, name: str) -> np.ndarray:
    """A float64 (H, W) view of a grey image; colour or odd shapes are a ValueError."""
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3:
        raise ValueError(
            f"{name} has shape {arr.shape}: the fusion metrics take grey images only; "
            "convert colour images to grey (e.g. the Y channel) first"
        )
    if arr.ndim != 2:
        raise ValueError(f"{name} has shape {arr.shape}: expected a grey (H, W) image")
    if arr.dtype.kind not in "uif":
        raise ValueError(f"{name} has dtype {arr.dtype}: expected an integer or float image")
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise ValueError(f"{name} has shape {arr.shape}: at least 2x2 pixels are needed")
    return arr.astype(np.float64, copy=False)


def _as_triple(
    fused: np.ndarray, ir: np.ndarray, vis: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check and convert (F, A, B); the three must have the same (H, W)."""
    f = _as_grey(fused, "fused")
    a = _as_grey(ir, "ir")
    b = _as_grey(vis, "vis")
    if not f.shape == a.shape == b.shape:
        raise ValueError(
            f"shape mismatch: fused {f.shape}, ir {a.shape}, vis {b.shape}; "
            "the three images must have the same size"
        )
    return f, a, b


def _to_uint8_truncate(image: np.ndarray) -> np.ndarray:
    """np.uint8(x) as the reference evaluator does it (truncation), after clipping to 0..255."""
    return np.clip(image, 0.0, 255.0).astype(np.uint8)


# --------------------------------------------------------------------------- EN, SF, SCD


def en(fused: np.ndarray) -> float:
    """Shannon entropy (bits) of the 256-bin histogram of round(F): information content."""
    f = _as_grey(fused, "fused")
    # np.round rounds half to even, like the reference; clipping only matters for bad input.
    levels = np.clip(np.round(f), 0, 255).astype(np.uint8).ravel()
    p = np.bincount(levels, minlength=256) / levels.size
    p = p[p > 0]
    return float(-np.sum(p * np.log2(p)))


def sf(fused: np.ndarray) -> float:
    """Spatial frequency: RMS of horizontal and vertical first differences (detail level)."""
    f = _as_grey(fused, "fused")
    rf2 = np.mean((f[:, 1:] - f[:, :-1]) ** 2)
    cf2 = np.mean((f[1:, :] - f[:-1, :]) ** 2)
    return float(np.sqrt(rf2 + cf2))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation over all pixels (nan when either image is constant)."""
    xc = x - x.mean()
    yc = y - y.mean()
    den = math.sqrt(float(np.sum(xc * xc)) * float(np.sum(yc * yc)))
    if den == 0.0:
        return math.nan
    return float(np.sum(xc * yc)) / den


def scd(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """Sum of correlations of differences: corr(F - B, A) + corr(F - A, B).

    F - B is what the fusion added on top of the visible image; it should look like A (and
    vice versa). nan when a difference image or a source is constant.
    """
    f, a, b = _as_triple(fused, ir, vis)
    return _pearson(f - b, a) + _pearson(f - a, b)


# --------------------------------------------------------------------------- VIF


def _gaussian_taps(n: int) -> np.ndarray:
    """1-D factor of MATLAB's fspecial('gaussian', n, n / 5), normalised to sum 1.

    The 2-D window of the reference is separable: its eps*max cut-off removes nothing for the
    four window sizes used (17, 9, 5, 3), so outer(taps, taps) equals it (tested).
    """
    sigma = n / 5.0
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(img: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """'valid' 2-D filtering with the separable symmetric window outer(taps, taps).

    Works on a stack (..., H, W). Symmetric taps make correlation and convolution equal.
    Sliding-window views times the taps: ~4x faster than a Python loop over the taps.
    """
    n = taps.size
    h, w = img.shape[-2:]
    if h < n or w < n:
        raise ValueError(
            f"image too small for VIF: {h}x{w} at a scale needing {n}x{n}; "
            "VIF needs at least 41x41 pixels"
        )
    rows = sliding_window_view(img, n, axis=-1) @ taps
    return sliding_window_view(rows, n, axis=-2) @ taps


def _vifp_terms(refs: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numerators and denominators of pixel-domain VIF of `dist` against each of `refs`.

    sewar's algorithm over four scales; refs is a (K, H, W) stack. The statistics of `dist`
    are filtered once and shared by all K references.
    """
    eps = _VIF_EPS
    k = refs.shape[0]
    num = np.zeros(k)
    den = np.zeros(k)
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        taps = _gaussian_taps(n)
        if scale > 1:
            both = _filter_valid(np.concatenate([refs, dist[None]]), taps)[:, ::2, ::2]
            refs, dist = both[:k], both[k]
        stats = _filter_valid(
            np.concatenate([refs, dist[None], refs * refs, (dist * dist)[None], refs * dist]),
            taps,
        )
        mu1, mu2 = stats[:k], stats[k]
        s1 = stats[k + 1:2 * k + 1] - mu1 * mu1
        s2 = np.broadcast_to(stats[2 * k + 1] - mu2 * mu2, s1.shape).copy()
        s12 = stats[2 * k + 2:] - mu1 * mu2

        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12

        low1 = s1 < eps
        g[low1] = 0
        sv[low1] = s2[low1]
        s1[low1] = 0

        low2 = s2 < eps
        g[low2] = 0
        sv[low2] = 0

        neg = g < 0
        sv[neg] = s2[neg]
        g[neg] = 0
        sv[sv <= eps] = eps

        num += np.sum(np.log10(1.0 + g * g * s1 / (sv + _VIF_SIGMA_NSQ)), axis=(1, 2))
        den += np.sum(np.log10(1.0 + s1 / _VIF_SIGMA_NSQ), axis=(1, 2))
    return num, den


def _ratio_or_nan(num: float, den: float) -> float:
    """num / den, nan for 0 / 0 (a constant reference), as sewar returns."""
    return float(num / den) if den != 0.0 else math.nan


def vifp(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain VIF of `dist` against reference `ref` (sigma_nsq = 2).

    A vectorised re-implementation of sewar.full_ref.vifp(ref, dist) (same windows, clamps and
    constants; agrees to ~1e-12): sewar's scipy convolve2d takes ~0.65 s per 640x480 pair.
    nan when `ref` is constant (0/0), as sewar gives. Needs at least 41x41 pixels.
    """
    r = _as_grey(ref, "ref")
    d = _as_grey(dist, "dist")
    if r.shape != d.shape:
        raise ValueError(f"shape mismatch: ref {r.shape}, dist {d.shape}")
    num, den = _vifp_terms(r[None], d)
    return _ratio_or_nan(num[0], den[0])


def vif(
    fused: np.ndarray, ir: np.ndarray, vis: np.ndarray, backend: VifBackend = "numpy"
) -> float:
    """Mean of VIF(A -> F) and VIF(B -> F): how much source information F conveys.

    backend="sewar" calls sewar.full_ref.vifp (the reference evaluator's own call, slow);
    "numpy" uses the equivalent vectorised `vifp` of this module.
    """
    f, a, b = _as_triple(fused, ir, vis)
    if backend == "sewar":
        from sewar.full_ref import vifp as sewar_vifp

        return float((sewar_vifp(a, f, sigma_nsq=2) + sewar_vifp(b, f, sigma_nsq=2)) / 2.0)
    if backend != "numpy":
        raise ValueError(f"unknown VIF backend {backend!r}: use 'numpy' or 'sewar'")
    num, den = _vifp_terms(np.stack([a, b]), f)
    return (_ratio_or_nan(num[0], den[0]) + _ratio_or_nan(num[1], den[1])) / 2.0


# --------------------------------------------------------------------------- Qabf


def _sobel(img: np.ndarray, border: SobelBorder = "zero") -> tuple[np.ndarray, np.ndarray]:
    """(Sx, Sy) as MATLAB conv2(img, h, 'same') with h3 = [-1 0 1; -2 0 2; -1 0 1] and
    h1 = [1 2 1; 0 0 0; -1 -2 -1].

    conv2 flips the kernel, so Sx = (left - right) and Sy = (below - above) column/row sums
    weighted 1-2-1. 'same' pads with zeros (border="zero", the reference behaviour, also that of
    scipy convolve2d(mode='same')); border="replicate" repeats the edge pixels instead.
    """
    if border == "zero":
        p = np.pad(img, 1, mode="constant")
    elif border == "replicate":
        p = np.pad(img, 1, mode="edge")
    else:
        raise ValueError(f"unknown Sobel border {border!r}: use 'zero' or 'replicate'")
    h, w = img.shape
    vert = p[0:h, :] + 2.0 * p[1:h + 1, :] + p[2:h + 2, :]  # 1-2-1 down the rows
    horz = p[:, 0:w] + 2.0 * p[:, 1:w + 1] + p[:, 2:w + 2]  # 1-2-1 along the columns
    sx = vert[:, 0:w] - vert[:, 2:w + 2]
    sy = horz[2:h + 2, :] - horz[0:h, :]
    return sx, sy


def _strength_orientation(
    img: np.ndarray, border: SobelBorder
) -> tuple[np.ndarray, np.ndarray]:
    """Edge strength sqrt(Sx^2 + Sy^2) and orientation arctan(Sy / Sx) (pi/2 where Sx = 0)."""
    sx, sy = _sobel(img, border)
    g = np.sqrt(sx * sx + sy * sy)
    nz = sx != 0
    ratio = np.divide(sy, sx, out=np.zeros_like(sy), where=nz)
    alpha = np.where(nz, np.arctan(ratio), math.pi / 2)
    return g, alpha


def _edge_preservation(
    g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray, official_quirk: bool
) -> np.ndarray:
    """Per-pixel Q^{SF} = Qg * Qa of one source S against F."""
    greater = g_src > g_f
    less = g_src < g_f
    equal = ~(greater | less)
    ratio = np.empty_like(g_f)
    ratio[greater] = g_f[greater] / g_src[greater]
    ratio[less] = g_src[less] / g_f[less]
    # Reference quirk: where the strengths are equal the "ratio" is set to gF itself.
    # Without the quirk equal strengths are perfectly preserved: ratio 1, also when both are 0
    # (such pixels have weight g_src = 0 in Qabf, so that choice never changes the score).
    ratio[equal] = g_f[equal] if official_quirk else 1.0
    orient = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    q_g = QABF_TG / (1.0 + np.exp(QABF_KG * (ratio - QABF_DG)))
    q_a = QABF_TA / (1.0 + np.exp(QABF_KA * (orient - QABF_DA)))
    return q_g * q_a


def qabf(
    fused: np.ndarray,
    ir: np.ndarray,
    vis: np.ndarray,
    official_quirk: bool = True,
    border: SobelBorder = "zero",
) -> float:
    """Xydeas-Petrovic Q^{AB/F}: source edges (Sobel) preserved in F, weighted by strength.

    official_quirk=True (default, for comparability with published numbers) reproduces the
    reference evaluator setting the strength ratio to gF where gA == gF; False uses 1 there.
    border: Sobel padding, "zero" like the reference's conv2/convolve2d 'same' (the outermost
    pixel ring then sees an edge against the black padding, also in A and B, as in published
    numbers), or "replicate" (no such border edges). nan when neither A nor B has a gradient.
    """
    f, a, b = _as_triple(fused, ir, vis)
    g_a, al_a = _strength_orientation(a, border)
    g_b, al_b = _strength_orientation(b, border)
    g_f, al_f = _strength_orientation(f, border)
    q_af = _edge_preservation(g_a, al_a, g_f, al_f, official_quirk)
    q_bf = _edge_preservation(g_b, al_b, g_f, al_f, official_quirk)
    den = float(np.sum(g_a + g_b))
    if den == 0.0:
        return math.nan
    return float(np.sum(q_af * g_a + q_bf * g_b)) / den


# --------------------------------------------------------------------------- SSIM


def ssim(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray) -> float:
    """Mean of scikit-image SSIM(uint8(F), uint8(A)) and SSIM(uint8(F), uint8(B)), defaults.

    uint8() truncates like the reference's np.uint8 (values are clipped to 0..255 first);
    data_range 255 is inferred from the uint8 dtype; 7x7 uniform window.
    """
    from skimage.metrics import structural_similarity

    f, a, b = _as_triple(fused, ir, vis)
    f8 = _to_uint8_truncate(f)
    s_a = structural_similarity(f8, _to_uint8_truncate(a))
    s_b = structural_similarity(f8, _to_uint8_truncate(b))
    return float((s_a + s_b) / 2.0)


# --------------------------------------------------------------------------- all six


def fusion_metrics(
    fused: np.ndarray,
    ir: np.ndarray,
    vis: np.ndarray,
    *,
    official_quirk: bool = True,
    sobel_border: SobelBorder = "zero",
    vif_backend: VifBackend = "numpy",
) -> dict[str, float]:
    """EN, SF, SCD, VIF, Qabf and SSIM of one fused image against its IR and visible sources.

    Inputs are grey (H, W) uint8 or float arrays in 0..255 ((H, W, 1) is accepted); colour
    images or a size mismatch raise ValueError.
    """
    f, a, b = _as_triple(fused, ir, vis)
    return {
        "EN": en(f),
        "SF": sf(f),
        "SCD": scd(f, a, b),
        "VIF": vif(f, a, b, backend=vif_backend),
        "Qabf": qabf(f, a, b, official_quirk=official_quirk, border=sobel_border),
        "SSIM": ssim(f, a, b),
    }


# --------------------------------------------------------------------------- benchmark


def _benchmark(height: int = 480, width: int = 640, repeats: int = 3) -> None:
    """Print per-metric wall time on a random smooth-ish triple (not part of the tests)."""
    import time

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width)).astype(np.float64)
    a = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).round()
    b = np.clip(255 - base + rng.normal(0, 20, base.shape), 0, 255).round()
    f = np.clip(0.5 * a + 0.5 * b + rng.normal(0, 5, base.shape), 0, 255)
    jobs = {
        "EN": lambda: en(f),
        "SF": lambda: sf(f),
        "SCD": lambda: scd(f, a, b),
        "VIF": lambda: vif(f, a, b),
        "VIF (sewar)": lambda: vif(f, a, b, backend="sewar"),
        "Qabf": lambda: qabf(f, a, b),
        "SSIM": lambda: ssim(f, a, b),
        "fusion_metrics": lambda: fusion_metrics(f, a, b),
    }
    for name, job in jobs.items():
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            job()
            best = min(best, time.perf_counter() - t0)
        print(f"{name:>15s}: {best * 1000:8.1f} ms  ({width}x{height})")


if __name__ == "__main__":
    _benchmark()
