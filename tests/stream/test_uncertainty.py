"""The live service with a probabilistic (network.head=gaussian) model: the posterior mean is the published frame,
bit for bit the offline one, and ``--uncertainty`` publishes each frame's std map (kind ``uncertainty``); each
acquisition's noise check (emlive.stream.livecheck) decides posterior or blind, in the service and its workers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from emlive.core.errors import ConfigError
from emlive.core.posterior import CHECK_FRAMES
from emlive.core.readers import ArrayMovie
from emlive.core.windows import stack_window, window_indices
from emlive.stream.detector import DetectorConfig, DetectorSimulator
from emlive.stream.service import DenoiseService, ServiceConfig

LOCAL = "tcp://127.0.0.1:0"


@pytest.fixture(scope="module")
def gaussian_path(gaussian_checkpoint: Callable[..., Path]) -> Path:
    return gaussian_checkpoint("tiny-gauss", calibrated=True)  # live and offline apply the card's recalibration


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
    # at 40 frames/s: the check, done after frame CHECK_FRAMES - 1, has the frames after it to land in
    det = DetectorSimulator(DetectorConfig(output=LOCAL, mode="push", fps=40, acquisition="g"), ArrayMovie(movie))
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
    # the acquisition's noise check (its first CHECK_FRAMES frames, off the hot path) passes: the frames before
    # its decision went out blind (the safe choice), the rest as the posterior, each bit for bit the offline one
    check = svc.status()["noise_check"]
    assert check["state"] == "decided" and check["ok"] and check["estimate"] == "posterior", check
    switch = check["from_index"]
    assert CHECK_FRAMES <= switch < len(movie)
    expected = [(o.prior_mean, o.prior_std) if t < switch else (o.mean, o.std) for t, o in enumerate(offline)]
    np.testing.assert_array_equal(np.stack([m.data for m in frames[0::2]]), np.stack([e[0] for e in expected]))
    np.testing.assert_array_equal(np.stack([m.data for m in frames[1::2]]), np.stack([e[1] for e in expected]))
    assert not np.array_equal(offline[-1].mean, offline[-1].prior_mean)  # the posterior, not the blind estimate
    std = frames[-1].header
    assert std.dtype == "float32" and std.shape == movie.shape[1:] and std.acquisition == "g"
    assert std.extra["quantity"] == "posterior_std" and std.extra["estimate"] == "posterior"
    assert frames[1].header.extra["quantity"] == "prior_std" and frames[1].header.extra["estimate"] == "blind"
    assert "counts" in std.extra["units"] and std.extra["window"] == frames[-2].header.extra["window"]
    assert svc.status()["counters"]["published"] == len(movie)


@pytest.mark.timeout(60)
def test_uncertainty_needs_a_variance_head_but_not_one_worker(
    denoiser: Any, gaussian_path: Path, services: list[DenoiseService]
) -> None:
    with pytest.raises(ConfigError, match=r"--uncertainty: model tiny-5 has no variance head.*network.head=gaussian"):
        _start(services, denoiser, input="tcp://127.0.0.1:5999", uncertainty=True)
    # worker processes publish the maps and the forced estimate too (tests/stream/test_fanout_gaussian.py)
    ServiceConfig(model=gaussian_path, input="tcp://127.0.0.1:5999", output=LOCAL, uncertainty=True, workers=2,
                  estimate="blind").validate()  # fmt: skip


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


@pytest.mark.timeout(60)
def test_the_recording_keeps_the_published_maps_beside_the_denoised_frames(
    gaussian: Any,
    movie: np.ndarray,
    services: list[DenoiseService],
    detectors: list[DetectorSimulator],
    subscribe: Callable[[str], Any],
    until_end: Any,
    tmp_path: Path,
) -> None:
    """``emlive serve --uncertainty --record run.mrc --record-what denoised``: ``run-<acq>-uncertainty.mrc`` holds
    every published map, bit for bit, with its frame index file, beside the denoised recording."""
    import json

    from emlive.core.readers import open_movie

    det = DetectorSimulator(DetectorConfig(output=LOCAL, mode="push", fps=0, acquisition="r"), ArrayMovie(movie[:6]))
    detectors.append(det)
    det.open()
    svc = _start(services, gaussian, input=det.endpoint, input_mode="pull", lossless=True, uncertainty=True,
                 record=tmp_path / "run.mrc", record_what="denoised")  # fmt: skip
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    frames = [m for m in sub.collect(until_end) if m.header.type == "frame"]
    svc.stop()
    maps = np.stack([m.data for m in frames if m.header.kind == "uncertainty"])
    den = np.stack([m.data for m in frames if m.header.kind == "denoised"])
    assert len(maps) == 6 and sorted(p.name for p in tmp_path.glob("run-*.mrc")) == [
        "run-r-denoised.mrc", "run-r-uncertainty.mrc"]  # fmt: skip
    with open_movie(tmp_path / "run-r-uncertainty.mrc") as rec_maps, open_movie(tmp_path / "run-r-denoised.mrc") as d:
        assert rec_maps.dtype == np.float32
        np.testing.assert_array_equal(rec_maps[:], maps)
        np.testing.assert_array_equal(d[:], den)
    lines = (tmp_path / "run-r-uncertainty.mrc.frames.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(6))
    assert svc.status()["counters"]["recorded_uncertainty"] == 6


GAIN, OFFSET, READ = 2.0, 100.0, 3.0  # the integrating detector of the movie below


@pytest.fixture(scope="module")
def wrong_gain_path(gaussian_checkpoint: Callable[..., Path]) -> Path:
    """A head=gaussian model with a constant prior whose card says gain x10: the movie below is quieter than it
    claims, so the noise check fails (as offline: tests/export/test_posterior_runtime)."""
    return gaussian_checkpoint("wrong", seed=1, scales=2, gain=10 * GAIN, offset=OFFSET, read_noise=READ,
                               constant_prior=True)  # fmt: skip


def _integrating(frames: int = 12) -> np.ndarray:
    rng = np.random.default_rng(0)
    scene = 50.0 + 36.0 * rng.choice([-1.0, 1.0], (40, 52))
    movie = [OFFSET + GAIN * rng.poisson(scene) + rng.normal(0, READ, scene.shape) for _ in range(frames)]
    return np.clip(np.rint(movie), 0, 65535).astype(np.uint16)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("forced", "workers"), [(False, 1), (True, 1), (False, 2)])
def test_a_failed_live_noise_check_falls_back_to_blind_for_the_acquisition_unless_forced(
    forced: bool,
    workers: int,
    wrong_gain_path: Path,
    load_model: Callable[[Path], Any],
    services: list[DenoiseService],
    detectors: list[DetectorSimulator],
    subscribe: Callable[[str], Any],
    until_end: Any,
) -> None:
    """`emlive serve` with a wrong noise model: the acquisition's check fails, is reported in the status (value,
    threshold, decision), and the frames after it are the blind output, bit for bit the offline one (offline
    `emlive denoise` falls back the same way); `--estimate posterior` forces the posterior (the check only warns).
    With `--workers 2` the worker processes measure the frames and follow the service's decision."""
    movie = _integrating()
    det = DetectorSimulator(DetectorConfig(output=LOCAL, mode="push", fps=40, acquisition="w"), ArrayMovie(movie))
    detectors.append(det)
    det.open()
    model = wrong_gain_path
    if workers > 1:  # the workers load an ONNX export (no torch in them)
        from emlive.export.onnx_export import export_onnx

        model = export_onnx(wrong_gain_path, wrong_gain_path.with_suffix(".onnx"), check=False).path
    cfg = ServiceConfig(model=model, input=det.endpoint, output=LOCAL, input_mode="pull", lossless=True,
                        threads=1, estimate="posterior" if forced else None, workers=workers)  # fmt: skip
    svc = DenoiseService(cfg)
    services.append(svc)
    svc.start()
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    frames = [m for m in sub.collect(until_end) if m.header.type == "frame"]
    check = svc.status()["noise_check"]
    assert check["state"] == "decided" and not check["ok"] and check["ratio"] < 1 - check["tolerance"], check
    assert check["sigmas"] > 0 and "quieter than the card's noise model" in check["message"]
    assert check["estimate"] == ("posterior" if forced else "blind") and check["forced"] is forced
    den = load_model(wrong_gain_path)
    offline = [den.denoise_window(stack_window(movie, window_indices(t, den.frames, len(movie))), uncertainty=True)
               for t in range(len(movie))]  # fmt: skip
    assert not np.array_equal(offline[-1].mean, offline[-1].prior_mean)  # the two estimates differ: it can tell
    expected = [o.mean if forced else o.prior_mean for o in offline]  # before the decision: blind unless forced
    np.testing.assert_array_equal(np.stack([m.data for m in frames]), np.stack(expected))
    assert CHECK_FRAMES <= check["from_index"] < len(movie)
