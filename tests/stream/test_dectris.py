"""DECTRIS detector input: stream v1 against the real DECTRIS simulator (libertem-dectris), stream v2 from CBOR
messages encoded here, and the faults (bad hash, bad blob size, header variants, series change).

Real sockets on 127.0.0.1; the service runs in-process except for one ``emlive serve --input-format auto`` run.
"""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

bitshuffle = pytest.importorskip("bitshuffle", reason="DECTRIS input needs the dectris extra (bitshuffle)")
cbor2 = pytest.importorskip("cbor2", reason="DECTRIS stream v2 needs the dectris extra (cbor2)")
lz4_block = pytest.importorskip("lz4.block", reason="DECTRIS input needs the dectris extra (lz4)")

from emlive.core.protocol import ProtocolError  # noqa: E402
from emlive.core.readers import open_movie  # noqa: E402
from emlive.stream.dectris import DectrisDecoder, _tag_hook  # noqa: E402
from emlive.stream.service import DenoiseService, ServiceConfig  # noqa: E402

try:
    import libertem_dectris
except ImportError:  # pragma: no cover - depends on the environment
    libertem_dectris = None

pytestmark = pytest.mark.dectris
needs_sim = pytest.mark.skipif(
    libertem_dectris is None, reason="the DECTRIS simulator needs libertem-dectris (pip install libertem-dectris)"
)
LOCAL = "tcp://127.0.0.1:0"
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "models" / "synthetic-small.pt"
Collect = Callable[..., Any]


# --- encoders (what a DECTRIS detector sends) ----------------------------------------------------------------
def v1_blob(frame: np.ndarray, header: str = "present") -> bytes:
    """Bitshuffle + LZ4 in the HDF5-filter framing (as stream v1 blobs); header present, zeroed or missing."""
    blocks = bitshuffle.compress_lz4(np.ascontiguousarray(frame).ravel(), 0).tobytes()
    if header == "missing":
        return blocks
    if header == "zeroed":
        return bytes(12) + blocks
    return struct.pack(">QI", frame.nbytes, 8192) + blocks


def v1_header(series: int, shape: tuple[int, int], detail: str = "basic", frames: int = 1) -> tuple[bytes, bytes]:
    dheader = json.dumps({"htype": "dheader-1.0", "header_detail": detail, "series": series}).encode()
    config = {
        "ntrigger": frames,
        "nimages": 1,
        "trigger_mode": "exte",
        "x_pixels_in_detector": shape[1],
        "y_pixels_in_detector": shape[0],
        "bit_depth_image": 16,
        "count_time": 0.001,
    }
    return dheader, json.dumps(config).encode()


def v1_image(
    frame: np.ndarray,
    series: int,
    image: int,
    *,
    header: str = "present",
    encoding: str = "bs16-lz4<",
    with_hash: bool = True,
    blob: bytes | None = None,
    shape: tuple[int, int] | None = None,
) -> list[bytes]:
    if blob is None:
        if encoding == "lz4<":
            blob = lz4_block.compress(frame.tobytes(), store_size=False)
        elif encoding == "<":
            blob = frame.tobytes()
        else:
            blob = v1_blob(frame, header)
    h, w = shape or frame.shape
    digest = hashlib.md5(blob).hexdigest() if with_hash else ""
    return [
        json.dumps({"htype": "dimage-1.0", "frame": image, "series": series, "hash": digest}).encode(),
        json.dumps({"htype": "dimage_d-1.0", "shape": [w, h], "type": "uint16", "encoding": encoding}).encode(),
        blob,
        json.dumps(
            {"htype": "dconfig-1.0", "start_time": image * 1000, "stop_time": image * 1000 + 900, "real_time": 900}
        ).encode(),
    ]


def v1_end(series: int) -> list[bytes]:
    return [json.dumps({"htype": "dseries_end-1.0", "series": series}).encode()]


