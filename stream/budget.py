"""The live service's memory budget: one number of bytes that bounds what the service holds for frames.

The budget is split in two halves. The *input* half bounds the received messages: the input queue holds at most
a quarter of the budget (counted in bytes, not messages), and the pipeline at most as much again (the batch it
took from the queue). The *working* half bounds what one frame size costs the pipeline: the model's float32
ring of normalised frames (2N-1 planes, N more in its scratch; :class:`emlive.export.runtime.FrameStream`, or
the raw-frame window of a model without one), and the model's float32 input (N planes) and output (one plane).
A frame whose message is larger than the input quarter, or whose working set is larger than the working half,
is rejected (counted as ``over_budget``); the model is never warmed up for such a shape. The inference
runtime's own scratch memory is bounded separately by tiling (``--tile``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from emlive.core.errors import ConfigError

MIN_MEMORY_BUDGET = 16 << 20
AUTO_FLOOR, AUTO_CEILING = 1 << 30, 16 << 30


def default_memory_budget() -> int:
    """``auto``: a quarter of the machine's physical memory, at least 1 GiB and at most 16 GiB. On a 24 GB
    machine that is 6 GiB, whose working half holds the window of 4096 x 4096 frames (about 1.3 GiB) and of a
    5760 x 4092 camera's (about 1.8 GiB); 1 GiB would refuse both."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX, or the value is not known
        return AUTO_FLOOR
    return max(AUTO_FLOOR, min(AUTO_CEILING, physical // 4))


DEFAULT_MEMORY_BUDGET = default_memory_budget()
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
          "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}  # fmt: skip


def parse_bytes(text: str | int) -> int:
    """``"512MiB"``, ``"1.5GB"``, ``"1073741824"``, ``"auto"`` (:func:`default_memory_budget`) -> bytes;
    ConfigError naming the value and the format."""
    if isinstance(text, int):
        return text
    if text.strip().lower() == "auto":
        return DEFAULT_MEMORY_BUDGET
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(
            f"memory size {text!r} is not a size; write a number with an optional unit, e.g. 512MiB, 2GiB, "
            "800MB, or auto"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def format_bytes(n: int) -> str:
    """``1073741824`` -> ``"1.0 GiB"``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@dataclass(frozen=True)
class MemoryBudget:
    """The service's byte budget (see the module docstring)."""

    total: int = DEFAULT_MEMORY_BUDGET

    def __post_init__(self) -> None:
        if self.total < MIN_MEMORY_BUDGET:
            raise ConfigError(
                f"memory budget {self.total} bytes ({format_bytes(self.total)}): must be at least "
                f"{format_bytes(MIN_MEMORY_BUDGET)}; pass e.g. --memory-budget 512MiB"
            )

    @property
    def queue_bytes(self) -> int:
        """The input queue's bound in bytes (the largest message the service accepts, too)."""
        return self.total // 4

    @property
    def working_bytes(self) -> int:
        """What the window and the model's buffers may hold for one frame size."""
        return self.total // 2

    @staticmethod
    def working_set(shape: tuple[int, int], itemsize: int, frames: int) -> int:
        """Bytes the pipeline holds for frames of ``shape``: window ring and scratch (float32 planes, or the
        frames' own type where wider), model input and output."""
        plane = shape[0] * shape[1]
        return (3 * frames - 1) * plane * max(itemsize, 4) + (frames + 1) * plane * 4

    def frame_problem(self, shape: tuple[int, int], itemsize: int, frames: int) -> str | None:
        """Why frames of ``shape`` do not fit the budget (a message naming the value, rule and fix), or None."""
        need = self.working_set(shape, itemsize, frames)
        if need <= self.working_bytes:
            return None
        return (
            f"frames of {shape[0]}x{shape[1]} ({itemsize}-byte pixels, {frames}-frame window) need "
            f"{format_bytes(need)} in the pipeline, more than half the memory budget ({format_bytes(self.total)}); "
            "raise --memory-budget or bin the frames"
        )

    def message_problem(self, nbytes: int) -> str | None:
        """Why a received message of ``nbytes`` cannot be queued, or None."""
        if nbytes <= self.queue_bytes:
            return None
        return (
            f"message of {format_bytes(nbytes)} is larger than the input queue's share of the memory budget "
            f"({format_bytes(self.queue_bytes)} of {format_bytes(self.total)}); raise --memory-budget or bin the frames"
        )
