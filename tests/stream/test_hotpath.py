"""The live path's per-frame shortcuts give exactly what the long way gives: headers read by their bytes
(core.protocol's byte template), header numbers written rounded without ``round`` (stream.headerjson), the input
queue's bare-lock wake-up (stream.inputqueue)."""

from __future__ import annotations

import json
import math
import random
import struct
import threading
import time
from typing import Any

import numpy as np
import pytest

from emlive.core.protocol import MAX_INDEX, HeaderCache, ProtocolError, decode, frame_header
from emlive.stream.headerjson import HeaderJson, rounded
from emlive.stream.inputqueue import InputQueue
from emlive.stream.pipeline import json_bytes


def _frame(index: int = 7, timestamp: Any = 1.5, text: str | None = None, **extra: Any) -> list[bytes]:
    arr = np.arange(12, dtype=np.uint16).reshape(3, 4)
    header = frame_header(arr, "acq-1", 0, timestamp=1.5).to_dict()
    header.update(extra, index=index, timestamp=timestamp)
    return [(text or json.dumps(header)).encode(), arr.tobytes()]


class _Text:
    """A header's JSON text with other index and timestamp values written in (as text)."""

    def __init__(self, text: str) -> None:
        self._text = text.replace('"index": 7', '"index": @I@').replace('"timestamp": 1.5', '"timestamp": @T@')

    def replace(self, old: str, new: str) -> _Text:
        self._text = self._text.replace(old, new)
        return self

    def format(self, i: Any, t: Any) -> str:
        return self._text.replace("@I@", str(i)).replace("@T@", str(t))


def _template(text: str) -> _Text:
    return _Text(text)


@pytest.mark.timeout(60)
def test_a_header_that_differs_only_in_its_two_numbers_is_read_by_its_bytes() -> None:
    cache = HeaderCache()
    first = _frame(note="kept", nested={"a": [1, 2]})
    decode(first, cache=cache)  # the full check; remembered with its text
    fmt = _template(first[0].decode())
    for i, t in [(8, "2.25"), (9, "3"), (10, "-1.5e3"), (MAX_INDEX, "1796141296.5718918"), (0, "0")]:
        parts = [fmt.format(i=i, t=t).encode(), first[1]]
        fast = cache.match(parts, 1 << 30, True)
        assert fast is not None, (i, t)
        want = decode(parts)
        assert fast.header == want.header and type(fast.header.timestamp) is float
        assert fast.data is not None and np.array_equal(fast.data, want.data) and not fast.data.flags.writeable
        assert fast.header.extra == {"note": "kept", "nested": {"a": [1, 2]}}
        assert fast.header.extra is not cache.match(parts, 1 << 30, True).header.extra  # (each frame its own)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("index", "timestamp", "reason"),
    [
        ("7.0", "1.5", "bad_field"),  # a float index
        ("-1", "1.5", "bad_index"),
        (str(MAX_INDEX + 1), "1.5", "bad_index"),
        ("1" + "0" * 40, "1.5", "bad_index"),
        ("7", "1e999", "bad_field"),  # not finite
        ("7", "true", "bad_field"),
        ("7", '"1.5"', "bad_field"),
        ("07", "1.5", "bad_json"),  # not JSON
        ("7", "1.", "bad_json"),
        ("7", "NaN", "bad_json"),
    ],
)
def test_what_the_full_check_refuses_never_passes_by_its_bytes(index: str, timestamp: str, reason: str) -> None:
    cache = HeaderCache()
    first = _frame()
    decode(first, cache=cache)
    parts = [_template(first[0].decode()).format(i=index, t=timestamp).encode(), first[1]]
    assert cache.match(parts, 1 << 30, True) is None
    with pytest.raises(ProtocolError) as info:
        decode(parts, cache=cache)
    assert info.value.reason == reason


@pytest.mark.timeout(60)
def test_the_byte_template_follows_json_on_repeated_keys_and_refuses_other_bytes() -> None:
    cache = HeaderCache()
    first = _frame()
    text = first[0].decode()
    twice = text.replace('{"protocol"', '{"index": 3, "timestamp": 9.5, "protocol"')  # JSON keeps the last
    decode([twice.encode(), first[1]], cache=cache)
    parts = [_template(twice).format(i=11, t=2.5).encode(), first[1]]
    fast = cache.match(parts, 1 << 30, True)
    assert fast is not None and (fast.header.index, fast.header.timestamp) == (11, 2.5)
    assert decode(parts).header == fast.header
    moved = [_template(twice).replace('"index": 3', '"index": 4').format(i=11, t=2.5).encode(), first[1]]
    assert cache.match(moved, 1 << 30, True) is None  # the first copy is fixed text: other bytes, parsed
    assert decode(moved, cache=cache).header.index == 11
    spaced = [text.replace('"index": 7', '"index":  12').encode(), first[1]]  # other bytes: parsed
    assert cache.match(spaced, 1 << 30, True) is None and decode(spaced, cache=cache).header.index == 12
    short = [first[0], first[1][:-2]]
    assert cache.match(short, 1 << 30, True) is None
    with pytest.raises(ProtocolError, match="truncated"):
        decode(short, cache=cache)
    assert cache.match(first, 16, True) is None  # another frame limit: not the remembered check's


