"""``emlive detector`` and ``emlive serve`` as real subprocesses: end to end, signals, a crash."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.core.readers import ArrayMovie, open_movie
from emlive.core.writers import write_movie
from emlive.stream.detector import DetectorConfig, DetectorSimulator

Fixture = Callable[..., Any]


def _wait_status(zctx: zmq.Context[Any], endpoint: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Read the service's status messages until ``ready(status)``."""
    sock = zctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    try:
        for _ in range(200):
            if not sock.poll(20000):
                raise AssertionError("no status message from the service within 20 s")
            status: dict[str, Any] = json.loads(sock.recv())
            if ready(status):
                return status
        raise AssertionError("the service never reached the expected state")
    finally:
        sock.close()


@pytest.mark.timeout(90)
def test_end_to_end_detector_to_service_to_subscriber(
    model_path: Path,
    denoiser: Any,
    make_movie: Fixture,
    emlive_proc: Fixture,
    subscribe: Fixture,
    offline_ref: Fixture,
    until_end: Any,
    free_tcp_port: Fixture,
    zctx: zmq.Context[Any],
    tmp_path: Path,
) -> None:
    frames = make_movie(12, (48, 56), seed=11)
    source = write_movie(tmp_path / "movie.tif", frames)
    detector_address = free_tcp_port()
    serve = emlive_proc(
        [
            "serve",
            "--model",
            str(model_path),
            "--input",
            detector_address,
            "--input-mode",
            "pull",
            "--lossless",
            "--output",
            "tcp://127.0.0.1:0",
            "--status",
            "tcp://127.0.0.1:0",
            "--status-interval",
            "0.2",
            "--threads",
            "1",
            "--record",
            str(tmp_path / "rec.mrc"),
            "--record-what",
            "both",
        ],
        tmp_path / "serve.log",
    )
    endpoints = serve.ready["endpoints"]
    sub = subscribe(endpoints["output"])
    _wait_status(zctx, endpoints["status"], lambda s: s["subscriptions"] >= 1)
    det = emlive_proc(
        [
            "detector",
            "--source",
            str(source),
            "--mode",
            "push",
            "--fps",
            "30",
            "--acquisition",
            "e2e",
            "--output",
            detector_address,
        ],
        tmp_path / "detector.log",
    )
    msgs = sub.collect(until_end, timeout=60)
    assert det.popen.wait(30) == 0
    den = [m for m in msgs if m.header.type == "frame" and m.header.kind == "denoised"]
    assert [m.header.index for m in den] == list(range(len(frames)))
    np.testing.assert_allclose(np.stack([m.data for m in den]), offline_ref(denoiser, frames), rtol=1e-6, atol=1e-6)
    assert {m.header.acquisition for m in den} == {"e2e"}
    serve.popen.send_signal(signal.SIGTERM)
    assert serve.popen.wait(30) == 0, serve.log()
    with open_movie(tmp_path / "rec-e2e-raw.mrc") as raw, open_movie(tmp_path / "rec-e2e-denoised.mrc") as out:
        np.testing.assert_array_equal(raw[:], frames)
        assert len(out) == len(frames)
    assert "SIGTERM received" in serve.log()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["INT", "TERM", "KILL"])
def test_signals_shut_down_cleanly_and_a_crash_leaves_a_readable_recording(
    signum: signal.Signals,
    model_path: Path,
    make_movie: Fixture,
    emlive_proc: Fixture,
    zctx: zmq.Context[Any],
    tmp_path: Path,
) -> None:
    frames = make_movie(10, (48, 56), seed=12)
    det = DetectorSimulator(
        DetectorConfig(output="tcp://127.0.0.1:0", fps=40, loop=True, acquisition="sig", wait_subscribers=1),
        ArrayMovie(frames),
    )
    det.open()
    try:
        serve = emlive_proc(
            [
                "serve",
                "--model",
                str(model_path),
                "--input",
                str(det.endpoint),
                "--output",
                "tcp://127.0.0.1:0",
                "--status",
                "tcp://127.0.0.1:0",
                "--status-interval",
                "0.2",
                "--threads",
                "1",
                "--record",
                str(tmp_path / "rec.mrc"),
            ],
            tmp_path / "serve.log",
        )
        det.start()
        _wait_status(zctx, serve.ready["endpoints"]["status"], lambda s: s["counters"].get("recorded_raw", 0) >= 5)
        serve.popen.send_signal(signum)
        code = serve.popen.wait(30)
    finally:
        det.stop()
    recording = tmp_path / "rec-sig-raw.mrc"
    lines = (tmp_path / "rec-sig-raw.mrc.frames.jsonl").read_text().splitlines()
    with open_movie(recording) as rec:
        assert len(rec) >= 5
        for t in range(len(rec)):  # every frame in the file is complete and correct
            np.testing.assert_array_equal(rec.frame(t), frames[json.loads(lines[t])["index"]])
        n = len(rec)
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
        assert len(lines) in (n, n + 1)  # the frame being written when killed may be cut: readable up to it
        return
    assert code == 0, serve.log()
    log = serve.log()
    assert f"{signal.Signals(signum).name} received" in log
    assert f"closed {recording} ({n} frames)" in log
    assert len(lines) == n


@pytest.mark.timeout(60)
def test_serve_refuses_bad_settings_in_one_clear_line(model_path: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    cases = [
        (["--model", str(model_path), "--input", "tcp://127.0.0.1:1", "--output", "tcp://0.0.0.0:0"], "--bind-any"),
        (["--model", str(tmp_path / "none.pt"), "--input", "tcp://127.0.0.1:1", "--output", "tcp://127.0.0.1:0"],
         "none.pt"),
        (["--model", str(model_path), "--input", "tcp://127.0.0.1:1", "--record", str(tmp_path / "x.avi")], ".avi"),
    ]  # fmt: skip
    for args, needle in cases:
        done = subprocess.run(
            [sys.executable, "-m", "emlive", "serve", *args], capture_output=True, text=True, timeout=50, check=False
        )
        assert done.returncode == 2, done.stderr
        errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
        assert len(errors) == 1 and needle in errors[0], done.stderr
        assert "Traceback" not in done.stderr
