"""The noise model of a movie: spatial correlation, Poisson-Gaussian parameters and the blind spot they call for
(method.md, "Training and inference").

A blind-spot network must not see any pixel whose noise is correlated with the pixel it predicts, or it learns
to copy the noise. :func:`estimate_noise` separates the noise from the signal, measures its normalised
correlation with itself shifted by (dy, dx), how sure that measurement is, and the detector's gain, offset and
read noise; :func:`recommend_blind_spot` turns the correlation into the smallest blind window the network can
build outside of which the correlation stays below a threshold.

The signal must be removed first, or the image's own structure (smooth, hence strongly self-correlated) swamps
the noise:

* **movie** (two or more frames, ``method="difference"``): disjoint triplets of consecutive frames (t, t+1,
  t+2), spread over the movie (``max_pairs`` pairs at most, two per triplet; a plain pair for a two-frame movie
  or a given ``frame``). Frames t+1 and t+2 are registered onto frame t (phase correlation, then a least-squares
  sub-pixel refinement) and shifted back by a Fourier shift on an odd-sized crop: an all-pass operation that
  keeps the noise's spectrum, hence its correlation, exactly. The differences cancel a scene that drifts (a
  moving lattice no longer leaves fringes in them); a global brightness change (flicker) is regressed out. What
  local motion leaves (particles that move or turn on their own) grows as the square of the displacement, four
  times from lag 1 to lag 2, while the noise stays the same: every statistic (block variances, covariances) is
  extrapolated to lag 0 as (4 s1 - s2) / 3, which cancels it (or averaged over the lags, 2.7x less noisy,
  when both agree within the uncertainty). Each difference is variance-stabilised (divided by the noise
  standard deviation that the Poisson-Gaussian fit predicts from the pair's mean, so the noise is stationary in
  these units) to find the blocks that still hold structure: more variance than the noise predicts, or a
  difference that a local sub-pixel motion explains. Those blocks and outlier pixels (hot pixels that do not
  move with the scene) are masked out; the correlation is then the covariance of the raw differences over the
  remaining pixels, normalised (exact under the sub-pixel shift, see :func:`_group_correlations`).
* **single image** (``method="residual"``): the image minus a Gaussian-smoothed copy (sigma 2 px). For
  |dy|, |dx| <= 3 the smoothing's effect on the correlation is deconvolved exactly (least squares, assuming the
  noise correlation is compact: :func:`deconvolved_residual_correlation`); further out the anti-correlation
  that the subtraction induces in independent noise is removed (:func:`residual_bias`). Approximate: fine
  texture leaks in (worse at high dose), and only positive correlation counts for the blind spot (what remains
  of the high-pass's negative lobe is not noise; a detector kernel only makes positive correlation). Prefer a
  movie when there is one.

Confidence: the correlation is measured on each triplet; its standard error at every offset is the spread
between triplets over sqrt(triplets) (or, with fewer than three pairs, the sampling error sqrt(sum rho^2 / N) of N noise
pixels). An offset counts as correlated only when |rho| exceeds the threshold by more than two standard errors;
offsets within two standard errors of the threshold are reported as uncertain.

Poisson-Gaussian parameters (movies): over blocks of the registered pairs, the per-pixel noise variance is fitted
as ``var = slope * mean + intercept``. A charge-sharing detector spreads each electron's charge over neighbours:
the mean is kept but the per-pixel variance drops by the kernel's sum of squares, so the slope underestimates the
gain. The sum of the normalised correlation over the offsets where it is significant is exactly 1 / (sum of
squares) for a kernel that sums to one (the noise power at zero frequency is kept), so
``gain = slope * sum(rho)`` and ``gain * (mean - offset) + read_noise**2 = (slope * mean + intercept) * sum(rho)``.
The offset cannot be told apart from the read noise by this fit: give it (``offset=``, from the detector's
settings or a dark frame) to get the read noise; without it the combined term ``read_noise**2 - gain * offset``
is reported as ``intercept`` and ``read_noise`` is None.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from emlive.core.errors import ConfigError, InputDataError

if TYPE_CHECKING:
    from emlive.core.modelcard import NoiseModel
    from emlive.core.readers import Movie

log = logging.getLogger(__name__)

DEFAULT_MAX_DISTANCE = 15
DEFAULT_THRESHOLD = 0.1
DEFAULT_MAX_PAIRS = 32
RESIDUAL_SIGMA = 2.0
MAX_NETWORK_BLIND_SPOT = 15  # emlive.core.network accepts odd sizes 1..15
SIGNIFICANCE = 2.0  # standard errors by which a correlation must clear the threshold
SUPPORT_SIGNIFICANCE = 5.0  # standard errors for an offset to count in the kernel's support (sum of rho)
BLOCK = 8  # px, blocks of the variance-versus-mean fit and of the structure test
DECONVOLVED_RADIUS = 3  # px: the single-image correlation is deconvolved out to here (7 x 7 blind spots)
REGISTRATION_SIDE = 256  # px, centre crop that registration looks at
EDGE = 8  # px cropped from each side of a registered pair (wrap-around and ringing of the Fourier shift)


class NoiseMethod(str, enum.Enum):
    """How the noise is separated from the signal."""

    auto = "auto"  # difference for a movie of >= 2 frames, residual for a single image
    difference = "difference"
    residual = "residual"


@dataclass(frozen=True)
class NoiseCorrelation:
    """Normalised spatial autocorrelation of the noise, with its standard error.

    ``correlation[dy + m, dx + m]`` is the correlation of the (variance-stabilised) noise at (y, x) with the
    noise at (y + dy, x + dx), for |dy|, |dx| <= m = ``max_distance``; ``offsets`` is -m..m. ``correlation`` is
    point symmetric and 1 at (0, 0); ``se`` is its standard error (same shape, 0 at the centre). Profiles,
    indexed by distance d = 0..m: ``along_x`` (dy = 0, dx = d), ``along_y`` (dy = d, dx = 0) and ``ring_max``
    (max |correlation| over the square ring max(|dy|, |dx|) = d: a blind spot of (2d+1) x (2d+1) pixels covers
    every offset at smaller ring distances).
    """

    correlation: np.ndarray
    offsets: np.ndarray
    max_distance: int
    method: str  # "difference" or "residual"
    frames: tuple[int, ...]  # the frame(s) the noise was taken from
    shape: tuple[int, int]  # (H, W) of one noise image
    se: np.ndarray | None = None
    pairs: int = 1  # frame pairs (difference) or images (residual) measured
    pixels: int = 0  # noise pixels used, over all pairs
    shifts: tuple[tuple[float, float], ...] = ()  # registration (dy, dx) of each pair, px

    def at(self, dy: int, dx: int) -> float:
        """Correlation at offset (dy, dx)."""
        m = self.max_distance
        if abs(dy) > m or abs(dx) > m:
            raise InputDataError(f"offset ({dy}, {dx}) lies outside the measured range |dy|, |dx| <= {m}")
        return float(self.correlation[dy + m, dx + m])

    @property
    def standard_error(self) -> np.ndarray:
        """``se``, or the sampling error 1 / sqrt(pixels) everywhere when it was not measured."""
        if self.se is not None:
            return self.se
        return np.full(self.correlation.shape, 1.0 / math.sqrt(max(self.pixels, 1)))

    @property
    def along_x(self) -> np.ndarray:
        m = self.max_distance
        return np.asarray(self.correlation[m, m:], dtype=np.float64)

    @property
    def along_y(self) -> np.ndarray:
        m = self.max_distance
        return np.asarray(self.correlation[m:, m], dtype=np.float64)

    @property
    def ring_max(self) -> np.ndarray:
        m = self.max_distance
        ring = np.maximum(np.abs(self.offsets)[:, None], np.abs(self.offsets)[None, :])
        mag = np.abs(self.correlation)
        return np.asarray([mag[ring == d].max() for d in range(m + 1)], dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python numbers for JSON."""
        return {
            "method": self.method,
            "frames": list(self.frames),
            "pairs": self.pairs,
            "pixels": self.pixels,
            "shifts": [[round(dy, 4), round(dx, 4)] for dy, dx in self.shifts],
            "shape": list(self.shape),
            "max_distance": self.max_distance,
            "offsets": [int(v) for v in self.offsets],
            "correlation": [[float(v) for v in row] for row in self.correlation],
            "standard_error": [[float(v) for v in row] for row in self.standard_error],
            "profiles": {
                "distance": list(range(self.max_distance + 1)),
                "along_x": [float(v) for v in self.along_x],
                "along_y": [float(v) for v in self.along_y],
                "ring_max_abs": [float(v) for v in self.ring_max],
            },
        }