def v1_series(frames: np.ndarray, series: int, *, split_header: bool = True) -> list[list[bytes]]:
    dheader, config = v1_header(series, frames.shape[1:], frames=len(frames))
    head = [[dheader], [config]] if split_header else [[dheader, config]]
    return [*head, *(v1_image(f, series, i) for i, f in enumerate(frames)), v1_end(series)]


def write_zmqdump(path: Path, messages: list[list[bytes]]) -> Path:
    """A libertem-dectris "zmqdump": every ZMQ frame as [int64 LE length][bytes]."""
    with path.open("wb") as f:
        for msg in messages:
            for part in msg:
                f.write(struct.pack("<q", len(part)))
                f.write(part)
    return path


def typed_array(frame: np.ndarray, compression: str | None) -> cbor2.CBORTag:
    """RFC 8746 tag 40 (row-major) around a little-endian uint16 typed array (tag 69), optionally wrapped in
    DECTRIS compression (tag 56500)."""
    raw = np.ascontiguousarray(frame, "<u2")
    payload: Any = raw.tobytes()
    if compression == "bslz4":
        payload = cbor2.CBORTag(56500, ["bslz4", 2, v1_blob(raw)])
    elif compression == "lz4":
        payload = cbor2.CBORTag(56500, ["lz4", 2, lz4_block.compress(payload, store_size=False)])
    return cbor2.CBORTag(40, [list(frame.shape), cbor2.CBORTag(69, payload)])


def v2_start(series: int, shape: tuple[int, int]) -> bytes:
    msg = {
        "type": "start",
        "series_id": series,
        "series_unique_id": f"u{series}",
        "image_size_x": shape[1],
        "image_size_y": shape[0],
        "image_dtype": "uint16",
        "channels": [{"thresholds": [1]}],
    }
    return b"\xd9\xd9\xf7" + cbor2.dumps(msg)


def v2_image(series: int, image: int, channels: dict[str, np.ndarray], compression: str | None = "bslz4") -> bytes:
    msg = {
        "type": "image",
        "series_id": series,
        "series_unique_id": f"u{series}",
        "image_id": image,
        "real_time": [900, 1000000],
        "start_time": [image * 1000, 1000000],
        "stop_time": [image * 1000 + 900, 1000000],
        "data": {name: typed_array(arr, compression) for name, arr in channels.items()},
    }
    return b"\xd9\xd9\xf7" + cbor2.dumps(msg)


def v2_end(series: int) -> bytes:
    return b"\xd9\xd9\xf7" + cbor2.dumps({"type": "end", "series_id": series, "series_unique_id": f"u{series}"})


# --- fixtures --------------------------------------------------------------------------------------------------
@pytest.fixture
def dectris_service(services: list[DenoiseService]) -> Callable[..., DenoiseService]:
    def make(denoiser: Any, **kw: Any) -> DenoiseService:
        kw.setdefault("output", LOCAL)
        kw.setdefault("input_mode", "pull")
        kw.setdefault("lossless", True)
        svc = DenoiseService(ServiceConfig(model=None, **kw), denoiser=denoiser)
        services.append(svc)
        svc.start()
        return svc

    return make


def _send(sock: zmq.Socket[Any], messages: list[list[bytes]]) -> None:
    for msg in messages:
        sock.send_multipart(msg)


def _frames(msgs: list[Any], kind: str = "denoised") -> list[Any]:
    return [m for m in msgs if m.header.type == "frame" and m.header.kind == kind]


def _until_end_of(acquisition: str) -> Callable[[Any], bool]:
    return lambda m: m.header.type == "end" and m.header.acquisition == acquisition


