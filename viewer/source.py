"""The viewer's ZeroMQ side: a thread that subscribes to the service's output (and status) and keeps the newest
raw/denoised frame pair (with its uncertainty map, when the service publishes one).

``CONFLATE`` keeps one message per socket but breaks multipart messages, so the thread drains the SUB socket
with ``NOBLOCK`` until it is empty (at most :data:`MAX_DRAIN` messages per round), pairs raw and denoised frames
by (acquisition, index) (:class:`emlive.core.framepairs.PairTracker`) and prepares only the newest pair (binning
and statistics), which it hands to ``on_pair``. A slow viewer therefore never holds up the service: the
service's PUB drops what this SUB cannot take.
ZeroMQ reconnects by itself; staleness is judged by the time since the last frame.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import zmq

from emlive.core.framepairs import Pair, PairTracker, newest_status, queued_messages
from emlive.core.protocol import HeaderCache, Message, connect, open_socket
from emlive.viewer.render import Channel, FramePair, bin_factor, make_channel

logger = logging.getLogger(__name__)

MAX_DRAIN = 256
SERVICE_HISTORY = 4096  # per denoised frame received: the service's own timings from its header (health, bench)


class FrameSource:
    """Subscribe to ``source`` (and ``status``) in a background thread; call ``on_pair`` with each newest pair.

    ``on_pair`` and ``on_status`` run in the receiver thread: they must be quick (the server hands the pair over
    to its event loop).
    """

    def __init__(
        self,
        source: str,
        status: str | None,
        max_size: int,
        on_pair: Callable[[FramePair], None],
        on_status: Callable[[dict[str, Any]], None] | None = None,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        hwm: int = 64,
    ) -> None:
        bin_factor((1, 1), max_size)  # validates max_size
        self.source, self.status_addr, self.max_size, self.hwm = source, status, max_size, hwm
        self._on_pair, self._on_status, self._on_event = on_pair, on_status, on_event
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context[Any] = zmq.Context()
        self._pairs = PairTracker()
        self._cache = HeaderCache()  # this stream's repeated frame headers, checked only where they differ
        self.received = 0
        self.rejected = 0
        self.prepared = 0
        self.last_frame_at: float | None = None
        self.last_status_at: float | None = None
        # (published_at, latency_ms, infer_ms, age_ms, flushed) of each denoised frame, from its header: the
        # benchmark's service latency over exactly its measured interval (the service's status covers its last 4096
        # frames); flushed (1.0): a frame of a run's end, denoised after the run ended
        self.service_frames: deque[tuple[float, float, float, float, float]] = deque(maxlen=SERVICE_HISTORY)
        self._sub = open_socket(self._ctx, zmq.SUB, hwm=hwm, linger_ms=0)
        self._status_sub: zmq.Socket[Any] | None = None
        try:
            self._sub.setsockopt(zmq.SUBSCRIBE, b"")
            connect(self._sub, source)
            if status is not None:
                self._status_sub = open_socket(self._ctx, zmq.SUB, hwm=16, linger_ms=0)
                self._status_sub.setsockopt(zmq.SUBSCRIBE, b"")
                connect(self._status_sub, status)
        except Exception:
            self._close_sockets()
            raise

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="emlive-viewer-sub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._close_sockets()

    def _close_sockets(self) -> None:
        self._sub.close(linger=0)
        if self._status_sub is not None:
            self._status_sub.close(linger=0)
        self._ctx.term()

    # --- receiving ----------------------------------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        if self._status_sub is not None:
            poller.register(self._status_sub, zmq.POLLIN)
        while not self._stop.is_set():
            events = dict(poller.poll(100))
            if self._status_sub is not None and self._status_sub in events:
                self._drain_status()
            newest = self._drain_frames() if self._sub in events else None
            newest = newest or self._pairs.overdue(time.time())  # a pair whose uncertainty map did not come
            if newest is not None:
                self._prepare(newest)

    def _drain_status(self) -> None:
        assert self._status_sub is not None  # registered only when present
        status = newest_status(self._status_sub, MAX_DRAIN, self.status_addr)
        if status is not None:
            self.last_status_at = time.time()
            if self._on_status is not None:
                self._on_status(status)

    def _drain_frames(self) -> Pair | None:
        """Read everything queued; returns the newest (raw, denoised) pair seen, unprepared, or None."""
        newest: Pair | None = None
        for msg in queued_messages(self._sub, MAX_DRAIN, self.source, self._cache):
            if msg is None:
                self.rejected += 1
                continue
            header = msg.header
            now = time.time()
            if header.type != "frame" or msg.data is None or header.index is None:
                if self._on_event is not None:
                    self._on_event({"type": header.type, "acquisition": header.acquisition, "index": header.index})
                continue
            self.received += 1
            self.last_frame_at = now
            if header.kind == "denoised":
                self._note_service_frame(header.extra)
            newest = self._pairs.add(msg, now) or newest
        return newest

    def _note_service_frame(self, extra: Any) -> None:
        """Keep a denoised frame's service timings (headers of other senders may lack them: skipped)."""
        try:
            published, latency, infer, age = (
                float(extra[k]) for k in ("published_at", "latency_ms", "infer_ms", "age_ms")
            )
        except (KeyError, TypeError, ValueError):
            return
        self.service_frames.append((published, latency, infer, age, 1.0 if extra.get("flushed") else 0.0))

    def _prepare(self, newest: Pair) -> None:
        raw, den = newest.raw, newest.denoised
        first = den if den is not None else raw
        assert first is not None and first.data is not None  # a Pair holds at least one frame
        factor = bin_factor((int(first.data.shape[0]), int(first.data.shape[1])), self.max_size)
        try:
            pair = FramePair(
                acquisition=newest.acquisition,
                index=newest.index,
                timestamp=newest.timestamp,
                factor=factor,
                received_at=newest.received_at,
                raw=_channel("raw", raw, factor),
                denoised=_channel("denoised", den, factor),
                uncertainty=_channel("uncertainty", newest.uncertainty, factor),
            )
        except (ValueError, TypeError, MemoryError) as exc:
            logger.warning(
                "frame %d of %r could not be prepared for display: %s", newest.index, newest.acquisition, exc
            )
            return
        self.prepared += 1
        self._on_pair(pair)


def _channel(kind: str, msg: Message | None, factor: int) -> Channel | None:
    """The display channel of a paired frame message (None when the pair has no such frame)."""
    if msg is None or msg.data is None:
        return None
    return make_channel(kind, msg.header.to_dict(), msg.data, factor)
