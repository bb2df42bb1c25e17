"""Image-quality metrics: the paper's definitions exactly, and honest fixed-range variants.

The paper (method.md, "Metrics used by the paper") scores simulated data with PSNR and SSIM after min-max
normalising *each* image to [0, 255] and rounding (:func:`psnr_paper`, :func:`ssim_paper`), and real data
without a reference by the cross-correlation SNR of two frames (:func:`cross_correlation_snr`).

The per-image stretch forgives any affine intensity error of the denoised image (a wrong offset or gain scores
the same as the right one), so :func:`psnr_fixed` and :func:`ssim_fixed` score the image in the clean image's own
units with one data range fixed by the caller (normally max - min of the whole clean movie).

Every function takes 2-D arrays of the same shape and computes in float64. Wrong shapes and NaN/inf values raise
:class:`~emlive.core.errors.InputDataError`, naming the image (``label``, e.g. ``"frame 12"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from emlive.core.errors import InputDataError
from emlive.core.filters import correlate1d

__all__ = [
    "SSIM_RADIUS",
    "SSIM_SIGMA",
    "FrameSource",
    "as_float_image",
    "cross_correlation_snr",
    "movie_data_range",
    "movie_metrics",
    "normalize_paper",
    "pearson_r",
    "psnr_fixed",
    "psnr_paper",
    "ssim_fixed",
    "ssim_paper",
    "temporal_snr",
]

SSIM_SIGMA = 1.5
SSIM_RADIUS = 5  # 11 x 11 window; the filtered maps are cropped by this many pixels at each border
_K1 = 0.01
_K2 = 0.03


class FrameSource(Protocol):
    """Anything indexable frame by frame: a (T, H, W) array, an :class:`emlive.core.readers.Movie`, a list."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


# --- input checks ------------------------------------------------------------------------------------------------
def as_float_image(image: Any, label: str = "image", role: str = "input") -> np.ndarray:
    """``image`` as a float64 (H, W) array; InputDataError naming ``label`` when not 2-D, not real or not finite."""
    arr = np.asarray(image)
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputDataError(
            f"{label}: the {role} image has shape {arr.shape}; metrics need one 2-D (H, W) image with H, W >= 1 "
            "(pass a single frame, not a stack)"
        )
    if arr.dtype.kind not in "uifb":
        raise InputDataError(f"{label}: the {role} image has dtype {arr.dtype}; metrics need real numbers")
    out = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(out)):
        bad = int(np.count_nonzero(~np.isfinite(out)))
        y, x = np.argwhere(~np.isfinite(out))[0]
        raise InputDataError(
            f"{label}: the {role} image has {bad} NaN/inf pixels (first at y={y}, x={x}); metrics need finite "
            "values: check the denoiser's output or replace the bad pixels"
        )
    return out


def _pair(clean: Any, test: Any, label: str) -> tuple[np.ndarray, np.ndarray]:
    c = as_float_image(clean, label, "reference")
    t = as_float_image(test, label, "test")
    if c.shape != t.shape:
        raise InputDataError(
            f"{label}: the reference image is {c.shape} but the test image is {t.shape}; both must have the same "
            "(H, W): crop or resample one to the other"
        )
    return c, t


def _check_range(data_range: float, label: str) -> float:
    value = float(data_range)
    if not (math.isfinite(value) and value > 0):
        raise InputDataError(
            f"{label}: data_range={data_range!r}; it must be a finite number > 0 (normally max - min of the whole "
            "clean movie, see movie_data_range)"
        )
    return value


# --- the paper's normalisation -----------------------------------------------------------------------------------
def normalize_paper(image: Any, label: str = "image") -> np.ndarray:
    """Min-max normalise to [0, 255] and round (float64): the paper's preprocessing before PSNR and SSIM.

    A constant image (max == min) maps to all zeros.
    """
    arr = as_float_image(image, label, "input")
    lo = float(arr.min())
    span = float(arr.max()) - lo
    if span <= 0:
        return np.zeros_like(arr)
    return np.round((arr - lo) * (255.0 / span))


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    diff = a - b
    return float(np.mean(diff * diff))


