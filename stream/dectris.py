"""DECTRIS detector input: stream v1 (JSON parts + binary blobs) and stream v2 (CBOR) decoded into emlive events.

The live service hands every received multipart message to :meth:`DectrisDecoder.decode`, which returns the
emlive/1 :class:`~emlive.core.protocol.Message` objects it stands for (zero, one or two: a global header whose
detector configuration is still to come yields nothing yet). Mapping:

* the series id becomes the acquisition (``str(series)``), the image id the frame index; ``series`` and
  ``image`` (and the detector's times) are added as header extras;
* v1 ``dheader-1.0`` / v2 ``start`` -> ``start`` (shape and pixel type from the detector configuration when
  there is one); v1 ``dseries_end-1.0`` / v2 ``end`` -> ``end``;
* v1 images ``[dimage-1.0, dimage_d-1.0, blob, dconfig-1.0]`` and v2 ``image`` maps -> ``frame`` messages with
  the decompressed pixels.

A frame whose MD5 ``hash`` does not match its blob, whose blob does not decompress to the size ``dimage_d``
announces, or that belongs to a series older than the current one raises :class:`ProtocolError`: the service
logs it in one line, counts it and goes on. Decompression uses ``bitshuffle`` (bitshuffle + LZ4 in the HDF5
filter framing) and ``lz4``; v2 is parsed with ``cbor2`` (4.x-5.x and 6.x tag hooks both work). They are the
``dectris`` extra: ``pip install emlive[dectris]``.

DECTRIS detectors PUSH their stream: the service must be its one consumer (``--input-mode pull``).
"""

from __future__ import annotations

import hashlib
import logging
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from emlive.core.pixeltypes import WIRE_DTYPES
from emlive.core.protocol import (
    DEFAULT_MAX_FRAME_BYTES,
    Message,
    Part,
    ProtocolError,
    event_header,
    frame_header,
    parse_json_object,
)
from emlive.stream.modes import InputFormat

logger = logging.getLogger(__name__)

V1_HEADER = "dheader-1.0"
V1_IMAGE = "dimage-1.0"
V1_IMAGE_D = "dimage_d-1.0"
V1_CONFIG = "dconfig-1.0"
V1_END = "dseries_end-1.0"
V1_IGNORED = frozenset({"dflatfield-1.0", "dpixelmask-1.0", "dcountrate_table-1.0"})
CBOR_SELF_DESCRIBE = b"\xd9\xd9\xf7"
COMPRESSION_TAG = 56500
MULTI_DIM_ROW_MAJOR_TAG = 40
_HDF5_HEADER = struct.Struct(">QI")  # total uncompressed bytes, block size in bytes
_NO_HEADER_MIN = 1 << 32
_LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"
_ENCODING = re.compile(r"^(?:bs(8|16|32|64))?(?:-?(lz4))?([<>|])?$")
_PIXEL_TYPES = WIRE_DTYPES  # DECTRIS names pixel types as numpy does; the pixel-type policy decides which are taken
_BIT_DEPTHS = {8: "uint8", 16: "uint16", 32: "uint32"}
_CONFIG_KEYS = (
    "count_time",
    "frame_time",
    "nimages",
    "ntrigger",
    "trigger_mode",
    "description",
    "detector_number",
    "x_pixel_size",
    "y_pixel_size",
)


def _need(module: str) -> Any:
    """Import an optional decompression/CBOR module, or raise a ProtocolError naming the fix."""
    try:
        if module == "bitshuffle":
            import bitshuffle

            return bitshuffle
        if module == "lz4":
            import lz4.block
            import lz4.frame

            return lz4
        import cbor2

        return cbor2
    except ImportError as exc:
        raise ProtocolError(
            f"DECTRIS input needs the Python package {module!r}, which is not installed ({exc}); "
            "install it with: pip install 'emlive[dectris]'",
            "missing_dependency",
        ) from exc


def _bytes(part: Part) -> memoryview:
    return part.buffer if isinstance(part, zmq.Frame) else memoryview(part)


