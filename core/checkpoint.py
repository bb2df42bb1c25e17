"""PyTorch checkpoints of emlive models: the network's weights and its model card (the torch side of
:mod:`emlive.core.modelcard`, which stays importable without torch and forwards its ``load_checkpoint`` and
``save_model`` here)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emlive.core.errors import ModelFileError
from emlive.core.modelcard import CARD_KEY, EMA_PREFIX, STATE_PREFIX, ModelCard
from emlive.core.networks import AnyNetwork, create_network


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
    weights = ckpt["state_dict"]
    prefix = EMA_PREFIX if any(k.startswith(EMA_PREFIX) for k in weights) else STATE_PREFIX  # averaged: the model
    state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
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
