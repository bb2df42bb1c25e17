"""The receiver alone: a real loopback PUSH -> PULL, its input queue bounded in bytes, both overload policies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq

from emlive.core.protocol import bind, connect
from emlive.stream.budget import MIN_MEMORY_BUDGET, MemoryBudget
from emlive.stream.inputqueue import InputQueue
from emlive.stream.receiver import Receiver
from emlive.stream.telemetry import Telemetry

PAYLOAD = 1000  # bytes of each test message's second part
MESSAGE = 3 + PAYLOAD  # a 3-byte first part ("007") + the payload


@pytest.fixture
def pipe(zctx: zmq.Context[Any]) -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    """A connected (PUSH, PULL) pair on 127.0.0.1."""
    push, pull = zctx.socket(zmq.PUSH), zctx.socket(zmq.PULL)
    for sock in (push, pull):
        sock.setsockopt(zmq.LINGER, 0)
    connect(pull, bind(push, "tcp://127.0.0.1:0"))
    yield push, pull
    push.close()
    pull.close()


def _send(push: zmq.Socket[Any], first: int, count: int, payload: int = PAYLOAD) -> None:
    for i in range(first, first + count):
        push.send_multipart([b"%03d" % i, bytes(payload)])


def _receiver(queue: InputQueue, *, lossless: bool, rejected: list[tuple[str, str]], **kw: Any) -> Receiver:
    return Receiver(
        queue,
        MemoryBudget(MIN_MEMORY_BUDGET),
        Telemetry(),
        lossless=lossless,
        reject=lambda reason, message: rejected.append((reason, message)),
        **kw,
    )


def _ids(items: list[Any]) -> list[int]:
    return [int(bytes(parts[0].buffer)) for parts, _, _ in items]


@pytest.mark.timeout(20)
def test_live_policy_keeps_the_newest_messages_that_fit_the_byte_bound(pipe: Any) -> None:
    push, pull = pipe
    queue = InputQueue(max_items=100, max_bytes=3 * MESSAGE)  # room for 3 messages by bytes, 100 by count
    rejected: list[tuple[str, str]] = []
    receiver = _receiver(queue, lossless=False, rejected=rejected)
    _send(push, 0, 7)
    for _ in range(7):
        assert pull.poll(5000, zmq.POLLIN)
        receiver.receive_one(pull)
    assert _ids(queue.get(1.0)) == [4, 5, 6]  # the oldest were dropped, by bytes, not by count
    counters = receiver.telemetry.counters
    assert counters["dropped"] == 4 and counters["received"] == 7 and counters["bytes_in"] == 7 * MESSAGE
    assert not rejected


@pytest.mark.timeout(20)
def test_lossless_policy_pauses_reading_and_loses_nothing(pipe: Any) -> None:
    push, pull = pipe
    queue = InputQueue(max_items=100, max_bytes=2 * MESSAGE)
    rejected: list[tuple[str, str]] = []
    receiver = _receiver(queue, lossless=True, rejected=rejected, drain_s=1.0)
    stop = threading.Event()
    thread = threading.Thread(target=receiver.run, args=(pull, stop, 8), name="test-receiver")
    thread.start()
    try:
        _send(push, 0, 20)
        deadline = time.monotonic() + 10
        while receiver.telemetry.get("backpressure") == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert receiver.telemetry.get("backpressure") >= 1  # the queue filled: reading paused
        assert queue.nbytes <= 2 * MESSAGE
        got: list[int] = []
        while len(got) < 20 and time.monotonic() < deadline:
            got += _ids(queue.get(0.2))
        assert got == list(range(20))  # every message, in order
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive() and receiver.done.is_set()
    assert receiver.telemetry.get("dropped") == 0 and not rejected


@pytest.mark.timeout(20)
def test_a_message_larger_than_the_queue_share_of_the_budget_is_refused(pipe: Any) -> None:
    push, pull = pipe
    budget = MemoryBudget(MIN_MEMORY_BUDGET)
    queue = InputQueue(max_items=4, max_bytes=budget.queue_bytes)
    rejected: list[tuple[str, str]] = []
    receiver = _receiver(queue, lossless=True, rejected=rejected)
    _send(push, 0, 1, payload=budget.queue_bytes)  # 3 bytes over the share
    assert pull.poll(5000, zmq.POLLIN)
    receiver.receive_one(pull)
    assert len(queue) == 0
    assert [reason for reason, _ in rejected] == ["over_budget"]
    assert "raise --memory-budget" in rejected[0][1]


@pytest.mark.timeout(20)
def test_lossless_wait_gives_up_when_the_pipeline_has_stopped(pipe: Any) -> None:
    push, pull = pipe
    queue = InputQueue(max_items=1, max_bytes=10 * MESSAGE)
    receiver = _receiver(queue, lossless=True, rejected=[], consumer_alive=lambda: False)
    _send(push, 0, 2)
    for _ in range(2):
        assert pull.poll(5000, zmq.POLLIN)
        receiver.receive_one(pull)  # the second finds the queue full and nobody to empty it
    assert _ids(queue.get(1.0)) == [0]
    assert receiver.telemetry.get("lost") == 1


@pytest.mark.timeout(20)
def test_a_burst_takes_what_has_arrived_up_to_its_limit_and_never_waits(zctx: zmq.Context[Any]) -> None:
    push, pull = zctx.socket(zmq.PUSH), zctx.socket(zmq.PULL)
    for sock in (push, pull):
        sock.setsockopt(zmq.LINGER, 0)
    pull.bind("inproc://burst")  # (inproc: a sent message is in the receiver's pipe when send returns)
    push.connect("inproc://burst")
    try:
        queue = InputQueue(max_items=100, max_bytes=100 * MESSAGE)
        receiver = _receiver(queue, lossless=True, rejected=[])
        poller = zmq.Poller()
        poller.register(pull, zmq.POLLIN)
        _send(push, 0, 5)
        receiver._receive_burst(pull, poller, 3)
        assert _ids(queue.get(1.0)) == [0, 1, 2]  # the burst's limit, the rest stays in ZeroMQ
        start = time.monotonic()
        receiver._receive_burst(pull, poller, 10)
        assert time.monotonic() - start < 1.0  # nothing left: the burst ends, it does not wait for more
        assert _ids(queue.get(1.0)) == [3, 4] and receiver.telemetry.get("received") == 5
    finally:
        push.close()
        pull.close()
