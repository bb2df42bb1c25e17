"""The Gaussian head's training: config rules, the noise model in the network's units, the NLL, a tiny run."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emlive.analysis.noise_stats import noise_model_for_training
from emlive.core.errors import ConfigError
from emlive.core.modelcard import load_checkpoint
from emlive.core.network import Head
from emlive.core.posterior import PixelNoise
from emlive.core.simulate import SimulationConfig, SyntheticMovie, make_config, write_simulation
from emlive.train.api import train
from emlive.train.config import NoiseConfig, load_config
from emlive.train.module import gaussian_nll
from emlive.train.noise import GIVEN, given_noise_model, sum_binned, training_noise

pytestmark = pytest.mark.timeout(120)

GAUSSIAN = ["network.head=gaussian", "optim.loss=gaussian_nll"]
TINY = [
    "network.width=8",
    "network.scales=3",
    "network.blocks=1",
    "data.crop_size=32",
    "data.val_crop_size=32",
    "optim.batch_size=4",
    "optim.recursive_factor=1",
    "optim.epochs=1",
    "optim.max_minutes=null",
]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["network.head=gaussian"], "network.head=gaussian with optim.loss=l2: .* set optim.loss=gaussian_nll"),
        (["optim.loss=gaussian_nll"], "optim.loss=gaussian_nll with network.head=mean: .* set network.head=gaussian"),
        ([*GAUSSIAN, "targets=clean", "data.clean=c.tif"], "gaussian_nll with targets=clean"),
        (["data.noise.gain=1", "data.noise.kernel=[[1, 0.5]]"], "odd-sized"),
    ],
)
def test_head_and_loss_need_each_other(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("synthetic-small", ["data.train=x.tif", *overrides])


def _binned_noise_variance(movie: SyntheticMovie, b: int) -> tuple[np.ndarray, np.ndarray]:
    """(clean, squared noise) of the movie's frames binned as training bins them: sums of b x b pixels."""
    frames = range(len(movie))
    clean = np.stack([movie.clean(t) for t in frames]).astype(np.float64)
    noisy = np.stack([np.asarray(movie[t]) for t in frames]).astype(np.float64)
    t, h, w = clean.shape

    def binned(a: np.ndarray) -> np.ndarray:
        return a.reshape(t, h // b, b, w // b, b).sum(axis=(2, 4))

    return binned(clean), (binned(noisy) - binned(clean)) ** 2


INTEGRATING = {"gain": 8.0, "offset": 100.0, "read_noise": 3.0, "correlated_noise": "isotropic"}


@pytest.mark.parametrize("b", [1, 2])
def test_given_noise_model_predicts_the_binned_variance(b: int) -> None:
    """data.noise (the detector's unbinned values and correlation) predicts the variance of summed bins."""
    cfg = make_config(height=128, width=128, frames=4, dose=20.0, seed=2, **INTEGRATING)
    movie = SyntheticMovie(cfg)
    kernel = cfg.kernel
    assert kernel is not None
    from scipy.signal import correlate2d

    rho = correlate2d(kernel, kernel) / np.sum(kernel**2)
    given = NoiseConfig(gain=8.0, offset=100.0, read_noise=math.sqrt(9.0 + 1 / 12), kernel=rho.round(4).tolist())
    card = given_noise_model(given, b, (3, 3))
    assert card.source == GIVEN and card.offset == pytest.approx(100.0 * b * b)
    noise = PixelNoise.from_card(card)
    clean, err2 = _binned_noise_variance(movie, b)
    assert err2.mean() / noise.variance(clean).mean() == pytest.approx(1.0, abs=0.03)


def test_measured_noise_model_is_in_summed_bin_units() -> None:
    """The estimate (made on bin means) is scaled to the bin sums the network sees: gain x b^2, intercept x b^4."""
    movie = SyntheticMovie(make_config(height=256, width=256, frames=9, dose=5.0, seed=4))
    measured = noise_model_for_training(movie, (1, 1), bin_factor=2)
    assert measured is not None
    noise = PixelNoise.from_card(sum_binned(measured, 2))
    clean, err2 = _binned_noise_variance(movie, 2)
    assert err2.mean() / noise.variance(clean).mean() == pytest.approx(1.0, abs=0.03)


def test_gaussian_nll_learns_the_prior_variance() -> None:
    """With a fixed mean, minimising the NLL over log s_x^2 finds var(y - mu) - s_n^2: here 0.5 (noise 1)."""
    torch.manual_seed(0)
    std, mean = 2.0, 10.0  # the frame's normalisation; the noise is 4 counts^2 = 1 z-unit^2 at any level
    noise = PixelNoise(slope=1e-9, intercept=4.0, offset=None, correlated=False)
    target = math.sqrt(1.5) * torch.randn(4, 1, 32, 32)
    stats = torch.tensor([[mean, std]] * 4)
    log_var = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([log_var], lr=0.05)
    for _ in range(150):
        output = torch.cat([torch.zeros_like(target), log_var.expand_as(target)], dim=1)
        loss = gaussian_nll(output, target, stats, noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert math.exp(float(log_var)) == pytest.approx(0.5, abs=0.05)
    expected = 0.5 * (math.log(1.5) + float((target**2).mean()) / 1.5)
    assert float(loss) == pytest.approx(expected, rel=1e-3)


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    files = write_simulation(SimulationConfig(height=64, width=64, frames=12, dose=5.0, seed=3), out)
    return Path(files.noisy).parent


def test_train_gaussian_head_records_it_and_validates_the_posterior(movie: Path, tmp_path: Path) -> None:
    """`emlive train --config synthetic-small network.head=gaussian optim.loss=gaussian_nll` (tiny)."""
    cfg = load_config(
        "synthetic-small",
        [f"data.train={movie / 'noisy.tif'}", f"data.clean={movie / 'clean.tif'}", f"output.root={tmp_path}",
         *TINY, *GAUSSIAN],
    )  # fmt: skip
    result = train(cfg)
    for key in ("val/psnr", "val/psnr_posterior", "val/calibration", "val/noise_check", "val/predicted_gain_db"):
        assert np.isfinite(result.metrics[key]), key
    net, card = load_checkpoint(result.model)
    assert card.network.head is Head.gaussian and card.training.loss == "gaussian_nll"
    assert card.noise is not None and card.noise.source == "training data" and card.noise.gain is not None
    assert card.training.model_extra and "val_psnr_posterior" in card.training.model_extra
    # the head was recalibrated on the middle of its training frames (0..10 of 12: 10 frames of 64 x 64)
    table = card.prior_calibration
    assert table is not None and table.source == "training data" and table.frames == 10 and table.pixels == 40960
    assert 1 <= len(table.log_var_z) == len(table.log_scale) <= 2  # 20 000 px a bin at least; a 2-step head barely
    assert table.log_scale[0] < 0  # varies (its bins pool); it starts wider than the residuals say
    assert (result.model.parent / "model.calibration.png").stat().st_size > 0
    with torch.no_grad():
        assert net(torch.randn(1, 5, 40, 40)).shape == (1, 2, 40, 40)


def test_gaussian_head_uses_data_noise_or_says_what_is_missing(movie: Path) -> None:
    from emlive.train.data import open_sources

    source = open_sources(movie / "noisy.tif", None, 5, (0.0, 1.0), 1, 32)[0]
    cfg = load_config("synthetic-small", [f"data.train={movie}", *GAUSSIAN, "data.noise.gain=1.0"])
    card, pixel = training_noise(cfg, source)
    assert card is not None and card.source == GIVEN
    assert pixel == PixelNoise(slope=1.0, intercept=0.0, offset=0.0, correlated=False)
    one_frame = open_sources(movie / "noisy.tif", None, 5, (0.0, 0.05), 1, 32)  # a 1-frame split: no estimate
    cfg = load_config("synthetic-small", [f"data.train={movie}", *GAUSSIAN])
    with pytest.raises(ConfigError, match=r"network.head=gaussian needs the detector's noise model.*data\.noise"):
        training_noise(cfg, one_frame[0])
