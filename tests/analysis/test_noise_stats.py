"""The noise model: correlation, confidence, Poisson-Gaussian parameters and the recommended blind spot.

The realistic movies are what `emlive noise-stats` failed on (issue 12): a drifting (0.3 px/frame) crystal with
5 px lattice fringes over most of the field, 20 e-/px/frame, from an integrating detector (gain, offset, read
noise, charge sharing). The old single-pair difference recommended 31 x 31 there; the right answer is 3 x 3.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tifffile
from scipy.ndimage import convolve

from emlive.analysis.noise_stats import (
    MAX_NETWORK_BLIND_SPOT,
    correlation_table,
    decide_blind_spot,
    estimate_noise,
    fourier_shift,
    noise_correlation,
    noise_model_for_training,
    recommend_blind_spot,
    register_shift,
)
from emlive.core.errors import ConfigError, InputDataError
from emlive.core.modelcard import ModelCard
from emlive.core.readers import open_movie
from emlive.core.simulate import SyntheticMovie, detector_truth, make_config, simulate_movie

if TYPE_CHECKING:
    from conftest import Synth

EXPECTED = {"none": (1, 1), "isotropic": (3, 3), "horizontal": (1, 3), "vertical": (3, 1)}

# The integrating detector at high dose over a drifting crystal (issue 12). Particles sit still on the film (they
# drift with it): particles that move on their own are covered by test_particles_moving_on_their_own below.
REALISTIC: dict[str, Any] = {
    "height": 512,
    "width": 512,
    "frames": 32,
    "dose": 20.0,
    "gain": 8.0,
    "offset": 100.0,
    "read_noise": 10.0,
    "correlated_noise": "isotropic",
    "drift": 0.3,
    "field_lattice_contrast": 0.8,
    "field_lattice_spacing": 5.0,
    "field_lattice_coverage": 0.8,
    "n_particles": 40,
    "particle_contrast": -0.7,
    "particle_speed": 0.0,
    "rotation": 0.0,
    "growth": 0.0,
}


def _realistic(**overrides: Any) -> np.ndarray:
    return simulate_movie(make_config(**{**REALISTIC, **overrides}))[0]


@pytest.fixture(scope="module")
def realistic() -> np.ndarray:
    return _realistic()


@pytest.mark.timeout(60)
def test_realistic_drifting_lattice_gives_3x3(realistic: np.ndarray) -> None:
    """The old code recommended 31 x 31 on this movie (the moving lattice stayed in the frame difference)."""
    est = estimate_noise(realistic[:16, :256, :256])
    assert est.blind_spot == (3, 3)
    assert est.decision.confidence > 0.99 and not est.decision.beyond_network
    assert est.correlation.method == "difference" and est.correlation.pairs == 10  # 5 triplets, lags 1 and 2
    lags = [1, 2] * 5
    for (dy, dx), lag in zip(est.correlation.shifts, lags, strict=True):  # the drift, to better than 0.05 px
        assert np.hypot(dy, dx) == pytest.approx(0.3 * lag, abs=0.05)
    assert max(est.correlation.ring_max[3:]) < 0.03  # no lattice left in the noise


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_realistic_movie_each_detector_kernel(kind: str) -> None:
    movie = _realistic(height=160, width=160, frames=8, correlated_noise=kind, seed=4)
    assert recommend_blind_spot(noise_correlation(movie)) == EXPECTED[kind]


@pytest.mark.timeout(60)
def test_gain_and_read_noise_within_3_percent(realistic: np.ndarray) -> None:
    """Charge sharing keeps 0.21 of the per-pixel variance; the estimate corrects for it from the measured kernel.
    Spread over seeds 0-5 at this size (512 x 512 x 32): gain within 0.8 %, read noise within 1.9 % (the read noise
    comes from extrapolating the variance to zero signal: at 256 x 256 x 32 it spreads to 4.6 %)."""
    truth = detector_truth(make_config(**REALISTIC))
    est = estimate_noise(realistic, offset=truth["offset"])
    pg = est.poisson_gaussian
    assert pg is not None and pg.read_noise is not None
    assert pg.gain == pytest.approx(truth["gain"], rel=0.03)
    assert pg.read_noise == pytest.approx(truth["read_noise"], rel=0.03)
    assert pg.pixel_variance_factor == pytest.approx(truth["kernel_sum_of_squares"], rel=0.03)
    assert pg.gain_se < 0.03 * pg.gain
    without_offset = estimate_noise(realistic[:9, :256, :256]).poisson_gaussian
    assert without_offset is not None and without_offset.read_noise is None and without_offset.offset is None
    expected_intercept = truth["read_noise"] ** 2 - truth["gain"] * truth["offset"]
    assert without_offset.intercept == pytest.approx(expected_intercept, rel=0.05)


@pytest.mark.timeout(60)
def test_particles_moving_on_their_own_keep_the_blind_spot() -> None:
    movie = _realistic(height=192, width=192, frames=12, particle_speed=0.3, rotation=0.5, growth=0.02, seed=2)
    assert estimate_noise(movie).blind_spot == (3, 3)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", list(EXPECTED))
def test_movie_blind_spot_from_a_frame_pair(kind: str, synth: type[Synth]) -> None:
    movie = synth.movie(synth.scene((160, 192)), 3, seed=2, kernel=kind)
    corr = noise_correlation(movie, frame=1)
    assert corr.method == "difference"
    assert corr.frames == (1, 2) and corr.pairs == 1
    assert noise_correlation(movie).pairs == 2  # a triplet: lags 1 and 2
    assert recommend_blind_spot(corr) == EXPECTED[kind]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["none", "horizontal", "vertical"])
def test_single_image_blind_spot_from_smooth_residual(kind: str, synth: type[Synth]) -> None:
    image = synth.movie(synth.scene((192, 192), seed=3), 1, seed=4, kernel=kind)[0]
    corr = noise_correlation(image)
    assert corr.method == "residual"
    assert recommend_blind_spot(corr) == EXPECTED[kind]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_image_with_121_smoothing_gives_5x5(seed: int, synth: type[Synth]) -> None:
    """Noise smoothed by [1,2,1] x [1,2,1]: correlation 0.67 / 0.17 / 0 at 1 / 2 / 3 px, 0.11 at (2, 1): 5 x 5.
    The plain residual's negative lobe at 3 px made it 7 x 7 before; the deconvolution removes it."""
    k = np.array([1.0, 2.0, 1.0]) / 4.0
    image = np.random.default_rng(seed + 10).poisson(synth.scene((192, 192), seed=seed)).astype(np.float64)
    image = convolve(image, np.outer(k, k), mode="reflect")
    est = estimate_noise(image)
    assert est.blind_spot == (5, 5)
    assert est.correlation.at(0, 1) == pytest.approx(2 / 3, abs=0.06)
    assert est.correlation.at(0, 3) > -0.05  # no negative lobe left
    assert est.poisson_gaussian is None and any("need a movie" in w for w in est.warnings)


