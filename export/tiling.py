"""Overlapping tiles whose stitched result equals whole-frame inference (up to float rounding).

Why it is exact, not approximately seamless:

* Every tile keeps a margin of at least ``receptive_radius(config)`` pixels (rounded up to ``pad_multiple``)
  around the part of the output it contributes (its *core*), except at the frame's own borders. An output pixel
  depends only on inputs within the receptive radius, so the zeros a tile sees beyond its edges (at every layer)
  never reach its core.
* Tiles start at multiples of ``pad_multiple`` (the network's total pooling factor), so the average-pooling and
  bilinear-upsampling grids of a tile coincide with the whole frame's.
* A tile that touches the bottom/right frame border ends exactly there, so the network pads it with zeros to the
  same multiple as the whole frame.

Normalisation statistics are those of the whole frame: the runtime normalises first and tiles the normalised
frames (see :mod:`emlive.export.runtime`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from emlive.core.errors import ConfigError
from emlive.core.netconfig import AnyNetworkConfig


@dataclass(frozen=True)
class Span:
    """One tile along one axis: it reads ``[start, stop)`` and contributes ``[core_start, core_stop)``."""

    start: int
    stop: int
    core_start: int
    core_stop: int


@dataclass(frozen=True)
class Tile:
    """A 2-D tile: rows ``y`` and columns ``x``."""

    y: Span
    x: Span

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y.stop - self.y.start, self.x.stop - self.x.start)


def tile_margin(config: AnyNetworkConfig) -> int:
    """Margin kept around every tile core: the receptive radius rounded up to a multiple of ``pad_multiple``."""
    m = config.pad_multiple
    return math.ceil(config.receptive_radius / m) * m


def check_tile(tile: int, config: AnyNetworkConfig) -> int:
    """Validate a tile size for ``config``: a multiple of ``pad_multiple`` leaving a core beside two margins."""
    m = config.pad_multiple
    margin = tile_margin(config)
    smallest = 2 * margin + m
    if tile < smallest or tile % m:
        suggestion = max(smallest, math.ceil(tile / m) * m)
        raise ConfigError(
            f"tile={tile}: a tile must be a multiple of {m} (the network's pooling factor) and at least {smallest} "
            f"px (two margins of {margin} px, the receptive radius, plus {m}); use tile={suggestion} or larger"
        )
    return tile


def axis_spans(length: int, tile: int, margin: int) -> list[Span]:
    """Cover ``[0, length)`` with tiles of at most ``tile`` px whose cores do not overlap (see the module doc)."""
    if length <= tile:
        return [Span(0, length, 0, length)]
    if tile <= 2 * margin:
        raise ConfigError(f"tile={tile}: must exceed twice the margin ({2 * margin} px) to leave a core")
    spans = []
    core_start = 0
    while True:
        start = max(0, core_start - margin)
        stop = start + tile
        if stop >= length:
            spans.append(Span(start, length, core_start, length))
            return spans
        core_stop = stop - margin
        spans.append(Span(start, stop, core_start, core_stop))
        core_start = core_stop


def plan_tiles(height: int, width: int, tile: int, config: AnyNetworkConfig) -> list[Tile]:
    """Tiles for an ``height`` x ``width`` frame (one tile when the frame fits)."""
    check_tile(tile, config)
    margin = tile_margin(config)
    return [Tile(ys, xs) for ys in axis_spans(height, tile, margin) for xs in axis_spans(width, tile, margin)]


def tiled_pixels(height: int, width: int, tile: int, config: AnyNetworkConfig) -> int:
    """Pixels the network processes for one frame (the overhead of tiling is this over ``height * width``)."""
    return sum(t.shape[0] * t.shape[1] for t in plan_tiles(height, width, tile, config))
