"""The numpy filters that replace scipy in the light install, against scipy itself (installed with the train and
dev extras): the same bits for symmetric kernels, float tolerance otherwise, the same fast FFT lengths."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import fft as sp_fft
from scipy import ndimage

from emlive.core.errors import InputDataError
from emlive.core.filters import correlate1d, next_fast_len
from emlive.core.metrics import _TAPS
from emlive.core.simulate import CorrelatedNoise, SyntheticMovie, _kernel_2d, make_config

pytestmark = pytest.mark.timeout(60)

KERNELS = {
    "charge sharing": _kernel_2d(CorrelatedNoise.HORIZONTAL)[0],  # type: ignore[index]
    "ssim gaussian": _TAPS,
    "one tap": np.array([2.0]),
    "asymmetric": np.array([0.1, -0.4, 1.0, 0.25, 0.05]),
}


@pytest.mark.parametrize("kernel", KERNELS, ids=str)
@pytest.mark.parametrize("shape", [(40, 53), (1, 7), (3, 2), (4, 5, 6)], ids=str)
def test_correlate1d_is_scipys_reflect_mode(kernel: str, shape: tuple[int, ...]) -> None:
    """Every axis, lines shorter than the kernel's reach (mirrored again, as scipy does), 2-D and 3-D."""
    weights = KERNELS[kernel]
    image = np.random.default_rng(len(shape)).normal(100.0, 20.0, shape)
    for axis in range(-1, len(shape)):
        ours = correlate1d(image, weights, axis=axis)
        theirs = ndimage.correlate1d(image, weights, axis=axis, mode="reflect")
        assert ours.dtype == theirs.dtype and ours.flags.c_contiguous
        if kernel == "asymmetric":
            np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-11)
        else:  # scipy's order of operations: the same bits
            np.testing.assert_array_equal(ours, theirs)


def test_correlate1d_dtypes_follow_scipy_for_floats() -> None:
    image = np.random.default_rng(0).poisson(30.0, (33, 29))
    weights = KERNELS["ssim gaussian"]
    for dtype in (np.float32, np.float64):
        ours = correlate1d(image.astype(dtype), weights, axis=0)
        assert ours.dtype == dtype
        np.testing.assert_array_equal(ours, ndimage.correlate1d(image.astype(dtype), weights, axis=0, mode="reflect"))
    as_float = correlate1d(image.astype(np.uint16), weights, axis=1)  # integers: float64, not truncated back
    assert as_float.dtype == np.float64
    np.testing.assert_array_equal(as_float, ndimage.correlate1d(image.astype(np.float64), weights, mode="reflect"))


def test_correlate1d_rejects_kernels_without_a_centre() -> None:
    with pytest.raises(InputDataError, match=r"shape \(4,\).*odd length"):
        correlate1d(np.ones((5, 5)), np.ones(4))
    with pytest.raises(InputDataError, match="scalar"):
        correlate1d(np.float64(1.0), np.ones(3))


def test_next_fast_len_is_scipys_real_length() -> None:
    lengths = [*range(1, 600), 8191, 16384 + 32, 12345]
    assert [next_fast_len(n) for n in lengths] == [sp_fft.next_fast_len(n, real=True) for n in lengths]
    with pytest.raises(InputDataError, match="0"):
        next_fast_len(0)


@pytest.mark.parametrize("kind", ["isotropic", "horizontal", "vertical"])
def test_the_simulators_charge_sharing_is_scipys(kind: str) -> None:
    """The clean truth of a correlated movie: the expected counts through scipy's filter, bit for bit."""
    config = make_config(height=24, width=40, frames=2, n_particles=2, radius_min=3, radius_max=6, drift=0.7,
                         gain=2.0, offset=10.0, correlated_noise=kind)  # fmt: skip
    movie = SyntheticMovie(config)
    expected = movie.intensity(1).astype(np.float64) * (config.gain * config.dose) + config.offset
    kernel = config.kernel
    assert kernel is not None
    for axis, size in enumerate(kernel.shape):
        if size > 1:
            line = kernel.sum(axis=1 - axis)
            expected = ndimage.correlate1d(expected, line / line.sum(), axis=axis, mode="reflect")
    np.testing.assert_array_equal(movie.clean(1), expected.astype(np.float32))
