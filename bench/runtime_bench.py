"""Inference speed of several models (default: the shipped teacher and CPU-live student) on every available backend,
against PyTorch eager on the same weights and against the first model, in the same run.

Every model (``-m [LABEL=]PATH``, :mod:`emlive.bench.model_specs`) runs on the same backends and sizes; the
repetitions are interleaved per backend (model A, model B, A, B, ...), so machine load hits all models alike, and
each row reports the model's multiply-adds per pixel and its speed-up over the first model (``speedup_vs_first``).

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

from emlive.bench.model_specs import ModelSpec, model_labels, parse_model_specs
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
    """One backend at one frame size, for one model."""

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
    model: str = ""
    macs_per_pixel: float = 0.0
    speedup_vs_first: float | None = None  # the first model's median time over this one's (same backend and size)


@dataclass
class BenchModel:
    """One benchmarked model."""

    label: str
    source: str
    kind: str
    config: dict[str, Any]
    macs_per_pixel: float


@dataclass
class BenchReport:
    model: str  # the first model (the fields of the single-model report)
    config: dict[str, Any]
    macs_per_pixel: float
    threads: int
    machine: str
    rows: list[BenchRow]
    seconds: float
    models: list[BenchModel] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


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
    model: str  # the model's label
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


@dataclass
class _Loaded:
    spec: ModelSpec
    net: AnyNetwork | None
    card: ModelCard
    source: str
    kind: str  # checkpoint, onnx or engine
    label: str = ""


def _load_model(spec: ModelSpec) -> _Loaded:
    """The network (None for ONNX/engine files) and card of a spec."""
    model = spec.path
    if model is None:
        import torch

        torch.manual_seed(0)
        net = BlindSpotNet(NetworkConfig()).eval()
        card = ModelCard(network=net.config, name="random-w64")
        return _Loaded(spec, net, card, "random-weight default model (width 64, 5 frames)", "checkpoint")
    suffix = model.suffix.lower()
    if suffix in (".ckpt", ".pt", ".pth"):
        from emlive.core.modelcard import load_checkpoint

        loaded, card = load_checkpoint(model)
        return _Loaded(spec, loaded, card, str(model), "checkpoint")
    probe = Denoiser.load(model, "auto")
    card = probe.card
    probe.close()
    return _Loaded(spec, None, card, str(model), "engine" if suffix in (".engine", ".trt") else "onnx")


def load_models(specs: list[ModelSpec]) -> list[_Loaded]:
    """Every spec loaded and labelled (its own label, else its card's name)."""
    models = [_load_model(spec) for spec in specs]
    for m, label in zip(models, model_labels(specs, [m.card.name for m in models]), strict=True):
        m.label = label
    return models


def _backends_for(models: list[_Loaded], chosen: list[BackendName] | None) -> list[BackendName]:
    """The requested backends, or every backend available here for all the models' file kinds."""
    if chosen:
        if BackendName.auto in chosen:
            names_list = ", ".join(b.value for b in BackendName if b is not BackendName.auto)
            raise ConfigError(f"--backends auto: name the backends to compare ({names_list}), or leave the option out")
        return chosen
    kinds = {m.kind for m in models}
    common = [b for b in available_backends(models[0].kind) if all(b in available_backends(k) for k in kinds)]
    if not common:
        raise ConfigError(
            f"the models ({', '.join(f'{m.label}: {m.kind}' for m in models)}) share no backend that runs here; "
            "benchmark checkpoints and exported models in separate runs, or name --backends"
        )
    return common


def _make_runners(
    models: list[_Loaded], names: list[BackendName], threads: int, limit_torch: bool, say: Callable[[str], None]
) -> list[_Runner]:
    """Runners in timing order: per backend (eager references first), one per model, so rounds interleave models."""
    runners: list[_Runner] = []
    for name in names:
        for m in models:
            if m.net is not None:
                den = Denoiser.from_network(m.net, m.card, name, threads=threads)
            else:
                assert m.spec.path is not None
                den = Denoiser.load(m.spec.path, name, threads=threads)
            torch_backend = name.value.startswith("torch")
            limit = TORCH_BACKEND_UP_TO if torch_backend and limit_torch else None
            runners.append(_Runner(m.label, name.value, den, warm_up=not torch_backend, max_size=limit))
            say(f"{m.label}: backend {name.value} on {den.device}")
    references: list[_Runner] = []
    for device_type in sorted({r.device_type for r in runners}):
        backend = BackendName.torch_cuda if device_type == "cuda" else BackendName.torch_cpu
        for m in models:
            if m.net is None:
                say(f"{m.label}: no PyTorch weights (ONNX/engine model): its speed-ups against eager are not measured")
                continue
            ref = Denoiser.from_network(m.net, m.card, backend, threads=threads, fold=False)
            references.append(_Runner(m.label, REFERENCE, ref, warm_up=False, reference_of=device_type))
            say(f"{m.label}: reference PyTorch eager {type(m.net).__name__} on {ref.device}")
    return references + runners


# Pause before each timed call: the previous runner's threads keep spin-waiting after its call (OpenMP's block time
# is 200 ms; ONNX Runtime's intra-op threads spin too) and would be charged to the next runner. Without it the
# CPU-live student measured 42-50 ms per 512 px frame right after another model and 31 ms when timed first.
SETTLE_S = 0.25


def _time_size(
    runners: list[_Runner], size: int, repeats: int, say: Callable[[str], None]
) -> dict[tuple[str, str], list[float]]:
    """Seconds per call of every runner active at ``size``, keyed (model, runner key), rounds interleaved."""
    active = [r for r in runners if r.max_size is None or size <= r.max_size]
    windows = {n: synthetic_window(size, n) for n in {r.denoiser.frames for r in active}}
    for r in runners:
        if r not in active:
            say(f"{size}x{size}: {r.model} {r.key} skipped above {r.max_size} px by default (name it in --backends)")
    for r in active:
        if r.warm_up or size <= WARM_UP_TORCH_UP_TO:
            t0 = time.perf_counter()
            r.denoiser.denoise_window(windows[r.denoiser.frames])
            say(f"{size}x{size}: {r.model} {r.label} warm-up {1e3 * (time.perf_counter() - t0):.0f} ms")
    times: dict[tuple[str, str], list[float]] = {(r.model, r.key): [] for r in active}
    for rep in range(repeats):
        for r in active:
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            r.denoiser.denoise_window(windows[r.denoiser.frames])
            seconds = time.perf_counter() - t0
            times[(r.model, r.key)].append(seconds)
            say(f"{size}x{size}: {r.model} {r.key} {rep + 1}/{repeats}: {1e3 * seconds:.0f} ms")
    return times


def _rows_for_size(
    runners: list[_Runner], models: list[_Loaded], size: int, repeats: int, times: dict[tuple[str, str], list[float]]
) -> list[BenchRow]:
    medians = {k: statistics.median(v) for k, v in times.items()}
    by_label = {m.label: m for m in models}
    first = models[0].label
    rows: list[BenchRow] = []
    for r in runners:
        if (r.model, r.key) not in medians:
            continue
        t = medians[(r.model, r.key)]
        ref = medians.get((r.model, f"{REFERENCE} [{r.device_type}]"))
        first_t = medians.get((first, r.key))
        card = by_label[r.model].card
        macs = network_macs_per_pixel(card.network)
        pixels = size * size
        rows.append(
            BenchRow(
                backend=r.key,
                device=r.denoiser.device,
                size=size,
                repeats=repeats,
                tiles=len(plan_tiles(size, size, r.denoiser.tile, card.network)),
                ms_per_frame=1e3 * t,
                frames_per_s=1.0 / t,
                megapixels_per_s=pixels / t / 1e6,
                gflops=2.0 * macs * pixels / t / 1e9,
                speedup_vs_eager=ref / t if ref is not None else None,
                times_ms=[1e3 * x for x in times[(r.model, r.key)]],
                model=r.model,
                macs_per_pixel=macs,
                speedup_vs_first=first_t / t if first_t is not None else None,
            )
        )
    return rows


def run_runtime_benchmark(
    models: list[ModelSpec] | None = None,
    sizes: list[int] | None = None,
    repeats: int = 3,
    backends: list[str] | None = None,
    threads: int | None = None,
    json_path: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time every model (default: the shipped teacher and student) on every requested (default: every available)
    backend at every size, interleaved; see the module docstring."""
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: must be at least 1")
    t_start = time.perf_counter()
    say = progress or log.info
    threads = threads or physical_cores()  # the same count for every backend, model and eager reference
    loaded = load_models(models if models is not None else parse_model_specs(None, ensembles=False))
    chosen = [BackendName(b) if not isinstance(b, BackendName) else b for b in backends] if backends else None
    names = _backends_for(loaded, chosen)
    if sizes is None:
        gpu = any("cuda" in b.value or "tensorrt" in b.value for b in names)
        sizes = list(DEFAULT_SIZES_GPU if gpu else DEFAULT_SIZES_CPU)
    runners = _make_runners(loaded, names, threads, chosen is None, say)
    rows: list[BenchRow] = []
    try:
        for size in sizes:
            reps = repeats_for(size, repeats)
            times = _time_size(runners, size, reps, say)
            rows += _rows_for_size(runners, loaded, size, reps, times)
    finally:
        for r in runners:
            r.denoiser.close()
    report = _report(loaded, threads, rows, time.perf_counter() - t_start)
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(report.to_json())
        say(f"wrote {json_path}")
    return report


def _report(loaded: list[_Loaded], threads: int, rows: list[BenchRow], seconds: float) -> BenchReport:
    infos = [
        BenchModel(
            m.label,
            m.source,
            m.card.kind,
            m.card.network.model_dump(mode="json"),
            network_macs_per_pixel(m.card.network),
        )
        for m in loaded
    ]
    return BenchReport(
        model=infos[0].source,
        config=infos[0].config,
        macs_per_pixel=infos[0].macs_per_pixel,
        threads=threads,
        machine=f"{platform.machine()} {platform.processor() or ''}".strip(),
        rows=rows,
        seconds=seconds,
        models=infos,
    )


def _ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "n/a"


def format_table(report: BenchReport) -> list[str]:
    """The report as aligned text lines (the CLI echoes them): one line per model, then one row per model, backend
    and size (the models of one backend and size next to each other)."""
    first = report.models[0].label if report.models else report.model
    width = max([len("model"), *(len(m.label) for m in report.models)])
    vs_first = f"vs {first}"[:14]
    head = (
        f"{'model':<{width}} {'backend':<30} {'size':>9} {'tiles':>5} {'kMAC/px':>8} {'ms/frame':>10} "
        f"{'frames/s':>9} {'MP/s':>7} {'GFLOP/s':>8} {'vs eager':>8} {vs_first:>14}  device"
    )
    lines = [
        f"model {m.label}: {m.source} ({m.kind}, {m.macs_per_pixel / 1e3:.1f} k multiply-adds per pixel)"
        for m in report.models
    ]
    lines += [f"{report.threads} threads; {report.seconds:.0f} s in all", head, "-" * len(head)]
    for r in report.rows:  # in timing order: per size and backend, the models side by side
        lines.append(
            f"{r.model:<{width}} {r.backend:<30} {f'{r.size}x{r.size}':>9} {r.tiles:>5} {r.macs_per_pixel / 1e3:>8.1f} "
            f"{r.ms_per_frame:>10.1f} {r.frames_per_s:>9.2f} {r.megapixels_per_s:>7.2f} {r.gflops:>8.1f} "
            f"{_ratio(r.speedup_vs_eager):>8} {_ratio(r.speedup_vs_first):>14}  {r.device}"
        )
    return lines
