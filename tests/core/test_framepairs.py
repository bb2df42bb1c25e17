"""PairTracker: raw and denoised frames paired by (acquisition, index), raw alone only without denoised frames,
bounded memory."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from emlive.core.framepairs import (
    MAP_EXPECTED_S,
    MAP_WAIT_S,
    RAW_KEEP,
    RAW_ONLY_AFTER_S,
    PairTracker,
    newest_status,
)
from emlive.core.protocol import Message, decode, encode, encode_frame, event_header

pytestmark = pytest.mark.timeout(60)


def _frame(index: int, kind: str, acq: str = "acq") -> Message:
    data = np.full((4, 6), index, np.uint16 if kind == "raw" else np.float32)
    return decode(encode_frame(data, acq, index, timestamp=100.0 + index, extra={"kind": kind}))


def test_denoised_frame_completes_the_pair_of_its_raw_frame() -> None:
    pairs = PairTracker()
    first = pairs.add(_frame(0, "raw"), now=10.0)  # no denoised frame ever came: the raw frame shows alone
    assert first is not None and first.denoised is None and first.index == 0
    assert pairs.add(_frame(1, "denoised"), now=10.1) is not None
    assert pairs.add(_frame(2, "raw"), now=10.2) is None  # waits for its partner
    pair = pairs.add(_frame(2, "denoised"), now=10.3)
    assert pair is not None and (pair.acquisition, pair.index, pair.timestamp) == ("acq", 2, 102.0)
    assert pair.raw is not None and pair.raw.header.kind == "raw" and pair.raw.header.index == 2
    assert pair.denoised is not None and pair.received_at == 10.3
    assert pairs.add(_frame(2, "denoised", acq="other"), now=10.4).raw is None  # type: ignore[union-attr]


def test_raw_frames_alone_only_when_no_denoised_frame_came_for_a_while() -> None:
    pairs = PairTracker()
    pairs.add(_frame(0, "denoised"), now=10.0)
    assert pairs.add(_frame(1, "raw"), now=10.0 + RAW_ONLY_AFTER_S / 2) is None
    alone = pairs.add(_frame(2, "raw"), now=10.0 + RAW_ONLY_AFTER_S * 1.5)
    assert alone is not None and alone.denoised is None and alone.raw is not None and alone.index == 2


def test_unpaired_raw_frames_are_bounded_and_events_are_ignored() -> None:
    pairs = PairTracker()
    pairs.add(_frame(0, "denoised"), now=10.0)
    for i in range(1, 3 * RAW_KEEP):
        pairs.add(_frame(i, "raw"), now=10.0)
    assert len(pairs._raw) == RAW_KEEP
    late = pairs.add(_frame(1, "denoised"), now=10.0)  # its raw frame was dropped long ago
    assert late is not None and late.raw is None
    assert pairs.add(decode(encode(event_header("end", "acq", index=5))), now=10.0) is None


@pytest.mark.timeout(10)
def test_newest_status_skips_malformed_messages_and_keeps_the_newest(caplog: pytest.LogCaptureFixture) -> None:
    ctx = zmq.Context.instance()
    rx, tx = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    try:
        port = rx.bind_to_random_port("tcp://127.0.0.1")
        tx.connect(f"tcp://127.0.0.1:{port}")
        assert newest_status(rx, 8, "tcp://x") is None  # nothing queued: no wait, no status
        for data in (b'{"seq": 1}', b"{nope", b"42", b'{"seq": 2}', b'{"seq": NaN}'):
            tx.send(data)
        assert rx.poll(2000)
        time.sleep(0.2)  # let the rest arrive
        assert newest_status(rx, 8, "tcp://x") == {"seq": 2}
        assert sum("tcp://x" in r.getMessage() for r in caplog.records) == 3  # each bad one named, then skipped
        tx.send(b'{"seq": 3}')
        tx.send(b'{"seq": 4}')
        assert rx.poll(2000)
        time.sleep(0.2)
        assert newest_status(rx, 1, None) == {"seq": 3}  # at most `limit` read per call
    finally:
        rx.close(0)
        tx.close(0)


def test_uncertainty_maps_are_never_taken_for_raw_frames() -> None:
    tracker = PairTracker()
    tracker.add(_frame(5, "denoised"), 0.0)  # a denoised frame came: raw frames now wait for their partner
    assert tracker.add(_frame(7, "raw"), 0.1) is None
    assert tracker.add(_frame(7, "uncertainty"), 0.2) is None  # not taken for the raw frame of index 7
    tracker.add(_frame(7, "denoised"), 0.3)
    pair = tracker.overdue(0.3 + MAP_WAIT_S)  # (the map came before its frame: never on the wire; not matched)
    assert pair is not None and pair.raw is not None and pair.raw.header.kind == "raw" and pair.uncertainty is None


def test_a_stream_with_maps_hands_out_triples_matched_by_acquisition_and_index() -> None:
    tracker = PairTracker()
    assert tracker.add(_frame(0, "raw"), 10.0) is not None  # raw alone: no denoised frame yet
    first = tracker.add(_frame(0, "denoised"), 10.01)
    assert first is not None and first.uncertainty is None  # no map seen yet: out at once ...
    triple = tracker.add(_frame(0, "uncertainty"), 10.02)  # ... and the stream's first map completes it again
    assert triple is not None and triple.index == 0 and triple.raw is not None and triple.denoised is not None
    assert triple.uncertainty is not None and triple.uncertainty.header.kind == "uncertainty"
    for t in range(1, 4):  # from now on a denoised pair waits for its map: every pair out is a triple
        now = 10.0 + t * 0.1
        assert tracker.add(_frame(t, "raw"), now) is None
        assert tracker.add(_frame(t, "denoised"), now + 0.01) is None
        assert tracker.add(_frame(t, "uncertainty", acq="other"), now + 0.015) is None  # another acquisition's
        out = tracker.add(_frame(t, "uncertainty"), now + 0.02)
        assert out is not None and (out.acquisition, out.index) == ("acq", t)
        assert [m.header.index for m in (out.raw, out.denoised, out.uncertainty)] == [t, t, t]  # type: ignore[union-attr]
        assert out.uncertainty.header.kind == "uncertainty" and out.received_at == now + 0.02  # type: ignore[union-attr]
        assert float(out.uncertainty.data[0, 0]) == t  # type: ignore[union-attr,index]


def test_a_pair_whose_map_does_not_come_goes_out_alone_and_memory_stays_bounded() -> None:
    tracker = PairTracker()
    tracker.add(_frame(0, "denoised"), 10.0)
    tracker.add(_frame(0, "uncertainty"), 10.0)
    assert tracker.add(_frame(1, "denoised"), 10.1) is None  # waits for its map, which is lost
    assert tracker.overdue(10.1 + MAP_WAIT_S / 2) is None  # not yet
    late = tracker.add(_frame(2, "denoised"), 10.2)  # a newer frame: the one before goes out alone
    assert late is not None and late.index == 1 and late.uncertainty is None
    assert tracker.add(_frame(1, "uncertainty"), 10.21) is None  # its map, too late: not matched to frame 2
    alone = tracker.overdue(10.2 + MAP_WAIT_S)  # the last frame of a stream is not held back
    assert alone is not None and alone.index == 2 and alone.uncertainty is None
    assert tracker.overdue(20.0) is None and tracker.add(_frame(2, "uncertainty"), 20.0) is None
    for t in range(3, 40):  # one waiting pair at most, whatever comes
        tracker.add(_frame(t, "denoised"), 20.0 + t * 0.01)
    assert tracker._waiting is not None and tracker._waiting.index == 39
    # maps stopped (a model without a variance head swapped in): pairs go out at once again
    pair = tracker.add(_frame(40, "denoised"), 20.0 + MAP_EXPECTED_S + 1.0)
    assert pair is not None and pair.index == 40 and tracker.overdue(100.0) is None