@pytest.mark.timeout(60)
def test_never_recommends_what_the_network_cannot_build(caplog: pytest.LogCaptureFixture) -> None:
    """Noise correlated over 11 px (a 11 x 11 box kernel): capped at 15 x 15, with a warning that says what to do."""
    rng = np.random.default_rng(0)
    box = np.ones((11, 11)) / 121.0
    movie = np.stack([convolve(rng.poisson(50.0, (160, 160)).astype(np.float64), box) for _ in range(6)])
    with caplog.at_level(logging.WARNING, logger="emlive.analysis.noise_stats"):
        est = estimate_noise(movie)
    assert est.blind_spot == (MAX_NETWORK_BLIND_SPOT, MAX_NETWORK_BLIND_SPOT)
    assert est.decision.beyond_network and max(est.decision.needed) > MAX_NETWORK_BLIND_SPOT
    assert "Bin the data" in caplog.text
    corr = noise_correlation(movie)
    for threshold in (0.01, 0.05, 0.1, 0.5):
        h, w = recommend_blind_spot(corr, threshold)
        assert h <= MAX_NETWORK_BLIND_SPOT and w <= MAX_NETWORK_BLIND_SPOT and h % 2 == w % 2 == 1


@pytest.mark.timeout(60)
def test_confidence_and_uncertain_offsets(synth: type[Synth]) -> None:
    movie = synth.movie(synth.scene((192, 192)), 12, kernel="isotropic")
    corr = noise_correlation(movie)
    assert corr.se is not None and corr.se.shape == corr.correlation.shape
    assert corr.se[15, 15] == 0 and 0 < corr.se[15, 16] < 0.02
    clear = decide_blind_spot(corr, 0.1)
    assert clear.blind_spot == (3, 3) and clear.confidence > 0.99 and clear.label == "high"
    borderline = decide_blind_spot(corr, corr.at(0, 1))  # the threshold right at a measured correlation
    assert borderline.confidence < 0.6 and borderline.label == "low"
    assert (0, 1) in borderline.uncertain or (0, -1) in borderline.uncertain


