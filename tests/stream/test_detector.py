"""The detector simulator: pacing, acquisitions, loops, sources; and a CURVE-protected link through the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
import zmq.auth

from emlive.core.errors import ConfigError
from emlive.core.protocol import CurveClient, CurveServer, create_keys, decode
from emlive.core.readers import ArrayMovie
from emlive.stream.detector import DetectorConfig, DetectorSimulator
from emlive.stream.service import DenoiseService, ServiceConfig

LOCAL = "tcp://127.0.0.1:0"


def _pull(zctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sock = zctx.socket(zmq.PULL)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def _drain(sock: zmq.Socket[Any], until_ends: int) -> list[Any]:
    out, ends = [], 0
    while ends < until_ends:
        assert sock.poll(10000), f"no message after {len(out)}"
        msg = decode(sock.recv_multipart(copy=False))
        out.append(msg)
        ends += msg.header.type == "end"
    return out


@pytest.mark.timeout(30)
def test_pacing_is_deadline_based(zctx: zmq.Context[Any], movie: np.ndarray) -> None:
    frames = np.concatenate([movie, movie, movie])[:26]
    det = DetectorSimulator(DetectorConfig(output=LOCAL, mode="push", fps=50, acquisition="pace"), ArrayMovie(frames))
    pull = _pull(zctx, det.open())
    try:
        det.start()
        msgs = [m for m in _drain(pull, 1) if m.header.type == "frame"]
        det.wait(10)
    finally:
        det.stop()
        pull.close()
    stamps = np.array([m.header.timestamp for m in msgs])
    span = stamps[-1] - stamps[0]
    assert len(msgs) == 26
    assert span >= 25 / 50 - 0.005  # never ahead of the schedule ...
    assert span <= 25 / 50 + 0.15  # ... and no drift: 25 periods, not 25 x (period + sending time)
    assert det.sent_frames == 26


@pytest.mark.timeout(30)
def test_loops_are_new_acquisitions_and_frames_caps_the_total(zctx: zmq.Context[Any], movie: np.ndarray) -> None:
    det = DetectorSimulator(
        DetectorConfig(output=LOCAL, mode="push", fps=0, loop=True, frames=25, acquisition="run"), ArrayMovie(movie)
    )
    pull = _pull(zctx, det.open())
    try:
        det.start()
        msgs = _drain(pull, 3)
        det.wait(10)
    finally:
        det.stop()
        pull.close()
    starts = [m.header for m in msgs if m.header.type == "start"]
    assert [h.acquisition for h in starts] == ["run", "run.1", "run.2"]
    assert starts[0].shape == movie.shape[1:] and starts[0].extra["frames"] == 10
    frames = [m for m in msgs if m.header.type == "frame"]
    assert len(frames) == 25 and [m.header.index for m in frames][-5:] == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(frames[12].data, movie[2])
    assert [m.header.index for m in msgs if m.header.type == "end"] == [9, 9, 4]


@pytest.mark.timeout(30)
def test_a_continuous_loop_is_one_acquisition_played_forward_and_back(
    zctx: zmq.Context[Any], movie: np.ndarray
) -> None:
    det = DetectorSimulator(
        DetectorConfig(output=LOCAL, mode="push", fps=0, loop=True, continuous=True, frames=25, acquisition="live"),
        ArrayMovie(movie),
    )
    pull = _pull(zctx, det.open())
    try:
        det.start()
        msgs = _drain(pull, 1)
        det.wait(10)
    finally:
        det.stop()
        pull.close()
    assert [m.header.type for m in msgs[:2]] == ["start", "frame"] and msgs[-1].header.type == "end"
    frames = [m for m in msgs if m.header.type == "frame"]
    assert {m.header.acquisition for m in msgs} == {"live"} and len(frames) == 25
    assert [m.header.index for m in frames] == list(range(25)) and msgs[-1].header.index == 24
    # the movie (10 frames) forward, back without repeating its ends, forward again: no jump from 9 to 0
    order = [*range(10), *range(8, 0, -1), *range(7)]
    np.testing.assert_array_equal(np.stack([m.data for m in frames]), movie[order])
    assert det.acquisitions == ["live"]


@pytest.mark.timeout(30)
def test_synthetic_and_file_sources(zctx: zmq.Context[Any], tmp_path: Path, movie: np.ndarray) -> None:
    from emlive.core.writers import write_movie

    path = write_movie(tmp_path / "m.mrc", movie[:4], pixel_size_nm=0.5)
    for source, n in (("synthetic", 3), (str(path), 4)):
        det = DetectorSimulator(
            DetectorConfig(source=source, output=LOCAL, mode="push", fps=0, size=32, synthetic_frames=3)
        )
        pull = _pull(zctx, det.open())
        try:
            det.start()
            msgs = [m for m in _drain(pull, 1) if m.header.type == "frame"]
        finally:
            det.stop()
            pull.close()
        assert len(msgs) == n
        if source != "synthetic":
            np.testing.assert_array_equal(np.stack([m.data for m in msgs]), movie[:4])
            assert msgs[0].header.pixel_size_nm == pytest.approx(0.5)
        else:
            assert msgs[0].header.shape == (32, 32)


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"fps": -1.0}, "fps"),
        ({"mode": "dealer"}, "mode"),
        ({"frames": 0}, "frames"),
        ({"acquisition": ""}, "acq"),
        ({"continuous": True}, "add --loop"),
    ],
)
def test_bad_detector_settings(changes: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        DetectorConfig(**changes).validate()


@pytest.mark.timeout(30)
def test_pub_waits_for_subscribers_and_says_so(movie: np.ndarray) -> None:
    det = DetectorSimulator(DetectorConfig(output=LOCAL, wait_subscribers=1, wait_timeout_s=0.2), ArrayMovie(movie))
    det.start()
    try:
        with pytest.raises(ConfigError, match="0 of 1 subscriber"):
            det.wait(10)
    finally:
        det.stop()


@pytest.mark.timeout(60)
def test_a_curve_protected_link_end_to_end(
    zctx: zmq.Context[Any], denoiser: Any, movie: np.ndarray, tmp_path: Path
) -> None:
    det_pub, det_secret = create_keys(tmp_path / "det", "detector")
    svc_pub, svc_secret = create_keys(tmp_path / "svc", "service")
    viewer_pub, viewer_secret = create_keys(tmp_path / "viewers", "viewer")
    det = DetectorSimulator(
        DetectorConfig(output=LOCAL, mode="push", fps=0, acquisition="secret", curve_server=CurveServer(det_secret)),
        ArrayMovie(movie),
    )
    svc = DenoiseService(
        ServiceConfig(model=None, input=det.open(), output=LOCAL, input_mode="pull", lossless=True,
                      curve_client=CurveClient(det_pub),
                      curve_server=CurveServer(svc_secret, authorized_clients=tmp_path / "viewers")),
        denoiser=denoiser,
    )  # fmt: skip
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.curve_serverkey = zmq.auth.load_certificate(str(svc_pub))[0]
    sub.curve_publickey, sub.curve_secretkey = zmq.auth.load_certificate(str(viewer_secret))
    try:
        svc.start()
        sub.connect(svc.endpoints["output"])
        assert svc.wait_for_subscribers(1, 10)
        det.start()
        got = []
        while True:
            assert sub.poll(10000)
            msg = decode(sub.recv_multipart(copy=False))
            got.append(msg)
            if msg.header.type == "end":
                break
        assert len([m for m in got if m.header.type == "frame"]) == len(movie)
    finally:
        det.stop()
        svc.stop()
        sub.close()
    assert viewer_pub.exists()
