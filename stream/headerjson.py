"""The JSON of published frame headers, from a template: the fields that repeat are encoded once per stream.

A published frame's header repeats most of its fields from one frame to the next (protocol, acquisition, shape,
pixel type, model, ...); only a few change (index, timestamp, window, sequence number, times). :class:`HeaderJson`
encodes an example header once with a mark in each changing field and then writes each frame's header by
filling the marks in: the same bytes ``json.dumps`` gives (compact, keys in the same order), at a third of the
cost of building and encoding the dictionary per frame.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _number(value: float | int) -> str:
    """A finite number as JSON writes it (``float.__repr__``, as :mod:`json` does)."""
    if value.__class__ is int:
        return int.__repr__(value)
    if value.__class__ is not float or not math.isfinite(value):
        raise ValueError(f"{value!r}: a header field needs a finite number")  # as json.dumps(allow_nan=False)
    return float.__repr__(value)


def _json(value: Any) -> str:
    """``value`` (a finite number, a bool, None or a list of those) as compact JSON."""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if value.__class__ is list:
        return "[" + ",".join([_json(v) for v in value]) + "]"
    return _number(value)


class HeaderJson:
    """Compact JSON of header dicts with the keys and values of ``example`` except the ``varying`` keys'
    values, which :meth:`encode` takes (numbers, bools, None, lists of them)."""

    def __init__(self, example: dict[str, Any], varying: Sequence[str]) -> None:
        if not set(varying) <= set(example):
            raise ValueError(f"varying keys {sorted(set(varying) - set(example))} are not in the example header")
        marks = {key: f"\x00{k}\x00" for k, key in enumerate(varying)}
        text = _ENCODER.encode({key: marks.get(key, value) for key, value in example.items()})
        encoded = [_ENCODER.encode(mark) for mark in marks.values()]  # '"\u0000<k>\u0000"'
        if any(text.count(mark) != 1 for mark in encoded):
            raise ValueError("a fixed header value holds a template mark; encode that header the slow way")
        found = sorted((text.index(mark), k) for k, mark in enumerate(encoded))
        self._order = [k for _, k in found]
        self._pieces: list[str] = []
        start = 0
        for pos, k in found:
            self._pieces.append(text[start:pos])
            start = pos + len(encoded[k])
        self._pieces.append(text[start:])

    def encode(self, values: Sequence[Any]) -> bytes:
        """The header with ``values`` (in the order of ``varying``) in its varying fields, as UTF-8 JSON."""
        pieces = self._pieces
        out = [pieces[0]]
        for k, piece in zip(self._order, pieces[1:], strict=True):
            out.append(_json(values[k]))
            out.append(piece)
        return "".join(out).encode("utf-8")