@dataclass(frozen=True)
class BlindSpotDecision:
    """The recommended blind spot and how sure it is.

    ``confidence`` is the probability (normal approximation) that the least clear-cut offset lies on the side of
    the threshold where the rule put it: 1.0 is certain, 0.5 a coin toss. ``uncertain`` lists the offsets whose
    |correlation| lies within ``SIGNIFICANCE`` standard errors of the threshold. ``beyond_network`` is true when
    the correlation reaches further than the largest blind spot the network can build (the recommendation is
    then capped at that size and does not hide all the correlated noise).
    """

    blind_spot: tuple[int, int]
    threshold: float
    confidence: float
    uncertain: tuple[tuple[int, int], ...]
    beyond_network: bool
    needed: tuple[int, int]  # what the correlation alone calls for, before the cap

    @property
    def label(self) -> str:
        return "high" if self.confidence >= 0.99 else "medium" if self.confidence >= 0.9 else "low"

    def to_dict(self) -> dict[str, Any]:
        return {
            "blind_spot": list(self.blind_spot),
            "threshold": self.threshold,
            "confidence": round(self.confidence, 4),
            "confidence_label": self.label,
            "uncertain_offsets": [list(o) for o in self.uncertain],
            "beyond_network": self.beyond_network,
            "needed": list(self.needed),
        }


@dataclass(frozen=True)
class PoissonGaussian:
    """``counts variance = gain * (mean - offset) + read_noise**2`` before charge sharing (see the module doc).

    ``intercept`` is ``read_noise**2 - gain * offset``; ``offset`` is what was given (it cannot be fitted) and
    ``read_noise`` is known only with it. The ``*_se`` are standard errors of the variance fit alone: over
    simulated movies the estimates spread two to three times more (scene-dependent leaks, the kernel sum).
    ``pixel_variance_factor`` = 1 / sum(rho): the share of that variance
    each pixel keeps after charge sharing (the kernel's sum of squares; 1 for independent pixels).
    """

    gain: float
    intercept: float
    gain_se: float
    intercept_se: float
    offset: float | None
    read_noise: float | None
    read_noise_se: float | None
    pixel_variance_factor: float
    blocks: int
    mean_range: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain numbers for JSON (a non-finite value, e.g. from a degenerate fit, becomes None)."""
        out = self._fields()
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in out.items()}

    def _fields(self) -> dict[str, Any]:
        return {
            "gain": self.gain,
            "gain_se": self.gain_se,
            "intercept": self.intercept,
            "intercept_se": self.intercept_se,
            "offset": self.offset,
            "read_noise": self.read_noise,
            "read_noise_se": self.read_noise_se,
            "pixel_variance_factor": self.pixel_variance_factor,
            "blocks": self.blocks,
            "mean_range": list(self.mean_range),
            "model": "variance = gain * (mean - offset) + read_noise^2 (before charge sharing)",
        }


@dataclass(frozen=True)
class NoiseEstimate:
    """Everything :func:`estimate_noise` measured."""

    correlation: NoiseCorrelation
    decision: BlindSpotDecision
    poisson_gaussian: PoissonGaussian | None
    warnings: tuple[str, ...] = field(default=())

    @property
    def blind_spot(self) -> tuple[int, int]:
        return self.decision.blind_spot

    def kernel(self, radius: int = 2) -> list[list[float]]:
        """The normalised correlation at |dy|, |dx| <= radius (rounded to 4 decimals)."""
        k = min(int(radius), self.correlation.max_distance)
        m = self.correlation.max_distance
        block = self.correlation.correlation[m - k : m + k + 1, m - k : m + k + 1]
        return [[round(float(v), 4) for v in row] for row in block]

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.correlation.to_dict(),
            **self.decision.to_dict(),
            "poisson_gaussian": None if self.poisson_gaussian is None else self.poisson_gaussian.to_dict(),
            "kernel": self.kernel(),
            "warnings": list(self.warnings),
        }

    def to_noise_model(self) -> NoiseModel:
        """The model card's record of this estimate."""
        from emlive.core.modelcard import NoiseModel

        pg = self.poisson_gaussian
        return NoiseModel(
            method=self.correlation.method,
            gain=None if pg is None else pg.gain,
            offset=None if pg is None else pg.offset,
            read_noise=None if pg is None else pg.read_noise,
            intercept=None if pg is None else pg.intercept,
            kernel=self.kernel(),
            recommended_blind_spot=self.blind_spot,
            confidence=self.decision.confidence,
            frames_used=len(self.correlation.frames),
            pairs=self.correlation.pairs,
            warnings=list(self.warnings),
        )


# ---------------------------------------------------------------------------------------------- correlation


def _check_max_distance(max_distance: int, shape: tuple[int, int]) -> int:
    m = int(max_distance)
    limit = min(shape) // 2
    if m < 1 or m > limit:
        raise ConfigError(
            f"max_distance={max_distance}: it must be from 1 to half the smaller frame side ({limit} for frames of "
            f"{shape[0]} x {shape[1]}); the default is {DEFAULT_MAX_DISTANCE}"
        )
    return m


def autocorrelation_sums(image: np.ndarray, max_distance: int) -> np.ndarray:
    """sum over p of image[p] * image[p + (dy, dx)] for |dy|, |dx| <= max_distance (zero-padded FFT, no wrap)."""
    from scipy import fft

    h, w = image.shape
    m = int(max_distance)
    fh, fw = fft.next_fast_len(h + m, real=True), fft.next_fast_len(w + m, real=True)
    spec = fft.rfft2(image, s=(fh, fw))
    ac = fft.irfft2(spec * np.conj(spec), s=(fh, fw))
    shifts = np.arange(-m, m + 1)
    return np.asarray(ac[np.ix_(shifts % fh, shifts % fw)], dtype=np.float64)


def autocorrelation(noise: np.ndarray, max_distance: int) -> np.ndarray:
    """Normalised autocorrelation of a 2-D noise image for |dy|, |dx| <= max_distance, through the FFT.

    The image is z-scored once; the correlation at an offset is the mean product over the overlapping pixels
    (zero padding avoids wrap-around), so it is 1 at (0, 0).
    """
    z = np.asarray(noise, dtype=np.float64)
    z = z - z.mean()
    std = float(z.std())
    if not std > 0:
        raise InputDataError(
            f"the noise image ({z.shape[0]} x {z.shape[1]}) is constant: there is no noise to measure (identical "
            "frames or a constant image); pick other frames or another file"
        )
    return masked_autocorrelation(z / std, np.ones(z.shape, dtype=bool), max_distance)


