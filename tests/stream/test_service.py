"""The live service in-process, on real sockets, with the real inference runtime and a random-weight model."""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.core.errors import InputDataError
from emlive.core.protocol import bind, encode, encode_frame, event_header
from emlive.core.readers import ArrayMovie, open_movie
from emlive.stream.detector import MALFORMED_KINDS, DetectorConfig, DetectorSimulator
from emlive.stream.service import DenoiseService, ServiceConfig, control_request

LOCAL = "tcp://127.0.0.1:0"
Collect = Callable[..., Any]


@pytest.fixture
def detectors() -> Iterator[list[DetectorSimulator]]:
    made: list[DetectorSimulator] = []
    yield made
    for det in made:
        det.stop()


@pytest.fixture
def service(services: list[DenoiseService]) -> Callable[..., DenoiseService]:
    def make(denoiser: Any, *, loader: Any = None, **kw: Any) -> DenoiseService:
        kw.setdefault("output", LOCAL)
        svc = DenoiseService(ServiceConfig(model=None, **kw), denoiser=denoiser, loader=loader)
        services.append(svc)
        svc.start()
        return svc

    return make


@pytest.fixture
def detector(detectors: list[DetectorSimulator]) -> Callable[..., DetectorSimulator]:
    def make(frames: np.ndarray, **kw: Any) -> DetectorSimulator:
        kw.setdefault("output", LOCAL)
        det = DetectorSimulator(DetectorConfig(**kw), ArrayMovie(frames))
        detectors.append(det)
        det.open()
        return det

    return make


def _frames(msgs: list[Any], kind: str = "denoised") -> list[Any]:
    return [m for m in msgs if m.header.type == "frame" and m.header.kind == kind]


def _until_n_denoised(n: int) -> Callable[[Any], bool]:
    count = [0]

    def until(m: Any) -> bool:
        if m.header.type == "frame" and m.header.kind == "denoised":
            count[0] += 1
        return count[0] >= n

    return until


@pytest.mark.timeout(60)
def test_live_output_equals_offline_output(
    denoiser: Any,
    movie: np.ndarray,
    service: Collect,
    detector: Collect,
    subscribe: Collect,
    offline_ref: Collect,
    until_end: Any,
) -> None:
    det = detector(movie, mode="push", fps=0, acquisition="same")
    svc = service(denoiser, input=det.endpoint, input_mode="pull", lossless=True, publish_raw=True)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    msgs = sub.collect(until_end)
    ref = offline_ref(denoiser, movie)
    den, raw = _frames(msgs), _frames(msgs, "raw")
    assert [m.header.index for m in den] == list(range(len(movie)))
    live = np.stack([m.data for m in den])
    # the same windows through the same runtime (one thread, deterministic): bit for bit
    np.testing.assert_array_equal(live, ref)
    np.testing.assert_array_equal(np.stack([m.data for m in raw]), movie)
    assert [m.header.index for m in raw] == list(range(len(movie)))
    assert [m.header.extra["window"] for m in den][:2] == [[2, 1, 0, 1, 2], [3, 0, 1, 2, 3]]
    assert [m.header.extra["window"] for m in den][-2:] == [[6, 7, 8, 9, 6], [7, 8, 9, 8, 7]]
    first = den[0].header
    assert (first.acquisition, first.dtype, first.shape) == ("same", "float32", movie.shape[1:])
    assert first.extra["model"] == "tiny-5" and first.extra["backend"] == denoiser.backend
    assert {"latency_ms", "age_ms", "infer_ms", "received_at", "published_at", "seq"} <= set(first.extra)
    assert msgs[0].header.type == "start" and msgs[-1].header.type == "end"
    assert msgs[-2].header.index == len(movie) - 1  # end goes out after the flushed last frames
    counters = svc.status()["counters"]
    assert counters["denoised"] == counters["published"] == len(movie)
    assert counters.get("skipped", 0) == counters.get("dropped", 0) == 0


