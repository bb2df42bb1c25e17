"""Per-frame z-score normalisation and its exact linear inverse (method.md, "Data and normalisation")."""

from __future__ import annotations

import numpy as np
import torch

from emlive.core.errors import InputDataError

EPS = 1e-6


def frame_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each frame of a (..., H, W) array, as float64 arrays of shape (...)."""
    data = np.asarray(frames)
    if data.ndim < 2:
        raise InputDataError(f"array of shape {data.shape}: frames need at least 2 dimensions (H, W)")
    mean = data.mean(axis=(-2, -1), dtype=np.float64)
    std = data.std(axis=(-2, -1), dtype=np.float64)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise InputDataError("a frame contains NaN or inf values: replace or mask them before denoising")
    return mean, np.maximum(std, EPS)


def zscore(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score every frame of a (..., H, W) array on its own; returns (float32 frames, means, stds)."""
    mean, std = frame_stats(frames)
    out = (np.asarray(frames, dtype=np.float32) - mean[..., None, None].astype(np.float32)) / std[
        ..., None, None
    ].astype(np.float32)
    return out, mean, std


def zscore_torch(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Z-score every (H, W) plane of a (..., H, W) tensor; returns (frames, means, stds) with kept dims."""
    mean = frames.mean(dim=(-2, -1), keepdim=True)
    std = frames.std(dim=(-2, -1), keepdim=True, unbiased=False).clamp_min(EPS)
    return (frames - mean) / std, mean, std


def denormalize(output: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Map a network output back to the center frame's units: the linear inverse of its z-score."""
    return (np.asarray(output, dtype=np.float32) * np.float32(std) + np.float32(mean)).astype(np.float32)
