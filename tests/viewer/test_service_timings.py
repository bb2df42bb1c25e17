"""The viewer keeps the service's own timings of each denoised frame (from its header) for ``/api/health``: the demo
benchmark's service latency over exactly its measured interval, flushed run ends told apart."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.core.protocol import encode_frame
from emlive.viewer.server import ViewerServer


def _health(server: ViewerServer) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.bound_port}/api/health", timeout=5) as response:
        return dict(json.loads(response.read()))


@pytest.mark.timeout(30)
def test_health_lists_each_denoised_frames_service_timings(
    zctx: zmq.Context[Any], make_viewer: Callable[..., ViewerServer]
) -> None:
    pub = zctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    server = make_viewer(endpoint)
    frame = np.ones((16, 16), np.float32)
    timed = {"kind": "denoised", "published_at": 1000.5, "latency_ms": 42.0, "infer_ms": 30.0, "age_ms": 80.0}
    try:
        deadline = time.monotonic() + 20
        while not _health(server)["service_frames"] and time.monotonic() < deadline:  # (the SUB joins late)
            pub.send_multipart(encode_frame(frame, "a", 0, extra={**timed, "flushed": False}))
            time.sleep(0.05)
        pub.send_multipart(encode_frame(frame, "a", 1, extra={"kind": "denoised"}))  # no timings: not listed
        pub.send_multipart(encode_frame(frame, "a", 2, extra={"kind": "raw", **timed}))  # a raw frame: not listed
        pub.send_multipart(encode_frame(frame, "a", 3, extra={**timed, "latency_ms": 99.0, "flushed": True}))
        while _health(server)["service_frames"][-1][1] != 99.0 and time.monotonic() < deadline:
            time.sleep(0.05)
        listed = _health(server)["service_frames"]
    finally:
        pub.close(linger=0)
    assert listed[0] == [1000.5, 42.0, 30.0, 80.0, 0.0]
    assert listed[-1] == [1000.5, 99.0, 30.0, 80.0, 1.0]
    assert all(row in ([1000.5, 42.0, 30.0, 80.0, 0.0], [1000.5, 99.0, 30.0, 80.0, 1.0]) for row in listed)
