"""The run's loss and validation curves as a picture: ``<run>/curves.json`` (the values) and ``<run>/curves.png``.

A Lightning callback records the values itself (rank 0 only) rather than reading TensorBoard's event files; the
json is written at the end of every epoch (after its validation), the picture too (at most every REDRAW_SECONDS for
short epochs), and both at the end of the run (also when max_minutes stops it) and when it stops on an error or
Ctrl-C, so a long run always has a current picture. A resumed run reads the existing json and appends to it
(dropping what the resumed checkpoint's later epochs had recorded).
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from emlive.analysis.plots import TrainingCurves, plot_training_curves
from emlive.core.errors import InputFileError

log = logging.getLogger(__name__)

CURVES_JSON = "curves.json"
CURVES_PNG = "curves.png"
REDRAW_SECONDS = 10.0  # short epochs: the picture is redrawn at most this often (the json every epoch)


def _scalar(metrics: dict[str, Any], key: str) -> float | None:
    value = metrics.get(key)
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def load_curves(path: Path, name: str) -> TrainingCurves:
    """The curves a previous part of the run recorded; empty ones when there is no readable file."""
    try:
        data = json.loads(path.read_text())
        return TrainingCurves(name=name, epochs=list(data["epochs"]), steps=list(data["steps"]))
    except FileNotFoundError:
        return TrainingCurves(name=name)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: cannot read the previous curves (%s); starting new ones", path, exc)
        return TrainingCurves(name=name)


class CurveRecorder(Callback):
    """Records the training loss (per epoch, and every ``log_every_n_steps`` steps), the validation loss and the
    validation PSNR (with data.clean) per epoch; writes curves.json and curves.png in ``run_dir``."""

    def __init__(self, run_dir: Path, name: str, every: int, resume: bool) -> None:
        self.every = max(1, every)  # record the step loss every this many steps (the logger's interval)
        self.json_path = run_dir / CURVES_JSON
        self.png_path = run_dir / CURVES_PNG
        self.curves = load_curves(self.json_path, name) if resume else TrainingCurves(name=name)
        self._pending: dict[str, Any] = {}
        self._drawn_at = -math.inf

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a resume from an earlier checkpoint redoes the epochs after it: forget what they had recorded
        epoch, step = trainer.current_epoch, trainer.global_step
        self.curves.epochs = [e for e in self.curves.epochs if e["epoch"] < epoch]
        self.curves.steps = [s for s in self.curves.steps if s["step"] <= step]

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not trainer.is_global_zero or trainer.global_step % self.every:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None:
            value = float(loss.detach())
            if math.isfinite(value):
                self.curves.steps.append({"step": trainer.global_step, "loss": value})

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        self._pending = {"val_loss": _scalar(metrics, "val/loss"), "val_psnr": _scalar(metrics, "val/psnr")}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        record = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "train_loss": _scalar(trainer.callback_metrics, "train/loss_epoch"),
            "val_loss": None,
            "val_psnr": None,
        }
        record.update(self._pending)
        self._pending = {}
        self.curves.epochs.append(record)
        self.write(draw=time.monotonic() - self._drawn_at >= REDRAW_SECONDS)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.write()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.is_global_zero and self.curves.epochs:
            self.write()

    def write(self, draw: bool = True) -> None:
        """curves.json, then (``draw``) curves.png; a picture that fails to draw only logs: the run goes on."""
        self.json_path.write_text(json.dumps(self.curves.to_dict(), indent=1))
        if not draw or not self.curves.epochs:
            return
        self._drawn_at = time.monotonic()
        try:
            plot_training_curves(self.curves, self.png_path)
        except (InputFileError, ValueError) as exc:
            log.warning("%s: cannot draw the curves (%s); the values are in %s", self.png_path, exc, self.json_path)
