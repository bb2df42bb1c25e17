"""The trainer's Python API: ``train(config)``. The ``emlive train`` command is a thin layer over it."""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, Dataset

from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard, Target, TrainingSummary, load_checkpoint, save_model
from emlive.core.network import Head
from emlive.core.readers import Movie
from emlive.train.config import Accelerator, DistillConfig, Strategy, TrainConfig, TrainTargets, resolve_precision
from emlive.train.curves import CurveRecorder
from emlive.train.data import CleanWindows, MovieSource, WindowCrops, open_clean_twins, open_sources
from emlive.train.estimate import estimate_config
from emlive.train.module import DenoiserModule
from emlive.train.noise import training_noise
from emlive.train.patches import patches_ready, prepare_patches

log = logging.getLogger(__name__)


PATCH_WAIT_SECONDS = 6 * 3600  # how long other processes of a torchrun/SLURM job wait for rank 0's patches


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    model: Path  # compact inference checkpoint (weights + card)
    card: ModelCard
    samples_per_second: float  # all processes together
    metrics: dict[str, float] = field(default_factory=dict)
    global_rank: int = 0  # under DDP every process returns; only rank 0 wrote model.pt and model_card.json


class _EpochSetter(Callback):
    """Gives the training dataset a new random stream every epoch; with ``record_dir`` (output.log_crops) each
    process records the crops it draws in ``record_dir/rank<R>.csv``."""

    def __init__(self, dataset: WindowCrops, record_dir: Path | None = None) -> None:
        self.dataset = dataset
        self.record_dir = record_dir

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.record_dir is not None:
            self.dataset.start_record(self.record_dir / f"rank{trainer.global_rank}.csv")

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.dataset.set_epoch(trainer.current_epoch)


def launch_rank(devices: int) -> int:
    """This process's global rank as its launcher set it, before the process group exists: ``RANK`` (torchrun),
    ``NODE_RANK x devices + LOCAL_RANK`` (Lightning's own children), ``SLURM_PROCID`` (srun), else 0."""
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"])
    if "LOCAL_RANK" in env:
        return int(env.get("NODE_RANK", "0")) * devices + int(env["LOCAL_RANK"])
    return int(env.get("SLURM_PROCID", "0"))


def _usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_devices(cfg: TrainConfig | DistillConfig, accelerator: str) -> None:
    """Refuse more processes per node than the node has devices: CPU cores on CPU, CUDA devices on GPU."""
    devices = cfg.optim.devices
    if accelerator == "cpu" and devices > _usable_cores():
        raise ConfigError(
            f"optim.devices={devices} CPU processes but this machine gives this run {_usable_cores()} cores: each "
            f"DDP process needs at least one core; use optim.devices<={_usable_cores()}"
        )
    if accelerator == "gpu" and devices > torch.cuda.device_count():
        raise ConfigError(
            f"optim.devices={devices} but PyTorch sees {torch.cuda.device_count()} CUDA devices on this node; "
            f"use optim.devices<={torch.cuda.device_count()} (devices count per node; add nodes with optim.num_nodes)"
        )


def _strategy(cfg: TrainConfig | DistillConfig) -> str:
    optim = cfg.optim
    if optim.strategy is Strategy.auto:
        return "ddp" if optim.devices * optim.num_nodes > 1 else "auto"
    return optim.strategy.value


def _quiet_unless_rank_zero(rank: int) -> None:
    """Logs and progress come from rank 0; the other processes report only warnings and errors."""
    if rank != 0:
        logging.getLogger("emlive").setLevel(logging.WARNING)


def _patches_of_rank_zero(cfg: TrainConfig | DistillConfig, rank: int, run_dir: Path) -> Path:
    """Rank 0 cuts the patches; the other processes of a torchrun/SLURM job (all started at once) wait for its
    manifest, then read the same patches. (Lightning's own launcher starts them later, when rank 0 is done.)"""
    data = cfg.data
    args = (data.train, data.patches, data.gain, run_dir / "patches")
    if rank != 0:
        deadline = time.monotonic() + PATCH_WAIT_SECONDS
        while not patches_ready(*args):
            if time.monotonic() > deadline:
                raise ConfigError(
                    f"rank {rank}: rank 0 has not finished cutting the patches of {data.train} in "
                    f"{PATCH_WAIT_SECONDS} s; check its log, or prepare them first with a one-process run (the "
                    "same config with optim.devices=1 optim.num_nodes=1 optim.max_steps=1)"
                )
            time.sleep(2.0)
    return prepare_patches(*args)


