"""``distill(config)``: train a student network on a blind-spot teacher's outputs (``emlive distill``).

The student sees the same z-scored N-frame windows as the teacher, cropped and augmented the same way; its target
is the teacher's denoised center frame instead of the noisy one. The teacher runs once per frame, on whole frames
(through the inference runtime, tiled, on the fastest backend here), before training starts: its outputs are
stored in ``<run>/teacher/`` as float32 ``.npy`` files (memory-mapped) and cropped beside the input windows. The
windows are :func:`emlive.core.windows.window_indices` within each split, as in training, so the teacher never
sees the center frame in a neighbour slot. Flips and rotations act on window and target together; frame-order
reversal and extra input noise act on the input only (the student learns to reach the same target from them).

The model card records the teacher (file, name, blind spot, network and noise model).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
from tqdm import tqdm

from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard, TeacherInfo, load_checkpoint
from emlive.core.networks import AnyNetwork
from emlive.train.api import (
    TrainResult,
    fit,
    open_splits,
    select_accelerator,
    training_card,
    val_loaders,
    yaml_dump,
)
from emlive.train.config import AugmentConfig, DistillConfig
from emlive.train.data import MovieSource, WindowCrops
from emlive.train.module import DenoiserModule

if TYPE_CHECKING:
    from emlive.export.runtime import Denoiser

log = logging.getLogger(__name__)


class TeacherCrops(WindowCrops):
    """:class:`WindowCrops` whose target is the teacher's output for the crop, not the noisy center frame."""

    def __init__(
        self,
        sources: list[MovieSource],
        targets: list[np.ndarray],
        n_frames: int,
        crop_size: int,
        length: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        fixed: bool = False,
    ) -> None:
        super().__init__(sources, n_frames, crop_size, length, augment, seed, fixed)
        self.targets = targets  # per source: (frames of its split, H, W) teacher outputs in center z-units

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng, src_i, t, y, x, size = self.locate(index)
        src = self.sources[src_i]
        window = src.window(t, y, x, size, self.n_frames)
        target = np.array(self.targets[src_i][t - src.first, y : y + size, x : x + size], dtype=np.float32)
        if self.augment is not None:
            window, target = self._augment(window, target, rng)
        return torch.from_numpy(np.ascontiguousarray(window)), torch.from_numpy(np.ascontiguousarray(target[None]))


def teacher_targets(denoiser: Denoiser, source: MovieSource, path: Path, frames: int) -> np.ndarray:
    """The teacher's output (center z-units) for every frame of ``source``'s split, memory-mapped at ``path``."""
    shape = (source.last - source.first, source.height, source.width)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    for t in tqdm(range(source.first, source.last), desc=f"teacher on {source.movie.path.name}", leave=False):
        window = source.region(t, 0, 0, (source.height, source.width), frames)
        out[t - source.first] = denoiser.denoise_normalized(window)
    out.flush()
    return out


def _teacher_info(path: Path, card: ModelCard) -> TeacherInfo:
    return TeacherInfo(
        path=str(path),
        name=card.name,
        blind_spot=card.blind_spot,
        network=card.network.model_dump(mode="json"),
        noise=card.noise,
    )


def load_teacher(cfg: DistillConfig) -> tuple[AnyNetwork, ModelCard]:
    """The teacher's network and card; ``ConfigError`` when the student's window differs from the teacher's."""
    if cfg.teacher is None:
        raise ConfigError("no teacher model: pass --teacher TEACHER.pt (a model trained by `emlive train`)")
    net, card = load_checkpoint(cfg.teacher)
    if card.frames != cfg.network.frames:
        raise ConfigError(
            f"network.frames={cfg.network.frames} but the teacher {cfg.teacher} reads {card.frames} frames: the "
            f"student sees the teacher's windows; set network.frames={card.frames}"
        )
    return net, card


def _run_teacher(
    cfg: DistillConfig, sources: list[list[MovieSource]], folder: Path
) -> tuple[ModelCard, list[list[np.ndarray]]]:
    """Load the teacher and compute its targets for each group of sources (train, val)."""
    from emlive.export.runtime import Denoiser

    net, card = load_teacher(cfg)
    denoiser = Denoiser.from_network(net, card, backend="auto")
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    groups = []
    for g, group in enumerate(sources):
        groups.append(
            [
                teacher_targets(denoiser, s, folder / f"{g}-{i}-{s.movie.path.stem}.npy", card.frames)
                for i, s in enumerate(group)
            ]
        )
    denoiser.close()
    n = sum(s.last - s.first for group in sources for s in group)
    log.info("teacher %s: %d frames on %s in %.0f s", cfg.teacher, n, denoiser.backend, time.perf_counter() - t0)
    return card, groups


def distill(cfg: DistillConfig) -> TrainResult:
    """Train the student of ``cfg.network`` on the outputs of ``cfg.teacher`` for the movies of ``cfg.data``."""
    L.seed_everything(cfg.optim.seed, workers=True, verbose=False)
    run_dir = cfg.output.run_dir(cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml_dump(cfg))
    data, n = cfg.data, cfg.network.frames
    train_sources, val_sources = open_splits(cfg, data.train, data.gain)
    teacher_card, (train_targets, val_targets) = _run_teacher(cfg, [train_sources, val_sources], run_dir / "teacher")
    per_epoch = sum(s.last - s.first for s in train_sources) * cfg.optim.recursive_factor
    train_set = TeacherCrops(
        train_sources, train_targets, n, data.crop_size, per_epoch, cfg.augment, seed=cfg.optim.seed
    )
    loaders = val_loaders(
        cfg,
        val_sources,
        lambda count: TeacherCrops(val_sources, val_targets, n, data.val_crop_size, count, None, seed=999, fixed=True),
    )
    assert cfg.teacher is not None
    card = training_card(
        cfg,
        train_sources,
        f"{cfg.optim.loss.value} to the teacher's output",
        noise=teacher_card.noise,
        teacher=_teacher_info(cfg.teacher, teacher_card),
    )
    accelerator = select_accelerator(cfg)
    log.info(
        "distilling %s from %s: student %s, %.1f k multiply-adds per pixel; %d crops/epoch of %d px on %s",
        cfg.name,
        cfg.teacher,
        cfg.network.model_dump(exclude={"version", "kind"}),
        cfg.network.macs_per_pixel() / 1e3,
        per_epoch,
        data.crop_size,
        accelerator,
    )
    return fit(cfg, DenoiserModule(cfg, card), train_set, loaders, run_dir, accelerator)