# --- decompression -------------------------------------------------------------------------------------------
def _split_hdf5_header(blob: memoryview, expected: int, where: str) -> tuple[memoryview, int]:
    """Strip the 12-byte HDF5-filter header (uint64 BE size, uint32 BE block bytes) when it is there.

    Returns the compressed blocks and the block size in bytes (0: the library default). A zeroed size field
    means "not filled in" (skipped, the size comes from dimage_d). Without a header the blob starts with the
    first block's uint32 BE compressed size (>= 1), so its first 8 bytes read as a size >= 2**32: no frame has
    that many bytes, which tells the two apart."""
    if len(blob) >= _HDF5_HEADER.size:
        total, block = _HDF5_HEADER.unpack_from(blob)
        if total == 0:
            return blob[_HDF5_HEADER.size :], block
        if total < _NO_HEADER_MIN:
            if total != expected:
                raise ProtocolError(
                    f"{where}: the blob header announces {total} bytes but the frame needs {expected} bytes; "
                    "dimage_d's shape and type must describe the compressed frame",
                    "bad_size",
                )
            return blob[_HDF5_HEADER.size :], block
    return blob, 0


def _bitshuffle_lz4(blob: memoryview, dtype: np.dtype[Any], count: int, where: str) -> np.ndarray:
    bitshuffle = _need("bitshuffle")
    expected = count * dtype.itemsize
    payload, block_bytes = _split_hdf5_header(blob, expected, where)
    block = block_bytes // dtype.itemsize if block_bytes else 0
    try:
        out = bitshuffle.decompress_lz4(np.frombuffer(payload, np.uint8), (count,), dtype, block)
    except (RuntimeError, ValueError) as exc:
        raise ProtocolError(
            f"{where}: the bitshuffle/LZ4 blob of {len(blob)} bytes does not decompress to {expected} bytes "
            f"({exc}); the blob is corrupt or dimage_d announces the wrong shape/type",
            "bad_blob",
        ) from exc
    return np.asarray(out)


def _lz4(blob: memoryview, expected: int, where: str) -> bytes:
    """Plain LZ4: an LZ4 frame, HDF5-filter blocks (12-byte header), a 4-byte BE size prefix or a bare block."""
    lz4 = _need("lz4")
    data = bytes(blob)
    try:
        if data[:4] == _LZ4_FRAME_MAGIC:
            out = lz4.frame.decompress(data)
        elif len(data) >= 12 and _HDF5_HEADER.unpack_from(data)[0] == expected:
            block = _HDF5_HEADER.unpack_from(data)[1] or expected
            pos, chunks, left = 12, [], expected
            while left > 0:
                (size,) = struct.unpack_from(">I", data, pos)
                want = min(block, left)
                chunks.append(lz4.block.decompress(data[pos + 4 : pos + 4 + size], uncompressed_size=want))
                pos, left = pos + 4 + size, left - want
            out = b"".join(chunks)
        elif len(data) >= 4 and struct.unpack_from(">I", data)[0] == expected:
            out = lz4.block.decompress(data[4:], uncompressed_size=expected)
        else:
            out = lz4.block.decompress(data, uncompressed_size=expected)
    except (lz4.block.LZ4BlockError, RuntimeError, ValueError, struct.error) as exc:
        raise ProtocolError(
            f"{where}: the LZ4 blob of {len(data)} bytes does not decompress to {expected} bytes ({exc}); the "
            "blob is corrupt or the announced shape/type is wrong",
            "bad_blob",
        ) from exc
    if len(out) != expected:
        raise ProtocolError(
            f"{where}: the LZ4 blob decompresses to {len(out)} bytes, but the frame needs {expected} bytes",
            "bad_size",
        )
    return bytes(out)


