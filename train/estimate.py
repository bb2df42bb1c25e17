"""Before a run: the memory and time a training config will take on this machine, and whether that fits.

Memory (peak resident memory on a CPU, device memory on a GPU):

* the activations autograd keeps for the backward pass, measured: one forward pass of the real network (its
  width, scales, blocks, frames; in the run's precision) on a probe tile of ``PROBE_SIZE`` px, counting the bytes of
  the tensors it saves (weights excluded). They scale with pixels, so a batch keeps that per-pixel figure times
  ``batch_size x crop_size^2``. The step's peak is ``PEAK_OVER_SAVED`` times that: the gradients alive during the
  backward pass;
* weights, gradients and the two Adam moments (four copies of the parameters, fp32);
* the dataset: the batches the data loader holds in flight (2 per worker, or 1 without workers), each worker's own
  memory, and, on a CPU, what the process already holds (Python, torch). The movie files are memory-mapped or
  decoded a frame at a time: their bytes are reported as page cache (reclaimable), not counted against RAM.

Time per step: timed forward and backward passes of the real network on the probe tile (the faster of two, after a
warm-up pass), scaled by the pixels of a batch. A one-tile batch carries more fixed overhead per pixel than a full
one (about 2x on a 2-core CPU for width 64), so the estimate errs slow.

``check_fit`` turns an estimate into warnings: the run needs more memory than the machine has, too few steps fit in
``optim.max_minutes``, or (without a time limit) the planned steps take longer than ``UNBUDGETED_HOURS``. Each
warning names the shipped configs that do fit this machine.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.train.config import Accelerator, TrainConfig, load_config, resolve_precision, shipped_configs

log = logging.getLogger(__name__)

PROBE_SIZE = 64  # px; a multiple of every pooling factor (2^(scales-1) <= 16)
PROBE_PASSES = 3  # timed forward+backward passes of the probe; the first one warms up
# Peak memory of a training step over its saved activations (the process's own memory apart), measured for
# `emlive train` of au-liquid-cell-3x3 on a CPU, fp32: 1.38 with 16 crops of 128 px, 1.19 with 8 crops of 256 px
# (gradients alive early in the backward pass). 1.3 errs high for large runs, where it matters.
PEAK_OVER_SAVED = 1.3
PARAM_COPIES = 4  # weights, gradients, Adam's two moments
PREFETCH = 2  # batches each data-loader worker prepares ahead (torch's default prefetch_factor)
WORKER_BYTES = 150 * 2**20  # a forked worker's own memory (its Python heap, decoded frames), an allowance
MIN_BUDGET_STEPS = 100  # fewer steps than this in optim.max_minutes: the model barely trains
UNBUDGETED_HOURS = 24.0  # without optim.max_minutes, a planned run longer than this is worth a warning
GB = 1e9


@dataclass(frozen=True)
class Machine:
    """What a run can use: ``memory_bytes`` of RAM (CPU) or of device memory (GPU), on ``device``."""

    device: str
    memory_bytes: int


@dataclass
class RunEstimate:
    """Memory and time of one training run, estimated before it starts."""

    config: str
    device: str
    activation_bytes_per_pixel: float
    activation_bytes: int  # saved for the backward pass of one batch
    parameter_bytes: int  # weights, gradients and optimiser state
    loader_bytes: int  # batches in flight and worker processes
    process_bytes: int  # what this process holds already (CPU only)
    peak_bytes: int
    movie_bytes: int  # the movie files: page cache, not counted in peak_bytes
    seconds_per_step: float
    planned_steps: int
    budget_steps: int | None  # steps that fit in optim.max_minutes; None without a time limit
    warnings: list[str] = field(default_factory=list)

    @property
    def planned_hours(self) -> float:
        return self.planned_steps * self.seconds_per_step / 3600

    def describe(self) -> str:
        where = "RAM" if self.device == "cpu" else "GPU memory"
        budget = "" if self.budget_steps is None else f"; {self.budget_steps} steps fit in optim.max_minutes"
        return (
            f"estimate for {self.config} on {self.device}: peak {self.peak_bytes / GB:.1f} GB {where} "
            f"(activations {self.activation_bytes / GB:.2f} GB = {self.activation_bytes_per_pixel / 1e3:.1f} kB/px, "
            f"x{PEAK_OVER_SAVED} during backward; parameters and optimiser {self.parameter_bytes / GB:.2f} GB; "
            f"data loader {self.loader_bytes / GB:.2f} GB; process {self.process_bytes / GB:.2f} GB), plus "
            f"{self.movie_bytes / GB:.2f} GB of movie files in the page cache; {self.seconds_per_step:.2f} s per "
            f"step, {self.planned_steps} planned steps = {self.planned_hours:.1f} h{budget}"
        )


def process_rss_bytes() -> int:
    """This process's resident memory now (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Memory left under this container's cgroup (v2) limit, or None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else int(limit) - used


