"""Inference engines behind :class:`~emlive.export.runtime.Denoiser`: ONNX Runtime (CPU, CUDA, TensorRT EP) and
PyTorch (CPU, CUDA; :class:`~emlive.export.torchengine.TorchEngine`, the one engine that needs torch, in its own
module so that this one imports without it). The native TensorRT engine lives in :mod:`emlive.export.tensorrt`.

An engine runs the network on one already-normalised window: ``infer(x, out)`` with ``x`` a C-contiguous float32
``(1, N, h, w)`` array and ``out`` a float32 ``(1, 1, h, w)`` array it writes into. The caller owns both buffers and
reuses them for every frame of a given shape.

ONNX Runtime on the CPU is tuned for throughput of one window at a time:

* graph optimisation level ALL (constant folding, GELU fusion and the NCHWc blocked layout with Conv+Add fusion),
  sequential execution, intra-op threads = physical cores (``threads`` overrides), the CPU memory arena on and
  memory patterns off: with patterns ONNX Runtime plans one block for all intermediates, which doubled the peak
  memory (3.3 GB instead of 1.7 GB at 512 x 512 for the default model) and page-faulted it anew on every run,
  for no speed gain. Peak memory of the default model: about 1.7 GB for a 512 x 512 frame, 6 GB for 1024 x 1024
  (the default CPU tile; pass a smaller ``tile`` to bound it);
* **one session per frame shape**, with the symbolic height/width fixed through free-dimension overrides. With
  known shapes the NCHWc optimiser can prove that the summed read-outs have equal shapes and fuses each addition
  into its convolution; with symbolic shapes it inserts reshapes and separate additions (about 10-15 % slower on
  the default model at 512 x 512). Creating a session takes about 50 ms (so the optimised model is not saved to
  disk); sessions are kept per shape (a few);
* inputs and outputs are bound once per buffer pair with IOBinding, so a run copies nothing;
* intra-op threads spin-wait for work between runs unless ``spin=False``, which a live service paced by a detector
  passes. ``python -m emlive.bench.ort_spin`` (CPU-live student, 512 x 512, 2 threads, 2 quiet cores), runs paced at
  25 frames/s: 62 ms of CPU per frame spinning and 44 ms not (-29 %) at the same time per run (22 ms); back to
  back, spinning is slightly faster (20.6 vs 21.7 ms; 24 vs 32 ms in an earlier ad-hoc run).

Measured on the development machine (2 cores of a Xeon with AVX512-VNNI, AVX512-BF16 and AMX; default model,
width 64, 512 x 512, 2 threads, other processes sharing the cores, medians of interleaved runs):

* ``BlindSpotNet.fused()`` exported as is, symbolic shapes: ~1010 ms; the same with the frame shape fixed:
  ~940 ms; the folded graph (:mod:`emlive.export.folding`) with the shape fixed: ~820 ms. PyTorch eager on the same
  weights: ~3000 ms when the machine is quiet, so ONNX Runtime is ~3.6x faster. Its convolutions already run
  near the float32 FMA peak of the two cores (about 190 GMAC/s), so float32 cannot go much further.
* int8 (``onnxruntime.quantization.quantize_static``, QDQ, per-channel weights, MinMax calibration on
  real-looking windows): rejected. Quantising the whole graph is 2.7x *slower* (quantised GELU arithmetic);
  quantising only the convolutions (GELU stays float) is ~10 % slower: one QLinearConv alone is 2.6x faster than a
  float32 convolution, but the quantise/dequantise around every GELU and residual addition costs more. Its
  quality cost on a trained model (simulated movie, paper PSNR) was nil (+0.02 to +0.06 dB; 39-41 dB agreement
  with float32), so speed alone decided.
* float16 ONNX on the CPU: ~1.6x slower than float32 (no fast x86 float16 kernels in ONNX Runtime).
* bfloat16 through PyTorch autocast + channels-last (oneDNN on AMX): 2.5x faster than eager float32, still slower
  than ONNX Runtime float32.
* bfloat16 through OpenVINO on AMX: ~270 ms, 3.3x faster than ONNX Runtime float32 (11.8x eager), paper PSNR
  -0.01 dB on a trained model, 59 dB agreement with float32, max error 2.5e-3 of the output range. Kept as the
  optional ``openvino_cpu`` backend (:class:`OpenVinoEngine`), used by ``auto`` on the CPU when the ``openvino``
  package is installed (it is not an emlive dependency).

The CUDA and TensorRT execution providers (``OrtEngine`` with ``CUDAExecutionProvider`` or
``TensorrtExecutionProvider``) and ``TorchEngine`` on CUDA were never run: the development machine has no GPU.
"""

from __future__ import annotations

import abc
import functools
import importlib.util
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from emlive.core.errors import TRAIN_INSTALL_HINT, ModelFileError
from emlive.export.errors import GPU_INSTALL_HINT, BackendUnavailableError
from emlive.export.onnxmeta import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

