"""The live service's input queue: received messages, bounded in messages and in bytes, with the two overload
behaviours of the service (live: drop the oldest; lossless: wait for room).

One consumer (the pipeline) waits for messages, at most one frame apart: its wait is a bare lock that the producer
releases when a message lands in an empty queue (:class:`_Signal`), not a :class:`threading.Condition`, whose
wait and notify run a dozen lines of Python per frame under the GIL the receiver needs. Waits for room (lossless
back-pressure, rare) use a Condition, notified only when someone waits.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

# (the message's parts, perf_counter at receipt, wall time at receipt)
Item = tuple[list[Any], float, float]


class _Signal:
    """A wake-up for one waiting consumer: :meth:`set` (under the queue's lock) wakes it or, when it is not
    waiting, lets its next :meth:`wait` return at once (a stale signal only costs the consumer one more look)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held: no signal pending

    def set(self) -> None:
        if self._lock.locked():  # (callers hold the queue's lock: no two set() at once)
            self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=max(timeout, 0.0))


class InputQueue:
    """A FIFO of received messages holding at most ``max_items`` messages and ``max_bytes`` bytes.

    A message larger than ``max_bytes`` on its own is never offered (the receiver rejects it first): any message
    that is offered fits an empty queue, so waiting for room always ends once the pipeline takes the queue.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: deque[tuple[Item, int]] = deque()
        self._max_items, self._max_bytes = max_items, max_bytes
        self._bytes = 0
        self._cond = threading.Condition()  # its lock guards the queue; waits for room wait on it
        self._room_waiters = 0
        self._arrived = _Signal()

    @property
    def max_items(self) -> int:
        return self._max_items

    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    @property
    def nbytes(self) -> int:
        with self._cond:
            return self._bytes

    def _fits(self, nbytes: int) -> bool:
        return not self._items or (len(self._items) < self._max_items and self._bytes + nbytes <= self._max_bytes)

    def _append(self, item: Item, nbytes: int) -> None:
        self._items.append((item, nbytes))
        self._bytes += nbytes
        if len(self._items) == 1:  # only get() waits for items, and only on an empty queue
            self._arrived.set()

    def put_drop_oldest(self, item: Item, nbytes: int) -> int:
        """Add ``item``, dropping the oldest queued messages until it fits; returns how many were dropped."""
        with self._cond:
            dropped = 0
            while not self._fits(nbytes):
                _, size = self._items.popleft()
                self._bytes -= size
                dropped += 1
            self._append(item, nbytes)
            return dropped

    def put_wait(self, item: Item, nbytes: int, timeout: float) -> bool:
        """Add ``item``, waiting up to ``timeout`` s for room; False when there was none."""
        with self._cond:
            if not self._fits(nbytes):
                self._room_waiters += 1
                try:
                    if not self._cond.wait_for(lambda: self._fits(nbytes), timeout):
                        return False
                finally:
                    self._room_waiters -= 1
            self._append(item, nbytes)
            return True

    def get(self, timeout: float) -> list[Item]:
        """Every queued item (oldest first), waiting up to ``timeout`` s for one; [] when none came. One consumer
        only (the pipeline)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                if self._items:
                    out = [item for item, _ in self._items]
                    self._items.clear()
                    self._bytes = 0
                    if self._room_waiters:
                        self._cond.notify_all()
                    return out
            if not self._arrived.wait(deadline - time.monotonic()):
                return []
