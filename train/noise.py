"""The noise model a training run records in its card and, with ``network.head=gaussian``, trains with.

Where it comes from: ``data.noise`` when given (a calibrated detector), else the training data's own estimate
(:func:`emlive.analysis.noise_stats.noise_model_for_training`, measured on the gain-corrected frames, binned as the
network sees them). With the Gaussian head, no noise model is an error (the loss needs it).

Units: the card's noise model describes the pixels the network sees. Training bins by SUMMING ``data.bin`` x
``data.bin`` pixels (:mod:`emlive.train.data`), while the estimate is measured on bin MEANS: a sum S = b^2 M has
var(S) = b^4 var(M) = (b^2 slope_M) S + b^4 intercept_M, so gain and offset scale by b^2, the intercept by b^4 and
the read noise (a std) by b^2. A given ``data.noise`` (unbinned pixels, with the normalised correlation rho of
charge sharing) becomes, for a bin of b x b pixels, var(S) = (gain (m - offset) + read_noise^2) F with
F = sum_d rho(d) (b - |dy|)(b - |dx|) / sum(rho) (the pixels' covariances inside the bin), m the mean per pixel.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from emlive.core.errors import ConfigError
from emlive.core.modelcard import NoiseModel
from emlive.core.network import Head
from emlive.core.posterior import PixelNoise, kernel_array, kernel_sum
from emlive.train.config import NoiseConfig, TrainConfig
from emlive.train.data import MovieSource

log = logging.getLogger(__name__)

MEASURED = "training data"
GIVEN = "data.noise"


def sum_binned(noise: NoiseModel, bin_factor: int) -> NoiseModel:
    """A noise model measured on bin means, in the units of bin sums (what the network sees); see the module doc."""
    if bin_factor <= 1:
        return noise
    b2 = float(bin_factor**2)

    def scaled(value: float | None, factor: float) -> float | None:
        return None if value is None else value * factor

    return noise.model_copy(
        update={
            "gain": scaled(noise.gain, b2),
            "offset": scaled(noise.offset, b2),
            "intercept": scaled(noise.intercept, b2 * b2),
            "read_noise": scaled(noise.read_noise, b2),
        }
    )


def given_noise_model(given: NoiseConfig, bin_factor: int, blind_spot: tuple[int, int]) -> NoiseModel:
    """The card's noise model for ``data.noise`` on pixels binned by ``bin_factor`` (sums); see the module doc."""
    rho = kernel_array(given.kernel)
    total = kernel_sum(rho)
    kh, kw = rho.shape[0] // 2, rho.shape[1] // 2
    b = bin_factor
    dy, dx = np.meshgrid(np.arange(-kh, kh + 1), np.arange(-kw, kw + 1), indexing="ij")
    overlap = np.clip(b - np.abs(dy), 0, None) * np.clip(b - np.abs(dx), 0, None)
    factor = float(np.sum(rho * overlap)) / total  # var(bin sum) / var(one pixel before charge sharing)
    slope, intercept = given.gain * factor / b**2, factor * (given.read_noise**2 - given.gain * given.offset)
    offset = given.offset * b**2
    card_gain, card_intercept = slope * total, intercept * total  # PixelNoise.from_card divides by sum(kernel)
    return NoiseModel(
        method="given",
        gain=card_gain,
        offset=offset,
        read_noise=math.sqrt(max(card_intercept + card_gain * offset, 0.0)),
        intercept=card_intercept,
        kernel=rho.tolist(),
        recommended_blind_spot=blind_spot,
        source=GIVEN,
        correlated=given.correlated,
    )


def training_noise(cfg: TrainConfig, source: MovieSource) -> tuple[NoiseModel | None, PixelNoise | None]:
    """The card's noise model of a run and, for ``network.head=gaussian``, the pixel noise its loss uses."""
    if cfg.data.noise is not None:
        given = given_noise_model(cfg.data.noise, source.bin, cfg.network.blind_spot)
        log.info("noise model from data.noise (bin %d): %s", source.bin, _describe(given))
        noise: NoiseModel | None = given
    else:
        noise = _measured(cfg, source)
    if cfg.network.head is not Head.gaussian:
        return noise, None
    if noise is None or noise.gain is None or noise.intercept is None:
        raise ConfigError(
            f"network.head=gaussian needs the detector's noise model, and none could be measured on {source.movie.path}"
            " (see the warning above; emlive noise-stats shows why): give it as data.noise (gain, offset, "
            "read_noise and, for charge sharing, the kernel that emlive noise-stats prints), or use network.head=mean"
        )
    pixel = PixelNoise.from_card(noise)
    log.info(
        "gaussian head: pixel noise variance = %.4g * counts %+.4g (counts of the network's pixels)%s",
        pixel.slope,
        pixel.intercept,
        ", correlated" if pixel.correlated else "",
    )
    return noise, pixel


def _measured(cfg: TrainConfig, source: MovieSource) -> NoiseModel | None:
    """The first training movie's noise model for the card; warns when the blind spot is smaller than it needs."""
    from emlive.analysis.noise_stats import noise_model_for_training

    measured = noise_model_for_training(source.movie, cfg.network.blind_spot, (source.first, source.last), source.bin)
    if measured is None:
        return None
    return sum_binned(measured, source.bin).model_copy(update={"source": MEASURED})


def _describe(noise: NoiseModel) -> str:
    return f"gain {noise.gain:.4g}, offset {noise.offset}, read noise {noise.read_noise}, intercept {noise.intercept}"
