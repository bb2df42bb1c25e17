from __future__ import annotations

import numpy as np
import pytest
import torch

from emlive.core.errors import InputDataError
from emlive.core.normalize import denormalize, zscore, zscore_torch
from emlive.core.windows import window_indices


def test_window_examples() -> None:
    assert window_indices(0, 5, 10) == [2, 1, 0, 1, 2]
    assert window_indices(1, 5, 10) == [3, 0, 1, 2, 3]  # the old mirror read 1,0,1,2,3: the center twice
    assert window_indices(4, 5, 10) == [2, 3, 4, 5, 6]
    assert window_indices(8, 5, 10) == [6, 7, 8, 9, 6]  # the old mirror read 6,7,8,9,8
    assert window_indices(9, 5, 10) == [7, 8, 9, 8, 7]
    assert window_indices(0, 1, 1) == [0]
    assert window_indices(0, 5, 1) == [None, None, 0, None, None]  # a single frame: empty slots, never itself
    assert window_indices(1, 5, 2) == [0, 0, 1, 0, 0]
    assert window_indices(1, 5, 3) == [0, 0, 1, 2, 2]
    assert window_indices(0, 7, 3) == [1, 2, 1, 0, 1, 2, 2]


@pytest.mark.parametrize(("t", "n", "length"), [(0, 4, 10), (10, 5, 10), (0, 5, 0), (-1, 5, 10), (0, 0, 3)])
def test_bad_windows_are_errors(t: int, n: int, length: int) -> None:
    with pytest.raises(InputDataError):
        window_indices(t, n, length)


LENGTHS = [*range(1, 13), 16, 23, 24, 40]


@pytest.mark.parametrize("n", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("length", LENGTHS)
def test_no_neighbour_slot_ever_holds_the_center_frame(n: int, length: int) -> None:
    half = n // 2
    for t in range(length):
        win = window_indices(t, n, length)
        where = f"t={t}, N={n}, T={length}: {win}"
        assert len(win) == n and win[half] == t, where
        neighbours = win[:half] + win[half + 1 :]
        assert t not in neighbours, where
        assert all(i is None or 0 <= i < length for i in win), where
        # empty slots only when there is no other frame at all
        assert (None in neighbours) == (length == 1 and n > 1), where
        # only frames within the half-window: a live window never waits for more than t+half
        assert all(i is None or t - half <= i <= t + half for i in win), where
        if half <= t < length - half:
            assert win == list(range(t - half, t + half + 1)), where


@pytest.mark.parametrize("n", [1, 3, 5, 7, 9])
@pytest.mark.parametrize("length", LENGTHS)
def test_live_windows_equal_offline_windows(n: int, length: int) -> None:
    """The window computed from the frames received so far (up to t+half) equals the whole movie's."""
    half = n // 2
    for t in range(length):
        prefix = min(length, t + half + 1)
        if t + half < length:
            assert window_indices(t, n, prefix) == window_indices(t, n, length), f"t={t}, N={n}, T={length}"


def test_zscore_roundtrip_and_torch_agree() -> None:
    rng = np.random.default_rng(0)
    frames = rng.poisson(5.0, size=(3, 16, 20)).astype(np.uint16)
    z, mean, std = zscore(frames)
    assert np.allclose(z.mean(axis=(1, 2)), 0, atol=1e-5) and np.allclose(z.std(axis=(1, 2)), 1, atol=1e-4)
    assert np.allclose(denormalize(z[1], mean[1], std[1]), frames[1], atol=1e-4)
    zt, _, _ = zscore_torch(torch.from_numpy(frames.astype(np.float32)))
    assert np.allclose(zt.numpy(), z, atol=1e-5)


def test_nan_frames_are_rejected() -> None:
    frames = np.ones((2, 4, 4), dtype=np.float32)
    frames[1, 2, 2] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        zscore(frames)