def _psnr(mse: float, data_range: float) -> float:
    if mse == 0:
        return math.inf
    return 20.0 * math.log10(data_range) - 10.0 * math.log10(mse)


def psnr_paper(clean: Any, test: Any, label: str = "image") -> float:
    """The paper's PSNR (dB): both images min-max normalised to [0, 255] and rounded, 20 log10(255 / sqrt(MSE)).

    Returns ``inf`` when the normalised images are identical.
    """
    c, t = _pair(clean, test, label)
    return _psnr(_mse(normalize_paper(c, label), normalize_paper(t, label)), 255.0)


def psnr_fixed(clean: Any, test: Any, data_range: float, label: str = "image") -> float:
    """PSNR (dB) in the clean image's own units: 20 log10(data_range / sqrt(MSE)), no per-image stretch.

    ``data_range`` is chosen by the caller and kept fixed for a whole movie, normally max - min of the clean
    movie (:func:`movie_data_range`). Returns ``inf`` when the images are identical.
    """
    c, t = _pair(clean, test, label)
    return _psnr(_mse(c, t), _check_range(data_range, label))


# --- SSIM ------------------------------------------------------------------------------------------------------
def _gaussian_taps(sigma: float = SSIM_SIGMA, radius: int = SSIM_RADIUS) -> np.ndarray:
    k = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-(k * k) / (2.0 * sigma * sigma))
    return taps / taps.sum()


_TAPS = _gaussian_taps()


def _filter_valid(image: np.ndarray) -> np.ndarray:
    """11 x 11 Gaussian (sigma 1.5) weighted mean, keeping only the pixels whose window lies inside the image."""
    out = correlate1d(image, _TAPS, axis=0)  # reflecting edges: they only reach the pixels cropped below
    out = correlate1d(out, _TAPS, axis=1)
    r = SSIM_RADIUS
    return out[r:-r, r:-r]


def _ssim(c: np.ndarray, t: np.ndarray, data_range: float, label: str) -> float:
    size = 2 * SSIM_RADIUS + 1
    if c.shape[0] < size or c.shape[1] < size:
        raise InputDataError(
            f"{label}: image of shape {c.shape} is smaller than the {size} x {size} SSIM window; SSIM needs "
            f"H, W >= {size}"
        )
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    mu_c = _filter_valid(c)
    mu_t = _filter_valid(t)
    var_c = _filter_valid(c * c) - mu_c * mu_c
    var_t = _filter_valid(t * t) - mu_t * mu_t
    cov = _filter_valid(c * t) - mu_c * mu_t
    num = (2.0 * mu_c * mu_t + c1) * (2.0 * cov + c2)
    den = (mu_c * mu_c + mu_t * mu_t + c1) * (var_c + var_t + c2)
    return float(np.mean(num / den))


def ssim_paper(clean: Any, test: Any, label: str = "image") -> float:
    """The paper's SSIM: both images min-max normalised to [0, 255] and rounded, an 11 x 11 Gaussian window
    (sigma 1.5), C1 = (0.01*255)^2, C2 = (0.03*255)^2, population (co)variances, the SSIM map cropped by 5 px at
    each border (only windows fully inside the image) and averaged. Images must be at least 11 x 11.
    """
    c, t = _pair(clean, test, label)
    return _ssim(normalize_paper(c, label), normalize_paper(t, label), 255.0, label)


def ssim_fixed(clean: Any, test: Any, data_range: float, label: str = "image") -> float:
    """SSIM as :func:`ssim_paper` but in the clean image's own units with a fixed ``data_range`` (no stretch):
    C1 = (0.01 * data_range)^2, C2 = (0.03 * data_range)^2.
    """
    c, t = _pair(clean, test, label)
    return _ssim(c, t, _check_range(data_range, label), label)


# --- no-reference: cross-correlation SNR ----------------------------------------------------------------------
def pearson_r(a: Any, b: Any, label: str = "images") -> float:
    """Normalised cross-correlation (Pearson r over all pixels) of two images; NaN when either is constant."""
    x, y = _pair(a, b, label)
    x = x - x.mean()
    y = y - y.mean()
    denom = math.sqrt(float(np.sum(x * x)) * float(np.sum(y * y)))
    if denom == 0:
        return math.nan
    return float(np.sum(x * y)) / denom