def _precision(cfg: TrainConfig | DistillConfig, accelerator: str) -> str:
    return resolve_precision(cfg.optim.precision, accelerator)


def select_accelerator(cfg: TrainConfig | DistillConfig) -> str:
    if cfg.optim.accelerator is Accelerator.auto:
        return "gpu" if torch.cuda.is_available() else "cpu"
    if cfg.optim.accelerator is Accelerator.gpu and not torch.cuda.is_available():
        raise ConfigError(
            "optim.accelerator=gpu but PyTorch sees no CUDA device; use accelerator=cpu or install a CUDA build "
            "of torch (README: GPU installation)"
        )
    return cfg.optim.accelerator.value


def training_card(
    cfg: TrainConfig | DistillConfig, train_sources: list[MovieSource], loss: str, **extra: Any
) -> ModelCard:
    """The model card of a run (training or distillation): network, gain reference, training data; ``extra``
    adds the noise model, the teacher, ..."""
    return ModelCard(
        name=cfg.name,
        network=cfg.network,
        gain_reference=str(cfg.data.gain) if cfg.data.gain else None,
        training=TrainingSummary(
            data=[str(s.movie.path) for s in train_sources],
            movies=movie_summary(train_sources),
            config_name=cfg.name,
            loss=loss,
            target=Target(cfg.targets.value),
        ),
        **extra,
    )


def movie_summary(sources: list[MovieSource]) -> list[dict[str, Any]]:
    return [
        {
            "path": str(s.movie.path),
            "shape": list(s.movie.shape),
            "dtype": str(s.movie.dtype),
            "frames_used": s.last - s.first,
        }
        for s in sources
    ]


def _movie_bytes(source: MovieSource) -> int:
    _, h, w = source.movie.shape
    return (source.last - source.first) * h * w * source.movie.dtype.itemsize


def open_splits(
    cfg: TrainConfig | DistillConfig, train_path: Path, gain: Path | None
) -> tuple[list[MovieSource], list[MovieSource]]:
    """The training and validation movie sources of ``cfg.data`` (validation: ``data.val`` or the last frames)."""
    data, n, size = cfg.data, cfg.network.frames, cfg.data.crop_size
    if data.val is not None:
        train_sources = open_sources(train_path, gain, n, (0.0, 1.0), data.bin, size)
        val_sources = open_sources(data.val, data.gain, n, (0.0, 1.0), data.bin, min(size, data.val_crop_size))
    elif data.val_fraction > 0:
        split = 1.0 - data.val_fraction
        train_sources = open_sources(train_path, gain, n, (0.0, split), data.bin, size)
        val_sources = open_sources(train_path, gain, n, (split, 1.0), data.bin, min(size, data.val_crop_size))
    else:
        train_sources = open_sources(train_path, gain, n, (0.0, 1.0), data.bin, size)
        val_sources = []
    return train_sources, val_sources


def _loader_kw(cfg: TrainConfig | DistillConfig) -> dict[str, Any]:
    return {"num_workers": cfg.optim.num_workers, "persistent_workers": cfg.optim.num_workers > 0}