@pytest.mark.timeout(60)
def test_registration_is_sub_pixel_and_the_shift_keeps_the_noise() -> None:
    movie = SyntheticMovie(make_config(**{**REALISTIC, "frames": 2, "drift_angle": 30.0, "dtype": "float32"}))
    a, b = movie.clean(0).astype(np.float64), movie.clean(1).astype(np.float64)
    dy, dx = register_shift(a, b)
    assert dy == pytest.approx(0.3 * np.sin(np.radians(30)), abs=0.02)
    assert dx == pytest.approx(0.3 * np.cos(np.radians(30)), abs=0.02)
    noise = np.random.default_rng(1).standard_normal((101, 101))
    moved = fourier_shift(noise, 0.37, -0.21)
    assert moved.var() == pytest.approx(noise.var(), rel=1e-9)  # all-pass: the noise's spectrum is kept
    np.testing.assert_allclose(fourier_shift(noise, 3, -2), np.roll(noise, (3, -2), axis=(0, 1)), atol=1e-9)


@pytest.mark.timeout(60)
def test_map_shape_symmetry_profiles_and_json(synth: type[Synth]) -> None:
    movie = synth.movie(synth.scene((96, 96)), 2, kernel="horizontal")
    est = estimate_noise(movie, max_distance=6)
    corr = est.correlation
    assert corr.correlation.shape == (13, 13)
    assert corr.offsets.tolist() == list(range(-6, 7))
    assert corr.at(0, 0) == pytest.approx(1.0)
    np.testing.assert_allclose(corr.correlation, corr.correlation[::-1, ::-1], atol=1e-12)
    assert corr.at(0, 1) > 0.4 > abs(corr.at(1, 0))
    assert corr.along_x.shape == corr.along_y.shape == corr.ring_max.shape == (7,)
    assert corr.along_x[1] == pytest.approx(corr.at(0, 1))
    d = json.loads(json.dumps(est.to_dict()))
    assert d["max_distance"] == 6 and len(d["correlation"]) == 13 and len(d["standard_error"]) == 13
    assert d["blind_spot"] == [1, 3] and 0 <= d["confidence"] <= 1 and len(d["kernel"]) == 5
    assert d["poisson_gaussian"]["gain"] > 0
    table = correlation_table(corr)
    assert len(table.splitlines()) == 8 and "+1.000" in table


@pytest.mark.timeout(60)
def test_reads_a_movie_file(tmp_path: Path, synth: type[Synth]) -> None:
    path = tmp_path / "movie.tif"
    tifffile.imwrite(
        path, synth.movie(synth.scene((96, 96)), 4, kernel="vertical").astype(np.uint16), photometric="minisblack"
    )
    with open_movie(path) as movie:
        assert noise_correlation(movie, frame=2).frames == (2, 3)
        assert recommend_blind_spot(noise_correlation(movie)) == (3, 1)


@pytest.mark.timeout(60)
def test_bad_arguments_raise_clear_errors(synth: type[Synth]) -> None:
    movie = synth.movie(synth.scene((64, 64)), 3)
    with pytest.raises(ConfigError, match=r"frame=2.*0 to 1"):
        noise_correlation(movie, frame=2)
    with pytest.raises(ConfigError, match="max_distance=40"):
        noise_correlation(movie, max_distance=40)
    with pytest.raises(ConfigError, match="max_distance=0"):
        noise_correlation(movie, max_distance=0)
    with pytest.raises(ConfigError, match="at least 2 frames"):
        noise_correlation(movie[0], method="difference")
    with pytest.raises(ConfigError, match="method='fft'"):
        noise_correlation(movie, method="fft")
    with pytest.raises(ConfigError, match="max_pairs=0"):
        noise_correlation(movie, max_pairs=0)
    with pytest.raises(InputDataError, match="no noise"):
        noise_correlation(np.stack([movie[0], movie[0]]))
    bad = movie.copy()
    bad[1, 3, 3] = np.inf
    with pytest.raises(InputDataError, match="frame 1"):
        noise_correlation(bad)
    corr = noise_correlation(movie)
    for threshold in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="threshold"):
            recommend_blind_spot(corr, threshold)