@pytest.mark.timeout(60)
def test_each_received_frame_is_normalised_once(
    denoiser: Any,
    movie: np.ndarray,
    service: Collect,
    detector: Collect,
    subscribe: Collect,
    until_end: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model's streaming API: a frame is z-scored once when it enters the ring, not once per window that
    reads it (N times). Every call of the runtime's normalisation is recorded with the frame it normalised."""
    import emlive.export.runtime as runtime

    by_content = {frame.tobytes(): i for i, frame in enumerate(movie)}
    calls: list[int | None] = []
    real = runtime.normalize_into

    def counting(frame: np.ndarray, mean: float, std: float, out: np.ndarray) -> None:
        calls.append(by_content.get(np.ascontiguousarray(frame).tobytes()))  # None: a warm-up's blank frame
        real(frame, mean, std, out)

    monkeypatch.setattr(runtime, "normalize_into", counting)
    det = detector(movie, mode="push", fps=0, acquisition="once")
    svc = service(denoiser, input=det.endpoint, input_mode="pull", lossless=True)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    den = _frames(sub.collect(until_end))
    assert [m.header.index for m in den] == list(range(len(movie)))
    normalised = sorted(i for i in calls if i is not None)
    assert normalised == list(range(len(movie))), f"frames normalised {normalised}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_short_runs_live_equal_offline_and_never_feed_the_center_twice(
    length: int,
    denoiser: Any,
    make_movie: Collect,
    service: Collect,
    subscribe: Collect,
    offline_ref: Collect,
    zctx: zmq.Context[Any],
    until_end: Any,
) -> None:
    frames = make_movie(length, seed=10 + length)
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        svc = service(denoiser, input=bind(push, LOCAL), input_mode="pull", lossless=True)
        sub = subscribe(svc.endpoints["output"])
        assert svc.wait_for_subscribers(1, 10)
        for i, frame in enumerate(frames):
            push.send_multipart(encode_frame(frame, "short", i), copy=False)
        push.send_multipart(encode(event_header("end", "short")))
        den = _frames(sub.collect(until_end))
    finally:
        push.close()
    assert [m.header.index for m in den] == list(range(length))
    np.testing.assert_array_equal(np.stack([m.data for m in den]), offline_ref(denoiser, frames))
    for m in den:
        window = m.header.extra["window"]
        assert window[2] == m.header.index and m.header.index not in window[:2] + window[3:], window
        assert (None in window) == (length == 1), window  # a single frame: empty slots (zeros), never itself


@pytest.mark.timeout(60)
def test_live_mode_under_overload_skips_but_stays_live_and_exact(
    denoiser: Any,
    slow: Any,
    make_movie: Collect,
    service: Collect,
    detector: Collect,
    subscribe: Collect,
    offline_ref: Collect,
    until_end: Any,
) -> None:
    frames = make_movie(30)
    det = detector(frames, fps=100, acquisition="fast", wait_subscribers=1)
    svc = service(slow(denoiser, 0.05), input=det.endpoint)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    # before the run: once idle after it, the service warms the same model up for the announced size, and a
    # Denoiser's window buffers are not for two threads at once
    ref = offline_ref(denoiser, frames)
    det.start()
    den = _frames(sub.collect(until_end, timeout=30))
    assert 0 < len(den) < len(frames)
    for m in den:  # whatever is published is exactly the offline result for that frame
        np.testing.assert_allclose(m.data, ref[m.header.index], rtol=1e-6, atol=1e-6)
    snap = svc.status()
    c = snap["counters"]
    assert c["skipped"] > 0
    assert c["denoised"] + c["skipped"] == len(frames)  # every frame is either denoised or counted as skipped
    # docs/protocol.md: a skip shows as a jump in index; seq numbers the published frames without gaps
    seqs = [m.header.extra["seq"] for m in den]
    assert seqs == list(range(seqs[0], seqs[0] + len(den)))
    assert any(b.header.index - a.header.index > 1 for a, b in itertools.pairwise(den))
    assert c.get("dropped", 0) == 0
    # bounded latency: about one inference (plus the few flushed ones at the end), not the growing backlog
    assert snap["latency"]["processing"]["p99_ms"] < 400
    assert snap["stages"]["infer"]["count"] == c["denoised"]


@pytest.mark.timeout(60)
def test_bad_messages_are_logged_once_each_and_the_service_keeps_running(
    denoiser: Any,
    movie: np.ndarray,
    service: Collect,
    detector: Collect,
    subscribe: Collect,
    offline_ref: Collect,
    until_end: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="emlive.stream.service")
    det = detector(movie, mode="push", fps=0, acquisition="bad", malformed_every=1)
    svc = service(denoiser, input=det.endpoint, input_mode="pull", lossless=True)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    den = _frames(sub.collect(until_end))
    assert det.malformed_sent == len(MALFORMED_KINDS) == len(movie)
    np.testing.assert_allclose(np.stack([m.data for m in den]), offline_ref(denoiser, movie), rtol=1e-6, atol=1e-6)
    lines = [r.getMessage() for r in caplog.records if "rejected message" in r.getMessage()]
    assert len(lines) == det.malformed_sent
    assert all("\n" not in line for line in lines)
    snap = svc.status()
    assert snap["rejected"] == dict.fromkeys(MALFORMED_KINDS, 1)
    assert snap["counters"]["rejected"] == det.malformed_sent


