"""The live service and Python's garbage collector: its pauses measured, and the long ones avoided.

CPython's cyclic collector stops the thread that triggers it (and, holding the GIL, every other Python thread)
for as long as it scans. Young generations are quick (well under a millisecond), but a full (generation 2)
collection scans every tracked object of the process, and a service that loaded a model through PyTorch holds
about 190,000 of them (the imports, the ONNX export of the CPU-live student): one full collection of such a
process took 0.2-1.4 s on the shared 2-core machine (load average 5.5-8.7), and a frame in flight then waits for
all of it. In the demo (``python -m emlive.bench.demo_bench``, load average 5-8) the service's young collections
paused it for up to 11.5 ms (generation 0) and 29.6 ms (generation 1, the objects the model load left young);
with the loaded objects frozen, 0.7 ms at most.

:func:`freeze_loaded` (``ServiceConfig.freeze_gc``, on in ``emlive serve``) moves every object of the loaded
service into the collector's permanent generation (:func:`gc.freeze`) once the model is loaded: they are never
scanned again, so later collections only scan what the service allocated since (a few thousand objects). It does
not collect first: at that point a full collection found 141 unreachable objects of 192,921 (no memory to
free) and took 210 ms of the start-up (load average 5.5). Objects are still freed by reference counting as before;
cycles among frozen objects (none are made while serving) would wait for :func:`thaw`, called at stop.

:class:`GcPauses` times every collection (a :data:`gc.callbacks` hook; a few microseconds per collection) for the
service's status (``status()["gc"]``: collections, total and longest pause per generation).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

GENERATIONS = 3


class GcPauses:
    """Counts and times the garbage collector's runs per generation while :meth:`install` ed."""

    def __init__(self) -> None:
        self.collections = [0] * GENERATIONS
        self.total_ms = [0.0] * GENERATIONS
        self.max_ms = [0.0] * GENERATIONS
        self._started = 0.0

    def install(self) -> None:
        if self._hook not in gc.callbacks:
            gc.callbacks.append(self._hook)

    def remove(self) -> None:
        if self._hook in gc.callbacks:
            gc.callbacks.remove(self._hook)

    def _hook(self, phase: str, info: dict[str, Any]) -> None:
        """gc's callback: ``start`` and ``stop`` of one collection (one at a time: the collector holds the GIL)."""
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = int(info.get("generation", GENERATIONS - 1))
        ms = (time.perf_counter() - self._started) * 1e3
        self.collections[generation] += 1
        self.total_ms[generation] += ms
        self.max_ms[generation] = max(self.max_ms[generation], ms)

    def snapshot(self) -> dict[str, Any]:
        """Per generation (0, 1, 2): collections, total and longest pause in ms; and the frozen objects."""
        return {
            "collections": list(self.collections),
            "total_ms": [round(v, 3) for v in self.total_ms],
            "max_ms": [round(v, 3) for v in self.max_ms],
            "frozen_objects": gc.get_freeze_count(),
        }


def freeze_loaded() -> tuple[int, float]:
    """Freeze every object the collector tracks (module docstring); returns (objects frozen, seconds)."""
    start = time.perf_counter()
    gc.freeze()
    seconds = time.perf_counter() - start
    frozen = gc.get_freeze_count()
    logger.info("garbage collector: %d objects of the loaded service frozen in %.1f ms", frozen, seconds * 1e3)
    return frozen, seconds


def thaw() -> None:
    """Undo :func:`freeze_loaded` (the frozen objects go back to the oldest generation)."""
    gc.unfreeze()
