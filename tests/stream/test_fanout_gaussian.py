"""The fan-out (``--workers 2``) with a probabilistic (network.head=gaussian) model: ``--estimate`` and
``--uncertainty`` work with worker processes. Every published frame and std map equals offline
``Denoiser.denoise_movie(..., uncertainty=True)`` bit for bit, for a forced posterior and a forced blind; the
results the service holds stay within their byte bound (std maps counted); a worker checks what the wire brings.

Real worker processes (an ONNX export: no torch in them), a loopback ipc/tcp link, real sockets on port 0.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
import zmq

from emlive.core.errors import EmliveError
from emlive.core.protocol import encode, encode_frame, event_header, frame_header, parse_json_object
from emlive.stream.fanout import FanOut, WorkerSettings, checked_model_info
from emlive.stream.inferworker import ERROR, RESULT, InferWorker
from emlive.stream.service import DenoiseService, ServiceConfig
from emlive.stream.telemetry import Telemetry
from emlive.stream.window import FrameRecord, WindowAssembler, WindowJob

LOCAL = "tcp://127.0.0.1:0"
pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def gauss_pt(gaussian_checkpoint: Callable[..., Path]) -> Path:
    return gaussian_checkpoint("fan-gauss", calibrated=True)  # the workers apply the card's recalibration


@pytest.fixture(scope="module")
def gauss_onnx(gauss_pt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emlive.export.onnx_export import export_onnx

    return export_onnx(gauss_pt, tmp_path_factory.mktemp("fan-gauss") / "fan-gauss.onnx", check=False).path


def _offline(model: Path, load_model: Callable[..., Any], movie: np.ndarray, estimate: str) -> list[Any]:
    """The offline reference: the same model file in this process, ``denoise_movie`` with the maps."""
    return [found for _, found in load_model(model).denoise_movie(movie, uncertainty=True, estimate=estimate)]


@pytest.mark.parametrize("estimate", ["posterior", "blind"])
def test_two_workers_publish_the_forced_estimate_and_its_std_map_as_offline(
    estimate: str,
    gauss_onnx: Path,
    load_model: Callable[..., Any],
    movie: np.ndarray,
    services: list[DenoiseService],
    subscribe: Any,
    until_end: Any,
    push: tuple[zmq.Socket[Any], str],
) -> None:
    """``emlive serve --workers 2 --estimate E --uncertainty``: each denoised frame then its std map, in order,
    bit for bit offline; the maps say which estimate they belong to; the noise check only reports when forced."""
    cfg = ServiceConfig(model=gauss_onnx, input=push[1], output=LOCAL, input_mode="pull", lossless=True,
                        uncertainty=True, estimate=estimate, workers=2, threads=1)  # fmt: skip
    svc = DenoiseService(cfg)
    services.append(svc)
    svc.start()
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    for i, frame in enumerate(movie):
        push[0].send_multipart(encode_frame(frame, "g", i), copy=False)
    push[0].send_multipart(encode(event_header("end", "g")))
    frames = [m for m in sub.collect(until_end, timeout=60) if m.header.type == "frame"]
    assert [(m.header.kind, m.header.index) for m in frames] == [
        (kind, t) for t in range(len(movie)) for kind in ("denoised", "uncertainty")
    ]
    offline = _offline(gauss_onnx, load_model, movie, estimate)
    np.testing.assert_array_equal(np.stack([m.data for m in frames[0::2]]), np.stack([o.mean for o in offline]))
    np.testing.assert_array_equal(np.stack([m.data for m in frames[1::2]]), np.stack([o.std for o in offline]))
    quantity = "posterior_std" if estimate == "posterior" else "prior_std"
    assert {(m.header.extra["quantity"], m.header.extra["estimate"]) for m in frames[1::2]} == {(quantity, estimate)}
    assert all(m.header.dtype == "float32" and m.header.shape == movie.shape[1:] for m in frames[1::2])
    if estimate == "posterior":  # the two estimates differ on this movie: the test can tell them apart
        assert not np.array_equal(offline[-1].mean, offline[-1].prior_mean)
    status = svc.status()
    check = status["noise_check"]
    if estimate == "posterior":  # the workers measured the first frames; forced: the check only reports
        assert check["forced"] is True and check["state"] == "decided" and check["estimate"] == "posterior", check
    else:
        assert check["state"] == "off", check  # forced blind: nothing to check
    memory = status["memory"]
    assert memory["worker_results_limit_bytes"] == svc.budget.working_bytes
    assert 0 < memory["worker_results_peak_bytes"] <= memory["worker_results_limit_bytes"], memory
    assert status["counters"]["published"] == len(movie) and sum(w["done"] for w in status["workers"]) == len(movie)


def _jobs(movie: np.ndarray) -> list[WindowJob]:
    """The service's window jobs of ``movie`` (one run), as its window assembler makes them."""
    asm = WindowAssembler(5)
    jobs: list[WindowJob] = []
    for i, frame in enumerate(movie):
        jobs += asm.push(FrameRecord(frame_header(frame, "f", i, timestamp=0.0), frame, float(i), 0.0))[0]
    return jobs + asm.flush(99.0)