def masked_autocovariance(z: np.ndarray, mask: np.ndarray, max_distance: int) -> np.ndarray:
    """Mean of z(p) z(p + d) over the pairs of pixels where ``mask`` is true, |dy|, |dx| <= max_distance."""
    num = autocorrelation_sums(np.where(mask, z, 0.0), max_distance)
    den = autocorrelation_sums(mask.astype(np.float64), max_distance)
    return np.asarray(num / np.maximum(den, 1.0))


def masked_autocorrelation(z: np.ndarray, mask: np.ndarray, max_distance: int) -> np.ndarray:
    """Normalised autocorrelation of ``z`` over the pixels where ``mask`` is true (pairs of valid pixels only)."""
    return _normalised(masked_autocovariance(z, mask, max_distance), int(max_distance))


def _normalised(cov: np.ndarray, m: int) -> np.ndarray:
    if not cov[m, m] > 0:
        raise InputDataError("the noise is zero wherever it could be measured: there is no noise to measure")
    return np.asarray(cov / cov[m, m], dtype=np.float64)


def _smoothing_operator(sigma: float) -> np.ndarray:
    """B = (delta - G) correlated with itself, G the Gaussian kernel of ``sigma``: the residual's covariance is
    B convolved with the noise's. Square of side 2 * (2 * radius) + 1, centred."""
    from scipy.ndimage import gaussian_filter

    radius = int(4.0 * sigma + 0.5)  # gaussian_filter's default truncation
    size = 2 * radius + 1
    impulse = np.zeros((size, size))
    impulse[radius, radius] = 1.0
    return autocorrelation_sums(impulse - gaussian_filter(impulse, sigma, mode="constant"), size - 1)


def deconvolved_residual_correlation(noise: np.ndarray, radius: int, sigma: float = RESIDUAL_SIGMA) -> np.ndarray:
    """The noise's normalised correlation for |dy|, |dx| <= radius, from a smoothing residual (``noise``).

    Exact deconvolution of what the smoothing did: the residual's covariance C_r equals B * C_n (B from
    :func:`_smoothing_operator`); assuming the noise's correlation vanishes beyond ``radius`` (compact, as a
    detector kernel's), C_n is the point-symmetric least-squares solution of C_r = B * C_n over every offset
    where either is non-zero. This removes the negative lobe and the deficit near the centre that the plain
    residual shows for correlated noise.
    """
    b = _smoothing_operator(sigma)
    rb = b.shape[0] // 2
    h, w = noise.shape
    big = min(radius + rb, min(h, w) // 2 - 1)
    z = np.asarray(noise, dtype=np.float64) - float(np.mean(noise))
    shifts = np.arange(-big, big + 1)
    c_r = autocorrelation_sums(z, big) / ((h - np.abs(shifts))[:, None] * (w - np.abs(shifts))[None, :])
    side = 2 * big + 1
    padded = np.zeros((side + 2 * rb, side + 2 * rb))
    columns: dict[tuple[int, int], np.ndarray] = {}
    for uy in range(-radius, radius + 1):
        for ux in range(-radius, radius + 1):
            key = max((uy, ux), (-uy, -ux))
            padded[:] = 0.0
            cy, cx = big + rb + uy, big + rb + ux  # B centred at offset u, in padded coordinates
            padded[cy - rb : cy + rb + 1, cx - rb : cx + rb + 1] = b
            col = padded[rb : rb + side, rb : rb + side].ravel().copy()
            columns[key] = columns[key] + col if key in columns else col
    keys = list(columns)
    design = np.stack([columns[k] for k in keys], axis=1)
    solution, *_ = np.linalg.lstsq(design, c_r.ravel(), rcond=None)
    out = np.zeros((2 * radius + 1, 2 * radius + 1))
    for (uy, ux), value in zip(keys, solution, strict=True):
        out[uy + radius, ux + radius] = out[-uy + radius, -ux + radius] = value
    if not out[radius, radius] > 0:
        raise InputDataError("the residual holds no noise to measure (a constant image?)")
    return out / out[radius, radius]


def residual_bias(max_distance: int, sigma: float = RESIDUAL_SIGMA) -> np.ndarray:
    """Normalised autocorrelation that subtracting a Gaussian-smoothed copy (``sigma``) induces in independent
    noise, for |dy|, |dx| <= max_distance: (delta - G) correlated with itself, 1 at (0, 0)."""
    from scipy.ndimage import gaussian_filter

    radius = int(4.0 * sigma + 0.5)  # gaussian_filter's default truncation
    size = 2 * radius + 1
    impulse = np.zeros((size, size))
    impulse[radius, radius] = 1.0
    kernel = impulse - gaussian_filter(impulse, sigma, mode="constant")
    full = autocorrelation_sums(kernel, size - 1)  # (2 size - 1) square, centre at size - 1
    m = int(max_distance)
    out = np.zeros((2 * m + 1, 2 * m + 1))
    k = min(m, size - 1)
    c = size - 1
    out[m - k : m + k + 1, m - k : m + k + 1] = full[c - k : c + k + 1, c - k : c + k + 1]
    return out / full[c, c]


# ---------------------------------------------------------------------------------------------- registration


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """sum(a * b) without BLAS (whose threads stall on a busy machine)."""
    return float(np.sum(a * b))


def _odd(image: np.ndarray) -> np.ndarray:
    """``image`` cropped to odd sides: a Fourier shift of an odd-sized real image stays real and all-pass."""
    h, w = image.shape
    return image[: h - (1 - h % 2), : w - (1 - w % 2)]


def _frequencies(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    return np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]


def _phase_ramp(shape: tuple[int, ...], dy: float, dx: float) -> np.ndarray:
    """exp(-2 pi i (ky dy + kx dx)): the Fourier factor of a shift by (dy, dx), built separably."""
    ky, kx = _frequencies(shape)
    return np.exp(-2j * math.pi * ky * dy) * np.exp(-2j * math.pi * kx * dx)


def fourier_shift(image: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """``image`` (odd sides) moved by (dy, dx) px, periodically: out(y, x) = image(y - dy, x - dx)."""
    from scipy import fft

    return np.asarray(fft.ifft2(fft.fft2(image) * _phase_ramp(image.shape, dy, dx)).real)


def _phase_correlation_peak(ref: np.ndarray, moving: np.ndarray) -> tuple[float, float]:
    """Whole-pixel shift of ``moving`` relative to ``ref`` with a parabolic sub-pixel fit (Hann window)."""
    from scipy import fft

    h, w = ref.shape
    win = np.outer(np.hanning(h), np.hanning(w))
    fa = fft.fft2((ref - ref.mean()) * win)
    fb = fft.fft2((moving - moving.mean()) * win)
    cross = fb * np.conj(fa)
    surface = fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12)).real
    py, px = np.unravel_index(int(np.argmax(surface)), surface.shape)

    def vertex(lo: float, mid: float, hi: float) -> float:
        den = lo - 2.0 * mid + hi
        return 0.0 if den >= 0 else float(np.clip(0.5 * (lo - hi) / den, -0.5, 0.5))

    sy = vertex(surface[(py - 1) % h, px], surface[py, px], surface[(py + 1) % h, px])
    sx = vertex(surface[py, (px - 1) % w], surface[py, px], surface[py, (px + 1) % w])
    wy = py - h if py > h // 2 else py
    wx = px - w if px > w // 2 else px
    return float(wy + sy), float(wx + sx)


