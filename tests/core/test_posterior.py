"""Posterior-mean inference on known cases: textbook shrinkage, the exact Poisson-Gamma posterior, the fallback,
the predicted gain, the noise model from a card against the simulator, and the self-supervised noise check."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.signal import correlate2d
from scipy.stats import gamma, poisson

from emlive.analysis.noise_stats import noise_model_for_training
from emlive.core.errors import ConfigError, InputDataError
from emlive.core.modelcard import NoiseModel
from emlive.core.posterior import (
    NoiseCheck,
    PixelNoise,
    Posterior,
    PriorCalibration,
    posterior,
    predicted_gain_db,
)
from emlive.core.simulate import SyntheticMovie, detector_truth, make_config

pytestmark = pytest.mark.timeout(60)

COUNTING = PixelNoise(slope=1.0, intercept=0.0, offset=0.0, correlated=False)


def _gaussian_noise(mu0: float, noise_var: float) -> PixelNoise:
    """A noise model whose variance at the prior mean mu0 is ``noise_var`` (Gaussian, read-noise dominated)."""
    return PixelNoise(slope=1.0, intercept=noise_var - mu0, offset=None, correlated=False)


def test_constant_prior_gives_the_textbook_shrinkage() -> None:
    """x ~ N(mu0, sx2), y = x + N(0, sn2): posterior mean/var in closed form; the Monte-Carlo MSE matches."""
    rng = np.random.default_rng(0)
    mu0, sx2, sn2, n = 100.0, 4.0, 9.0, 200_000
    x = mu0 + math.sqrt(sx2) * rng.standard_normal(n)
    y = x + math.sqrt(sn2) * rng.standard_normal(n)
    post = posterior(np.full(n, mu0), np.full(n, math.log(sx2)), y, _gaussian_noise(mu0, sn2))
    np.testing.assert_allclose(post.mean, (sn2 * mu0 + sx2 * y) / (sx2 + sn2), rtol=1e-6)
    np.testing.assert_allclose(post.std, math.sqrt(sx2 * sn2 / (sx2 + sn2)), rtol=1e-6)
    np.testing.assert_allclose(post.prior_std, 2.0, rtol=1e-6)
    np.testing.assert_allclose(post.noise_std, 3.0, rtol=1e-6)
    err2 = (post.mean.astype(np.float64) - x) ** 2
    predicted = sx2 * sn2 / (sx2 + sn2)
    assert abs(err2.mean() - predicted) < 4 * err2.std() / math.sqrt(n)
    measured_gain = 10 * math.log10(((mu0 - x) ** 2).mean() / err2.mean())
    assert predicted_gain_db(np.full(n, sx2), np.full(n, sn2)) == pytest.approx(10 * math.log10(1 + sx2 / sn2))
    assert measured_gain == pytest.approx(10 * math.log10(1 + sx2 / sn2), abs=0.05)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_poisson_gamma_posterior_matches_numerical_integration(k: int) -> None:
    """Below 1 e-/px a counting detector gets the exact posterior of a Gamma prior x Poisson likelihood."""
    m, v = 0.5, 0.2  # prior mean and variance, electrons
    grid = np.linspace(1e-6, 30.0, 300_001)
    density = gamma.pdf(grid, a=m * m / v, scale=v / m) * poisson.pmf(k, grid)
    density /= np.trapezoid(density, grid)
    mean = np.trapezoid(grid * density, grid)
    var = np.trapezoid((grid - mean) ** 2 * density, grid)
    exact = posterior(np.array([m]), np.log([v]), np.array([float(k)]), COUNTING)
    assert exact.mean[0] == pytest.approx(mean, rel=1e-4)
    assert exact.std[0] ** 2 == pytest.approx(var, rel=1e-4)
    gauss = posterior(np.array([m]), np.log([v]), np.array([float(k)]), COUNTING, exact_below=0.0)
    assert gauss.mean[0] == pytest.approx(exact.mean[0], rel=1e-6), "the posterior MEANS agree (s_n^2 = var(mu))"
    assert gauss.std[0] ** 2 == pytest.approx(v * m / (v + m), rel=1e-6)
    assert abs(gauss.std[0] - exact.std[0]) > 0.01, "... the variances do not (unless k = m)"


def test_exact_branch_only_for_pure_poisson_below_the_threshold() -> None:
    mu, lv, y = np.array([0.5, 5.0]), np.log([0.2, 0.2]), np.array([3.0, 3.0])
    exact = posterior(mu, lv, y, COUNTING)
    gauss = posterior(mu, lv, y, COUNTING, exact_below=0.0)
    assert exact.std[0] != pytest.approx(gauss.std[0]) and exact.std[1] == pytest.approx(gauss.std[1])
    integrating = PixelNoise(slope=8.0, intercept=64.0 - 800.0, offset=100.0, correlated=False)  # 1 e- read noise
    assert integrating.poisson_offset is None and COUNTING.poisson_offset == 0.0
    quiet = PixelNoise(slope=8.0, intercept=4.0 - 800.0, offset=100.0, correlated=False)  # 0.25 e- read noise
    assert quiet.poisson_offset == 100.0
    correlated = PixelNoise(slope=1.0, intercept=0.0, offset=0.0, correlated=True)
    assert correlated.poisson_offset is None


def test_fallback_and_a_tight_prior_return_the_blind_output() -> None:
    mu, y = np.array([[50.0, 60.0]]), np.array([[80.0, 20.0]])
    lv = np.log([[4.0, 9.0]])
    off = posterior(mu, lv, y, COUNTING, reopen=False)
    np.testing.assert_array_equal(off.mean, mu.astype(np.float32))
    np.testing.assert_allclose(off.std, [[2.0, 3.0]], rtol=1e-6)
    tight = posterior(mu, np.log([[1e-6, 1e-6]]), y, COUNTING)
    np.testing.assert_allclose(tight.mean, mu, rtol=1e-6)


def test_predicted_gain_per_region() -> None:
    prior, noise = np.array([[1.0, 3.0], [1.0, 3.0]]), np.ones((2, 2))
    mask = np.array([[False, True], [False, True]])
    assert predicted_gain_db(prior, noise, mask) == pytest.approx(10 * math.log10(4.0))
    post = prior * noise / (prior + noise)
    assert predicted_gain_db(prior, noise) == pytest.approx(10 * math.log10(prior.mean() / post.mean()))
    assert predicted_gain_db(np.zeros(3), np.ones(3)) == 0.0


def test_float32_out_any_shape() -> None:
    shape = (2, 3, 4)
    post = posterior(np.full(shape, 10, dtype=np.uint16), np.zeros(shape, np.float16), np.full(shape, 12), COUNTING)
    assert isinstance(post, Posterior)
    for arr in (post.mean, post.std, post.prior_std, post.noise_std):
        assert arr.dtype == np.float32 and arr.shape == shape


def test_bad_inputs_name_the_value() -> None:
    with pytest.raises(InputDataError, match=r"prior_var: minimum -1 < 0"):
        predicted_gain_db(np.array([1.0, -1.0]), np.ones(2))
    with pytest.raises(InputDataError, match=r"mu \[2\], log_var_prior \[3\], observed \[2\]"):
        posterior(np.ones(2), np.ones(3), np.ones(2), COUNTING)
    with pytest.raises(InputDataError, match=r"observed: 1 NaN/inf"):
        posterior(np.ones(2), np.ones(2), np.array([1.0, np.nan]), COUNTING)
    with pytest.raises(ConfigError, match=r"slope=-1"):
        PixelNoise(slope=-1.0, intercept=0.0, offset=None, correlated=False)
    with pytest.raises(ConfigError, match=r"exact_below=-1"):
        posterior(np.ones(2), np.ones(2), np.ones(2), COUNTING, exact_below=-1)
    with pytest.raises(ConfigError, match=r"gain=None"):
        PixelNoise.from_card(NoiseModel(method="difference", recommended_blind_spot=(1, 1)))


def test_from_card_divides_by_the_kernel_sum() -> None:
    """The card's kernel is the normalised noise correlation; its sum is 1 / (sum of squared kernel weights)."""
    kernel = make_config(correlated_noise="isotropic").kernel
    assert kernel is not None
    rho = correlate2d(kernel, kernel) / np.sum(kernel**2)
    card = NoiseModel(
        method="difference", gain=8.0, intercept=9.0 - 800.0, offset=100.0, kernel=rho.round(4).tolist(),
        recommended_blind_spot=(3, 3),
    )  # fmt: skip
    noise = PixelNoise.from_card(card)
    assert noise.correlated and noise.offset == 100.0
    assert noise.slope == pytest.approx(8.0 * np.sum(kernel**2), rel=0.01)
    assert noise.intercept == pytest.approx((9.0 - 800.0) * np.sum(kernel**2), rel=0.01)


