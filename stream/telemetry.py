"""Telemetry of the live service: per-stage timings and rates, latency percentiles, counters and gauges.

Every stage (receive, decode, window, infer, publish, record) records one duration per event; a snapshot gives,
per stage, the event count, the rate over the last few seconds and the p50/p95/p99 durations of the most recent
events (the last 4096, kept in fixed arrays: telemetry memory does not grow with uptime). Latencies (receipt ->
publish) are kept the same way. All methods are thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np

STAGES = ("receive", "decode", "window", "infer", "publish", "record")
RATE_WINDOW_S = 5.0
_SAMPLES = 4096


def percentiles(values: list[float] | np.ndarray) -> dict[str, float | None]:
    """p50/p95/p99 (and max) of ``values`` in milliseconds, values given in seconds; None when empty."""
    if len(values) == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None}
    arr = np.asarray(values, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 3),
        "p95_ms": round(float(p95), 3),
        "p99_ms": round(float(p99), 3),
        "max_ms": round(float(arr.max()), 3),
    }


class _Series:
    """A running count and the most recent (time, value) samples in a fixed ring (memory never grows).

    The ring is two numpy arrays: a Python list stores a sample a little faster (0.1 us) but makes every snapshot
    (the status, 20 times a second for some clients) three times slower, under the GIL the pipeline needs."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.first: float | None = None
        self.last = 0.0
        self._times = np.zeros(_SAMPLES)
        self._values = np.zeros(_SAMPLES)

    def add(self, now: float, value: float) -> None:
        k = self.count % _SAMPLES
        self._times[k] = now
        self._values[k] = value
        self.count += 1
        self.total += value
        if self.first is None:
            self.first = now
        self.last = now

    def summary(self, now: float) -> dict[str, Any]:
        n = min(self.count, _SAMPLES)
        times, values = self._times[:n], self._values[:n]
        recent = int(np.count_nonzero(times >= now - RATE_WINDOW_S))
        oldest = float(times.min()) if n else now
        span = min(RATE_WINDOW_S, max(now - oldest, 1e-9))
        out: dict[str, Any] = {"count": self.count, "rate_hz": round(recent / span, 3) if recent else 0.0}
        out.update(percentiles(values))
        out["mean_ms"] = round(self.total / self.count * 1e3, 3) if self.count else None
        # the mean rate over the whole run: (events - 1) / (last event - first event)
        span_all = self.last - self.first if self.first is not None else 0.0
        out["overall_rate_hz"] = round((self.count - 1) / span_all, 3) if span_all > 0 else None
        return out


class Telemetry:
    """Thread-safe counters, gauges and timing series of one service run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.perf_counter()
        self._stages: dict[str, _Series] = {name: _Series() for name in STAGES}
        self._latency: dict[str, _Series] = {"processing": _Series(), "age": _Series(), "detector": _Series()}
        self.counters: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.resets: Counter[str] = Counter()
        self._gauges: dict[str, Any] = {}

    def stage(self, name: str, seconds: float, count: str | None = None, now: float | None = None) -> None:
        """Record one event of ``name`` that took ``seconds`` (and add one to the counter ``count``); ``now``: the
        event's end (``perf_counter``) when the caller has it."""
        if now is None:
            now = time.perf_counter()
        with self._lock:
            self._stages[name].add(now, seconds)
            if count is not None:
                self.counters[count] += 1

    def received(self, seconds: float, nbytes: int, now: float | None = None) -> None:
        """One message received (``seconds`` in recv, ``nbytes`` long; ``now``: its end, when the caller has it)."""
        if now is None:
            now = time.perf_counter()
        with self._lock:
            self._stages["receive"].add(now, seconds)
            self.counters["received"] += 1
            self.counters["bytes_in"] += nbytes

    def job(
        self,
        *,
        window_s: float,
        infer_s: float,
        publish_s: float,
        processing_s: float,
        age_s: float,
        detector_s: float,
        now: float | None = None,
    ) -> None:
        """One frame denoised and published: its stage times and latencies, under one lock (``now``: when it was
        published, ``perf_counter``, when the caller has it)."""
        if now is None:
            now = time.perf_counter()
        with self._lock:
            self._stages["window"].add(now, window_s)
            self._stages["infer"].add(now, infer_s)
            self._stages["publish"].add(now, publish_s)
            self._latency["processing"].add(now, processing_s)
            self._latency["age"].add(now, age_s)
            self._latency["detector"].add(now, detector_s)
            self.counters["denoised"] += 1
            self.counters["published"] += 1

    def latency(self, name: str, seconds: float) -> None:
        """Record a latency sample: ``processing`` (window complete -> published), ``age`` (center received ->
        published) or ``detector`` (detector timestamp -> published, meaningful with synchronised clocks)."""
        now = time.perf_counter()
        with self._lock:
            self._latency[name].add(now, seconds)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def reject(self, reason: str) -> None:
        with self._lock:
            self.counters["rejected"] += 1
            self.rejected[reason] += 1

    def reset(self, reason: str) -> None:
        with self._lock:
            self.resets[reason] += 1

    def gauge(self, name: str, value: Any) -> None:
        with self._lock:
            self._gauges[name] = value

    def get(self, name: str) -> int:
        with self._lock:
            return self.counters[name]

    def snapshot(self) -> dict[str, Any]:
        """Everything as a JSON-ready dict."""
        now = time.perf_counter()
        with self._lock:
            return {
                "uptime_s": round(now - self._started, 3),
                "counters": dict(self.counters),
                "rejected": dict(self.rejected),
                "resets": dict(self.resets),
                "stages": {name: s.summary(now) for name, s in self._stages.items()},
                "latency": {name: s.summary(now) for name, s in self._latency.items()},
                **self._gauges,
            }


def format_line(snap: dict[str, Any]) -> str:
    """One log line from a snapshot: rates, latency percentiles, queue depths, skips and errors."""
    st = snap["stages"]
    lat = snap["latency"]["processing"]
    age = snap["latency"]["age"]
    c = snap["counters"]
    q = snap.get("queues", {})

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return (
        f"in {st['receive']['rate_hz']:.1f} Hz, out {st['publish']['rate_hz']:.1f} Hz, "
        f"infer {st['infer']['rate_hz']:.1f} Hz ({ms(st['infer']['p50_ms'])} ms); "
        f"latency p50/p95/p99 {ms(lat['p50_ms'])}/{ms(lat['p95_ms'])}/{ms(lat['p99_ms'])} ms "
        f"(center age p99 {ms(age['p99_ms'])} ms); queues in {q.get('input', 0)} rec {q.get('record', 0)}; "
        f"received {c.get('received', 0)}, denoised {c.get('denoised', 0)}, skipped {c.get('skipped', 0)}, "
        f"dropped {c.get('dropped', 0)}, back-pressure {c.get('backpressure', 0)}, "
        f"rejected {c.get('rejected', 0)}, gaps {c.get('gap_frames', 0)}; "
        f"model {snap.get('model', {}).get('name', '?')} on {snap.get('model', {}).get('backend', '?')}"
    )