def _movie(frames: int = 8, shape: tuple[int, int] = (32, 40), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    base = 40 + 20 * np.sin(xx / 5.0) + 10 * np.cos(yy / 7.0)
    return np.stack([rng.poisson(base + t) for t in range(frames)]).astype(np.uint16)


# --- decoder units ------------------------------------------------------------------------------------------------
@pytest.mark.timeout(10)
@pytest.mark.parametrize("header", ["present", "zeroed", "missing"])
@pytest.mark.parametrize("encoding", ["bs16-lz4<", "lz4<", "<"])
def test_v1_blob_variants_decode_exactly(header: str, encoding: str) -> None:
    frame = _movie(1)[0]
    dec = DectrisDecoder("dectris-v1")
    [msg] = dec.decode(v1_image(frame, 3, 5, header=header, encoding=encoding))
    assert msg.data is not None
    np.testing.assert_array_equal(msg.data, frame)
    h = msg.header
    assert (h.type, h.acquisition, h.index, h.shape, h.dtype) == ("frame", "3", 5, frame.shape, "uint16")
    assert h.extra["series"] == 3 and h.extra["image"] == 5 and h.extra["encoding"] == encoding
    assert h.extra["start_time_ns"] == 5000


@pytest.mark.timeout(10)
def test_v1_bs32_and_big_endian() -> None:
    frame = _movie(1)[0].astype(">u4")
    blob = struct.pack(">QI", frame.nbytes, 8192) + bitshuffle.compress_lz4(frame.ravel(), 0).tobytes()
    parts = v1_image(frame.astype(np.uint16), 1, 0, encoding="bs32-lz4>", blob=blob)
    parts[1] = json.dumps(
        {"htype": "dimage_d-1.0", "shape": [40, 32], "type": "uint32", "encoding": "bs32-lz4>"}
    ).encode()
    [msg] = DectrisDecoder("dectris-v1").decode(parts)
    assert msg.data is not None and msg.header.dtype == "uint32"
    np.testing.assert_array_equal(msg.data, frame)


@pytest.mark.timeout(10)
def test_v1_header_as_one_or_two_messages_and_detail_variants() -> None:
    dheader, config = v1_header(9, (32, 40))
    one = DectrisDecoder("dectris-v1").decode([dheader, config])
    dec = DectrisDecoder("dectris-v1")
    assert dec.decode([dheader]) == []  # waits for the configuration
    two = dec.decode([config])
    assert len(one) == len(two) == 1
    for [msg] in (one, two):
        h = msg.header
        assert (h.type, h.acquisition, h.shape, h.dtype) == ("start", "9", (32, 40), "uint16")
        assert h.extra["series"] == 9 and h.extra["config"]["count_time"] == 0.001
    none_hdr, _ = v1_header(10, (32, 40), detail="none")
    [msg] = DectrisDecoder("dectris-v1").decode([none_hdr])
    assert msg.header.type == "start" and msg.header.shape is None and msg.header.extra["header_detail"] == "none"
    all_hdr, _ = v1_header(11, (32, 40), detail="all")
    flat = [json.dumps({"htype": "dflatfield-1.0", "shape": [40, 32], "type": "float32"}).encode(), b"\0" * 16]
    [msg] = DectrisDecoder("dectris-v1").decode([all_hdr, config, *flat])
    assert msg.header.shape == (32, 40)
    # a header whose configuration never came: the first frame still starts the series
    dec = DectrisDecoder("dectris-v1")
    dec.decode([dheader])
    msgs = dec.decode(v1_image(_movie(1)[0], 9, 0))
    assert [m.header.type for m in msgs] == ["start", "frame"]


@pytest.mark.timeout(10)
def test_v1_bad_hash_and_bad_size_are_rejected_with_a_clear_reason() -> None:
    frame = _movie(1)[0]
    parts = v1_image(frame, 1, 0)
    parts[0] = json.dumps({"htype": "dimage-1.0", "frame": 0, "series": 1, "hash": "0" * 32}).encode()
    dec = DectrisDecoder("dectris-v1")
    with pytest.raises(ProtocolError, match="MD5") as bad_hash:
        dec.decode(parts)
    assert bad_hash.value.reason == "bad_hash"
    # dimage_d announces a bigger frame than the blob holds: header size mismatch, or (no header) no decompression
    with pytest.raises(ProtocolError, match="announces") as bad_size:
        dec.decode(v1_image(frame, 1, 1, shape=(64, 40)))
    assert bad_size.value.reason == "bad_size"
    with pytest.raises(ProtocolError, match="does not decompress") as bad_blob:
        dec.decode(v1_image(frame, 1, 2, shape=(64, 40), header="missing"))
    assert bad_blob.value.reason == "bad_blob"
    with pytest.raises(ProtocolError, match="decompress"):
        dec.decode(v1_image(frame, 1, 3, blob=v1_blob(frame)[:-50], with_hash=False))
    with pytest.raises(ProtocolError, match="bytes"):
        dec.decode(v1_image(frame, 1, 4, encoding="lz4<", shape=(16, 40)))
    [ok] = dec.decode(v1_image(frame, 1, 5, with_hash=False))  # no hash: nothing to check
    assert ok.header.index == 5


@pytest.mark.timeout(10)
@pytest.mark.parametrize("compression", ["bslz4", "lz4", None])
def test_v2_channels_and_compression(compression: str | None) -> None:
    a, b = _movie(2)
    msg = v2_image(4, 7, {"threshold_1": a, "threshold_2": b, "difference": a - b}, compression)
    [first] = DectrisDecoder("dectris-v2").decode([msg])
    [second] = DectrisDecoder("dectris-v2", channel="threshold_2").decode([msg])
    assert first.data is not None and second.data is not None
    np.testing.assert_array_equal(first.data, a)
    np.testing.assert_array_equal(second.data, b)
    h = second.header
    assert (h.acquisition, h.index, h.extra["series"], h.extra["image"], h.extra["channel"]) == (
        "4",
        7,
        4,
        7,
        "threshold_2",
    )
    with pytest.raises(ProtocolError, match="--dectris-channel"):
        DectrisDecoder("dectris-v2", channel="threshold_9").decode([msg])
    [start] = DectrisDecoder("auto").decode([v2_start(4, a.shape)])
    assert (start.header.type, start.header.shape, start.header.dtype) == ("start", a.shape, "uint16")
    [end] = DectrisDecoder("dectris-v2").decode([v2_end(4)])
    assert (end.header.type, end.header.acquisition) == ("end", "4")


@pytest.mark.timeout(10)
def test_cbor_tag_hook_accepts_both_cbor2_signatures() -> None:
    tag = cbor2.CBORTag(56500, ["lz4", 2, b"xyz"])
    before_6 = _tag_hook(object(), tag)  # cbor2 < 6: (decoder, tag)
    from_6 = _tag_hook(tag, False)  # cbor2 >= 6: (tag, immutable)
    assert before_6 == from_6 and from_6.algorithm == "lz4"
    other = cbor2.CBORTag(1234, "x")
    assert _tag_hook(other, False) is other


@pytest.mark.timeout(10)
def test_auto_detects_emlive_and_rejects_unknown() -> None:
    from emlive.core.protocol import encode_frame

    frame = _movie(1)[0]
    [msg] = DectrisDecoder("auto").decode(encode_frame(frame, "acq", 0))
    assert msg.header.acquisition == "acq"
    with pytest.raises(ProtocolError, match="input-format"):
        DectrisDecoder("auto").decode([b'{"hello": 1}'])


# --- the service on real sockets ------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_service_v1_skips_corrupt_frames_and_keeps_running(
    denoiser: Any, dectris_service: Collect, subscribe: Collect, push: Any
) -> None:
    sock, endpoint = push
    frames = _movie(8)
    svc = dectris_service(denoiser, input=endpoint, input_format="dectris-v1", publish_raw=True)
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    msgs = v1_series(frames, 21)
    bad_hash = v1_image(frames[3], 21, 3)
    bad_hash[0] = json.dumps({"htype": "dimage-1.0", "frame": 3, "series": 21, "hash": "f" * 32}).encode()
    msgs[2 + 3] = bad_hash
    msgs[2 + 5] = v1_image(frames[5], 21, 5, shape=(64, 40))  # blob does not hold the announced size
    _send(sock, msgs)
    out = sub.collect(_until_end_of("21"))
    den, raw = _frames(out), _frames(out, "raw")
    assert [m.header.index for m in den] == [0, 1, 2, 4, 6, 7]
    for m in raw:
        np.testing.assert_array_equal(m.data, frames[m.header.index])
    assert all(m.header.acquisition == "21" and m.header.extra["series"] == 21 for m in den)
    assert [m.header.extra["image"] for m in den] == [0, 1, 2, 4, 6, 7]
    assert out[0].header.type == "start" and out[0].header.shape == frames.shape[1:]
    snap = svc.status()
    assert snap["counters"]["rejected"] == 2
    assert snap["rejected"] == {"bad_hash": 1, "bad_size": 1}


