"""Every pixel type the protocol carries, live: denoised by the service exactly as offline, and recorded without
loss (a type the record's format cannot hold goes to TIFF for that acquisition; the service never stops).

Real loopback ZeroMQ (a detector PUSH socket, the service, a subscriber), the real runtime and real files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.core.pixeltypes import PIXEL_TYPES, WIRE_DTYPES, storage_dtype
from emlive.core.protocol import encode, encode_frame, event_header
from emlive.core.readers import open_movie
from emlive.stream.service import DenoiseService, ServiceConfig

LOCAL = "tcp://127.0.0.1:0"
WIRE = list(WIRE_DTYPES.values())
BOTH_ORDERS = WIRE + [d.newbyteorder("S") for d in WIRE if d.itemsize > 1]


def typical_movie(
    dtype: np.dtype[Any], frames: int = 6, shape: tuple[int, int] = (24, 32), seed: int = 0
) -> np.ndarray:
    """Poisson counts on a smooth pattern, moved into the type's typical range (negative values for signed
    integers, beyond 16 bits for 32-bit integers, fractions for floats)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = 40 + 20 * np.sin(xx / 5.0) + 10 * np.cos(yy / 7.0)
    counts = np.stack([rng.poisson(base + t) for t in range(frames)]).astype(np.float64)
    name = dtype.newbyteorder("=").name
    shift = {"int8": -60.0, "int16": -60.0, "uint32": 100_000.0, "int32": -100_000.0}.get(name, 0.0)
    values = counts * 0.37 if dtype.kind == "f" else counts + shift
    return values.astype(dtype)


@pytest.fixture
def live(services: list[DenoiseService]) -> Callable[..., DenoiseService]:
    def make(denoiser: Any, endpoint: str, **kw: Any) -> DenoiseService:
        cfg = ServiceConfig(model=None, input=endpoint, input_mode="pull", lossless=True, output=LOCAL, **kw)
        svc = DenoiseService(cfg, denoiser=denoiser)
        services.append(svc)
        svc.start()
        return svc

    return make


def send_acquisition(sock: zmq.Socket[Any], acquisition: str, frames: np.ndarray, announce: bool = True) -> None:
    """start (announcing shape and type, or not), the frames in their own dtype and byte order, end."""
    shape = (frames.shape[1], frames.shape[2])
    start = event_header("start", acquisition, shape=shape, dtype=frames.dtype) if announce else None
    sock.send_multipart(encode(start or event_header("start", acquisition)))
    for i, frame in enumerate(frames):
        sock.send_multipart(encode_frame(frame, acquisition, i), copy=False)
    sock.send_multipart(encode(event_header("end", acquisition)))


def denoised_by_acquisition(messages: list[Any]) -> dict[str, np.ndarray]:
    out: dict[str, list[np.ndarray]] = {}
    for m in messages:
        if m.header.type == "frame" and m.header.kind == "denoised":
            assert m.header.index == len(out.setdefault(m.header.acquisition, []))
            out[m.header.acquisition].append(m.data)
    return {acq: np.stack(frames) for acq, frames in out.items()}


def _until_end_of(acquisition: str) -> Callable[[Any], bool]:
    return lambda m: m.header.type == "end" and m.header.acquisition == acquisition


@pytest.mark.timeout(90)
def test_every_wire_type_and_byte_order_is_denoised_live_exactly_as_offline(
    denoiser: Any, live: Callable[..., DenoiseService], subscribe: Any, push: Any
) -> None:
    sock, endpoint = push
    svc = live(denoiser, endpoint)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    movies = {f"acq-{dtype.str}": typical_movie(dtype, seed=i) for i, dtype in enumerate(BOTH_ORDERS)}
    for acq, frames in movies.items():
        send_acquisition(sock, acq, frames, announce=len(acq) % 2 == 0)
    got = denoised_by_acquisition(sub.collect(_until_end_of(list(movies)[-1]), timeout=60))
    assert set(got) == set(movies), f"no denoised frames for {set(movies) - set(got)}"
    assert svc.status()["counters"].get("infer_errors", 0) == 0
    for acq, frames in movies.items():
        offline = np.stack([f for _, f in denoiser.denoise_movie(frames)])
        np.testing.assert_array_equal(got[acq], offline, err_msg=acq)  # live == offline, bit for bit
        as_float32 = np.stack([f for _, f in denoiser.denoise_movie(frames.astype(np.float32))])
        if PIXEL_TYPES[frames.dtype.newbyteorder("=").name].exact_float32:
            np.testing.assert_array_equal(got[acq], as_float32, err_msg=acq)
        else:  # normalised in float64: float32 rounding apart (of the z-scores, and of values ~1e5 on the way back)
            ulps = 4 * float(np.finfo(np.float32).eps) * float(np.abs(as_float32).max())
            atol = 1e-5 * float(np.ptp(as_float32)) + ulps
            np.testing.assert_allclose(got[acq], as_float32, rtol=0, atol=atol, err_msg=acq)


@pytest.mark.timeout(90)
def test_recording_keeps_every_type_losslessly_and_never_stops_the_service(
    denoiser: Any,
    live: Callable[..., DenoiseService],
    subscribe: Any,
    push: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="emlive.stream.recording")
    sock, endpoint = push
    svc = live(denoiser, endpoint, record=tmp_path / "rec.mrc", record_what="both")
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    movies = {f"acq-{dtype.name}": typical_movie(dtype, frames=4, seed=i) for i, dtype in enumerate(WIRE)}
    movies["acq-uint32"] = movies["acq-uint32"] + np.uint32(2**24 + 2**30)  # values float32 cannot hold
    for acq, frames in movies.items():
        send_acquisition(sock, acq, frames, announce=acq != "acq-uint32")  # the first frame decides
    got = denoised_by_acquisition(sub.collect(_until_end_of(list(movies)[-1]), timeout=60))
    assert not svc.stopping, "a valid frame stopped the service"
    svc.stop()
    counters = svc.status()["counters"]
    total = sum(len(m) for m in movies.values())
    assert counters["recorded_raw"] == counters["recorded_denoised"] == total
    switched = []
    for acq, frames in movies.items():
        stored = storage_dtype(frames.dtype, "mrc")
        raw_path = tmp_path / f"rec-{acq}-raw{'.mrc' if stored is not None else '.tif'}"
        if stored is None:
            switched.append(acq)
            assert not (tmp_path / f"rec-{acq}-raw.mrc").exists()
        with open_movie(raw_path) as raw, open_movie(tmp_path / f"rec-{acq}-denoised.mrc") as den:
            assert raw.dtype == (frames.dtype if stored is None else stored), acq
            np.testing.assert_array_equal(raw[:].astype(frames.dtype), frames, err_msg=acq)  # lossless
            np.testing.assert_array_equal(den[:], got[acq], err_msg=acq)
        assert raw_path.with_name(raw_path.name + ".frames.jsonl").is_file()
    assert switched == ["acq-uint32", "acq-int32", "acq-float64"]
    warnings = [r.getMessage() for r in caplog.records if "recorded to a .tif file" in r.getMessage()]
    assert len(warnings) == 3 and all("raw frames of acq-" in w for w in warnings), warnings
