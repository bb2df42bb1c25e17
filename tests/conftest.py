"""Fixtures every component's tests share."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zmq


@pytest.fixture(scope="session")
def gaussian_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``gaussian_checkpoint(name, *, scales=3, seed=0, gain=1.0, offset=0.0, read_noise=0.0, constant_prior=False,
    calibrated=False)``:
    a tiny random-weight ``network.head=gaussian`` checkpoint (width 8, 1 block) whose card carries that detector
    noise model (gain x electrons + offset, Gaussian read noise; the defaults: a counting detector).
    ``constant_prior``: the head's last weights at 0, so the prior is the same everywhere (the noise-check cases).
    ``calibrated``: the card carries a variance-head recalibration (prior variance x1.5 where the head's output is
    low, x0.8 where it is high), which every runtime must apply."""

    def make(
        name: str,
        *,
        scales: int = 3,
        seed: int = 0,
        gain: float = 1.0,
        offset: float = 0.0,
        read_noise: float = 0.0,
        constant_prior: bool = False,
        calibrated: bool = False,
    ) -> Path:
        import torch

        from emlive.core.modelcard import ModelCard, NoiseModel, VarianceCalibration, save_model
        from emlive.core.network import BlindSpotNet, NetworkConfig

        torch.manual_seed(seed)
        cfg = NetworkConfig(width=8, scales=scales, blocks=1, head="gaussian")
        net = BlindSpotNet(cfg).eval()
        if constant_prior:
            with torch.no_grad():
                net.head[-1].weight.zero_()
        noise = NoiseModel(method="difference", gain=gain, offset=offset, read_noise=read_noise,
                           intercept=read_noise**2 - gain * offset, kernel=[[1.0]],
                           recommended_blind_spot=(1, 1))  # fmt: skip
        table = VarianceCalibration(log_var_z=[-2.0, 2.0], log_scale=[math.log(1.5), math.log(0.8)], pixels=1,
                                    frames=1, source="test")  # fmt: skip
        card = ModelCard(name=name, network=cfg, noise=noise, prior_calibration=table if calibrated else None)
        return save_model(tmp_path_factory.mktemp(name) / f"{name}.pt", net, card)

    return make


@pytest.fixture
def free_tcp_port() -> Callable[[], str]:
    """A tcp address on 127.0.0.1 whose port was free a moment ago (for a process started later)."""

    def pick() -> str:
        ctx: zmq.Context[Any] = zmq.Context.instance()
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        sock.close()
        return f"tcp://127.0.0.1:{port}"

    return pick
