"""Classical baselines a denoiser must beat: the N-frame temporal average and a Gaussian filter.

BM3D (the strongest classical peer) is benchmark-only and lives in ``emlive.bench.quality``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from emlive.core.windows import window_indices


def temporal_average(movie: np.ndarray, n_frames: int = 5) -> np.ndarray:
    """Mean of each frame's N-frame window (:func:`emlive.core.windows.window_indices`, empty slots left out):
    the simplest multi-frame denoiser (float32)."""
    frames = np.asarray(movie, dtype=np.float32)
    out = np.empty_like(frames)
    for t in range(len(frames)):
        out[t] = frames[[i for i in window_indices(t, n_frames, len(frames)) if i is not None]].mean(axis=0)
    return out


def gaussian(movie: np.ndarray, sigma: float) -> np.ndarray:
    """Spatial Gaussian filter of every frame (reflect borders)."""
    frames = np.asarray(movie, dtype=np.float32)
    return np.stack([gaussian_filter(f, sigma, mode="reflect") for f in frames])


def best_gaussian(
    noisy: np.ndarray,
    clean: np.ndarray,
    metric: Callable[[np.ndarray, np.ndarray], float],
    sigmas: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0),
    frames: Sequence[int] | None = None,
) -> tuple[float, np.ndarray]:
    """The sigma that maximises ``metric(clean, filtered)`` averaged over ``frames`` (an oracle choice)."""
    idx = list(frames) if frames is not None else list(range(0, len(noisy), max(1, len(noisy) // 8)))
    scores = []
    for s in sigmas:
        filtered = gaussian(noisy[idx], s)
        scores.append(np.mean([metric(clean[i], f) for i, f in zip(idx, filtered, strict=True)]))
    sigma = float(sigmas[int(np.argmax(scores))])
    return sigma, gaussian(noisy, sigma)
