"""Choices of the live service and the detector simulator (light: the CLI imports it at start-up)."""

from __future__ import annotations

from enum import StrEnum


class RecordWhat(StrEnum):
    """Which frames a recording keeps."""

    raw = "raw"
    denoised = "denoised"
    both = "both"


class InputMode(StrEnum):
    """How the service reads the detector: SUB to its PUB, or PULL from its PUSH (the one consumer)."""

    sub = "sub"
    pull = "pull"


class DetectorMode(StrEnum):
    """PUB (any number of subscribers, lossy) or PUSH (one consumer, back-pressure, lossless)."""

    pub = "pub"
    push = "push"


class InputFormat(StrEnum):
    """What the detector sends: emlive/1 messages, DECTRIS stream v1 (JSON + blobs) or v2 (CBOR), or auto
    (detected from the first message)."""

    emlive = "emlive"
    dectris_v1 = "dectris-v1"
    dectris_v2 = "dectris-v2"
    auto = "auto"
