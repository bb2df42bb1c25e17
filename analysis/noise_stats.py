"""Spatial noise correlation and the blind spot it calls for (method.md, "Training and inference").

A blind-spot network must not see any pixel whose noise is correlated with the pixel it predicts, or it learns
to copy the noise. :func:`noise_correlation` measures the normalised correlation of the noise with itself
shifted by (dy, dx); :func:`recommend_blind_spot` turns it into the smallest blind window (h, w) outside of which
the correlation stays below a threshold.

The signal must be removed first, or the image's own structure (smooth, hence strongly self-correlated) swamps
the noise:

* **movie** (two or more frames): the difference of frames i+1 and i. A static scene cancels; the shot noise of
  two independent exposures adds, with the same spatial correlation as in one frame (the scale is irrelevant
  after normalisation). Moving features, drift and beam-current flicker leave some signal in the difference.
* **single image**: the residual of the image minus a Gaussian-smoothed copy (sigma 2 px). The smoothing removes
  the signal except its finest detail (which leaks in, more at high dose). It also makes the residual of
  independent noise slightly anti-correlated (about -0.04 at one pixel); that known pattern is subtracted from
  the measured map (:func:`residual_bias`), which is exact for independent noise. For correlated noise the
  smoothing's bias scales with the sum of the correlation and part of it remains (slightly negative values
  around a correlated centre): prefer a movie when there is one.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emlive.core.errors import ConfigError, InputDataError

if TYPE_CHECKING:
    from emlive.core.readers import Movie

log = logging.getLogger(__name__)

DEFAULT_MAX_DISTANCE = 15
DEFAULT_THRESHOLD = 0.1
RESIDUAL_SIGMA = 2.0
MAX_NETWORK_BLIND_SPOT = 15  # emlive.core.network accepts odd sizes 1..15


class NoiseMethod(str, enum.Enum):
    """How the noise is separated from the signal."""

    auto = "auto"  # difference for a movie of >= 2 frames, residual for a single image
    difference = "difference"
    residual = "residual"


@dataclass(frozen=True)
class NoiseCorrelation:
    """Normalised spatial autocorrelation of the noise.

    ``correlation[dy + m, dx + m]`` is the correlation of the z-scored noise at (y, x) with the noise at
    (y + dy, x + dx), for |dy|, |dx| <= m = ``max_distance``; ``offsets`` is -m..m. ``correlation`` is point
    symmetric and 1 at (0, 0). Profiles, indexed by distance d = 0..m: ``along_x`` (dy = 0, dx = d),
    ``along_y`` (dy = d, dx = 0) and ``ring_max`` (max |correlation| over the square ring max(|dy|, |dx|) = d:
    a blind spot of (2d+1) x (2d+1) pixels covers every offset at smaller ring distances).
    """

    correlation: np.ndarray
    offsets: np.ndarray
    max_distance: int
    method: str  # "difference" or "residual"
    frames: tuple[int, ...]  # the frame(s) the noise was taken from
    shape: tuple[int, int]  # (H, W) of the noise image

    def at(self, dy: int, dx: int) -> float:
        """Correlation at offset (dy, dx)."""
        m = self.max_distance
        if abs(dy) > m or abs(dx) > m:
            raise InputDataError(f"offset ({dy}, {dx}) lies outside the measured range |dy|, |dx| <= {m}")
        return float(self.correlation[dy + m, dx + m])

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
            "shape": list(self.shape),
            "max_distance": self.max_distance,
            "offsets": [int(v) for v in self.offsets],
            "correlation": [[float(v) for v in row] for row in self.correlation],
            "profiles": {
                "distance": list(range(self.max_distance + 1)),
                "along_x": [float(v) for v in self.along_x],
                "along_y": [float(v) for v in self.along_y],
                "ring_max_abs": [float(v) for v in self.ring_max],
            },
        }


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
    z /= std
    h, w = z.shape
    m = int(max_distance)
    shifts = np.arange(-m, m + 1)
    block = autocorrelation_sums(z, m)
    counts = (h - np.abs(shifts))[:, None] * (w - np.abs(shifts))[None, :]
    return np.asarray(block / counts, dtype=np.float64)


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


def _frame_as_float(source: Any, t: int) -> np.ndarray:
    frame = np.asarray(source[t], dtype=np.float64)
    if not np.all(np.isfinite(frame)):
        raise InputDataError(f"frame {t} contains NaN or inf values: replace or mask them before measuring noise")
    return frame


def noise_image(
    source: np.ndarray | Movie,
    frame: int = 0,
    method: NoiseMethod | str = NoiseMethod.auto,
    residual_sigma: float = RESIDUAL_SIGMA,
) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """The noise isolated from ``source`` (see the module doc): (noise image, method used, frames used)."""
    from scipy.ndimage import gaussian_filter

    try:
        how = NoiseMethod(method)
    except ValueError as exc:
        raise ConfigError(f"method={method!r}: use one of auto, difference, residual") from exc
    data: Any = source
    if isinstance(source, np.ndarray):
        if source.ndim == 2:
            data = source[None]
        elif source.ndim != 3:
            raise InputDataError(f"array of shape {source.shape}: expected an (H, W) image or a (T, H, W) movie")
    n = len(data)
    if n < 1:
        raise InputDataError("the movie has no frames")
    if how is NoiseMethod.auto:
        how = NoiseMethod.difference if n >= 2 else NoiseMethod.residual
    if how is NoiseMethod.difference:
        if n < 2:
            raise ConfigError(
                "method=difference needs a movie of at least 2 frames, this input has 1: use method=residual"
            )
        if not 0 <= frame <= n - 2:
            raise ConfigError(
                f"frame={frame}: the difference method uses frames (frame, frame+1), so frame must be from 0 to "
                f"{n - 2} for this movie of {n} frames"
            )
        noise = _frame_as_float(data, frame + 1) - _frame_as_float(data, frame)
        return noise, how.value, (frame, frame + 1)
    if not 0 <= frame <= n - 1:
        raise ConfigError(f"frame={frame}: must be from 0 to {n - 1} for this input of {n} frames")
    image = _frame_as_float(data, frame)
    return image - gaussian_filter(image, residual_sigma, mode="reflect"), how.value, (frame,)


def noise_correlation(
    movie_or_array: np.ndarray | Movie,
    frame: int = 0,
    max_distance: int = DEFAULT_MAX_DISTANCE,
    method: NoiseMethod | str = NoiseMethod.auto,
) -> NoiseCorrelation:
    """Spatial correlation of the noise of ``movie_or_array`` (an (H, W) image, a (T, H, W) array or a Movie).

    A movie uses the difference of frames ``frame + 1`` and ``frame``; a single image (or ``method="residual"``)
    the residual from a Gaussian-smoothed copy. Offsets go to ``max_distance`` pixels in y and x.
    """
    noise, used, frames = noise_image(movie_or_array, frame, method)
    m = _check_max_distance(max_distance, (noise.shape[0], noise.shape[1]))
    corr = autocorrelation(noise, m)
    if used == NoiseMethod.residual.value:
        corr = corr - residual_bias(m)
        corr[m, m] = 1.0
    result = NoiseCorrelation(
        correlation=corr,
        offsets=np.arange(-m, m + 1),
        max_distance=m,
        method=used,
        frames=frames,
        shape=(int(noise.shape[0]), int(noise.shape[1])),
    )
    sampling_sd = 1.0 / math.sqrt(noise.size)
    log.debug("noise correlation from %s of frames %s; sampling s.d. about %.4f", used, frames, sampling_sd)
    return result


def recommend_blind_spot(corr: NoiseCorrelation, threshold: float = DEFAULT_THRESHOLD) -> tuple[int, int]:
    """The smallest odd blind window (h, w) such that |correlation| < ``threshold`` at every offset outside it.

    h and w are independent: h = 2 * max|dy| + 1 and w = 2 * max|dx| + 1 over the offsets (other than (0, 0))
    where |correlation| >= threshold. Independent noise gives (1, 1); noise correlated only along x gives (1, 3),
    only along y (3, 1).
    """
    thr = float(threshold)
    if not (0 < thr < 1):
        raise ConfigError(
            f"threshold={threshold}: it must lie strictly between 0 and 1 (a correlation magnitude); the "
            f"default is {DEFAULT_THRESHOLD}"
        )
    m = corr.max_distance
    strong = np.abs(corr.correlation) >= thr
    strong[m, m] = False
    if not strong.any():
        return 1, 1
    dy, dx = np.nonzero(strong)
    a = int(np.max(np.abs(dy - m)))
    b = int(np.max(np.abs(dx - m)))
    h, w = 2 * a + 1, 2 * b + 1
    if max(a, b) >= m:
        log.warning(
            "the noise correlation is still >= %.3g at the edge of the measured range (%d px): signal leaked into "
            "the noise estimate (motion, drift, flicker or fine texture) or the noise has long-range structure "
            "(stripes). Check the heatmap; try another --frame, --method residual or a larger --max-distance.",
            thr,
            m,
        )
    if max(h, w) > MAX_NETWORK_BLIND_SPOT:
        log.warning(
            "recommended blind spot %d x %d exceeds the largest the network supports (%d x %d); the measured "
            "correlation is probably signal, not noise: check the heatmap",
            h,
            w,
            MAX_NETWORK_BLIND_SPOT,
            MAX_NETWORK_BLIND_SPOT,
        )
    return h, w


def correlation_table(corr: NoiseCorrelation, radius: int = 3) -> str:
    """The correlation at |dy|, |dx| <= radius as a text grid (rows dy, columns dx)."""
    k = min(int(radius), corr.max_distance)
    head = "dy \\ dx " + "".join(f"{dx:>8d}" for dx in range(-k, k + 1))
    lines = [head]
    for dy in range(-k, k + 1):
        lines.append(f"{dy:>7d} " + "".join(f"{corr.at(dy, dx):>+8.3f}" for dx in range(-k, k + 1)))
    return "\n".join(lines)