@pytest.mark.timeout(30)
def test_service_series_change_resets_window_and_drops_stale_frames(
    denoiser: Any, dectris_service: Collect, subscribe: Collect, push: Any
) -> None:
    sock, endpoint = push
    first, second = _movie(6, seed=1), _movie(6, seed=2)
    svc = dectris_service(denoiser, input=endpoint, input_format="dectris-v1")
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    old = v1_series(first, 1)[:-1]  # series 1 never ends: the detector was re-armed
    new = v1_series(second, 2)
    stale = v1_image(first[5], 1, 6)  # a late frame of series 1, after series 2 started
    _send(sock, [*old, *new[:3], stale, *new[3:]])
    out = sub.collect(_until_end_of("2"))
    den = _frames(out)
    assert [(m.header.acquisition, m.header.index) for m in den] == [("1", i) for i in range(6)] + [
        ("2", i) for i in range(6)
    ]
    for m in den:  # every window holds frames of its own series only
        assert set(m.header.extra["window"]) <= set(range(6))
    assert den[6].header.extra["window"] == [2, 1, 0, 1, 2]  # series 2 starts a fresh window
    assert den[5].header.extra["window"] == [3, 4, 5, 4, 3]  # series 1 finished with the windows of its end
    assert den[4].header.extra["window"] == [2, 3, 4, 5, 2]  # never the center frame twice