def decompress(
    blob: memoryview,
    shape: tuple[int, int],
    dtype: np.dtype[Any],
    compression: str | None,
    elem_bits: int | None,
    where: str,
) -> np.ndarray:
    """The (H, W) frame of ``dtype`` in ``blob`` (compression None, "lz4" or "bslz4")."""
    expected = shape[0] * shape[1] * dtype.itemsize
    if compression is None:
        if len(blob) != expected:
            raise ProtocolError(
                f"{where}: uncompressed blob of {len(blob)} bytes, but shape {list(shape)} of {dtype} needs "
                f"{expected} bytes",
                "bad_size",
            )
        return np.frombuffer(blob, dtype).reshape(shape)
    if compression == "lz4":
        return np.frombuffer(_lz4(blob, expected, where), dtype).reshape(shape)
    if compression == "bslz4":
        elem = dtype if elem_bits in (None, dtype.itemsize * 8) else np.dtype(f"{dtype.byteorder}u{elem_bits // 8}")
        if expected % elem.itemsize:
            raise ProtocolError(
                f"{where}: {expected} bytes are not a whole number of {elem_bits}-bit bitshuffle elements", "bad_size"
            )
        out = _bitshuffle_lz4(blob, elem, expected // elem.itemsize, where)
        return out.view(dtype).reshape(shape)
    raise ProtocolError(
        f"{where}: compression {compression!r} is not supported; DECTRIS inputs may use none, lz4 or bslz4",
        "bad_encoding",
    )


# --- CBOR (stream v2) ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Compressed:
    algorithm: str
    elem_size: int
    data: bytes


@dataclass(frozen=True)
class _TypedArray:
    dtype: np.dtype[Any]
    payload: bytes | _Compressed


@dataclass(frozen=True)
class _NdArray:
    dims: tuple[int, ...]
    contents: _TypedArray


def _typed_array_dtype(tag: int) -> np.dtype[Any] | None:
    """The dtype of an RFC 8746 typed-array tag (64..87), None for others."""
    if not 64 <= tag <= 87:
        return None
    low = tag - 64
    is_float, signed, little, size = low >> 4 & 1, low >> 3 & 1, low >> 2 & 1, low & 3
    order = "<" if little else ">"
    if is_float:
        if size == 3:
            return None  # 128-bit floats
        return np.dtype(f"{order}f{2 << size}")
    if tag == 68:  # uint8 clamped
        return np.dtype("u1")
    if signed and size == 0:
        return np.dtype("i1")
    return np.dtype(f"{order}{'i' if signed else 'u'}{1 << size}")


def _tag_hook(first: Any, second: Any) -> Any:
    """cbor2's tag hook: ``(decoder, tag)`` before cbor2 6, ``(tag, immutable)`` from 6 on; both work."""
    import cbor2

    tag = first if isinstance(first, cbor2.CBORTag) else second
    number, value = int(tag.tag), tag.value
    if number == COMPRESSION_TAG:
        if not (isinstance(value, list | tuple) and len(value) == 3 and isinstance(value[0], str)):
            raise ProtocolError(
                f"CBOR tag {COMPRESSION_TAG} holds {type(value).__name__}; it must be [algorithm, element size, bytes]",
                "bad_cbor",
            )
        return _Compressed(value[0], int(value[1]), bytes(value[2]))
    dtype = _typed_array_dtype(number)
    if dtype is not None and isinstance(value, bytes | _Compressed):
        return _TypedArray(dtype, value)
    if number == MULTI_DIM_ROW_MAJOR_TAG and isinstance(value, list | tuple) and len(value) == 2:
        dims, contents = value
        if isinstance(contents, _TypedArray) and isinstance(dims, list | tuple):
            return _NdArray(tuple(int(d) for d in dims), contents)
    return tag


def _ndarray(item: Any, where: str) -> np.ndarray:
    """Decode (and decompress) one image channel of a v2 image message."""
    if isinstance(item, _TypedArray):
        raise ProtocolError(f"{where}: the image is a 1-D typed array; DECTRIS images are tag 40 (H, W) arrays")
    if not isinstance(item, _NdArray) or len(item.dims) != 2:
        raise ProtocolError(
            f"{where}: the image is {type(item).__name__}, not a 2-D multi-dimensional array (tag 40 wrapping a "
            "typed array)",
            "bad_cbor",
        )
    shape = (item.dims[0], item.dims[1])
    payload = item.contents.payload
    if isinstance(payload, _Compressed):
        return decompress(
            memoryview(payload.data), shape, item.contents.dtype, payload.algorithm, payload.elem_size * 8, where
        )
    return decompress(memoryview(payload), shape, item.contents.dtype, None, None, where)


def _jsonable(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


# --- the decoder ----------------------------------------------------------------------------------------------
class DectrisDecoder:
    """Turns DECTRIS stream v1/v2 messages (or, in auto mode, emlive/1 ones) into emlive messages.

    Stateful (pending global header, current series, detected format): use one per input socket, from one
    thread."""

    def __init__(
        self,
        input_format: InputFormat | str,
        *,
        channel: str | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.format = InputFormat(input_format)
        self.channel = channel
        self.max_frame_bytes = max_frame_bytes
        self.series: int | None = None
        self._pending: dict[str, Any] | None = None  # a v1 global header waiting for its detector config
        self._old: set[int] = set()  # series replaced by a newer one: their late frames are stale

    # auto detection
    def _detect(self, first: memoryview) -> InputFormat:
        head = bytes(first[:3])
        if head == CBOR_SELF_DESCRIBE or (head and 0xA0 <= head[0] <= 0xBF):
            return InputFormat.dectris_v2
        try:
            obj = parse_json_object(first, "first message")
        except ProtocolError as exc:
            raise ProtocolError(
                f"cannot detect the input format from the first message ({exc}); pass --input-format emlive, "
                "dectris-v1 or dectris-v2",
                "unknown_format",
            ) from exc
        if "htype" in obj:
            return InputFormat.dectris_v1
        if "protocol" in obj:
            return InputFormat.emlive
        raise ProtocolError(
            f"cannot detect the input format: the first message {sorted(obj)[:8]} has neither 'htype' (DECTRIS "
            "stream v1) nor 'protocol' (emlive/1); pass --input-format explicitly",
            "unknown_format",
        )

    def decode(self, parts: list[Any]) -> list[Message]:
        """The emlive messages that ``parts`` (one received multipart message) stands for."""
        if not parts:
            raise ProtocolError("empty message: a DECTRIS message has at least one part", "bad_parts")
        if self.format == InputFormat.auto:
            self.format = self._detect(_bytes(parts[0]))
            logger.info("input format detected from the first message: %s", self.format)
        if self.format == InputFormat.dectris_v2:
            return self._decode_v2(parts)
        if self.format == InputFormat.dectris_v1:
            return self._decode_v1(parts)
        from emlive.core.protocol import decode

        return [decode(parts, max_frame_bytes=self.max_frame_bytes, check_finite=True)]

    # --- series bookkeeping
    def _start(self, series: int, extra: dict[str, Any], shape: tuple[int, int] | None, dtype: str | None) -> Message:
        if self.series is not None and self.series != series:
            logger.info(
                "DECTRIS series %d started (was %d): frames of series %d still queued are dropped",
                series,
                self.series,
                self.series,
            )
        self._follow(series)
        header = event_header(
            "start", str(series), shape=shape, dtype=None if dtype is None else np.dtype(dtype), extra=extra
        )
        return Message(header)

    def _end(self, series: int, extra: dict[str, Any]) -> Message:
        return Message(event_header("end", str(series), extra={"series": series, **extra}))

    def _follow(self, series: int) -> None:
        if self.series is not None and self.series != series:
            self._old.add(self.series)
        self._old.discard(series)
        self.series = series

    def _check_series(self, series: int, image: int) -> None:
        if series in self._old:
            raise ProtocolError(
                f"DECTRIS image {image} of series {series} arrived after series {self.series} started; stale "
                "frame dropped",
                "stale_series",
            )
        if self.series != series:
            self._follow(series)  # frames of a new series whose header was missed: follow them

    def _frame(self, data: np.ndarray, series: int, image: int, extra: dict[str, Any]) -> Message:
        header = frame_header(data, str(series), image, extra={"series": series, "image": image, **extra})
        if data.flags.writeable:
            data.flags.writeable = False
        return Message(header, data)

    # --- stream v1
    def _json(self, part: Any, what: str) -> dict[str, Any]:
        return parse_json_object(_bytes(part), what)

    def _v1_start(self, dheader: Mapping[str, Any], config: Mapping[str, Any] | None) -> Message:
        series = _series(dheader, "dheader-1.0")
        extra: dict[str, Any] = {
            "series": series,
            "detector": "dectris-v1",
            "header_detail": str(dheader.get("header_detail", "")),
        }
        shape: tuple[int, int] | None = None
        dtype: str | None = None
        if config is not None:
            x, y = config.get("x_pixels_in_detector"), config.get("y_pixels_in_detector")
            if isinstance(x, int) and isinstance(y, int) and x > 0 and y > 0:
                shape = (y, x)
            depth = config.get("bit_depth_image")
            dtype = _BIT_DEPTHS.get(depth) if isinstance(depth, int) else None
            extra["config"] = {k: _jsonable(config[k]) for k in _CONFIG_KEYS if k in config}
        return self._start(series, extra, shape, dtype)

    def _decode_v1(self, parts: list[Any]) -> list[Message]:
        first = self._json(parts[0], "DECTRIS message part 0")
        htype = first.get("htype")
        out: list[Message] = []
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if htype is None and len(parts) == 1:  # the detector configuration, sent as its own message
                return [self._v1_start(pending, first)]
            out.append(self._v1_start(pending, None))
            logger.warning(
                "DECTRIS series %s: the global header's detector configuration did not follow it", pending.get("series")
            )
        if htype == V1_HEADER:
            detail = first.get("header_detail", "basic")
            if detail == "none":
                out.append(self._v1_start(first, None))
            elif len(parts) >= 2:
                out.append(self._v1_start(first, self._json(parts[1], "DECTRIS detector configuration")))
            else:
                _series(first, V1_HEADER)
                self._pending = first
            return out
        if htype == V1_IMAGE:
            out.append(self._v1_image(first, parts))
            return out
        if htype == V1_END:
            out.append(self._end(_series(first, V1_END), {"detector": "dectris-v1"}))
            return out
        if htype in V1_IGNORED:
            logger.debug("DECTRIS %s message ignored", htype)
            return out
        raise ProtocolError(
            f"DECTRIS stream v1 message with htype={htype!r} ({len(parts)} part(s)); expected {V1_HEADER}, "
            f"{V1_IMAGE} or {V1_END}: is the detector sending stream v2 (use --input-format dectris-v2)?",
            "unknown_type",
        )

    def _v1_image(self, dimage: Mapping[str, Any], parts: list[Any]) -> Message:
        series = _series(dimage, V1_IMAGE)
        image = _uint(dimage, "frame", V1_IMAGE)
        where = f"DECTRIS series {series} image {image}"
        if len(parts) < 3:
            raise ProtocolError(
                f"{where}: {len(parts)} part(s); an image message is dimage-1.0, dimage_d-1.0, blob[, dconfig-1.0]",
                "bad_parts",
            )
        self._check_series(series, image)
        dimage_d = self._json(parts[1], f"{where} dimage_d")
        shape_xy = dimage_d.get("shape")
        if not (
            isinstance(shape_xy, list) and len(shape_xy) == 2 and all(isinstance(v, int) and v > 0 for v in shape_xy)
        ):
            raise ProtocolError(
                f"{where}: dimage_d shape={shape_xy!r} must be [x, y], two positive integers", "bad_field"
            )
        shape = (int(shape_xy[1]), int(shape_xy[0]))
        ptype = dimage_d.get("type")
        if ptype not in _PIXEL_TYPES:
            raise ProtocolError(
                f"{where}: dimage_d type={ptype!r}; supported pixel types are {', '.join(_PIXEL_TYPES)}", "bad_field"
            )
        encoding = str(dimage_d.get("encoding", "<"))
        match = _ENCODING.match(encoding)
        if match is None:
            raise ProtocolError(
                f"{where}: encoding {encoding!r} is not understood; expected [bsNN-][lz4]< or >, e.g. bs16-lz4<",
                "bad_encoding",
            )
        bits, lz4_flag, order = match.groups()
        base = np.dtype(_PIXEL_TYPES[str(ptype)])
        dtype = base if base.itemsize == 1 else base.newbyteorder(">" if order == ">" else "<")
        nbytes = shape[0] * shape[1] * dtype.itemsize
        if nbytes > self.max_frame_bytes:
            raise ProtocolError(
                f"{where}: a {shape} {ptype} frame is {nbytes} bytes, over the limit of {self.max_frame_bytes}; "
                "raise the service's max_frame_bytes",
                "oversized",
            )
        blob = _bytes(parts[2])
        digest = dimage.get("hash")
        if isinstance(digest, str) and digest and hashlib.md5(blob).hexdigest() != digest.lower():
            raise ProtocolError(
                f"{where}: MD5 of the {len(blob)}-byte blob is {hashlib.md5(blob).hexdigest()}, the header says "
                f"{digest}; the frame was corrupted in transit and is skipped",
                "bad_hash",
            )
        if bits is not None and lz4_flag is None:
            raise ProtocolError(
                f"{where}: encoding {encoding!r} (bitshuffle without LZ4) is not supported", "bad_encoding"
            )
        compression = "bslz4" if bits is not None else ("lz4" if lz4_flag else None)
        data = decompress(blob, shape, dtype, compression, None if bits is None else int(bits), where)
        extra: dict[str, Any] = {"detector": "dectris-v1", "encoding": encoding}
        if len(parts) >= 4:
            dconfig = self._json(parts[3], f"{where} dconfig")
            for key in ("start_time", "stop_time", "real_time"):
                if isinstance(dconfig.get(key), int):
                    extra[f"{key}_ns"] = dconfig[key]
        return self._frame(data, series, image, extra)

    # --- stream v2
    def _decode_v2(self, parts: list[Any]) -> list[Message]:
        cbor2 = _need("cbor2")
        if len(parts) != 1:
            raise ProtocolError(
                f"DECTRIS stream v2 message of {len(parts)} parts; v2 messages are one CBOR part", "bad_parts"
            )
        try:
            msg = cbor2.loads(bytes(_bytes(parts[0])), tag_hook=_tag_hook)
        except ProtocolError:
            raise
        except (cbor2.CBORDecodeError, ValueError, TypeError) as exc:
            cause = exc.__cause__
            if isinstance(cause, ProtocolError):
                raise cause from exc
            raise ProtocolError(f"DECTRIS stream v2 message is not valid CBOR ({exc})", "bad_cbor") from exc
        if not isinstance(msg, Mapping):
            raise ProtocolError(f"DECTRIS stream v2 message is a CBOR {type(msg).__name__}, not a map", "bad_cbor")
        kind = msg.get("type")
        series = _uint(msg, "series_id", f"v2 {kind}")
        extra: dict[str, Any] = {"series": series, "detector": "dectris-v2"}
        if isinstance(msg.get("series_unique_id"), str):
            extra["series_unique_id"] = msg["series_unique_id"]
        if kind == "start":
            x, y = msg.get("image_size_x"), msg.get("image_size_y")
            shape = (y, x) if isinstance(x, int) and isinstance(y, int) and x > 0 and y > 0 else None
            dtype = msg.get("image_dtype")
            channels = msg.get("channels")
            if isinstance(channels, list | tuple):
                extra["channels"] = [_jsonable(c) for c in channels]
            return [self._start(series, extra, shape, dtype if dtype in _PIXEL_TYPES else None)]
        if kind == "end":
            return [self._end(series, {k: v for k, v in extra.items() if k != "series"})]
        if kind != "image":
            raise ProtocolError(
                f"DECTRIS stream v2 message type={kind!r}; expected start, image or end", "unknown_type"
            )
        image = _uint(msg, "image_id", "v2 image")
        where = f"DECTRIS series {series} image {image}"
        self._check_series(series, image)
        data = msg.get("data")
        if not isinstance(data, Mapping) or not data:
            raise ProtocolError(f"{where}: 'data' must be a non-empty map of channel name to image", "bad_cbor")
        channel = self.channel if self.channel is not None else next(iter(data))
        if channel not in data:
            raise ProtocolError(
                f"{where}: no channel {channel!r}; this detector sends {', '.join(map(str, data))}: pick one with "
                "--dectris-channel",
                "bad_channel",
            )
        frame = _ndarray(data[channel], where)
        if frame.nbytes > self.max_frame_bytes:
            raise ProtocolError(
                f"{where}: frame of {frame.nbytes} bytes over the limit of {self.max_frame_bytes}", "oversized"
            )
        extra["channel"] = str(channel)
        for key in ("start_time", "stop_time", "real_time"):
            if isinstance(msg.get(key), list | tuple):
                extra[key] = _jsonable(msg[key])
        return [self._frame(frame, series, image, extra)]


def _uint(raw: Mapping[str, Any], key: str, what: str) -> int:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"DECTRIS {what}: {key}={value!r} must be a non-negative integer", "bad_field")
    return value


def _series(raw: Mapping[str, Any], what: str) -> int:
    return _uint(raw, "series", what)
