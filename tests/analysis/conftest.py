"""Synthetic movies for the analysis tests: a smooth random scene with Poisson shot noise.

The tests folder is no package (pytest's importlib mode), so the helpers reach the tests as the ``synth`` fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import convolve, gaussian_filter

_K1 = np.array([0.3, 1.0, 0.3])


class Synth:
    """Scene and movie generators, and the detector kernels that correlate the noise."""

    KERNELS: dict[str, np.ndarray | None] = {  # noqa: RUF012 - read-only table
        "none": None,
        "isotropic": np.outer(_K1, _K1),  # correlation 0.5 at 1 px, 0.25 diagonally, < 0.1 at 2 px
        "horizontal": _K1[None, :],  # along x only
        "vertical": _K1[:, None],  # along y only
    }

    @staticmethod
    def scene(shape: tuple[int, int], seed: int = 0, low: float = 2.0, high: float = 22.0) -> np.ndarray:
        """A smooth random image between ``low`` and ``high`` (expected counts per pixel)."""
        rng = np.random.default_rng(seed)
        base = gaussian_filter(rng.random(shape), 4.0)
        base = (base - base.min()) / (base.max() - base.min())
        return low + (high - low) * base

    @staticmethod
    def movie(clean: np.ndarray, frames: int, seed: int = 1, kernel: str = "none") -> np.ndarray:
        """``frames`` independent Poisson exposures (float32) of the static ``clean`` scene, each convolved with
        the named kernel (detector charge sharing: correlated noise)."""
        rng = np.random.default_rng(seed)
        k = Synth.KERNELS[kernel]
        out = np.empty((frames, *clean.shape), dtype=np.float32)
        for t in range(frames):
            noisy = rng.poisson(clean).astype(np.float64)
            out[t] = noisy if k is None else convolve(noisy, k, mode="reflect")
        return out


@pytest.fixture
def synth() -> type[Synth]:
    return Synth
