"""The estimate before a run: memory from the real network's saved activations, time per step, and the warning that
names a config that fits when a run will not fit the machine."""

from __future__ import annotations

import logging

import pytest

from emlive.train.config import load_config, shipped_configs
from emlive.train.estimate import Machine, estimate, estimate_config, planned_steps, run_shape

GiB = 2**30
TRAIN_FRAMES = 200  # a movie of 200 frames

# Seconds per pixel of a forward+backward pass by network width, as timed on a 2-core CPU (one thread, 64 x 64
# probe): fixed here so that the checks do not depend on the load of the machine running them.
RATE_BY_WIDTH = {8: 6e-6, 16: 15e-6, 32: 40e-6, 64: 125e-6}
STEP_RATES = {p.stem: RATE_BY_WIDTH[load_config(p).network.width] for p in shipped_configs()}
SMALL_CPU = Machine("cpu", 8_000_000_000)


@pytest.mark.timeout(120)
def test_au_liquid_cell_on_a_small_cpu_warns_and_names_the_configs_that_fit(caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config("au-liquid-cell-3x3")
    with caplog.at_level(logging.INFO, logger="emlive.train.estimate"):
        est = estimate_config(cfg, "cpu", TRAIN_FRAMES, machine=SMALL_CPU, step_rates=STEP_RATES)
    assert est.peak_bytes > SMALL_CPU.memory_bytes  # width 64, 16 crops of 256 x 256: over 10 GB of activations
    assert est.seconds_per_step > 60  # the issue measured over a minute per step on a CPU
    memory = next(w for w in est.warnings if "this machine has 8.0 GB of RAM available" in w)
    assert memory.startswith("au-liquid-cell-3x3 on this cpu: needs about")
    for text in est.warnings:  # the fix is named: a config that fits, on this same data and machine
        assert "--config synthetic-live or --config synthetic-small" in text
        assert "cryoet" not in text and "insitu-stem" not in text  # GPU-only / too large here
    assert any("no optim.max_minutes" in w for w in est.warnings)  # 12500 steps of a minute: days
    assert "estimate for au-liquid-cell-3x3 on cpu" in caplog.text and "WARNING" in caplog.text


@pytest.mark.timeout(60)
def test_synthetic_small_fits_the_same_small_cpu() -> None:
    est = estimate_config(load_config("synthetic-small"), "cpu", TRAIN_FRAMES, machine=SMALL_CPU, step_rates=STEP_RATES)
    assert est.warnings == []
    assert est.peak_bytes < 2 * GiB
    assert est.budget_steps is not None and est.budget_steps >= 100  # 14 minutes hold hundreds of steps


@pytest.mark.timeout(60)
def test_too_few_steps_in_the_time_budget_warn() -> None:
    cfg = load_config("synthetic-small", ["optim.max_minutes=0.1"])
    est = estimate_config(cfg, "cpu", TRAIN_FRAMES, machine=SMALL_CPU, step_rates=STEP_RATES)
    assert len(est.warnings) == 1 and "fit in optim.max_minutes" in est.warnings[0]


@pytest.mark.timeout(60)
def test_memory_scales_with_batch_and_crop_area() -> None:
    cfg = load_config("synthetic-live")
    small = estimate(run_shape(cfg, "cpu", TRAIN_FRAMES), "cpu", 1e-6)
    big_cfg = load_config("synthetic-live", ["data.crop_size=256", "optim.batch_size=16"])
    big = estimate(run_shape(big_cfg, "cpu", TRAIN_FRAMES), "cpu", 1e-6)
    assert big.activation_bytes == pytest.approx(8 * small.activation_bytes, rel=1e-3)  # 2 x batch, 4 x area
    assert big.seconds_per_step == pytest.approx(8 * small.seconds_per_step)
    assert 500 < small.activation_bytes_per_pixel < 5000  # width 8: a few kB per pixel, measured


def test_planned_steps() -> None:
    assert planned_steps(epochs=10, max_steps=-1, crops_per_epoch=100, batch=8, devices=1) == 120
    assert planned_steps(epochs=10, max_steps=7, crops_per_epoch=100, batch=8, devices=1) == 7
    assert planned_steps(epochs=2, max_steps=-1, crops_per_epoch=100, batch=8, devices=2) == 12
