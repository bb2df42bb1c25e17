"""The one inference runtime: offline ``emlive denoise``, the live service and the benchmarks all use
:class:`Denoiser`.

>>> den = Denoiser.load("model.onnx")                      # or .ckpt/.pt, or a TensorRT .engine
>>> clean_center = den.denoise_window(window)              # (N, H, W) detector frames -> (H, W) float32
>>> for t, frame in den.denoise_movie(movie): ...          # every frame, leak-free windows at the ends
>>> stream = den.stream((512, 512), np.uint16)             # live: push each frame once, denoise its windows
>>> stream.push(frame, t); out = stream.denoise(window_indices(t - 2, 5, t + 1))

``denoise_movie`` and the live service (:mod:`emlive.stream.window`) both go through a :class:`FrameStream`: every
frame is validated and normalised once, into a float32 ring laid out as the network's input, and each window is
denoised from the ring (a contiguous view of it for consecutive frames), not renormalised N times.

What happens inside, in order:

1. **Validation.** A window must be ``(N, H, W)`` with the model's N, a pixel type of the policy
   (:mod:`emlive.core.pixeltypes`: every type the wire protocol carries, either byte order, plus int64/uint64 from
   files) and finite values; anything else is an :class:`~emlive.core.errors.InputDataError` naming the value,
   the rule and the fix.
2. **Normalisation** (the card's ``zscore_per_frame``): every frame of the window is z-scored on its own with the
   statistics of :func:`emlive.core.normalize.frame_stats` (mean and std of the *whole* frame, float64, huge
   finite values handled), written into a float32 buffer reused for every window of that shape: in float32 for
   types whose values are all float32s, in float64 for 32/64-bit integers and float64
   (:func:`emlive.core.normalize.normalize_into`). The output is mapped back with the center frame's mean and std,
   so it is in the input's units (float32; a frame whose result would not fit a float32 is refused, naming the
   range).
3. **Tiling.** Frames larger than ``tile`` (default 1024 px on the CPU, 2048 on a GPU, at most the TensorRT
   profile's maximum) are cut into overlapping tiles (:mod:`emlive.export.tiling`) whose margin is at least the
   network's receptive radius and whose origins are aligned to its pooling factor: the stitched result equals
   whole-frame inference up to float rounding. Normalisation happens before tiling, so the statistics are always
   the whole frame's.
4. **Inference** by one engine (:mod:`emlive.export.backends`, :mod:`emlive.export.tensorrt`), with buffers
   preallocated per shape and bound once (ONNX Runtime IOBinding). The output has 1 channel, or 2 for a
   ``network.head=gaussian`` model (the blind estimate and the log prior variance); tiles carry both.
5. **Estimate** (:mod:`emlive.export.estimates`, the one place for every window, offline and live): the blind
   estimate (a plain model: one denormalisation, as always), or for a ``head=gaussian`` model whose card has a
   noise model the posterior mean (by default; ``estimate="blind"`` to turn it off), which combines the network's
   prior with the raw center frame. ``uncertainty=True`` (``denoise_window``, ``denoise_movie``,
   ``FrameStream.denoise``) returns a :class:`~emlive.export.estimates.Denoised` instead: the frame and its std.

Backends (:class:`BackendName`) and what ``auto`` picks, first available wins, each skip logged with its reason:

* a TensorRT engine file (``.engine``/``.trt``): ``tensorrt``;
* an ONNX model: ``tensorrt`` (engine built once from the ONNX and cached) > ``onnx_tensorrt`` (ONNX Runtime's
  TensorRT provider) > ``onnx_cuda`` > ``openvino_cpu`` > ``onnx_cpu``;
* a checkpoint (``.ckpt``/``.pt``): the same, with the network exported to ONNX in memory (about 1.5 s for the
  default model), and ``torch_cuda`` before the CPU backends; ``torch_cpu`` last (3-4x slower than ``onnx_cpu``).

``openvino_cpu`` exists only where the optional ``openvino`` package is installed (not an emlive dependency): it
runs bfloat16 on CPUs with AMX/AVX512-BF16, about 3x faster than ``onnx_cpu`` at a measured paper-PSNR cost of
0.01 dB (:mod:`emlive.export.backends` has the numbers). Without it, ``auto`` on a CPU is ``onnx_cpu`` (float32).

The card comes from the checkpoint, from the ONNX ``metadata_props`` (key ``emlive_card``), or from an engine's
sidecar JSON / the engine cache. Missing, corrupt or foreign model files raise
:class:`~emlive.core.errors.ModelFileError` naming the file; a backend that cannot run here raises
:class:`~emlive.export.errors.BackendUnavailableError` saying what is missing and how to install it.

The GPU backends (``tensorrt``, ``onnx_tensorrt``, ``onnx_cuda``, ``torch_cuda``) were never run: the development
machine has no GPU. Their selection and error paths are tested; the GPU tests skip without CUDA.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

import numpy as np

from emlive.core.errors import TRAIN_INSTALL_HINT, ConfigError, InputDataError, ModelFileError, require_training_stack
from emlive.core.modelcard import ModelCard, Normalization, load_checkpoint
from emlive.core.normalize import denormalize, frame_stats, normalize_into
from emlive.core.pixeltypes import PIXEL_TYPES, check_pixel_type
from emlive.core.posterior import Estimate
from emlive.core.windows import window_indices
from emlive.export.backendnames import BACKENDS, BackendInfo, BackendName, backend_help  # noqa: F401 - re-exported
from emlive.export.backends import (
    InferenceEngine,
    OpenVinoEngine,
    OrtEngine,
    cuda_unavailable_reason,
    openvino_unavailable_reason,
    ort_provider_unavailable_reason,
)
from emlive.export.errors import GPU_INSTALL_HINT, BackendUnavailableError
from emlive.export.estimates import (  # noqa: F401 - Denoised re-exported: the runtime's uncertainty result
    Denoised,
    card_calibration,
    card_noise,
    choose_estimate,
    estimate_frame,
    needs_variance_head,
    parse_estimate,
)
from emlive.export.onnxmeta import read_onnx_bytes_and_card
from emlive.export.tiling import Tile, check_tile, plan_tiles, tile_margin

if TYPE_CHECKING:
    from emlive.core.networks import AnyNetwork

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = tuple(t.dtype for t in PIXEL_TYPES.values())  # the pixel-type policy's, native byte order
CHECKPOINT_SUFFIXES = (".ckpt", ".pt", ".pth")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".trt")
MAX_BUFFERS = 16


_AUTO_ORDER = {
    "engine": [BackendName.tensorrt],
    "onnx": [
        BackendName.tensorrt,
        BackendName.onnx_tensorrt,
        BackendName.onnx_cuda,
        BackendName.openvino_cpu,
        BackendName.onnx_cpu,
    ],
    "checkpoint": [
        BackendName.tensorrt,
        BackendName.onnx_tensorrt,
        BackendName.onnx_cuda,
        BackendName.torch_cuda,
        BackendName.openvino_cpu,
        BackendName.onnx_cpu,
        BackendName.torch_cpu,
    ],
}


def parse_backend(backend: BackendName | str) -> BackendName:
    if isinstance(backend, BackendName):
        return backend
    try:
        return BackendName(str(backend).lower())
    except ValueError:
        names = ", ".join(b.value for b in BackendName)
        raise ConfigError(f"backend {backend!r}: not a known backend; use one of {names}") from None


def _kind_mismatch(backend: BackendName, kind: str) -> str | None:
    if kind == "engine" and backend is not BackendName.tensorrt:
        return "a TensorRT engine file runs only on the tensorrt backend"
    if kind != "checkpoint" and backend in (BackendName.torch_cpu, BackendName.torch_cuda):
        return f"{backend.value} needs a PyTorch checkpoint (.ckpt/.pt), not an exported model"
    return None


def _torch_missing() -> str | None:
    """Why the torch backends (PyTorch, native TensorRT) cannot run in the light install; None where torch is."""
    if importlib.util.find_spec("torch") is None:
        return f"PyTorch is not installed; {TRAIN_INSTALL_HINT}"
    return None


def _platform_reason(backend: BackendName) -> str | None:
    if backend in (BackendName.tensorrt, BackendName.torch_cpu) and _torch_missing():
        return _torch_missing()
    if backend is BackendName.tensorrt and importlib.util.find_spec("tensorrt") is None:
        return "the tensorrt Python package is not installed"  # checked first: the module below imports torch
    if backend is BackendName.tensorrt:
        from emlive.export.tensorrt import tensorrt_unavailable_reason

        return tensorrt_unavailable_reason()
    if backend is BackendName.onnx_tensorrt:
        return ort_provider_unavailable_reason("TensorrtExecutionProvider") or cuda_unavailable_reason()
    if backend is BackendName.onnx_cuda:
        return ort_provider_unavailable_reason("CUDAExecutionProvider") or cuda_unavailable_reason()
    if backend is BackendName.torch_cuda:
        return cuda_unavailable_reason()
    if backend is BackendName.onnx_cpu:
        return ort_provider_unavailable_reason("CPUExecutionProvider")
    if backend is BackendName.openvino_cpu:
        return openvino_unavailable_reason()
    return None


def backend_unavailable_reason(backend: BackendName, kind: str = "checkpoint") -> str | None:
    """None when ``backend`` can run a model of ``kind`` (checkpoint, onnx, engine) here, else why not."""
    return _kind_mismatch(backend, kind) or _platform_reason(backend)


def available_backends(kind: str = "checkpoint") -> list[BackendName]:
    """Backends that can run a model of ``kind`` here, best first."""
    return [b for b in _AUTO_ORDER[kind] if backend_unavailable_reason(b, kind) is None]


def model_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    raise ModelFileError(
        f"{path}: unknown model file type '{suffix}'; give a checkpoint (.ckpt/.pt), an exported model (.onnx) or "
        "a TensorRT engine (.engine/.trt)"
    )


class _Model:
    """What a model file holds, loaded lazily per backend need."""

    def __init__(
        self,
        path: Path | None,
        kind: str,
        card: ModelCard,
        net: AnyNetwork | None = None,
        onnx_bytes: bytes | None = None,
        build: dict[str, Any] | None = None,
    ) -> None:
        self.path = path
        self.kind = kind
        self.card = card
        self.net = net
        self._onnx = onnx_bytes
        self.build = build or {}

    @property
    def label(self) -> str:
        return str(self.path) if self.path else "in-memory network"

    def onnx_bytes(self) -> bytes:
        if self._onnx is None:
            if self.net is None:
                raise ModelFileError(f"{self.label}: no ONNX model or network to build one from")
            require_training_stack(f"{self.label}: exporting the network to ONNX in memory", ("torch", "onnx"))
            from emlive.export.onnx_export import onnx_model_proto

            t0 = time.perf_counter()
            self._onnx = onnx_model_proto(self.net, self.card).SerializeToString()
            log.info("exported the network of %s to ONNX in memory (%.1f s)", self.label, time.perf_counter() - t0)
        return self._onnx


def read_card(path: str | Path) -> ModelCard:
    """The card of a model file, read as :meth:`Denoiser.load` reads it but without building an engine (a batch
    job's driver checks the model before any work, with no GPU needed)."""
    return _load_model(Path(path)).card


def _load_model(path: Path) -> _Model:
    kind = model_kind(path)
    if not path.is_file():
        raise ModelFileError(
            f"{path}: no such model file; give the path of a .ckpt/.pt checkpoint, an exported .onnx model or a "
            "TensorRT .engine"
        )
    if kind == "checkpoint":
        net, card = load_checkpoint(path)
        return _Model(path, kind, card, net=net)
    if kind == "onnx":
        data, card = read_onnx_bytes_and_card(path)
        return _Model(path, kind, card, onnx_bytes=data)
    require_training_stack(f"{path}: reading a TensorRT engine")
    from emlive.export.tensorrt import read_engine_card

    card, build = read_engine_card(path)
    return _Model(path, kind, card, build=build)


def _make_engine(
    model: _Model, backend: BackendName, threads: int | None, fold: bool | None = None, spin: bool = True
) -> InferenceEngine:
    mismatch = _kind_mismatch(backend, model.kind)
    if mismatch:
        raise BackendUnavailableError(
            f"backend {backend.value} for {model.label}: {mismatch}; use backend auto, or load a model file that "
            f"{backend.value} can run"
        )
    reason = _platform_reason(backend)
    if reason:
        fix = {
            BackendName.onnx_cpu: "reinstall onnxruntime (pip install onnxruntime)",
            BackendName.openvino_cpu: "install it with `pip install openvino` or use backend onnx_cpu",
        }.get(backend, GPU_INSTALL_HINT)
        raise BackendUnavailableError(f"backend {backend.value} for {model.label}: {reason}; {fix}")
    if backend is BackendName.onnx_cpu:
        return OrtEngine(
            model.onnx_bytes(),
            "CPUExecutionProvider",
            name=backend.value,
            threads=threads,
            source=model.label,
            spin=spin,
        )
    if backend is BackendName.openvino_cpu:
        return OpenVinoEngine(model.onnx_bytes(), threads=threads, source=model.label)
    if backend is BackendName.onnx_cuda:
        return OrtEngine(
            model.onnx_bytes(), "CUDAExecutionProvider", name=backend.value, threads=threads, source=model.label
        )
    if backend is BackendName.onnx_tensorrt:
        from emlive.export.tensorrt import cache_dir

        options = {
            "trt_fp16_enable": True,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache_dir() / "onnxruntime"),
        }
        return OrtEngine(
            model.onnx_bytes(),
            "TensorrtExecutionProvider",
            name=backend.value,
            threads=threads,
            provider_options=options,
            source=model.label,
        )
    if backend in (BackendName.torch_cpu, BackendName.torch_cuda):
        if model.net is None:
            raise BackendUnavailableError(f"backend {backend.value}: {model.label} holds no PyTorch weights")
        device = "cuda" if backend is BackendName.torch_cuda else "cpu"
        from emlive.export.torchengine import TorchEngine

        return TorchEngine(model.net, model.card, device, threads=threads, fold=fold, name=backend.value)
    from emlive.export.tensorrt import TensorRTEngine, build_engine

    if model.kind == "engine" and model.path is not None:
        return TensorRTEngine(model.path, model.card, model.build)
    engine_path = build_engine(model.onnx_bytes(), model.card)
    return TensorRTEngine(engine_path, model.card)


