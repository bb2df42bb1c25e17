"""Small random-weight models shared by the export tests (exported once per session: the folder stays fast)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from emlive.core.modelcard import ModelCard, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.normalize import zscore
from emlive.export.onnx_export import export_onnx


@dataclass
class Exported:
    """A random-weight model saved as a checkpoint and exported to ONNX."""

    config: NetworkConfig
    net: BlindSpotNet
    card: ModelCard
    ckpt: Path
    onnx: Path


def _make(root: Path, name: str, cfg: NetworkConfig, seed: int) -> Exported:
    torch.manual_seed(seed)
    net = BlindSpotNet(cfg).eval()
    card = ModelCard(network=cfg, name=name)
    ckpt = save_model(root / f"{name}.ckpt", net, card)
    onnx_path = export_onnx(ckpt, root / f"{name}.onnx").path
    return Exported(cfg, net, card, ckpt, onnx_path)


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Width 8, 2 scales, 1 block: receptive radius 20 px, so tiling can be tested on small frames."""
    return _make(tmp_path_factory.mktemp("small"), "small", NetworkConfig(width=8, scales=2, blocks=1), 0)


@pytest.fixture(scope="session")
def full(tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The default architecture (4 scales, 2 blocks, 5 frames, 3x3 blind spot) at width 16."""
    return _make(tmp_path_factory.mktemp("full"), "full", NetworkConfig(width=16), 1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMLIVE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def reference() -> Callable[[BlindSpotNet, np.ndarray], np.ndarray]:
    """Whole-frame PyTorch answer for an (N, H, W) window, in the input's units (the runtime's contract)."""

    def run(net: BlindSpotNet, window: np.ndarray) -> np.ndarray:
        z, mean, std = zscore(window)
        c = window.shape[0] // 2
        with torch.inference_mode():
            out = net(torch.from_numpy(z[None]))[0, 0].numpy()
        return out * np.float32(std[c]) + np.float32(mean[c])

    return run


def counts_window(frames: int, h: int, w: int, seed: int = 0, dtype: type = np.uint16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = 10.0 + 5.0 * np.sin(np.arange(w) / 7.0)[None, :] + 3.0 * np.cos(np.arange(h) / 5.0)[:, None]
    return np.stack([rng.poisson(base) for _ in range(frames)]).astype(dtype)


@pytest.fixture
def window() -> Callable[..., np.ndarray]:
    """``window(frames, h, w, seed=0, dtype=np.uint16)``: Poisson counts on a smooth pattern."""
    return counts_window
