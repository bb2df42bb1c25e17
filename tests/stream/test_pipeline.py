"""The pipeline alone: batches of encoded messages in (no receiver, no service), denoised frames out on a real
XPUB socket, compared with offline denoising; live mode's skipping and bad input's refusal."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import zmq

from emlive.bench.stream_bench import IdentityDenoiser
from emlive.core.protocol import bind, decode, encode, encode_frame, event_header
from emlive.stream.budget import MIN_MEMORY_BUDGET, MemoryBudget
from emlive.stream.errorlog import ErrorLog
from emlive.stream.headerjson import HeaderJson
from emlive.stream.inputqueue import Item
from emlive.stream.modelslot import ModelSlot
from emlive.stream.pipeline import Pipeline, json_bytes, received_frame
from emlive.stream.telemetry import Telemetry

Collect = Callable[..., Any]


@pytest.fixture
def make_pipeline(denoiser: Any, zctx: zmq.Context[Any], subscribe: Collect) -> Iterator[Collect]:
    """Pipelines on the tiny real model, each publishing on its own XPUB with one subscriber attached."""
    socks: list[zmq.Socket[Any]] = []

    def make(*, lossless: bool, model: Any = denoiser) -> tuple[Pipeline, Any]:
        out = zctx.socket(zmq.XPUB)
        out.setsockopt(zmq.LINGER, 0)
        out.setsockopt(zmq.XPUB_VERBOSER, 1)
        socks.append(out)
        telemetry = Telemetry()
        slot = ModelSlot(lambda p: model, MemoryBudget(MIN_MEMORY_BUDGET), telemetry)
        slot.set(model, None)
        errors = ErrorLog(logging.getLogger("emlive.test.pipeline"), "rejected message")
        pipeline = Pipeline(slot, telemetry, lossless=lossless, max_frame_bytes=1 << 20, input_errors=errors)
        pipeline.start(out)
        sub = subscribe(bind(out, "tcp://127.0.0.1:0"))
        deadline = time.monotonic() + 10
        while pipeline.subscriptions.count < 1 and time.monotonic() < deadline:
            pipeline.poll_subscriptions()
            time.sleep(0.01)
        assert pipeline.subscriptions.count == 1
        return pipeline, sub

    yield make
    for sock in socks:
        sock.close()


def _items(movie: np.ndarray, acquisition: str) -> list[Item]:
    now = time.perf_counter()
    parts = [encode(event_header("start", acquisition))]
    parts += [encode_frame(frame, acquisition, i) for i, frame in enumerate(movie)]
    parts.append(encode(event_header("end", acquisition)))
    return [(p, now, time.time()) for p in parts]


@pytest.mark.timeout(30)
def test_lossless_batches_give_the_offline_output(
    make_pipeline: Collect, denoiser: Any, movie: np.ndarray, offline_ref: Collect, until_end: Any
) -> None:
    pipeline, sub = make_pipeline(lossless=True)
    items = _items(movie, "pipe")
    for k in range(0, len(items), 3):  # batches of 3 messages, as the queue would hand them over
        pipeline.process(items[k : k + 3])
    got = sub.collect(until_end)
    frames = [m for m in got if m.header.type == "frame"]
    assert [m.header.index for m in frames] == list(range(len(movie)))
    assert all(m.header.kind == "denoised" and m.header.extra["model"] == "tiny-5" for m in frames)
    np.testing.assert_allclose(np.stack([m.data for m in frames]), offline_ref(denoiser, movie), rtol=1e-6, atol=1e-6)
    assert [m.header.extra["seq"] for m in frames] == list(range(1, len(movie) + 1))


@pytest.mark.timeout(30)
def test_live_mode_denoises_the_newest_window_of_a_batch(
    make_pipeline: Collect, denoiser: Any, movie: np.ndarray, offline_ref: Collect
) -> None:
    pipeline, sub = make_pipeline(lossless=False)
    items = _items(movie, "live")[:-1]  # start + every frame in one batch, no end: the run stays open
    pipeline.process(items)
    got = sub.collect(lambda m: m.header.type == "frame")
    assert [m.header.index for m in got if m.header.type == "frame"] == [len(movie) - 3]  # newest complete window
    np.testing.assert_allclose(got[-1].data, offline_ref(denoiser, movie)[len(movie) - 3], rtol=1e-6, atol=1e-6)
    assert pipeline.telemetry.get("skipped") == len(movie) - 3
    pipeline.finish()  # the run's last two frames, with end-of-run windows
    tail = sub.collect(lambda m: m.header.index == len(movie) - 1)
    assert [m.header.extra["flushed"] for m in tail] == [True, True]


@pytest.mark.timeout(30)
def test_bad_messages_are_refused_and_counted_and_the_next_frames_go_through(
    make_pipeline: Collect, movie: np.ndarray, until_end: Any
) -> None:
    pipeline, sub = make_pipeline(lossless=True)
    good = _items(movie[:3], "bad")
    now = time.perf_counter()
    bad: list[Item] = [([b"{oops"], now, time.time()), ([b'{"protocol": "emlive/1"}'], now, time.time())]
    pipeline.process(good[:2] + bad + good[2:])
    frames = [m for m in sub.collect(until_end) if m.header.type == "frame"]
    assert [m.header.index for m in frames] == [0, 1, 2]
    assert pipeline.telemetry.snapshot()["rejected"] == {"bad_json": 1, "missing_field": 1}
    assert pipeline.input_errors.snapshot() == {"bad_json": 1, "missing_field": 1}


def _received(zctx: zmq.Context[Any], messages: list[list[Any]]) -> list[Item]:
    """``messages`` sent and received on a real PUSH -> PULL pair (zero-copy frames, as the receiver queues them)."""
    pull, push = zctx.socket(zmq.PULL), zctx.socket(zmq.PUSH)
    try:
        push.connect(bind(pull, "tcp://127.0.0.1:0"))
        for parts in messages:
            push.send_multipart(parts, copy=False)
        return [(pull.recv_multipart(copy=False), time.perf_counter(), time.time()) for _ in messages]
    finally:
        push.close(linger=0)
        pull.close(linger=0)


@pytest.mark.timeout(30)
def test_a_received_frame_is_sent_as_itself_and_nothing_else_is(zctx: zmq.Context[Any], movie: np.ndarray) -> None:
    [(parts, _, _)] = _received(zctx, [encode_frame(movie[0], "a", 0)])
    data = decode(parts).data
    assert data is not None and received_frame(data) is parts[1]  # all its bytes, read-only: shared, not copied
    assert received_frame(data[1:]) is None and received_frame(data.T) is None
    assert received_frame(np.array(data)) is None  # a writable copy: a model may change it after the send
    writable = np.frombuffer(parts[1], dtype=data.dtype).reshape(data.shape)
    assert writable.flags.writeable and received_frame(writable) is None


@pytest.mark.timeout(30)
def test_published_headers_and_pixels_follow_each_frame_whatever_the_previous_one_carried(
    make_pipeline: Collect, zctx: zmq.Context[Any], movie: np.ndarray, until_end: Any
) -> None:
    """The identity model publishes the received frames themselves; the output header's repeated fields come from
    a cache: extra keys, pixel sizes and acquisitions must still be each frame's own."""
    pipeline, sub = make_pipeline(lossless=True, model=IdentityDenoiser(api="stream"))
    extras = [{}, {"note": "a", "dose": 1.5}, {}, {}, {"note": "b"}, {}, {}, {}, {}, {}]
    sizes = [None, None, 0.5, 0.5, 0.5, None, None, None, None, None]
    messages = [encode_frame(f, "h", i, pixel_size_nm=sizes[i], extra=extras[i]) for i, f in enumerate(movie)]
    items = _received(zctx, [*messages, encode(event_header("end", "h"))])
    for k in range(0, len(items), 4):
        pipeline.process(items[k : k + 4])
    frames = [m for m in sub.collect(until_end) if m.header.type == "frame"]
    assert [m.header.index for m in frames] == list(range(len(movie)))
    np.testing.assert_array_equal(np.stack([m.data for m in frames]), movie)  # (as uint16: identity)
    for m, sent in zip(frames, messages, strict=True):
        want = decode(sent).header
        assert m.header.timestamp == want.timestamp and m.header.pixel_size_nm == want.pixel_size_nm
        assert {k: m.header.extra[k] for k in want.extra} == dict(want.extra)
        leaked = ({"note", "dose"} - set(want.extra)) & set(m.header.extra)
        assert not leaked
        assert m.header.extra["model"] == "identity-passthrough (benchmark only)"


def test_a_header_template_writes_the_bytes_json_writes() -> None:
    example = {"protocol": "emlive/1", "acquisition": 'ü "quoted" \\\\ a', "timestamp": 1.0, "index": 0, "window": [],
               "model": "m\u00e9", "flushed": False, "seq": 1, "kind": "denoised", "age_ms": 0.5}  # fmt: skip
    varying = ("timestamp", "index", "window", "flushed", "seq", "age_ms")
    template = HeaderJson(example, varying)
    for values in [(1796141296.5718918, 7, [5, 6, 7, 8, 9], True, 12, 0.123), (3, 2**53 - 1, [None, 1, None], False,
                                                                                  13, 1e-07)]:  # fmt: skip
        want = {**example, **dict(zip(varying, values, strict=True))}
        assert template.encode(values) == json_bytes(want)
    with pytest.raises(ValueError, match="finite"):
        template.encode((float("nan"), 7, [], True, 1, 0.5))  # as json.dumps(allow_nan=False)
    with pytest.raises(ValueError, match="mark"):  # a fixed value holding a mark: the caller encodes the dict instead
        HeaderJson({**example, "model": "\x001\x00"}, varying)
