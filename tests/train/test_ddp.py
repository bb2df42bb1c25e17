"""Multi-process training (DDP, gloo) on 2 CPU processes through the real command line.

Run 1: ``emlive train ... optim.accelerator=cpu optim.devices=2`` from the installed console script; Lightning
re-runs that command line for rank 1 (this is also the test of ``emlive train``'s entry point). Run 2 resumes its
last checkpoint with ONE process, in this process (``train()``, what the command calls; a second process would
only import torch and Lightning again), and counts the epochs on.
"""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from emlive.core.errors import ConfigError
from emlive.core.modelcard import load_checkpoint
from emlive.core.simulate import SimulationConfig, write_simulation
from emlive.train import api
from emlive.train.api import launch_rank, train
from emlive.train.config import load_config
from emlive.train.module import WORLD_SIZE_KEY

from .conftest import TINY

TINY_RUN = [*TINY, "optim.accelerator=cpu", "output.log_crops=true", "output.log_every_n_steps=1",
            "output.log_images=false"]  # fmt: skip
LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID")


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"  # one thread per process: 2 processes on 2 cores
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _crops(path: Path) -> list[tuple[int, ...]]:
    """The crops a process recorded (output.log_crops): (epoch, index, source, frame, y, x) per line."""
    columns = ("epoch", "index", "source", "frame", "y", "x")
    with path.open() as f:
        return [tuple(int(row[k]) for k in columns) for row in csv.DictReader(f)]


def _scalars(run_dir: Path, tag: str) -> list[float]:
    values = []
    for events in sorted((run_dir / "tensorboard").rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            values += [e.value for e in acc.Scalars(tag)]
    return values


@pytest.fixture(scope="module")
def movie(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim")
    return Path(write_simulation(SimulationConfig(height=48, width=56, frames=12, dose=5.0, seed=3), out).noisy)


@pytest.mark.timeout(240)
def test_two_cpu_processes_train_once_and_resume_with_one(
    movie: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emlive = Path(sys.executable).with_name("emlive")
    assert emlive.is_file(), f"{emlive}: the console script is missing; install the project (make install)"
    common = ["--config", "synthetic-small", f"data.train={movie}", "data.clean=null", f"output.root={tmp_path}"]
    first = _run([str(emlive), "train", *common, *TINY_RUN, "optim.devices=2", "optim.epochs=2"])
    run_dir = tmp_path / "synthetic" / "synthetic-small"

    # both processes ran, logged by rank 0 only, and drew different crops of the same epochs
    assert "global batch = batch_size x devices x nodes = 4 x 2 x 1 = 8" in first.stderr
    assert "distributed_backend=gloo" in first.stderr and "Starting with 2 processes" in first.stderr
    assert first.stdout.count("best checkpoint:") == 1
    rank0, rank1 = _crops(run_dir / "crops" / "rank0.csv"), _crops(run_dir / "crops" / "rank1.csv")
    assert len(rank0) == len(rank1) == 2 * 80  # 160 crops per epoch (10 frames x 16), half each, 2 epochs
    assert {c[:2] for c in rank0}.isdisjoint({c[:2] for c in rank1})  # disjoint (epoch, index) shares
    assert {c[2:] for c in rank0} != {c[2:] for c in rank1}

    # the loss went down: per-epoch training loss (averaged over both processes) and validation loss
    train_loss, val_loss = _scalars(run_dir, "train/loss_epoch"), _scalars(run_dir, "val/loss")
    assert len(train_loss) == 2 and train_loss[1] < train_loss[0]
    assert len(val_loss) == 2 and val_loss[1] < val_loss[0]

    # one set of results, written by rank 0: no "-v1" duplicates, one card, steps counted for both processes
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert len(ckpts) == 3 and "last.ckpt" in ckpts and not any("-v" in name for name in ckpts), ckpts
    assert sorted(p.name for p in run_dir.glob("model*")) == ["model.pt", "model_card.json"]
    card = load_checkpoint(run_dir / "model.pt")[1]
    assert (card.training.epochs, card.training.steps, card.training.samples) == (2, 40, 320)
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)[WORLD_SIZE_KEY] == 2

    # resume the 2-process checkpoint with one process: epochs count on, the change is announced
    resume = [*common[2:], *TINY_RUN, "optim.devices=1", "optim.epochs=3", f"resume={last}"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread, as each process above (OMP_NUM_THREADS=1): tiny steps, 2 shared cores
    try:
        with caplog.at_level(logging.WARNING, logger="emlive.train"):
            assert train(load_config("synthetic-small", resume)).global_rank == 0
    finally:
        torch.set_num_threads(threads)
    assert "resuming a checkpoint written by 2 processes with 1" in caplog.text
    card = load_checkpoint(run_dir / "model.pt")[1]
    assert (card.training.epochs, card.training.steps) == (3, 40 + 40)  # one process: 40 steps of 4 in epoch 3
    assert len(_crops(run_dir / "crops" / "rank0.csv")) == 2 * 80 + 160


@pytest.mark.timeout(60)
def test_more_cpu_processes_than_cores_is_refused_before_reading_data(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    cfg = load_config(
        "synthetic-small",
        [f"data.train={tmp_path / 'absent.tif'}", "optim.accelerator=cpu", f"optim.devices={cores + 1}"],
    )
    with pytest.raises(ConfigError, match=rf"optim.devices={cores + 1} CPU processes .* {cores} cores"):
        train(cfg)


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),
        ({"RANK": "5", "LOCAL_RANK": "1"}, 5),  # torchrun
        ({"LOCAL_RANK": "1", "NODE_RANK": "2"}, 9),  # Lightning's own child on node 2 of 4-process nodes
        ({"SLURM_PROCID": "3"}, 3),  # srun
    ],
)
def test_launch_rank_reads_the_launchers_variables(
    env: dict[str, str], rank: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in LAUNCH_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launch_rank(devices=4) == rank


@pytest.mark.timeout(60)
def test_other_ranks_wait_for_rank_zeros_patches(movie: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    patches = ["data.patches.enabled=true", "data.patches.size=64", "data.patches.stride=64", "data.patches.workers=1"]
    cfg = load_config("synthetic-small", [f"data.train={movie}", "data.crop_size=32", *patches])
    monkeypatch.setattr(api, "PATCH_WAIT_SECONDS", 0.0)
    with pytest.raises(ConfigError, match="rank 1: rank 0 has not finished cutting the patches"):
        api._patches_of_rank_zero(cfg, 1, tmp_path)
    assert not (tmp_path / "patches").exists()  # rank 1 never cuts
    folder = api._patches_of_rank_zero(cfg, 0, tmp_path)
    assert api._patches_of_rank_zero(cfg, 1, tmp_path) == folder and any(folder.glob("*.mrc"))
