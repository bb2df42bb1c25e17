"""Inference speed of every available backend, against PyTorch eager on the same weights, in the same run.

For each frame size (square) and each backend the benchmark times :meth:`Denoiser.denoise_window` end to end
(validation, per-frame z-scoring, tiling, inference, mapping back) on a 5-frame uint16 window of Poisson counts,
and reports ms/frame, frames/s, megapixels/s and effective GFLOP/s (2 FLOP per multiply-add of
:func:`~emlive.core.network.macs_per_pixel`, per *frame* pixel: tile overlap and algebraic folding are not
counted, so a backend that does less work shows a higher effective rate).

The reference is the PyTorch eager forward of the *original* ``BlindSpotNet`` (ring masks, no folding) with the
same weights, the same thread count and the same tiling, run through the same runtime wrapper (so its
normalisation costs the same); every backend's ``speedup`` is the reference's median time over its median time on
the same device type (CPU backends against the CPU reference, GPU backends against a CUDA reference).
Repetitions are interleaved (reference, backend 1, backend 2, reference, ...) and the median is reported, so a
second process on the machine slows all of them alike. Runtimes with a warm-up effect (ONNX Runtime sessions,
TensorRT) get one untimed call per size first; the PyTorch runners too at 512 px and below (their first call at
a new shape costs about half a second, noise at larger sizes). To keep the default run to a few minutes on two
cores, the ``torch_*`` backends (not the eager reference) are skipped above 1024 px unless ``--backends`` names
them, and repetitions shrink with the frame size (``repeats_for``).
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.networks import AnyNetwork, network_macs_per_pixel
from emlive.export.backends import physical_cores
from emlive.export.runtime import BackendName, Denoiser, available_backends
from emlive.export.tiling import plan_tiles

log = logging.getLogger(__name__)

DEFAULT_SIZES_CPU = (512, 1024, 2048)
DEFAULT_SIZES_GPU = (512, 1024, 2048, 4096)
REFERENCE = "torch eager (reference)"
WARM_UP_TORCH_UP_TO = 512  # PyTorch's first call at a new shape costs ~0.5 s; beyond this size it is noise
TORCH_BACKEND_UP_TO = 1024  # by default the torch_* backends (not the reference) stop here: ~1 min/frame beyond


@dataclass
class BenchRow:
    """One backend at one frame size."""

    backend: str
    device: str
    size: int
    repeats: int
    tiles: int
    ms_per_frame: float
    frames_per_s: float
    megapixels_per_s: float
    gflops: float
    speedup_vs_eager: float | None
    times_ms: list[float] = field(default_factory=list)


@dataclass
class BenchReport:
    model: str
    config: dict[str, Any]
    macs_per_pixel: float
    threads: int
    machine: str
    rows: list[BenchRow]
    seconds: float

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "rows": [asdict(r) for r in self.rows]}, indent=2)


def parse_sizes(text: str) -> list[int]:
    """``"512,1024"`` -> [512, 1024]; ConfigError naming the bad entry."""
    sizes = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if not part.isdigit() or int(part) < 8:
            raise ConfigError(f"--sizes entry {part!r}: sizes are integers of at least 8 px, e.g. --sizes 512,1024")
        sizes.append(int(part))
    if not sizes:
        raise ConfigError(f"--sizes {text!r}: give at least one frame size, e.g. --sizes 512")
    return sizes


def repeats_for(size: int, repeats: int) -> int:
    """Fewer repetitions for large frames: ``repeats`` at 512 px and below, scaled by 512/size, at least 1."""
    return max(1, round(repeats * min(1.0, 512 / size)))


def synthetic_window(size: int, frames: int, seed: int = 0) -> np.ndarray:
    """A (frames, size, size) uint16 window: a smooth image with Poisson noise, about 20 counts per pixel."""
    rng = np.random.default_rng(seed)
    small = rng.random((max(2, size // 16), max(2, size // 16)))
    smooth = np.kron(small, np.ones((16, 16)))[:size, :size]
    if smooth.shape != (size, size):
        smooth = np.resize(smooth, (size, size))
    return np.stack([rng.poisson(20.0 * (0.5 + smooth)) for _ in range(frames)]).astype(np.uint16)


@dataclass
class _Runner:
    label: str
    denoiser: Denoiser
    warm_up: bool
    reference_of: str | None = None  # "cpu"/"cuda" for a reference runner
    max_size: int | None = None  # skipped at larger sizes

    @property
    def key(self) -> str:
        return self.label + (f" [{self.reference_of}]" if self.reference_of else "")

    @property
    def device_type(self) -> str:
        return "cuda" if self.denoiser.device.startswith("cuda") else "cpu"


def _load_model(model: Path | None) -> tuple[AnyNetwork | None, ModelCard, str, str]:
    """(network or None, card, label, kind)."""
    if model is None:
        import torch

        torch.manual_seed(0)
        net = BlindSpotNet(NetworkConfig()).eval()
        return net, ModelCard(network=net.config), "random-weight default model (width 64, 5 frames)", "checkpoint"
    suffix = model.suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth"):
        from emlive.core.modelcard import load_checkpoint

        loaded, card = load_checkpoint(model)
        return loaded, card, str(model), "checkpoint"
    probe = Denoiser.load(model, "auto")
    card = probe.card
    probe.close()
    return None, card, str(model), "engine" if suffix in (".engine", ".trt") else "onnx"


def run_runtime_benchmark(
    model: Path | None = None,
    sizes: list[int] | None = None,
    repeats: int = 3,
    backends: list[str] | None = None,
    threads: int | None = None,
    json_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time every requested (default: every available) backend at every size; see the module docstring."""
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: must be at least 1")
    t_start = time.perf_counter()
    say = progress or log.info
    threads = threads or physical_cores()  # the same count for every backend and the eager reference
    net, card, label, kind = _load_model(model)
    chosen = [BackendName(b) if not isinstance(b, BackendName) else b for b in backends] if backends else None
    if chosen and BackendName.auto in chosen:
        names_list = ", ".join(b.value for b in BackendName if b is not BackendName.auto)
        raise ConfigError(f"--backends auto: name the backends to compare ({names_list}), or leave the option out")
    names = chosen or available_backends(kind)
    if sizes is None:
        sizes = list(
            DEFAULT_SIZES_GPU if any("cuda" in b.value or "tensorrt" in b.value for b in names) else DEFAULT_SIZES_CPU
        )
    runners: list[_Runner] = []
    for name in names:
        if net is not None:
            den = Denoiser.from_network(net, card, name, threads=threads)
        else:
            assert model is not None
            den = Denoiser.load(model, name, threads=threads)
        runners.append(
            _Runner(
                name.value,
                den,
                warm_up=not name.value.startswith("torch"),
                max_size=TORCH_BACKEND_UP_TO if name.value.startswith("torch") and chosen is None else None,
            )
        )
        say(f"backend {name.value}: {den.device}")
    if net is not None:
        device_types = sorted({r.device_type for r in runners})
        for device_type in device_types:
            backend = BackendName.torch_cuda if device_type == "cuda" else BackendName.torch_cpu
            ref = Denoiser.from_network(net, card, backend, threads=threads, fold=False)
            runners.insert(0, _Runner(REFERENCE, ref, warm_up=False, reference_of=device_type))
            say(f"reference: PyTorch eager {type(net).__name__} on {ref.device}")
    else:
        say("no PyTorch weights (ONNX/engine model): speed-ups against eager are not measured")
    macs = network_macs_per_pixel(card.network)
    rows: list[BenchRow] = []
    for size in sizes:
        window = synthetic_window(size, card.frames)
        reps = repeats_for(size, repeats)
        active = [r for r in runners if r.max_size is None or size <= r.max_size]
        for r in runners:
            if r not in active:
                say(f"{size}x{size}: {r.key} skipped above {r.max_size} px by default (name it in --backends)")
        tiles = {r.key: len(plan_tiles(size, size, r.denoiser.tile, card.network)) for r in active}
        for r in active:
            if r.warm_up or size <= WARM_UP_TORCH_UP_TO:
                t0 = time.perf_counter()
                r.denoiser.denoise_window(window)
                say(f"{size}x{size}: {r.label} warm-up {1e3 * (time.perf_counter() - t0):.0f} ms")
        times: dict[str, list[float]] = {r.key: [] for r in active}
        for rep in range(reps):
            for r in active:
                t0 = time.perf_counter()
                r.denoiser.denoise_window(window)
                seconds = time.perf_counter() - t0
                times[r.key].append(seconds)
                say(f"{size}x{size}: {r.key} {rep + 1}/{reps}: {1e3 * seconds:.0f} ms")
        medians = {k: statistics.median(v) for k, v in times.items()}
        for r in active:
            t = medians[r.key]
            ref_key = f"{REFERENCE} [{r.device_type}]"
            speedup = medians[ref_key] / t if ref_key in medians else None
            pixels = size * size
            rows.append(
                BenchRow(
                    backend=r.key,
                    device=r.denoiser.device,
                    size=size,
                    repeats=reps,
                    tiles=tiles[r.key],
                    ms_per_frame=1e3 * t,
                    frames_per_s=1.0 / t,
                    megapixels_per_s=pixels / t / 1e6,
                    gflops=2.0 * macs * pixels / t / 1e9,
                    speedup_vs_eager=speedup,
                    times_ms=[1e3 * x for x in times[r.key]],
                )
            )
    for r in runners:
        r.denoiser.close()
    report = BenchReport(
        model=label,
        config=card.network.model_dump(mode="json"),
        macs_per_pixel=macs,
        threads=threads,
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        rows=rows,
        seconds=time.perf_counter() - t_start,
    )
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(report.to_json())
        say(f"wrote {json_path}")
    return report


def format_table(report: BenchReport) -> list[str]:
    """The report as aligned text lines (the CLI echoes them)."""
    head = (
        f"{'backend':<30} {'size':>9} {'tiles':>5} {'ms/frame':>10} {'frames/s':>9} {'MP/s':>7} "
        f"{'GFLOP/s':>8} {'vs eager':>8}  device"
    )
    lines = [
        f"model: {report.model}; {report.macs_per_pixel / 1e6:.3f} M multiply-adds per pixel; "
        f"{report.seconds:.0f} s in all",
        head,
        "-" * len(head),
    ]
    for r in report.rows:
        ratio = f"{r.speedup_vs_eager:.2f}x" if r.speedup_vs_eager is not None else "n/a"
        lines.append(
            f"{r.backend:<30} {f'{r.size}x{r.size}':>9} {r.tiles:>5} {r.ms_per_frame:>10.1f} "
            f"{r.frames_per_s:>9.2f} {r.megapixels_per_s:>7.2f} {r.gflops:>8.1f} {ratio:>8}  {r.device}"
        )
    return lines
