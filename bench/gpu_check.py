"""The GPU check in one command (``make gpu-check``, ``python -m emlive.bench.gpu_check``): PyTorch on CUDA for
the teacher and the student, the live service on a CUDA backend, the GPU tests, one JSON of results.

What it runs, on ``cuda:0``, within a global time budget (``--budget-s``, default 400 s: under 8 minutes with
start-up); a case that no longer fits is skipped with the reason, never silently:

1. **Speed and parity** of every model (the default width-64 blind-spot teacher with random weights, the shipped
   ``models/synthetic-small.pt``, the student of :mod:`emlive.core.student` (random weights) when this tree has
   one, every shipped ``models/*student*.pt`` and any ``--model`` checkpoint) at 512, 2048 and 4096 px (whole
   frames, batch 1, input resident on the GPU), in these variants: ``fp32`` (eager, the reference; strict fp32,
   TF32 off), ``fp16`` (``.half()``), ``fp16_channels_last``, ``fp16_cuda_graph`` (the channels-last fp16 module
   captured once per size with static input/output buffers, then replayed) and ``fp16_compile``
   (``torch.compile`` of the channels-last fp16 module, run last, each compilation guarded by the budget).
   Blind-spot networks run in their folded inference form (:func:`emlive.export.folding.fold_network`), as the
   runtime's ``torch_cuda`` backend runs them. Per case: frames/s (timed loop, wall clock), p50/p99 latency (CUDA
   events per frame, warm-up excluded), parity against fp32 (max |out - ref| / (max(ref) - min(ref))) and peak
   GPU memory (allocated during the case, resident weights included).
2. **The service path** (students first, at most 3 models): ``DenoiseService`` in this process on the runtime's
   ``torch_cuda`` backend (what ``emlive serve --backend torch_cuda`` runs, fp32), fed by the detector simulator
   over loopback ZeroMQ at 2048 px, at 0.8x the model's own rate (``--service-fps`` to set it); p99 of the
   center-frame age (center frame received -> denoised frame published) against 2 frame periods + 40 ms.
3. **The GPU tests**: ``pytest -m gpu`` in a subprocess with a timeout; counts from its JUnit XML.
4. **The targets** of issue 13 at 2048 px (student >= 300 frames/s, width-64 teacher >= 60 frames/s): the best
   fp16 variant of each, ``met`` true/false, or null when it was not measured.

The JSON (``bench_out/gpu_check/gpu_check.json``) is rewritten after every phase, so a run stopped from outside
keeps what it measured; a table goes to the log at the end.

Without CUDA it writes ``{"cuda": false, "reason": ...}`` and exits 0, running nothing heavy. ``--cpu-smoke`` runs
the same code paths on the CPU at 32 px with 2 iterations (no CUDA graphs, no compilation, no GPU tests), so the
script's logic is tested on machines without a GPU (tests/bench/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from emlive.core.errors import ConfigError
from emlive.core.logs import setup_logging
from emlive.core.modelcard import ModelCard, load_checkpoint
from emlive.core.network import BlindSpotNet, NetworkConfig

log = logging.getLogger("emlive.bench.gpu_check")

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_TEACHER = ROOT / "models" / "synthetic-small.pt"
VARIANTS = ("fp32", "fp16", "fp16_channels_last", "fp16_cuda_graph", "fp16_compile")
EAGER_SHARE = 0.45  # of the budget, for the eager/graph cases; the service, the tests and compilation follow
SIZE_ORDER_FIRST = 2048  # the size of the targets runs first, so a tight budget still measures it
SERVICE_TARGET_EXTRA_MS = 40.0
TARGET_SIZE = 2048
STUDENT_FPS_TARGET = 300.0  # issue 13, PyTorch fp16 at 2048 x 2048: every student
TEACHER_FPS_TARGET = 60.0  # and the width-64 teacher
TEACHER_TARGET_MODEL = "teacher width 64 (random weights)"
Runner = Callable[[torch.Tensor], torch.Tensor]


class CheckConfig(BaseModel):
    """Settings of one check (the command-line options)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    out: Path = Field(Path("bench_out/gpu_check"), description="Folder for gpu_check.json.")
    sizes: tuple[int, ...] = Field((512, 2048, 4096), description="Square frame sizes in pixels.")
    budget_s: float = Field(400.0, gt=0, description="Global time budget; later cases are skipped with the reason.")
    iterations: int = Field(100, ge=1, description="Most timed frames per case.")
    min_iterations: int = Field(5, ge=1, description="Fewest timed frames per case.")
    warmup: int = Field(3, ge=1, description="Untimed calls before timing (cuDNN algorithm search).")
    case_seconds: float = Field(2.0, gt=0, description="Aim for this much timed work per case.")
    compile_mode: str = Field("default", description="torch.compile mode (e.g. max-autotune-no-cudagraphs).")
    compile_reserve_s: float = Field(60.0, ge=0, description="Budget a first compilation needs before it starts.")
    service: bool = True
    service_size: int = Field(2048, ge=16)
    service_seconds: float = Field(10.0, gt=0)
    service_fps: float | None = Field(None, gt=0, description="Detector rate; default 0.8x the model's own rate.")
    service_backend: str = Field("torch_cuda", description="Runtime backend of the service run (CPU smoke: torch_cpu).")
    service_models: int | None = Field(3, ge=1, description="Most models run through the service (None: all).")
    gpu_tests: bool = True
    tests_timeout_s: float = Field(150.0, gt=0)
    models: tuple[Path, ...] = ()
    teacher_width: int = Field(64, ge=8, description="Width of the random-weight teacher (64: the default model).")
    shipped_students: bool = Field(True, description="Also measure every models/*student*.pt checkpoint.")
    smoke: bool = False
    cpu_compile: bool = Field(False, description="Smoke run only: exercise torch.compile on the CPU too (slow).")

    @classmethod
    def cpu_smoke(cls, **kw: Any) -> CheckConfig:
        base: dict[str, Any] = dict(
            sizes=(32,), iterations=2, min_iterations=2, warmup=1, case_seconds=0.1, service_size=32,
            service_seconds=1.5, service_models=1, gpu_tests=False, smoke=True, teacher_width=8,
            shipped_students=False,
        )  # fmt: skip
        base.update(kw)
        return cls(**base)


