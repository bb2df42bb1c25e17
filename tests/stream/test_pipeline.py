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

from emlive.core.protocol import bind, encode, encode_frame, event_header
from emlive.stream.budget import MIN_MEMORY_BUDGET, MemoryBudget
from emlive.stream.errorlog import ErrorLog
from emlive.stream.inputqueue import Item
from emlive.stream.modelslot import ModelSlot
from emlive.stream.pipeline import Pipeline
from emlive.stream.telemetry import Telemetry

Collect = Callable[..., Any]


@pytest.fixture
def make_pipeline(denoiser: Any, zctx: zmq.Context[Any], subscribe: Collect) -> Iterator[Collect]:
    """Pipelines on the tiny real model, each publishing on its own XPUB with one subscriber attached."""
    socks: list[zmq.Socket[Any]] = []

    def make(*, lossless: bool) -> tuple[Pipeline, Any]:
        out = zctx.socket(zmq.XPUB)
        out.setsockopt(zmq.LINGER, 0)
        out.setsockopt(zmq.XPUB_VERBOSER, 1)
        socks.append(out)
        telemetry = Telemetry()
        slot = ModelSlot(lambda p: denoiser, MemoryBudget(MIN_MEMORY_BUDGET), telemetry)
        slot.set(denoiser, None)
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