@pytest.mark.parametrize(
    "detector",
    [
        {"dose": 5.0},
        {"dose": 20.0, "gain": 8.0, "offset": 100.0, "read_noise": 3.0, "correlated_noise": "isotropic"},
    ],
    ids=["counting", "integrating"],
)
def test_card_noise_model_reproduces_the_simulated_pixel_variance(detector: dict[str, object]) -> None:
    """The noise model measured on a simulated movie (as training does) predicts the true per-pixel variance of
    noisy - clean (Poisson x gain, read noise, charge sharing, uint16 rounding) within 3%."""
    cfg = make_config(height=256, width=256, frames=9, seed=3, **detector)
    movie = SyntheticMovie(cfg)
    card = noise_model_for_training(movie, (3, 3))
    assert card is not None
    noise = PixelNoise.from_card(card)
    clean = np.stack([movie.clean(t) for t in range(len(movie))]).astype(np.float64)
    noisy = np.stack([np.asarray(movie[t]) for t in range(len(movie))]).astype(np.float64)
    assert ((noisy - clean) ** 2).mean() / noise.variance(clean).mean() == pytest.approx(1.0, abs=0.03)
    truth = detector_truth(cfg)
    assert noise.correlated == (truth["kernel"] is not None)
    assert (noise.poisson_offset is not None) == (truth["kernel"] is None and cfg.read_noise == 0)


