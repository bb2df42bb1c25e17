"""The JSON of published frame headers, from a template: the fields that repeat are encoded once per stream.

A published frame's header repeats most of its fields from one frame to the next (protocol, acquisition, shape,
pixel type, model, ...); only a few change (index, timestamp, window, sequence number, times). :class:`HeaderJson`
encodes an example header once with a mark in each changing field and then writes each frame's header by
filling the marks in: the same bytes ``json.dumps`` gives (compact, keys in the same order), at a third of the
cost of building and encoding the dictionary per frame. Fields given ``decimals`` are written as
``json.dumps(round(value, decimals))`` writes them, from one fixed-point formatting where that gives the same text
(:func:`rounded`): the two float conversions of ``round`` and ``repr`` cost more than the rest of the header.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_INT_ONLY = {int}
# below this magnitude a double's spacing is finer than 10**-d, so the fixed-point text of a value to d decimals,
# without its trailing zeros, is the shortest text of round(value, d): the text repr (and json) writes
_FIXED_BELOW = {d: 2.0 ** math.floor(math.log2(2.0**52 / 10.0**d)) for d in range(1, 16)}
_FIXED_ABOVE = 1e-4  # repr writes smaller numbers with an exponent
_FIXED_SPEC = {d: f".{d}f" for d in _FIXED_BELOW}


def _number(value: float | int) -> str:
    """A finite number as JSON writes it (``float.__repr__``, as :mod:`json` does)."""
    if value.__class__ is int:
        return int.__repr__(value)
    if value.__class__ is not float or not math.isfinite(value):
        raise ValueError(f"{value!r}: a header field needs a finite number")  # as json.dumps(allow_nan=False)
    return float.__repr__(value)


def rounded(value: float, decimals: int) -> str:
    """``round(value, decimals)`` as JSON writes it (ValueError for NaN/inf, as :func:`_number`), without the
    two float conversions of ``round`` and ``repr`` where the fixed-point text is the same."""
    if value.__class__ is float and _FIXED_ABOVE <= abs(value) < _FIXED_BELOW.get(decimals, 0.0):
        text = format(value, _FIXED_SPEC[decimals]).rstrip("0")
        return text + "0" if text[-1] == "." else text
    return _number(round(value, decimals))


def _json(value: Any) -> str:
    """``value`` (a finite number, a bool, None or a list of those) as compact JSON."""
    cls = value.__class__
    if cls is float or cls is int:
        return _number(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if cls is list:
        if set(map(type, value)) <= _INT_ONLY:  # (a window of frame indices: the usual list)
            return "[" + ",".join(map(int.__repr__, value)) + "]"
        return "[" + ",".join([_json(v) for v in value]) + "]"
    return _number(value)


class HeaderJson:
    """Compact JSON of header dicts with the keys and values of ``example`` except the ``varying`` keys'
    values, which :meth:`encode` takes (numbers, bools, None, lists of them); a float of a key in ``decimals``
    is written rounded to that many decimals, as ``round`` would (an int or anything else as it is)."""

    def __init__(
        self, example: dict[str, Any], varying: Sequence[str], decimals: Mapping[str, int] | None = None
    ) -> None:
        if not set(varying) <= set(example):
            raise ValueError(f"varying keys {sorted(set(varying) - set(example))} are not in the example header")
        if not set(decimals or {}) <= set(varying):
            raise ValueError(f"rounded keys {sorted(set(decimals or {}) - set(varying))} are not varying keys")
        marks = {key: f"\x00{k}\x00" for k, key in enumerate(varying)}
        text = _ENCODER.encode({key: marks.get(key, value) for key, value in example.items()})
        encoded = [_ENCODER.encode(mark) for mark in marks.values()]  # '"\u0000<k>\u0000"'
        if any(text.count(mark) != 1 for mark in encoded):
            raise ValueError("a fixed header value holds a template mark; encode that header the slow way")
        found = sorted((text.index(mark), k) for k, mark in enumerate(encoded))
        self._order = [k for _, k in found]
        self._decimals = [(decimals or {}).get(varying[k]) for k in self._order]
        pieces: list[str] = []
        start = 0
        for pos, k in found:
            pieces.append(text[start:pos])
            start = pos + len(encoded[k])
        pieces.append(text[start:])
        self._format = "%s".join(piece.replace("%", "%%") for piece in pieces)  # one C call fills the fields

    def encode(self, values: Sequence[Any]) -> bytes:
        """The header with ``values`` (in the order of ``varying``) in its varying fields, as UTF-8 JSON."""
        texts = tuple(
            _json(value) if digits is None or value.__class__ is not float else rounded(value, digits)
            for value, digits in zip(map(values.__getitem__, self._order), self._decimals, strict=True)
        )
        return (self._format % texts).encode("utf-8")
