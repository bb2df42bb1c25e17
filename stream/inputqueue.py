"""The live service's input queue: received messages, bounded in messages and in bytes, with the two overload
behaviours of the service (live: drop the oldest; lossless: wait for room)."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

# (the message's parts, perf_counter at receipt, wall time at receipt)
Item = tuple[list[Any], float, float]


class InputQueue:
    """A FIFO of received messages holding at most ``max_items`` messages and ``max_bytes`` bytes.

    A message larger than ``max_bytes`` on its own is never offered (the receiver rejects it first): any message
    that is offered fits an empty queue, so waiting for room always ends once the pipeline takes the queue.
    """

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self._items: deque[tuple[Item, int]] = deque()
        self._max_items, self._max_bytes = max_items, max_bytes
        self._bytes = 0
        self._cond = threading.Condition()

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
            self._cond.notify_all()

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
            if not self._fits(nbytes) and not self._cond.wait_for(lambda: self._fits(nbytes), timeout):
                return False
            self._append(item, nbytes)
            return True

    def get(self, timeout: float) -> list[Item]:
        """Every queued item (oldest first), waiting up to ``timeout`` s for one; [] when none came."""
        with self._cond:
            if not self._items and not self._cond.wait_for(lambda: bool(self._items), timeout):
                return []
            out = [item for item, _ in self._items]
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()
            return out
