from __future__ import annotations

import numpy as np
import pytest
import torch

from emlive.core.errors import InputDataError
from emlive.core.normalize import denormalize, zscore, zscore_torch
from emlive.core.windows import mirrored_indices


def test_mirrored_ends_as_in_the_reference() -> None:
    assert mirrored_indices(0, 5, 10) == [2, 1, 0, 1, 2]
    assert mirrored_indices(1, 5, 10) == [1, 0, 1, 2, 3]
    assert mirrored_indices(9, 5, 10) == [7, 8, 9, 8, 7]
    assert mirrored_indices(4, 5, 10) == [2, 3, 4, 5, 6]
    assert mirrored_indices(0, 1, 1) == [0]
    assert mirrored_indices(0, 5, 1) == [0, 0, 0, 0, 0]
    assert mirrored_indices(1, 5, 2) == [1, 0, 1, 0, 1]


@pytest.mark.parametrize(("t", "n", "length"), [(0, 4, 10), (10, 5, 10), (0, 5, 0), (-1, 5, 10)])
def test_bad_windows_are_errors(t: int, n: int, length: int) -> None:
    with pytest.raises(InputDataError):
        mirrored_indices(t, n, length)


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
