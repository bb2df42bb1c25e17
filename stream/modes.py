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
