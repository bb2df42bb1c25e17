"""The model card: what a trained model is, carried by every checkpoint and export.

Consumers (export, the inference runtime, the live service) read the architecture, the blind spot, the frame
count and the normalisation from here instead of asking the user for flags again.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from enum import Enum
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emlive import __version__
from emlive.core.errors import ModelFileError
from emlive.core.network import NetworkConfig
from emlive.core.networks import AnyNetwork, AnyNetworkConfig, create_network

log = logging.getLogger(__name__)

CARD_KEY = "emlive_card"
STATE_PREFIX = "net."
CARD_SCHEMA_VERSION = 1


class Normalization(str, Enum):
    """How frames are normalised before the network and mapped back after it."""

    zscore_per_frame = "zscore_per_frame"  # each frame: (x - mean) / std; output * std_center + mean_center


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
    """Load a trained network and its card from an emlive checkpoint (``.ckpt`` from training, or ``.pt``).

    Uses ``torch.load(weights_only=True)``: a checkpoint cannot execute code when it is opened.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such model file; give the path of a .ckpt checkpoint or an exported model")
    try:
        ckpt = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files; all mean the same here
        raise ModelFileError(f"{p}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(ckpt, dict) or CARD_KEY not in ckpt or "state_dict" not in ckpt:
        raise ModelFileError(
            f"{p}: not an emlive checkpoint (expected keys '{CARD_KEY}' and 'state_dict'); "
            "train it with `emlive train` or pass an exported .onnx model"
        )
    card_data = ckpt[CARD_KEY]
    card = ModelCard.from_json(card_data if isinstance(card_data, str) else json.dumps(card_data), str(p))
    state = {k[len(STATE_PREFIX) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(STATE_PREFIX)}
    net = create_network(card.network)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{p}: weights do not match the card's network {card.network}: {exc}") from exc
    net.eval()
    return net, card  # type: ignore[return-value]  # create_network builds a registered AnyNetwork


def save_model(path: str | Path, net: AnyNetwork, card: ModelCard) -> Path:
    """Write a compact inference checkpoint (weights + card, no optimizer state) readable by load_checkpoint."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    state = {STATE_PREFIX + k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save({CARD_KEY: card.to_json(), "state_dict": state}, p)
    return p
