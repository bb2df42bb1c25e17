"""A variance head's calibration measured on a movie by the runtime (self-supervised: no clean frames needed).

The head's own prior (any calibration the denoiser holds left out) is run over blocks of consecutive frames, and
:meth:`emlive.core.posterior.PriorCalibration.fit` measures one scale per bin of the head's output from the blind
output, the prior variance and the observed frames under the card's noise model. The trainer measures it on its
training data at the end of a run and ``emlive calibrate`` on any movie (both keep it in the card); ``emlive
denoise`` measures it on each movie it denoises (:func:`emlive.analysis.uncertainty.movie_estimate`), which fits
that movie's scene, as the noise check has passed on it. Torch-free: it runs wherever the runtime does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emlive.core.errors import InputDataError
from emlive.core.normalize import frame_stats
from emlive.core.posterior import Estimate, PriorCalibration

if TYPE_CHECKING:
    from emlive.export.runtime import Denoiser

log = logging.getLogger(__name__)

CALIBRATION_PIXELS = 8_000_000  # pixels measured at most (30 frames of 512 x 512): 400 000 per bin


@dataclass(frozen=True)
class FrameBlock:
    """Frames ``start``..``stop - 1`` of a movie (anything the runtime's ``denoise_movie`` reads)."""

    movie: Any
    start: int
    stop: int


def middle_block(length: int, height: int, width: int, budget: int = CALIBRATION_PIXELS) -> tuple[int, int]:
    """The consecutive frames (start, stop) in the middle of a movie of ``length`` frames that hold at most
    ``budget`` pixels (at least one frame)."""
    count = int(np.clip(budget // max(1, height * width), 1, length))
    start = (length - count) // 2
    return start, start + count


def movie_block(movie: Any, start: int, stop: int) -> FrameBlock:
    """The middle block (at most CALIBRATION_PIXELS pixels) of frames ``start..stop-1`` of a (T, H, W) movie."""
    _, height, width = (int(n) for n in movie.shape)
    first, last = middle_block(stop - start, height, width)
    return FrameBlock(movie, start + first, start + last)


def measure_calibration(denoiser: Denoiser, blocks: Sequence[FrameBlock], source: str) -> tuple[PriorCalibration, int]:
    """The calibration of ``denoiser``'s variance head measured on ``blocks`` (and the frames it used). The head is
    measured as trained: the denoiser's own ``calibration`` is left out meanwhile and restored after."""
    if denoiser.noise is None:
        raise InputDataError(f"{source}: the model's card has no noise model to calibrate the variance head against")
    held = denoiser.calibration
    denoiser.calibration = None
    mu, log_var, observed = [], [], []
    try:
        for block in blocks:
            movie = block.movie
            read = movie.frame if callable(getattr(movie, "frame", None)) else movie.__getitem__
            for t, found in denoiser.denoise_movie(movie, block.start, block.stop, uncertainty=True,
                                                   estimate=Estimate.blind):  # fmt: skip
                mu.append(found.prior_mean)
                log_var.append(2.0 * np.log(np.maximum(found.prior_std.astype(np.float64), 1e-30)))
                observed.append(np.asarray(read(t), dtype=np.float32))
    finally:
        denoiser.calibration = held
    if not mu:
        raise InputDataError(f"{source}: no frames to calibrate the variance head on")
    frames = np.stack(observed)
    _, frame_std = frame_stats(frames)  # the runtime's normalisation of each center frame: the head's z-units
    table = PriorCalibration.fit(np.stack(mu), np.stack(log_var), frames, denoiser.noise, frame_std)
    scales = np.exp(table.log_scale)
    log.info(
        "variance head calibrated on %d frames (%d px) of %s: %d bins, the head's prior variance x %.2f .. %.2f",
        len(mu), table.pixels, source, len(scales), float(scales.min()), float(scales.max()),
    )  # fmt: skip
    return table, len(mu)
