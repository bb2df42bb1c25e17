"""The live service's receiver: reads the input socket into the bounded input queue, with the overload policy.

One job: take messages off the input socket as fast as they come, without decoding them, so the detector is
never held up by the model. The queue (:class:`emlive.stream.inputqueue.InputQueue`) is bounded in messages and
in bytes. When it is full the policy decides (:mod:`emlive.stream.modes`):

* *live* (default): the oldest queued message is dropped (counted as ``dropped``, logged at most every 5 s);
* *lossless*: reading pauses (counted as ``backpressure`` episodes, logged at most every 5 s) until the pipeline
  takes the queue: the socket's receive buffer fills and a detector's PUSH blocks; nothing is lost. On stop, what
  ZeroMQ already holds is drained (until the input is quiet for 100 ms or ``drain_s`` passed).

A message larger than the queue's byte bound on its own is refused at once (``over_budget``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from emlive.stream.budget import MemoryBudget, format_bytes
from emlive.stream.heap import keep_frame_memory
from emlive.stream.inputqueue import InputQueue, Item
from emlive.stream.telemetry import Telemetry

logger = logging.getLogger("emlive.stream.service.receiver")

LOG_EVERY_S = 5.0  # an overload warning is logged at most this often
POLL_MS = 100  # how often the loop looks at the stop flag when the input is quiet


@dataclass
class _Throttle:
    """True at most once every ``every_s`` seconds (for warnings that could otherwise flood the log)."""

    every_s: float = LOG_EVERY_S
    last: float = -1e9

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last <= self.every_s:
            return False
        self.last = now
        return True


class Receiver:
    """Reads the input socket into ``queue`` (see the module docstring). ``reject(reason, message)`` reports a
    refused message; ``consumer_alive()`` says whether the pipeline still takes the queue (a lossless wait for
    room gives up, counting the message as ``lost``, when it does not). ``done`` is set when the loop ended."""

    def __init__(
        self,
        queue: InputQueue,
        budget: MemoryBudget,
        telemetry: Telemetry,
        *,
        lossless: bool,
        drain_s: float = 2.0,
        reject: Callable[[str, str], None],
        consumer_alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self.queue, self._budget, self.telemetry = queue, budget, telemetry
        self.lossless, self._drain_s = lossless, drain_s
        self._reject, self._consumer_alive = reject, consumer_alive
        self.done = threading.Event()
        self._dropped_log, self._paused_log = _Throttle(), _Throttle()

    def run(self, sock: zmq.Socket[Any], stop: threading.Event, burst: int) -> None:
        """Receive until ``stop`` is set (then, lossless, drain); ``burst``: messages taken per poll at most."""
        keep_frame_memory(self._budget.queue_bytes)  # received frames reuse freed memory (emlive.stream.heap)
        poller = zmq.Poller()  # one for the run (Socket.poll makes one per call)
        poller.register(sock, zmq.POLLIN)
        try:
            while not stop.is_set():
                if poller.poll(POLL_MS):
                    self._receive_burst(sock, poller, burst)
            if self.lossless:
                self.drain(sock)
        finally:
            self.done.set()

    def _receive_burst(self, sock: zmq.Socket[Any], poller: zmq.Poller, burst: int) -> None:
        """One message, then what else has arrived already, without going back to poll with a timeout."""
        self.receive_one(sock)
        for _ in range(burst - 1):
            if not poller.poll(0):  # (half the cost of Socket.poll, a third of a refused non-blocking recv)
                return
            self.receive_one(sock)

    def drain(self, sock: zmq.Socket[Any]) -> int:
        """Lossless stop: take what ZeroMQ already holds (its receive buffer, and what is still on its way from
        the peer) until the input is quiet for 100 ms or ``drain_s`` passed; returns how many were taken."""
        deadline = time.monotonic() + self._drain_s
        drained = 0
        while time.monotonic() < deadline and sock.poll(POLL_MS, zmq.POLLIN):
            self.receive_one(sock)
            drained += 1
        cut = "" if time.monotonic() < deadline else f" (stopped after {self._drain_s:.1f} s; more may follow)"
        logger.info("lossless stop: %d message(s) drained from the input%s", drained, cut)
        return drained

    def receive_one(self, sock: zmq.Socket[Any]) -> None:
        """Take one message off ``sock`` and queue it under the overload policy."""
        start = time.perf_counter()
        parts = [sock.recv(copy=False)]
        while parts[-1].more:  # (the rest of a message arrives with its first part; no RCVMORE look-ups)
            parts.append(sock.recv(copy=False))
        received = time.perf_counter()
        item = (parts, received, time.time())
        nbytes = sum(map(len, parts))
        self.telemetry.received(received - start, nbytes, received)
        problem = self._budget.message_problem(nbytes)
        if problem is not None:
            self._reject("over_budget", problem)
        elif self.lossless:
            self._put_lossless(item, nbytes)
        else:
            self._put_live(item, nbytes)

    def _put_live(self, item: Item, nbytes: int) -> None:
        """Live: the newest message always goes in; the oldest queued ones make room."""
        dropped = self.queue.put_drop_oldest(item, nbytes)
        if not dropped:
            return
        self.telemetry.count("dropped", dropped)
        if self._dropped_log.due():
            logger.warning(
                "input queue full (%d messages, %s): dropped the oldest queued message (%d so far); frames arrive "
                "faster than the service can even decode them during one inference: raise --queue or "
                "--memory-budget",
                self.queue.max_items,
                format_bytes(self.queue.max_bytes),
                self.telemetry.get("dropped"),
            )

    def _put_lossless(self, item: Item, nbytes: int) -> None:
        """Lossless: wait for room; meanwhile nothing is read (the socket buffer, then the detector, hold on)."""
        if self.queue.put_wait(item, nbytes, 0.0):
            return
        self.telemetry.count("backpressure")
        if self._paused_log.due():
            logger.warning(
                "lossless: input queue full (%d messages or %s), reading paused: back-pressure on the detector "
                "(episodes so far: %d)",
                self.queue.max_items,
                format_bytes(self.queue.max_bytes),
                self.telemetry.get("backpressure"),
            )
        while not self.queue.put_wait(item, nbytes, 0.1):
            if not self._consumer_alive():
                self.telemetry.count("lost")
                logger.error("lossless: the pipeline has stopped; received frame not processed (counted as lost)")
                return