def register_shift(ref: np.ndarray, moving: np.ndarray, iterations: int = 4) -> tuple[float, float]:
    """Sub-pixel shift (dy, dx) such that ``moving(y, x) ~ ref(y - dy, x - dx)`` (a global translation).

    Phase correlation for the start, then least-squares refinement: the residual of ``moving`` shifted back
    against ``ref`` is regressed on the exact (Fourier) gradient of their mean, over an inner region away from
    the periodic edges. The noise of the two frames is independent, so it does not bias the estimate.
    """
    from scipy import fft

    a = _odd(np.asarray(ref, dtype=np.float64))
    b = _odd(np.asarray(moving, dtype=np.float64))
    dy, dx = _phase_correlation_peak(a, b)
    ky, kx = _frequencies(a.shape)
    fa, fb = fft.fft2(a), fft.fft2(b)
    inner = (slice(EDGE + 4, a.shape[0] - EDGE - 4), slice(EDGE + 4, a.shape[1] - EDGE - 4))
    for _ in range(iterations):
        back = fb * _phase_ramp(a.shape, -dy, -dx)
        mean = 0.5 * (back + fa)
        gy = fft.ifft2(2j * math.pi * ky * mean).real[inner].ravel()
        gx = fft.ifft2(2j * math.pi * kx * mean).real[inner].ravel()
        r = fft.ifft2(back - fa).real[inner].ravel()
        gyy, gyx, gxx = _dot(gy, gy), _dot(gy, gx), _dot(gx, gx)
        gram = np.array([[gyy, gyx], [gyx, gxx]])
        if not np.linalg.det(gram) > 1e-12 * max(float(np.trace(gram)) ** 2, 1e-300):
            break  # a flat scene: nothing to register on
        step = np.linalg.solve(gram, np.array([_dot(gy, r), _dot(gx, r)]))
        dy, dx = dy - float(step[0]), dx - float(step[1])
        if float(np.hypot(*step)) < 1e-3:
            break
    return dy, dx


# ---------------------------------------------------------------------------------------------- noise pairs


@dataclass
class _Pair:
    frames: tuple[int, int]
    shift: tuple[float, float]
    diff: np.ndarray  # registered frame b minus frame a, flicker removed
    mean: np.ndarray  # their mean (counts)
    mask: np.ndarray  # pixels to use


def _frame_as_float(source: Any, t: int) -> np.ndarray:
    frame = np.asarray(source[t], dtype=np.float64)
    if not np.all(np.isfinite(frame)):
        raise InputDataError(f"frame {t} contains NaN or inf values: replace or mask them before measuring noise")
    return frame


