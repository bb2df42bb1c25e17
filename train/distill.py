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

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import numpy as np
import torch
from tqdm import tqdm

from emlive.core.ensemble import Ensemble, ensemble_average, ensemble_for
from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard, TeacherInfo, load_checkpoint
from emlive.core.networks import AnyNetwork
from emlive.core.readers import Movie, find_movies, open_movie
from emlive.train.api import (
    TrainResult,
    fit,
    open_splits,
    select_accelerator,
    training_card,
    val_loaders,
    yaml_dump,
)
from emlive.train.config import AugmentConfig, DistillConfig, DistillTargets
from emlive.train.data import MovieSource, WindowCrops, crop_tensors
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
        return crop_tensors(window, target)


def _targets_key(teacher: Path, source: MovieSource, frames: int, ensemble: Ensemble) -> dict[str, Any]:
    """What a file of teacher targets depends on: the teacher file, the movie split and the ensemble."""
    stat = teacher.stat()
    return {
        "teacher": str(teacher.resolve()),
        "teacher_bytes": stat.st_size,
        "teacher_mtime_ns": stat.st_mtime_ns,
        "movie": str(Path(source.movie.path).resolve()),
        "shape": list(source.movie.shape),
        "frames": [source.first, source.last],
        "bin": source.bin,
        "window": frames,
        "ensemble": ensemble.value,
    }


def teacher_targets(
    denoiser: Denoiser,
    source: MovieSource,
    path: Path,
    frames: int,
    ensemble: Ensemble = Ensemble.none,
    key: dict[str, Any] | None = None,
) -> np.ndarray:
    """The teacher's output (center z-units) for every frame of ``source``'s split, memory-mapped at ``path``;
    averaged over the geometric ``ensemble`` (:func:`emlive.core.ensemble.ensemble_average`). With a ``key``
    (:func:`_targets_key`) a file computed before for the same key is reused (a resumed run skips the teacher)."""
    stamp = path.with_suffix(".json")
    if key is not None and path.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        log.info("reusing the teacher's targets in %s (same teacher, movie and ensemble)", path)
        return np.load(path, mmap_mode="r")
    stamp.unlink(missing_ok=True)
    shape = (source.last - source.first, source.height, source.width)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    desc = f"teacher ({ensemble.passes} pass{'es' if ensemble.passes > 1 else ''}) on {source.movie.path.name}"
    for t in tqdm(range(source.first, source.last), desc=desc, leave=False):
        window = source.region(t, 0, 0, (source.height, source.width), frames)
        out[t - source.first] = ensemble_average(window, ensemble, denoiser.denoise_normalized)
    out.flush()
    if key is not None:
        stamp.write_text(json.dumps(key))
    return out


def clean_targets(source: MovieSource, clean: Movie, path: Path) -> np.ndarray:
    """The ground truth of ``source``'s split in its center frames' z-units (the supervised oracle's targets)."""
    if clean.shape != source.movie.shape:
        raise ConfigError(
            f"data.clean {clean.path}: shape {list(clean.shape)} differs from the noisy movie "
            f"{source.movie.path}'s {list(source.movie.shape)}; give the clean movie of the same acquisition"
        )
    shape = (source.last - source.first, source.height, source.width)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    for t in range(source.first, source.last):
        out[t - source.first] = source.normalized_crop(clean, t, 0, 0, (source.height, source.width))
    out.flush()
    return out


