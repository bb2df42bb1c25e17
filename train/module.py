"""The LightningModule: loss, optimiser, logging. The network itself is a plain module from the registry."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from emlive.core.metrics import psnr_paper
from emlive.core.modelcard import CARD_KEY, ModelCard
from emlive.core.networks import AnyNetwork, create_network
from emlive.train.config import DistillConfig, Loss, TrainConfig

log = logging.getLogger(__name__)

WORLD_SIZE_KEY = "emlive_world_size"  # processes (devices x nodes) of the run that wrote a checkpoint


def self_supervised_loss(kind: Loss, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss between the blind network's output and the noisy center frame."""
    if kind is Loss.l2:
        return F.mse_loss(output, target)
    if kind is Loss.l1:
        return F.l1_loss(output, target)
    if kind is Loss.smooth_l1:
        return F.smooth_l1_loss(output, target)
    return torch.sqrt((output - target) ** 2 + 1e-6).mean()


class DenoiserModule(L.LightningModule):
    """Trains a network on (window, target) pairs; stores the model card in every checkpoint.

    The network is built from ``config.network`` through the registry: a ``BlindSpotNet`` trained on the noisy
    center frame (``emlive train``), or a student trained on its teacher's output (``emlive distill``).
    """

    def __init__(self, config: TrainConfig | DistillConfig, card: ModelCard) -> None:
        super().__init__()
        self.config = config
        self.card = card
        self.net: AnyNetwork = create_network(config.network)  # type: ignore[assignment]
        self.save_hyperparameters({"config": config.model_dump(mode="json")})
        self._t0 = 0.0
        self._samples = 0
        self.samples_per_second = 0.0
        self._sample_logged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_train_start(self) -> None:
        self._t0 = time.perf_counter()
        self._samples = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        window, target = batch
        loss = self_supervised_loss(self.config.optim.loss, self.net(window), target)
        self._samples += window.shape[0]
        elapsed = time.perf_counter() - self._t0
        self.samples_per_second = self._samples / max(elapsed, 1e-9)
        self.log(
            "train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=window.shape[0], sync_dist=True
        )
        self.log("samples/s", self.samples_per_second, prog_bar=True, on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 0:
            window, target = batch
            output = self.net(window)
            loss = self_supervised_loss(self.config.optim.loss, output, target)
            self.log(
                "val/loss", loss, prog_bar=True, add_dataloader_idx=False, batch_size=window.shape[0], sync_dist=True
            )
            if batch_idx == 0:
                self._log_images(window, output)
            return
        window, clean, stats = batch
        output = self.net(window).float()
        denoised = output[:, 0] * stats[:, 1, None, None] + stats[:, 0, None, None]
        psnrs = [psnr_paper(c.cpu().numpy(), d.cpu().numpy()) for c, d in zip(clean[:, 0], denoised, strict=True)]
        psnr = float(np.mean(psnrs))
        self.log("val/psnr", psnr, prog_bar=True, add_dataloader_idx=False, batch_size=len(psnrs), sync_dist=True)

    def _log_images(self, window: torch.Tensor, output: torch.Tensor) -> None:
        if not self.config.output.log_images or self.logger is None:
            return
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        c = window.shape[1] // 2
        for name, img in (("noisy", window[0, c]), ("denoised", output[0, 0])):
            lo, hi = torch.quantile(img.float().flatten(), torch.tensor([0.005, 0.995], device=img.device))
            scaled = ((img.float() - lo) / (hi - lo + 1e-6)).clamp(0, 1)
            experiment.add_image(f"sample/{name}", scaled[None].cpu(), self.global_step)

    def configure_optimizers(self) -> Any:
        optim = self.config.optim
        opt = torch.optim.Adam(self.net.parameters(), lr=optim.learning_rate, weight_decay=optim.weight_decay)
        if not optim.schedule:
            return opt
        total = int(self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1), eta_min=optim.learning_rate / 100)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CARD_KEY] = self.card.to_json()
        checkpoint[WORLD_SIZE_KEY] = self.trainer.world_size

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming with another number of processes works (weights, optimizer, epoch and step counters carry
        over); warn that the global batch, the steps per epoch and so the learning-rate schedule change."""
        before, now = checkpoint.get(WORLD_SIZE_KEY, 1), self.trainer.world_size
        if before != now:
            log.warning(
                "resuming a checkpoint written by %d processes with %d: the global batch changes from %d to %d "
                "(batch_size %d per process) and the steps per epoch by %d/%d; the learning-rate schedule keeps "
                "its planned length. To continue exactly, resume with devices x num_nodes = %d",
                before,
                now,
                before * self.config.optim.batch_size,
                now * self.config.optim.batch_size,
                self.config.optim.batch_size,
                before,
                now,
                before,
            )
