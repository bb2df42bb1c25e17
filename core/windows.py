"""Temporal windows: which frames feed the network for a given center frame."""

from __future__ import annotations

from emlive.core.errors import InputDataError


def mirrored_indices(t: int, n_frames: int, length: int) -> list[int]:
    """Frame indices of the ``n_frames`` window centred on ``t`` in a movie of ``length`` frames.

    Ends are mirrored without repeating the edge frame: for a 5-frame window, frame 0 reads 2,1,0,1,2 and the
    last frame T-1 reads T-3,T-2,T-1,T-2,T-3 (method.md). A movie shorter than the half-window reflects as often
    as needed; a single-frame movie repeats its only frame.
    """
    if n_frames < 1 or n_frames % 2 == 0:
        raise InputDataError(f"window of {n_frames} frames: the window must be a positive odd number of frames")
    if length < 1:
        raise InputDataError("movie has no frames: a window needs at least one frame")
    if not 0 <= t < length:
        raise InputDataError(f"center frame {t} is outside the movie's frames 0..{length - 1}")
    half = n_frames // 2
    return [_reflect(t + k, length) for k in range(-half, half + 1)]


def _reflect(i: int, length: int) -> int:
    if length == 1:
        return 0
    period = 2 * (length - 1)
    i = i % period
    return i if i < length else period - i
