"""TensorRT engines built from the exported ONNX model, cached, and run by the inference runtime.

Why TensorRT through ONNX (the ``tensorrt`` package's ``OnnxParser`` and builder) and not torch-tensorrt:

* the engine is built from the very ONNX graph whose parity with PyTorch was checked at export, so there is one
  artefact to validate, and the GPU path cannot drift from the CPU path (same folding, same padding nodes);
* the live service imports only the runtime: with an engine file it needs ``tensorrt`` and a CUDA buffer library,
  not torch-tensorrt, which is tied to one exact PyTorch and CUDA build;
* dynamic frame sizes are one optimisation profile (``ShapeProfile``: min/opt/max square sizes; height and width
  each anywhere in [min, max]), the engine is a plain file that can be cached and shipped.
(``pip install emlive[gpu]`` brings ``tensorrt`` in: torch-tensorrt, listed in that extra, depends on it.)

Engines are cached in ``$EMLIVE_CACHE_DIR/tensorrt`` (default ``~/.cache/emlive/tensorrt``) under a key made of
the GPU name, its compute capability, the TensorRT version, the shape profile, the precision and the SHA-256 of
the ONNX model; next to each ``<key>.engine`` a ``<key>.json`` holds the model card and the key's parts, which is
how :func:`read_engine_card` finds the card of an engine that has no sidecar of its own. An engine copied next to
the ONNX model (``model.engine``) gets a sidecar ``model.engine.json``.

Precision: fp16 by default (``BuilderFlag.FP16``; parity bound ``FP16_RELATIVE_BOUND``); fp32 engines clear the
TF32 flag so that they meet the float32 bound.

NEVER RUN: the development machine has no GPU and no TensorRT. This module is written against the TensorRT 10
Python API (``build_serialized_network``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) with
PyTorch CUDA tensors as device buffers; only its error paths (TensorRT or CUDA missing) are tested. The GPU tests
in ``tests/export/test_gpu.py`` exercise it where a GPU and TensorRT exist.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from emlive.core.cache import cache_root
from emlive.core.errors import ConfigError, InputDataError, ModelFileError
from emlive.core.modelcard import ModelCard
from emlive.core.networks import AnyNetwork
from emlive.export.backends import DEFAULT_TILE_GPU, InferenceEngine, cuda_description, cuda_unavailable_reason
from emlive.export.errors import GPU_INSTALL_HINT, BackendUnavailableError
from emlive.export.onnx_export import (
    INPUT_NAME,
    OUTPUT_NAME,
    ParityResult,
    compare_channels,
    parity_inputs,
    raise_on_failure,
)

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".trt")


@dataclass(frozen=True)
class ShapeProfile:
    """Frame sizes an engine accepts: height and width each in [min_size, max_size], tuned for opt_size."""

    min_size: int = 32
    opt_size: int = 1024
    max_size: int = DEFAULT_TILE_GPU

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.opt_size <= self.max_size:
            raise ConfigError(
                f"TensorRT shape profile min={self.min_size}, opt={self.opt_size}, max={self.max_size}: sizes must "
                "satisfy 1 <= min <= opt <= max; e.g. --trt-min 32 --trt-opt 1024 --trt-max 2048"
            )

    def shapes(self, frames: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        return (
            (1, frames, self.min_size, self.min_size),
            (1, frames, self.opt_size, self.opt_size),
            (1, frames, self.max_size, self.max_size),
        )

    @property
    def key(self) -> str:
        return f"{self.min_size}-{self.opt_size}-{self.max_size}"


def cache_dir() -> Path:
    """Where emlive keeps built engines: ``$EMLIVE_CACHE_DIR/tensorrt`` or ``~/.cache/emlive/tensorrt``."""
    return cache_root() / "tensorrt"


def tensorrt_unavailable_reason() -> str | None:
    """None when TensorRT can run here, else what is missing."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"the tensorrt Python package is not installed ({exc})"
    return cuda_unavailable_reason()


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or a one-line :class:`BackendUnavailableError` saying what is missing."""
    reason = tensorrt_unavailable_reason()
    if reason:
        raise BackendUnavailableError(f"TensorRT cannot run here: {reason}; {GPU_INSTALL_HINT}")
    import tensorrt as trt

    return trt


def engine_key(onnx_bytes: bytes, profile: ShapeProfile, fp16: bool) -> tuple[str, dict[str, Any]]:
    """Cache key of an engine and its parts (GPU, compute capability, TensorRT version, profile, model hash)."""
    trt = require_tensorrt()
    major, minor = torch.cuda.get_device_capability(0)
    parts: dict[str, Any] = {
        "gpu": torch.cuda.get_device_name(0),
        "compute_capability": f"{major}.{minor}",
        "tensorrt": trt.__version__,
        "profile": profile.key,
        "precision": "fp16" if fp16 else "fp32",
        "model_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    return digest, parts


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_sidecar(engine: Path, card: ModelCard, parts: dict[str, Any]) -> Path:
    """``<engine>.json``: the card and how the engine was built, read back by :func:`read_engine_card`."""
    sidecar = engine.with_name(engine.name + ".json")
    info = {
        "card": json.loads(card.to_json()),
        "build": parts,
        "engine_sha256": hashlib.sha256(engine.read_bytes()).hexdigest(),
    }
    _write_atomic(sidecar, json.dumps(info, indent=2).encode())
    return sidecar


def build_engine(
    onnx_bytes: bytes,
    card: ModelCard,
    *,
    profile: ShapeProfile | None = None,
    fp16: bool = True,
    cache: Path | None = None,
    workspace_gib: float = 4.0,
) -> Path:
    """Build (or take from the cache) a TensorRT engine for an exported ONNX model; returns the cached path."""
    profile = profile or ShapeProfile()
    trt = require_tensorrt()
    key, parts = engine_key(onnx_bytes, profile, fp16)
    folder = cache or cache_dir()
    path = folder / f"{key}.engine"
    if path.is_file():
        log.info("TensorRT engine from the cache: %s (%s)", path, parts)
        return path
    log.info(
        "building a TensorRT engine (%s, profile %s px; this takes minutes once, then it is cached)",
        parts["precision"],
        profile.key,
    )
    t0 = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8; implicit in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFileError(f"TensorRT cannot parse the ONNX model ({errors}); re-export it with `emlive export`")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(INPUT_NAME, *profile.shapes(card.frames))
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailableError(
            f"TensorRT could not build an engine for profile {profile.key} on {parts['gpu']} (see the TensorRT log "
            "above); try a smaller --trt-max or more free GPU memory"
        )
    _write_atomic(path, bytes(serialized))
    write_sidecar(path, card, parts)
    log.info("built %s in %.0f s", path, time.perf_counter() - t0)
    return path


def _card_from_sidecar(sidecar: Path) -> tuple[ModelCard, dict[str, Any], str | None] | None:
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(info, dict) or "card" not in info:
        return None
    card = ModelCard.from_json(json.dumps(info["card"]), str(sidecar))
    return card, dict(info.get("build", {})), info.get("engine_sha256")


def read_engine_card(path: str | Path) -> tuple[ModelCard, dict[str, Any]]:
    """The card of an engine: from ``<engine>.json`` or ``<stem>.json`` beside it, else from the cache's metadata
    (the ``<key>.engine.json`` whose recorded engine hash matches the file)."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(
            f"{p}: no such TensorRT engine; build one with `emlive export CHECKPOINT -o model.onnx --tensorrt`"
        )
    beside = [p.with_name(p.name + ".json"), p.with_suffix(".json")]
    for sidecar in beside:
        if sidecar.is_file() and (found := _card_from_sidecar(sidecar)) is not None:
            return found[0], found[1]
    folder = cache_dir()
    if folder.is_dir():
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        for sidecar in sorted(folder.glob("*.engine.json")):
            found = _card_from_sidecar(sidecar)
            if found is not None and found[2] == digest:
                return found[0], found[1]
    raise ModelFileError(
        f"{p}: no model card for this engine (looked for {beside[0].name} and {beside[1].name} beside it and in "
        f"the engine cache {folder}); rebuild it with `emlive export CHECKPOINT -o model.onnx --tensorrt`, which "
        "writes the sidecar"
    )


