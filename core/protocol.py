"""The emlive/1 wire protocol: how frames travel between a detector, the live service and its viewers.

Every sender and receiver uses this module; ``docs/protocol.md`` is the language-neutral description. In short,
a message is a ZeroMQ multipart message:

* part 0: a UTF-8 JSON object (the header, at most :data:`MAX_HEADER_BYTES`), ``{"protocol": "emlive/1",
  "type": "start" | "frame" | "end", "acquisition": str, "index": int, "timestamp": float, "shape": [H, W],
  "dtype": "uint16", "byte_order": "<", "pixel_size_nm": float | null, "compression": null, ...}``;
* part 1 (``frame`` messages only): the raw pixels, H*W*itemsize bytes in C (row-major) order.

``start`` and ``end`` messages have the header part only. Extra header keys are allowed and passed through.
Status (``type: "status"``) and control request/reply messages are single-part JSON objects.

Decoding is strict: anything that breaks a rule raises :class:`ProtocolError`, whose message names the value,
the rule and the fix. No pickle: headers are JSON, pixels are raw bytes read with :func:`numpy.frombuffer`
on the received ZeroMQ buffer (zero-copy).

The socket helpers set explicit high-water marks and LINGER, bind to the loopback interface unless remote binds
are allowed, poll with timeouts, and add CURVE encryption/authentication (:class:`CurveServer`,
:class:`CurveClient`) for links that leave the machine.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zmq

from emlive.core.errors import ConfigError, EmliveError
from emlive.core.pixeltypes import WIRE_DTYPES, pixel_type

logger = logging.getLogger(__name__)

PROTOCOL = "emlive/1"
MESSAGE_TYPES = ("start", "frame", "end")
STATUS_TYPE = "status"
MAX_HEADER_BYTES = 65536
MAX_SIDE = 65536
MAX_ACQUISITION_CHARS = 256
MAX_JSON_DEPTH = 32  # nesting of objects/lists in a header or control request; a real header uses 1-3
MAX_INDEX = 2**53 - 1  # the largest integer every JSON reader holds exactly (a double's 53-bit mantissa)
DEFAULT_MAX_FRAME_BYTES = 1 << 30
DTYPES: dict[str, np.dtype[Any]] = WIRE_DTYPES  # the pixel types on the wire: emlive.core.pixeltypes decides
BYTE_ORDERS = ("<", ">", "|")
RESERVED_KEYS = frozenset(
    {"protocol", "type", "acquisition", "index", "timestamp", "shape", "dtype", "byte_order", "pixel_size_nm",
     "compression"}
)  # fmt: skip
_NATIVE_ORDER = "<" if sys.byteorder == "little" else ">"
_DTYPE_NAMES = ", ".join(DTYPES)

MessageType = Literal["start", "frame", "end"]
Part = zmq.Frame | bytes | bytearray | memoryview


class ProtocolError(EmliveError):
    """A message breaks the emlive/1 wire protocol (bad JSON, missing field, wrong payload size, ...)."""

    def __init__(self, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


# --- headers and messages ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Header:
    """A validated message header. ``extra`` holds the keys the protocol does not define, passed through."""

    type: MessageType
    acquisition: str
    timestamp: float
    index: int | None = None
    shape: tuple[int, int] | None = None
    dtype: str | None = None
    byte_order: str | None = None
    pixel_size_nm: float | None = None
    compression: None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The pixel dtype with its byte order (``>u2`` for big-endian uint16); only for headers with a dtype."""
        if self.dtype is None:
            raise ProtocolError(f"{self.type} message of {self.acquisition!r} has no dtype", "missing_field")
        base = DTYPES[self.dtype]
        if base.itemsize == 1 or self.byte_order in (None, "|"):
            return base
        return base.newbyteorder("<" if self.byte_order == "<" else ">")

    @property
    def kind(self) -> str:
        """``"raw"``, ``"denoised"``, ... (the ``kind`` extra key; ``"raw"`` when absent)."""
        return str(self.extra.get("kind", "raw"))

    def to_dict(self) -> dict[str, Any]:
        """The header as the JSON object sent on the wire."""
        out: dict[str, Any] = {
            "protocol": PROTOCOL,
            "type": self.type,
            "acquisition": self.acquisition,
            "timestamp": self.timestamp,
        }
        if self.index is not None:
            out["index"] = self.index
        if self.shape is not None:
            out["shape"] = [self.shape[0], self.shape[1]]
        if self.dtype is not None:
            out["dtype"] = self.dtype
            out["byte_order"] = self.byte_order or ("|" if DTYPES[self.dtype].itemsize == 1 else _NATIVE_ORDER)
        if self.type == "frame" or self.pixel_size_nm is not None:
            out["pixel_size_nm"] = self.pixel_size_nm
        if self.type == "frame":
            out["compression"] = None
        for key, value in self.extra.items():
            if key not in RESERVED_KEYS:
                out[key] = value
        return out

    def to_bytes(self) -> bytes:
        """The UTF-8 JSON header part (NaN/inf refused: JSON has no such numbers)."""
        try:
            text = json.dumps(self.to_dict(), allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise ProtocolError(
                f"header of {self.acquisition!r} cannot be written as JSON ({exc}); extra keys must hold JSON "
                "values (str, finite numbers, bool, null, lists, objects)",
                "bad_json",
            ) from exc
        data = text.encode("utf-8")
        if len(data) > MAX_HEADER_BYTES:
            raise ProtocolError(
                f"header of {self.acquisition!r} is {len(data)} bytes; headers must stay under {MAX_HEADER_BYTES} "
                "bytes: send less metadata per frame",
                "header_too_large",
            )
        return data

    def replace(self, **changes: Any) -> Header:
        """A copy with some fields changed (``extra`` is merged, not replaced)."""
        extra = dict(self.extra)
        extra.update(changes.pop("extra", None) or {})
        return dataclasses.replace(self, extra=extra, **changes)


@dataclass(frozen=True)
class Message:
    """A decoded message: the header and, for ``frame`` messages, the (H, W) pixels.

    ``data`` is a read-only view on the received buffer (no copy); copy it before changing it.
    """

    header: Header
    data: np.ndarray | None = None


def dtype_fields(dtype: np.dtype[Any]) -> tuple[str, str]:
    """The ``dtype`` and ``byte_order`` header values of a numpy dtype; ProtocolError for unsupported types."""
    dt = np.dtype(dtype)
    fields = _FIELDS.get(dt)
    if fields is None:
        fields = _FIELDS[dt] = _dtype_fields(dt)  # only wire types get here: at most 17 entries
    return fields


_FIELDS: dict[np.dtype[Any], tuple[str, str]] = {}  # dtype_fields per dtype (a per-frame look-up of the service)


def _dtype_fields(dt: np.dtype[Any]) -> tuple[str, str]:
    name = dt.newbyteorder("=").name
    if name not in DTYPES:
        raise ProtocolError(
            f"pixel type {dt} cannot be sent: emlive/1 carries {_DTYPE_NAMES}; convert the frame first",
            "unknown_dtype",
        )
    if dt.itemsize == 1:
        return name, "|"
    order = dt.byteorder
    return name, _NATIVE_ORDER if order in ("=", "|") else order


def frame_header(
    frame: np.ndarray,
    acquisition: str,
    index: int,
    *,
    timestamp: float | None = None,
    pixel_size_nm: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Header:
    """The header of a ``frame`` message carrying ``frame`` (checked like a received one)."""
    arr = np.asarray(frame)
    if arr.ndim != 2:
        raise ProtocolError(f"frame of shape {arr.shape}: a frame must be 2-D (H, W)", "bad_shape")
    name, order = dtype_fields(arr.dtype)
    header = {
        "protocol": PROTOCOL,
        "type": "frame",
        "acquisition": acquisition,
        "index": index,
        "timestamp": time.time() if timestamp is None else timestamp,
        "shape": [int(arr.shape[0]), int(arr.shape[1])],
        "dtype": name,
        "byte_order": order,
        "pixel_size_nm": pixel_size_nm,
        "compression": None,
        **dict(extra or {}),
    }
    return parse_header(header)


def event_header(
    type_: Literal["start", "end"],
    acquisition: str,
    *,
    timestamp: float | None = None,
    index: int | None = None,
    shape: tuple[int, int] | None = None,
    dtype: np.dtype[Any] | str | None = None,
    pixel_size_nm: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Header:
    """The header of a ``start`` or ``end`` message (shape/dtype optional: the frames to come)."""
    header: dict[str, Any] = {
        "protocol": PROTOCOL,
        "type": type_,
        "acquisition": acquisition,
        "timestamp": time.time() if timestamp is None else timestamp,
        **dict(extra or {}),
    }
    if index is not None:
        header["index"] = index
    if shape is not None:
        header["shape"] = [int(shape[0]), int(shape[1])]
    if dtype is not None:
        header["dtype"], header["byte_order"] = dtype_fields(np.dtype(dtype))
    if pixel_size_nm is not None:
        header["pixel_size_nm"] = pixel_size_nm
    return parse_header(header)


def encode(header: Header, data: np.ndarray | None = None) -> list[Any]:
    """The parts to pass to ``send_multipart(parts, copy=False)``: the header bytes and, for frames, the array.

    The array is sent without a copy: do not change it until ZeroMQ has sent it (emlive never does).
    """
    if header.type == "frame":
        if data is None:
            raise ProtocolError(
                f"frame {header.index} of {header.acquisition!r}: no pixel data to send", "missing_data"
            )
        arr = np.ascontiguousarray(data)
        if header.shape != arr.shape or header.numpy_dtype != arr.dtype:
            raise ProtocolError(
                f"frame {header.index} of {header.acquisition!r}: the header says {header.shape} "
                f"{header.numpy_dtype} but the array is {arr.shape} {arr.dtype}; build the header from the array",
                "bad_payload",
            )
        return [header.to_bytes(), arr]
    if data is not None:
        raise ProtocolError(f"a {header.type} message carries no pixels; send the frames as frame messages")
    return [header.to_bytes()]


def encode_frame(
    frame: np.ndarray,
    acquisition: str,
    index: int,
    *,
    timestamp: float | None = None,
    pixel_size_nm: float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Header + pixels of one frame message, ready for ``send_multipart(..., copy=False)``."""
    header = frame_header(frame, acquisition, index, timestamp=timestamp, pixel_size_nm=pixel_size_nm, extra=extra)
    return encode(header, frame)


# --- decoding ---------------------------------------------------------------------------------------------------
def _part_buffer(part: Part) -> memoryview:
    if isinstance(part, zmq.Frame):
        return part.buffer
    return memoryview(part)


def _part_bytes(part: Part) -> bytes | memoryview:
    """A header part's bytes without an extra copy where the part has them (``Frame.bytes`` is cached)."""
    if isinstance(part, zmq.Frame):
        return part.bytes
    return part if isinstance(part, bytes) else memoryview(part)


def _where(raw: Mapping[str, Any]) -> str:
    kind = raw.get("type")
    acq = raw.get("acquisition")
    idx = raw.get("index")
    text = f"{kind} message" if isinstance(kind, str) and kind in MESSAGE_TYPES else "message"
    if isinstance(acq, str):
        text += f" of acquisition {acq[:64]!r}"
    if isinstance(idx, int) and not isinstance(idx, bool):
        text += f" index {idx}"
    return text


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)  # made once: json.loads(..., **kw) makes one per call
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """The deepest nesting of objects/lists in JSON ``text`` (brackets inside strings do not count), found
    without recursion: a cheap scan that runs before :func:`json.loads` can recurse."""
    if text.count("[") + text.count("{") <= 1:
        return text.count("[") + text.count("{")
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _check_depth(text: str, what: str) -> None:
    if text.count("[") + text.count("{") <= MAX_JSON_DEPTH:
        return  # cannot nest deeper than it has brackets
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise ProtocolError(
            f"{what} nests objects/lists {depth} deep; at most {MAX_JSON_DEPTH} levels are accepted: send a flat "
            "JSON object",
            "too_deep",
        )


def parse_json_object(data: bytes | memoryview, what: str = "header") -> dict[str, Any]:
    """A JSON object from UTF-8 bytes (strict: NaN/Infinity refused); ProtocolError otherwise."""
    if len(data) > MAX_HEADER_BYTES:
        raise ProtocolError(
            f"{what} of {len(data)} bytes: a {what} must be at most {MAX_HEADER_BYTES} bytes of JSON; "
            "is part 0 the pixels instead of the header?",
            "header_too_large",
        )
    try:
        text = bytes(data).decode("utf-8")
        _check_depth(text, what)
        obj = _DECODER.decode(text)
    except RecursionError as exc:  # cannot happen after _check_depth; kept so no input can escape as a crash
        raise ProtocolError(f"{what} is nested too deeply for this reader ({exc})", "too_deep") from exc
    except UnicodeDecodeError as exc:
        raise ProtocolError(
            f"{what} is not UTF-8 text ({exc}); part 0 must be a UTF-8 JSON object", "bad_json"
        ) from exc
    except ValueError as exc:
        snippet = bytes(data[:60]).decode("utf-8", "replace")
        raise ProtocolError(
            f"{what} is not valid JSON ({exc}; starts with {snippet!r}); part 0 must be a JSON object", "bad_json"
        ) from exc
    if not isinstance(obj, dict):
        raise ProtocolError(
            f"{what} is JSON {type(obj).__name__}, not an object; send a JSON object {{...}}", "bad_json"
        )
    return obj


def _int(raw: Mapping[str, Any], key: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"{_where(raw)}: {key}={value!r} must be a JSON integer", "bad_field")
    return value


def _number(raw: Mapping[str, Any], key: str) -> float:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"{_where(raw)}: {key}={value!r} must be a JSON number", "bad_field")
    try:
        number = float(value)  # an integer beyond a double's range overflows (JSON allows any number of digits)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ProtocolError(f"{_where(raw)}: {key}={_short(value)} must be a finite number", "bad_field")
    return number


def _short(value: Any) -> str:
    """``repr(value)``, cut to 40 characters (a number can have thousands of digits)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _index(raw: Mapping[str, Any]) -> int:
    """The ``index`` field: a JSON integer from 0 to :data:`MAX_INDEX`."""
    index = _int(raw, "index")
    if not 0 <= index <= MAX_INDEX:
        raise ProtocolError(
            f"{_where(raw)}: index={_short(index)} is out of range; frame indices count from 0 and must stay at most "
            f"{MAX_INDEX} (2^53 - 1, exact in every JSON reader)",
            "bad_index",
        )
    return index


def parse_header(raw: Mapping[str, Any], max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Header:
    """Validate a header object (already parsed from JSON); returns a :class:`Header` or raises ProtocolError."""
    proto = raw.get("protocol")
    if proto != PROTOCOL:
        raise ProtocolError(
            f'{_where(raw)}: protocol={proto!r}; this receiver speaks {PROTOCOL!r} only: set "protocol": "{PROTOCOL}"',
            "bad_protocol" if "protocol" in raw else "missing_field",
        )
    kind = raw.get("type")
    if kind not in MESSAGE_TYPES:
        raise ProtocolError(
            f"{_where(raw)}: type={kind!r} is not a message type; use one of {', '.join(MESSAGE_TYPES)}",
            "unknown_type" if "type" in raw else "missing_field",
        )
    required = ["acquisition", "timestamp"]
    if kind == "frame":
        required += ["index", "shape", "dtype", "byte_order"]
    missing = [k for k in required if k not in raw]
    if missing:
        raise ProtocolError(
            f"{_where(raw)}: missing header field(s) {', '.join(missing)}; a {kind} message needs "
            f"{', '.join(required)}",
            "missing_field",
        )
    acq = raw["acquisition"]
    if not isinstance(acq, str) or not acq or len(acq) > MAX_ACQUISITION_CHARS or not acq.isprintable():
        raise ProtocolError(
            f"{_where(raw)}: acquisition={acq!r} must be a non-empty printable string of at most "
            f"{MAX_ACQUISITION_CHARS} characters",
            "bad_field",
        )
    timestamp = _number(raw, "timestamp")
    index = _index(raw) if "index" in raw else None
    shape = None
    if "shape" in raw:
        shape_raw = raw["shape"]
        if (
            not isinstance(shape_raw, list)
            or len(shape_raw) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) for v in shape_raw)
        ):
            raise ProtocolError(
                f"{_where(raw)}: shape={shape_raw!r} must be a list of two integers [H, W] (a frame is 2-D)",
                "bad_shape",
            )
        if not all(1 <= v <= MAX_SIDE for v in shape_raw):
            raise ProtocolError(
                f"{_where(raw)}: shape={shape_raw} is not a plausible frame; H and W must be between 1 and {MAX_SIDE}",
                "bad_shape",
            )
        shape = (int(shape_raw[0]), int(shape_raw[1]))
    dtype = byte_order = None
    if "dtype" in raw:
        dtype = raw["dtype"]
        if dtype not in DTYPES:
            raise ProtocolError(
                f"{_where(raw)}: dtype={dtype!r} is not supported; use one of {_DTYPE_NAMES} (byte order goes in "
                '"byte_order")',
                "unknown_dtype",
            )
        byte_order = raw.get("byte_order")
        itemsize = DTYPES[dtype].itemsize
        if byte_order not in BYTE_ORDERS or (itemsize > 1 and byte_order == "|"):
            allowed = "'<', '>' or '|'" if itemsize == 1 else "'<' (little-endian) or '>' (big-endian)"
            raise ProtocolError(f"{_where(raw)}: byte_order={byte_order!r} for {dtype}; use {allowed}", "bad_field")
    elif "byte_order" in raw:
        raise ProtocolError(f"{_where(raw)}: byte_order without dtype; send both or neither", "bad_field")
    if shape is not None and dtype is not None:
        nbytes = shape[0] * shape[1] * DTYPES[dtype].itemsize
        if nbytes > max_frame_bytes:
            raise ProtocolError(
                f"{_where(raw)}: shape {list(shape)} of {dtype} is {nbytes} bytes; this receiver accepts frames up to "
                f"{max_frame_bytes} bytes (raise its maximum frame size or bin the frames)",
                "frame_too_large",
            )
    pixel = raw.get("pixel_size_nm")
    if pixel is not None:
        pixel = _number(raw, "pixel_size_nm")
        if pixel <= 0:
            raise ProtocolError(f"{_where(raw)}: pixel_size_nm={pixel} must be > 0 or null (unknown)", "bad_field")
    compression = raw.get("compression")
    if compression is not None:
        raise ProtocolError(
            f"{_where(raw)}: compression={compression!r} is not supported; emlive/1 frames are uncompressed: send "
            '"compression": null',
            "bad_field",
        )
    extra = {k: v for k, v in raw.items() if k not in RESERVED_KEYS}
    return Header(
        type=kind,
        acquisition=acq,
        timestamp=timestamp,
        index=index,
        shape=shape,
        dtype=dtype,
        byte_order=byte_order,
        pixel_size_nm=pixel,
        extra=extra,
    )


@dataclass(frozen=True)
class _Layout:
    """How a frame's pixels lie in its payload: read from a validated header, reused for the next frames."""

    shape: tuple[int, int]
    dtype: np.dtype[Any]
    nbytes: int
    finite_checked: bool

    @classmethod
    def of(cls, header: Header) -> _Layout:
        assert header.shape is not None  # parse_header requires it for frames
        dtype = header.numpy_dtype
        checked = pixel_type(dtype)
        nbytes = header.shape[0] * header.shape[1] * dtype.itemsize
        return cls(header.shape, dtype, nbytes, checked is not None and checked.finite_checked)


_ABSENT = object()
_VARYING = ("index", "timestamp")  # the fields a stream's frame headers change from one frame to the next
_FIXED = tuple(sorted(RESERVED_KEYS.difference(_VARYING, ("shape",))))  # compared as they are; shape: below


class HeaderCache:
    """The fixed fields of the last frame header :func:`parse_header` accepted, so that :func:`decode` checks
    the next frames of the same stream only where frame headers differ.

    First by its bytes (:class:`_ByteTemplate`): a header whose text is the accepted one's, byte for byte, except
    for two JSON numbers in the places of ``index`` and ``timestamp`` is that header with those two values (JSON
    is read the same around any number), so it is not parsed at all. Else by its parsed fields:

    A receiver decodes thousands of frames a second whose headers differ only in ``index``, ``timestamp`` and,
    maybe, extra keys. A header is taken from the cache only when every other protocol field is present or
    absent as in the accepted one and holds the same JSON value of the same type (``512`` is not ``512.0``
    nor ``true``), with the same ``max_frame_bytes``: the full check would pass those fields again.
    ``index`` and ``timestamp`` are checked as always (by the same functions); anything else goes the full way,
    which raises the errors. Extra keys are passed through, as always. One cache per stream (not thread-safe).
    """

    def __init__(self) -> None:
        self._template: Header | None = None
        self._bytes: _ByteTemplate | None = None
        self.layout: _Layout | None = None
        self._absent: tuple[Any, ...] = ()
        self._values: tuple[Any, ...] = ()
        self._types: tuple[type, ...] = ()
        self._keys = 0  # the protocol fields the template's header had
        self._max = -1

    def remember(
        self, raw: Mapping[str, Any], header: Header, max_frame_bytes: int, layout: _Layout, text: Any = None
    ) -> None:
        """Keep ``header`` (just accepted by the full check from ``raw``, the JSON ``text`` when given) as the
        template of the next frames."""
        self._bytes = None if text is None else _ByteTemplate.of(bytes(text), raw)
        self._absent = (_ABSENT,) * len(_FIXED)
        self._values = tuple(map(raw.get, _FIXED, self._absent))
        self._types = tuple(map(type, self._values))
        self._keys = sum(key in raw for key in RESERVED_KEYS)
        self._template, self.layout, self._max = header, layout, max_frame_bytes

    def lookup(self, raw: Mapping[str, Any], max_frame_bytes: int) -> Header | None:
        """The header of ``raw`` when its fixed fields are the template's (None: check it the full way)."""
        template = self._template
        if template is None or max_frame_bytes != self._max or not self._same_fixed(raw, template.shape):
            return None
        timestamp = _number(raw, "timestamp")  # the rules of the full check, in its order
        index = _index(raw)
        extra = {} if len(raw) == self._keys else {k: v for k, v in raw.items() if k not in RESERVED_KEYS}
        # the template with the varying fields replaced: Header is a frozen dataclass that checks nothing in its
        # __init__, so filling a new one's __dict__ (a fifth of the cost of __init__) skips nothing
        header = object.__new__(Header)
        header.__dict__.update(template.__dict__, timestamp=timestamp, index=index, extra=extra)
        return header

    def match(self, parts: Sequence[Part], max_frame_bytes: int, check_finite: bool) -> Message | None:
        """The frame message ``parts`` when its header is the template's text with other numbers in the places of
        ``index`` and ``timestamp`` that pass their checks, and its pixels are as many bytes as the template's
        and, when checked, finite; None otherwise (then decode it the full way, which raises the errors)."""
        template, layout = self._template, self.layout
        if self._bytes is None or template is None or layout is None or max_frame_bytes != self._max:
            return None
        if len(parts) != 2:
            return None
        found = self._bytes.values(_part_bytes(parts[0]))
        if found is None:
            return None
        data = _pixels_or_none(parts[1], layout, check_finite)
        if data is None:
            return None
        header = object.__new__(Header)  # (as in lookup)
        header.__dict__.update(template.__dict__, index=found[0], timestamp=found[1], extra=dict(template.extra))
        return Message(header, data)

    def _same_fixed(self, raw: Mapping[str, Any], shape: tuple[int, int] | None) -> bool:
        values = tuple(map(raw.get, _FIXED, self._absent))  # (C loops: a per-frame cost)
        if values != self._values or tuple(map(type, values)) != self._types:
            return False
        if "index" not in raw or "timestamp" not in raw:
            return False
        found = raw.get("shape")
        return (
            found.__class__ is list
            and len(found) == 2
            and found[0].__class__ is int
            and found[1].__class__ is int
            and shape == (found[0], found[1])
        )


_JSON_INT = rb"(0|[1-9][0-9]{0,15})"  # an index: 16 digits at most (MAX_INDEX has 16)
_JSON_NUMBER = rb"(-?(?:0|[1-9][0-9]{0,24})(?:\.[0-9]{1,40})?(?:[eE][-+]?[0-9]{1,4})?)"  # a timestamp, bounded


class _ByteTemplate:
    """The text of an accepted frame header as a pattern: its bytes, with the JSON numbers of ``index`` and
    ``timestamp`` as the only places that may differ (a JSON number of bounded length each).

    Sound because JSON reads any text around a number token the same way whatever the number is: a header that
    matches parses to the template's object with the two numbers replaced, which :meth:`of` checks on a probe;
    the two numbers then get the checks of :func:`_index` and :func:`_number` (anything they would refuse: None).
    """

    def __init__(self, pattern: re.Pattern[bytes], index_first: bool) -> None:
        self._pattern, self._index_first = pattern, index_first

    @classmethod
    def of(cls, text: bytes, raw: Mapping[str, Any]) -> _ByteTemplate | None:
        """The template of ``text`` (which parsed to ``raw``), or None when its two numbers cannot be located
        with certainty (a key written with escapes, a number in another form): such headers are parsed."""
        if len(text) > MAX_HEADER_BYTES:
            return None
        spans: dict[str, tuple[int, int]] = {}
        for key in ("index", "timestamp"):
            found = list(re.finditer(rb'"' + key.encode() + rb'"[ \t\n\r]*:[ \t\n\r]*(-?[0-9][0-9.eE+-]*)', text))
            if not found:
                return None
            spans[key] = found[-1].span(1)  # (JSON keeps the last of repeated keys; the probe below checks it)
        (a, b), (c, d) = sorted(spans.values())
        if b > c:
            return None
        index_first = spans["index"][0] == a
        pieces = (text[:a], text[b:c], text[d:])
        slots = (_JSON_INT, _JSON_NUMBER) if index_first else (_JSON_NUMBER, _JSON_INT)
        probe_values = (b"12345", b"67890.5") if index_first else (b"67890.5", b"12345")
        probe = pieces[0] + probe_values[0] + pieces[1] + probe_values[1] + pieces[2]
        try:
            parsed = _DECODER.decode(probe.decode("utf-8"))
        except ValueError:
            return None
        if parsed != {**raw, "index": 12345, "timestamp": 67890.5}:
            return None
        pattern = re.escape(pieces[0]) + slots[0] + re.escape(pieces[1]) + slots[1] + re.escape(pieces[2])
        return cls(re.compile(pattern), index_first)

    def values(self, text: bytes | memoryview) -> tuple[int, float] | None:
        """``(index, timestamp)`` of a header ``text`` that matches and whose two values pass their checks."""
        found = self._pattern.fullmatch(text) if len(text) <= MAX_HEADER_BYTES else None
        if found is None:
            return None
        first, second = found.groups()
        index_text, time_text = (first, second) if self._index_first else (second, first)
        index = int(index_text)
        if index > MAX_INDEX:
            return None
        timestamp = float(time_text)  # (an integer or not: the same float json's value gives after _number)
        if not math.isfinite(timestamp):
            return None
        return index, timestamp


def decode(
    parts: Sequence[Part],
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    check_finite: bool = True,
    cache: HeaderCache | None = None,
) -> Message:
    """Decode and validate a received multipart message (from ``recv_multipart(copy=False)`` or bytes).

    The pixels of a frame message are a read-only (H, W) view on the received buffer. With ``check_finite``,
    float frames holding NaN or inf are refused. ``cache``: a :class:`HeaderCache` of this stream, so repeated
    frame headers are checked only where they differ (the same verdicts, in less time).
    """
    if cache is not None:
        fast = cache.match(parts, max_frame_bytes, check_finite)
        if fast is not None:
            return fast
    if not parts:
        raise ProtocolError("empty message: a message needs a JSON header part", "bad_parts")
    text = _part_bytes(parts[0])
    raw = parse_json_object(text)
    header = None if cache is None else cache.lookup(raw, max_frame_bytes)
    layout = None if header is None or cache is None else cache.layout
    if header is None:
        header = parse_header(raw, max_frame_bytes)
    if header.type != "frame":
        if len(parts) != 1:
            raise ProtocolError(
                f"{_where(raw)} has {len(parts)} parts; start and end messages are the header part only", "bad_parts"
            )
        return Message(header)
    if len(parts) != 2:
        raise ProtocolError(
            f"{_where(raw)} has {len(parts)} part(s); a frame message is exactly 2 parts: header, pixels", "bad_parts"
        )
    if layout is None:
        layout = _Layout.of(header)
        if cache is not None:
            cache.remember(raw, header, max_frame_bytes, layout, text)
    return Message(header, _pixels(raw, parts[1], layout, check_finite))


def _pixels(raw: Mapping[str, Any], part: Part, layout: _Layout, check_finite: bool) -> np.ndarray:
    """The frame's pixels: a read-only (H, W) view on ``part``, checked for size (and NaN/inf)."""
    data = _pixels_or_none(part, layout, check_finite)
    if data is not None:
        return data
    buf = _part_buffer(part)
    expected = layout.nbytes
    if buf.nbytes != expected:
        reason = "truncated" if buf.nbytes < expected else "oversized"
        raise ProtocolError(
            f"{_where(raw)}: payload of {buf.nbytes} bytes, but shape {list(layout.shape)} of {raw['dtype']} needs "
            f"{expected} bytes ({reason}); send exactly H*W*itemsize bytes in C order",
            reason,
        )
    finite = np.isfinite(np.ndarray(layout.shape, layout.dtype, buf))
    raise ProtocolError(
        f"{_where(raw)}: {int(finite.size - np.count_nonzero(finite))} pixel(s) are NaN or inf; frames must hold "
        "finite values (mask dead pixels with a finite value before sending)",
        "not_finite",
    )


def _pixels_or_none(part: Part, layout: _Layout, check_finite: bool) -> np.ndarray | None:
    """The frame's pixels, a read-only (H, W) view on ``part``, when they are the layout's size and (checked, for
    float types) finite; None otherwise (:func:`_pixels` says why)."""
    buf = _part_buffer(part)
    if buf.nbytes != layout.nbytes:
        return None
    data = np.ndarray(layout.shape, layout.dtype, buf)
    data.flags.writeable = False  # the buffer belongs to the message (and maybe to other readers of it)
    if check_finite and layout.finite_checked and not np.isfinite(data).all():
        return None
    return data


def encode_json(obj: Mapping[str, Any]) -> bytes:
    """A status or control JSON object as one UTF-8 part (NaN/inf become null)."""
    return json.dumps(_finite(obj), separators=(",", ":")).encode("utf-8")


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# --- sockets ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CurveServer:
    """CURVE for a socket that binds: the server's key pair and, optionally, the clients it accepts.

    ``secret_key_file`` is a ZeroMQ certificate holding the server's secret key (``zmq.auth`` format, made by
    :func:`create_keys`). ``authorized_clients`` is a folder of client public-key certificates; None accepts any
    client that knows the server's public key (traffic is still encrypted).
    """

    secret_key_file: Path
    authorized_clients: Path | None = None


@dataclass(frozen=True)
class CurveClient:
    """CURVE for a socket that connects: the server's public key and, optionally, the client's own key pair.

    Without ``secret_key_file`` the client makes a throw-away key pair (fine when the server accepts any client).
    """

    server_public_key_file: Path
    secret_key_file: Path | None = None


def create_keys(folder: str | Path, name: str) -> tuple[Path, Path]:
    """Write a CURVE key pair ``name.key`` (public) and ``name.key_secret`` into ``folder``; returns both paths."""
    import zmq.auth

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(out), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def _load_cert(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise ConfigError(f"CURVE key file {path} does not exist; create a key pair with `emlive stream-keys`")
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CURVE key file {path} is not a ZeroMQ certificate ({exc})") from exc
    if need_secret and secret is None:
        raise ConfigError(
            f"CURVE key file {path} holds no secret key; pass the '.key_secret' file of the key pair, not '.key'"
        )
    return public, secret


def apply_curve(sock: zmq.Socket[Any], curve: CurveServer | CurveClient | None) -> None:
    """Configure CURVE on ``sock`` before it binds (server) or connects (client). None leaves it plain."""
    if curve is None:
        return
    if not zmq.has("curve"):
        raise ConfigError("this libzmq was built without CURVE; install pyzmq wheels (they bundle libsodium)")
    if isinstance(curve, CurveServer):
        public, secret = _load_cert(curve.secret_key_file, need_secret=True)
        sock.curve_publickey = public
        sock.curve_secretkey = secret
        sock.curve_server = True
    else:
        server_public, _ = _load_cert(curve.server_public_key_file, need_secret=False)
        if curve.secret_key_file is not None:
            public, secret_opt = _load_cert(curve.secret_key_file, need_secret=True)
            secret = secret_opt if secret_opt is not None else b""
        else:
            public, secret = zmq.curve_keypair()
        sock.curve_serverkey = server_public
        sock.curve_publickey = public
        sock.curve_secretkey = secret


class Authenticator:
    """The ZAP handler that lets only ``authorized_clients`` talk to CURVE server sockets of one context."""

    def __init__(self, ctx: zmq.Context[Any], curve: CurveServer) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        self._auth: ThreadAuthenticator | None = None
        if curve.authorized_clients is None:
            return
        folder = Path(curve.authorized_clients)
        if not folder.is_dir():
            raise ConfigError(
                f"authorized clients folder {folder} does not exist; put the clients' public '.key' files there"
            )
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger(f"{__name__}.auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(folder))

    def stop(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None


def check_bind_endpoint(endpoint: str, allow_remote: bool = False) -> str:
    """``endpoint`` after checking it binds to this machine only, unless ``allow_remote``; ConfigError otherwise.

    ``tcp://HOST:PORT`` must name a loopback address (127.x, ::1, localhost) unless ``allow_remote``; ``ipc://``
    and ``inproc://`` are local. Port 0 (or ``*``) picks a free port.
    """
    match = re.fullmatch(r"(tcp|ipc|inproc)://(.+)", endpoint.strip())
    if match is None:
        raise ConfigError(
            f"endpoint {endpoint!r} is not a ZeroMQ address; use tcp://127.0.0.1:PORT, ipc://PATH or inproc://NAME"
        )
    scheme, rest = match.groups()
    if scheme != "tcp":
        return endpoint.strip()
    host_port = re.fullmatch(r"(\[[^\]]+\]|[^:]+):(\d+|\*)", rest)
    if host_port is None:
        raise ConfigError(f"endpoint {endpoint!r}: a tcp address needs HOST:PORT, e.g. tcp://127.0.0.1:5555")
    host = host_port.group(1).strip("[]")
    if not allow_remote and not _is_loopback(host):
        raise ConfigError(
            f"endpoint {endpoint!r} binds to {host!r}, which other machines can reach; bind to 127.0.0.1, or "
            "pass --bind-any (and protect the link with CURVE keys) to serve other machines"
        )
    return endpoint.strip()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def open_socket(
    ctx: zmq.Context[Any],
    socket_type: int,
    *,
    hwm: int = 16,
    linger_ms: int = 1000,
    max_message_bytes: int | None = None,
    curve: CurveServer | CurveClient | None = None,
) -> zmq.Socket[Any]:
    """A socket with explicit SNDHWM/RCVHWM (``hwm`` messages), LINGER and, optionally, MAXMSGSIZE and CURVE."""
    if hwm < 1:
        raise ConfigError(f"high-water mark {hwm}: must be >= 1 message (0 would mean unbounded memory)")
    sock = ctx.socket(socket_type)
    try:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, linger_ms)
        if max_message_bytes is not None:
            sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        apply_curve(sock, curve)
    except (zmq.ZMQError, EmliveError):
        sock.close(linger=0)
        raise
    return sock


def bind(sock: zmq.Socket[Any], endpoint: str, *, allow_remote: bool = False) -> str:
    """Bind ``sock`` (loopback only unless ``allow_remote``); returns the bound address (the real port for 0)."""
    checked = check_bind_endpoint(endpoint, allow_remote)
    try:
        sock.bind(checked)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot bind {checked} ({exc}); is another process using that port?") from exc
    last = sock.getsockopt(zmq.LAST_ENDPOINT)
    return last.decode() if isinstance(last, bytes) else str(last)


def connect(sock: zmq.Socket[Any], endpoint: str) -> None:
    """Connect ``sock`` (ZeroMQ reconnects by itself when the peer restarts)."""
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        raise ConfigError(f"cannot connect to {endpoint!r} ({exc}); use tcp://HOST:PORT") from exc


def recv_parts(sock: zmq.Socket[Any], timeout_ms: int) -> list[zmq.Frame] | None:
    """The next multipart message (zero-copy frames), or None when none came within ``timeout_ms``."""
    if not sock.poll(timeout_ms, zmq.POLLIN):
        return None
    return sock.recv_multipart(copy=False)


def send_parts(sock: zmq.Socket[Any], parts: Sequence[Any], timeout_ms: int) -> bool:
    """Send without copying; False when the socket could not take the message within ``timeout_ms``."""
    if not sock.poll(timeout_ms, zmq.POLLOUT):
        return False
    try:
        sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return False
    return True