def this_machine(device: str) -> Machine:
    """The memory a run may use here: the GPU's memory, or the RAM available now plus what this process holds."""
    if device == "gpu":
        return Machine("gpu", int(torch.cuda.get_device_properties(0).total_memory))
    rooms = [r for r in (_meminfo_available(), _cgroup_room()) if r is not None]
    if not rooms:
        rooms = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
    return Machine("cpu", min(rooms) + process_rss_bytes())


def _autocast(device: str, precision: str) -> torch.autocast:
    kind = "cuda" if device == "gpu" else "cpu"
    if precision.startswith("16"):
        return torch.autocast(kind, dtype=torch.float16)
    if precision.startswith("bf16"):
        return torch.autocast(kind, dtype=torch.bfloat16)
    return torch.autocast(kind, enabled=False)


def _probe_input(network: NetworkConfig, device: str) -> tuple[BlindSpotNet, torch.Tensor]:
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    return BlindSpotNet(network).to(dev), torch.randn(1, network.frames, PROBE_SIZE, PROBE_SIZE, device=dev)


@functools.lru_cache(maxsize=16)
def saved_bytes_per_pixel(network: NetworkConfig, device: str, precision: str) -> float:
    """Bytes of activations the real network keeps for its backward pass, per pixel of input (weights excluded)."""
    net, x = _probe_input(network, device)
    weights = {p.untyped_storage().data_ptr() for p in net.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    with _autocast(device, precision), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    return sum(saved.values()) / PROBE_SIZE**2


@functools.lru_cache(maxsize=16)
def seconds_per_pixel(network: NetworkConfig, device: str, precision: str) -> float:
    """Seconds of one forward and backward pass per pixel, timed on this machine: the faster of two passes after
    a warm-up pass (kernel selection and the allocator make the first passes slow)."""
    net, x = _probe_input(network, device)
    times = []
    for _ in range(PROBE_PASSES):
        start = time.perf_counter()
        with _autocast(device, precision):
            loss = net(x).float().square().mean()
        loss.backward()
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:]) / PROBE_SIZE**2