def test_results_in_flight_stay_within_their_byte_bound_std_maps_counted(
    gauss_onnx: Path, load_model: Callable[..., Any], movie: np.ndarray
) -> None:
    """A bound of one frame and its map: one result at a time, though 2 workers x 2 jobs of credit could hold 4;
    every frame and map still comes, in order, bit for bit offline (the workers loaded for ``--estimate blind``)."""
    one = movie.shape[1] * movie.shape[2] * 4 * 2  # a float32 frame and its float32 std map
    got: list[tuple[int, np.ndarray, np.ndarray]] = []

    def publish(job: WindowJob, out: np.ndarray, *rest: Any) -> None:
        std = rest[3]
        got.append((job.center.index, np.array(out), np.array(std)))

    settings = WorkerSettings(gauss_onnx, 2, threads=1, estimate="blind", uncertainty=True, flight_bytes=one)
    fan = FanOut(settings, Telemetry(), publish, lossless=True)
    info = fan.start()
    try:
        for job in _jobs(movie):
            fan.submit(job)
        fan.drain()
        peak = fan.peak_bytes
    finally:
        fan.close()
    assert info["estimate"] == "blind" and info["channels"] == 2
    assert peak == one, peak
    assert [t for t, _, _ in got] == list(range(len(movie)))
    offline = _offline(gauss_onnx, load_model, movie, "blind")
    np.testing.assert_array_equal(np.stack([g[1] for g in got]), np.stack([o.mean for o in offline]))
    np.testing.assert_array_equal(np.stack([g[2] for g in got]), np.stack([o.std for o in offline]))


def _job(frame: np.ndarray, **fields: Any) -> tuple[dict[str, Any], list[zmq.Frame]]:
    """A one-frame job (the window of a one-frame run) with ``fields`` replaced."""
    header = {"ticket": 7, "run": 1, "shape": list(frame.shape), "dtype": frame.dtype.str,
              "indices": [None, None, 0, None, None], "push": [0], **fields}  # fmt: skip
    return header, [zmq.Frame(frame.tobytes())]


def test_a_worker_checks_each_job_field_and_returns_the_map_when_asked(
    gauss_pt: Path, load_model: Callable[..., Any], movie: np.ndarray
) -> None:
    den = load_model(gauss_pt)
    worker = InferWorker(den, cast(Any, None))
    frame = movie[0]
    for fields, says in [
        ({"uncertainty": "yes"}, "uncertainty 'yes': a job's 'uncertainty' is true or false"),
        ({"sample": 1}, "sample '1'"),
        ({"estimate": "mean"}, "estimate 'mean': use one of blind, posterior"),
        ({"estimate": 3}, "estimate '3'"),
    ]:
        kind, header = worker.job(*_job(frame, **fields))
        assert kind == ERROR and says in parse_json_object(header, "reply")["error"], (fields, header)
    kind, header, out, std = worker.job(*_job(frame, uncertainty=True, estimate="posterior"))
    assert kind == RESULT and parse_json_object(header, "reply")["ticket"] == 7
    stream = den.stream(frame.shape, frame.dtype)
    stream.push(frame, 0)
    found = stream.denoise([None, None, 0, None, None], uncertainty=True)
    np.testing.assert_array_equal(out, found.mean)
    np.testing.assert_array_equal(std, found.std)
    assert out.dtype == std.dtype == np.float32
    from emlive.export.runtime import Denoiser

    blind = InferWorker(Denoiser.load(gauss_pt, "auto", threads=1, estimate="blind"), cast(Any, None))
    kind, header = blind.job(*_job(frame, estimate="posterior"))
    assert kind == ERROR and "this worker serves the blind estimate" in parse_json_object(header, "reply")["error"]


def test_the_service_refuses_a_bad_hello_field_by_name() -> None:
    good = {"name": "m", "backend": "onnx", "device": "cpu", "frames": 5, "channels": 2, "estimate": "posterior",
            "noise_model": True}  # fmt: skip
    assert checked_model_info(good) == good
    for key, value, says in [
        ("frames", 10**9, "model frames '1000000000': an integer 1..64"),
        ("frames", 5.0, "model frames '5.0'"),
        ("channels", 3, "model channels '3'"),
        ("estimate", "mean", "model estimate 'mean': blind or posterior"),
        ("noise_model", "yes", "model noise_model 'yes': true or false"),
        ("device", "x" * 600, "model device"),
    ]:
        with pytest.raises(EmliveError, match=says):
            checked_model_info({**good, key: value})
    with pytest.raises(EmliveError, match="a JSON object"):
        checked_model_info(["m"])
