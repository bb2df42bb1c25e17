"""The model card: what a trained model is, carried by every checkpoint and export.

Consumers (export, the inference runtime, the live service) read the architecture, the blind spot, the frame
count and the normalisation from here instead of asking the user for flags again.

Importable without torch (the light install reads the card of an ONNX export): ``load_checkpoint`` and
``save_model`` forward to :mod:`emlive.core.checkpoint`, which needs the ``train`` extra.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from emlive import __version__
from emlive.core.errors import ModelFileError, require_training_stack
from emlive.core.netconfig import AnyNetworkConfig, NetworkConfig

if TYPE_CHECKING:
    import torch

    from emlive.core.networks import AnyNetwork

log = logging.getLogger(__name__)

CARD_KEY = "emlive_card"
STATE_PREFIX = "net."
EMA_PREFIX = "ema."  # a training checkpoint's averaged weights (optim.ema): the model when present
CARD_SCHEMA_VERSION = 1
MAX_CALIBRATION_BINS = 64  # bins a card's prior_calibration may hold


class Normalization(str, Enum):
    """How frames are normalised before the network and mapped back after it."""

    zscore_per_frame = "zscore_per_frame"  # each frame: (x - mean) / std; output * std_center + mean_center


class Target(str, Enum):
    """What a model's training loss compared its output with (the card's ``training.target``): labels a model in
    quality tables (self-supervised, distilled, or the supervised oracle, the bound self-supervision is measured
    against)."""

    noisy = "noisy"  # the noisy center frame: self-supervised (emlive train)
    teacher = "teacher"  # a teacher's denoised frames: a distilled student (emlive distill)
    clean = "clean"  # the clean ground truth of data.clean: the supervised oracle (train or distill targets=clean)


class TrainingSummary(BaseModel):
    """What the model was trained on and how it ended. Informational; not needed to run the model."""

    model_config = ConfigDict(extra="allow")

    data: list[str] = Field(default_factory=list, description="Training movie paths.")
    movies: list[dict[str, Any]] = Field(default_factory=list, description="Shape/dtype of each movie.")
    config_name: str | None = None
    epochs: int | None = None
    steps: int | None = None
    samples: int | None = None
    loss: str | None = None
    target: Target | None = Field(None, description="What the loss compared the output with; None in older cards.")
    final_train_loss: float | None = None
    best_val_loss: float | None = None
    val_psnr: float | None = None
    seconds: float | None = None


class NoiseModel(BaseModel):
    """The noise model measured on the training data (``emlive noise-stats``'s estimate). Informational: the
    blind spot that was used is ``network.blind_spot``; this says what the data called for. Optional in a card
    (cards written before it existed load without it)."""

    model_config = ConfigDict(extra="allow")

    method: str = Field(description="How the noise was separated: difference (registered frame pairs) or residual.")
    gain: float | None = Field(None, description="Counts per electron (corrected for charge sharing).")
    offset: float | None = Field(None, description="Detector offset in counts, when it was known.")
    read_noise: float | None = Field(None, description="Read noise in counts (std), when the offset was known.")
    intercept: float | None = Field(None, description="read_noise^2 - gain * offset (counts^2).")
    kernel: list[list[float]] = Field(default_factory=list, description="Normalised noise correlation, centred.")
    recommended_blind_spot: tuple[int, int] = Field(description="Blind spot (h, w) the noise calls for.")
    confidence: float | None = Field(None, ge=0, le=1, description="Confidence of the recommendation.")
    frames_used: int = Field(0, ge=0, description="Frames the estimate was measured on.")
    pairs: int = Field(0, ge=0, description="Frame pairs (or images) measured.")
    warnings: list[str] = Field(default_factory=list)
    source: str | None = Field(
        None,
        description="Where it came from: 'training data' (measured) or 'data.noise' (given); None in older cards. "
        "Its values are those of the pixels the network sees (binned by data.bin, as the sum of the bin).",
    )
    correlated: bool | None = Field(
        None, description="Whether pixels share noise (charge sharing); None: judged from the kernel."
    )


class VarianceCalibration(BaseModel):
    """The variance head's self-supervised recalibration (:class:`emlive.core.posterior.PriorCalibration`),
    measured on movies the model denoised after training (``emlive train`` measures it on its training data;
    ``emlive calibrate`` on any movie of the detector). Optional: without it the head is used as trained."""

    model_config = ConfigDict(extra="forbid")

    log_var_z: list[float] = Field(description="Bin centres: the head's mean log prior variance (z-units) per bin.")
    log_scale: list[float] = Field(description="Per bin: log of the factor applied to the head's prior variance.")
    pixels: int = Field(ge=1, description="Pixels it was measured on.")
    frames: int = Field(ge=1, description="Frames it was measured on.")
    source: str = Field(description="What it was measured on (the training data, or a movie's path).")

    @model_validator(mode="after")
    def _bins(self) -> VarianceCalibration:
        if not 1 <= len(self.log_var_z) == len(self.log_scale) <= MAX_CALIBRATION_BINS:
            raise ValueError(
                f"prior_calibration: {len(self.log_var_z)} bin centres and {len(self.log_scale)} scales; need as "
                f"many of each, 1 to {MAX_CALIBRATION_BINS}"
            )
        return self


class TeacherInfo(BaseModel):
    """The blind-spot teacher a student was distilled from (``emlive distill``)."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="The teacher's model file when the student was distilled.")
    name: str = Field(description="The teacher card's name.")
    blind_spot: tuple[int, int] = Field(description="The teacher's blind spot (h, w).")
    network: dict[str, Any] = Field(default_factory=dict, description="The teacher's network section.")
    noise: NoiseModel | None = Field(None, description="The teacher's noise model, when its card has one.")
    ensemble: str = Field("none", description="The teacher's self-ensemble for the targets (none, flips, dihedral).")


class ModelCard(BaseModel):
    """Self-description of a trained denoiser."""

    model_config = ConfigDict(extra="forbid")

    version: int = CARD_SCHEMA_VERSION
    emlive_version: str = __version__
    name: str = "emlive-denoiser"
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))
    network: AnyNetworkConfig = Field(default_factory=NetworkConfig)
    normalization: Normalization = Normalization.zscore_per_frame
    gain_reference: str | None = Field(None, description="Gain reference applied to raw frames in training.")
    training: TrainingSummary = Field(default_factory=TrainingSummary)
    noise: NoiseModel | None = Field(None, description="Noise model measured on the training data, if any.")
    teacher: TeacherInfo | None = Field(None, description="The teacher of a distilled student; None otherwise.")
    prior_calibration: VarianceCalibration | None = Field(
        None, description="The variance head's recalibration (network.head=gaussian), when it was measured."
    )

    @property
    def frames(self) -> int:
        return self.network.frames

    @property
    def blind_spot(self) -> tuple[int, int]:
        """The network's blind window; (0, 0) for a student, which sees every pixel (its teacher's is in
        ``teacher.blind_spot``)."""
        return self.network.blind_spot

    @property
    def kind(self) -> str:
        return self.network.kind

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, source: str = "model card") -> ModelCard:
        try:
            return cls.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ModelFileError(f"{source}: the emlive model card is not valid ({exc}); re-export the model") from exc


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[AnyNetwork, ModelCard]:
    """Load a trained network and its card from an emlive checkpoint (``.ckpt`` from training, or ``.pt``); see
    :func:`emlive.core.checkpoint.load_checkpoint`. Needs torch (the ``train`` extra)."""
    require_training_stack(f"{path}: loading a PyTorch checkpoint (use an exported .onnx model instead)")
    from emlive.core import checkpoint

    return checkpoint.load_checkpoint(path, map_location)


def save_model(path: str | Path, net: AnyNetwork, card: ModelCard) -> Path:
    """Write a compact inference checkpoint (weights + card); see :func:`emlive.core.checkpoint.save_model`."""
    require_training_stack(f"{path}: writing a PyTorch checkpoint")
    from emlive.core import checkpoint

    return checkpoint.save_model(path, net, card)