@pytest.mark.timeout(60)
def test_window_resets_on_new_acquisition_gap_and_shape_change(
    denoiser: Any,
    make_movie: Collect,
    service: Collect,
    subscribe: Collect,
    offline_ref: Collect,
    zctx: zmq.Context[Any],
    until_end: Any,
) -> None:
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        endpoint = bind(push, LOCAL)
        svc = service(denoiser, input=endpoint, input_mode="pull", lossless=True)
        sub = subscribe(svc.endpoints["output"])
        assert svc.wait_for_subscribers(1, 10)
        a, b, c = make_movie(5, seed=1), make_movie(9, seed=2), make_movie(2, (32, 48), seed=3)
        runs = [("A", list(range(5)), a), ("B", [0, 1, 2, 3], b[:4]), ("B", [6, 7, 8], b[6:9]), ("B", [9, 10], c)]
        for acq, indices, frames in runs:
            for i, frame in zip(indices, frames, strict=True):
                push.send_multipart(encode_frame(frame, acq, i), copy=False)
        push.send_multipart(encode(event_header("end", "B")))
        den = _frames(sub.collect(until_end))
    finally:
        push.close()
    assert [(m.header.acquisition, m.header.index) for m in den] == [
        (acq, i) for acq, indices, _ in runs for i in indices
    ]
    k = 0
    for _, indices, frames in runs:
        ref = offline_ref(denoiser, frames)
        for j in range(len(indices)):
            m = den[k]
            k += 1
            np.testing.assert_allclose(m.data, ref[j], rtol=1e-6, atol=1e-6)
            assert set(m.header.extra["window"]) <= set(indices)  # never a window across two runs
    snap = svc.status()
    assert snap["resets"] == {"acquisition": 1, "gap": 1, "shape": 1}
    assert snap["counters"]["gap_frames"] == 2


@pytest.mark.timeout(60)
def test_a_restarted_publisher_is_picked_up_again(
    denoiser: Any,
    make_movie: Collect,
    service: Collect,
    detector: Collect,
    subscribe: Collect,
    offline_ref: Collect,
    until_end: Any,
) -> None:
    first, second = make_movie(6, seed=4), make_movie(7, seed=5)
    det1 = detector(first, acquisition="one", fps=0, wait_subscribers=1)
    svc = service(denoiser, input=det1.endpoint, lossless=True)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det1.start()
    got1 = _frames(sub.collect(until_end))
    det1.stop()  # the publisher goes away ...
    det2 = detector(second, acquisition="two", fps=0, wait_subscribers=1, output=det1.endpoint)  # ... and returns
    det2.start()
    got2 = _frames(sub.collect(until_end))
    for got, frames in ((got1, first), (got2, second)):
        assert [m.header.index for m in got] == list(range(len(frames)))
        np.testing.assert_allclose(np.stack([m.data for m in got]), offline_ref(denoiser, frames), rtol=1e-6, atol=1e-6)
    assert {m.header.acquisition for m in got2} == {"two"}


@pytest.mark.timeout(60)
def test_a_subscriber_that_leaves_and_comes_back(
    denoiser: Any, movie: np.ndarray, service: Collect, detector: Collect, subscribe: Collect
) -> None:
    det = detector(movie, fps=50, loop=True, acquisition="loop", wait_subscribers=1)
    svc = service(denoiser, input=det.endpoint)
    sub1 = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    seen1 = _frames(sub1.collect(_until_n_denoised(3)))
    sub1.close()
    assert svc.wait_for_subscribers(0, 10, exact=True)
    sub2 = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    seen2 = _frames(sub2.collect(_until_n_denoised(3)))
    assert seen2[0].header.extra["seq"] > seen1[-1].header.extra["seq"]
    assert not svc.stopping
    assert svc.status()["subscriptions"] == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".mrc", ".tif"])
