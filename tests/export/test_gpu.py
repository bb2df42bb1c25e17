"""GPU paths: ONNX Runtime CUDA/TensorRT providers, PyTorch CUDA and native TensorRT engines.

Skipped (with the reason) where CUDA, the GPU build of ONNX Runtime or TensorRT is missing; the development
machine has none of them, so these tests have not been run there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from emlive.export.onnx_export import FP16_RELATIVE_BOUND, FP32_RELATIVE_BOUND
from emlive.export.runtime import BackendName, Denoiser, backend_unavailable_reason

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device (torch.cuda.is_available() is False)"
)


def _needs(backend: str) -> None:
    reason = backend_unavailable_reason(BackendName(backend))
    if reason:
        pytest.skip(f"{backend} unavailable: {reason}")


def _agree(got: np.ndarray, ref: np.ndarray, rel: float) -> None:
    tol = rel * float(np.ptp(ref)) + 4 * float(np.finfo(np.float32).eps) * float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) <= tol


@needs_cuda
@pytest.mark.parametrize(
    ("backend", "rel"),
    [("torch_cuda", FP32_RELATIVE_BOUND), ("onnx_cuda", 1e-3), ("onnx_tensorrt", FP16_RELATIVE_BOUND)],
)
def test_gpu_backends_match_the_cpu(full, reference, window, backend: str, rel: float) -> None:
    _needs(backend)
    win = window(5, 150, 170, seed=7)
    den = Denoiser.load(full.ckpt, backend)
    assert den.backend == backend and den.device.startswith("cuda:0")
    _agree(den.denoise_window(win), reference(full.net, win), rel)


@needs_cuda
def test_tensorrt_export_engine_sidecar_and_cache(full, reference, window, tmp_path: Path) -> None:
    _needs("tensorrt")
    from emlive.export.onnx_export import export_onnx
    from emlive.export.tensorrt import ShapeProfile, export_tensorrt

    onnx_path = export_onnx(full.ckpt, tmp_path / "m.onnx").path
    result = export_tensorrt(full.net, full.card, onnx_path, profile=ShapeProfile(32, 256, 512))
    assert result.engine.is_file() and result.sidecar.is_file() and result.cached.is_file()
    assert all(p.passed for p in result.parity)
    again = export_tensorrt(full.net, full.card, onnx_path, profile=ShapeProfile(32, 256, 512), check=False)
    assert again.cached == result.cached  # built once, then cached
    den = Denoiser.load(result.engine)
    assert den.backend == "tensorrt" and den.tile <= 512
    win = window(5, 700, 650, seed=8)  # larger than the profile: tiled
    _agree(den.denoise_window(win), reference(full.net, win), FP16_RELATIVE_BOUND)
    result.sidecar.unlink()
    assert Denoiser.load(result.engine).card == full.card  # card found through the engine cache
