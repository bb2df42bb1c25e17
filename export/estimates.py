"""What the runtime outputs from a network's channels: the blind estimate, or the posterior mean that re-opens the
blind spot, and on request the uncertainty map. The one place where :class:`~emlive.export.runtime.Denoiser` and
its :class:`~emlive.export.runtime.FrameStream` (offline ``emlive denoise``, the live service) turn network outputs
into frames; the math is :mod:`emlive.core.posterior`'s (numpy only: it runs on the light install).

A ``head=gaussian`` network outputs, in the center frame's z-units (its mean ``m`` and std ``s``), the prior mean
``mu_z`` (the blind estimate) and the log prior variance ``log_var_z``. In the detector's units (raw counts, what
the card's noise model describes): ``mu = mu_z * s + m`` and ``log sigma_x^2 = log_var_z + 2 log s``; the observed
value is the raw center frame itself (its float32 value: the ring of :class:`~emlive.export.runtime.FrameStream`
keeps a float32 copy of each raw frame for that, so offline and live give the same bits).

The estimate (:class:`~emlive.core.posterior.Estimate`):

* ``blind``: ``mu``, the network's blind estimate (every model; the only one of a plain ``head=mean`` model);
* ``posterior``: the posterior mean of the pixel given the prior N(mu, sigma_x^2) and the observed value under the
  card's noise model (:func:`emlive.core.posterior.posterior`): needs a ``head=gaussian`` model and a noise model
  in its card. The default for such a model (:func:`choose_estimate`); otherwise blind.

With ``uncertainty=True`` the runtime returns a :class:`Denoised`: the frame and its standard deviation (the
posterior's, or the prior's for the blind estimate), with the prior and the noise std beside them. Plain calls of
plain models never come here: they keep their single denormalisation and return the same arrays as before.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard
from emlive.core.normalize import denormalize
from emlive.core.posterior import Estimate, PixelNoise, PriorCalibration, posterior

log = logging.getLogger(__name__)

GAUSSIAN_FIX = "train one with `emlive train ... network.head=gaussian optim.loss=gaussian_nll`"


@dataclass(frozen=True)
class Denoised:
    """A denoised frame with its uncertainty: (H, W) float32 arrays in the input's units (detector counts).

    ``mean``: the frame the plain call returns (the posterior mean, or the blind estimate); ``std``: its standard
    deviation (the posterior's; the prior's for the blind estimate); ``prior_mean``, ``prior_std``: the network's
    blind estimate and its predicted error; ``noise_std``: the noise model's std at the prior mean (None when the
    card has no noise model); ``estimate``: which one ``mean`` is.
    """

    mean: np.ndarray
    std: np.ndarray
    prior_mean: np.ndarray
    prior_std: np.ndarray
    noise_std: np.ndarray | None
    estimate: Estimate


def parse_estimate(value: Estimate | str) -> Estimate:
    """An :class:`Estimate` from its name; ConfigError naming the choices otherwise."""
    if isinstance(value, Estimate):
        return value
    try:
        return Estimate(str(value).lower())
    except ValueError:
        names = ", ".join(e.value for e in Estimate)
        raise ConfigError(f"estimate {value!r}: not a known estimate; use one of {names}") from None


def card_noise(card: ModelCard, source: str) -> PixelNoise | None:
    """The pixel noise model of a card (None when it has none, or one without a fitted gain: logged)."""
    if card.noise is None:
        return None
    try:
        return PixelNoise.from_card(card.noise)
    except (ConfigError, ValueError) as exc:
        log.warning("%s: the card's noise model cannot be used for the posterior (%s)", source, exc)
        return None


def card_calibration(card: ModelCard) -> PriorCalibration | None:
    """The variance head's recalibration from a card (None without one)."""
    if card.prior_calibration is None:
        return None
    return PriorCalibration.from_card(card.prior_calibration)


def choose_estimate(
    requested: Estimate | str | None, card: ModelCard, noise: PixelNoise | None, source: str
) -> Estimate:
    """The estimate a model gives: ``requested``, checked, or by default the posterior for a ``head=gaussian``
    model whose card has a noise model, else blind. ConfigError naming the model and the fix when the posterior is
    asked of a model that cannot give it."""
    gaussian = card.network.out_channels == 2
    if requested is None:
        if gaussian and noise is None:
            log.warning(
                "%s: a variance head but no usable noise model in the card: the blind estimate is output (the "
                "posterior needs the detector's noise model)",
                source,
            )
        return Estimate.posterior if gaussian and noise is not None else Estimate.blind
    chosen = parse_estimate(requested)
    if chosen is Estimate.posterior and not gaussian:
        raise ConfigError(
            f"{source}: estimate posterior needs a model with a variance head (network.head=gaussian); model "
            f"'{card.name}' predicts the blind estimate only. Use estimate blind (its default), or {GAUSSIAN_FIX}"
        )
    if chosen is Estimate.posterior and noise is None:
        raise ConfigError(
            f"{source}: estimate posterior needs the detector's noise model (gain, offset, read noise), and the card "
            f"of model '{card.name}' has no usable one; use estimate blind, or retrain it (training records the "
            "data's noise model, or the one given in data.noise)"
        )
    return chosen


def needs_variance_head(card: ModelCard, source: str) -> None:
    """ConfigError naming the model and the fix when an uncertainty map is asked of a model without a variance
    head."""
    if card.network.out_channels < 2:
        raise ConfigError(
            f"{source}: an uncertainty map needs a model with a variance head (network.head=gaussian); model "
            f"'{card.name}' predicts the blind estimate only. Drop the uncertainty request, or {GAUSSIAN_FIX}"
        )


def estimate_frame(
    z: np.ndarray,
    mean: float,
    std: float,
    observed: Callable[[], np.ndarray],
    estimate: Estimate,
    noise: PixelNoise | None,
    what: str,
    calibration: PriorCalibration | None = None,
) -> Denoised:
    """The estimate and its uncertainty from the network's (2, H, W) output ``z`` in z-units of a center frame of
    ``mean`` and ``std``; ``observed()`` gives that raw frame as float32 (read only for the posterior).
    ``calibration``: the card's recalibration of the variance head (:func:`card_calibration`), applied to the head's
    output first (so to both estimates, every uncertainty map and every noise check)."""
    prior_mean = denormalize(z[0], mean, std, what)  # the blind output, as a plain call computes it
    head = z[1] if calibration is None else calibration.apply(z[1])  # the card's recalibration of the head
    log_var = head + 2.0 * math.log(std)  # z-units^2 -> counts^2
    if noise is None:  # blind, no noise model: the prior alone
        prior_std = np.exp(0.5 * log_var).astype(np.float32)
        return Denoised(prior_mean, prior_std, prior_mean, prior_std, None, estimate)
    reopen = estimate is Estimate.posterior
    post = posterior(prior_mean, log_var, observed() if reopen else prior_mean, noise, reopen=reopen)
    return Denoised(post.mean, post.std, prior_mean, post.prior_std, post.noise_std, estimate)