def test_lossless_records_every_frame_with_back_pressure(
    suffix: str,
    denoiser: Any,
    slow: Any,
    make_movie: Collect,
    service: Collect,
    detector: Collect,
    subscribe: Collect,
    offline_ref: Collect,
    until_end: Any,
    tmp_path: Path,
) -> None:
    frames = make_movie(40, (64, 64), seed=7)
    det = detector(frames, mode="push", fps=0, acquisition="lossless", hwm=2)
    record = tmp_path / f"rec{suffix}"
    svc = service(
        slow(denoiser, 0.005),
        input=det.endpoint,
        input_mode="pull",
        lossless=True,
        queue_size=2,
        hwm=2,
        record=record,
        record_what="both",
    )
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    den = _frames(sub.collect(until_end, timeout=40))
    svc.stop()
    c = svc.status()["counters"]
    assert c["backpressure"] >= 1  # the queue filled and the detector was held back ...
    assert c.get("dropped", 0) == c.get("skipped", 0) == c.get("lost", 0) == 0  # ... and nothing was lost
    assert c["recorded_raw"] == c["recorded_denoised"] == c["published"] == len(frames) == len(den)
    raw_file, den_file = tmp_path / f"rec-lossless-raw{suffix}", tmp_path / f"rec-lossless-denoised{suffix}"
    with open_movie(raw_file) as rec_raw, open_movie(den_file) as rec_den:
        assert len(rec_raw) == len(rec_den) == len(frames)
        sums = [
            hashlib.sha256(np.ascontiguousarray(rec_raw.frame(t)).tobytes()).hexdigest() for t in range(len(frames))
        ]
        assert sums == [hashlib.sha256(f.tobytes()).hexdigest() for f in frames]
        np.testing.assert_allclose(rec_den[:], offline_ref(denoiser, frames), rtol=1e-6, atol=1e-6)
    index = [
        json.loads(line) for line in (tmp_path / f"rec-lossless-raw{suffix}.frames.jsonl").read_text().splitlines()
    ]
    assert [e["index"] for e in index] == list(range(len(frames)))


@pytest.mark.timeout(60)
def test_stop_flushes_the_window_with_leak_free_ends(
    denoiser: Any,
    movie: np.ndarray,
    service: Collect,
    subscribe: Collect,
    zctx: zmq.Context[Any],
    offline_ref: Collect,
) -> None:
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        svc = service(denoiser, input=bind(push, LOCAL), input_mode="pull", lossless=True)
        sub = subscribe(svc.endpoints["output"])
        assert svc.wait_for_subscribers(1, 10)
        for i in range(5):  # no end message: the last two frames wait for more
            push.send_multipart(encode_frame(movie[i], "open", i), copy=False)
        got = _frames(sub.collect(_until_n_denoised(3)))
        svc.stop()  # shutdown ends the run: frames 3 and 4 come out with the windows of the run's end
        got += _frames(sub.collect(_until_n_denoised(2)))
    finally:
        push.close()
    assert [m.header.extra["window"] for m in got][-2:] == [[1, 2, 3, 4, 1], [2, 3, 4, 3, 2]]
    np.testing.assert_allclose(np.stack([m.data for m in got]), offline_ref(denoiser, movie[:5]), rtol=1e-6, atol=1e-6)