def _doubles(count: int) -> list[float]:
    rng = random.Random(5)
    out = [0.0, -0.0, 1e-4, -1e-4, 4.9e-4, 5e-4, 0.0015, 0.0025, 2.0**32, 2.0**32 - 1e-7, 2.0**42, 1e16, 1e-5,
           5e-324, 1.7976931348623157e308, 1764612345.1234565, math.inf, -math.inf, math.nan]  # fmt: skip
    for _ in range(count):
        k = rng.random()
        if k < 0.4:
            out.append(rng.uniform(-1e3, 1e3))
        elif k < 0.6:
            out.append(rng.uniform(1.5e9, 4.4e9))  # wall-clock times, now and after 2038
        elif k < 0.8:
            out.append(round(rng.uniform(0, 1e4), rng.randint(0, 7)) + rng.choice([5e-4, 5e-7, -5e-4, -5e-7]))
        else:
            out.append(struct.unpack("d", struct.pack("Q", rng.getrandbits(64)))[0])
    return out


def _as_json(value: float, decimals: int) -> str:
    try:
        return json.dumps(round(value, decimals), allow_nan=False)
    except (ValueError, OverflowError):
        return "refused"


@pytest.mark.timeout(60)
def test_rounded_numbers_are_written_as_json_writes_the_rounded_value() -> None:
    for value in _doubles(6000):
        for decimals in (1, 3, 6, 9, 0, -1, 20):
            try:
                got = rounded(value, decimals)
            except ValueError:
                got = "refused"
            assert got == _as_json(value, decimals), (value, decimals)


@pytest.mark.timeout(60)
def test_a_template_with_decimals_writes_the_bytes_of_the_rounded_header() -> None:
    example = {"protocol": "emlive/1", "timestamp": 1.0, "index": 0, "window": [], "flushed": False, "at": 0.5,
               "ms": 0.5, "note": "100%s %d"}  # fmt: skip
    varying, decimals = ("timestamp", "index", "window", "flushed", "at", "ms"), {"at": 6, "ms": 3}
    template = HeaderJson(example, varying, decimals)
    cases = [
        (1796141296.5718918, 7, [5, 6, 7, 8, 9], True, 1796141296.12345678, 0.12345),
        (3, 2**53 - 1, [None, 1, True], False, 5, 1e-07),
        (2.5, 1, [0.5], False, 4.4e9 + 0.3, -0.0001),
    ]
    for values in cases:
        rounded_values = [round(v, decimals[k]) if k in decimals else v for k, v in zip(varying, values, strict=True)]
        assert template.encode(values) == json_bytes({**example, **dict(zip(varying, rounded_values, strict=True))})
    with pytest.raises(ValueError, match="finite"):
        template.encode((1.0, 7, [], True, math.nan, 0.5))
    with pytest.raises(ValueError, match="rounded keys"):
        HeaderJson(example, varying, {"note": 3})


@pytest.mark.timeout(60)
def test_the_input_queue_hands_every_message_over_in_order_and_waits_its_timeout() -> None:
    queue = InputQueue(max_items=2, max_bytes=1000)
    items = [(["m", k], float(k), 0.0) for k in range(400)]

    def produce() -> None:
        for item in items:  # lossless: waits for room (the queue holds 2)
            while not queue.put_wait(item, 10, 0.5):
                pass

    producer = threading.Thread(target=produce)
    producer.start()
    got: list[Any] = []
    while len(got) < len(items):
        got += queue.get(5.0)
    producer.join(5)
    assert got == items and len(queue) == 0 and queue.nbytes == 0
    assert queue.put_drop_oldest(items[0], 10) == 0 and queue.get(0.0) == [items[0]]  # leaves a stale wake-up
    start = time.monotonic()
    assert queue.get(0.2) == []  # the stale wake-up finds nothing and waits on: [] after the timeout, not before
    assert time.monotonic() - start >= 0.15
