"""Noise correlation and the recommended blind spot."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import tifffile

from emlive.analysis.noise_stats import (
    correlation_table,
    noise_correlation,
    recommend_blind_spot,
)
from emlive.core.errors import ConfigError, InputDataError
from emlive.core.readers import open_movie

if TYPE_CHECKING:
    from conftest import Synth

EXPECTED = {"none": (1, 1), "isotropic": (3, 3), "horizontal": (1, 3), "vertical": (3, 1)}


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_movie_blind_spot_from_frame_difference(kind: str, synth: type[Synth]) -> None:
    movie = synth.movie(synth.scene((160, 192)), 3, seed=2, kernel=kind)
    corr = noise_correlation(movie, frame=1)
    assert corr.method == "difference"
    assert corr.frames == (1, 2)
    assert recommend_blind_spot(corr) == EXPECTED[kind]


@pytest.mark.parametrize("kind", ["none", "horizontal", "vertical"])
def test_single_image_blind_spot_from_smooth_residual(kind: str, synth: type[Synth]) -> None:
    image = synth.movie(synth.scene((192, 192), seed=3), 1, seed=4, kernel=kind)[0]
    corr = noise_correlation(image)
    assert corr.method == "residual"
    assert recommend_blind_spot(corr) == EXPECTED[kind]


def test_map_shape_symmetry_and_profiles(synth: type[Synth]) -> None:
    movie = synth.movie(synth.scene((96, 96)), 2, kernel="horizontal")
    corr = noise_correlation(movie, max_distance=6)
    assert corr.correlation.shape == (13, 13)
    assert corr.offsets.tolist() == list(range(-6, 7))
    assert corr.at(0, 0) == pytest.approx(1.0)
    np.testing.assert_allclose(corr.correlation, corr.correlation[::-1, ::-1], atol=1e-12)
    assert corr.at(0, 1) > 0.4 > abs(corr.at(1, 0))
    assert corr.along_x.shape == corr.along_y.shape == corr.ring_max.shape == (7,)
    assert corr.along_x[1] == pytest.approx(corr.at(0, 1))
    ring1 = [abs(corr.at(dy, dx)) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    assert corr.ring_max[1] == pytest.approx(max(ring1))
    d = corr.to_dict()
    assert d["max_distance"] == 6 and len(d["correlation"]) == 13 and len(d["profiles"]["along_x"]) == 7
    table = correlation_table(corr)
    assert len(table.splitlines()) == 8 and "+1.000" in table


def test_threshold_controls_the_window(synth: type[Synth]) -> None:
    movie = synth.movie(synth.scene((128, 128)), 2, kernel="isotropic")
    corr = noise_correlation(movie)
    assert recommend_blind_spot(corr, threshold=0.1) == (3, 3)
    assert recommend_blind_spot(corr, threshold=0.35) == (3, 3)  # 0.5 at one pixel along x and y
    assert recommend_blind_spot(corr, threshold=0.7) == (1, 1)
    assert recommend_blind_spot(corr, threshold=0.01) == (31, 31)  # sampling noise everywhere: capped, warned


def test_reads_a_movie_file(tmp_path: Path, synth: type[Synth]) -> None:
    path = tmp_path / "movie.tif"
    tifffile.imwrite(
        path, synth.movie(synth.scene((96, 96)), 4, kernel="vertical").astype(np.uint16), photometric="minisblack"
    )
    with open_movie(path) as movie:
        corr = noise_correlation(movie, frame=2)
    assert corr.frames == (2, 3)
    assert recommend_blind_spot(corr) == (3, 1)


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
    with pytest.raises(InputDataError, match="constant"):
        noise_correlation(np.stack([movie[0], movie[0]]))
    bad = movie.copy()
    bad[1, 3, 3] = np.inf
    with pytest.raises(InputDataError, match="frame 1"):
        noise_correlation(bad)
    corr = noise_correlation(movie)
    for threshold in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="threshold"):
            recommend_blind_spot(corr, threshold)
