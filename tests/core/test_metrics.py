"""The paper's metrics against scikit-image, the fixed-range variants and the cross-correlation SNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from emlive.core.errors import InputDataError
from emlive.core.metrics import (
    cross_correlation_snr,
    movie_data_range,
    movie_metrics,
    normalize_paper,
    pearson_r,
    psnr_fixed,
    psnr_paper,
    ssim_fixed,
    ssim_paper,
    temporal_snr,
)


def _pair(seed: int = 0, shape: tuple[int, int] = (64, 80), dose: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = gaussian_filter(rng.random(shape), 3.0) * dose * 5 + dose
    noisy = rng.poisson(clean).astype(np.float64)
    return clean, noisy


def _skimage_ssim(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    # skimage filters with a reflect-padded Gaussian (truncate 3.5 -> radius 5 at sigma 1.5: the same 11x11
    # window) and crops (win_size - 1) // 2 = 5 px at each border before averaging: the paper's definition.
    return float(
        structural_similarity(
            a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range
        )
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_paper_metrics_match_scikit_image_on_the_normalised_images(seed: int) -> None:
    clean, noisy = _pair(seed)
    nc, nn = normalize_paper(clean), normalize_paper(noisy)
    assert nc.min() == 0 and nc.max() == 255 and np.all(nc == np.round(nc))
    # Same definition and crop: agreement to floating-point rounding (tolerance 1e-9).
    assert psnr_paper(clean, noisy) == pytest.approx(peak_signal_noise_ratio(nc, nn, data_range=255), abs=1e-9)
    assert ssim_paper(clean, noisy) == pytest.approx(_skimage_ssim(nc, nn, 255.0), abs=1e-9)


def test_fixed_metrics_match_scikit_image_in_the_clean_units() -> None:
    clean, noisy = _pair(3)
    rng = float(clean.max() - clean.min()) * 1.3
    assert psnr_fixed(clean, noisy, rng) == pytest.approx(
        peak_signal_noise_ratio(clean, noisy, data_range=rng), abs=1e-9
    )
    assert ssim_fixed(clean, noisy, rng) == pytest.approx(_skimage_ssim(clean, noisy, rng), abs=1e-9)


def test_paper_metrics_forgive_an_intensity_error_that_fixed_metrics_catch() -> None:
    clean, noisy = _pair(4)
    smooth = gaussian_filter(noisy, 1.0)
    wrong_units = smooth * 3.0 + 50.0  # a gain and offset error: same picture, wrong intensities
    rng = float(clean.max() - clean.min())
    assert psnr_paper(clean, wrong_units) == pytest.approx(psnr_paper(clean, smooth), abs=0.2)
    assert ssim_paper(clean, wrong_units) == pytest.approx(ssim_paper(clean, smooth), abs=0.01)
    assert psnr_fixed(clean, wrong_units, rng) < psnr_fixed(clean, smooth, rng) - 10
    assert ssim_fixed(clean, wrong_units, rng) < ssim_fixed(clean, smooth, rng) - 0.1


def test_less_noise_scores_higher() -> None:
    clean, noisy = _pair(5)
    better = gaussian_filter(noisy, 1.0)
    rng = float(clean.max() - clean.min())
    assert psnr_paper(clean, better) > psnr_paper(clean, noisy)
    assert ssim_paper(clean, better) > ssim_paper(clean, noisy)
    assert psnr_fixed(clean, better, rng) > psnr_fixed(clean, noisy, rng)
    assert ssim_fixed(clean, better, rng) > ssim_fixed(clean, noisy, rng)


def test_identical_and_constant_images() -> None:
    clean, _ = _pair(6)
    assert psnr_paper(clean, clean) == math.inf
    assert psnr_fixed(clean, clean, 1.0) == math.inf
    assert ssim_paper(clean, clean) == pytest.approx(1.0)
    assert ssim_fixed(clean, clean.astype(np.float32), 10.0) == pytest.approx(1.0, abs=1e-6)
    assert np.all(normalize_paper(np.full((12, 12), 7.0)) == 0)
    assert np.isfinite(psnr_paper(np.full((12, 12), 7.0), clean[:12, :12]))


def test_integer_and_float32_inputs_are_accepted() -> None:
    clean, noisy = _pair(7)
    assert psnr_paper(clean.astype(np.float32), noisy.astype(np.uint16)) == pytest.approx(
        psnr_paper(clean, noisy), abs=0.05
    )


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros((8, 8, 2)), np.zeros((8, 8, 2)), "2-D"),
        (np.zeros((16, 16)), np.zeros((16, 17)), "same"),
        (np.zeros((8, 8)), np.zeros((8, 8)), "smaller than the 11 x 11"),
    ],
)
def test_bad_shapes_raise(a: np.ndarray, b: np.ndarray, match: str) -> None:
    with pytest.raises(InputDataError, match=match):
        ssim_paper(a, b)


def test_nan_names_the_frame() -> None:
    clean, noisy = _pair(8)
    movie = np.stack([noisy, noisy, noisy])
    movie[2, 5, 7] = np.nan
    with pytest.raises(InputDataError, match=r"frame 2.*NaN/inf.*y=5, x=7"):
        movie_metrics(np.stack([clean] * 3), movie)
    with pytest.raises(InputDataError, match="frame 9"):
        psnr_paper(clean, np.where(noisy > 0, np.inf, 0), label="frame 9")


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_fixed_range_must_be_positive(bad: float) -> None:
    clean, noisy = _pair(9)
    with pytest.raises(InputDataError, match="data_range"):
        psnr_fixed(clean, noisy, bad)


def test_cross_correlation_snr_formula_and_edge_cases() -> None:
    clean, noisy = _pair(10)
    other = np.random.default_rng(99).poisson(clean).astype(np.float64)  # same scene, independent noise
    r = float(np.corrcoef(noisy.ravel(), other.ravel())[0, 1])
    assert pearson_r(noisy, other) == pytest.approx(r, abs=1e-12)
    assert cross_correlation_snr(noisy, other) == pytest.approx(10 * math.log10(r / (1 - r)), abs=1e-9)
    assert cross_correlation_snr(noisy, noisy) == math.inf  # r >= 1
    assert cross_correlation_snr(noisy, 2 * noisy + 1) == math.inf
    assert cross_correlation_snr(noisy, -noisy) == -math.inf  # r <= 0
    assert math.isnan(cross_correlation_snr(noisy, np.ones_like(noisy)))  # r undefined


def test_movie_helpers_give_per_frame_arrays() -> None:
    rng = np.random.default_rng(11)
    clean = np.stack([gaussian_filter(rng.random((32, 32)), 2) * 50 + 10] * 6)
    noisy = rng.poisson(clean).astype(np.float32)
    out = movie_metrics(clean, noisy)
    assert set(out) == {"psnr_paper", "ssim_paper", "psnr_fixed", "ssim_fixed", "frame"}
    assert all(v.shape == (6,) for v in out.values())
    rng_all = movie_data_range(clean)
    assert out["psnr_fixed"][3] == pytest.approx(psnr_fixed(clean[3], noisy[3], rng_all))
    assert movie_metrics(clean, noisy, frames=[1, 4])["frame"].tolist() == [1, 4]
    assert temporal_snr(noisy).shape == (5,)
    assert temporal_snr(noisy, offset=5).shape == (1,)
    assert temporal_snr(noisy, offset=6).shape == (0,)
    with pytest.raises(InputDataError, match="frames"):
        movie_metrics(clean[:5], noisy)
