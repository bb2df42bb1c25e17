"""Per-frame z-score normalisation and its exact linear inverse (method.md, "Data and normalisation").

The statistics are float64 for every pixel type; frames whose huge finite values would overflow the float64 sums
(float64 values beyond about 1e154) are scaled by a power of two first, so only NaN and inf are refused. Which
arithmetic normalises a frame follows the pixel-type policy (:func:`emlive.core.pixeltypes.normalised_in`):
float32 for the types whose every value is a float32 (as in training), float64 for the wider ones, the z-scores
then rounded to float32. A z-score is at most sqrt(H*W) in size (Samuelson's inequality), so it always fits a
float32; what can overflow is the way back into the input's units (:func:`denormalize`), which is checked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from emlive.core.errors import InputDataError
from emlive.core.pixeltypes import normalised_in

if TYPE_CHECKING:
    import torch

EPS = 1e-6
FLOAT32_MAX = float(np.finfo(np.float32).max)
_SAFE_SUM = 1e150  # below this, sums and squares of a frame's values cannot overflow float64
_Z_GUARD = 1e4  # float32 arithmetic is used on the way back when |mean| + this many stds fits a float32


def frame_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each frame of a (..., H, W) array, as float64 arrays of shape (...).

    Huge finite values are handled (scaled by a power of two); InputDataError when a frame holds NaN or inf.
    """
    data = np.asarray(frames)
    if data.ndim < 2:
        raise InputDataError(f"array of shape {data.shape}: frames need at least 2 dimensions (H, W)")
    with np.errstate(over="ignore", invalid="ignore"):
        mean = data.mean(axis=(-2, -1), dtype=np.float64)
        std = data.std(axis=(-2, -1), dtype=np.float64)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        if data.dtype.kind != "f" or not np.all(np.isfinite(data)):
            raise InputDataError("a frame contains NaN or inf values: replace or mask them before denoising")
        mean, std = _scaled_stats(data)
    return mean, np.maximum(std, EPS)


def _scaled_stats(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of frames of huge finite values: each frame divided by a power of two near its peak first."""
    peak = np.abs(data).max(axis=(-2, -1)).astype(np.float64)
    _, exponent = np.frexp(peak)
    scaled = np.ldexp(data.astype(np.float64), -exponent[..., None, None])
    mean = np.ldexp(scaled.mean(axis=(-2, -1)), exponent)
    std = np.ldexp(scaled.std(axis=(-2, -1)), exponent)
    return mean, std


def normalize_into(frame: np.ndarray, mean: float, std: float, out: np.ndarray) -> None:
    """Write the z-scores of one (H, W) ``frame`` into the float32 array ``out`` (see the module docstring)."""
    if normalised_in(frame.dtype) == np.float32 and abs(mean) + std * _Z_GUARD <= FLOAT32_MAX:
        # (float32(x) - float32(mean)) / float32(std), the arithmetic of zscore and of training
        np.copyto(out, frame, casting="unsafe")
        out -= np.float32(mean)
        out /= np.float32(std)
        return
    if max(abs(mean), std) <= _SAFE_SUM:
        wide = np.subtract(frame, mean, dtype=np.float64)
        np.divide(wide, std, out=out, casting="same_kind")
        return
    scale = float(np.ldexp(1.0, -int(np.frexp(max(abs(mean), std))[1])))  # x - mean could overflow: scale first
    wide = np.multiply(frame, scale, dtype=np.float64)
    wide -= mean * scale
    np.divide(wide, std * scale, out=out, casting="same_kind")


def zscore(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score every frame of a (..., H, W) array on its own; returns (float32 frames, means, stds)."""
    data = np.asarray(frames)
    mean, std = frame_stats(data)
    out = np.empty(data.shape, dtype=np.float32)
    flat_in = data.reshape(-1, *data.shape[-2:])
    flat_out = out.reshape(-1, *data.shape[-2:])
    for i, (m, s) in enumerate(zip(mean.reshape(-1), std.reshape(-1), strict=True)):
        normalize_into(flat_in[i], float(m), float(s), flat_out[i])
    return out, mean, std


def zscore_torch(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Z-score every (H, W) plane of a (..., H, W) tensor; returns (frames, means, stds) with kept dims."""
    mean = frames.mean(dim=(-2, -1), keepdim=True)
    std = frames.std(dim=(-2, -1), keepdim=True, unbiased=False).clamp_min(EPS)
    return (frames - mean) / std, mean, std


def denormalize(output: np.ndarray, mean: float, std: float, what: str = "frame") -> np.ndarray:
    """Map a network output back to the center frame's units (float32): the linear inverse of its z-score.

    InputDataError naming the range when the result does not fit a float32 (frames of values beyond +-3.4e38).
    """
    if abs(mean) + std * _Z_GUARD <= FLOAT32_MAX:
        result = np.multiply(output, np.float32(std), dtype=np.float32)
        result += np.float32(mean)
        return result
    wide = np.multiply(output, std, dtype=np.float64)
    wide += mean
    peak = float(np.abs(wide).max()) if wide.size else 0.0
    if not peak <= FLOAT32_MAX:
        factor = float(np.ldexp(1.0, 100 - int(np.frexp(max(abs(mean), std))[1])))
        raise InputDataError(
            f"{what} (mean {mean:.3g}, std {std:.3g}): its denoised values reach {peak:.3g}, beyond "
            f"+-{FLOAT32_MAX:.3g}, the range of the float32 frames emlive returns in the input's units; scale the "
            f"frames into that range before denoising (e.g. multiply them by {factor:.3g}) and scale the result back"
        )
    return wide.astype(np.float32)
