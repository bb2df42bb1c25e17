"""Geometric self-ensembles: denoise a window under several flips/rotations, undo each, average.

A blind-spot network's errors under a flip or a 90-degree rotation of its input are partly independent, so the
average of the transformed-and-undone outputs is a better estimate than one pass (at the cost of one pass per
transform). `emlive distill` uses it to make better targets from a teacher. Rotations swap the frame's axes: they
are only valid when the noise and the blind spot are symmetric under the swap, which :func:`ensemble_for` checks.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import numpy as np

from emlive.core.errors import ConfigError


class Ensemble(str, Enum):
    """Which transforms are averaged: ``none`` (1 pass), ``flips`` (4: identity, left-right, up-down, both; they keep
    the axes, so they suit any blind spot), ``dihedral`` (8: the flips and their 90-degree rotations)."""

    none = "none"
    flips = "flips"
    dihedral = "dihedral"

    @property
    def passes(self) -> int:
        return {Ensemble.none: 1, Ensemble.flips: 4, Ensemble.dihedral: 8}[self]


def _transforms(kind: Ensemble) -> list[tuple[int, bool, bool]]:
    """(quarter turns, flip left-right, flip up-down) for each pass."""
    flips = [(0, False, False), (0, True, False), (0, False, True), (0, True, True)]
    if kind is Ensemble.none:
        return flips[:1]
    if kind is Ensemble.flips:
        return flips
    return flips + [(1, lr, ud) for _, lr, ud in flips]


def _forward(a: np.ndarray, turns: int, lr: bool, ud: bool) -> np.ndarray:
    if lr:
        a = a[..., :, ::-1]
    if ud:
        a = a[..., ::-1, :]
    return np.rot90(a, turns, axes=(-2, -1)) if turns else a


def _inverse(a: np.ndarray, turns: int, lr: bool, ud: bool) -> np.ndarray:
    if turns:
        a = np.rot90(a, -turns, axes=(-2, -1))
    if ud:
        a = a[..., ::-1, :]
    if lr:
        a = a[..., :, ::-1]
    return a


def ensemble_average(window: np.ndarray, kind: Ensemble, denoise: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The mean of ``inverse(denoise(forward(window)))`` over the passes of ``kind``.

    ``window`` is (N, H, W) (any dtype ``denoise`` takes); ``denoise`` maps a C-contiguous (N, h, w) window to an
    (h, w) frame (h, w swap under a rotation). Returns (H, W) float32."""
    total: np.ndarray | None = None
    passes = _transforms(kind)
    for turns, lr, ud in passes:
        out = _inverse(np.asarray(denoise(np.ascontiguousarray(_forward(window, turns, lr, ud)))), turns, lr, ud)
        total = out.astype(np.float32) if total is None else total + out
    assert total is not None
    return total / np.float32(len(passes))


def ensemble_for(kind: Ensemble, blind_spot: tuple[int, int], kernel: list[list[float]] | None = None) -> Ensemble:
    """``kind`` when it suits a model of ``blind_spot`` whose noise has the correlation ``kernel`` (the model
    card's ``noise.kernel``, centred; None: unknown/independent); a ``ConfigError`` naming the fix when 90-degree
    rotations would turn the blind spot or the noise's correlation across the axes the model was trained on."""
    k = np.asarray(kernel if kernel else [[1.0]], dtype=np.float64)
    asymmetric_noise = k.shape[0] != k.shape[1] or float(np.abs(k - k.T).max()) > 0.05
    if kind is Ensemble.dihedral and (blind_spot[0] != blind_spot[1] or asymmetric_noise):
        raise ConfigError(
            f"ensemble=dihedral rotates frames by 90 degrees, but the model's blind spot {list(blind_spot)} or its "
            "noise correlation (model card noise.kernel) is not symmetric under a swap of the axes: use "
            "ensemble=flips"
        )
    return kind