@pytest.mark.timeout(90)
def test_control_socket_swaps_models_and_status_is_published(
    denoiser: Any,
    load_model: Any,
    model3_path: Path,
    movie: np.ndarray,
    service: Collect,
    detector: Collect,
    subscribe: Collect,
    zctx: zmq.Context[Any],
    tmp_path: Path,
) -> None:
    det = detector(movie, fps=40, loop=True, acquisition="swap", wait_subscribers=1)
    svc = service(denoiser, loader=load_model, input=det.endpoint, control=LOCAL, status=LOCAL, status_interval_s=0.2)
    ctl = svc.endpoints["control"]
    status_sub = zctx.socket(zmq.SUB)
    status_sub.setsockopt(zmq.LINGER, 0)
    status_sub.setsockopt(zmq.SUBSCRIBE, b"")
    status_sub.connect(svc.endpoints["status"])
    runner = threading.Thread(target=svc.run, name="test-run")
    try:
        sub = subscribe(svc.endpoints["output"])
        assert svc.wait_for_subscribers(1, 10)
        runner.start()
        det.start()
        sub.collect(_until_n_denoised(2))
        assert status_sub.poll(5000)
        status = json.loads(status_sub.recv())
        assert status["type"] == "status" and status["protocol"] == "emlive/1"
        assert status["model"]["name"] == "tiny-5" and status["model"]["frames"] == 5
        assert set(status["stages"]) >= {"receive", "decode", "window", "infer", "publish"}
        assert {"p50_ms", "p95_ms", "p99_ms"} <= set(status["latency"]["processing"])
        assert "input" in status["queues"]

        reply = control_request(ctl, {"cmd": "status"})
        assert reply["ok"] and reply["status"]["model"]["name"] == "tiny-5"
        assert not control_request(ctl, {"cmd": "load_model", "path": str(tmp_path / "missing.pt")})["ok"]
        assert not control_request(ctl, {"cmd": "dance"})["ok"]
        assert not control_request(ctl, {"cmd": "load_model"})["ok"]
        broken = tmp_path / "broken.pt"
        broken.write_bytes(b"not a model")
        assert control_request(ctl, {"cmd": "load_model", "path": str(broken)})["ok"]
        while control_request(ctl, {"cmd": "status"})["status"]["model_swap"]["state"] == "loading":
            sub.collect(_until_n_denoised(1))  # paced by the detector: one frame per poll
        assert control_request(ctl, {"cmd": "status"})["status"]["model_swap"]["state"] == "failed"

        assert control_request(ctl, {"cmd": "load_model", "path": str(model3_path)}) == {
            "ok": True,
            "loading": str(model3_path),
        }
        swapped = _frames(sub.collect(lambda m: m.header.extra.get("model") == "tiny-3" and m.header.type == "frame"))
        assert len(swapped[-1].header.extra["window"]) == 3
        after = _frames(sub.collect(_until_n_denoised(3)))
        assert {m.header.extra["model"] for m in after} == {"tiny-3"}
        snap = control_request(ctl, {"cmd": "status"})["status"]
        assert snap["model"]["name"] == "tiny-3" and snap["model_swap"]["state"] == "done"
        assert snap["resets"].get("model") == 1
        assert control_request(ctl, {"cmd": "stop"}) == {"ok": True, "stopping": True}
        runner.join(20)
        assert not runner.is_alive()
    finally:
        svc.request_stop()
        if runner.is_alive():
            runner.join(20)
        status_sub.close()


class _Failing:
    frames, backend, device = 5, "test", "cpu"

    def __init__(self, inner: Any, error: type[Exception]) -> None:
        self.card, self.inner, self.error, self.calls = inner.card, inner, error, 0

    def denoise_window(self, window: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls % 2 == 0:
            raise self.error(f"window {self.calls} refused by the test model")
        return np.asarray(self.inner.denoise_window(window))


@pytest.mark.timeout(60)
def test_a_bad_frame_for_the_model_is_logged_and_skipped(
    denoiser: Any, movie: np.ndarray, service: Collect, detector: Collect, subscribe: Collect, until_end: Any
) -> None:
    det = detector(movie, mode="push", fps=0, acquisition="picky")
    svc = service(_Failing(denoiser, InputDataError), input=det.endpoint, input_mode="pull", lossless=True)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    det.start()
    den = _frames(sub.collect(until_end))
    c = svc.status()["counters"]
    assert c["infer_errors"] == len(movie) // 2 == len(den)
    assert not svc.stopping


@pytest.mark.timeout(60)
def test_an_unexpected_worker_error_reaches_the_main_thread(
    denoiser: Any, movie: np.ndarray, service: Collect, detector: Collect, tmp_path: Path
) -> None:
    det = detector(movie, mode="push", fps=0, acquisition="boom")
    svc = service(
        _Failing(denoiser, RuntimeError),
        input=det.endpoint,
        input_mode="pull",
        lossless=True,
        record=tmp_path / "boom.mrc",
    )
    det.start()
    with pytest.raises(RuntimeError, match="refused by the test model"):
        svc.run()  # returns once the pipeline failed: clean shutdown, then the error
    assert svc.stopping
    with open_movie(tmp_path / "boom-boom-raw.mrc") as rec:  # the recording was closed properly
        assert len(rec) >= 2


@pytest.mark.timeout(120)
def test_a_lossless_stop_records_every_frame_it_received(
    model_path: Path, emlive_proc: Callable[..., Any], zctx: zmq.Context[Any], tmp_path: Path
) -> None:
    """SIGTERM while 300 frames are still on their way: the service drains what the input holds, and what it
    reports having received is what it recorded (it used to record 267 of 300)."""
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 1000)
    try:
        serve = emlive_proc(
            ["serve", "--model", str(model_path), "--input", bind(push, LOCAL), "--input-mode", "pull",
             "--lossless", "--output", LOCAL, "--threads", "1", "--queue", "4", "--hwm", "4", "--drain", "20",
             "--record", str(tmp_path / "rec.tif")],
            tmp_path / "serve.log",
        )  # fmt: skip
        frames = np.random.default_rng(5).poisson(40, (300, 64, 64)).astype(np.uint16)
        for i, frame in enumerate(frames):
            assert push.poll(20000, zmq.POLLOUT), "the service never connected"
            push.send_multipart(encode_frame(frame, "term", i), copy=False)
        serve.popen.send_signal(signal.SIGTERM)  # most of the 300 are still in the sockets' buffers
        assert serve.popen.wait(60) == 0, serve.log()
    finally:
        push.close()
    log = serve.log()
    stopped = re.search(r"stopped\..* received (\d+), denoised (\d+)", log)
    assert stopped is not None, log
    received, denoised = int(stopped.group(1)), int(stopped.group(2))
    index = [
        json.loads(line)["index"] for line in (tmp_path / "rec-term-raw.tif.frames.jsonl").read_text().splitlines()
    ]
    assert index == list(range(received)) and denoised == received
    assert received == len(frames), log  # all were in ZeroMQ's hands: the drain took them
    with open_movie(tmp_path / "rec-term-raw.tif") as rec:
        np.testing.assert_array_equal(rec[:], frames)