@pytest.mark.timeout(60)
def test_noise_model_for_the_model_card(realistic: np.ndarray, caplog: pytest.LogCaptureFixture) -> None:
    """What training writes into the card; it warns when the configured blind spot is too small."""
    with caplog.at_level(logging.WARNING, logger="emlive.analysis.noise_stats"):
        model = noise_model_for_training(realistic[:, :256, :256], (1, 1), frames=(0, 24))  # type: ignore[arg-type]
    assert model is not None
    assert model.recommended_blind_spot == (3, 3) and model.method == "difference"
    assert model.pairs == 12 and model.frames_used == 18  # 6 triplets spread over frames 0..23
    assert model.gain == pytest.approx(REALISTIC["gain"], rel=0.05) and model.read_noise is None
    assert len(model.kernel) == 5 and model.kernel[2][2] == 1.0
    assert "blind_spot [1, 1] is smaller than the 3 x 3" in caplog.text
    card = ModelCard(noise=model)
    again = ModelCard.from_json(card.to_json())
    assert again.noise == model
    old = json.loads(card.to_json())
    del old["noise"]  # a card written before the noise model existed
    assert ModelCard.from_json(json.dumps(old)).noise is None
    tiny = noise_model_for_training(realistic[:, :40, :40], (3, 3))  # type: ignore[arg-type]
    assert tiny is None and "no noise model" in caplog.text


@pytest.mark.timeout(180)
def test_training_writes_the_noise_model_into_the_card(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from emlive.core.modelcard import load_checkpoint
    from emlive.core.simulate import write_simulation
    from emlive.train.api import train
    from emlive.train.config import load_config

    sim = make_config(**{**REALISTIC, "height": 96, "width": 96, "frames": 8, "n_particles": 2,
                         "radius_min": 6.0, "radius_max": 12.0})  # fmt: skip
    files = write_simulation(sim, tmp_path / "sim")
    overrides = [f"data.train={files.noisy}", f"output.root={tmp_path / 'runs'}", "network.blind_spot=[1,1]"]
    overrides += ["network.width=8", "network.scales=3", "network.blocks=1", "data.crop_size=32"]
    overrides += ["data.val_crop_size=32", "data.val_fraction=0", "optim.batch_size=2", "optim.recursive_factor=1"]
    overrides += ["optim.epochs=1", "optim.max_steps=1", "optim.max_minutes=null", "optim.num_workers=0"]
    with caplog.at_level(logging.WARNING, logger="emlive.analysis.noise_stats"):
        result = train(load_config("synthetic-small", overrides))
    noise = load_checkpoint(result.model)[1].noise
    assert noise is not None and noise.method == "difference" and noise.pairs == 4  # 2 triplets of 8 frames
    assert noise.recommended_blind_spot == (3, 3) and noise.gain is not None and noise.gain > 0
    assert json.loads((result.run_dir / "model_card.json").read_text())["noise"]["recommended_blind_spot"] == [3, 3]
    assert "blind_spot [1, 1] is smaller than the 3 x 3" in caplog.text


@pytest.mark.timeout(60)
def test_noise_stats_command_reports_the_detector(tmp_path: Path, realistic: np.ndarray) -> None:
    from typer.testing import CliRunner

    from emlive.cli import app

    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, realistic[:9, :192, :192], photometric="minisblack")
    text = CliRunner().invoke(app, ["noise-stats", str(path), "--offset", "100", "-o", str(tmp_path / "a.png")])
    assert text.exit_code == 0, text.output
    assert "recommended blind spot: 3 x 3" in text.stdout and "confidence" in text.stdout
    assert "gain" in text.stdout and "read noise" in text.stdout and "blind_spot: [3, 3]" in text.stdout
    as_json = CliRunner().invoke(app, ["noise-stats", str(path), "--json", "-o", str(tmp_path / "b.png")])
    payload = json.loads(as_json.stdout)
    assert payload["blind_spot"] == [3, 3] and payload["pairs"] == 6 and payload["confidence"] > 0.99
    assert payload["poisson_gaussian"]["read_noise"] is None  # no --offset: the combined term only
    assert payload["poisson_gaussian"]["gain"] == pytest.approx(8.0, rel=0.1)
