"""Every shipped config (configs/*.yaml) trains a few steps as written, on a tiny movie of its own format.

A config added to configs/ is covered without touching this file. For each config a small simulated movie is written
in the format its ``data.train`` names: the file's suffix (multi-page TIFF, MRC, DM3/DM4, SER, EMD, npy), or, for a
folder, MRC movies when the gain reference is an MRC file and single-page TIFFs otherwise; ``data.clean`` and
``data.gain`` are written where the config puts them. Only what a CI machine needs is overridden: every path is
rebased into a temporary folder, ``optim.max_steps`` is 2, ``data.crop_size`` is the tiny movie's size, a
GPU-only config runs on the CPU when there is no GPU, and the network width is halved only while the estimated
step would take more than ``MAX_STEP_SECONDS`` here. The worker count, batch size, frames, blind spot, scales,
blocks, augmentations, patches and loss stay as written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
import torch
import yaml

from emlive.core.readers import open_movie
from emlive.core.simulate import SimulationConfig, simulate_movie
from emlive.core.writers import write_movie
from emlive.train.api import train
from emlive.train.config import Accelerator, TrainConfig, load_config, shipped_configs
from emlive.train.estimate import estimate, run_shape

from ..core import formats  # DM/SER/Velox writers (no library writes them)

log = logging.getLogger(__name__)

SHIPPED = shipped_configs()  # training configs; the distillation configs are covered by tests/train/test_distill.py
SIZE = 32  # px: the tiny movie's frames, and the training crop
FRAMES = 20
MAX_STEP_SECONDS = 20.0


def _write_file(path: Path, frames: np.ndarray) -> None:
    """One movie file in the format of ``path``'s suffix."""
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".tif", ".tiff"):  # one zlib-compressed page per frame, as microscope software exports
        tifffile.imwrite(path, frames, compression="zlib", photometric="minisblack")
    elif suffix in (".mrc", ".mrcs"):
        write_movie(path, frames)
    elif suffix == ".npy":
        np.save(path, frames)
    elif suffix in (".dm3", ".dm4"):
        formats.write_dm(path, frames, 0.1, version=int(suffix[-1]))
    elif suffix == ".ser":
        formats.write_ser(path, frames, 1e-10)
    elif suffix == ".emd":
        formats.write_velox(path, frames, 1e-10)
    else:
        raise AssertionError(f"{path}: no writer for {suffix!r}; teach _write_file this config's format")


def _write_movie(target: Path, frames: np.ndarray, folder_suffix: str) -> None:
    """``target`` is a movie file, or a folder: MRC movies or single-page TIFFs, as ``folder_suffix`` says."""
    if target.suffix:
        _write_file(target, frames)
    elif folder_suffix in (".mrc", ".mrcs"):
        _write_file(target / f"movie{folder_suffix}", frames)
    else:
        target.mkdir(parents=True, exist_ok=True)
        for t, frame in enumerate(frames):
            tifffile.imwrite(target / f"frame{t}.tif", frame)


def _rebase(raw: dict[str, Any], root: Path) -> list[str]:
    """Overrides that move every data and output path of the config under ``root``."""
    data = raw["data"]
    keys = [f"data.{key}" for key in ("train", "val", "clean", "gain") if data.get(key)]
    if data.get("patches", {}).get("folder"):
        keys.append("data.patches.folder")
    out = []
    for key in keys:
        node = raw
        for part in key.split("."):
            node = node[part]
        out.append(f"{key}={root / str(node)}")
    return [*out, f"output.root={root / 'runs'}"]


def _machine_overrides(cfg: TrainConfig) -> list[str]:
    """A GPU-only config runs on the CPU here when PyTorch sees no GPU, and on as many GPUs as there are."""
    if cfg.optim.accelerator is not Accelerator.gpu:
        return []
    gpus = torch.cuda.device_count()
    if gpus:
        return [f"optim.devices={min(gpus, cfg.optim.devices)}"]
    precision = cfg.optim.precision.value
    keep = precision if precision in ("32-true", "bf16-mixed") else "32-true"  # fp16 mixed is a GPU mode
    return ["optim.accelerator=cpu", "optim.devices=1", f"optim.precision={keep}"]


def _width_for_here(cfg: TrainConfig, device: str) -> int:
    """The config's width, halved while one step is estimated to take more than MAX_STEP_SECONDS here."""
    width = cfg.network.width
    while width > 8:
        network = cfg.network.model_copy(update={"width": width})
        shape = run_shape(cfg.model_copy(update={"network": network}), device, FRAMES)
        seconds = estimate(shape, device).seconds_per_step
        if seconds <= MAX_STEP_SECONDS:
            break
        log.info("%s: width %d takes about %.0f s per step here; halving it", cfg.name, width, seconds)
        width = max(8, width // 2)
    return width


@pytest.mark.timeout(240)
@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_trains_on_a_movie_of_its_format(
    path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = yaml.safe_load(path.read_text())
    written = load_config(path)
    overrides = [*_rebase(raw, tmp_path), "optim.max_steps=2", f"data.crop_size={SIZE}"]
    overrides += _machine_overrides(written)
    cfg = load_config(path, overrides)
    device = "gpu" if cfg.optim.accelerator is not Accelerator.cpu and torch.cuda.is_available() else "cpu"
    width = _width_for_here(cfg, device)
    if width != cfg.network.width:
        cfg = load_config(path, [*overrides, f"network.width={width}"])

    noisy, clean = simulate_movie(SimulationConfig(height=SIZE, width=SIZE, frames=FRAMES, seed=5, radius_max=12))
    folder_suffix = cfg.data.gain.suffix if cfg.data.gain is not None else ""
    _write_movie(cfg.data.train, noisy, folder_suffix)
    if cfg.data.val is not None:
        _write_movie(cfg.data.val, noisy, folder_suffix)
    if cfg.data.clean is not None:
        _write_movie(cfg.data.clean, clean, folder_suffix)
    if cfg.data.gain is not None:
        _write_file(cfg.data.gain, np.full((1, SIZE, SIZE), 1.0, np.float32))

    with caplog.at_level(logging.INFO, logger="emlive.train"):
        result = train(cfg)

    assert f"estimate for {cfg.name} on {device}" in caplog.text  # logged before the run

    assert result.card.training.steps == 2
    assert result.model.is_file()
    kept = {
        "num_workers": cfg.optim.num_workers == written.optim.num_workers,
        "batch_size": cfg.optim.batch_size == written.optim.batch_size,
        "network": cfg.network.model_copy(update={"width": written.network.width}) == written.network,
        "patches": cfg.data.patches.enabled == written.data.patches.enabled,
    }
    assert all(kept.values()), kept
    with open_movie(result.card.training.data[0]) as movie:  # the data it trained on is the format written
        assert movie.shape[1:] == (SIZE, SIZE)
    if cfg.data.gain is not None:  # a gain reference inside the training folder would be trained on as a movie
        assert not any(Path(p).name.startswith(cfg.data.gain.stem) for p in result.card.training.data)


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_config_header_says_what_machine_it_is_for(path: Path) -> None:
    header = "\n".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    machine = header[header.index("# Machine:") :] if "# Machine:" in header else ""
    assert machine, f"{path.name}: the header needs a '# Machine:' line: GPU or CPU, memory needed, time per step"
    assert "GPU" in machine and "CPU" in machine and " GB " in machine, machine
