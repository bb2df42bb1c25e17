"""Pairing a live service's raw and denoised frames for display: the newest pair wins.

``emlive serve --publish-raw`` publishes each raw frame and, once the model ran on its window, the denoised frame
of the same (acquisition, index). A display (the browser viewer's :class:`emlive.viewer.source.FrameSource`, the
napari Live widget) wants the newest *pair*: :class:`PairTracker` keeps the last few raw frames, completes a pair
when the denoised frame of one of them arrives and, when no denoised frame came for a while (a bare detector, or
a service without ``--publish-raw``'s partner), hands out raw frames alone. Memory is bounded: at most
:data:`RAW_KEEP` raw frames are held.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import zmq

from emlive.core.protocol import Message, ProtocolError, parse_json_object

logger = logging.getLogger(__name__)

RAW_KEEP = 8
RAW_ONLY_AFTER_S = 1.0  # show raw frames alone when no denoised frame came for this long (a bare detector)


@dataclass(frozen=True)
class Pair:
    """The frames of one (acquisition, index) to show together; either may be missing (not both)."""

    acquisition: str
    index: int
    timestamp: float
    received_at: float
    raw: Message | None = None
    denoised: Message | None = None


class PairTracker:
    """Pairs frame messages by (acquisition, index); :meth:`add` returns the pair a message completes.

    Not thread-safe: one tracker per receiving thread.
    """

    def __init__(self, raw_keep: int = RAW_KEEP, raw_only_after_s: float = RAW_ONLY_AFTER_S) -> None:
        self._raw: OrderedDict[tuple[str, int], Message] = OrderedDict()
        self._raw_keep, self._raw_only_after_s = raw_keep, raw_only_after_s
        self._last_denoised = 0.0

    def add(self, msg: Message, now: float) -> Pair | None:
        """The pair ``msg`` (a frame message with pixels and an index) completes, or None.

        A denoised frame completes its pair (with the raw frame of the same key when it came); a raw frame is
        kept for its denoised partner and is a pair alone only when no denoised frame came for
        ``raw_only_after_s`` seconds. Other messages (and frames of other kinds, such as the service's
        ``uncertainty`` maps) return None.
        """
        header = msg.header
        if header.type != "frame" or msg.data is None or header.index is None:
            return None
        if header.kind not in ("raw", "denoised"):
            return None
        key = (header.acquisition, header.index)
        if header.kind == "denoised":
            self._last_denoised = now
            return Pair(key[0], key[1], header.timestamp, now, self._raw.pop(key, None), msg)
        self._raw[key] = msg
        while len(self._raw) > self._raw_keep:
            self._raw.popitem(last=False)
        if now - self._last_denoised > self._raw_only_after_s:
            return Pair(key[0], key[1], header.timestamp, now, msg, None)
        return None


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
