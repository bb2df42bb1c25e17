"""The variance head calibrated on a movie by the runtime (emlive.export.calibration), and ``emlive denoise``
calibrating it on each movie it denoises: known cases (a calibrated head measures a scale of 1, a head k times too
wide measures 1/k), the denoiser's own calibration kept, per-movie tables in the report and in the output, and no
calibration where the noise check failed (a wrong noise model is reported, not absorbed into the scales)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emlive.core.modelcard import ModelCard, VarianceCalibration, save_model
from emlive.core.network import BlindSpotNet
from emlive.core.posterior import PriorCalibration
from emlive.core.readers import open_movie
from emlive.core.writers import write_movie
from emlive.export.calibration import FrameBlock, measure_calibration, movie_block
from emlive.export.runtime import Denoiser

from .test_posterior_runtime import CFG, GAIN, LOG_VAR_Z, NOISE_VAR, counts_movie, noise_model

NARROWER = 0.9  # the scale of a head whose prior variance is 1/0.9 x its true error's (its noise check passes: 0.91)


def _constant_prior(tmp_path: Path, name: str, *, gain: float = GAIN) -> Path:
    """The head's last weights at 0: every pixel's prior is its frame's mean, with exp(LOG_VAR_Z) = 0.96 x the
    frame's variance; the card's noise model has ``gain``."""
    torch.manual_seed(1)
    net = BlindSpotNet(CFG).eval()
    with torch.no_grad():
        net.head[-1].weight.zero_()
    return save_model(tmp_path / f"{name}.pt", net, ModelCard(network=CFG, name=name, noise=noise_model(gain)))


def scene_for(scale: float, frames: int = 7, shape: tuple[int, int] = (40, 52), seed: int = 0) -> np.ndarray:
    """A movie on which the constant prior's calibration is ``scale``: its true error variance (the scene's, S) is
    ``scale`` x its predicted one, e (S + N) (e = exp(LOG_VAR_Z), N the noise variance), so S = scale e N / (1 -
    scale e)."""
    e = math.exp(LOG_VAR_Z)
    spread = math.sqrt(scale * e * NOISE_VAR / (1 - scale * e)) / GAIN
    return counts_movie(frames, shape, seed, spread=spread)[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scale", [1.0, 0.7])
def test_a_head_k_times_too_wide_measures_a_scale_of_one_over_k(tmp_path: Path, scale: float) -> None:
    movie = scene_for(scale, frames=9, shape=(48, 64))
    den = Denoiser.load(_constant_prior(tmp_path, "k"), "torch_cpu", threads=1)
    held = den.calibration = PriorCalibration((0.0,), (math.log(5.0),), 1)  # a card's table: left out, kept
    table, frames = measure_calibration(den, [FrameBlock(movie, 0, len(movie))], "the movie")
    assert frames == len(movie) and table.pixels == movie.size and len(table.log_scale) == 1  # one head value
    assert table.log_scale[0] == pytest.approx(math.log(scale), abs=0.05)
    assert den.calibration is held


@pytest.mark.timeout(30)
def test_a_movie_is_calibrated_on_the_middle_of_its_range() -> None:
    """(middle_block itself: tests/train/test_calibrate.py)"""
    movie = np.zeros((100, 512, 512), np.uint16)
    assert (movie_block(movie, 50, 60).start, movie_block(movie, 50, 60).stop) == (50, 60)
    assert (movie_block(movie, 0, 100).start, movie_block(movie, 0, 100).stop) == (35, 65)  # 30 frames fit


@pytest.mark.timeout(120)
def test_denoise_calibrates_the_head_on_each_movie(tmp_path: Path) -> None:
    """Each movie of a folder gets the table measured on it (in its report, and applied to its output and its
    uncertainty map); a later movie does not inherit an earlier one's."""
    from emlive.analysis.denoise import denoise_path

    (tmp_path / "in").mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        write_movie(tmp_path / "in" / f"{name}.tif", scene_for(NARROWER, seed=seed))
    model = _constant_prior(tmp_path, "wide")
    den = Denoiser.load(model, "torch_cpu", threads=1)
    report = denoise_path(tmp_path / "in", tmp_path / "out", den, uncertainty=tmp_path / "std", progress=False)
    tables = []
    for m in report.movies:
        assert m.estimate == "posterior" and m.noise_check is not None and m.noise_check["ok"]
        assert m.calibration is not None and m.calibration["frames"] == 7
        table = PriorCalibration.from_card(VarianceCalibration.model_validate(m.calibration))
        assert table.log_scale[0] == pytest.approx(math.log(NARROWER), abs=0.05)
        tables.append(table)
        ref = Denoiser.load(model, "torch_cpu", threads=1)
        ref.calibration = table
        with open_movie(m.input) as movie, open_movie(m.output) as out, open_movie(m.uncertainty) as std:
            want = [d for _, d in ref.denoise_movie(movie, uncertainty=True)]
            np.testing.assert_array_equal(np.asarray(out[:]), np.stack([d.mean for d in want]))
            np.testing.assert_array_equal(np.asarray(std[:]), np.stack([d.std for d in want]))
            raw = [d for _, d in Denoiser.load(model, "torch_cpu", threads=1).denoise_movie(movie, uncertainty=True)]
            assert not np.array_equal(np.stack([d.std for d in raw]), np.asarray(std[:]))  # the table changed it
    assert tables[0].log_scale != tables[1].log_scale  # each movie its own


@pytest.mark.timeout(60)
def test_a_failed_noise_check_keeps_the_cards_calibration(tmp_path: Path) -> None:
    """A card whose gain is 10x too high: the check fails before any calibration, so the scales cannot absorb the
    wrong noise model; the movie gets the blind output and no table of its own."""
    from emlive.analysis.denoise import denoise_path

    src = write_movie(tmp_path / "in.tif", counts_movie()[0])
    den = Denoiser.load(_constant_prior(tmp_path, "wrong", gain=GAIN * 10), "torch_cpu", threads=1)
    m = denoise_path(src, tmp_path / "out.tif", den, progress=False).movies[0]
    assert m.estimate == "blind" and m.noise_check is not None and not m.noise_check["ok"]
    assert m.calibration is None and den.calibration is None
