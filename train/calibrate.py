"""Measure a variance head's recalibration (:class:`emlive.core.posterior.PriorCalibration`) and keep it in the
model's card: at the end of ``emlive train`` of a ``network.head=gaussian`` model, on its training data; and with
``emlive calibrate MODEL MOVIE``, on any movie of the same detector (self-supervised: no clean frames needed).

The head's own prior (its card's calibration left out) is run by the one runtime over a block of consecutive frames
(at most CALIBRATION_PIXELS pixels, from the middle of the movie), and the table is measured from its blind
output, its prior variance and the observed frames, under the card's noise model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emlive.analysis.plots import plot_prior_calibration
from emlive.core.errors import ConfigError, InputDataError
from emlive.core.modelcard import ModelCard, VarianceCalibration, load_checkpoint, save_model
from emlive.core.networks import AnyNetwork
from emlive.core.posterior import Estimate, PixelNoise
from emlive.export.calibration import CALIBRATION_PIXELS, FrameBlock, measure_calibration, middle_block, movie_block
from emlive.train.data import MovieSource

log = logging.getLogger(__name__)


def measure(net: AnyNetwork, card: ModelCard, blocks: Sequence[FrameBlock], source: str) -> VarianceCalibration:
    """The card's ``prior_calibration`` of a ``head=gaussian`` network, measured on ``blocks`` of frames."""
    from emlive.export.runtime import Denoiser

    _noise(card, source)
    denoiser = Denoiser.from_network(net, card, backend="auto", estimate=Estimate.blind)
    table, frames = measure_calibration(denoiser, blocks, source)
    return table.to_card(frames, source)


def _noise(card: ModelCard, source: str) -> PixelNoise:
    if card.network.out_channels < 2:
        raise ConfigError(
            f"{source}: model '{card.name}' has no variance head (network.head=gaussian) to calibrate; calibration "
            "is for probabilistic models only"
        )
    if card.noise is None:
        raise ConfigError(
            f"{source}: the card of model '{card.name}' has no noise model; the calibration measures the head "
            "against it. Retrain with the noise model (training measures it, or give data.noise)"
        )
    return PixelNoise.from_card(card.noise)


def calibrate_model(
    path: Path, movie: Any, source: str, output: Path | None = None
) -> tuple[VarianceCalibration, Path]:
    """Measure the calibration of the model file ``path`` (.pt/.ckpt) on ``movie`` (its middle frames) and write
    the model with it in its card to ``output`` (default: the .pt of ``path``'s name: itself for a .pt); returns the
    table and the file written."""
    if path.suffix not in (".pt", ".ckpt"):
        raise ConfigError(
            f"{path}: calibrate a PyTorch model (.pt or .ckpt, what `emlive train` writes), then export it; the "
            "export carries the calibration in its card"
        )
    target = output if output is not None else path.with_suffix(".pt")
    if target.suffix != ".pt":  # refused before any work
        raise ConfigError(f"{target}: write the calibrated model as a .pt file (-o MODEL.pt); export it after")
    net, card = load_checkpoint(path)
    _noise(card, str(path))  # a model it cannot calibrate is refused before the movie is read
    shape = tuple(int(n) for n in movie.shape)
    if len(shape) != 3:
        raise InputDataError(f"{source}: shape {list(shape)}; calibration needs a (T, H, W) movie")
    table = measure(net, card, [movie_block(movie, 0, shape[0])], source)
    save_model(target, net, card.model_copy(update={"prior_calibration": table}))
    plot_prior_calibration(table, calibration_png(target))
    return table, target


def calibration_png(model: Path) -> Path:
    """Where the calibration's reliability diagram of a model file goes: beside it, ``<stem>.calibration.png``."""
    return model.with_name(f"{model.stem}.calibration.png")


class BinnedFrames:
    """A training source's whole movie as the network saw it (binned by ``data.bin``), for the runtime."""

    def __init__(self, source: MovieSource) -> None:
        self.source = source
        self.shape = (len(source.movie), source.height, source.width)

    def __len__(self) -> int:
        return self.shape[0]

    def frame(self, t: int) -> np.ndarray:
        return self.source.binned_crop(self.source.movie, t, 0, 0, self.shape[1:])


def calibrate_training_run(model_path: Path, sources: Sequence[MovieSource]) -> ModelCard:
    """Measure the calibration of a trained ``head=gaussian`` model on the middle frames of its training sources
    (at most CALIBRATION_PIXELS pixels in all) and rewrite ``model_path`` with it in its card; returns the card."""
    net, card = load_checkpoint(model_path)
    blocks: list[FrameBlock] = []
    budget = CALIBRATION_PIXELS
    for source in sources:
        pixels = source.height * source.width
        if blocks and budget < pixels:
            break
        start, stop = middle_block(source.last - source.first, source.height, source.width, budget)
        blocks.append(FrameBlock(BinnedFrames(source), source.first + start, source.first + stop))
        budget -= (stop - start) * pixels
    table = measure(net, card, blocks, "training data")
    calibrated = card.model_copy(update={"prior_calibration": table})
    save_model(model_path, net, calibrated)
    plot_prior_calibration(table, calibration_png(model_path))
    return calibrated