@pytest.fixture(scope="module")
def known_prior() -> tuple[np.ndarray, np.ndarray, np.ndarray, PixelNoise]:
    """A simulated counting movie (5 e-/px) and a prior of KNOWN error: mu = truth + N(0, 2 counts^2)."""
    cfg = make_config(height=128, width=128, frames=2, dose=5.0, seed=5)
    movie = SyntheticMovie(cfg)
    clean = np.stack([movie.clean(t) for t in range(2)]).astype(np.float64)
    noisy = np.stack([np.asarray(movie[t]) for t in range(2)]).astype(np.float64)
    prior_var = 2.0
    mu = clean + math.sqrt(prior_var) * np.random.default_rng(1).standard_normal(clean.shape)
    truth = PixelNoise(slope=cfg.gain, intercept=-cfg.gain * cfg.offset, offset=cfg.offset, correlated=False)
    return mu, np.full(mu.shape, math.log(prior_var)), noisy, truth


def test_noise_check_passes_with_the_right_noise_model(known_prior: tuple) -> None:
    mu, lv, y, truth = known_prior
    check = NoiseCheck.measure(mu, lv, y, truth)
    assert check.ok and check.ratio == pytest.approx(1.0, abs=0.05), check.message
    assert "agree" in check.message


@pytest.mark.parametrize(("factor", "says"), [(2.0, "quieter"), (0.5, "noisier")])
def test_noise_check_detects_a_wrong_gain(known_prior: tuple, factor: float, says: str) -> None:
    mu, lv, y, truth = known_prior
    wrong = PixelNoise(truth.slope * factor, truth.intercept * factor, truth.offset, truth.correlated)
    check = NoiseCheck.measure(mu, lv, y, wrong)
    assert not check.ok
    assert says in check.message and "blind output" in check.message
    assert check.to_dict()["ok"] is False


