"""Train on a tiny simulated movie, then denoise it: the whole trainer path, through the CLI too."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from emlive.core.modelcard import CARD_KEY, ModelCard, load_checkpoint
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.train.api import train
from emlive.train.config import load_config

from .conftest import SHORT, TINY

TINY_RUN = [*TINY, *SHORT]


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    files = write_simulation(SimulationConfig(height=48, width=56, frames=12, dose=5.0, seed=3), out)
    return Path(files.noisy).parent


def _check_curves(run_dir: Path, epochs: int) -> list[dict[str, Any]]:
    """curves.json holds one record per epoch (training and validation loss, PSNR against data.clean) and the
    step losses; curves.png is a picture of them. Returns the epoch records."""
    curves = json.loads((run_dir / "curves.json").read_text())
    assert [e["epoch"] for e in curves["epochs"]] == list(range(epochs))
    for key in ("train_loss", "val_loss", "val_psnr"):
        assert all(np.isfinite(e[key]) for e in curves["epochs"]), key
    assert curves["steps"] and all(np.isfinite(s["loss"]) for s in curves["steps"])
    with Image.open(run_dir / "curves.png") as png:
        assert png.format == "PNG" and png.width > 1000 and png.height > 400
    return list(curves["epochs"])


@pytest.mark.timeout(240)
def test_train_writes_self_describing_checkpoints_and_resumes(movie: Path, tmp_path: Path) -> None:
    cfg = load_config(
        "synthetic-small",
        [
            f"data.train={movie / 'noisy.tif'}",
            f"data.clean={movie / 'clean.tif'}",
            f"output.root={tmp_path}",
            *TINY_RUN,
        ],
    )
    result = train(cfg)
    assert result.best_checkpoint.is_file() and result.last_checkpoint.is_file() and result.model.is_file()
    assert result.samples_per_second > 0
    assert "val/psnr" in result.metrics and np.isfinite(result.metrics["val/psnr"])
    raw = torch.load(result.best_checkpoint, weights_only=True)
    card = ModelCard.model_validate_json(raw[CARD_KEY])
    assert card.network == cfg.network and card.training.data
    net, card2 = load_checkpoint(result.model)
    assert card2.training.steps and card2.training.steps > 0
    x = torch.randn(1, 5, 40, 40)
    with torch.no_grad():
        assert net(x).shape == (1, 1, 40, 40)
    assert any((result.run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    first_curves = _check_curves(result.run_dir, epochs=2)
    resumed = train(
        cfg.model_copy(update={"resume": result.last_checkpoint, "optim": cfg.optim.model_copy(update={"epochs": 3})})
    )
    assert load_checkpoint(resumed.model)[1].training.epochs == 3
    assert resumed.run_dir == result.run_dir
    assert _check_curves(resumed.run_dir, epochs=3)[:2] == first_curves  # the resumed run appends
    first_seconds = result.card.training.seconds or 0.0
    resumed_seconds = load_checkpoint(resumed.model)[1].training.seconds or 0.0
    assert first_seconds > 0 and resumed_seconds > first_seconds  # the card counts the resumed run's whole time


# `emlive train` through its installed entry point (exit 0, "best checkpoint:", model_card.json written) is
# tests/train/test_ddp.py's 2-process run: one real entry-point run for the command, not two.


@pytest.mark.timeout(60)
def test_train_command_reports_bad_keys_without_traceback(tmp_path: Path) -> None:
    """... and before importing torch (-X importtime lists every import): a typo costs a second, not Lightning's
    start-up."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "emlive", "train", "--config", "synthetic-small",
         "optim.learnig_rate=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "optim.learnig_rate: unknown key" in proc.stderr and "Traceback" not in proc.stderr
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "emlive.train.config" in imported and not imported & {"torch", "lightning"}


@pytest.mark.timeout(240)
def test_averaged_weights_are_the_model_and_a_step_capped_run_is_scored_at_its_last_step(
    movie: Path, tmp_path: Path
) -> None:
    """optim.ema: validation, the checkpoints' model and model.pt are the averaged weights (the trained ones stay
    in the checkpoint for a resume). optim.max_steps stopping inside an epoch: the last step is validated, so the
    final weights are scored (they were saved under the previous epoch's loss before)."""
    cfg = load_config(
        "synthetic-small",
        [f"data.train={movie / 'noisy.tif'}", f"data.clean={movie / 'clean.tif'}", f"output.root={tmp_path}",
         *TINY, "optim.recursive_factor=4", "optim.epochs=5", "optim.max_steps=13", "optim.ema=0.9"],
    )  # fmt: skip
    result = train(cfg)
    epochs = json.loads((result.run_dir / "curves.json").read_text())["epochs"]
    assert epochs[-1]["step"] == 13 and epochs[-2]["step"] < 13 and epochs[-1]["val_loss"] is not None
    state = torch.load(result.last_checkpoint, weights_only=True)["state_dict"]
    assert int(state["ema_updates"]) == 13
    averaged = {k.removeprefix("ema."): v for k, v in state.items() if k.startswith("ema.")}
    trained = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}
    assert averaged.keys() == trained.keys() and any(not torch.equal(averaged[k], trained[k]) for k in trained)
    net, _ = load_checkpoint(result.last_checkpoint)
    for key, value in net.state_dict().items():
        assert torch.equal(value, averaged[key]), key
    best = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    for key, value in load_checkpoint(result.model)[0].state_dict().items():
        assert torch.equal(value, best[f"ema.{key}"]), key


@pytest.mark.timeout(60)
def test_the_average_moves_towards_the_trained_weights_with_a_warm_up() -> None:
    from emlive.core.modelcard import ModelCard
    from emlive.train.module import DenoiserModule

    cfg = load_config("synthetic-small", [*TINY, "optim.ema=0.5"])
    module = DenoiserModule(cfg, ModelCard(name="ema", network=cfg.network))
    assert module.ema is not None and module.eval_net is module.ema
    with torch.no_grad():
        for averaged, trained in zip(module.ema.parameters(), module.net.parameters(), strict=True):
            averaged.zero_()
            trained.fill_(1.0)
    module.on_train_batch_end(None, None, 0)  # first update: keep min(0.5, 1/10) of the average
    assert all(torch.allclose(p, torch.full_like(p, 0.9)) for p in module.ema.parameters())
    for _ in range(30):
        module.on_train_batch_end(None, None, 0)  # then at most 0.5: the average reaches the trained weights
    assert all(torch.allclose(p, torch.ones_like(p), atol=1e-6) for p in module.ema.parameters())
    plain = DenoiserModule(load_config("synthetic-small", TINY), ModelCard(name="plain", network=cfg.network))
    assert plain.ema is None and plain.eval_net is plain.net