DEFAULT_TILE_CPU = 1024
DEFAULT_TILE_GPU = 2048
MAX_SESSIONS = 4
MAX_BINDINGS_PER_SESSION = 16  # buffer pairs bound per session (a FrameStream's 2N-1 ring views, scratch, tiles); LRU


class InferenceEngine(abc.ABC):
    """Runs the network on normalised windows; see the module docstring for the buffer contract."""

    name: str = ""
    device: str = ""
    default_tile: int = DEFAULT_TILE_CPU
    max_tile: int | None = None

    @abc.abstractmethod
    def infer(self, x: np.ndarray, out: np.ndarray) -> None:
        """Denoise ``x`` (1, N, h, w) float32 z-scored into ``out`` (1, 1, h, w) float32 (center-frame z-units)."""

    def close(self) -> None:  # noqa: B027 - engines without resources need nothing
        """Release sessions and device memory."""


# --- the machine ---------------------------------------------------------------------------------------------------
@functools.cache
def _cpuinfo() -> tuple[int, frozenset[str]]:
    """(physical cores available to this process, CPU flags) from /proc/cpuinfo; falls back to os.cpu_count()."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    cores: set[tuple[str, str]] = set()
    flags: frozenset[str] = frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return max(1, len(allowed)), flags
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        if int(fields.get("processor", "-1")) not in allowed:
            continue
        cores.add((fields.get("physical id", "0"), fields.get("core id", fields.get("processor", "0"))))
        if not flags and "flags" in fields:
            flags = frozenset(fields["flags"].split())
    return max(1, len(cores) or len(allowed)), flags


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads not counted)."""
    return _cpuinfo()[0]


def cpu_features() -> str:
    """The vector/matrix extensions that matter for inference, e.g. ``AVX512-VNNI, AMX``."""
    flags = _cpuinfo()[1]
    names = []
    if "avx512_vnni" in flags:
        names.append("AVX512-VNNI")
    elif "avx512f" in flags:
        names.append("AVX512")
    elif "avx2" in flags:
        names.append("AVX2")
    if "avx512_bf16" in flags:
        names.append("AVX512-BF16")
    if "amx_tile" in flags:
        names.append("AMX")
    return ", ".join(names) or "no AVX2"


def cpu_description(threads: int) -> str:
    return f"cpu ({threads} thread{'s' if threads != 1 else ''}, {cpu_features()})"


def cuda_unavailable_reason() -> str | None:
    """None when PyTorch sees a CUDA device, else why not (also when torch is not installed: the light install)."""
    if importlib.util.find_spec("torch") is None:
        return f"PyTorch, which finds the CUDA devices, is not installed; {TRAIN_INSTALL_HINT}"
    from emlive.export.torchengine import torch_cuda_unavailable_reason

    return torch_cuda_unavailable_reason()


def cuda_description(index: int = 0) -> str:
    if importlib.util.find_spec("torch") is None:
        return f"cuda:{index}"
    from emlive.export.torchengine import torch_cuda_description

    return torch_cuda_description(index)


def ort_provider_unavailable_reason(provider: str) -> str | None:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if provider in available:
        return None
    return f"onnxruntime {ort.__version__} has no {provider} (available: {', '.join(available)})"