@pytest.fixture(scope="module")
def two_priors() -> tuple[np.ndarray, np.ndarray, np.ndarray, PixelNoise, np.ndarray]:
    """A simulated counting movie (5 e-/px) and a prior whose true error variance is 0.5 counts^2 on the left half
    of each frame and 4 on the right (``true_var``)."""
    cfg = make_config(height=256, width=256, frames=4, dose=5.0, seed=6)
    movie = SyntheticMovie(cfg)
    clean = np.stack([movie.clean(t) for t in range(4)]).astype(np.float64)
    noisy = np.stack([np.asarray(movie[t]) for t in range(4)]).astype(np.float64)
    true_var = np.where(np.arange(256) < 128, 0.5, 4.0)[None, None, :] * np.ones_like(clean)
    mu = clean + np.sqrt(true_var) * np.random.default_rng(2).standard_normal(clean.shape)
    truth = PixelNoise(slope=cfg.gain, intercept=-cfg.gain * cfg.offset, offset=cfg.offset, correlated=False)
    return mu, noisy, truth, true_var, clean


def test_prior_calibration_corrects_a_head_wrong_by_a_different_factor_where_the_prior_is_tight_or_loose(
    two_priors: tuple,
) -> None:
    """The head says 1/8 of the true variance on the left (overconfident), 2x on the right: the table measured
    without the truth brings both halves within 15% of it, and the gain the calibrated head predicts is measured."""
    mu, y, noise, true_var, clean = two_priors
    head = np.log(true_var * np.where(true_var < 1, 1 / 8, 2.0))
    table = PriorCalibration.fit(mu, head, y, noise, 1.0)  # frames of std 1: z-units are counts
    assert table.pixels == mu.size and len(table.log_var_z) == 3  # the bins of each head value pooled, and one mixed
    calibrated = np.exp(table.apply(head))
    for half in (true_var < 1, true_var > 1):
        assert calibrated[half].mean() == pytest.approx(true_var[half].mean(), rel=0.15)
    post = posterior(mu, table.apply(head), y, noise, exact_below=0)
    measured = 10 * np.log10(((mu - clean) ** 2).mean() / ((post.mean - clean) ** 2).mean())
    predicted = predicted_gain_db(post.prior_std.astype(np.float64) ** 2, post.noise_std.astype(np.float64) ** 2)
    assert measured == pytest.approx(predicted, rel=0.15)
    uncalibrated = posterior(mu, head, y, noise, exact_below=0)
    assert measured > 10 * np.log10(((mu - clean) ** 2).mean() / ((uncalibrated.mean - clean) ** 2).mean()) + 0.05


def test_prior_calibration_leaves_a_calibrated_head_alone_and_pools_a_constant_one(two_priors: tuple) -> None:
    mu, y, noise, true_var, _ = two_priors
    std = np.array([2.0, 0.5, 1.0, 3.0])  # the frames' stds: the head's z-units differ from counts per frame
    table = PriorCalibration.fit(mu, np.log(true_var), y, noise, std)
    assert np.all(np.abs(np.asarray(table.log_scale)) < 0.2), table.log_scale
    flat = np.full(mu.shape, 7.0)  # one prior mean and variance everywhere: one ratio, one pooled bin
    pooled = PriorCalibration.fit(flat, np.zeros(mu.shape), y, noise, 1.0)
    excess = float(np.mean((y - flat) ** 2) - np.mean(noise.variance(flat)))
    assert len(pooled.log_var_z) == 1 and math.exp(pooled.log_scale[0]) == pytest.approx(excess, rel=1e-9)