def planned_steps(epochs: int, max_steps: int, crops_per_epoch: int, batch: int, devices: int) -> int:
    """Training steps the run is set up for: epochs x full batches per epoch, capped by max_steps."""
    per_epoch = max(1, crops_per_epoch // (batch * devices))
    total = epochs * per_epoch
    return min(total, max_steps) if max_steps > 0 else total


@dataclass(frozen=True)
class RunShape:
    """What a run does, independent of the machine: taken from a config and its data."""

    name: str
    network: NetworkConfig
    crop_size: int
    batch_size: int
    num_workers: int
    steps: int
    max_minutes: float | None
    precision: str
    movie_bytes: int = 0


def run_shape(cfg: TrainConfig, device: str, train_frames: int, movie_bytes: int = 0) -> RunShape:
    """The shape of ``cfg`` run on ``device`` over ``train_frames`` training frames."""
    optim = cfg.optim
    crops = train_frames * optim.recursive_factor
    return RunShape(
        name=cfg.name,
        network=cfg.network,
        crop_size=cfg.data.crop_size,
        batch_size=optim.batch_size,
        num_workers=optim.num_workers,
        steps=planned_steps(optim.epochs, optim.max_steps, crops, optim.batch_size, optim.devices * optim.num_nodes),
        max_minutes=optim.max_minutes,
        precision=resolve_precision(optim.precision, device),
        movie_bytes=movie_bytes,
    )


def _loader_bytes(shape: RunShape, batch_bytes: int) -> int:
    """Host memory of the data loader: batches in flight and the worker processes themselves."""
    if shape.num_workers == 0:
        return batch_bytes
    return shape.num_workers * (PREFETCH * batch_bytes + WORKER_BYTES)


def estimate(shape: RunShape, device: str, step_rate: float | None = None) -> RunEstimate:
    """The memory and time estimate of ``shape`` on ``device``; ``step_rate`` (s/px) replaces the timed probe.

    On a GPU, memory is the device's: activations, parameters and the batch on it.
    """
    per_pixel = saved_bytes_per_pixel(shape.network, device, shape.precision)
    if step_rate is None:
        step_rate = seconds_per_pixel(shape.network, device, shape.precision)
    pixels = shape.batch_size * shape.crop_size**2
    activations = int(per_pixel * pixels)
    params = sum(p.numel() for p in BlindSpotNet(shape.network).parameters()) * 4 * PARAM_COPIES
    batch_bytes = pixels * (shape.network.frames + 1) * 4  # input window and target, float32
    on_cpu = device == "cpu"
    loader = _loader_bytes(shape, batch_bytes) if on_cpu else batch_bytes
    process = process_rss_bytes() if on_cpu else 0
    step = step_rate * pixels
    budget = None if shape.max_minutes is None else int(shape.max_minutes * 60 / max(step, 1e-9))
    return RunEstimate(
        config=shape.name,
        device=device,
        activation_bytes_per_pixel=per_pixel,
        activation_bytes=activations,
        parameter_bytes=params,
        loader_bytes=loader,
        process_bytes=process,
        peak_bytes=int(PEAK_OVER_SAVED * activations) + params + loader + process,
        movie_bytes=shape.movie_bytes,
        seconds_per_step=step,
        planned_steps=shape.steps,
        budget_steps=budget,
    )


def problems(est: RunEstimate, machine: Machine) -> list[str]:
    """What will not fit: memory, or the time budget. Empty when the run fits."""
    found = []
    if est.peak_bytes > machine.memory_bytes:
        where = "RAM available" if machine.device == "cpu" else "GPU memory"
        found.append(
            f"needs about {est.peak_bytes / GB:.1f} GB but this machine has {machine.memory_bytes / GB:.1f} GB of "
            f"{where}: it will swap or be killed"
        )
    if est.budget_steps is not None and est.budget_steps < min(est.planned_steps, MIN_BUDGET_STEPS):
        found.append(
            f"at {est.seconds_per_step:.1f} s per step only {est.budget_steps} of its {est.planned_steps} steps fit "
            "in optim.max_minutes: the model will barely train"
        )
    if est.budget_steps is None and est.planned_hours > UNBUDGETED_HOURS:
        found.append(
            f"at {est.seconds_per_step:.1f} s per step its {est.planned_steps} steps take about "
            f"{est.planned_hours:.0f} h (no optim.max_minutes limits it)"
        )
    return found


def check_fit(
    est: RunEstimate,
    machine: Machine,
    alternatives: list[RunShape],
    step_rates: dict[str, float] | None = None,
) -> list[str]:
    """Warnings (also logged) when ``est`` does not fit ``machine``, each naming the alternatives that do fit.

    ``step_rates`` (s/px by config name) replace the timed probe of those configs, for reproducible checks.
    """
    found = problems(est, machine)
    if not found:
        return []
    rates = step_rates or {}
    fitting = [
        alt.name
        for alt in alternatives
        if alt.name != est.config and not problems(estimate(alt, est.device, rates.get(alt.name)), machine)
    ]
    if fitting:
        instead = f"use --config {' or --config '.join(fitting)} on this machine"
    else:
        instead = "no shipped config fits this machine"
    hint = "; or lower optim.batch_size or data.crop_size (memory and time grow with batch x crop^2)"
    if est.device == "cpu":
        hint += ", or train on a GPU"
    instead = instead[0].upper() + instead[1:]
    warnings = [f"{est.config} on this {est.device}: {problem}. {instead}{hint}" for problem in found]
    for text in warnings:
        log.warning("%s", text)
    est.warnings = warnings
    return warnings


def shipped_alternatives(device: str, train_frames: int) -> list[RunShape]:
    """The shipped configs that can run on ``device`` (GPU-only ones are left out on a CPU), on the same data."""
    shapes = []
    for path in shipped_configs():
        cfg = load_config(path)
        if device == "cpu" and cfg.optim.accelerator is Accelerator.gpu:
            continue
        shapes.append(run_shape(cfg, device, train_frames))
    return shapes


def estimate_config(
    cfg: TrainConfig,
    device: str,
    train_frames: int,
    *,
    movie_bytes: int = 0,
    machine: Machine | None = None,
    step_rates: dict[str, float] | None = None,
) -> RunEstimate:
    """Estimate ``cfg`` on ``device`` (this machine unless ``machine`` is given), log it and warn when it does not fit.

    ``step_rates`` (s/px by config name) replace the timed probes; the warnings are in the result's ``warnings``.
    """
    est = estimate(run_shape(cfg, device, train_frames, movie_bytes), device, (step_rates or {}).get(cfg.name))
    log.info("%s", est.describe())
    check_fit(est, machine or this_machine(device), shipped_alternatives(device, train_frames), step_rates)
    return est