def _select(
    model: _Model, backend: BackendName, threads: int | None, fold: bool | None = None, spin: bool = True
) -> InferenceEngine:
    if backend is not BackendName.auto:
        return _make_engine(model, backend, threads, fold, spin)
    skipped: list[str] = []
    for candidate in _AUTO_ORDER[model.kind]:
        reason = backend_unavailable_reason(candidate, model.kind)
        if reason is None:
            try:
                engine = _make_engine(model, candidate, threads, fold, spin)
            except BackendUnavailableError as exc:
                reason = str(exc)
            else:
                log.info(
                    "backend auto -> %s on %s%s",
                    candidate.value,
                    engine.device,
                    f" (skipped {'; '.join(skipped)})" if skipped else "",
                )
                return engine
        skipped.append(f"{candidate.value}: {reason}")
    raise BackendUnavailableError(f"no backend can run {model.label} here ({'; '.join(skipped)}); {GPU_INSTALL_HINT}")


class Denoiser:
    """A loaded denoiser: validation, normalisation, tiling and inference (see the module docstring).

    Not thread-safe: its buffers are reused from call to call, so use one ``Denoiser`` per thread. Frames that it
    returns are new arrays, owned by the caller.
    """

    def __init__(
        self,
        engine: InferenceEngine,
        card: ModelCard,
        *,
        tile: int | None = None,
        source: str = "model",
        estimate: Estimate | str | None = None,
    ) -> None:
        if card.normalization is not Normalization.zscore_per_frame:
            raise ModelFileError(f"{source}: normalisation {card.normalization.value} is not supported by this runtime")
        self._engine = engine
        self.card = card
        self.source = source
        cfg = card.network
        self.margin = tile_margin(cfg)
        chosen = engine.default_tile if tile is None else tile
        if engine.max_tile is not None and chosen > engine.max_tile:
            if tile is not None:
                raise ConfigError(
                    f"tile={tile}: the {engine.name} engine accepts at most {engine.max_tile} px; use "
                    f"tile={engine.max_tile} or rebuild the engine with a larger --trt-max"
                )
            chosen = engine.max_tile
        if tile is None:
            chosen = max(chosen - chosen % cfg.pad_multiple, 2 * self.margin + cfg.pad_multiple)
        self.tile = check_tile(chosen, cfg)
        self._buffers: dict[tuple[Any, ...], np.ndarray] = {}
        self._plans: dict[tuple[int, int], list[Tile]] = {}
        # one window at a time: the buffers (and the engine's IOBindings) are shared, so a second thread (a
        # service's idle warm-up beside a caller's own offline run, a GUI and a worker) waits instead of
        # overwriting the window being denoised
        self._lock = threading.RLock()
        self.channels = cfg.out_channels  # network outputs: 1, or 2 for head=gaussian (mean, log prior variance)
        self.noise = card_noise(card, source)  # the card's pixel noise model (counts), None without one
        self.calibration = card_calibration(card)  # the variance head's recalibration, if measured
        self.estimate = choose_estimate(estimate, card, self.noise, source)  # what the plain calls return
        log.info(
            "denoiser: %s on %s (%d frames, blind spot %dx%d, width %d, tile %d px, margin %d px, %s estimate)",
            engine.name,
            engine.device,
            card.frames,
            *card.blind_spot,
            cfg.width,
            self.tile,
            self.margin,
            self.estimate.value,
        )

    # --- construction -------------------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: BackendName | str = "auto",
        *,
        threads: int | None = None,
        tile: int | None = None,
        spin: bool = True,
        estimate: Estimate | str | None = None,
    ) -> Denoiser:
        """Load a checkpoint (.ckpt/.pt), an exported model (.onnx) or a TensorRT engine (.engine/.trt).

        ``threads``: CPU threads (default: physical cores); ``tile``: largest region run at once (default per
        backend); ``spin``: ONNX Runtime's CPU threads spin-wait for the next run (fastest back to back; a live
        service paced by a detector passes False, see :class:`~emlive.export.backends.OrtEngine`); ``estimate``:
        ``blind`` or ``posterior`` (default: the posterior for a ``head=gaussian`` model whose card has a noise
        model, else blind; :mod:`emlive.export.estimates`). Raises ModelFileError, BackendUnavailableError or
        ConfigError with one clear line.
        """
        chosen = parse_backend(backend)
        if threads is not None and threads < 1:
            raise ConfigError(f"threads={threads}: must be at least 1 (or None for the physical core count)")
        p = Path(path)
        model = _load_model(p)
        if estimate is not None:  # a posterior the model cannot give is refused before the engine is built
            choose_estimate(estimate, model.card, card_noise(model.card, str(p)), str(p))
        engine = _select(model, chosen, threads, spin=spin)
        return cls(engine, model.card, tile=tile, source=str(p), estimate=estimate)

    @classmethod
    def from_network(
        cls,
        net: AnyNetwork,
        card: ModelCard | None = None,
        backend: BackendName | str = "auto",
        *,
        threads: int | None = None,
        tile: int | None = None,
        fold: bool | None = None,
        estimate: Estimate | str | None = None,
    ) -> Denoiser:
        """A denoiser for an in-memory network (as if loaded from its checkpoint). ``fold`` matters only for the
        PyTorch backends (see :class:`~emlive.export.torchengine.TorchEngine`): ``False`` runs the original
        ``BlindSpotNet`` with its ring masks (the benchmarks' eager reference)."""
        chosen = parse_backend(backend)
        card = card or ModelCard(network=net.config)
        model = _Model(None, "checkpoint", card, net=net.float().cpu().eval())
        engine = _select(model, chosen, threads, fold)
        return cls(engine, card, tile=tile, source="in-memory network", estimate=estimate)

    # --- properties ---------------------------------------------------------------------------------------------
    @property
    def frames(self) -> int:
        return self.card.frames

    @property
    def backend(self) -> str:
        """The backend actually used (never ``auto``)."""
        return self._engine.name

    @property
    def device(self) -> str:
        """Where it runs, e.g. ``cpu (2 threads, AVX512-VNNI, AMX)`` or ``cuda:0 NVIDIA H100``."""
        return self._engine.device

    def __repr__(self) -> str:
        return f"Denoiser({self.source!r}, backend={self.backend!r}, device={self.device!r}, frames={self.frames})"

    # --- validation ---------------------------------------------------------------------------------------------
    def _check_dtype(self, dtype: np.dtype[Any], what: str) -> None:
        check_pixel_type(dtype, what)

    def _stats(self, frame: np.ndarray, what: str) -> tuple[float, float]:
        try:
            mean, std = frame_stats(frame)
        except InputDataError:
            n_nan = int(np.count_nonzero(np.isnan(frame)))
            n_inf = int(np.count_nonzero(np.isinf(frame)))
            raise InputDataError(
                f"{what} contains {n_nan} NaN and {n_inf} inf values: frames must be finite to be normalised; "
                "replace them (e.g. np.nan_to_num(frame, nan=np.nanmedian(frame))) or mask them before denoising"
            ) from None
        return float(mean), float(std)

    def _validate_window(self, window: Any) -> np.ndarray:
        arr = window if isinstance(window, np.ndarray) else np.asarray(window)
        if arr.ndim != 3:
            raise InputDataError(
                f"window of shape {arr.shape}: expected 3 dimensions (N, H, W) with N={self.frames} frames for "
                f"this model; stack {self.frames} consecutive frames (or use denoise_movie for a whole movie)"
            )
        if arr.shape[0] != self.frames:
            raise InputDataError(
                f"window of {arr.shape[0]} frames: this model needs exactly N={self.frames} consecutive frames "
                f"(the center one is denoised); pass {self.frames} frames, or use denoise_movie, which builds the "
                "windows at the ends of a movie (emlive.core.windows.window_indices)"
            )
        if arr.shape[1] < 1 or arr.shape[2] < 1:
            raise InputDataError(f"window of shape {arr.shape}: frames must be at least 1 x 1 pixels")
        self._check_dtype(arr.dtype, "window")
        return arr

    # --- buffers ------------------------------------------------------------------------------------------------
    def _buffer(self, role: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array reused for every frame of that role and shape (a movie has one frame shape, and a
        tiled frame at most four tile shapes, so this stays small; it is emptied if a caller cycles sizes)."""
        key = (role, *shape)
        buf = self._buffers.get(key)
        if buf is None:
            if len(self._buffers) >= MAX_BUFFERS:
                self._buffers.clear()
            buf = self._buffers[key] = np.empty(shape, dtype=np.float32)
        return buf

    def _input_buffer(self, shape: tuple[int, int], role: str = "frame") -> np.ndarray:
        return self._buffer(role + "-in", (1, self.frames, *shape))

    def _output_buffer(self, shape: tuple[int, int], role: str = "frame") -> np.ndarray:
        return self._buffer(role + "-out", (1, self.channels, *shape))

    @staticmethod
    def _normalize_into(frame: np.ndarray, mean: float, std: float, out: np.ndarray) -> None:
        normalize_into(frame, mean, std, out)  # the arithmetic of core.normalize.zscore, per the pixel type

    # --- inference ----------------------------------------------------------------------------------------------
    def _plan(self, shape: tuple[int, int]) -> list[Tile]:
        plan = self._plans.get(shape)
        if plan is None:
            plan = plan_tiles(shape[0], shape[1], self.tile, self.card.network)
            self._plans = {shape: plan, **dict(list(self._plans.items())[-2:])}
            if len(plan) > 1:
                log.info(
                    "frames of %dx%d run as %d tiles of at most %d px (margin %d px)",
                    shape[0],
                    shape[1],
                    len(plan),
                    self.tile,
                    self.margin,
                )
        return plan

    def _run(self, x: np.ndarray) -> np.ndarray:
        """Network output (C, H, W) in z-units for a normalised (1, N, H, W) buffer (C = 1, or 2 for a
        ``head=gaussian`` model: the blind estimate and the log prior variance); a view of an internal buffer."""
        shape = (x.shape[2], x.shape[3])
        out = self._output_buffer(shape)
        plan = self._plan(shape)
        if len(plan) == 1:
            self._engine.infer(x, out)
            return out[0]
        for tile in plan:
            tin = self._input_buffer(tile.shape, "tile")
            tout = self._output_buffer(tile.shape, "tile")
            ys, xs = tile.y, tile.x
            np.copyto(tin, x[:, :, ys.start : ys.stop, xs.start : xs.stop])
            self._engine.infer(tin, tout)
            out[0, :, ys.core_start : ys.core_stop, xs.core_start : xs.core_stop] = tout[
                0,
                :,
                ys.core_start - ys.start : ys.core_stop - ys.start,
                xs.core_start - xs.start : xs.core_stop - xs.start,
            ]
        return out[0]

    def denoise_normalized(self, frames: np.ndarray) -> np.ndarray:
        """The network alone: (N, H, W) z-scored float32 frames -> (H, W) float32 in the center frame's z-units."""
        arr = self._validate_window(frames)
        with self._lock:
            buf = self._input_buffer((arr.shape[1], arr.shape[2]))
            np.copyto(buf[0], arr, casting="same_kind")
            return self._run(buf)[0].copy()

    @overload
    def denoise_window(self, window: np.ndarray, *, uncertainty: Literal[False] = False) -> np.ndarray: ...

    @overload
    def denoise_window(self, window: np.ndarray, *, uncertainty: Literal[True]) -> Denoised: ...

    @overload
    def denoise_window(self, window: np.ndarray, *, uncertainty: bool) -> np.ndarray | Denoised: ...

    def denoise_window(self, window: np.ndarray, *, uncertainty: bool = False) -> np.ndarray | Denoised:
        """Denoise the center frame of an (N, H, W) window in the detector's dtype; (H, W) float32, input units
        (the denoiser's :attr:`estimate`). ``uncertainty=True``: a :class:`~emlive.export.estimates.Denoised`
        (the frame and its std; needs a ``head=gaussian`` model)."""
        arr = self._validate_window(window)
        with self._lock:
            buf = self._input_buffer((arr.shape[1], arr.shape[2]))
            center = (0.0, 1.0)
            for i in range(self.frames):
                stats = self._stats(arr[i], f"frame {i} of the window")
                self._normalize_into(arr[i], *stats, buf[0, i])
                if i == self.frames // 2:
                    center = stats
            raw = arr[self.frames // 2]
            z = self._run(buf)
            return self._output(z, *center, lambda: raw.astype(np.float32), self.estimate, uncertainty)

    def _output(
        self,
        z: np.ndarray,
        mean: float,
        std: float,
        observed: Callable[[], np.ndarray],
        estimate: Estimate,
        uncertainty: bool,
    ) -> np.ndarray | Denoised:
        """The frame (or, ``uncertainty``, the :class:`Denoised`) from the network's (C, H, W) output in the
        center frame's z-units: the one place of every window, offline and live (:mod:`emlive.export.estimates`).
        ``observed()``: the raw center frame as float32. The blind estimate without uncertainty is one
        denormalisation, as for every plain model."""
        if estimate is Estimate.blind and not uncertainty:
            return self._denormalize(z[0], mean, std)
        needs_variance_head(self.card, self.source)
        found = estimate_frame(
            z, mean, std, observed, estimate, self.noise, "the center frame of the window", self.calibration
        )
        return found if uncertainty else found.mean

    def stream(
        self,
        shape: tuple[int, int],
        dtype: Any = None,
        *,
        what: str = "frame",
        estimate: Estimate | str | None = None,
    ) -> FrameStream:
        """A :class:`FrameStream` for frames of ``shape`` (and of ``dtype`` only, when given): push each frame once,
        denoise windows of its frames. ``what`` names the frames in errors (``"movie frame"`` -> "movie frame 7");
        ``estimate`` overrides the denoiser's (checked the same way)."""
        return FrameStream(self, shape, dtype, what=what, estimate=estimate)

    def check_estimate(self, estimate: Estimate | str | None) -> Estimate:
        """The denoiser's estimate, or ``estimate`` checked against this model (ConfigError naming the fix)."""
        if estimate is None:
            return self.estimate
        return choose_estimate(estimate, self.card, self.noise, self.source)

    @staticmethod
    def _denormalize(z: np.ndarray, mean: float, std: float) -> np.ndarray:
        return denormalize(z, mean, std, "the center frame of the window")

    @overload
    def denoise_movie(
        self,
        movie: Any,
        start: int = 0,
        stop: int | None = None,
        *,
        uncertainty: Literal[False] = False,
        estimate: Estimate | str | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]: ...

    @overload
    def denoise_movie(
        self,
        movie: Any,
        start: int = 0,
        stop: int | None = None,
        *,
        uncertainty: Literal[True],
        estimate: Estimate | str | None = None,
    ) -> Iterator[tuple[int, Denoised]]: ...

    def denoise_movie(
        self,
        movie: Any,
        start: int = 0,
        stop: int | None = None,
        *,
        uncertainty: bool = False,
        estimate: Estimate | str | None = None,
    ) -> Iterator[tuple[int, np.ndarray]] | Iterator[tuple[int, Denoised]]:
        """Denoise frames ``start``..``stop - 1`` of a (T, H, W) movie, yielding ``(t, frame)`` in order
        (``uncertainty=True``: ``(t, Denoised)``, the frame and its std; ``estimate`` overrides the denoiser's).

        ``movie``: anything with ``len()`` (or ``.shape``) and ``.frame(t)`` or ``[t]`` (a NumPy array, an
        :class:`emlive.core.readers.Movie`, a memory map). Windows come from
        :func:`emlive.core.windows.window_indices` (at the ends, neighbours mirrored about the center frame, never
        the center itself; the empty slots of a single-frame movie are zeros in normalised units). Each frame is
        read and normalised once into a :class:`FrameStream` (a ring of the last N frames); the movie is never loaded
        whole.
        """
        length = self._movie_length(movie)
        stop = length if stop is None else stop
        if not 0 <= start < stop <= length:
            raise InputDataError(
                f"frames start={start}, stop={stop} of a movie of T={length} frames: need 0 <= start < stop <= T"
            )
        read: Callable[[int], Any] = movie.frame if callable(getattr(movie, "frame", None)) else movie.__getitem__
        chosen = self.check_estimate(estimate)
        if uncertainty:
            needs_variance_head(self.card, self.source)
        return self._movie_iter(read, length, start, stop, chosen, uncertainty)

    @staticmethod
    def _movie_length(movie: Any) -> int:
        try:
            return len(movie)
        except TypeError:
            shape = getattr(movie, "shape", None)
            if shape is not None and len(shape) == 3:
                return int(shape[0])
        raise InputDataError(
            f"movie of type {type(movie).__name__}: expected a (T, H, W) array-like with len() or .shape; pass a "
            "NumPy array or an emlive.core.readers.Movie"
        )

    def _movie_iter(
        self, read: Callable[[int], Any], length: int, start: int, stop: int, estimate: Estimate, uncertainty: bool
    ) -> Iterator[tuple[int, Any]]:
        n = self.frames
        stream: FrameStream | None = None
        shape: tuple[int, int] | None = None
        for t in range(start, stop):
            indices = window_indices(t, n, length)
            needed = {i for i in indices if i is not None}
            for idx in sorted(i for i in needed if stream is None or not stream.holds(i)):  # in file order
                arr = self._read_movie_frame(read, idx, shape)
                shape = (arr.shape[0], arr.shape[1])
                if stream is None:  # each frame's type checked on its own
                    stream = self.stream(shape, what="movie frame", estimate=estimate)
                stream.push(arr, idx)
            assert stream is not None
            yield t, stream.denoise(indices, uncertainty=uncertainty)

    def _read_movie_frame(self, read: Callable[[int], Any], idx: int, shape: tuple[int, int] | None) -> np.ndarray:
        """Frame ``idx`` of a movie as an (H, W) array of a supported dtype, the size of the others (``shape``)."""
        frame = read(idx)
        arr = frame if isinstance(frame, np.ndarray) else np.asarray(frame)
        if arr.ndim != 2:
            raise InputDataError(
                f"movie frame {idx} has shape {arr.shape}: expected an (H, W) frame; pass a (T, H, W) movie"
            )
        if shape is not None and arr.shape != shape:
            raise InputDataError(
                f"movie frame {idx} is {arr.shape[0]}x{arr.shape[1]}, the frames read before it are "
                f"{shape[0]}x{shape[1]}: all frames of a movie must have the same size"
            )
        self._check_dtype(arr.dtype, f"movie frame {idx}")
        return arr

    def close(self) -> None:
        """Release the engine (sessions, GPU memory) and the buffers."""
        self._engine.close()
        self._buffers.clear()

    def __enter__(self) -> Denoiser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameStream:
    """Frames of one movie or live run, each validated and normalised once into a float32 ring, and the windows
    of those frames denoised from the ring (:meth:`Denoiser.stream` makes one).

    >>> stream = den.stream((512, 512), np.uint16)
    >>> stream.push(frame, t)                                   # validated and z-scored once, into plane t % N
    >>> out = stream.denoise(window_indices(c, den.frames, T))  # (H, W) float32, the center frame's units

    The ring is the model's input laid out twice over: 2N-1 float32 planes, frame i normalised into plane i % N
    (its mean and std kept for the way back), so the window of N consecutive frames starting at frame s is the
    contiguous view of planes s % N .. s % N + N - 1; the planes past N - 1 are copies of the ones N below,
    written only when a window needs them (at most one copy per frame). Any other window (the ends of a movie or
    run, mirrored frames, empty slots) is gathered into a scratch input, empty slots as zeros (the frame mean in
    normalised units). The ring holds the last frame pushed of each residue mod N, so any window the
    :func:`~emlive.core.windows.window_indices` rule gives is denoised from frames pushed once; a window whose
    frame the ring no longer holds is refused, naming the frame. Like its :class:`Denoiser`, not thread-safe.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        shape: tuple[int, int],
        dtype: Any = None,
        *,
        what: str = "frame",
        estimate: Estimate | str | None = None,
    ) -> None:
        h, w = int(shape[0]), int(shape[1])
        if h < 1 or w < 1:
            raise InputDataError(f"stream of {h}x{w} frames: frames must be at least 1 x 1 pixels")
        self.dtype: np.dtype[Any] | None = None if dtype is None else np.dtype(dtype)
        if self.dtype is not None:
            check_pixel_type(self.dtype, f"stream of {what}s")
        self.shape = (h, w)
        self.frames = n = denoiser.frames
        self._den = denoiser
        self._what = what
        self._ring = np.zeros((1, 2 * n - 1, h, w), dtype=np.float32)
        self._scratch: np.ndarray | None = None
        self._held: list[int | None] = [None] * (2 * n - 1)
        self._stats: list[tuple[float, float]] = [(0.0, 1.0)] * n
        self.estimate = denoiser.check_estimate(estimate)
        # the posterior needs each center frame's raw values: a float32 copy of each pushed frame (posterior only)
        self._raw = np.zeros((n, h, w), dtype=np.float32) if self.estimate is Estimate.posterior else None
        self._next = 0
        self.normalised = 0  # frames normalised so far (each pushed frame once)

    def holds(self, index: int) -> bool:
        """Whether frame ``index`` is in the ring (pushed, and not replaced by a later frame)."""
        return self._held[index % self.frames] == index

    def reset(self) -> None:
        """Forget every frame (a new run starts: its frames are never mixed with the old run's)."""
        self._held = [None] * len(self._held)
        self._next = 0

    def push(self, frame: Any, index: int | None = None) -> int:
        """Validate frame ``index`` (default: the one after the last pushed) and normalise it into the ring once;
        returns its index. InputDataError naming the frame for a wrong size, pixel type or NaN/inf values."""
        arr = frame if isinstance(frame, np.ndarray) else np.asarray(frame)
        idx = self._next if index is None else int(index)
        what = f"{self._what} {idx}"
        if idx < 0:
            raise InputDataError(f"{what}: frame indices count from 0; push frames with index >= 0")
        if arr.shape != self.shape:
            raise InputDataError(
                f"{what} has shape {arr.shape}, this stream takes {self.shape[0]}x{self.shape[1]} frames: all "
                "frames of a movie or run must have the same size; open a new stream (Denoiser.stream) for another"
            )
        if self.dtype is not None and arr.dtype != self.dtype:
            raise InputDataError(
                f"{what} has dtype {arr.dtype}, this stream takes {self.dtype} frames; open a new stream "
                "(Denoiser.stream) for frames of another pixel type"
            )
        if self.dtype is None:
            check_pixel_type(arr.dtype, what)
        slot = idx % self.frames
        stats = self._den._stats(arr, what)
        self._held[slot] = None  # (a failure below leaves the plane marked empty)
        if slot + self.frames < len(self._held):
            self._held[slot + self.frames] = None  # its copy plane held an older frame of this residue
        normalize_into(arr, stats[0], stats[1], self._ring[0, slot])
        if self._raw is not None:
            np.copyto(self._raw[slot], arr, casting="unsafe")  # = arr.astype(float32), as denoise_window reads it
        self._held[slot] = idx
        self._stats[slot] = stats
        self._next = idx + 1
        self.normalised += 1
        return idx

    @overload
    def denoise(self, indices: Sequence[int | None], *, uncertainty: Literal[False] = False) -> np.ndarray: ...

    @overload
    def denoise(self, indices: Sequence[int | None], *, uncertainty: Literal[True]) -> Denoised: ...

    @overload
    def denoise(self, indices: Sequence[int | None], *, uncertainty: bool) -> np.ndarray | Denoised: ...

    def denoise(self, indices: Sequence[int | None], *, uncertainty: bool = False) -> np.ndarray | Denoised:
        """Denoise the center frame of the window of frames ``indices`` (network order; ``None``: an empty slot)
        from the ring: (H, W) float32 in the center frame's units, a new array (``uncertainty=True``: a
        :class:`~emlive.export.estimates.Denoised`, the frame and its std)."""
        n = self.frames
        if len(indices) != n or indices[n // 2] is None:
            raise InputDataError(
                f"window {list(indices)}: this model needs {n} frame indices with a frame at the center (slot "
                f"{n // 2}); build it with emlive.core.windows.window_indices"
            )
        missing = [i for i in indices if i is not None and not self.holds(i)]
        if missing:
            raise InputDataError(
                f"window {list(indices)}: {self._what} {missing[0]} is not in the stream (it holds the last frame "
                f"pushed of each index mod {n}); push every frame of a window before denoising it, in order"
            )
        center = indices[n // 2]
        assert center is not None
        mean, std = self._stats[center % n]
        with self._den._lock:  # (the denoiser's buffers; this stream's own ring is its caller's)
            z = self._den._run(self._input(indices))
            return self._den._output(z, mean, std, lambda: self._observed(center), self.estimate, uncertainty)

    def _observed(self, index: int) -> np.ndarray:
        """The raw frame ``index`` as float32 (kept for the posterior only)."""
        if self._raw is None:
            raise RuntimeError("the raw frames are kept for the posterior estimate only")  # unreachable
        return self._raw[index % self.frames]

    def _input(self, indices: Sequence[int | None]) -> np.ndarray:
        """The (1, N, H, W) normalised window: a view of the ring when its frames are consecutive, else gathered."""
        n = self.frames
        first = indices[0]
        if first is not None and all(i == first + k for k, i in enumerate(indices)):
            start = first % n
            for plane in range(max(start, n), start + n):  # planes past N - 1: copies, refreshed when stale
                wanted = first + plane - start
                if self._held[plane] != wanted:
                    np.copyto(self._ring[0, plane], self._ring[0, plane - n])
                    self._held[plane] = wanted
            return self._ring[:, start : start + n]
        if self._scratch is None:
            self._scratch = np.empty((1, n, *self.shape), dtype=np.float32)
        for k, i in enumerate(indices):
            if i is None:
                self._scratch[0, k] = 0.0
            else:
                np.copyto(self._scratch[0, k], self._ring[0, i % n])
        return self._scratch