def test_prior_calibration_bins_by_the_heads_output_in_z_units(two_priors: tuple) -> None:
    """Frames normalised by different stds: the same head output (z-units) gets the same scale in every frame."""
    mu, y, noise, true_var, _ = two_priors
    std = np.array([2.0, 0.5, 1.0, 3.0])[:, None, None]
    head_z = np.log(true_var / 4.0) - 2.0 * np.log(std)  # 4x overconfident everywhere, in each frame's units
    table = PriorCalibration.fit(mu, head_z + 2.0 * np.log(std), y, noise, std.ravel())
    scales = np.exp(table.log_scale)
    assert np.all((scales > 2.5) & (scales < 6.0)), scales
    np.testing.assert_allclose(table.apply(head_z) - head_z, np.interp(head_z, table.log_var_z, table.log_scale),
                               atol=1e-5)  # fmt: skip
    with pytest.raises(InputDataError, match="a positive std per frame"):
        PriorCalibration.fit(mu, head_z, y, noise, np.ones(3))


@pytest.mark.parametrize(
    ("centres", "scales", "says"),
    [((0.0, 0.0), (0.0, 0.0), "strictly increasing"), ((0.0,), (0.0, 1.0), "1 bin centres and 2 scales"),
     ((0.0, float("nan")), (0.0, 0.0), "finite"), ((), (), "0 bin centres")],
)  # fmt: skip
def test_a_corrupt_calibration_table_is_refused_by_name(centres: tuple, scales: tuple, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        PriorCalibration(centres, scales, 1)


@pytest.mark.parametrize(
    ("noise", "electrons"),
    [
        (PixelNoise(slope=2.0, intercept=9.0 - 200.0, offset=100.0, correlated=False), (0.5, 30_000.0)),  # integrating
        (COUNTING, (0.05, 200.0)),  # counting: the exact branch below 1 e-/px (float64), the Gaussian one above
    ],
)
def test_the_float32_posterior_is_within_float32_rounding_of_float64_far_below_the_noise(
    noise: PixelNoise, electrons: tuple[float, float]
) -> None:
    """Realistic frames (doses spanning the detector's range, priors from 100x tighter to 100x looser than the
    noise): the float32 posterior against the textbook formula in float64 on the same float32 inputs (what the
    runtime passes), pixel by pixel in units of that pixel's noise std."""
    rng = np.random.default_rng(3)
    shape = (128, 128)
    x = np.exp(rng.uniform(*np.log(electrons), shape))
    offset = noise.offset or 0.0
    mu = (offset + noise.slope * x * rng.uniform(0.9, 1.1, shape)).astype(np.float32)
    noise_var = noise.variance(mu)
    log_var = np.log(noise_var * np.exp(rng.uniform(np.log(0.01), np.log(100.0), shape))).astype(np.float32)
    y = (offset + noise.slope * rng.poisson(x) + rng.normal(0, 1.0, shape)).astype(np.float32)
    post = posterior(mu, log_var, y, noise)
    assert post.mean.dtype == post.std.dtype == np.float32
    m, pv, obs = mu.astype(np.float64), np.exp(log_var.astype(np.float64)), y.astype(np.float64)
    mean64 = (noise_var * m + pv * obs) / (pv + noise_var)
    var64 = pv * noise_var / (pv + noise_var)
    low = (m - offset) / noise.slope < 1.0
    if noise.poisson_offset is not None:  # the exact branch's pixels: checked against float64 elsewhere
        mean64[low] = post.mean[low]
        var64[low] = np.square(post.std[low], dtype=np.float64)
        assert low.any()
    err = np.abs(post.mean - mean64) / np.sqrt(noise_var)
    assert float(err.max()) < 1e-5, f"max |float32 - float64| = {float(err.max()):.2e} noise std"
    np.testing.assert_allclose(post.std, np.sqrt(var64), rtol=1e-5)
    np.testing.assert_allclose(post.noise_std, np.sqrt(noise_var), rtol=1e-6)
