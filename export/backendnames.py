"""The inference backends by name: the one registry that the runtime and every command's help read.

:class:`BackendName` is the enum the runtime (:mod:`emlive.export.runtime`, which re-exports it) selects by;
:data:`BACKENDS` says for each what it is, where it runs and what it needs. :func:`backend_help` writes the
``--backend``/``--backends`` help of ``emlive serve``, ``denoise``, ``bench`` and ``export`` from it, so a new
backend (a member here plus its registry entry; a test checks there is one per member) shows up in every help.

Light on purpose (standard library only): the command-line modules import it when they are built, before any
model or runtime is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class BackendName(str, Enum):
    """Where the network runs. ``auto`` picks TensorRT > CUDA > CPU (see :mod:`emlive.export.runtime`)."""

    auto = "auto"
    tensorrt = "tensorrt"
    onnx_tensorrt = "onnx_tensorrt"
    onnx_cuda = "onnx_cuda"
    onnx_cpu = "onnx_cpu"
    openvino_cpu = "openvino_cpu"
    torch_cuda = "torch_cuda"
    torch_cpu = "torch_cpu"


@dataclass(frozen=True)
class BackendInfo:
    """One backend: a one-line description, the device it runs on, and what it needs to be available."""

    description: str
    device: str
    needs: str


BACKENDS: dict[BackendName, BackendInfo] = {
    BackendName.auto: BackendInfo("the first available of TensorRT > CUDA > CPU for the model file", "any", "nothing"),
    BackendName.tensorrt: BackendInfo(
        "TensorRT engine, built once from the ONNX and cached", "cuda", "an NVIDIA GPU and the tensorrt package"
    ),
    BackendName.onnx_tensorrt: BackendInfo(
        "ONNX Runtime with its TensorRT provider", "cuda", "an NVIDIA GPU and onnxruntime-gpu with TensorRT"
    ),
    BackendName.onnx_cuda: BackendInfo("ONNX Runtime on CUDA", "cuda", "an NVIDIA GPU and onnxruntime-gpu"),
    BackendName.onnx_cpu: BackendInfo("ONNX Runtime, float32", "cpu", "nothing (the default on a CPU)"),
    BackendName.openvino_cpu: BackendInfo(
        "OpenVINO, bfloat16 where the CPU has AMX/AVX512-BF16", "cpu", "the optional openvino package"
    ),
    BackendName.torch_cuda: BackendInfo("PyTorch eager on CUDA", "cuda", "an NVIDIA GPU and a checkpoint (.ckpt/.pt)"),
    BackendName.torch_cpu: BackendInfo("PyTorch eager (slowest)", "cpu", "a checkpoint (.ckpt/.pt)"),
}


def backend_help(lead: str, *, with_auto: bool = True) -> str:
    """``lead`` followed by every registered backend: ``name`` (device: description; needs ...)."""
    entries = [
        f"{name.value} ({info.device}: {info.description}; needs {info.needs})"
        for name, info in BACKENDS.items()
        if with_auto or name is not BackendName.auto
    ]
    return f"{lead} {'; '.join(entries)}."