class Budget:
    """Wall-clock budget of the whole check."""

    def __init__(self, total_s: float) -> None:
        self.total = total_s
        self.start = time.perf_counter()

    def spent(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total - self.spent()


@dataclass
class ModelEntry:
    """One network to measure. ``net`` is what the runtime would load; ``module`` what the GPU runs."""

    name: str
    role: str  # teacher / student
    net: nn.Module
    card: ModelCard | None
    frames: int
    module: nn.Module = field(init=False)
    macs_per_pixel: float | None = None

    def __post_init__(self) -> None:
        self.module = inference_form(self.net)


def inference_form(net: nn.Module) -> nn.Module:
    """Blind-spot networks in their folded form (as ``torch_cuda`` runs them), anything else as it is."""
    if isinstance(net, BlindSpotNet):
        from emlive.export.folding import fold_network

        return fold_network(net)
    return copy.deepcopy(net).float().eval()


# --- models -------------------------------------------------------------------------------------------------------
def _frames_of(net: nn.Module) -> int:
    cfg = getattr(net, "config", None)
    return int(getattr(cfg, "frames", 5))


def student_entry() -> tuple[ModelEntry | None, str | None]:
    """The student of ``emlive.core.student`` (random weights, default config), or why there is none."""
    try:
        mod = importlib.import_module("emlive.core.student")
    except ImportError as exc:
        return None, f"student: not available in this tree ({exc})"
    try:
        cls = mod.StudentNet
        cfg_cls = getattr(mod, "StudentConfig", None)
        torch.manual_seed(0)
        net = (cls(cfg_cls()) if cfg_cls is not None else cls()).eval()
    except Exception as exc:  # noqa: BLE001 - another team's module: any failure is reported, the check goes on
        return None, f"student: emlive.core.student exists but its default StudentNet failed to build ({exc!r})"
    name = "student (random weights, default config)"
    return ModelEntry(name, "student", net, _student_card(net), _frames_of(net), _student_macs(net)), None


def _student_macs(net: nn.Module) -> float | None:
    fn = getattr(getattr(net, "config", None), "macs_per_pixel", None)
    if not callable(fn):
        return None
    try:
        return float(fn())
    except Exception:  # noqa: BLE001 - informational only
        return None


def _student_card(net: nn.Module) -> ModelCard | None:
    """A card for the student when this tree's ModelCard takes its config (the runtime needs one to load it)."""
    try:
        return ModelCard(network=net.config)
    except Exception:  # noqa: BLE001 - an older card schema: the service path then reports why it skipped
        return None


def teacher_entries(width: int, extra: Sequence[Path]) -> tuple[list[ModelEntry], list[str]]:
    """The random-weight teacher (default architecture), the shipped synthetic-small and every ``--model``."""
    from emlive.core.network import macs_per_pixel

    torch.manual_seed(0)
    cfg = NetworkConfig(width=width)
    entries = [
        ModelEntry(
            f"teacher width {width} (random weights)", "teacher", BlindSpotNet(cfg).eval(), ModelCard(network=cfg),
            cfg.frames, macs_per_pixel(cfg, 32),
        )
    ]  # fmt: skip
    notes: list[str] = []
    for path in (SHIPPED_TEACHER, *extra):
        try:
            net, card = load_checkpoint(path)
        except Exception as exc:  # noqa: BLE001 - reported in the JSON; the other models still run
            notes.append(f"{path}: not loaded ({exc})")
            continue
        role = "student" if "student" in path.name.lower() else "teacher"
        macs = macs_per_pixel(net.config, 32) if isinstance(net, BlindSpotNet) else None
        entries.append(ModelEntry(path.stem, role, net.eval(), card, _frames_of(net), macs))
    return entries, notes


def all_models(cfg: CheckConfig) -> tuple[list[ModelEntry], list[str]]:
    student, why = student_entry()
    shipped = sorted((ROOT / "models").glob("*student*.pt")) if cfg.shipped_students else []
    teachers, notes = teacher_entries(cfg.teacher_width, [*shipped, *cfg.models])
    if why:
        notes.insert(0, why)
    for note in notes:
        log.info("%s", note)
    return ([student] if student else []) + teachers, notes


# --- runners ------------------------------------------------------------------------------------------------------
def _fp16(module: nn.Module, channels_last: bool) -> nn.Module:
    m = copy.deepcopy(module).half()
    return m.to(memory_format=torch.channels_last) if channels_last else m  # type: ignore[call-overload]


def _eager(module: nn.Module, half: bool, channels_last: bool) -> Runner:
    def run(x: torch.Tensor) -> torch.Tensor:
        if half:
            x = x.half()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return module(x)

    return run


def cuda_graph_runner(module: nn.Module, example: torch.Tensor) -> Runner:
    """Capture ``module`` once for ``example``'s shape: static input/output buffers, then replay per frame."""
    static_in = example.half().contiguous(memory_format=torch.channels_last).clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream (cuDNN picks its algorithms before capture)
            module(static_in)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = module(static_in)

    def run(x: torch.Tensor) -> torch.Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out

    return run


@dataclass
class Prepared:
    """The per-model modules of every variant (built once, reused at every size)."""

    fp32: nn.Module
    fp16: nn.Module
    fp16_cl: nn.Module
    compiled: Any = None


def prepare(entry: ModelEntry, device: torch.device) -> Prepared:
    fp32 = entry.module.to(device).eval()
    return Prepared(fp32, _fp16(fp32, False), _fp16(fp32, True))


def runner_for(variant: str, prep: Prepared, x: torch.Tensor, cfg: CheckConfig) -> Runner:
    if variant == "fp32":
        return _eager(prep.fp32, False, False)
    if variant == "fp16":
        return _eager(prep.fp16, True, False)
    if variant == "fp16_channels_last":
        return _eager(prep.fp16_cl, True, True)
    if variant == "fp16_cuda_graph":
        return cuda_graph_runner(prep.fp16_cl, x)
    if variant == "fp16_compile":
        if prep.compiled is None:
            prep.compiled = torch.compile(prep.fp16_cl, mode=cfg.compile_mode, dynamic=False)
        return _eager(prep.compiled, True, True)
    raise ValueError(f"variant {variant!r}: not one of {', '.join(VARIANTS)}")


def skip_reason(variant: str, cuda: bool, cfg: CheckConfig) -> str | None:
    """Why a variant does not run on this device (None when it does)."""
    if not cuda and variant == "fp16_cuda_graph":
        return "CUDA graphs need a CUDA device (CPU smoke run)"
    if not cuda and variant == "fp16_compile" and not cfg.cpu_compile:
        return "torch.compile is not exercised in the CPU smoke run (a minute of compilation on 2 cores; --cpu-compile)"
    return None


# --- timing -------------------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runner(run: Runner, x: torch.Tensor, cfg: CheckConfig, device: torch.device) -> dict[str, Any]:
    """Warm-up, then a timed loop: per-frame latency (CUDA events / perf_counter) and frames/s (wall clock)."""
    for _ in range(cfg.warmup):
        t0 = time.perf_counter()
        run(x)
        _sync(device)
    estimate = max(time.perf_counter() - t0, 1e-6)  # the last warm-up call
    n = int(min(cfg.iterations, max(cfg.min_iterations, cfg.case_seconds / estimate)))
    cuda = device.type == "cuda"
    marks: list[Any] = []
    t0 = time.perf_counter()
    for _ in range(n):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run(x)
            end.record()
            marks.append((start, end))
        else:
            t = time.perf_counter()
            run(x)
            marks.append(time.perf_counter() - t)
    _sync(device)
    wall = time.perf_counter() - t0
    ms = [s.elapsed_time(e) for s, e in marks] if cuda else [m * 1e3 for m in marks]
    p50, p99 = np.percentile(ms, [50, 99])
    return {"frames": n, "fps": round(n / wall, 2), "p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3)}


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / (max(ref) - min(ref)), in float32; inf when the output is not finite."""
    o, r = out.float(), ref.float()
    if not bool(torch.isfinite(o).all()):
        return math.inf
    span = float(r.max() - r.min()) or 1.0
    return float((o - r).abs().max()) / span


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


# --- speed phase --------------------------------------------------------------------------------------------------
@dataclass
class SpeedState:
    """What the speed phase carries between cases: prepared modules and the fp32 references."""

    prepared: dict[str, Prepared] = field(default_factory=dict)
    references: dict[tuple[str, int], torch.Tensor] = field(default_factory=dict)
    last_compile_s: float = 0.0


def _input(frames: int, size: int, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(size)
    return torch.randn(1, frames, size, size, generator=gen).to(device)


def run_case(
    entry: ModelEntry, size: int, variant: str, state: SpeedState, cfg: CheckConfig, device: torch.device
) -> dict[str, Any]:
    """One (model, size, variant): timing, parity against fp32, peak memory; errors (e.g. out of memory) named."""
    row: dict[str, Any] = {"model": entry.name, "role": entry.role, "size": size, "variant": variant}
    if entry.name not in state.prepared:
        state.prepared[entry.name] = prepare(entry, device)
    _peak_reset(device)
    try:
        row.update(_measure(entry, size, variant, state, cfg, device))
    except torch.cuda.OutOfMemoryError as exc:
        row["error"] = f"out of GPU memory ({str(exc).splitlines()[0]})"
    except Exception as exc:  # noqa: BLE001 - unsupported op/dtype, capture or compile failure: named, the check goes on
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    row["peak_memory_mib"] = _peak_mib(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the case's runner (and a CUDA graph's memory pool) is gone by now
    if variant == "fp16_compile" and "first_call_s" in row:
        state.last_compile_s = row["first_call_s"]
    _log_case(row)
    return row


def _measure(
    entry: ModelEntry, size: int, variant: str, state: SpeedState, cfg: CheckConfig, device: torch.device
) -> dict[str, Any]:
    x = _input(entry.frames, size, device)
    eager = variant in ("fp32", "fp16", "fp16_channels_last")
    t0 = time.perf_counter()
    with torch.inference_mode() if eager else torch.no_grad():  # graphs and compilation under plain no_grad
        run = runner_for(variant, state.prepared[entry.name], x, cfg)
        first = run(x)
        _sync(device)
        out: dict[str, Any] = {"first_call_s": round(time.perf_counter() - t0, 3)}
        if variant == "fp32":
            state.references[(entry.name, size)] = first.detach().float().clone()
        ref = state.references.get((entry.name, size))
        out["parity_vs_fp32"] = None if ref is None else relative_error(first, ref)
        out.update(time_runner(run, x, cfg, device))
    return out


def _log_case(row: dict[str, Any]) -> None:
    if "error" in row:
        log.warning("%s %d px %s: %s", row["model"], row["size"], row["variant"], row["error"])
        return
    log.info(
        "%s %d px %s: %.1f frames/s, p50 %.2f ms, p99 %.2f ms, parity %.2e, peak %s MiB",
        row["model"], row["size"], row["variant"], row["fps"], row["p50_ms"], row["p99_ms"],
        row["parity_vs_fp32"] if row["parity_vs_fp32"] is not None else float("nan"), row["peak_memory_mib"],
    )  # fmt: skip


def size_order(sizes: Sequence[int]) -> list[int]:
    """The targets' size first, then the others ascending."""
    return sorted(sizes, key=lambda s: (s != SIZE_ORDER_FIRST, s))


def speed_phase(
    models: list[ModelEntry], variants: Sequence[str], deadline_s: float, state: SpeedState, cfg: CheckConfig,
    budget: Budget, device: torch.device,
) -> list[dict[str, Any]]:  # fmt: skip
    """Every (size, model, variant) until ``deadline_s`` of the budget; later cases skipped with the reason."""
    rows = []
    cuda = device.type == "cuda"
    for size in size_order(cfg.sizes):
        for entry in models:
            for variant in variants:
                base = {"model": entry.name, "role": entry.role, "size": size, "variant": variant}
                reason = skip_reason(variant, cuda, cfg) or _budget_reason(variant, deadline_s, state, cfg, budget)
                if reason:
                    rows.append({**base, "skipped": reason})
                    continue
                rows.append(run_case(entry, size, variant, state, cfg, device))
    return rows


def _budget_reason(variant: str, deadline_s: float, state: SpeedState, cfg: CheckConfig, budget: Budget) -> str | None:
    if budget.spent() >= deadline_s:
        return f"time budget: this phase's share ({deadline_s:.0f} s of {budget.total:.0f} s) was spent"
    if variant == "fp16_compile":
        need = max(cfg.compile_reserve_s, 2.0 * state.last_compile_s)
        if deadline_s - budget.spent() < need:
            return f"time budget: {deadline_s - budget.spent():.0f} s left, a compilation needs about {need:.0f} s"
    return None


# --- service phase ------------------------------------------------------------------------------------------------
def service_case(entry: ModelEntry, cfg: CheckConfig, device: torch.device) -> dict[str, Any]:
    """The live service in this process on the runtime's PyTorch backend, fed by the detector simulator."""
    from emlive.export.runtime import Denoiser

    backend = cfg.service_backend if device.type == "cuda" else "torch_cpu"
    size = cfg.service_size
    row: dict[str, Any] = {"model": entry.name, "role": entry.role, "size": size, "backend": backend}
    try:
        den = Denoiser.from_network(entry.net, entry.card, backend, threads=None if device.type == "cuda" else 1)  # type: ignore[arg-type]
    except Exception as exc:  # noqa: BLE001 - a model the runtime cannot take yet is reported, not fatal
        row["skipped"] = f"the runtime cannot load this model on {backend}: {exc}"
        return row
    frames = np.random.default_rng(1).poisson(20.0, (16, size, size)).astype(np.uint16)
    model_fps = _model_rate(den, frames[: den.frames], min(1.0, cfg.service_seconds / 4))
    feed = cfg.service_fps or round(0.8 * model_fps, 2)
    row.update({"device": den.device, "model_fps_denoise_window": round(model_fps, 2), "feed_fps": feed})
    row.update(_serve(den, frames, feed, cfg.service_seconds))
    target = 2000.0 / feed + SERVICE_TARGET_EXTRA_MS
    p99 = row["latency_age"]["p99_ms"]
    row["target_p99_ms"] = round(target, 2)
    row["meets_target"] = None if p99 is None else bool(p99 <= target)
    log.info(
        "service %s %d px on %s: feed %.1f fps, out %.1f fps, p99 age %s ms (target %.1f ms)",
        entry.name, size, backend, feed, row["output_fps"], p99, target,
    )  # fmt: skip
    return row


def _model_rate(den: Any, window: np.ndarray, seconds: float) -> float:
    for _ in range(2):
        den.denoise_window(window)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        t0 = time.perf_counter()
        den.denoise_window(window)
        times.append(time.perf_counter() - t0)
    return 1.0 / float(np.median(times))


def _serve(den: Any, frames: np.ndarray, feed_fps: float, seconds: float) -> dict[str, Any]:
    import zmq

    from emlive.core.readers import ArrayMovie
    from emlive.stream.detector import DetectorConfig, DetectorSimulator
    from emlive.stream.service import DenoiseService, ServiceConfig

    local = "tcp://127.0.0.1:0"
    det = DetectorSimulator(
        DetectorConfig(output=local, fps=feed_fps, loop=True, acquisition="gpu-check", wait_subscribers=1),
        ArrayMovie(frames),
    )
    det.open()
    svc = DenoiseService(
        ServiceConfig(model=None, input=str(det.endpoint), output=local, status_interval_s=3600), denoiser=den
    )
    svc.start()
    ctx: zmq.Context[Any] = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(svc.endpoints["output"])
        svc.wait_for_subscribers(1, 10)
        det.start()
        t0 = time.perf_counter()
        while time.perf_counter() < t0 + seconds:
            if sub.poll(50):
                sub.recv_multipart(copy=False)
        elapsed = time.perf_counter() - t0
        snap = svc.status()
    finally:
        det.stop()
        svc.stop()
        sub.close()
        ctx.term()
    counters = snap["counters"]
    return {
        "seconds": round(elapsed, 2),
        "output_fps": round(counters.get("published", 0) / elapsed, 2),
        "skipped_frames": counters.get("skipped", 0),
        "latency_age": snap["latency"]["age"],
        "latency_processing": snap["latency"]["processing"],
    }


def service_phase(
    models: list[ModelEntry], cfg: CheckConfig, budget: Budget, device: torch.device
) -> list[dict[str, Any]]:
    """The service with the student first (the live model), then the teachers, while the budget allows."""
    rows: list[dict[str, Any]] = []
    need = cfg.service_seconds + 15.0
    for entry in sorted(models, key=lambda e: e.role != "student"):
        ran = sum(1 for r in rows if "skipped" not in r)
        if cfg.service_models is not None and ran >= cfg.service_models:
            rows.append({"model": entry.name, "skipped": f"service runs only the first {cfg.service_models} model(s)"})
        elif not cfg.service:
            rows.append({"model": entry.name, "skipped": "--no-service"})
        elif budget.left() < need:
            rows.append(
                {"model": entry.name, "skipped": f"time budget: {budget.left():.0f} s left, needs {need:.0f} s"}
            )
        else:
            rows.append(service_case(entry, cfg, device))
    return rows


# --- GPU tests ----------------------------------------------------------------------------------------------------
def junit_counts(path: Path) -> dict[str, int]:
    """tests/failures/errors/skipped/passed summed over a JUnit XML file's test suites."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def run_gpu_tests(cfg: CheckConfig, budget: Budget, reserve_s: float) -> dict[str, Any]:
    """``pytest -m gpu`` in a subprocess, with a timeout that leaves ``reserve_s`` of the budget."""
    tests = ROOT / "tests"
    if not cfg.gpu_tests:
        return {"skipped": "not requested (--no-gpu-tests or the CPU smoke run)"}
    if not tests.is_dir():
        return {"skipped": f"no tests folder at {tests} (an installed wheel carries none)"}
    timeout = min(cfg.tests_timeout_s, budget.left() - reserve_s)
    if timeout < 20:
        return {"skipped": f"time budget: {budget.left():.0f} s left"}
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "gpu.xml"
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "gpu",
            "-q",
            "-p",
            "no:cacheprovider",
            "--continue-on-collection-errors",  # a broken unrelated test file must not hide the GPU tests
            f"--junitxml={xml}",
            str(tests),
        ]
        log.info("GPU tests: %s (timeout %.0f s)", " ".join(cmd), timeout)
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
            return {"timed_out": True, "timeout_s": round(timeout), "output_tail": out[-2000:]}
        result: dict[str, Any] = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1)}
        result.update(junit_counts(xml) if xml.is_file() else {"error": "pytest wrote no JUnit XML"})
        result["output_tail"] = proc.stdout[-3000:]
    log.info("GPU tests: %s", {k: v for k, v in result.items() if k != "output_tail"})
    return result


# --- report -------------------------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "torch": torch.__version__, "cuda_build": torch.version.cuda, "python": platform.python_version(),
        "machine": platform.machine(), "cpus": os.cpu_count(), "device": str(device),
    }  # fmt: skip
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version()
        )
    return env


def targets(speed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's GPU speed targets at 2048 px: the best fp16 variant of each matching model against its target."""
    rows = []
    for name in dict.fromkeys(r["model"] for r in speed):
        role = next(r["role"] for r in speed if r["model"] == name)
        wanted = STUDENT_FPS_TARGET if role == "student" else TEACHER_FPS_TARGET
        if role != "student" and name != TEACHER_TARGET_MODEL:
            continue
        measured = [
            r for r in speed
            if r["model"] == name and r["size"] == TARGET_SIZE and r["variant"] != "fp32" and "fps" in r
        ]  # fmt: skip
        best = max(measured, key=lambda r: r["fps"], default=None)
        rows.append({
            "model": name, "size": TARGET_SIZE, "target_fps": wanted,
            "best_fps": best["fps"] if best else None, "best_variant": best["variant"] if best else None,
            "met": None if best is None else bool(best["fps"] >= wanted),
        })  # fmt: skip
    return rows


def log_table(results: dict[str, Any]) -> None:
    lines = [f"{'model':<40} {'px':>5} {'variant':<19} {'fps':>9} {'p50 ms':>9} {'p99 ms':>9} {'parity':>9} {'MiB':>8}"]
    order = {v: i for i, v in enumerate(VARIANTS)}
    for r in sorted(results["speed"], key=lambda r: (r["model"], r["size"], order.get(r["variant"], 99))):
        head = f"{r['model'][:40]:<40} {r['size']:>5} {r['variant']:<19}"
        if "fps" in r:
            par = r["parity_vs_fp32"]
            lines.append(
                f"{head} {r['fps']:>9.1f} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f} "
                f"{(f'{par:.1e}' if par is not None else '-'):>9} {r.get('peak_memory_mib') or '-':>8}"
            )
        else:
            lines.append(f"{head} {r.get('skipped') or r.get('error')}")
    for r in results.get("service", []):
        if "skipped" in r:
            lines.append(f"service {r['model']}: skipped ({r['skipped']})")
        else:
            lines.append(
                f"service {r['model']} {r['size']} px on {r['backend']}: feed {r['feed_fps']} fps, out "
                f"{r['output_fps']} fps, p99 age {r['latency_age']['p99_ms']} ms (target {r['target_p99_ms']} ms)"
            )
    for r in results.get("targets", []):
        lines.append(
            f"target {r['model']} at {r['size']} px: {r['best_fps']} fps vs {r['target_fps']} (met: {r['met']})"
        )
    tests = results.get("gpu_tests", {})
    lines.append(f"GPU tests: {{{', '.join(f'{k}: {v}' for k, v in tests.items() if k != 'output_tail')}}}")
    log.info("results\n%s", "\n".join(lines))


def write(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_check.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    log.info("wrote %s", path)
    return path


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """fp32 means fp32 in the speed cases: TF32 convolutions would blur the reference fp16 is compared against.
    The service runs with PyTorch's defaults (TF32 convolutions on), as ``emlive serve`` would."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _phase(name: str, budget: Budget) -> None:
    log.info(
        "== %s (%.0f s spent, %.0f s of the %.0f s budget left)", name, budget.spent(), budget.left(), budget.total
    )


def check(cfg: CheckConfig) -> dict[str, Any]:
    """The whole check (see the module docstring); returns what it writes."""
    budget = Budget(cfg.budget_s)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0" if cuda else "cpu")
    results: dict[str, Any] = {"cuda": cuda, "smoke": cfg.smoke, "environment": environment(device)}
    results["config"] = json.loads(cfg.model_dump_json())
    models, notes = all_models(cfg)
    results["models"] = [
        {"name": m.name, "role": m.role, "frames": m.frames, "macs_per_pixel": m.macs_per_pixel} for m in models
    ]
    results["notes"] = notes
    torch.backends.cudnn.benchmark = cuda
    state = SpeedState()
    eager = [v for v in VARIANTS if v != "fp16_compile"]
    _phase("speed: fp32, fp16, channels-last, CUDA graphs", budget)
    with strict_fp32():
        results["speed"] = speed_phase(models, eager, EAGER_SHARE * cfg.budget_s, state, cfg, budget, device)
    write(results, cfg.out)  # after every phase: a run stopped from outside still leaves its results
    _phase("the live service", budget)
    results["service"] = service_phase(models, cfg, budget, device)
    write(results, cfg.out)
    _phase("the GPU tests", budget)
    results["gpu_tests"] = run_gpu_tests(cfg, budget, reserve_s=cfg.compile_reserve_s)
    write(results, cfg.out)
    _phase(f"torch.compile (mode {cfg.compile_mode})", budget)
    with strict_fp32():
        results["speed"] += speed_phase(models, ["fp16_compile"], cfg.budget_s, state, cfg, budget, device)
    results["targets"] = targets(results["speed"])
    results["seconds"] = round(budget.spent(), 1)
    return results


def no_cuda_result(reason: str) -> dict[str, Any]:
    return {"cuda": False, "reason": reason, "hint": "run on a machine with CUDA, or --cpu-smoke to test the logic"}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m emlive.bench.gpu_check", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench_out/gpu_check"), help="folder for gpu_check.json")
    p.add_argument("--sizes", default="512,2048,4096", help="square frame sizes, comma-separated")
    p.add_argument("--budget-s", type=float, default=400.0, help="global time budget in seconds")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--model", type=Path, action="append", default=[], help="another checkpoint to measure")
    p.add_argument("--service-fps", type=float, default=None, help="detector rate of the service run")
    p.add_argument("--service-backend", default="torch_cuda", help="runtime backend of the service run")
    p.add_argument("--no-service", action="store_true", help="skip the service run")
    p.add_argument("--no-gpu-tests", action="store_true", help="skip pytest -m gpu")
    p.add_argument("--cpu-smoke", action="store_true", help="the same code paths on the CPU at 32 px (a test)")
    p.add_argument("--cpu-compile", action="store_true", help="with --cpu-smoke: run torch.compile on the CPU too")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> CheckConfig:
    from emlive.bench.runtime_bench import parse_sizes

    kw: dict[str, Any] = dict(
        out=args.out, budget_s=args.budget_s, compile_mode=args.compile_mode, models=tuple(args.model),
        service=not args.no_service, service_fps=args.service_fps, service_backend=args.service_backend,
        gpu_tests=not args.no_gpu_tests,
    )  # fmt: skip
    try:
        if args.cpu_smoke:
            return CheckConfig.cpu_smoke(
                cpu_compile=args.cpu_compile, **{k: v for k, v in kw.items() if k != "gpu_tests"}
            )
        return CheckConfig(sizes=tuple(parse_sizes(args.sizes)), **kw)
    except ValidationError as exc:
        err = exc.errors()[0]
        option = "--" + "-".join(str(part) for part in err["loc"]).replace("_", "-")
        raise ConfigError(f"{option}={err.get('input')!r}: {err['msg']}; see --help") from None


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    setup_logging(args.verbose)
    logging.getLogger("emlive.stream").setLevel(logging.WARNING)
    cfg = config_from(args)
    if not torch.cuda.is_available() and not cfg.smoke:
        from emlive.export.backends import cuda_unavailable_reason

        results = no_cuda_result(cuda_unavailable_reason() or "no CUDA device")
        log.info("no CUDA: %s; nothing run (--cpu-smoke tests the logic on the CPU)", results["reason"])
        write(results, cfg.out)
        return results
    threads = torch.get_num_threads()
    if cfg.smoke:
        torch.set_num_threads(1)  # a test on shared cores: 2 OpenMP threads against other processes ran 100x slower
    try:
        results = check(cfg)
    finally:
        torch.set_num_threads(threads)  # process-wide (the CPU service backend sets it too): leave it as found
    write(results, cfg.out)
    log_table(results)
    return results


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:
        log.error("%s", exc)
        sys.exit(2)
