"""The live service with a probabilistic (network.head=gaussian) model: the posterior mean is the published frame,
bit for bit the offline one, and ``--uncertainty`` publishes each frame's std map (kind ``uncertainty``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emlive.core.errors import ConfigError
from emlive.core.modelcard import ModelCard, NoiseModel, save_model
from emlive.core.network import BlindSpotNet, NetworkConfig
from emlive.core.readers import ArrayMovie
from emlive.core.windows import stack_window, window_indices
from emlive.stream.detector import DetectorConfig, DetectorSimulator
from emlive.stream.service import DenoiseService, ServiceConfig

LOCAL = "tcp://127.0.0.1:0"


@pytest.fixture(scope="module")
def gaussian_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.manual_seed(0)
    cfg = NetworkConfig(width=8, scales=3, blocks=1, head="gaussian")
    noise = NoiseModel(method="difference", gain=1.0, offset=0.0, read_noise=0.0, intercept=0.0, kernel=[[1.0]],
                       recommended_blind_spot=(1, 1))  # fmt: skip
    card = ModelCard(name="tiny-gauss", network=cfg, noise=noise)
    return save_model(tmp_path_factory.mktemp("models") / "gauss.pt", BlindSpotNet(cfg), card)


@pytest.fixture(scope="module")
def gaussian(gaussian_path: Path, load_model: Callable[[Path], Any]) -> Any:
    return load_model(gaussian_path)


@pytest.fixture
def detectors() -> Iterator[list[DetectorSimulator]]:
    made: list[DetectorSimulator] = []
    yield made
    for det in made:
        det.stop()


def _start(services: list[DenoiseService], denoiser: Any, **kw: Any) -> DenoiseService:
    svc = DenoiseService(ServiceConfig(model=None, output=LOCAL, **kw), denoiser=denoiser)
    services.append(svc)
    svc.start()
    return svc


@pytest.mark.timeout(60)
def test_live_posterior_and_uncertainty_equal_offline(
    gaussian: Any,
    movie: np.ndarray,
    services: list[DenoiseService],
    detectors: list[DetectorSimulator],
    subscribe: Callable[[str], Any],
    until_end: Any,
) -> None:
    det = DetectorSimulator(DetectorConfig(output=LOCAL, mode="push", fps=0, acquisition="g"), ArrayMovie(movie))
    detectors.append(det)
    det.open()
    svc = _start(services, gaussian, input=det.endpoint, input_mode="pull", lossless=True, uncertainty=True)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    msgs = sub.collect(until_end)
    frames = [m for m in msgs if m.header.type == "frame"]
    # each denoised frame, then its std map, in order
    assert [(m.header.kind, m.header.index) for m in frames] == [
        (kind, t) for t in range(len(movie)) for kind in ("denoised", "uncertainty")
    ]
    offline = [
        gaussian.denoise_window(stack_window(movie, window_indices(t, gaussian.frames, len(movie))), uncertainty=True)
        for t in range(len(movie))
    ]
    assert gaussian.estimate == "posterior"
    np.testing.assert_array_equal(np.stack([m.data for m in frames[0::2]]), np.stack([o.mean for o in offline]))
    np.testing.assert_array_equal(np.stack([m.data for m in frames[1::2]]), np.stack([o.std for o in offline]))
    assert not np.array_equal(offline[0].mean, offline[0].prior_mean)  # the posterior, not the blind estimate
    std = frames[1].header
    assert std.dtype == "float32" and std.shape == movie.shape[1:] and std.acquisition == "g"
    assert std.extra["quantity"] == "posterior_std" and std.extra["estimate"] == "posterior"
    assert "counts" in std.extra["units"] and std.extra["window"] == frames[0].header.extra["window"]
    assert svc.status()["counters"]["published"] == len(movie)


@pytest.mark.timeout(60)
def test_uncertainty_needs_a_variance_head_and_one_worker(
    denoiser: Any, gaussian_path: Path, services: list[DenoiseService]
) -> None:
    with pytest.raises(ConfigError, match=r"--uncertainty: model tiny-5 has no variance head.*network.head=gaussian"):
        _start(services, denoiser, input="tcp://127.0.0.1:5999", uncertainty=True)
    with pytest.raises(ConfigError, match=r"--uncertainty with --workers 2.*--workers 1"):
        ServiceConfig(model=gaussian_path, input="tcp://127.0.0.1:5999", output=LOCAL, uncertainty=True,
                      workers=2).validate()  # fmt: skip


@pytest.mark.timeout(60)
def test_the_service_loads_a_gaussian_model_with_the_estimate_asked(
    gaussian: Any,
    gaussian_path: Path,
    movie: np.ndarray,
    services: list[DenoiseService],
    detectors: list[DetectorSimulator],
    subscribe: Callable[[str], Any],
    until_end: Any,
) -> None:
    """``emlive serve --estimate blind --uncertainty``: the blind estimate and the prior's std, as offline."""
    det = DetectorSimulator(DetectorConfig(output=LOCAL, mode="push", fps=0, acquisition="b"), ArrayMovie(movie[:4]))
    detectors.append(det)
    det.open()
    svc = DenoiseService(ServiceConfig(model=gaussian_path, input=det.endpoint, output=LOCAL, input_mode="pull",
                                       lossless=True, uncertainty=True, estimate="BLIND", threads=1))  # fmt: skip
    services.append(svc)
    svc.start()
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    frames = [m for m in sub.collect(until_end) if m.header.type == "frame"]
    offline = [gaussian.denoise_window(stack_window(movie[:4], window_indices(t, gaussian.frames, 4)), uncertainty=True)
               for t in range(4)]  # fmt: skip
    np.testing.assert_array_equal(np.stack([m.data for m in frames[0::2]]), np.stack([o.prior_mean for o in offline]))
    np.testing.assert_array_equal(np.stack([m.data for m in frames[1::2]]), np.stack([o.prior_std for o in offline]))
    assert frames[1].header.extra["quantity"] == "prior_std" and frames[1].header.extra["estimate"] == "blind"
    with pytest.raises(ConfigError, match=r"estimate 'mean': use one of blind, posterior"):
        ServiceConfig(model=gaussian_path, input="tcp://127.0.0.1:5999", output=LOCAL, estimate="mean").validate()