class TensorRTEngine(InferenceEngine):
    """Runs a serialized TensorRT engine on CUDA (PyTorch tensors as device buffers). NEVER RUN (no GPU here)."""

    name = "tensorrt"

    def __init__(self, engine_path: Path, card: ModelCard, build: dict[str, Any] | None = None) -> None:
        trt = require_tensorrt()
        self._trt = trt
        self.card = card
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if engine is None:
            raise ModelFileError(
                f"{engine_path}: TensorRT {trt.__version__} cannot load this engine (built for another GPU or "
                "TensorRT version?); rebuild it with `emlive export CHECKPOINT -o model.onnx --tensorrt`"
            )
        self._engine = engine
        self._context = engine.create_execution_context()
        lo, _, hi = engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self._min = (int(lo[2]), int(lo[3]))
        self._max = (int(hi[2]), int(hi[3]))
        self.max_tile = min(self._max)
        self.default_tile = self.max_tile
        self.device = cuda_description()
        self._stream = torch.cuda.Stream()
        self._buffers: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        log.debug("TensorRT engine %s: profile %s..%s", engine_path, self._min, self._max)

    def infer(self, x: np.ndarray, out: np.ndarray) -> None:
        h, w = x.shape[-2], x.shape[-1]
        if not (self._min[0] <= h <= self._max[0] and self._min[1] <= w <= self._max[1]):
            raise InputDataError(
                f"frame region {h}x{w}: this TensorRT engine accepts {self._min[0]}..{self._max[0]} x "
                f"{self._min[1]}..{self._max[1]} px; rebuild it with a wider profile (--trt-min/--trt-max)"
            )
        buffers = self._buffers.get((h, w))
        if buffers is None:
            buffers = (
                torch.empty(x.shape, dtype=torch.float32, device="cuda"),
                torch.empty(out.shape, dtype=torch.float32, device="cuda"),
            )
            self._buffers = {(h, w): buffers, **dict(list(self._buffers.items())[-3:])}
        din, dout = buffers
        with torch.cuda.stream(self._stream):
            din.copy_(torch.from_numpy(x), non_blocking=True)
            self._context.set_input_shape(INPUT_NAME, tuple(x.shape))
            self._context.set_tensor_address(INPUT_NAME, din.data_ptr())
            self._context.set_tensor_address(OUTPUT_NAME, dout.data_ptr())
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise BackendUnavailableError("TensorRT failed to run the engine (see the TensorRT log above)")
            torch.from_numpy(out).copy_(dout)
        self._stream.synchronize()

    def close(self) -> None:
        self._buffers.clear()
        torch.cuda.empty_cache()


