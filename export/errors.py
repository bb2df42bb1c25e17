"""Errors of the export component; all are :class:`~emlive.core.errors.EmliveError`, so the CLI prints one line."""

from __future__ import annotations

from emlive.core.errors import EmliveError

GPU_INSTALL_HINT = "install the GPU extras with `pip install emlive[gpu]` on a machine with an NVIDIA GPU and driver"


class BackendUnavailableError(EmliveError):
    """An inference backend cannot run here: CUDA, a GPU build of ONNX Runtime or TensorRT is missing."""


class ParityError(EmliveError):
    """An exported model does not reproduce the PyTorch network within the stated bound."""
