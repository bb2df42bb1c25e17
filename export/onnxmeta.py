"""What the runtime needs from an exported ``.onnx`` file, read without the ``onnx`` package (the light install has
only ONNX Runtime): the tensor names of emlive's graphs and the model card in the model's ``metadata_props``.

An ONNX file is one serialised ``ModelProto`` (protocol buffers). The card is the value of the
``metadata_props`` entry (field 14, ``StringStringEntryProto`` with key = 1 and value = 2) whose key is
:data:`~emlive.core.modelcard.CARD_KEY`; every other top-level field (the graph, field 7, is nearly all of the
file) is skipped by its length without being parsed. ``emlive.export.onnx_export.read_onnx_card`` reads the same
card through ``onnx.load``; the tests check both agree.
"""

from __future__ import annotations

from pathlib import Path

from emlive.core.errors import ModelFileError
from emlive.core.modelcard import CARD_KEY, ModelCard

INPUT_NAME = "frames"
OUTPUT_NAME = "denoised"

_METADATA_PROPS = 14
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


class _WireError(ValueError):
    """The bytes are not a well-formed protocol buffer."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _WireError(f"truncated or overlong varint at byte {pos}")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, pos


def _fields(data: bytes) -> list[tuple[int, bytes | int]]:
    """(field number, value) of every field of one message: bytes for length-delimited fields, else the number."""
    fields: list[tuple[int, bytes | int]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(data, pos)
            fields.append((number, value))
        elif wire == _LENGTH:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise _WireError(f"field {number} of {size} bytes runs past the end at byte {pos}")
            fields.append((number, data[pos : pos + size]))
            pos += size
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
        else:
            raise _WireError(f"field {number} has wire type {wire}, which ONNX files do not use")
    if pos != len(data):
        raise _WireError("the last field runs past the end")
    return fields


def onnx_metadata(data: bytes) -> dict[str, str]:
    """The ``metadata_props`` of a serialised ONNX ``ModelProto`` as a dict (raises ``ValueError`` on bad bytes)."""
    meta: dict[str, str] = {}
    for number, value in _fields(data):
        if number == _METADATA_PROPS and isinstance(value, bytes):
            entry = {n: v for n, v in _fields(value) if isinstance(v, bytes)}
            meta[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    return meta


def card_from_onnx_bytes(data: bytes, source: str) -> ModelCard:
    """The model card of a serialised emlive ONNX model; ``ModelFileError`` naming ``source`` when there is none."""
    try:
        meta = onnx_metadata(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{source}: not a readable ONNX model ({exc}); re-export it with `emlive export`") from exc
    if CARD_KEY not in meta:
        raise ModelFileError(
            f"{source}: an ONNX model without emlive metadata (no '{CARD_KEY}' in metadata_props); only models "
            "written by `emlive export CHECKPOINT -o model.onnx` carry the card the runtime needs"
        )
    return ModelCard.from_json(meta[CARD_KEY], source)


def read_onnx_bytes_and_card(path: str | Path) -> tuple[bytes, ModelCard]:
    """The bytes of an exported model (what ONNX Runtime loads) and its card."""
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such ONNX model file; export one with `emlive export CHECKPOINT -o {p.name}`")
    data = p.read_bytes()
    return data, card_from_onnx_bytes(data, str(p))