def check_engine_parity(
    net: AnyNetwork, engine: TensorRTEngine, card: ModelCard, fp16: bool, source: str
) -> list[ParityResult]:
    """TensorRT against the PyTorch network on the export's parity inputs (same bound as the ONNX check)."""
    results = []
    for name, x in parity_inputs(card.frames):
        got = np.empty((1, card.network.out_channels, *x.shape[-2:]), dtype=np.float32)  # 2 for head=gaussian
        engine.infer(np.ascontiguousarray(x), got)
        with torch.inference_mode():
            ref = net.float().cpu().eval()(torch.from_numpy(x)).numpy()
        results.extend(compare_channels(name, got, ref, fp16))
    raise_on_failure(results, source, "TensorRT", fp16)
    return results


@dataclass
class TensorRTExport:
    engine: Path
    sidecar: Path
    cached: Path
    build: dict[str, Any]
    parity: list[ParityResult]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "engine": str(self.engine), "sidecar": str(self.sidecar), "cached": str(self.cached)}


def export_tensorrt(
    net: AnyNetwork,
    card: ModelCard,
    onnx_path: Path,
    *,
    profile: ShapeProfile | None = None,
    fp16: bool = True,
    check: bool = True,
) -> TensorRTExport:
    """Build (or reuse) the engine of an exported ONNX model, copy it next to it with a sidecar, check parity."""
    profile = profile or ShapeProfile()
    require_tensorrt()
    data = onnx_path.read_bytes()
    cached = build_engine(data, card, profile=profile, fp16=fp16)
    _, parts = engine_key(data, profile, fp16)
    target = onnx_path.with_suffix(".engine")
    _write_atomic(target, cached.read_bytes())
    sidecar = write_sidecar(target, card, parts)
    parity: list[ParityResult] = []
    if check:
        engine = TensorRTEngine(target, card, parts)
        try:
            parity = check_engine_parity(net, engine, card, fp16, str(target))
        finally:
            engine.close()
    log.info("wrote %s and %s", target, sidecar)
    return TensorRTExport(target, sidecar, cached, parts, parity)