def _centre_crop(image: np.ndarray, max_side: int | None) -> np.ndarray:
    if max_side is None:
        return image
    h, w = image.shape
    y0, x0 = max(0, (h - max_side) // 2), max(0, (w - max_side) // 2)
    return image[y0 : y0 + max_side, x0 : x0 + max_side]


@dataclass
class _Group:
    """Frame t and the frames t + lag registered onto it: one difference per lag, all on the same pixels."""

    pairs: list[_Pair]  # lag 1, then lag 2 when there is one

    @property
    def frames(self) -> tuple[int, ...]:
        return (self.pairs[0].frames[0], *(p.frames[1] for p in self.pairs))


def _difference(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(b - a without its mean and without a global brightness change (flicker), (a + b) / 2)."""
    diff = b - a
    mean = 0.5 * (a + b)
    centred = mean - mean.mean()
    denom = _dot(centred, centred)
    flicker = _dot(diff, centred) / denom if denom > 0 else 0.0
    return diff - diff.mean() - flicker * centred, mean


def _register(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """:func:`register_shift` on the central ``REGISTRATION_SIDE`` px (a global shift; much faster on big frames)."""
    return register_shift(_centre_crop(a, REGISTRATION_SIDE), _centre_crop(b, REGISTRATION_SIDE))


def _registered_group(data: Any, t: int, lags: tuple[int, ...], register: bool, max_side: int | None) -> _Group:
    """Frames t + lag registered (sub-pixel, Fourier shift) onto frame t, cropped to the pixels all of them
    cover; each difference's outliers and local motion masked on a mask the differences share."""
    a = _odd(_centre_crop(_frame_as_float(data, t), max_side))
    others = [_odd(_centre_crop(_frame_as_float(data, t + lag), max_side)) for lag in lags]
    shifts = [_useful_shift(a, b, _register(a, b)) if register else (0.0, 0.0) for b in others]
    reach = max(max(abs(dy), abs(dx)) for dy, dx in shifts)
    e = EDGE + math.ceil(reach) if register else 0
    if min(a.shape) - 2 * e < 4 * BLOCK:
        raise InputDataError(
            f"frames {t} to {t + lags[-1]} moved by up to {reach:.1f} px: too little of the {a.shape[0]} x "
            f"{a.shape[1]} frame overlaps to measure the noise; pick frames closer in time"
        )
    inner = (slice(e, a.shape[0] - e), slice(e, a.shape[1] - e))
    pairs = []
    for lag, b, shift in zip(lags, others, shifts, strict=True):
        moved = fourier_shift(b, -shift[0], -shift[1]) if max(abs(shift[0]), abs(shift[1])) > 1e-3 else b
        diff, mean = _difference(a[inner], moved[inner])
        pairs.append(_Pair((t, t + lag), shift, diff, mean, _outlier_mask(diff)))
    mask = np.logical_and.reduce([p.mask for p in pairs])
    for p in pairs:
        _mask_local_motion(p.diff, p.mean, mask)
    for p in pairs:
        p.mask = mask
    return _Group(pairs)


def _registered_pair(data: Any, t: int, register: bool, max_side: int | None) -> _Pair:
    return _registered_group(data, t, (1,), register, max_side).pairs[0]


def _mask_local_motion(diff: np.ndarray, mean: np.ndarray, mask: np.ndarray) -> None:
    """Mask (in place) the blocks where a local motion explains the difference: a particle that moves, turns or
    grows on its own leaves structure that the global registration cannot remove.

    In every block the difference is fitted on (1, mean, d mean/dy, d mean/dx) (a local brightness change and a
    local sub-pixel translation); the share of its sum of squares that the fit explains is small and about the
    same in every block for noise (the mean's noise is independent of the difference's), large where structure
    leaked. Blocks whose share is a robust outlier upwards are masked; the difference itself is not changed
    (subtracting a fit would bias the correlation of correlated noise). Pixels outside whole blocks are masked.
    """
    gy, gx = np.gradient(mean)
    d = _block_view(diff)
    w = _block_view(mask.astype(np.float64))
    mb = _block_view(mean)
    mb = mb - (mb * w).sum(axis=1, keepdims=True) / np.maximum(w.sum(axis=1, keepdims=True), 1.0)
    x = np.stack([np.ones_like(d), mb, _block_view(gy), _block_view(gx)], axis=2) * w[:, :, None]
    gram = np.einsum("bpi,bpj->bij", x, x) + 1e-9 * np.eye(4)[None]
    rhs = np.einsum("bpi,bp->bi", x, d * w)
    coef = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
    explained = np.einsum("bi,bi->b", coef, rhs) / np.maximum(np.einsum("bp,bp->b", d * w, d * w), 1e-300)
    bad = _upward_outliers(explained, w.sum(axis=1) >= BLOCK * BLOCK // 2, 6.0)
    hb, wb = diff.shape[0] // BLOCK, diff.shape[1] // BLOCK
    flags = np.repeat(np.repeat(bad.reshape(hb, wb), BLOCK, axis=0), BLOCK, axis=1)
    mask[: hb * BLOCK, : wb * BLOCK] &= ~flags
    mask[hb * BLOCK :, :] = False
    mask[:, wb * BLOCK :] = False


def _useful_shift(a: np.ndarray, b: np.ndarray, shift: tuple[float, float]) -> tuple[float, float]:
    """``shift`` if moving ``b`` back by it makes the pair's difference smaller than not moving it, and it leaves
    most of the frame, else (0, 0): on a scene without structure (pure noise, a smooth ramp) phase correlation
    can lock onto noise. A wrong shift of noise alone is harmless (the shift is all-pass); a missed one is not."""
    e = EDGE + math.ceil(max(abs(shift[0]), abs(shift[1])))
    if 2 * (e - EDGE) > min(a.shape) // 4 or min(a.shape) - 2 * e < 4 * BLOCK:
        return 0.0, 0.0
    inner = (slice(e, a.shape[0] - e), slice(e, a.shape[1] - e))
    moved = fourier_shift(b, -shift[0], -shift[1])[inner] - a[inner]
    still = b[inner] - a[inner]
    gain = _dot(still - still.mean(), still - still.mean()) - _dot(moved - moved.mean(), moved - moved.mean())
    return shift if gain > 0 else (0.0, 0.0)


def _outlier_mask(diff: np.ndarray) -> np.ndarray:
    """False at pixels more than 8 robust standard deviations out (and their neighbours): hot pixels, cosmic
    rays, dead columns that do not move with the scene."""
    from scipy.ndimage import binary_dilation

    med = float(np.median(diff))
    mad = 1.4826 * float(np.median(np.abs(diff - med)))
    if not mad > 0:
        return np.ones(diff.shape, dtype=bool)
    bad = np.abs(diff - med) > 8.0 * mad
    if bad.any():
        bad = binary_dilation(bad, iterations=2)
    return np.asarray(~bad)


def _group_starts(n: int, frame: int | None, max_pairs: int) -> tuple[list[int], tuple[int, ...]]:
    """First frames of the frame groups and their lags: ``frame`` alone with lag 1; else disjoint triplets
    (t, t+1, t+2) with lags 1 and 2 spread over the movie (pairs when the movie has only two frames)."""
    if frame is not None:
        if not 0 <= frame <= n - 2:
            raise ConfigError(
                f"frame={frame}: the difference method uses frames (frame, frame+1), so frame must be from 0 to "
                f"{n - 2} for this movie of {n} frames"
            )
        return [int(frame)], (1,)
    if max_pairs < 1:
        raise ConfigError(f"max_pairs={max_pairs}: use at least 1 frame pair (default {DEFAULT_MAX_PAIRS})")
    lags = (1, 2) if n >= 3 else (1,)
    starts = list(range(0, n - lags[-1], lags[-1] + 1))
    groups = max(1, max_pairs // len(lags))
    if len(starts) > groups:
        pick = np.linspace(0, len(starts) - 1, groups).round().astype(int)
        starts = [starts[i] for i in sorted(set(pick.tolist()))]
    return starts, lags


# ---------------------------------------------------------------------------------------------- statistics


def _block_view(image: np.ndarray) -> np.ndarray:
    h, w = (image.shape[0] // BLOCK) * BLOCK, (image.shape[1] // BLOCK) * BLOCK
    return image[:h, :w].reshape(h // BLOCK, BLOCK, w // BLOCK, BLOCK).swapaxes(1, 2).reshape(-1, BLOCK * BLOCK)


def _block_stats(pairs: list[_Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per block of every pair: mean counts, per-pixel noise variance (half the difference's), valid pixels.

    The variance is the mean square of the difference (zero mean by construction): subtracting each block's own
    mean would bias it low by sum(rho) / pixels for correlated noise (about 2% for charge sharing in 16 x 16)."""
    means, variances, counts = [], [], []
    for p in pairs:
        mask = _block_view(p.mask.astype(np.float64))
        n = mask.sum(axis=1)
        mean = (_block_view(p.mean) * mask).sum(axis=1) / np.maximum(n, 1)
        d = _block_view(p.diff) * mask
        var = (d * d).sum(axis=1) / np.maximum(n, 1) / 2.0  # the difference has mean 0: no per-block mean
        keep = n >= BLOCK * BLOCK // 2
        means.append(mean[keep])
        variances.append(var[keep])
        counts.append(n[keep])
    return np.concatenate(means), np.concatenate(variances), np.concatenate(counts)


def _fit_variance(mean: np.ndarray, var: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust weighted fit var = slope * mean + intercept over blocks: ((slope, intercept), covariance, kept).

    A block's sample variance has relative error ~ sqrt(2 / n) (more for correlated noise; the scale is refitted
    from the residuals); blocks more than 4 robust standard errors above the line hold structure, not noise, and
    are dropped (structure only ever adds variance). A single mean level gives the slope through the origin.
    """
    keep = np.ones(mean.shape, dtype=bool)
    design = np.stack([mean, np.ones_like(mean)], axis=1)
    if float(np.ptp(mean)) <= 1e-6 * max(float(np.abs(mean).max()), 1.0):
        design = np.stack([mean, np.zeros_like(mean)], axis=1)
    coef = np.array([0.0, float(np.median(var))])
    cov = np.zeros((2, 2))
    for _ in range(6):
        pred = (
            np.maximum(design[:, 0] * coef[0] + design[:, 1] * coef[1], 1e-12)
            if coef.any()
            else np.full(mean.shape, float(np.median(var)))
        )
        rel = (var - pred) / (pred * np.sqrt(2.0 / np.maximum(n - 1, 1)))
        scale = 1.4826 * float(np.median(np.abs(rel[keep] - np.median(rel[keep])))) or 1.0
        keep = rel < 4.0 * scale + float(np.median(rel))
        w = (np.maximum(n - 1, 1) / 2.0 / pred**2)[keep]
        x, y = design[keep], var[keep]
        gram = np.einsum("ni,nj->ij", x * w[:, None], x)
        if design[:, 1].any():
            coef = np.linalg.solve(gram, np.einsum("ni,n->i", x * w[:, None], y))
            cov = np.linalg.inv(gram) * scale**2
        else:
            coef = np.array([_dot(x[:, 0] * w, y) / gram[0, 0], 0.0])
            cov = np.array([[scale**2 / gram[0, 0], 0.0], [0.0, 0.0]])
    return coef, cov, keep


def _mask_excess_variance(pair: _Pair, coef: np.ndarray) -> None:
    """Mask the blocks of the pair that hold more variance than the noise: the difference in units of its
    predicted noise std (variance-stabilised, stationary for noise) tested by :func:`_mask_structure`."""
    var = np.maximum(coef[0] * pair.mean + coef[1], 1e-12 * max(abs(float(coef[1])), 1.0))
    _mask_structure(pair.diff / np.sqrt(2.0 * var), pair.mask)


def _upward_outliers(values: np.ndarray, valid: np.ndarray, k: float) -> np.ndarray:
    """The ``valid`` entries more than ``k`` robust standard deviations (MAD) above the median of the valid ones
    (blocks already masked do not count: their zeros would pull the median down and mask the rest)."""
    if not valid.any():
        return np.zeros(values.shape, dtype=bool)
    med = float(np.median(values[valid]))
    spread = 1.4826 * float(np.median(np.abs(values[valid] - med)))
    return np.asarray(valid & (values > med + k * max(spread, 1e-6)))


def _mask_structure(z: np.ndarray, mask: np.ndarray) -> None:
    """Mask (in place) the blocks of a stabilised difference whose mean z^2 is a robust outlier upwards."""
    zz = _block_view(np.where(mask, z * z, 0.0))
    n = _block_view(mask.astype(np.float64)).sum(axis=1)
    level = zz.sum(axis=1) / np.maximum(n, 1)
    bad = _upward_outliers(level, n >= BLOCK * BLOCK // 2, 5.0)
    if not bad.any():
        return
    hb, wb = z.shape[0] // BLOCK, z.shape[1] // BLOCK
    flags = np.repeat(np.repeat(bad.reshape(hb, wb), BLOCK, axis=0), BLOCK, axis=1)
    mask[: hb * BLOCK, : wb * BLOCK] &= ~flags


def _extrapolated(values: list[np.ndarray], to_zero: bool = True) -> np.ndarray:
    """Noise statistic at lag 0 from lags 1 and 2: (4 s1 - s2) / 3. Structure left by smooth motion grows as the
    square of the displacement (4x from lag 1 to lag 2) and cancels; the noise is the same at both lags. With
    ``to_zero`` false, the mean of the lags: about 2.7x less variance, right when nothing leaked."""
    if len(values) == 1:
        return values[0]
    return (4.0 * values[0] - values[1]) / 3.0 if to_zero else 0.5 * (values[0] + values[1])


def _same_fit(coef: np.ndarray, cov: np.ndarray, other: np.ndarray, mean: np.ndarray) -> bool:
    """Whether the fit ``other`` predicts the same variance as ``coef`` (within 2 standard errors of ``coef``'s
    prediction) at the low and the high end of the block means."""
    for level in np.percentile(mean, [10.0, 90.0]):
        x = np.array([level, 1.0])
        se = math.sqrt(max(float(x @ cov @ x), 0.0))
        if abs(float(x @ coef) - float(x @ other)) > 2.0 * se:
            return False
    return True


def _group_correlations(groups: list[_Group], m: int, to_zero: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean correlation over frame groups, its standard error (spread between groups, floored by the sampling
    error) and the noise pixels used.

    From the raw differences, not the stabilised ones: the sub-pixel shift mixes neighbouring pixels' noise with
    weights whose products cancel only in an unweighted sum (dividing by a signal-dependent standard deviation
    left -0.012 at 1 px along the drift for independent noise under a 5 px lattice)."""
    maps = []
    for g in groups:
        cov = _extrapolated([masked_autocovariance(p.diff, p.mask, m) for p in g.pairs], to_zero)
        maps.append(_normalised(cov, m))
    stack = np.stack(maps)
    corr = stack.mean(axis=0)
    pixels = int(sum(int(g.pairs[0].mask.sum()) for g in groups))
    sampling = math.sqrt(float(np.sum(corr[max(m - 3, 0) : m + 4, max(m - 3, 0) : m + 4] ** 2)) / max(pixels, 1))
    se = np.full(corr.shape, sampling)
    if len(stack) >= 3:
        se = np.maximum(se, stack.std(axis=0, ddof=1) / math.sqrt(len(stack)))
    se[m, m] = 0.0
    return corr, se, pixels


def _group_block_stats(groups: list[_Group], to_zero: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_block_stats` of every group, the variance extrapolated to lag 0 where a group has two lags."""
    means, variances, counts = [], [], []
    for g in groups:
        stats = [_block_stats([p]) for p in g.pairs]
        means.append(stats[0][0])
        variances.append(_extrapolated([v for _, v, _ in stats], to_zero))
        counts.append(stats[0][2])
    return np.concatenate(means), np.concatenate(variances), np.concatenate(counts)


def _support(corr: np.ndarray, se: np.ndarray, m: int) -> tuple[int, int]:
    """Half sizes (a, b) of the window holding the kernel's support, <= 7: the clearly non-zero correlations
    connected to the centre (a detector kernel's support is compact; an isolated outlier further out is not)."""
    from scipy.ndimage import label

    strong = np.abs(corr) > SUPPORT_SIGNIFICANCE * np.maximum(se, 1e-6)
    strong[m, m] = True
    regions, _ = label(strong, structure=np.ones((3, 3)))
    dy, dx = np.nonzero(regions == regions[m, m])
    cap = MAX_NETWORK_BLIND_SPOT // 2
    return min(int(np.abs(dy - m).max()), cap), min(int(np.abs(dx - m).max()), cap)


def _integrated_correlation(corr: np.ndarray, se: np.ndarray, m: int) -> float:
    """Sum of the correlation over the kernel's support, less the baseline that a faint broad leak of signal
    adds everywhere (the median correlation in a ring 2-5 px outside the support): 1 / (sum of squares)."""
    a, b = _support(corr, se, m)
    ring = np.maximum(np.abs(np.arange(-m, m + 1))[:, None], np.abs(np.arange(-m, m + 1))[None, :])
    far = (ring >= max(a, b) + 2) & (ring <= max(a, b) + 5)
    baseline = float(np.median(corr[far])) if far.any() else 0.0
    window = corr[m - a : m + a + 1, m - b : m + b + 1] - baseline
    return float(window.sum() + baseline)  # the centre is 1 by definition, not 1 + baseline


def _poisson_gaussian(
    coef: np.ndarray, cov: np.ndarray, corr: np.ndarray, se: np.ndarray, m: int, offset: float | None, extra: Any
) -> tuple[PoissonGaussian, list[str]]:
    total = _integrated_correlation(corr, se, m)
    warnings: list[str] = []
    gain, intercept = float(coef[0] * total), float(coef[1] * total)
    read_noise = read_noise_se = None
    if offset is not None:
        read_var = intercept + gain * float(offset)
        lever = np.array([float(offset), 1.0])
        read_var_se = total * math.sqrt(max(float(lever @ cov @ lever), 0.0))
        if read_var < 0:
            warnings.append(
                f"read noise variance {read_var:.3g} < 0 with offset={offset:g}: the offset is probably too low "
                "(measure it on a dark frame); read noise reported as 0"
            )
        read_noise = math.sqrt(max(read_var, 0.0))
        read_noise_se = read_var_se / (2.0 * max(read_noise, math.sqrt(read_var_se)))
        if read_noise_se > 0.08 * read_noise:  # the fit's error; the spread over simulated seeds is ~3x larger
            warnings.append(
                f"the read noise ({read_noise:.3g} +- {read_noise_se:.2g} counts) is poorly determined: it is small "
                "next to the shot noise even in the darkest parts; measure it on dark frames"
            )
    mean, keep = extra
    pg = PoissonGaussian(
        gain=gain,
        intercept=intercept,
        gain_se=float(math.sqrt(max(cov[0, 0], 0.0)) * total),
        intercept_se=float(math.sqrt(max(cov[1, 1], 0.0)) * total),
        offset=None if offset is None else float(offset),
        read_noise=read_noise,
        read_noise_se=read_noise_se,
        pixel_variance_factor=1.0 / total if total > 0 else float("nan"),
        blocks=int(keep.sum()),
        mean_range=(float(mean[keep].min()), float(mean[keep].max())),
    )
    return pg, warnings


# ---------------------------------------------------------------------------------------------- entry points


def _as_frames(source: np.ndarray | Movie) -> Any:
    if isinstance(source, np.ndarray):
        if source.ndim == 2:
            return source[None]
        if source.ndim != 3:
            raise InputDataError(f"array of shape {source.shape}: expected an (H, W) image or a (T, H, W) movie")
    if len(source) < 1:
        raise InputDataError("the movie has no frames")
    return source


def _method(method: NoiseMethod | str, n: int) -> NoiseMethod:
    try:
        how = NoiseMethod(method)
    except ValueError as exc:
        raise ConfigError(f"method={method!r}: use one of auto, difference, residual") from exc
    if how is NoiseMethod.auto:
        how = NoiseMethod.difference if n >= 2 else NoiseMethod.residual
    if how is NoiseMethod.difference and n < 2:
        raise ConfigError("method=difference needs a movie of at least 2 frames, this input has 1: use method=residual")
    return how


def noise_image(
    source: np.ndarray | Movie,
    frame: int = 0,
    method: NoiseMethod | str = NoiseMethod.auto,
    residual_sigma: float = RESIDUAL_SIGMA,
) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """One noise image from ``source``: the registered difference of frames (frame, frame+1) for a movie, the
    smoothing residual of ``frame`` for a single image. Returns (noise image, method used, frames used)."""
    from scipy.ndimage import gaussian_filter

    data = _as_frames(source)
    n = len(data)
    how = _method(method, n)
    if how is NoiseMethod.difference:
        pair = _registered_pair(data, _group_starts(n, frame, 1)[0][0], True, None)
        return pair.diff, how.value, pair.frames
    if not 0 <= frame <= n - 1:
        raise ConfigError(f"frame={frame}: must be from 0 to {n - 1} for this input of {n} frames")
    image = _frame_as_float(data, frame)
    return image - gaussian_filter(image, residual_sigma, mode="reflect"), how.value, (frame,)


def _difference_estimate(
    data: Any, frame: int | None, m: int, max_pairs: int, offset: float | None, max_side: int | None, register: bool
) -> tuple[NoiseCorrelation, PoissonGaussian | None, list[str]]:
    starts, lags = _group_starts(len(data), frame, max_pairs)
    groups = [_registered_group(data, t, lags, register, max_side) for t in starts]
    first = groups[0].pairs[0].diff
    m = _check_max_distance(m, (first.shape[0], first.shape[1]))
    if not any(float(np.abs(p.diff[p.mask]).max(initial=0.0)) > 0 for g in groups for p in g.pairs):
        raise InputDataError(
            "the frame differences are zero everywhere: there is no noise to measure (identical frames); "
            "pick other frames or another file"
        )
    warnings: list[str] = []
    for _ in range(2):  # fit, mask the structure the fit reveals, fit again on what is left
        mean, var, n = _group_block_stats(groups)
        coef, cov, keep = _fit_variance(mean, var, n)
        if not coef[0] > 0:
            coef = np.array([0.0, max(float(np.median(var)), 1e-12)])
        for p in (p for g in groups for p in g.pairs):
            _mask_excess_variance(p, coef)
    if not coef[0] > 0:
        warnings.append(
            "the noise variance does not grow with the signal: not Poisson-like counts (already normalised or "
            "denoised data?); the correlation is measured with a constant variance and no gain is reported"
        )
    (coef, cov, keep, mean), corr, se, pixels = _precise_where_nothing_leaked(groups, m, (coef, cov, keep, mean))
    pg: PoissonGaussian | None = None
    if coef[0] > 0:
        pg, more = _poisson_gaussian(coef, cov, corr, se, m, offset, (mean, keep))
        warnings += more
    pairs = [p for g in groups for p in g.pairs]
    result = NoiseCorrelation(
        correlation=corr,
        offsets=np.arange(-m, m + 1),
        max_distance=m,
        method=NoiseMethod.difference.value,
        frames=tuple(sorted({t for g in groups for t in g.frames})),
        shape=(int(first.shape[0]), int(first.shape[1])),
        se=se,
        pairs=len(pairs),
        pixels=pixels,
        shifts=tuple((round(p.shift[0], 4), round(p.shift[1], 4)) for p in pairs),
    )
    return result, pg, warnings


_Fit = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # coefficients, their covariance, blocks kept, means


def _precise_where_nothing_leaked(groups: list[_Group], m: int, fit: _Fit) -> tuple[_Fit, np.ndarray, np.ndarray, int]:
    """The lag-0 extrapolated fit and correlation, or the lag-averaged ones (less noisy) when they agree with the
    extrapolated ones within its uncertainty: nothing measurable leaked."""
    coef, cov, keep, mean = fit
    corr, se, pixels = _group_correlations(groups, m, True)
    if len(groups[0].pairs) < 2:
        return fit, corr, se, pixels
    mean_a, var_a, n_a = _group_block_stats(groups, False)
    coef_a, cov_a, keep_a = _fit_variance(mean_a, var_a, n_a)
    if coef[0] > 0 and _same_fit(coef, cov, coef_a, mean[keep]):
        coef, cov, keep, mean = coef_a, cov_a, keep_a, mean_a
    corr_a, se_a, _ = _group_correlations(groups, m, False)
    k = min(3, m)
    centre = (slice(m - k, m + k + 1), slice(m - k, m + k + 1))
    if np.all(np.abs(corr_a[centre] - corr[centre]) <= 2.0 * se[centre]):
        corr, se = corr_a, se_a
    return (coef, cov, keep, mean), corr, se, pixels


def _residual_estimate(data: Any, frame: int, m: int) -> NoiseCorrelation:
    noise, used, frames = noise_image(data, frame, NoiseMethod.residual)
    m = _check_max_distance(m, (noise.shape[0], noise.shape[1]))
    corr = autocorrelation(noise, m) - residual_bias(m)
    corr[m, m] = 1.0
    k = min(DECONVOLVED_RADIUS, m)
    corr[m - k : m + k + 1, m - k : m + k + 1] = deconvolved_residual_correlation(noise, k)
    sampling = math.sqrt(float(np.sum(corr[max(m - 3, 0) : m + 4, max(m - 3, 0) : m + 4] ** 2)) / noise.size)
    se = np.full(corr.shape, sampling)
    se[m, m] = 0.0
    return NoiseCorrelation(
        correlation=corr,
        offsets=np.arange(-m, m + 1),
        max_distance=m,
        method=used,
        frames=frames,
        shape=(int(noise.shape[0]), int(noise.shape[1])),
        se=se,
        pairs=1,
        pixels=int(noise.size),
    )


def noise_correlation(
    movie_or_array: np.ndarray | Movie,
    frame: int | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    method: NoiseMethod | str = NoiseMethod.auto,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> NoiseCorrelation:
    """Spatial correlation of the noise of ``movie_or_array`` (an (H, W) image, a (T, H, W) array or a Movie).

    A movie uses registered differences of disjoint frame pairs (``frame`` given: only frames frame, frame+1); a
    single image (or ``method="residual"``) the residual from a Gaussian-smoothed copy of ``frame`` (default 0).
    Offsets go to ``max_distance`` pixels in y and x. See the module doc.
    """
    return estimate_noise(movie_or_array, frame=frame, max_distance=max_distance, method=method,
                          max_pairs=max_pairs).correlation  # fmt: skip


def estimate_noise(
    source: np.ndarray | Movie,
    *,
    frame: int | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    threshold: float = DEFAULT_THRESHOLD,
    method: NoiseMethod | str = NoiseMethod.auto,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    offset: float | None = None,
    max_side: int | None = None,
    register: bool = True,
) -> NoiseEstimate:
    """The noise model of ``source``: correlation (with standard errors), the blind spot it calls for (with a
    confidence), and for a movie the Poisson-Gaussian parameters (``offset``: the detector's known offset in
    counts, which gives the read noise). ``max_side`` centre-crops frames to at most that many pixels (speed)."""
    data = _as_frames(source)
    how = _method(method, len(data))
    warnings: list[str] = []
    pg: PoissonGaussian | None = None
    if how is NoiseMethod.difference:
        corr, pg, warnings = _difference_estimate(data, frame, max_distance, max_pairs, offset, max_side, register)
    else:
        corr = _residual_estimate(data, 0 if frame is None else frame, max_distance)
        warnings.append("single image: the gain, offset and read noise need a movie (two or more frames)")
    decision = decide_blind_spot(corr, threshold)
    warnings += _decision_warnings(decision, corr)
    for text in warnings:
        log.warning("%s", text)
    return NoiseEstimate(correlation=corr, decision=decision, poisson_gaussian=pg, warnings=tuple(warnings))


# ---------------------------------------------------------------------------------------------- the blind spot


def _check_threshold(threshold: float) -> float:
    thr = float(threshold)
    if not (0 < thr < 1):
        raise ConfigError(
            f"threshold={threshold}: it must lie strictly between 0 and 1 (a correlation magnitude); the "
            f"default is {DEFAULT_THRESHOLD}"
        )
    return thr


def _window(offsets: np.ndarray, m: int) -> tuple[int, int]:
    if not offsets.any():
        return 1, 1
    dy, dx = np.nonzero(offsets)
    return 2 * int(np.max(np.abs(dy - m))) + 1, 2 * int(np.max(np.abs(dx - m))) + 1


def decide_blind_spot(corr: NoiseCorrelation, threshold: float = DEFAULT_THRESHOLD) -> BlindSpotDecision:
    """The smallest odd blind window (h, w) the network can build such that no offset outside it is correlated.

    An offset is correlated when its correlation exceeds ``threshold`` by more than ``SIGNIFICANCE`` standard
    errors (in magnitude; only positive values for the residual method, whose high-pass makes a negative lobe).
    h and w are independent: h = 2 * max|dy| + 1 and w = 2 * max|dx| + 1 over the correlated offsets, capped at
    ``MAX_NETWORK_BLIND_SPOT``. Independent noise gives (1, 1); noise correlated only along x (1, 3), only along
    y (3, 1).
    """
    thr = _check_threshold(threshold)
    m = corr.max_distance
    value = corr.correlation if corr.method == NoiseMethod.residual.value else np.abs(corr.correlation)
    se = np.maximum(corr.standard_error, 1e-9)
    strong = value - SIGNIFICANCE * se >= thr
    strong[m, m] = False
    near = np.abs(value - thr) < SIGNIFICANCE * se
    near[m, m] = False
    z = np.abs(value - thr) / se
    z[m, m] = np.inf
    confidence = 0.5 * (1.0 + math.erf(float(z.min()) / math.sqrt(2.0)))
    needed = _window(strong, m)
    cap = MAX_NETWORK_BLIND_SPOT
    blind = (min(needed[0], cap), min(needed[1], cap))
    uncertain = tuple((int(dy - m), int(dx - m)) for dy, dx in zip(*np.nonzero(near), strict=True))
    return BlindSpotDecision(blind, thr, confidence, uncertain, max(needed) > cap, needed)


def _decision_warnings(decision: BlindSpotDecision, corr: NoiseCorrelation) -> list[str]:
    out = []
    if decision.beyond_network:
        out.append(
            f"the noise looks correlated over {decision.needed[0]} x {decision.needed[1]} px, beyond the largest "
            f"blind spot the network can build ({MAX_NETWORK_BLIND_SPOT} x {MAX_NETWORK_BLIND_SPOT}, recommended "
            "anyway): a blind spot cannot hide it. Bin the data (e.g. 2x2) so the correlation fits, check the "
            "detector (gain reference, interpolation, compression) and the heatmap: if it shows the scene's "
            "structure, signal leaked into the estimate (use a movie, more frames, or frames with less motion)"
        )
    elif max(decision.needed) >= 2 * corr.max_distance + 1:
        out.append(
            f"the noise correlation still exceeds {decision.threshold:g} at the edge of the measured range "
            f"({corr.max_distance} px): measure with a larger --max-distance"
        )
    if decision.uncertain:
        out.append(
            f"{len(decision.uncertain)} offset(s) lie within {SIGNIFICANCE:g} standard errors of the threshold "
            f"(e.g. {decision.uncertain[0]}): the recommendation is uncertain (confidence "
            f"{decision.confidence:.2f}); use more frames or a larger field of view"
        )
    return out


def recommend_blind_spot(corr: NoiseCorrelation, threshold: float = DEFAULT_THRESHOLD) -> tuple[int, int]:
    """The recommended blind spot (h, w): :func:`decide_blind_spot`'s window, never larger than the network's
    largest (``MAX_NETWORK_BLIND_SPOT``); a correlation that reaches further is warned about."""
    decision = decide_blind_spot(corr, threshold)
    for text in _decision_warnings(decision, corr):
        log.warning("%s", text)
    return decision.blind_spot


def correlation_table(corr: NoiseCorrelation, radius: int = 3) -> str:
    """The correlation at |dy|, |dx| <= radius as a text grid (rows dy, columns dx)."""
    k = min(int(radius), corr.max_distance)
    head = "dy \\ dx " + "".join(f"{dx:>8d}" for dx in range(-k, k + 1))
    lines = [head]
    for dy in range(-k, k + 1):
        lines.append(f"{dy:>7d} " + "".join(f"{corr.at(dy, dx):>+8.3f}" for dx in range(-k, k + 1)))
    return "\n".join(lines)


TRAINING_GROUPS = 6  # frame triplets measured at training (a few seconds on 512 x 512)
TRAINING_SIDE = 512  # px, centre crop measured at training


def _binned(frame: np.ndarray, factor: int) -> np.ndarray:
    if factor <= 1:
        return frame
    h, w = (frame.shape[0] // factor) * factor, (frame.shape[1] // factor) * factor
    return np.asarray(frame[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3)))


def noise_model_for_training(
    movie: Movie, blind_spot: tuple[int, int], frames: tuple[int, int] | None = None, bin_factor: int = 1
) -> NoiseModel | None:
    """The noise model of a training movie for its model card (cheap: a few frame triplets of a centre crop,
    binned as the network sees them), or None when it cannot be measured (logged; training goes on). Warns when
    the configured ``blind_spot`` is smaller than the recommendation."""
    first, last = frames if frames is not None else (0, len(movie))
    if last - first < 1:
        log.warning("no noise model for the model card: the training split has no frames")
        return None
    size = min(3, last - first)
    starts = list(range(first, last - size + 1, size))
    if len(starts) > TRAINING_GROUPS:
        starts = [starts[i] for i in np.linspace(0, len(starts) - 1, TRAINING_GROUPS).round().astype(int)]
    picked = [t + k for t in starts for k in range(size)]  # disjoint triplets, as estimate_noise groups them
    try:
        stack = np.stack([_binned(np.asarray(movie[t], dtype=np.float64), bin_factor) for t in picked])
        est = estimate_noise(stack, max_distance=min(DEFAULT_MAX_DISTANCE, min(stack.shape[1:]) // 4),
                             max_side=TRAINING_SIDE)  # fmt: skip
    except (InputDataError, ConfigError) as exc:
        log.warning("no noise model for the model card: %s", exc)
        return None
    need = est.blind_spot
    if blind_spot[0] < need[0] or blind_spot[1] < need[1]:
        log.warning(
            "network.blind_spot %s is smaller than the %d x %d that the training data's noise calls for "
            "(confidence %.2f; emlive noise-stats shows it): the network can learn to copy correlated noise. "
            "Set network.blind_spot=[%d, %d] unless you know better",
            list(blind_spot), need[0], need[1], est.decision.confidence, need[0], need[1],
        )  # fmt: skip
    return est.to_noise_model()
