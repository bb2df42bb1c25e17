"""The PyTorch inference engine (CPU, CUDA) behind :class:`~emlive.export.runtime.Denoiser`'s ``torch_cpu`` and
``torch_cuda`` backends, and PyTorch's view of the CUDA devices. Needs torch (the ``train`` extra); the runtime and
:mod:`emlive.export.backends` import it only when a torch backend or a CUDA check is asked for."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from emlive.core.modelcard import ModelCard
from emlive.core.network import BlindSpotNet
from emlive.core.networks import AnyNetwork
from emlive.export.backends import DEFAULT_TILE_CPU, DEFAULT_TILE_GPU, InferenceEngine, cpu_description
from emlive.export.errors import GPU_INSTALL_HINT, BackendUnavailableError
from emlive.export.folding import fold_network


def torch_cuda_unavailable_reason() -> str | None:
    """None when PyTorch sees a CUDA device, else why not."""
    if torch.cuda.is_available():
        return None
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
    return f"PyTorch {torch.__version__} ({build}) sees no CUDA device"


def torch_cuda_description(index: int = 0) -> str:
    if torch.cuda.is_available():
        return f"cuda:{index} {torch.cuda.get_device_name(index)}"
    return f"cuda:{index}"


# --- PyTorch ---------------------------------------------------------------------------------------------------------
class TorchEngine(InferenceEngine):
    """PyTorch eager on CPU or CUDA.

    ``fold=None`` (default) runs ``BlindSpotNet.fused()`` on the CPU (plain convolutions, no mask multiply; the
    folded network of :mod:`emlive.export.folding` was ~15 % *slower* in PyTorch on the CPU, whose bilinear
    upsampling of the 288-channel folded maps costs more than the multiply-adds it saves) and the folded network on
    CUDA (fewer multiply-adds and less memory; never run here). ``fold=True`` forces the folded network,
    ``fold=False`` runs ``BlindSpotNet`` itself with its ring masks (the benchmarks' eager reference).
    """

    def __init__(
        self,
        net: AnyNetwork,
        card: ModelCard,
        device: str,
        *,
        threads: int | None = None,
        fold: bool | None = None,
        name: str | None = None,
    ) -> None:
        if device.startswith("cuda"):
            reason = torch_cuda_unavailable_reason()
            if reason:
                raise BackendUnavailableError(f"backend torch_cuda: {reason}; {GPU_INSTALL_HINT}")
        if threads is not None and not device.startswith("cuda"):
            torch.set_num_threads(threads)  # process-wide: PyTorch has no per-module thread count
        cuda = device.startswith("cuda")
        module: nn.Module
        if not isinstance(net, BlindSpotNet):
            module = net.float()  # a student: plain convolutions, nothing to fold
        elif fold is None:
            module = fold_network(net) if cuda else net.float().fused()
        else:
            module = fold_network(net) if fold else net.float()
        self._module = module.to(device).eval()
        self._device = torch.device(device)
        self.card = card
        self.name = name or ("torch_cuda" if cuda else "torch_cpu")
        if cuda:
            self.device = torch_cuda_description(self._device.index or 0)
            self.default_tile = DEFAULT_TILE_GPU
        else:
            self.device = cpu_description(torch.get_num_threads())
            self.default_tile = DEFAULT_TILE_CPU

    def infer(self, x: np.ndarray, out: np.ndarray) -> None:
        with torch.inference_mode():
            xt = torch.from_numpy(x)
            if self._device.type != "cpu":
                xt = xt.to(self._device, non_blocking=True)
            y = self._module(xt)
            torch.from_numpy(out).copy_(y)

    def close(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.empty_cache()
