"""The fan-out (``--workers N``): real worker processes on a loopback ipc socket, a tiny ONNX model, real sockets.

Lossless output with 2 workers equals the in-process service's bit for bit and in order; live mode under overload
stays bounded and in order; a killed worker is reported and its jobs go to the other; stop leaves no process.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.core.errors import ConfigError
from emlive.core.protocol import bind, encode, encode_frame, event_header
from emlive.stream.inferworker import RingMirror
from emlive.stream.service import DenoiseService, ServiceConfig

LOCAL = "tcp://127.0.0.1:0"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def onnx_model(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from emlive.export.onnx_export import export_onnx

    return export_onnx(model_path, tmp_path_factory.mktemp("fanout") / "tiny5.onnx", check=False).path


def is_end(m: Any) -> bool:
    return bool(m.header.type == "end")


def denoised(messages: list[Any]) -> list[Any]:
    return [m for m in messages if m.header.type == "frame" and m.header.kind == "denoised"]


Serve = Callable[..., DenoiseService]


@pytest.fixture
def serve(services: list[DenoiseService], onnx_model: Path) -> Serve:
    def make(input_: str, **kw: Any) -> DenoiseService:
        kw.setdefault("threads", 1)
        svc = DenoiseService(ServiceConfig(model=onnx_model, input=input_, output=LOCAL, input_mode="pull", **kw))
        services.append(svc)
        svc.start()
        return svc

    return make


def _send(sock: zmq.Socket[Any], frames: np.ndarray, acq: str, delay: float = 0.0, end: bool = True) -> None:
    for i, frame in enumerate(frames):
        sock.send_multipart(encode_frame(frame, acq, i), copy=False)
        if delay:
            time.sleep(delay)
    if end:
        sock.send_multipart(encode(event_header("end", acq)))


def _run(svc: DenoiseService, sock: zmq.Socket[Any], subscribe: Any, frames: np.ndarray, acq: str) -> list[Any]:
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    _send(sock, frames, acq)
    return denoised(sub.collect(is_end, timeout=40))


def _pids_gone(pids: list[int], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_two_workers_lossless_equal_one_engine_bit_for_bit_even_with_a_killed_worker(
    serve: Serve,
    subscribe: Any,
    zctx: zmq.Context[Any],
    push: tuple[zmq.Socket[Any], str],
    make_movie: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    movies = {"a": make_movie(14, seed=3), "b": make_movie(30, seed=5)}
    one = serve(push[1], lossless=True)
    ref = {acq: _run(one, push[0], subscribe, frames, acq) for acq, frames in movies.items()}
    one.stop()
    sock = zctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        two = serve(bind(sock, LOCAL), lossless=True, workers=2)
        workers = two.status()["workers"]
        assert [w["state"] for w in workers] == ["ready", "ready"]
        out = {"a": _run(two, sock, subscribe, movies["a"], "a")}
        sent_a = two.status()["counters"]["worker_frames_sent"]
        out["b"] = _kill_worker_midway(two, sock, subscribe, movies["b"], workers[0]["pid"])
        snap = two.status()
        with pytest.raises(ConfigError, match="not supported with --workers 2"):
            two.load_model(two.config.model or "")
        folder = two.fanout._folder if two.fanout is not None else None
        two.stop()
    finally:
        sock.close()
    for acq, frames in movies.items():
        assert [m.header.index for m in ref[acq]] == list(range(len(frames)))
        assert [m.header.index for m in out[acq]] == list(range(len(frames))), acq  # in order, none lost
        for a, b in zip(ref[acq], out[acq], strict=True):
            assert a.data is not None and b.data is not None
            assert a.data.tobytes() == b.data.tobytes(), f"{acq} frame {a.header.index} differs"
            assert a.header.extra["window"] == b.header.extra["window"]
    seqs = [m.header.extra["seq"] for m in out["a"] + out["b"]]
    assert seqs == sorted(seqs)
    # a worker gets about one new frame per job (its ring holds the rest): far below 5 frames per job
    assert sent_a <= 2 * len(movies["a"]) + 8, sent_a
    lost, alive = snap["workers"]
    assert lost["state"] == "lost" and "SIGKILL" in lost["error"], snap["workers"]
    assert alive["state"] == "ready" and snap["counters"]["worker_lost"] == 1
    assert snap["counters"]["denoised"] == sum(len(f) for f in movies.values())
    # (seen first as its process's exit, or as its vanished socket: either way the cause is named)
    assert re.search(r"inference worker 0 \(pid \d+\) lost: .*killed by SIGKILL", caplog.text), caplog.text
    assert _pids_gone([w["pid"] for w in workers]), "a worker outlived the service"
    assert folder is not None and not Path(folder).exists()


def _kill_worker_midway(
    svc: DenoiseService, sock: zmq.Socket[Any], subscribe: Any, frames: np.ndarray, victim: int
) -> list[Any]:
    """Stream ``frames`` as acquisition b, SIGKILL worker ``victim`` after 5 outputs; every output."""
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(2, 10)
    _send(sock, frames[:10], "b", end=False)
    first = denoised(sub.collect(lambda m: m.header.type == "frame" and m.header.index >= 5, timeout=20))
    os.kill(victim, signal.SIGKILL)
    for i in range(10, len(frames)):
        sock.send_multipart(encode_frame(frames[i], "b", i), copy=False)
    sock.send_multipart(encode(event_header("end", "b")))
    return first + denoised(sub.collect(is_end, timeout=30))


def test_live_mode_under_overload_stays_bounded_and_in_order(
    serve: Serve, subscribe: Any, push: tuple[zmq.Socket[Any], str], make_movie: Any
) -> None:
    frames = make_movie(40, (256, 256), seed=4)
    svc = serve(push[1], workers=2)
    out = _run(svc, push[0], subscribe, frames, "live")
    snap = svc.status()
    c = snap["counters"]
    indices = [m.header.index for m in out]
    assert indices == sorted(set(indices)), "published out of order"
    assert c["denoised"] + c.get("skipped", 0) + c.get("dropped", 0) == len(frames), c
    assert c.get("skipped", 0) > 0, c  # 40 frames at once: more than 2 engines take, the older windows skipped
    assert all(w["in_flight"] <= 1 for w in snap["workers"])  # live: one job per worker, nothing queued there
    assert indices[-1] == len(frames) - 1  # the end of the run is always denoised


def test_ring_mirror_sends_only_missing_frames() -> None:
    ring = RingMirror(5)
    assert ring.missing(1, [0, 1, 2, 3, 4]) == [0, 1, 2, 3, 4]
    ring.pushed(1, [0, 1, 2, 3, 4])
    assert ring.missing(1, [2, 3, 4, 5, 6]) == [5, 6]
    assert ring.held(1, [2, 3, 4, 5, 6]) == 3
    ring.pushed(1, [5, 6])
    assert ring.missing(1, [1, 2, 3, 4, 5]) == [1]  # 6 replaced 1 (same residue)
    assert ring.missing(2, [0, 1, 0, None, None]) == [0, 1]  # another run: nothing held
    with pytest.raises(ConfigError, match="workers=99"):
        ServiceConfig(model=Path("m.onnx"), input="tcp://127.0.0.1:1", output=LOCAL, workers=99).validate()


def test_a_hung_worker_is_lost_after_its_heartbeat_timeout(onnx_model: Path) -> None:
    from emlive.stream.fanout import FanOut, WorkerSettings
    from emlive.stream.telemetry import Telemetry

    settings = WorkerSettings(onnx_model, 2, threads=1, heartbeat_s=0.1, timeout_s=1.0)
    fan = FanOut(settings, Telemetry(), lambda *a: None, lossless=True)
    fan.start()
    try:
        hung = fan.workers[0].popen.pid
        os.kill(hung, signal.SIGSTOP)  # alive, silent: only the heartbeat timeout can tell
        deadline = time.monotonic() + 10
        while fan.workers[0].state != "lost" and time.monotonic() < deadline:
            fan.pump(0.05)
        states = fan.snapshot()
        assert states[0]["state"] == "lost" and "no heartbeat" in (states[0]["error"] or ""), states
        assert states[1]["state"] == "ready"
        assert fan.workers[0].popen.wait(5) == -signal.SIGKILL  # killed, not left hanging
    finally:
        fan.close()
    assert _pids_gone([w.popen.pid for w in fan.workers])
