"""The LightningModule: loss, optimiser, logging. The network itself is a plain module from the registry."""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from emlive.core.errors import ConfigError
from emlive.core.metrics import psnr_paper
from emlive.core.modelcard import CARD_KEY, ModelCard
from emlive.core.networks import AnyNetwork, create_network
from emlive.core.posterior import NoiseCheck, PixelNoise, posterior, predicted_gain_db, to_counts
from emlive.train.config import DistillConfig, Loss, TrainConfig

log = logging.getLogger(__name__)

LOG_VAR_GRAD_BOOST = 30.0  # the most the log-variance gradient is scaled up (see gaussian_nll)
WORLD_SIZE_KEY = "emlive_world_size"  # processes (devices x nodes) of the run that wrote a checkpoint


def self_supervised_loss(kind: Loss, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Loss between the blind network's output and the noisy center frame (a mean head; see :func:`gaussian_nll`)."""
    if kind is Loss.gaussian_nll:
        raise ConfigError("optim.loss=gaussian_nll needs the noise model and frame statistics: use gaussian_nll()")
    if kind is Loss.l2:
        return F.mse_loss(output, target)
    if kind is Loss.l1:
        return F.l1_loss(output, target)
    if kind is Loss.smooth_l1:
        return F.smooth_l1_loss(output, target)
    return torch.sqrt((output - target) ** 2 + 1e-6).mean()


def gaussian_nll(
    output: torch.Tensor, target: torch.Tensor, stats: torch.Tensor, noise: PixelNoise
) -> torch.Tensor:
    """Mean negative log-likelihood (without the constant) of the noisy target y under N(mu, s_x^2 + s_n^2(mu)), all
    in z units (Laine et al. 2019): ``output`` (B, 2, H, W) holds mu and log s_x^2; s_n^2 is the raw noise variance
    at the prior mean, ``noise.variance_of(mu * std + mean) / std^2`` with each sample's (mean, std) of ``stats``
    (B, 2). Computed in float32 whatever the autocast precision.

    s_n^2 is evaluated at the DETACHED prior mean: mu is then learnt by an L2 loss weighted by 1 / (s_x^2 + s_n^2),
    unbiased whatever the variance head says. With the gradient through s_n^2(mu), a variance head still wider
    than the residuals (early in training) pulls mu towards darker values (lower noise): measured on a short run at
    5 e-/px/frame, a blind mean 16% too dark.

    The gradient of the log variance is multiplied by (s_x^2 + s_n^2) / s_x^2 (at most LOG_VAR_GRAD_BOOST): the
    NLL's own gradient, 0.5 (s_x^2 / T) (1 - (y - mu)^2 / T), vanishes where the prior is much tighter than the
    noise, and a short run left the variance head 3x overconfident (24% of pixels within 1 std, 68% nominal). The
    loss value and where its gradient is zero, E[(y - mu)^2] = s_x^2 + s_n^2 (the calibrated prior), are unchanged."""
    with torch.autocast(output.device.type, enabled=False):
        out, y = output.float(), target.float()
        mean, std = stats[:, 0, None, None, None].float(), stats[:, 1, None, None, None].float()
        mu, log_var = out[:, :1], out[:, 1:2]
        noise_var = noise.variance_of(mu.detach() * std + mean) / std**2
        boost = (1.0 + noise_var / torch.exp(log_var.detach())).clamp(max=LOG_VAR_GRAD_BOOST)
        log_var = log_var.detach() + boost * (log_var - log_var.detach())  # same value, gradient x boost
        total = torch.exp(log_var) + noise_var
        return 0.5 * (torch.log(total) + (y - mu) ** 2 / total).mean()


class DenoiserModule(L.LightningModule):
    """Trains a network on (window, target) pairs; stores the model card in every checkpoint.

    The network is built from ``config.network`` through the registry: a ``BlindSpotNet`` trained on the noisy
    center frame (``emlive train``), or a student trained on its teacher's output (``emlive distill``).
    """

    def __init__(self, config: TrainConfig | DistillConfig, card: ModelCard, noise: PixelNoise | None = None) -> None:
        super().__init__()
        self.config = config
        self.card = card
        self.noise = noise  # the pixel noise (counts) of the Gaussian NLL; None for a mean head
        if config.optim.loss is Loss.gaussian_nll and noise is None:
            raise ConfigError("optim.loss=gaussian_nll: the module needs the pixel noise model (train() passes it)")
        self.net: AnyNetwork = create_network(config.network)  # type: ignore[assignment]
        self.ema: AnyNetwork | None = None  # the averaged weights (optim.ema), the model when present
        if config.optim.ema is not None:
            self.ema = copy.deepcopy(self.net).requires_grad_(False)
            self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self.save_hyperparameters({"config": config.model_dump(mode="json")})
        self._t0 = 0.0
        self._samples = 0
        self.samples_per_second = 0.0
        self._sample_logged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def eval_net(self) -> AnyNetwork:
        """What validation scores and model.pt keeps: the averaged weights with optim.ema, else the trained ones."""
        return self.net if self.ema is None else self.ema

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Move the averaged weights towards the trained ones: decay min(optim.ema, (1 + n) / (10 + n)) after n
        updates, so the first steps' untrained weights fade out quickly (as timm's ModelEmaV2 warm-up)."""
        if self.ema is None or self.config.optim.ema is None:
            return
        updates = self.get_buffer("ema_updates")
        n = int(updates)
        keep = min(self.config.optim.ema, (1.0 + n) / (10.0 + n))
        with torch.no_grad():
            for averaged, current in zip(self.ema.state_dict().values(), self.net.state_dict().values(), strict=True):
                if averaged.is_floating_point():
                    averaged.lerp_(current, 1.0 - keep)
                else:
                    averaged.copy_(current)
        updates += 1

    def on_train_start(self) -> None:
        self._t0 = time.perf_counter()
        self._samples = 0

    def loss(self, batch: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        """The configured loss of ``output`` for a (window, target[, stats]) batch."""
        if self.noise is not None:
            return gaussian_nll(output, batch[1], batch[2], self.noise)
        return self_supervised_loss(self.config.optim.loss, output, batch[1])

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        window = batch[0]
        loss = self.loss(batch, self.net(window))
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
            window = batch[0]
            output = self.eval_net(window)
            loss = self.loss(batch, output)
            self.log(
                "val/loss", loss, prog_bar=True, add_dataloader_idx=False, batch_size=window.shape[0], sync_dist=True
            )
            if batch_idx == 0:
                self._log_images(window, output)
            return
        window, clean, stats = batch
        output = self.eval_net(window).float()
        denoised = output[:, 0] * stats[:, 1, None, None] + stats[:, 0, None, None]
        psnrs = [psnr_paper(c.cpu().numpy(), d.cpu().numpy()) for c, d in zip(clean[:, 0], denoised, strict=True)]
        psnr = float(np.mean(psnrs))
        self.log("val/psnr", psnr, prog_bar=True, add_dataloader_idx=False, batch_size=len(psnrs), sync_dist=True)
        if self.noise is not None:
            self._log_posterior(window, output, clean, stats)

    def _log_posterior(
        self, window: torch.Tensor, output: torch.Tensor, clean: torch.Tensor, stats: torch.Tensor
    ) -> None:
        """Validation of the Gaussian head against the truth: the posterior's PSNR, its gain over the blind output
        as measured and as predicted, the calibration (share of pixels within +-1 posterior std of the truth; 68%
        nominal) and the noise check's ratio (1 when the noise model and the variance head are right)."""
        assert self.noise is not None
        st = stats.cpu().double().numpy()[:, :, None, None]
        out = output.cpu().double().numpy()
        mu, log_var = to_counts(out[:, 0], out[:, 1], st[:, 0], st[:, 1])
        observed = window[:, window.shape[1] // 2].cpu().double().numpy() * st[:, 1] + st[:, 0]
        post = posterior(mu, log_var, observed, self.noise)
        truth = clean[:, 0].cpu().double().numpy()
        blind_mse = float(np.mean((mu - truth) ** 2))
        post_mse = float(np.mean((post.mean - truth) ** 2))
        values = {
            "val/psnr_posterior": float(np.mean([psnr_paper(c, p) for c, p in zip(truth, post.mean, strict=True)])),
            "val/gain_db": 10.0 * float(np.log10(blind_mse / max(post_mse, 1e-30))),
            "val/predicted_gain_db": predicted_gain_db(post.prior_std.astype(np.float64) ** 2, post.noise_std**2),
            "val/calibration": float(np.mean(np.abs(truth - post.mean) < post.std)),
            "val/noise_check": NoiseCheck.measure(mu, log_var, observed, self.noise).ratio,
        }
        for name, value in values.items():
            self.log(name, value, add_dataloader_idx=False, batch_size=len(truth), sync_dist=True)

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
