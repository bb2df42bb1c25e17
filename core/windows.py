"""Temporal windows: which frames feed the network for a given center frame.

:func:`window_indices` is the one definition, used by training crops, offline denoising and the live service.
Its rule: no neighbour slot ever holds the center frame. Neighbour frames go through ordinary convolutions, so a
copy of the center frame there would hand the network the center's own noise and bypass the blind spot (the
output would come out nearly raw, and training would reward copying).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from emlive.core.errors import InputDataError


def window_indices(t: int, n_frames: int, length: int) -> list[int | None]:
    """Frame indices of the ``n_frames`` window centred on frame ``t`` of a movie of ``length`` frames.

    Slot k (offset k = -N//2 .. N//2) holds frame t+k when it exists; else frame t-k (mirrored about the center,
    not about the movie's edge); else, in a movie shorter than the window, the existing non-center frame nearest
    to t+k; and in a single-frame movie ``None``: an empty slot, which consumers fill with zeros in normalised
    units (the frame mean). For a 5-frame window in a movie of T >= 5 frames: frame 0 reads 2,1,0,1,2, frame 1
    reads 3,0,1,2,3, frame T-2 reads T-4,T-3,T-2,T-1,T-4.

    Every index lies in t-N//2 .. t+N//2, so a live window needs only the frames up to t+N//2: computed from the
    first t+N//2+1 frames it equals the window computed from the whole movie.
    """
    if n_frames < 1 or n_frames % 2 == 0:
        raise InputDataError(f"window of {n_frames} frames: the window must be a positive odd number of frames")
    if length < 1:
        raise InputDataError("movie has no frames: a window needs at least one frame")
    if not 0 <= t < length:
        raise InputDataError(f"center frame {t} is outside the movie's frames 0..{length - 1}")
    half = n_frames // 2
    return [t if k == 0 else _neighbour(t, k, length) for k in range(-half, half + 1)]


def _neighbour(t: int, k: int, length: int) -> int | None:
    """The frame for offset ``k`` != 0 of the window centred on ``t`` (see :func:`window_indices`)."""
    for candidate in (t + k, t - k):
        if 0 <= candidate < length:
            return candidate
    if length == 1:
        return None
    # t+k and t-k both fall outside a movie shorter than the window: the nearest non-center frame to t+k
    edge = 0 if t + k < 0 else length - 1
    if edge != t:
        return edge
    return edge + 1 if edge == 0 else edge - 1


def stack_window(frames: Sequence[np.ndarray] | np.ndarray, indices: Sequence[int | None]) -> np.ndarray:
    """The (N, H, W) window ``frames[i] for i in indices`` in the frames' dtype (detector units).

    An empty slot (``None``) becomes a frame of zeros: a constant frame, which the per-frame z-score maps to 0,
    the frame mean in normalised units, the value the other consumers of :func:`window_indices` give it.
    """
    first = np.asarray(frames[next(i for i in indices if i is not None)])
    out = np.zeros((len(indices), *first.shape), dtype=first.dtype)
    for k, i in enumerate(indices):
        if i is not None:
            out[k] = frames[i]
    return out
