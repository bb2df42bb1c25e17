"""Pairing a live service's raw, denoised and uncertainty frames for display: the newest pair (or triple) wins.

``emlive serve --publish-raw`` publishes each raw frame and, once the model ran on its window, the denoised frame
of the same (acquisition, index); with ``--uncertainty`` the denoised frame's std map (kind ``uncertainty``, the
same acquisition and index) follows it. A display (the browser viewer's :class:`emlive.viewer.source.FrameSource`,
the napari Live widget) wants the newest *pair*: :class:`PairTracker` keeps the last few raw frames, completes a
pair when the denoised frame of one of them arrives and, when no denoised frame came for a while (a bare
detector, or a service without ``--publish-raw``'s partner), hands out raw frames alone. Once a stream has
carried an uncertainty map (within :data:`MAP_EXPECTED_S`), a denoised pair waits for its map and goes out as a
triple; a pair whose map does not come (dropped by a full queue, a model without a variance head swapped in) goes
out alone when the next denoised frame arrives or :data:`MAP_WAIT_S` passed (:meth:`PairTracker.overdue`).
Memory is bounded: at most :data:`RAW_KEEP` raw frames and one waiting pair are held.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import zmq

from emlive.core.protocol import HeaderCache, Message, ProtocolError, decode, parse_json_object

logger = logging.getLogger(__name__)

RAW_KEEP = 8
RAW_ONLY_AFTER_S = 1.0  # show raw frames alone when no denoised frame came for this long (a bare detector)
MAP_EXPECTED_S = 1.0  # a denoised frame waits for its uncertainty map when a map came within this long
MAP_WAIT_S = 0.25  # ... but at most this long (the service sends the map right after its frame)


@dataclass(frozen=True)
class Pair:
    """The frames of one (acquisition, index) to show together; raw or denoised may be missing (not both); the
    ``uncertainty`` map (the denoised frame's std) comes only with its denoised frame."""

    acquisition: str
    index: int
    timestamp: float
    received_at: float
    raw: Message | None = None
    denoised: Message | None = None
    uncertainty: Message | None = None


class PairTracker:
    """Pairs frame messages by (acquisition, index); :meth:`add` returns the pair (or triple) a message completes.

    Not thread-safe: one tracker per receiving thread.
    """

    def __init__(
        self,
        raw_keep: int = RAW_KEEP,
        raw_only_after_s: float = RAW_ONLY_AFTER_S,
        map_expected_s: float = MAP_EXPECTED_S,
        map_wait_s: float = MAP_WAIT_S,
    ) -> None:
        self._raw: OrderedDict[tuple[str, int], Message] = OrderedDict()
        self._raw_keep, self._raw_only_after_s = raw_keep, raw_only_after_s
        self._map_expected_s, self._map_wait_s = map_expected_s, map_wait_s
        self._last_denoised = 0.0
        self._last_map = -math.inf
        self._waiting: Pair | None = None  # the newest denoised pair, waiting for its uncertainty map
        self._waiting_out = False  # ... already handed out (it came when no maps were expected)

    def add(self, msg: Message, now: float) -> Pair | None:
        """The pair ``msg`` (a frame message with pixels and an index) completes, or None.

        A denoised frame completes its pair (with the raw frame of the same key when it came); in a stream that
        carries uncertainty maps it waits for its map instead (and hands out the pair that waited before it, if
        any). An ``uncertainty`` map completes the waiting pair of its key into a triple (or, the first map of a
        stream, repeats the pair just handed out, with its map). A raw frame is kept for its denoised partner and
        is a pair alone only when no denoised frame came for ``raw_only_after_s`` seconds. Other messages, and
        maps of no waiting pair, return None.
        """
        header = msg.header
        if header.type != "frame" or msg.data is None or header.index is None:
            return None
        key = (header.acquisition, header.index)
        if header.kind == "denoised":
            return self._denoised(key, msg, now)
        if header.kind == "uncertainty":
            return self._map(key, msg, now)
        if header.kind != "raw":
            return None
        self._raw[key] = msg
        while len(self._raw) > self._raw_keep:
            self._raw.popitem(last=False)
        if now - self._last_denoised > self._raw_only_after_s:
            return Pair(key[0], key[1], header.timestamp, now, msg, None)
        return None

    def overdue(self, now: float) -> Pair | None:
        """The waiting pair once it waited ``map_wait_s`` for a map that did not come (handed out alone), else
        None. A display calls it between reads, so the last frame of a stream is not held back."""
        waiting = self._waiting
        if waiting is None or self._waiting_out or now - waiting.received_at < self._map_wait_s:
            return None
        self._waiting = None
        return waiting

    def _denoised(self, key: tuple[str, int], msg: Message, now: float) -> Pair | None:
        self._last_denoised = now
        pair = Pair(key[0], key[1], msg.header.timestamp, now, self._raw.pop(key, None), msg)
        before, before_out = self._waiting, self._waiting_out
        self._waiting = pair
        self._waiting_out = now - self._last_map > self._map_expected_s  # no maps in this stream: out at once
        if self._waiting_out:
            return pair  # (still kept: the first map of a stream completes it into a triple)
        return before if before is not None and not before_out else None

    def _map(self, key: tuple[str, int], msg: Message, now: float) -> Pair | None:
        self._last_map = now
        waiting = self._waiting
        if waiting is None or (waiting.acquisition, waiting.index) != key:
            return None
        self._waiting = None
        return replace(waiting, uncertainty=msg, received_at=now)


def queued_messages(
    sock: zmq.Socket[Any], limit: int, source: str | None, cache: HeaderCache | None = None
) -> Iterator[Message | None]:
    """The messages queued on ``sock`` (subscribed to a service's output), at most ``limit``, read without blocking
    and decoded with the wire's checks (``cache``: this stream's :class:`~emlive.core.protocol.HeaderCache`); None
    for each one refused, which is logged naming ``source``. One at a time: a display keeps only what it pairs."""
    for _ in range(limit):
        try:
            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        try:
            yield decode(parts, check_finite=False, cache=cache)
        except ProtocolError as exc:
            logger.warning("dropped a message from %s: %s", source, exc)
            yield None


def newest_status(sock: zmq.Socket[Any], limit: int, address: str | None) -> dict[str, Any] | None:
    """The newest status object queued on ``sock`` (subscribed to a service's ``--status`` address), reading at most
    ``limit`` messages without blocking, or None when none came. Each is parsed by the wire's strict, bounded JSON
    parser; a malformed one is logged (naming ``address``) and skipped. A display shows only the newest."""
    newest: dict[str, Any] | None = None
    for _ in range(limit):
        try:
            data = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            break
        try:
            newest = parse_json_object(data, "status message")
        except ProtocolError as exc:
            logger.warning("%s; is %s the service's --status address?", exc, address)
    return newest