def cross_correlation_snr(a: Any, b: Any, label: str = "frames") -> float:
    """The paper's no-reference SNR (dB) of two frames of the same scene: 10 log10(r / (1 - r)), r = Pearson r.

    Edge cases never raise: r <= 0 (no shared signal) gives ``-inf``, r >= 1 (identical up to an affine map,
    e.g. a frame with itself) gives ``inf``, and a constant frame (r undefined) gives ``nan``.
    """
    r = pearson_r(a, b, label)
    if math.isnan(r):
        return math.nan
    if r <= 0:
        return -math.inf
    if r >= 1:
        return math.inf
    return 10.0 * math.log10(r / (1.0 - r))


# --- whole movies -------------------------------------------------------------------------------------------------
def movie_data_range(clean: FrameSource, label: str = "clean movie") -> float:
    """max - min over every frame of the clean movie: the default fixed data range of :func:`psnr_fixed`."""
    lo, hi = math.inf, -math.inf
    for t in range(len(clean)):
        frame = as_float_image(clean[t], f"{label}, frame {t}", "reference")
        lo = min(lo, float(frame.min()))
        hi = max(hi, float(frame.max()))
    if not hi > lo:
        raise InputDataError(
            f"{label}: every pixel of every frame is {lo}; a constant reference has no data range: pass "
            "data_range explicitly or check the file"
        )
    return hi - lo


def _check_lengths(clean: FrameSource, test: FrameSource) -> int:
    if len(clean) != len(test):
        raise InputDataError(
            f"the reference movie has {len(clean)} frames but the test movie has {len(test)}; score movies of "
            "the same length (select the same frames from both)"
        )
    return len(clean)


def movie_metrics(
    clean: FrameSource,
    test: FrameSource,
    data_range: float | None = None,
    frames: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Per-frame ``psnr_paper``, ``ssim_paper``, ``psnr_fixed`` and ``ssim_fixed`` of ``test`` against ``clean``.

    ``data_range`` defaults to :func:`movie_data_range` of ``clean`` (one range for every frame). ``frames``
    selects frame indices (default: all). Returns float64 arrays, one value per scored frame, plus ``frame``.
    """
    n = _check_lengths(clean, test)
    idx = list(range(n)) if frames is None else [int(i) for i in frames]
    rng = movie_data_range(clean) if data_range is None else _check_range(data_range, "movie")
    out: dict[str, list[float]] = {"psnr_paper": [], "ssim_paper": [], "psnr_fixed": [], "ssim_fixed": []}
    for t in idx:
        label = f"frame {t}"
        c, x = _pair(clean[t], test[t], label)
        cn, xn = normalize_paper(c, label), normalize_paper(x, label)
        out["psnr_paper"].append(_psnr(_mse(cn, xn), 255.0))
        out["ssim_paper"].append(_ssim(cn, xn, 255.0, label))
        out["psnr_fixed"].append(_psnr(_mse(c, x), rng))
        out["ssim_fixed"].append(_ssim(c, x, rng, label))
    result = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    result["frame"] = np.asarray(idx, dtype=np.int64)
    return result


def temporal_snr(movie: FrameSource, offset: int = 1) -> np.ndarray:
    """Cross-correlation SNR (dB) of frames (i, i + offset) for i = 0 .. T-1-offset (empty when T <= offset).

    ``offset=1`` is the paper's consecutive-frame SNR. For a denoiser that reads an N-frame window, frames i and
    i+1 share N-1 noisy inputs, so their correlation is inflated; ``offset=N`` compares outputs built from
    disjoint inputs.
    """
    if int(offset) < 1:
        raise InputDataError(f"offset={offset}: the frame offset must be an integer >= 1")
    n = len(movie)
    values = [
        cross_correlation_snr(movie[i], movie[i + offset], f"frames {i} and {i + offset}")
        for i in range(max(0, n - offset))
    ]
    return np.asarray(values, dtype=np.float64)
