"""Errors at a message boundary, counted per kind and logged without flooding the log.

The first error of each kind is logged in full (one line); later ones of that kind are only counted, and
:meth:`ErrorLog.summarize` (called periodically, e.g. with each status line) logs one line per kind that had
new errors since its last line, at most every ``summary_s`` seconds. Thread-safe.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable


class ErrorLog:
    """Per-kind counts and rate-limited log lines for one boundary (``what``: "rejected message", ...)."""

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        *,
        summary_s: float = 10.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log, self._what, self._summary_s, self._level, self._clock = log, what, summary_s, level, clock
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self._logged: Counter[str] = Counter()  # the count each kind had at its last log line
        self._last_summary = clock()

    def record(self, kind: str, message: str) -> None:
        """Count one error of ``kind``; log it when it is the first of its kind."""
        with self._lock:
            self.counts[kind] += 1
            first = self.counts[kind] == 1
            if first:
                self._logged[kind] = 1
        if first:
            self._log.log(self._level, "%s (%s): %s", self._what, kind, message.replace("\n", " "))

    def summarize(self, force: bool = False) -> None:
        """Log one line per kind with errors not yet logged (at most every ``summary_s``, unless ``force``)."""
        now = self._clock()
        with self._lock:
            if not force and now - self._last_summary < self._summary_s:
                return
            elapsed = now - self._last_summary
            self._last_summary = now
            new = {k: n - self._logged[k] for k, n in self.counts.items() if n > self._logged[k]}
            self._logged.update(new)
        for kind, n in sorted(new.items()):
            self._log.log(
                self._level,
                "%s (%s): %d more in the last %.0f s (%d in all)",
                self._what,
                kind,
                n,
                elapsed,
                self.counts[kind],
            )

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
