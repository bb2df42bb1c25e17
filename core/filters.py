"""Small numpy filters shared by the simulator and the metrics, so the light install needs no scipy.

:func:`correlate1d` is ``scipy.ndimage.correlate1d(image, weights, axis, mode="reflect")`` for odd-length weights
(the edge mirrored including its last pixel: ``d c b a | a b c d | d c b a``, numpy's "symmetric" padding), with
scipy's bits for symmetric kernels (the simulator's frames are unchanged by the move off scipy);
:func:`next_fast_len` is ``scipy.fft.next_fast_len(n, real=True)``. tests/core/test_filters.py checks both
against scipy.
"""

from __future__ import annotations

import numpy as np

from emlive.core.errors import InputDataError

__all__ = ["correlate1d", "next_fast_len"]

_BLOCK_BYTES = 1 << 17  # rows filtered together: small enough to stay in a core's cache


def correlate1d(image: np.ndarray, weights: np.ndarray, axis: int = -1) -> np.ndarray:
    """``image`` correlated along ``axis`` with ``weights`` (odd length, centred), reflecting edges.

    out[i] = sum_j weights[j] * image[i + j - r], r = len(weights) // 2, positions outside the image mirrored
    about the edge (scipy's ``mode="reflect"``). Computed in float64 in scipy's order of operations (so a
    symmetric kernel gives scipy's bits); returns the input's dtype when it is a float type, else float64.
    """
    taps = np.asarray(weights, dtype=np.float64)
    arr = np.asarray(image)
    if taps.ndim != 1 or taps.size % 2 == 0:
        raise InputDataError(
            f"filter weights of shape {taps.shape}: correlate1d needs a 1-D kernel of odd length (centred on a pixel)"
        )
    if arr.ndim == 0:
        raise InputDataError("correlate1d needs an array with at least one axis, got a scalar")
    axis = axis % arr.ndim
    n = arr.shape[axis]
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=arr.dtype if arr.dtype.kind == "f" else np.float64)
    lines = np.moveaxis(arr, axis, -1)  # one image line per row, filtered a block of rows at a time (in cache)
    shape = lines.shape
    lines = lines.reshape(-1, n)
    out = np.empty(lines.shape)
    step = max(1, _BLOCK_BYTES // (8 * (n + taps.size)))
    for start in range(0, lines.shape[0], step):
        _correlate_lines(lines[start : start + step], taps, out[start : start + step])
    result = np.moveaxis(out.reshape(shape), -1, axis)
    return np.ascontiguousarray(result, dtype=arr.dtype if arr.dtype.kind == "f" else np.float64)


def _correlate_lines(lines: np.ndarray, taps: np.ndarray, out: np.ndarray) -> None:
    """``out`` = each row of ``lines`` correlated with ``taps`` (reflecting edges), in scipy's order of operations:
    the centre tap first, then each mirrored pair of taps from the outside in (symmetric kernels; scipy's bits),
    else the last tap first, then the others in order."""
    r = taps.size // 2
    n = lines.shape[1]
    padded = np.pad(lines.astype(np.float64, copy=False), ((0, 0), (r, r)), mode="symmetric")

    def shifted(k: int) -> np.ndarray:  # lines[:, i + k] for every i
        return padded[:, r + k : r + k + n]

    tmp = np.empty(out.shape)
    if np.all(np.abs(taps - taps[::-1]) <= np.finfo(np.float64).eps):
        np.multiply(shifted(0), taps[r], out=out)
        for k in range(r, 0, -1):
            np.add(shifted(-k), shifted(k), out=tmp)
            tmp *= taps[r - k]
            out += tmp
        return
    np.multiply(shifted(r), taps[-1], out=out)
    for k in range(-r, r):
        np.multiply(shifted(k), taps[r + k], out=tmp)
        out += tmp


def next_fast_len(n: int) -> int:
    """The smallest 5-smooth integer (2^a 3^b 5^c) >= ``n``: a fast real FFT length (scipy's ``real=True``)."""
    if n < 1:
        raise InputDataError(f"next_fast_len({n}): the length must be >= 1")
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1