# --- ONNX Runtime ----------------------------------------------------------------------------------------------------
class OrtEngine(InferenceEngine):
    """ONNX Runtime with one execution provider (CPU, CUDA or TensorRT); see the module docstring."""

    def __init__(
        self,
        model: bytes,
        provider: str,
        *,
        name: str,
        threads: int | None = None,
        provider_options: dict[str, Any] | None = None,
        source: str = "model",
        spin: bool = True,
    ) -> None:
        import onnxruntime as ort

        self._spin = spin
        self._ort = ort
        self._model = model
        self._provider = provider
        self._provider_options = provider_options or {}
        self._source = source
        self._cpu = provider == "CPUExecutionProvider"
        self.threads = threads if threads is not None else physical_cores()
        self.name = name
        self._sessions: OrderedDict[tuple[int, int], Any] = OrderedDict()
        # IOBindings per session: a binding belongs to the session that made it, so they live and die with it
        # (keyed by the session object, never by id(): a new session can reuse an evicted one's id)
        self._bindings: dict[Any, OrderedDict[tuple[int, ...], Any]] = {}
        if self._cpu:
            self.device = cpu_description(self.threads)
            self.default_tile = DEFAULT_TILE_CPU
        else:
            self.device = cuda_description()
            self.default_tile = DEFAULT_TILE_GPU
        self._session((64, 64))  # fail now, not at the first frame, when the provider cannot start

    def _options(self, shape: tuple[int, int] | None) -> Any:
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = True
        options.enable_mem_pattern = False  # halves peak memory at equal speed (see the module docstring)
        options.log_severity_level = 3
        if not self._spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if shape is not None:
            options.add_free_dimension_override_by_name("batch", 1)
            options.add_free_dimension_override_by_name("height", shape[0])
            options.add_free_dimension_override_by_name("width", shape[1])
        return options

    def _session(self, shape: tuple[int, int]) -> Any:
        key = shape if self._cpu else (0, 0)
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
            return session
        ort = self._ort
        providers: list[Any] = [(self._provider, self._provider_options)]
        if self._provider != "CPUExecutionProvider":
            providers.append("CPUExecutionProvider")
        try:
            session = ort.InferenceSession(
                self._model, self._options(shape if self._cpu else None), providers=providers
            )
        except Exception as exc:  # onnxruntime raises its own pybind exception types
            if self._cpu:
                raise ModelFileError(
                    f"{self._source}: ONNX Runtime cannot load the model ({type(exc).__name__}: {exc}); "
                    "re-export it with `emlive export`"
                ) from exc
            raise BackendUnavailableError(
                f"backend {self.name}: ONNX Runtime could not start {self._provider} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}); {GPU_INSTALL_HINT}"
            ) from exc
        used = session.get_providers()
        if not used or used[0] != self._provider:
            raise BackendUnavailableError(
                f"backend {self.name}: ONNX Runtime fell back to {used[0] if used else 'nothing'} instead of "
                f"{self._provider} (missing CUDA/cuDNN/TensorRT libraries or no GPU); {GPU_INSTALL_HINT}"
            )
        self._sessions[key] = session
        self._bindings[session] = OrderedDict()
        while len(self._sessions) > MAX_SESSIONS:
            _, evicted = self._sessions.popitem(last=False)
            self._bindings.pop(evicted, None)
        return session

    def infer(self, x: np.ndarray, out: np.ndarray) -> None:
        h, w = x.shape[-2], x.shape[-1]
        session = self._session((h, w))
        bindings = self._bindings[session]
        key = (x.ctypes.data, out.ctypes.data, *x.shape, *out.shape)
        binding = bindings.get(key)
        if binding is None:
            binding = session.io_binding()
            binding.bind_cpu_input(INPUT_NAME, x)
            binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
            bindings[key] = binding
            while len(bindings) > MAX_BINDINGS_PER_SESSION:
                bindings.popitem(last=False)
        else:
            bindings.move_to_end(key)
        session.run_with_iobinding(binding)

    def close(self) -> None:
        self._bindings.clear()
        self._sessions.clear()


# --- OpenVINO ------------------------------------------------------------------------------------------------------
def openvino_unavailable_reason() -> str | None:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "the openvino package is not installed (optional: pip install openvino)"
    return None


class OpenVinoEngine(InferenceEngine):
    """OpenVINO on the CPU: bfloat16 on CPUs with AMX or AVX512-BF16 (its ``INFERENCE_PRECISION_HINT``), else
    float32. Optional (``pip install openvino``; not a dependency of emlive). One compiled model per frame shape
    (about 0.1 s each), the output written straight into the caller's buffer."""

    def __init__(self, model: bytes, *, threads: int | None = None, source: str = "model") -> None:
        import openvino as ov

        self._ov = ov
        self._core = ov.Core()
        self._model = model
        self._source = source
        self.threads = threads if threads is not None else physical_cores()
        caps = self._core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        self.precision = "bf16" if "BF16" in caps else "f32"
        self.name = "openvino_cpu"
        self.device = f"{cpu_description(self.threads)[:-1]}, OpenVINO {self.precision})"
        self.default_tile = DEFAULT_TILE_CPU
        self._compiled: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self._requests: OrderedDict[tuple[int, ...], Any] = OrderedDict()
        self._request((64, 64), None)

    def _request(self, shape: tuple[int, int], out: np.ndarray | None) -> Any:
        import io

        compiled = self._compiled.get(shape)
        if compiled is None:
            try:
                model = self._core.read_model(io.BytesIO(self._model))
                model.reshape({INPUT_NAME: [1, model.inputs[0].get_partial_shape()[1].get_length(), *shape]})
                compiled = self._core.compile_model(
                    model,
                    "CPU",
                    {
                        "INFERENCE_PRECISION_HINT": self.precision,
                        "INFERENCE_NUM_THREADS": str(self.threads),
                        "PERFORMANCE_HINT": "LATENCY",
                    },
                )
            except RuntimeError as exc:
                raise ModelFileError(f"{self._source}: OpenVINO cannot compile the model ({exc})") from exc
            self._compiled[shape] = compiled
            while len(self._compiled) > MAX_SESSIONS:
                self._compiled.popitem(last=False)
        if out is None:
            return compiled.create_infer_request()
        key = (id(compiled), out.ctypes.data, *out.shape)
        request = self._requests.get(key)
        if request is None:
            request = compiled.create_infer_request()
            request.set_output_tensor(0, self._ov.Tensor(out, shared_memory=True))
            self._requests[key] = request
            while len(self._requests) > 2 * MAX_SESSIONS:
                self._requests.popitem(last=False)
        return request

    def infer(self, x: np.ndarray, out: np.ndarray) -> None:
        request = self._request((x.shape[-2], x.shape[-1]), out)
        request.infer({0: x}, share_inputs=True)

    def close(self) -> None:
        self._requests.clear()
        self._compiled.clear()