@pytest.mark.timeout(30)
def test_service_v2_denoises_the_chosen_channel(
    denoiser: Any, dectris_service: Collect, subscribe: Collect, push: Any
) -> None:
    sock, endpoint = push
    t1, t2 = _movie(6, seed=3), _movie(6, seed=4)
    svc = dectris_service(
        denoiser, input=endpoint, input_format="dectris-v2", dectris_channel="threshold_2", publish_raw=True
    )
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    msgs = [v2_start(5, t1.shape[1:])]
    msgs += [v2_image(5, i, {"threshold_1": t1[i], "threshold_2": t2[i]}) for i in range(6)]
    msgs.append(v2_end(5))
    _send(sock, [[m] for m in msgs])
    out = sub.collect(_until_end_of("5"))
    den, raw = _frames(out), _frames(out, "raw")
    assert [m.header.index for m in den] == list(range(6))
    np.testing.assert_array_equal(np.stack([m.data for m in raw]), t2)
    assert all(m.header.extra["channel"] == "threshold_2" for m in den)
    assert out[0].header.type == "start" and out[0].header.extra["series_unique_id"] == "u5"


@pytest.mark.timeout(10)
def test_dectris_formats_need_pull_input() -> None:
    from emlive.core.errors import ConfigError

    with pytest.raises(ConfigError, match="input-mode pull"):
        ServiceConfig(model=None, input="tcp://127.0.0.1:1", output=LOCAL, input_format="dectris-v1").validate()