def val_loaders(
    cfg: TrainConfig | DistillConfig, val_sources: list[MovieSource], make_set: Callable[[int], Dataset[Any]]
) -> list[DataLoader[Any]]:
    """Validation loaders: ``make_set(count)`` (loss), and ground-truth PSNR when ``data.clean`` is given."""
    if not val_sources:
        return []
    data, n = cfg.data, cfg.network.frames
    n_val = max(cfg.optim.batch_size, 4 * len(val_sources) * max(1, sum(s.last - s.first for s in val_sources) // 4))
    n_val = min(n_val, 64)
    loaders: list[DataLoader[Any]] = [DataLoader(make_set(n_val), batch_size=cfg.optim.batch_size, **_loader_kw(cfg))]
    if data.clean is not None:
        clean_set = CleanWindows(val_sources, open_clean_twins(data.clean, val_sources), n, data.val_crop_size, n_val)
        loaders.append(DataLoader(clean_set, batch_size=cfg.optim.batch_size, **_loader_kw(cfg)))
    return loaders


def clean_twins(cfg: TrainConfig, sources: list[MovieSource]) -> list[Movie] | None:
    """The clean twins of ``sources`` when ``cfg`` trains the supervised oracle (``targets=clean``), else None."""
    if cfg.targets is not TrainTargets.clean or not sources:
        return None
    assert cfg.data.clean is not None  # the config refuses targets=clean without data.clean
    return open_clean_twins(cfg.data.clean, sources)


def train(cfg: TrainConfig, callbacks: list[Callback] | None = None) -> TrainResult:
    """Train a blind-spot denoiser on the noisy movies of ``cfg.data``; returns where the results are.

    ``callbacks``: Lightning callbacks added to the trainer's own (a progress display; one that sets
    ``trainer.should_stop`` ends the run cleanly, with its checkpoints and model.pt written)."""
    L.seed_everything(cfg.optim.seed, workers=True, verbose=False)
    rank = launch_rank(cfg.optim.devices)
    _quiet_unless_rank_zero(rank)
    accelerator = select_accelerator(cfg)
    check_devices(cfg, accelerator)
    run_dir = cfg.output.run_dir(cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        (run_dir / "config.yaml").write_text(yaml_dump(cfg))
    n = cfg.network.frames
    data = cfg.data
    train_path = data.train
    if data.patches.enabled:
        train_path = _patches_of_rank_zero(cfg, rank, run_dir)
    gain = None if data.patches.enabled else data.gain
    size = data.crop_size
    train_sources, val_sources = open_splits(cfg, train_path, gain)
    n_frames_total = sum(s.last - s.first for s in train_sources)
    per_epoch = n_frames_total * cfg.optim.recursive_factor
    estimate_config(cfg, accelerator, n_frames_total, movie_bytes=sum(_movie_bytes(s) for s in train_sources))
    stats = cfg.network.head is Head.gaussian  # the Gaussian NLL needs each crop's frame statistics
    train_set = WindowCrops(
        train_sources,
        n,
        size,
        per_epoch,
        cfg.augment,
        seed=cfg.optim.seed,
        clean=clean_twins(cfg, train_sources),
        stats=stats,
    )
    val_clean = clean_twins(cfg, val_sources)
    loaders = val_loaders(
        cfg,
        val_sources,
        lambda count: WindowCrops(
            val_sources, n, data.val_crop_size, count, None, seed=999, fixed=True, clean=val_clean, stats=stats
        ),
    )
    oracle = cfg.targets is TrainTargets.clean
    objective = f"{cfg.optim.loss.value} to the clean frames (oracle)" if oracle else cfg.optim.loss.value
    noise, pixel_noise = training_noise(cfg, train_sources[0])
    card = training_card(cfg, train_sources, objective, noise=noise)
    if oracle:
        log.info(
            "%s is a supervised ORACLE (targets=clean): the blind network learns the clean frames of %s, the bound "
            "self-supervision is measured against; its card says training.target=clean",
            cfg.name,
            data.clean,
        )
    log.info(
        "training %s: %d crops/epoch of %dx%d, %d frames, blind spot %s, width %d, on %s (%s)",
        cfg.name,
        per_epoch,
        size,
        size,
        n,
        cfg.network.blind_spot,
        cfg.network.width,
        accelerator,
        _precision(cfg, accelerator),
    )
    result = fit(cfg, DenoiserModule(cfg, card, pixel_noise), train_set, loaders, run_dir, accelerator, callbacks)
    if cfg.network.head is Head.gaussian and pixel_noise is not None and result.global_rank == 0:
        from emlive.train.calibrate import calibrate_training_run

        result.card = calibrate_training_run(result.model, train_sources)
        (run_dir / "model_card.json").write_text(result.card.model_dump_json(indent=2))
    return result


def log_processes(cfg: TrainConfig | DistillConfig, accelerator: str) -> None:
    """The start line of a run: processes, the global batch, and the learning rate (never rescaled)."""
    optim = cfg.optim
    world = optim.devices * optim.num_nodes
    log.info(
        "%d process(es) (%s strategy, %s): global batch = batch_size x devices x nodes = %d x %d x %d = %d; "
        "learning rate %g as configured (not scaled with the global batch)",
        world,
        _strategy(cfg),
        accelerator,
        optim.batch_size,
        optim.devices,
        optim.num_nodes,
        optim.batch_size * world,
        optim.learning_rate,
    )


class _TrainingClock(Callback):
    """Training seconds summed over a run and its resumes: kept in every checkpoint (Lightning saves and restores
    a callback's state), so a resumed run's card reports the whole training time, not the last part's."""

    def __init__(self) -> None:
        self.before = 0.0  # seconds of the runs this one resumes
        self._start: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.before + (0.0 if self._start is None else time.perf_counter() - self._start)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.before = float(state_dict.get("seconds", 0.0))


class _ValidateFinalStep(Callback):
    """Validates a run that optim.max_steps stops in the middle of an epoch at its last step: Lightning validates at
    the end of an epoch or when asked to stop, so the final (lowest learning rate) steps were never scored and their
    checkpoint was saved under the previous epoch's stale loss, which a tie then ranked below that epoch's weights."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


def fit(
    cfg: TrainConfig | DistillConfig,
    module: DenoiserModule,
    train_set: WindowCrops,
    loaders: list[DataLoader[Any]],
    run_dir: Path,
    accelerator: str,
    callbacks: list[Callback] | None = None,
) -> TrainResult:
    """Run Lightning on ``module`` (progress bar, checkpoints, TensorBoard); write model.pt and model_card.json."""
    train_loader = DataLoader(
        train_set, batch_size=cfg.optim.batch_size, shuffle=False, drop_last=True, **_loader_kw(cfg)
    )
    monitor = "val/loss" if loaders else "train/loss_epoch"
    ckpt_cb = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="epoch{epoch:03d}-loss{" + monitor + ":.5f}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode="min",
        save_top_k=cfg.output.save_top_k,
        save_last=True,
    )
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", default_hp_metric=False)
    max_time = None if cfg.optim.max_minutes is None else timedelta(minutes=cfg.optim.max_minutes)
    clock = _TrainingClock()
    log_every = min(cfg.output.log_every_n_steps, max(1, len(train_loader)))
    log_processes(cfg, accelerator)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=cfg.optim.devices,
        num_nodes=cfg.optim.num_nodes,
        strategy=_strategy(cfg),
        precision=_precision(cfg, accelerator),  # type: ignore[arg-type]
        max_epochs=cfg.optim.epochs,
        max_steps=cfg.optim.max_steps,
        max_time=max_time,
        gradient_clip_val=cfg.optim.gradient_clip,
        logger=logger,
        callbacks=[
            ckpt_cb,
            clock,
            _ValidateFinalStep(),
            _EpochSetter(train_set, run_dir / "crops" if cfg.output.log_crops else None),
            TQDMProgressBar(refresh_rate=max(1, min(20, len(train_loader) // 5))),
            LearningRateMonitor(logging_interval="step"),
            CurveRecorder(run_dir, cfg.name, log_every, resume=cfg.resume is not None),  # curves.json and .png
            *(callbacks or []),  # the caller's own (the napari Train widget: live loss, cancel)
        ],
        log_every_n_steps=log_every,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        deterministic=False,
    )
    t0 = time.perf_counter()
    trainer.fit(module, train_loader, loaders or None, ckpt_path=str(cfg.resume) if cfg.resume else None)
    seconds = time.perf_counter() - t0
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    best = Path(ckpt_cb.best_model_path or ckpt_cb.last_model_path)
    last = Path(ckpt_cb.last_model_path)
    best_score = ckpt_cb.best_model_score
    card = module.card
    card.training.epochs = trainer.current_epoch
    card.training.steps = trainer.global_step
    card.training.samples = trainer.global_step * cfg.optim.batch_size * trainer.world_size
    card.training.final_train_loss = metrics.get("train/loss_epoch")
    card.training.best_val_loss = float(best_score) if best_score is not None and math.isfinite(best_score) else None
    card.training.val_psnr = metrics.get("val/psnr")
    for key in ("psnr_posterior", "gain_db", "predicted_gain_db", "calibration", "noise_check"):  # gaussian head
        if f"val/{key}" in metrics:
            setattr(card.training, f"val_{key}", metrics[f"val/{key}"])
    card.training.seconds = round(clock.seconds, 1)  # resumes included
    model_path = run_dir / "model.pt"
    if trainer.is_global_zero:  # the checkpoints are rank 0's too (Lightning saves on rank 0 only)
        best_net, _ = load_checkpoint(best)
        save_model(model_path, best_net, card)
        (run_dir / "model_card.json").write_text(card.model_dump_json(indent=2))
    result = TrainResult(
        run_dir=run_dir,
        best_checkpoint=best,
        last_checkpoint=last,
        model=model_path,
        card=card,
        samples_per_second=module.samples_per_second * trainer.world_size,
        metrics=metrics,
        global_rank=trainer.global_rank,
    )
    log.info(
        "done in %.0f s (%.1f samples/s); best checkpoint %s; model %s",
        seconds,
        result.samples_per_second,
        best,
        model_path,
    )
    return result


def yaml_dump(cfg: TrainConfig | DistillConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
