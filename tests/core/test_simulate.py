"""The synthetic-movie simulator: configuration rules, determinism, noise statistics, files and speed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from emlive import __version__
from emlive.core.errors import ConfigError
from emlive.core.readers import FrameIndexError, Movie, open_movie
from emlive.core.simulate import (
    CorrelatedNoise,
    OutputDtype,
    OutputFormat,
    SimulationConfig,
    SyntheticMovie,
    detector_truth,
    load_simulation_config,
    make_config,
    simulate_movie,
    write_simulation,
)

SMALL = {"height": 64, "width": 96, "frames": 4, "radius_min": 6.0, "radius_max": 14.0, "n_particles": 6}


def _config(**overrides: object) -> SimulationConfig:
    return SimulationConfig(**{**SMALL, **overrides})


def _neighbour_correlation(residual: np.ndarray, dy: int, dx: int) -> float:
    a = residual[:, : residual.shape[1] - dy, : residual.shape[2] - dx]
    b = residual[:, dy:, dx:]
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).mean() / np.sqrt((a * a).mean() * (b * b).mean()))


def test_config_rules() -> None:
    SimulationConfig()  # the defaults are valid
    with pytest.raises(ValidationError):
        SimulationConfig(unknown_field=1)
    with pytest.raises(ConfigError, match=r"dose=0.*greater than 0"):
        make_config(dose=0)
    with pytest.raises(ConfigError, match="radius_min"):
        make_config(radius_min=20, radius_max=10)
    with pytest.raises(ConfigError, match="correlated_noise='diagonal'"):
        make_config(correlated_noise="diagonal")
    with pytest.raises(ConfigError, match="colour"):
        make_config(colour=1)
    assert make_config(correlated_noise="horizontal").correlated_noise is CorrelatedNoise.HORIZONTAL


def test_frames_depend_only_on_seed_and_index() -> None:
    config = _config(frames=6)
    forward = SyntheticMovie(config)
    backward = SyntheticMovie(config)
    frames = [forward.frame(t) for t in range(6)]
    for t in reversed(range(6)):
        np.testing.assert_array_equal(backward.frame(t), frames[t])
        np.testing.assert_array_equal(backward.clean(t), forward.clean(t))
    longer = SyntheticMovie(config.model_copy(update={"frames": 20}))
    np.testing.assert_array_equal(longer.frame(3), frames[3])
    other_seed = SyntheticMovie(config.model_copy(update={"seed": 1}))
    assert not np.array_equal(other_seed.frame(3), frames[3])
    assert not np.array_equal(frames[0], frames[1])  # fresh noise every frame


def test_it_is_a_movie_and_simulate_movie_matches_it() -> None:
    config = _config()
    movie = SyntheticMovie(config)
    assert isinstance(movie, Movie)
    assert movie.shape == (4, 64, 96) and movie.dtype == np.uint16 and movie.pixel_size_nm == config.pixel_size_nm
    noisy, clean = simulate_movie(config)
    assert noisy.shape == clean.shape == (4, 64, 96)
    assert noisy.dtype == np.uint16 and clean.dtype == np.float32
    np.testing.assert_array_equal(noisy[2], movie.frame(2))
    np.testing.assert_array_equal(noisy[1:3], movie[1:3])
    np.testing.assert_array_equal(noisy[3, 5:9, 7:20], movie.crop(3, 5, 7, 4, 13))
    np.testing.assert_array_equal(clean[1], movie.clean(1))
    with pytest.raises(FrameIndexError, match="T=4"):
        movie.frame(4)


def test_endless_movies_go_on() -> None:
    movie = SyntheticMovie(_config(), endless=True)
    assert len(movie) == 4
    assert movie.frame(1000).shape == (64, 96)
    with pytest.raises(FrameIndexError):
        movie.frame(-1)


def test_scene_has_texture_and_changes_over_time() -> None:
    config = _config(frames=30, drift=0.5, rotation=2.0, growth=0.2)
    movie = SyntheticMovie(config)
    first, last = movie.intensity(0), movie.intensity(29)
    assert first.min() > 0
    assert first.std() > 0.05  # particles, fringes and film give the denoiser something to recover
    assert np.abs(last - first).mean() > 0.02


def test_mean_counts_follow_gain_dose_and_offset() -> None:
    config = _config(gain=2.5, offset=100.0, dose=4.0, dtype="float32")
    movie = SyntheticMovie(config)
    noisy, clean = simulate_movie(config)
    mean_intensity = np.mean([movie.intensity(t).mean() for t in range(config.frames)])
    expected = 2.5 * 4.0 * mean_intensity + 100.0
    assert clean.mean() == pytest.approx(expected, rel=1e-4)
    assert noisy.mean() == pytest.approx(expected, rel=0.01)


def test_poisson_variance_without_correlation() -> None:
    config = _config(gain=2.0, offset=50.0, dose=6.0, dtype="float32")
    noisy, clean = simulate_movie(config)
    residual = noisy.astype(np.float64) - clean
    expected_var = np.mean(config.gain * (clean - config.offset))  # gain^2 * dose * intensity
    assert residual.var() == pytest.approx(expected_var, rel=0.05)
    assert abs(residual.mean()) < 0.05 * np.sqrt(expected_var)


def test_read_noise_adds_its_variance() -> None:
    config = _config(dose=3.0, read_noise=2.0, dtype="float32")
    noisy, clean = simulate_movie(config)
    expected_var = np.mean(clean) + 4.0
    assert (noisy - clean).var() == pytest.approx(expected_var, rel=0.05)


@pytest.mark.parametrize(
    ("kind", "along_x", "along_y"),
    [
        ("none", False, False),
        ("isotropic", True, True),
        ("horizontal", True, False),
        ("vertical", False, True),
    ],
)
def test_correlated_noise(kind: str, along_x: bool, along_y: bool) -> None:
    config = _config(correlated_noise=kind, dtype="float32", dose=8.0)
    noisy, clean = simulate_movie(config)
    residual = noisy.astype(np.float64) - clean
    corr_x = _neighbour_correlation(residual, 0, 1)
    corr_y = _neighbour_correlation(residual, 1, 0)
    assert (corr_x > 0.2) if along_x else (abs(corr_x) < 0.05)
    assert (corr_y > 0.2) if along_y else (abs(corr_y) < 0.05)
    kernel = config.kernel
    if kind == "none":
        assert kernel is None
    else:
        assert kernel is not None and kernel.sum() == pytest.approx(1.0)
        uncorrelated = simulate_movie(config.model_copy(update={"correlated_noise": CorrelatedNoise.NONE}))[1]
        assert clean.mean() == pytest.approx(uncorrelated.mean(), rel=1e-3)  # the kernel keeps the mean


def test_field_lattice_covers_the_field_at_its_period() -> None:
    config = _config(height=128, width=128, n_particles=0, background_strength=0.0, drift=0.0,
                     field_lattice_contrast=0.6, field_lattice_spacing=5.0, field_lattice_coverage=0.6)  # fmt: skip
    image = SyntheticMovie(config).intensity(0).astype(np.float64)
    spectrum = np.abs(np.fft.rfft2(image - image.mean()))
    fy, fx = np.unravel_index(int(np.argmax(spectrum)), spectrum.shape)
    freq = np.hypot(np.fft.fftfreq(128)[fy], np.fft.rfftfreq(128)[fx])
    assert freq == pytest.approx(1 / 5.0, abs=1 / 128)  # the strongest structure is the 5 px lattice
    from scipy.ndimage import uniform_filter

    local_range = uniform_filter(np.abs(image - 1.0), 9)
    covered = float((local_range > 0.1).mean())
    assert 0.45 < covered < 0.75  # about the requested 60 % of the field holds fringes
    plain = SyntheticMovie(config.model_copy(update={"field_lattice_contrast": 0.0})).intensity(0)
    np.testing.assert_allclose(plain, 1.0, atol=1e-6)


@pytest.mark.parametrize(("angle", "axis"), [(0.0, 1), (90.0, 0)])
def test_drift_moves_film_crystal_and_particles_along_its_angle(angle: float, axis: int) -> None:
    config = _config(height=64, width=64, drift=1.0, drift_angle=angle, particle_speed=0.0, rotation=0.0,
                     growth=0.0, field_lattice_contrast=0.5, field_lattice_coverage=0.7)  # fmt: skip
    movie = SyntheticMovie(config)
    first, second = movie.intensity(0), movie.intensity(1)
    if axis == 1:  # one pixel along +x per frame: frame 1 is frame 0 moved right by one pixel
        np.testing.assert_allclose(second[8:-8, 9:-8], first[8:-8, 8:-9], atol=2e-4)
    else:
        np.testing.assert_allclose(second[9:-8, 8:-8], first[8:-9, 8:-8], atol=2e-4)


def test_config_rules_of_the_crystal_and_drift() -> None:
    for field, value in [("field_lattice_contrast", 0.95), ("field_lattice_spacing", 1.5),
                         ("field_lattice_coverage", 0.0), ("drift_angle", 400.0)]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"{field}={value}"):
            make_config(**{field: value})


def test_manifest_records_the_detector_truth(tmp_path: Path) -> None:
    config = _config(gain=8.0, offset=100.0, read_noise=10.0, correlated_noise="isotropic")
    truth = json.loads(write_simulation(config, tmp_path).manifest.read_text())["truth"]
    assert truth == detector_truth(config)
    kernel = np.asarray(truth["kernel"])
    assert truth["gain"] == 8.0 and truth["offset"] == 100.0 and truth["read_noise"] == 10.0
    assert truth["kernel_sum_of_squares"] == pytest.approx(float((kernel**2).sum()))
    assert detector_truth(_config())["kernel_sum_of_squares"] == 1.0  # independent pixels


def test_hot_pixels_are_fixed_and_absent_from_the_truth() -> None:
    config = _config(hot_pixel_fraction=0.01, hot_pixel_value=3000.0)
    movie = SyntheticMovie(config)
    masks = [movie.frame(t) == 3000 for t in range(config.frames)]
    assert masks[0].sum() == round(0.01 * 64 * 96)
    for mask in masks[1:]:
        np.testing.assert_array_equal(mask, masks[0])
    assert movie.clean(0).max() < 100


def test_uint16_output_is_rounded_and_clipped() -> None:
    high, _ = simulate_movie(_config(gain=1000.0, offset=60000.0, dose=20.0))
    assert high.dtype == np.uint16 and high.max() == 65535
    low, clean = simulate_movie(_config(read_noise=50.0, dose=1.0, gain=1.7))
    assert low.min() == 0  # negative read-noise excursions are clipped
    assert not np.array_equal(clean, np.rint(clean))  # the truth stays unrounded float32


@pytest.mark.parametrize("fmt", list(OutputFormat))
def test_write_simulation_files_and_manifest(tmp_path: Path, fmt: OutputFormat) -> None:
    config = _config(correlated_noise="isotropic", seed=9)
    files = write_simulation(config, tmp_path / "sim", fmt)
    assert files.noisy == tmp_path / "sim" / f"noisy.{fmt.value}"
    assert files.clean.name == f"clean.{fmt.value}" and files.manifest.name == "manifest.json"
    noisy, clean = simulate_movie(config)
    with open_movie(files.noisy) as movie_noisy, open_movie(files.clean) as movie_clean:
        np.testing.assert_array_equal(movie_noisy[:], noisy)
        np.testing.assert_array_equal(movie_clean[:], clean)
        assert movie_noisy.pixel_size_nm == pytest.approx(config.pixel_size_nm)
    manifest = json.loads(files.manifest.read_text())
    assert manifest["emlive_version"] == __version__
    assert manifest["files"] == {"noisy": files.noisy.name, "clean": files.clean.name}
    assert manifest["dose_e_per_px_per_frame"] == config.dose
    assert "Poisson" in manifest["noise_model"] and "isotropic" in manifest["noise_model"]
    assert manifest["mean_counts_clean"] == pytest.approx(float(clean.mean()), rel=1e-5)
    assert manifest["mean_counts_noisy"] == pytest.approx(float(noisy.mean()), rel=1e-5)
    assert manifest["config"]["correlated_noise"] == "isotropic"
    assert load_simulation_config(files.manifest) == config


def test_write_simulation_rejects_an_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'png'"):
        write_simulation(_config(), tmp_path, "png")


def test_speed_512_square_64_frames() -> None:
    """The brief: 512 x 512 x 64 frames in a few seconds on one core (about 1.3 s measured, noisy and clean)."""
    config = SimulationConfig(height=512, width=512, frames=64, dtype=OutputDtype.UINT16)
    start = time.perf_counter()
    noisy, _ = simulate_movie(config)
    elapsed = time.perf_counter() - start
    assert noisy.shape == (64, 512, 512)
    assert elapsed < 8.0, f"simulating 512x512x64 took {elapsed:.1f} s"