def _teacher_info(path: Path, card: ModelCard, ensemble: Ensemble) -> TeacherInfo:
    return TeacherInfo(
        path=str(path),
        name=card.name,
        blind_spot=card.blind_spot,
        network=card.network.model_dump(mode="json"),
        noise=card.noise,
        ensemble=ensemble.value,
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
) -> tuple[ModelCard, Ensemble, list[list[np.ndarray]]]:
    """Load the teacher and compute its targets for each group of sources (train, val), with the ensemble used."""
    from emlive.export.runtime import Denoiser

    net, card = load_teacher(cfg)
    assert cfg.teacher is not None  # load_teacher refuses a config without one
    ensemble = ensemble_for(cfg.teacher_ensemble, card.blind_spot, card.noise.kernel if card.noise else None)
    denoiser = Denoiser.from_network(net, card, backend="auto")
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    groups = []
    for g, group in enumerate(sources):
        groups.append(
            [
                teacher_targets(
                    denoiser,
                    s,
                    folder / f"{g}-{i}-{s.movie.path.stem}.npy",
                    card.frames,
                    ensemble,
                    _targets_key(cfg.teacher, s, card.frames, ensemble),
                )
                for i, s in enumerate(group)
            ]
        )
    denoiser.close()
    n = sum(s.last - s.first for group in sources for s in group)
    log.info(
        "teacher %s: %d frames x %d passes on %s in %.0f s",
        cfg.teacher,
        n,
        ensemble.passes,
        denoiser.backend,
        time.perf_counter() - t0,
    )
    return card, ensemble, groups


def _run_clean(cfg: DistillConfig, sources: list[list[MovieSource]], folder: Path) -> list[list[np.ndarray]]:
    """The oracle's targets: ``data.clean``'s movies, one per noisy movie, for each group of sources."""
    assert cfg.data.clean is not None
    clean = [open_movie(p) for p in find_movies(cfg.data.clean)]
    folder.mkdir(parents=True, exist_ok=True)
    groups = []
    for g, group in enumerate(sources):
        if len(clean) != len(group):
            raise ConfigError(
                f"data.clean={cfg.data.clean}: {len(clean)} clean movies for {len(group)} noisy movies; give one "
                "clean movie per noisy movie"
            )
        groups.append(
            [
                clean_targets(s, c, folder / f"{g}-{i}-{s.movie.path.stem}.npy")
                for i, (s, c) in enumerate(zip(group, clean, strict=True))
            ]
        )
    return groups


def _targets(
    cfg: DistillConfig, sources: list[list[MovieSource]], folder: Path
) -> tuple[list[list[np.ndarray]], dict[str, Any], str]:
    """Targets per group of sources, the card's extra sections and the training objective, per ``cfg.targets``."""
    if cfg.targets is DistillTargets.clean:
        return _run_clean(cfg, sources, folder / "clean"), {}, f"{cfg.optim.loss.value} to the clean frames (oracle)"
    assert cfg.teacher is not None
    card, ensemble, groups = _run_teacher(cfg, sources, folder / "teacher")
    extra = {"noise": card.noise, "teacher": _teacher_info(cfg.teacher, card, ensemble)}
    return groups, extra, f"{cfg.optim.loss.value} to the teacher's output"


def distill(cfg: DistillConfig) -> TrainResult:
    """Train the student of ``cfg.network`` on the outputs of ``cfg.teacher`` for the movies of ``cfg.data``."""
    L.seed_everything(cfg.optim.seed, workers=True, verbose=False)
    run_dir = cfg.output.run_dir(cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml_dump(cfg))
    data, n = cfg.data, cfg.network.frames
    train_sources, val_sources = open_splits(cfg, data.train, data.gain)
    (train_targets, val_targets), extra, objective = _targets(cfg, [train_sources, val_sources], run_dir)
    per_epoch = sum(s.last - s.first for s in train_sources) * cfg.optim.recursive_factor
    train_set = TeacherCrops(
        train_sources, train_targets, n, data.crop_size, per_epoch, cfg.augment, seed=cfg.optim.seed
    )
    loaders = val_loaders(
        cfg,
        val_sources,
        lambda count: TeacherCrops(val_sources, val_targets, n, data.val_crop_size, count, None, seed=999, fixed=True),
    )
    card = training_card(cfg, train_sources, objective, **extra)
    accelerator = select_accelerator(cfg)
    log.info(
        "distilling %s from %s: student %s, %.1f k multiply-adds per pixel; %d crops/epoch of %d px on %s",
        cfg.name,
        cfg.teacher if cfg.targets is DistillTargets.teacher else f"the clean frames of {cfg.data.clean}",
        cfg.network.model_dump(exclude={"version", "kind"}),
        cfg.network.macs_per_pixel() / 1e3,
        per_epoch,
        data.crop_size,
        accelerator,
    )
    return fit(cfg, DenoiserModule(cfg, card), train_set, loaders, run_dir, accelerator)