@pytest.mark.timeout(60)
def test_the_input_queue_is_bounded_in_bytes_and_oversized_frames_are_refused(
    denoiser: Any, slow: Any, service: Collect, subscribe: Collect, zctx: zmq.Context[Any]
) -> None:
    budget = 16 << 20  # input queue 4 MiB; a 1024x1024 uint16 frame is 2 MiB, its window does not fit 8 MiB
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        svc = service(
            slow(denoiser, 0.02), input=bind(push, LOCAL), input_mode="pull", memory_budget=budget, queue_size=1000
        )
        sub = subscribe(svc.endpoints["output"])
        assert svc.wait_for_subscribers(1, 10)
        big = np.zeros((1024, 1024), np.uint16)
        frame = np.zeros((256, 256), np.uint16)  # 128 KiB: 32 fill the 4 MiB queue
        push.send_multipart(encode_frame(big, "big", 0), copy=False)
        for i in range(200):
            push.send_multipart(encode_frame(frame, "small", i), copy=False)
            assert svc.status()["memory"]["input_queue_bytes"] <= budget // 4
        push.send_multipart(encode(event_header("end", "small")))
        sub.collect(lambda m: m.header.type == "end")
    finally:
        push.close()
    snap = svc.status()
    assert snap["rejected"] == {"over_budget": 1}  # the big frame: its window would not fit the budget
    assert snap["counters"]["dropped"] > 0  # live mode: the byte bound dropped the oldest, not 1000 messages
    assert not svc.stopping


@pytest.mark.timeout(60)
def test_announced_shapes_are_warmed_once_when_idle_and_never_beyond_the_budget(
    denoiser: Any, service: Collect, subscribe: Collect, zctx: zmq.Context[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="emlive.stream.service")
    push = zctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    try:
        svc = service(denoiser, input=bind(push, LOCAL), input_mode="pull", lossless=True, memory_budget=64 << 20)
        sub = subscribe(svc.endpoints["output"])
        assert svc.wait_for_subscribers(1, 10)
        for k in range(3):  # three starts announcing 2048x2048: each refused at once (no 4 s stall, no 3.9 GB)
            push.send_multipart(encode(event_header("start", f"huge-{k}", shape=(2048, 2048), dtype="uint16")))
        for k in range(3):  # three announcing a small size: one warm-up
            push.send_multipart(encode(event_header("start", f"small-{k}", shape=(48, 40), dtype="uint16")))
        sub.collect(lambda m: m.header.acquisition == "small-2")
        frame = np.zeros((48, 40), np.uint16)
        for i in range(6):
            push.send_multipart(encode_frame(frame, "small-2", i), copy=False)
        push.send_multipart(encode(event_header("end", "small-2")))
        got = sub.collect(lambda m: m.header.type == "end")
    finally:
        push.close()
    assert len([m for m in got if m.header.type == "frame"]) == 6
    assert svc.status()["counters"]["warmups_refused"] == 3
    warmed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("model warmed up")]
    assert len(warmed) <= 1 and all("48x40" in line for line in warmed)
    assert not any("2048x2048" in line for line in warmed)