# --- the real DECTRIS simulator ----------------------------------------------------------------------------------
def _simulated(frames: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from emlive.core.simulate import SimulationConfig, simulate_movie

    noisy, clean = simulate_movie(SimulationConfig(height=size, width=size, frames=frames, dose=5.0, seed=seed))
    return np.asarray(noisy, np.uint16), np.asarray(clean)


def _run_sim(sim: Any) -> threading.Thread:
    def send() -> None:
        sim.send_headers()
        sim.send_frames()
        sim.send_footer()

    thread = threading.Thread(target=send, name="dectris-sim", daemon=True)
    thread.start()
    return thread


def _wait_subscribed(zctx: zmq.Context[Any], status_endpoint: str) -> None:
    sock = zctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(status_endpoint)
    try:
        for _ in range(200):
            if not sock.poll(20000):
                raise AssertionError("no status message from the service within 20 s")
            if json.loads(sock.recv())["subscriptions"] >= 1:
                return
        raise AssertionError("the subscriber never showed up in the service's status")
    finally:
        sock.close()


@needs_sim
@pytest.mark.timeout(60)
def test_cli_serve_auto_against_the_dectris_simulator(
    tmp_path: Path, model_path: Path, emlive_proc: Collect, subscribe: Collect, zctx: zmq.Context[Any]
) -> None:
    noisy, _ = _simulated(10, 64)
    dump = write_zmqdump(tmp_path / "series.dump", v1_series(noisy, 42))
    sim = libertem_dectris.DectrisSim("tcp://127.0.0.1", str(dump), None, True)
    assert sim.get_detector_config().get_num_frames() == len(noisy)
    proc = emlive_proc(
        [
            "serve",
            "--model",
            str(model_path),
            "--input",
            sim.get_uri(),
            "--input-format",
            "auto",
            "--input-mode",
            "pull",
            "--lossless",
            "--output",
            LOCAL,
            "--status",
            LOCAL,
            "--status-interval",
            "0.2",
            "--threads",
            "1",
        ],
        tmp_path / "serve.log",
    )
    endpoints = proc.ready["endpoints"]
    sub = subscribe(endpoints["output"])
    _wait_subscribed(zctx, endpoints["status"])
    sender = _run_sim(sim)
    out = sub.collect(_until_end_of("42"), timeout=40)
    sender.join(10)
    den = _frames(out)
    assert [m.header.index for m in den] == list(range(len(noisy))), proc.log()
    assert all(m.header.acquisition == "42" and m.header.extra["series"] == 42 for m in den)
    assert [m.header.extra["image"] for m in den] == list(range(len(noisy)))
    assert all(m.data.shape == noisy.shape[1:] and m.data.dtype == np.float32 for m in den)
    assert out[0].header.type == "start" and out[0].header.shape == noisy.shape[1:]
    assert "input format detected from the first message: dectris-v1" in proc.log()


@needs_sim
@pytest.mark.skipif(not SHIPPED_MODEL.is_file(), reason=f"no shipped trained model at {SHIPPED_MODEL}")
@pytest.mark.timeout(60)
def test_simulator_series_denoised_by_the_shipped_model_beats_the_raw_frames(
    tmp_path: Path, load_model: Collect, dectris_service: Collect, subscribe: Collect
) -> None:
    from emlive.core.metrics import psnr_paper

    noisy, clean = _simulated(8, 128, seed=3)
    dump = write_zmqdump(tmp_path / "series.dump", v1_series(noisy, 77, split_header=False))
    sim = libertem_dectris.DectrisSim("tcp://127.0.0.1", str(dump), None, True)
    svc = dectris_service(load_model(SHIPPED_MODEL), input=sim.get_uri(), input_format="dectris-v1")
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    sender = _run_sim(sim)
    den = _frames(sub.collect(_until_end_of("77"), timeout=40))
    sender.join(10)
    assert [m.header.index for m in den] == list(range(len(noisy)))
    for m in den:
        i = m.header.index
        assert psnr_paper(clean[i], m.data) > psnr_paper(clean[i], noisy[i])


# --- 32-bit images end to end --------------------------------------------------------------------------------------
def v1_series32(frames: np.ndarray, series: int) -> list[list[bytes]]:
    """A series from a detector in its 32-bit mode: ``bit_depth_image`` 32, uint32 images, bitshuffle-LZ4 of 32-bit
    elements (``bs32-lz4<``), header and configuration in one message."""
    dheader, config = v1_header(series, frames.shape[1:], frames=len(frames))
    cfg = {**json.loads(config), "bit_depth_image": 32}
    h, w = frames.shape[1:]
    images = []
    for i, frame in enumerate(frames):
        le = np.ascontiguousarray(frame, "<u4")
        parts = v1_image(le, series, i, encoding="bs32-lz4<", blob=v1_blob(le))
        parts[1] = json.dumps(
            {"htype": "dimage_d-1.0", "shape": [w, h], "type": "uint32", "encoding": "bs32-lz4<"}
        ).encode()
        images.append(parts)
    return [[dheader, json.dumps(cfg).encode()], *images, v1_end(series)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("via", ["push", pytest.param("simulator", marks=needs_sim)])
def test_32bit_series_is_decoded_denoised_published_and_recorded_losslessly(
    via: str,
    denoiser: Any,
    dectris_service: Collect,
    subscribe: Collect,
    push: Any,
    tmp_path: Path,
) -> None:
    frames = (_movie(8).astype(np.uint32) + np.uint32(2**24 + 3)).astype(np.uint32)  # beyond 16 bits and float32
    messages = v1_series32(frames, 32)
    sock, endpoint = push
    sim = None
    if via == "simulator":  # the real DECTRIS simulator replays the series from a dump file
        dump = write_zmqdump(tmp_path / "series32.dump", messages)
        sim = libertem_dectris.DectrisSim("tcp://127.0.0.1", str(dump), None, True)
        endpoint = sim.get_uri()
    svc = dectris_service(
        denoiser, input=endpoint, input_format="dectris-v1", publish_raw=True, record=tmp_path / "rec.mrc",
        record_what="both",
    )  # fmt: skip
    sub = subscribe(svc.endpoints["output"])
    assert svc.wait_for_subscribers(1, 10)
    sender = None if sim is None else _run_sim(sim)
    if sender is None:
        _send(sock, messages)
    out = sub.collect(_until_end_of("32"), timeout=40)
    if sender is not None:
        sender.join(10)
    assert out[0].header.type == "start" and out[0].header.dtype == "uint32"
    den, raw = _frames(out), _frames(out, "raw")
    assert [m.header.index for m in den] == list(range(len(frames)))
    np.testing.assert_array_equal(np.stack([m.data for m in raw]), frames)  # decoded exactly, still uint32
    assert all(m.data.dtype == np.uint32 for m in raw)
    offline = np.stack([f for _, f in denoiser.denoise_movie(frames)])
    np.testing.assert_array_equal(np.stack([m.data for m in den]), offline)  # live == offline, bit for bit
    svc.stop()
    counters = svc.status()["counters"]
    assert counters.get("infer_errors", 0) == 0 and counters.get("rejected", 0) == 0
    assert not (tmp_path / "rec-32-raw.mrc").exists()  # MRC cannot hold every uint32: the raw record is TIFF
    with open_movie(tmp_path / "rec-32-raw.tif") as rec_raw, open_movie(tmp_path / "rec-32-denoised.mrc") as rec_den:
        assert rec_raw.dtype == np.uint32
        np.testing.assert_array_equal(rec_raw[:], frames)
        np.testing.assert_array_equal(rec_den[:], offline)
