"""Posterior-mean inference: re-open the blind spot with the pixel the network was not allowed to see.

A blind-spot network with ``network.head=gaussian`` predicts, per pixel, a prior for the clean value x: its mean
mu and variance s_x^2 (the blind estimate and its error; Laine et al. 2019). The observed pixel y = x + noise, with
noise variance s_n^2 from the detector's noise model, then gives the posterior (everything here is in raw detector
counts, numpy only: it runs on the light install's serving path):

* **Gaussian** (the general case): ``mean = (s_n^2 mu + s_x^2 y) / (s_x^2 + s_n^2)``,
  ``var = s_x^2 s_n^2 / (s_x^2 + s_n^2)``, with s_n^2 = var(mu), the noise variance at the PRIOR mean (as Laine
  et al.: the observation's own value must not set its weight). Its mean squared error is the blind one times
  s_n^2 / (s_x^2 + s_n^2): the gain is ``10 log10(1 + s_x^2 / s_n^2)`` dB (:func:`predicted_gain_db`). Where the
  prior is far tighter than the noise (s_x^2 << s_n^2) the formula returns ~mu by itself: the blind output.
* **Exact Poisson** (a pure-Poisson detector, i.e. counting: no read noise, uncorrelated pixels, below
  ``exact_below`` expected electrons per pixel, where the Gaussian approximation of Poisson fails): the prior is
  the Gamma distribution of the same mean m and variance v in electrons (alpha = m^2 / v, beta = m / v), conjugate
  to the Poisson count k, so the posterior is Gamma(alpha + k, beta + 1). Its MEAN, (alpha + k) / (beta + 1) =
  (m^2 + v k) / (m + v), is exactly the Gaussian formula with s_n^2 = var(mu) = m; its variance,
  v (m^2 + v k) / (m + v)^2, differs from the Gaussian v m / (m + v) unless k = m (it grows with the count seen).
* **Fallback** (``reopen=False``): mu, with the prior's standard deviation as the uncertainty.

The noise model (:class:`PixelNoise`) is the card's (``emlive noise-stats``, measured on what the network sees):
pixel variance ``var(m) = max(slope * m + intercept, floor)``. For correlated noise (charge sharing) the pixel's
noise is NOT independent of its neighbours, which the blind spot hides from the network: the per-pixel variance
is still right (the kernel's sum of squares is in the slope), so the posterior of each pixel alone stays valid;
the remaining correlation of the noise between pixels is left in (no whitening).

:class:`PriorCalibration` is the variance head's self-supervised recalibration, measured on the training data (or
with ``emlive calibrate``) and kept in the card, or measured on each movie ``emlive denoise`` denoises; the runtime
applies it to the head's output before anything here.

:class:`NoiseCheck` is the self-supervised test of the noise model (no truth needed): in the blind spot the prior
is independent of the pixel's noise, so ``E[(y - mu)^2] = E[s_x^2] + E[s_n^2]``. A measured/predicted ratio far
from 1 means the noise model (or the variance head) is wrong; the check says which way and recommends the blind
output.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from emlive.core.errors import ConfigError, InputDataError

if TYPE_CHECKING:
    from emlive.core.modelcard import NoiseModel, VarianceCalibration

log = logging.getLogger(__name__)

ArrayT = TypeVar("ArrayT", bound=Any)  # a numpy array or a torch tensor (both have * + and clip(min=))

FLOOR_ELECTRONS = 0.05  # the variance floor: the Poisson variance of 0.05 electrons (dark pixels, fits below 0)
CORRELATED_RHO = 0.05  # off-centre normalised correlation above this: the noise is correlated (charge sharing)
KERNEL_NOISE_RHO = 0.02  # card kernel entries within this of 0 are measurement noise, left out of sum(kernel)
POISSON_READ_ELECTRONS2 = 0.5  # read variance (electrons^2, the fit's error included) below this: pure Poisson
MIN_PRIOR_ELECTRONS = 1e-3  # the exact Poisson branch's prior mean floor (a prior mean <= offset)
LOG_VAR_CLIP32 = 80.0  # |log prior variance| bound of the float32 posterior (exp(80) = 5.5e34: no overflow)
CHECK_BLOCK = 16  # px, blocks of the noise check's standard error
CHECK_FRAMES = 3  # frames the noise check runs on: of each movie offline, the first of each acquisition live
CHECK_SIGMAS = 5.0  # the noise check flags a ratio this many standard errors from 1 ...
CHECK_TOLERANCE = 0.15  # ... and off by more than this fraction (a few % is harmless to the posterior)
CALIBRATION_BINS = 20  # bins of the prior calibration (PriorCalibration)
CALIBRATION_MIN_PIXELS = 20_000  # pixels per bin at least (fewer bins on less data)
CALIBRATION_MIN_SCALE = 1e-3  # a bin's scale of the prior variance at least (an excess <= 0: the blind output)
CALIBRATION_MIN_STEP = 0.01  # bin centres closer than this (log variance: 1%) are pooled: no steep, noisy table


class Estimate(enum.StrEnum):
    """What a probabilistic (``head=gaussian``) model outputs."""

    blind = "blind"  # the blind-spot estimate mu (the prior mean): what a mean-head model outputs
    posterior = "posterior"  # the posterior mean: prior combined with the observed pixel (the re-opened blind spot)


@dataclass(frozen=True)
class PixelNoise:
    """Per-pixel noise of what the network sees, in raw counts: ``var(m) = max(slope * m + intercept, floor)``.

    ``offset`` (counts) when known; ``correlated``: the noise is shared with neighbouring pixels (charge sharing).
    """

    slope: float
    intercept: float
    offset: float | None
    correlated: bool

    def __post_init__(self) -> None:
        if not (math.isfinite(self.slope) and self.slope > 0):
            raise ConfigError(
                f"noise model slope={self.slope}: the variance must grow with the signal (slope > 0, counts per "
                "electron); re-measure it with emlive noise-stats or give data.noise"
            )
        if not math.isfinite(self.intercept):
            raise ConfigError(f"noise model intercept={self.intercept}: must be finite; re-measure the noise model")

    @property
    def floor(self) -> float:
        """The smallest variance (counts^2): that of FLOOR_ELECTRONS electrons."""
        return FLOOR_ELECTRONS * self.slope**2

    def variance(self, mean: np.ndarray | float) -> np.ndarray:
        """Noise variance (counts^2) of pixels of expected value ``mean`` (counts)."""
        return self.variance_of(np.asarray(mean, dtype=np.float64))

    def variance_of(self, mean: ArrayT) -> ArrayT:
        """:meth:`variance` of a numpy array or a torch tensor (the training loss), in its own type."""
        return (mean * self.slope + self.intercept).clip(min=self.floor)

    @property
    def poisson_offset(self) -> float | None:
        """The offset to count electrons from when the detector is pure Poisson (uncorrelated, no read noise: a
        counting detector), else None. Without a known offset, an intercept near 0 means offset 0, no read noise."""
        if self.correlated:
            return None
        limit = POISSON_READ_ELECTRONS2 * self.slope**2
        if self.offset is None:
            return 0.0 if abs(self.intercept) <= limit else None
        read_var = self.intercept + self.slope * self.offset
        return self.offset if read_var <= limit else None

    @classmethod
    def from_card(cls, noise: NoiseModel) -> PixelNoise:
        """The pixel noise of a card's noise model (``emlive noise-stats``'s estimate).

        The card's ``gain`` and ``intercept`` describe the variance BEFORE charge sharing (analysis/noise_stats.py,
        module doc); a pixel keeps the kernel's sum of squared weights of it, and the sum of the normalised
        correlation (the card's ``kernel``) is 1 / (sum of squares). So slope = gain / sum(kernel), intercept =
        intercept / sum(kernel). Kernel entries within KERNEL_NOISE_RHO of 0 are measurement noise and left out.
        ``correlated`` is the card's when it says, else whether an off-centre correlation exceeds CORRELATED_RHO.
        """
        if noise.gain is None or noise.intercept is None:
            raise ConfigError(
                f"the model card's noise model has gain={noise.gain}, intercept={noise.intercept}: the posterior "
                "needs both (the Poisson-Gaussian fit failed on the training data); give the detector's noise with "
                "data.noise when training, or use the blind output (--estimate blind)"
            )
        rho = kernel_array(noise.kernel)
        off = rho.copy()
        off[rho.shape[0] // 2, rho.shape[1] // 2] = 0.0
        total = kernel_sum(rho)
        correlated = noise.correlated
        return cls(
            slope=float(noise.gain) / total,
            intercept=float(noise.intercept) / total,
            offset=noise.offset,
            correlated=bool(np.abs(off).max(initial=0.0) > CORRELATED_RHO) if correlated is None else correlated,
        )


def kernel_array(kernel: list[list[float]] | None) -> np.ndarray:
    """A card's noise ``kernel`` (normalised correlation, centred) as an array; [[1]] when there is none."""
    rho = np.asarray(kernel, dtype=np.float64) if kernel else np.ones((1, 1))
    if rho.ndim != 2 or rho.shape[0] % 2 == 0 or rho.shape[1] % 2 == 0:
        raise ConfigError(f"noise model kernel of shape {list(rho.shape)}: must be a centred odd-sized 2-D array")
    return rho


def kernel_sum(rho: np.ndarray) -> float:
    """Sum of the normalised noise correlation (1 at the centre; entries within KERNEL_NOISE_RHO of 0 are
    measurement noise): 1 / (the charge-sharing kernel's sum of squares), the factor a pixel's variance lost."""
    off = rho.copy()
    off[rho.shape[0] // 2, rho.shape[1] // 2] = 0.0
    return 1.0 + float(off[np.abs(off) > KERNEL_NOISE_RHO].sum())


@dataclass(frozen=True)
class PriorCalibration:
    """A self-supervised recalibration of a variance head: measured on the training data and kept in the card, or
    measured on the movie being denoised (:mod:`emlive.export.calibration`).

    A head trained by the Gaussian NLL learns s_x^2 slowly where the prior is much tighter than the noise (its
    learning signal per pixel is about s_x^2 / s_n^2): after a CPU budget a 5-frame head at 20-100 e-/px/frame
    predicts half to a tenth of its true error in most pixels (30-55% of pixels within +-1 std, 68% nominal), while
    its ranking of pixels (where the prior is weak) is sound. In the blind spot the prior's error and the pixel's
    noise are independent, so over any set of pixels ``mean((y - mu)^2) = mean(s_x^2) + mean(s_n^2)`` (the noise
    check's relation) gives the true mean prior variance without the truth.

    :meth:`fit` sorts pixels by the head's own output, its log prior variance in the network's units (z-units of
    the center frame: whole-frame statistics, independent of any one pixel's noise or error), splits them into up
    to CALIBRATION_BINS equal bins and measures one scale per bin, ``c = (sum (y - mu)^2 - sum s_n^2) / sum s_x^2``
    (at least CALIBRATION_MIN_SCALE). :meth:`apply` adds the log scale, interpolated in the head's output (constant
    beyond the outer bins), to that output. A key that involved the prior mean (say s_x^2 / s_n^2(mu)) would select
    pixels by the prior's own error and bias the bins. With a scale per bin, the posterior's MSE over a bin is the
    one :func:`predicted_gain_db` predicts from the calibrated variance (the weight is linear in the errors it
    averages), so the predicted gain becomes a measured one.
    """

    log_var_z: tuple[float, ...]  # bin centres: the mean log prior variance (z-units) of the head in each bin
    log_scale: tuple[float, ...]  # log of each bin's scale of s_x^2
    pixels: int  # pixels it was measured on

    def __post_init__(self) -> None:
        r, c = np.asarray(self.log_var_z, dtype=np.float64), np.asarray(self.log_scale, dtype=np.float64)
        if r.ndim != 1 or r.size < 1 or r.shape != c.shape:
            raise ConfigError(
                f"prior calibration: {r.size} bin centres and {c.size} scales; need as many of each (at least one)"
            )
        if not (np.all(np.isfinite(r)) and np.all(np.isfinite(c))) or np.any(np.diff(r) <= 0):
            raise ConfigError(
                "prior calibration: bin centres must be finite and strictly increasing, scales finite; the card's "
                "prior_calibration is corrupt: re-run `emlive calibrate MODEL MOVIE`"
            )

    def apply(self, log_var_z: np.ndarray) -> np.ndarray:
        """The calibrated log prior variance (float32, z-units) of the head's output ``log_var_z``."""
        lv = np.asarray(log_var_z, dtype=np.float32)
        return lv + np.interp(lv, self.log_var_z, self.log_scale).astype(np.float32)

    @classmethod
    def fit(
        cls, mu: np.ndarray, log_var_prior: np.ndarray, observed: np.ndarray, noise: PixelNoise,
        frame_std: np.ndarray | float, *, bins: int = CALIBRATION_BINS,
    ) -> PriorCalibration:  # fmt: skip
        """Measure the table on (T, H, W) (or (H, W)) arrays in counts: the blind output, its log prior variance and
        the observed frames (never pixels the network saw); ``frame_std``: each frame's std (T,), the runtime's
        normalisation, which turns the log prior variance into the head's z-units. Fewer bins on fewer pixels (at
        least CALIBRATION_MIN_PIXELS per bin; down to one: a single scale)."""
        m, lv, y, key = _calibration_inputs(mu, log_var_prior, observed, frame_std)
        noise_var = noise.variance(m)
        n_bins = int(np.clip(m.size // CALIBRATION_MIN_PIXELS, 1, max(1, bins)))
        sums = [  # per bin: sum of the key, of the excess residual, of the predicted s_x^2; pixels
            [float(key[i].sum()), float(np.sum((y[i] - m[i]) ** 2 - noise_var[i])), float(np.exp(lv[i]).sum()), i.size]
            for i in np.array_split(np.argsort(key, kind="stable"), n_bins)
        ]
        merged: list[list[float]] = []
        for part in sums:  # bins of (nearly) one head value are pooled (a constant head: one bin)
            if merged and part[0] / part[3] <= merged[-1][0] / merged[-1][3] + CALIBRATION_MIN_STEP:
                merged[-1] = [a + b for a, b in zip(merged[-1], part, strict=True)]
            else:
                merged.append(part)
        centres = tuple(k / n for k, _, _, n in merged)
        scales = tuple(math.log(max(e / p, CALIBRATION_MIN_SCALE)) for _, e, p, _ in merged)
        return cls(centres, scales, int(m.size))

    @classmethod
    def from_card(cls, card: VarianceCalibration) -> PriorCalibration:
        """The calibration of a card's ``prior_calibration``."""
        return cls(tuple(card.log_var_z), tuple(card.log_scale), card.pixels)

    def to_card(self, frames: int, source: str) -> VarianceCalibration:
        """The card's record of it, measured on ``frames`` frames of ``source``."""
        from emlive.core.modelcard import VarianceCalibration

        return VarianceCalibration(
            log_var_z=list(self.log_var_z), log_scale=list(self.log_scale), pixels=self.pixels, frames=frames,
            source=source,
        )  # fmt: skip


def _calibration_inputs(
    mu: np.ndarray, log_var_prior: np.ndarray, observed: np.ndarray, frame_std: np.ndarray | float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:meth:`PriorCalibration.fit`'s arrays checked and flattened: mu, log prior variance (counts^2, clipped),
    observed, and the key (the head's log prior variance in z-units)."""
    m, lv, y = _as_array("mu", mu), _as_array("log_var_prior", log_var_prior), _as_array("observed", observed)
    _same_shape(mu=m, log_var_prior=lv, observed=y)
    std = _as_array("frame_std", frame_std)
    frames = m.size // max(1, m.shape[-2] * m.shape[-1]) if m.ndim >= 2 else 0
    if m.size == 0 or m.ndim < 2 or np.any(std <= 0) or std.size not in (1, frames):
        raise InputDataError(
            f"prior calibration: arrays of shape {list(m.shape)} with {std.size} frame std(s); give (T, H, W) "
            "frames, at least one, and a positive std per frame"
        )
    key = lv - 2.0 * np.log(std).reshape((*std.shape, 1, 1) if std.size > 1 else ())
    return m.ravel(), np.clip(lv.ravel(), -700.0, 700.0), y.ravel(), key.ravel()


@dataclass(frozen=True)
class Posterior:
    """Elementwise posterior, float32 arrays in counts: mean, std, and the prior's and the noise's std."""

    mean: np.ndarray
    std: np.ndarray
    prior_std: np.ndarray
    noise_std: np.ndarray


def _as_array(name: str, value: np.ndarray | float) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise InputDataError(f"{name}: {int(np.sum(~np.isfinite(arr)))} NaN/inf value(s); all values must be finite")
    return arr


def _same_shape(**arrays: np.ndarray) -> None:
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {list(s)}" for name, s in shapes.items())
        raise InputDataError(f"shape mismatch: {listed}; the posterior combines the arrays pixel by pixel")


def to_counts(
    mu_z: np.ndarray, log_var_z: np.ndarray, mean: float | np.ndarray, std: float | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The network's z-unit prior (mean, log variance) in counts for a frame normalised with (mean, std)
    (numbers, or arrays that broadcast: one per frame of a batch)."""
    std64 = np.asarray(std, dtype=np.float64)
    return (
        np.asarray(mu_z, dtype=np.float64) * std64 + mean,
        np.asarray(log_var_z, dtype=np.float64) + 2.0 * np.log(std64),
    )


def _as_float32(name: str, value: np.ndarray | float) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float32)
    # one float64 sum instead of an isfinite pass: it cannot overflow, and any NaN/inf makes it non-finite
    if not math.isfinite(float(arr.sum(dtype=np.float64))):
        return _as_array(name, arr)  # raises, counting the bad values
    return arr


def posterior(
    mu: np.ndarray,
    log_var_prior: np.ndarray,
    observed: np.ndarray,
    noise: PixelNoise,
    *,
    exact_below: float = 1.0,
    reopen: bool = True,
) -> Posterior:
    """The posterior of the clean pixel values given the prior (``mu``, ``log_var_prior``: log of the variance in
    counts^2) and the ``observed`` pixels (counts); see the module doc. ``exact_below``: expected electrons per
    pixel under which a pure-Poisson detector gets the exact Poisson-Gamma posterior (0: never).

    In float32 (the runtime's frames are float32; the serving path's cost): the Gaussian posterior as the prior's
    weight w = s_x^2 / (s_x^2 + s_n^2) in [0, 1], mean = mu + w (y - mu), var = w s_n^2, which neither overflows
    nor cancels (the log prior variance is clipped to +-LOG_VAR_CLIP32); its error against float64 is a few float32
    ulps of the pixel values, far below the noise (tests/core/test_posterior.py). Only the exact Poisson-Gamma
    branch (its pixels alone) runs in float64: alpha = m^2 / v is huge where the prior is tight."""
    m, lv, y = _as_float32("mu", mu), _as_float32("log_var_prior", log_var_prior), _as_float32("observed", observed)
    _same_shape(mu=m, log_var_prior=lv, observed=y)
    if exact_below < 0:
        raise ConfigError(f"exact_below={exact_below}: must be >= 0 electrons per pixel (0 disables the exact branch)")
    prior_var = np.exp(np.clip(lv, -LOG_VAR_CLIP32, LOG_VAR_CLIP32))
    noise_var = noise.variance_of(m)
    if not reopen:
        return _float32(m.copy(), prior_var, prior_var, noise_var)  # never the caller's array
    weight = prior_var / (prior_var + noise_var)
    mean = y - m
    mean *= weight
    mean += m
    var = weight * noise_var
    offset = noise.poisson_offset
    if offset is not None and exact_below > 0:
        _exact_poisson(m, prior_var, y, noise.slope, offset, exact_below, mean, var)
    return _float32(mean, var, prior_var, noise_var)


def _exact_poisson(
    mu: np.ndarray,
    prior_var: np.ndarray,
    y: np.ndarray,
    gain: float,
    offset: float,
    exact_below: float,
    mean: np.ndarray,
    var: np.ndarray,
) -> None:
    """Overwrite ``mean`` and ``var`` with the Poisson-Gamma posterior where the prior mean is below
    ``exact_below`` electrons (in counts = offset + gain * electrons); in float64, on those pixels only."""
    low = mu < offset + gain * exact_below
    if not np.any(low):
        return
    m = np.maximum((mu[low].astype(np.float64) - offset) / gain, MIN_PRIOR_ELECTRONS)
    v = np.maximum(prior_var[low].astype(np.float64) / gain**2, 1e-12)
    k = np.maximum((y[low].astype(np.float64) - offset) / gain, 0.0)
    alpha, beta = m * m / v, m / v
    mean[low] = offset + gain * (alpha + k) / (beta + 1.0)
    var[low] = gain**2 * (alpha + k) / (beta + 1.0) ** 2


def _float32(mean: np.ndarray, var: np.ndarray, prior_var: np.ndarray, noise_var: np.ndarray) -> Posterior:
    return Posterior(
        mean=np.asarray(mean, dtype=np.float32),
        std=np.sqrt(var, dtype=np.float32),
        prior_std=np.sqrt(prior_var, dtype=np.float32),
        noise_std=np.sqrt(noise_var, dtype=np.float32),
    )


def _variances(prior_var: np.ndarray | float, noise_var: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    pv, nv = _as_array("prior_var", prior_var), _as_array("noise_var", noise_var)
    for name, arr in (("prior_var", pv), ("noise_var", nv)):
        if arr.size and float(arr.min()) < 0:
            raise InputDataError(f"{name}: minimum {float(arr.min()):g} < 0; a variance cannot be negative")
    if pv.shape != nv.shape and pv.size != 1 and nv.size != 1:
        raise InputDataError(
            f"shape mismatch: prior_var {list(pv.shape)}, noise_var {list(nv.shape)}; give one value per pixel"
        )
    return np.broadcast_arrays(pv, nv)  # type: ignore[return-value]


def predicted_gain_db(
    prior_var: np.ndarray | float, noise_var: np.ndarray | float, mask: np.ndarray | None = None
) -> float:
    """The gain (dB) of the posterior mean over the blind output that the model predicts from its own variance
    head and the noise model: ``10 log10(mean(prior_var) / mean(posterior_var))`` over the pixels (of ``mask``
    when given: a region), posterior_var = prior_var noise_var / (prior_var + noise_var). Call it per frame."""
    pv, nv = _variances(prior_var, noise_var)
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)
        if keep.shape != pv.shape:
            raise InputDataError(f"mask shape {list(keep.shape)} differs from the variances' {list(pv.shape)}")
        pv, nv = pv[keep], nv[keep]
    if pv.size == 0:
        raise InputDataError("predicted_gain_db: no pixels (empty arrays or an empty mask)")
    post = pv * nv / np.maximum(pv + nv, 1e-300)
    mean_post = float(post.mean())
    if mean_post <= 0:
        return 0.0  # no noise or no prior uncertainty: nothing to gain
    return 10.0 * math.log10(float(pv.mean()) / mean_post)


@dataclass(frozen=True)
class NoiseCheck:
    """Self-supervised check of the noise model and the variance head: ``ratio`` = mean((y - mu)^2) over its
    prediction mean(s_x^2 + s_n^2(mu)), with its standard error ``se`` (from blocks of CHECK_BLOCK px).

    ``ok`` is False when the ratio is more than ``sigmas`` standard errors AND more than ``tolerance`` from 1:
    the posterior would then weigh the pixel wrongly, and the blind output is the safe choice.
    """

    ratio: float
    se: float
    measured: float  # mean squared residual, counts^2
    predicted: float  # mean predicted variance, counts^2
    pixels: int
    sigmas: float = CHECK_SIGMAS
    tolerance: float = CHECK_TOLERANCE

    @property
    def ok(self) -> bool:
        off = abs(self.ratio - 1.0)
        return not (off > self.sigmas * self.se and off > self.tolerance)

    @property
    def message(self) -> str:
        """One line for the log: fine, or which way the noise model is off and what to do."""
        head = f"noise check: measured/predicted residual variance {self.ratio:.3f} +- {self.se:.3f}"
        if self.ok:
            return f"{head}: the noise model and the variance head agree with the data"
        if self.ratio > 1:
            why = (
                "the data are noisier than the card's noise model predicts (gain too low, read noise or offset "
                "wrong?) or the variance head is overconfident"
            )
        else:
            why = (
                "the data are quieter than the card's noise model predicts (gain too high, e.g. a noise model "
                "of another detector or dose setting?)"
            )
        return (
            f"{head}: {why}; the posterior would weigh the observed pixel wrongly: use the blind output "
            "(--estimate blind), or re-measure the noise model (emlive noise-stats) and give it as data.noise"
        )

    def to_dict(self) -> dict[str, float | int | bool | str]:
        return {
            "ratio": self.ratio,
            "se": self.se,
            "measured": self.measured,
            "predicted": self.predicted,
            "pixels": self.pixels,
            "ok": self.ok,
            "message": self.message,
        }

    @classmethod
    def measure(
        cls,
        mu: np.ndarray,
        log_var_prior: np.ndarray,
        observed: np.ndarray,
        noise: PixelNoise,
        *,
        block: int = CHECK_BLOCK,
        sigmas: float = CHECK_SIGMAS,
        tolerance: float = CHECK_TOLERANCE,
    ) -> NoiseCheck:
        """The check over (..., H, W) arrays in counts (one frame or several; the blind output and its observed
        frame, never a pixel the network saw)."""
        parts = check_parts(mu, log_var_prior, observed, noise, block=block)
        return cls.from_parts([parts], sigmas=sigmas, tolerance=tolerance)

    @classmethod
    def from_parts(
        cls, parts: list[CheckParts], *, sigmas: float = CHECK_SIGMAS, tolerance: float = CHECK_TOLERANCE
    ) -> NoiseCheck:
        """The check of frames measured apart (:func:`check_parts`: e.g. by the live service's worker processes)."""
        if not parts:
            raise InputDataError("noise check: no frames measured; give at least one frame's check_parts")
        r_blocks = np.concatenate([p.residual_blocks for p in parts])
        p_blocks = np.concatenate([p.predicted_blocks for p in parts])
        ratio = float(r_blocks.sum() / p_blocks.sum())
        n = r_blocks.size
        if n > 1:  # the ratio estimator's standard error over blocks
            spread = float(np.sum((r_blocks - ratio * p_blocks) ** 2)) / (n * (n - 1))
            se = math.sqrt(spread) / float(p_blocks.mean())
        else:
            se = float("inf")
        pixels = sum(p.pixels for p in parts)
        measured, predicted = sum(p.residual_sum for p in parts), sum(p.predicted_sum for p in parts)
        return cls(ratio, se, measured / pixels, predicted / pixels, pixels, sigmas, tolerance)


@dataclass(frozen=True)
class CheckParts:
    """What :class:`NoiseCheck` needs of some frames: the block sums of the squared residual and of its predicted
    variance, their sums over every pixel, and the pixel count (JSON-able: :meth:`to_json`, :meth:`from_json`)."""

    residual_blocks: np.ndarray
    predicted_blocks: np.ndarray
    residual_sum: float
    predicted_sum: float
    pixels: int

    def to_json(self) -> dict[str, Any]:
        blocks = {"residual_blocks": self.residual_blocks.tolist(), "predicted_blocks": self.predicted_blocks.tolist()}
        return {**blocks, "residual_sum": self.residual_sum, "predicted_sum": self.predicted_sum, "pixels": self.pixels}

    @classmethod
    def from_json(cls, data: Any) -> CheckParts:
        """Parsed and checked (InputDataError naming what is wrong)."""
        try:
            r = np.asarray(data["residual_blocks"], dtype=np.float64)
            p = np.asarray(data["predicted_blocks"], dtype=np.float64)
            out = cls(r, p, float(data["residual_sum"]), float(data["predicted_sum"]), int(data["pixels"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputDataError(f"noise check parts: {type(exc).__name__}: {exc}; a bug of the sender") from None
        if r.ndim != 1 or r.shape != p.shape or out.pixels < 1 or not np.all(np.isfinite(r) & np.isfinite(p)):
            raise InputDataError(f"noise check parts: {r.shape} and {p.shape} blocks, {out.pixels} pixels: malformed")
        return out


def check_parts(
    mu: np.ndarray, log_var_prior: np.ndarray, observed: np.ndarray, noise: PixelNoise, *, block: int = CHECK_BLOCK
) -> CheckParts:
    """:class:`CheckParts` of (..., H, W) arrays in counts (the blind output, its log prior variance, the observed
    frame)."""
    m, lv, y = _as_array("mu", mu), _as_array("log_var_prior", log_var_prior), _as_array("observed", observed)
    _same_shape(mu=m, log_var_prior=lv, observed=y)
    if m.ndim < 2:
        raise InputDataError(f"noise check: arrays of shape {list(m.shape)}; give (H, W) frames or (T, H, W)")
    residual = (y - m) ** 2
    predicted = np.exp(np.clip(lv, -700.0, 700.0)) + noise.variance(m)
    return CheckParts(_block_sums(residual, block), _block_sums(predicted, block), float(residual.sum()),
                      float(predicted.sum()), int(m.size))  # fmt: skip


def decide_estimate(estimate: Estimate, check: NoiseCheck | None, *, forced: bool) -> Estimate:
    """The one rule of every runtime (offline per movie, batch shards, the live service per acquisition): the
    ``estimate`` asked for, except that a posterior whose noise check failed falls back to the blind output unless
    it was ``forced`` (--estimate posterior); no check (no noise model): unchanged."""
    if estimate is Estimate.posterior and check is not None and not check.ok and not forced:
        return Estimate.blind
    return estimate


def _block_sums(values: np.ndarray, block: int) -> np.ndarray:
    """Sums over block x block tiles of the last two axes (a ragged edge tile is dropped unless it is all)."""
    h, w = values.shape[-2:]
    bh, bw = min(block, h), min(block, w)
    hh, ww = (h // bh) * bh, (w // bw) * bw
    tiles = values[..., :hh, :ww].reshape(*values.shape[:-2], hh // bh, bh, ww // bw, bw)
    return np.asarray(tiles.sum(axis=(-3, -1)), dtype=np.float64).ravel()
