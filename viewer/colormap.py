"""The uncertainty map's own colour scale: a perceptual colormap (magma) and the limits it spans.

The service's std map (``emlive serve --uncertainty``, frames of kind ``uncertainty``) is not a picture of the
sample: it gets its own scale, never the page's grey contrast settings (manual min/max are in the image's
units, not the std's). The server maps it to 8-bit indices linearly between :func:`map_limits` (percentiles of
the map itself), the browser colours the indices through :data:`MAGMA` (sent with each frame as
:func:`lut_hex`), and the legend labels the ends in the map's units. numpy only (the viewer imports no plotting
library): magma is interpolated from 17 anchors taken from matplotlib's table (at most 3 of 255 off it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MAP_PERCENTILES = (0.5, 99.5)
_ANCHORS = np.array(
    [(0, 0, 4), (10, 8, 34), (29, 17, 71), (54, 16, 107), (81, 18, 124), (106, 28, 129), (131, 38, 129),
     (156, 46, 127), (183, 55, 121), (208, 65, 111), (231, 82, 99), (245, 107, 92), (252, 137, 97),
     (254, 167, 114), (254, 196, 136), (253, 226, 163), (252, 253, 191)],
    dtype=np.float64,
)  # fmt: skip
_POSITIONS = np.linspace(0.0, 1.0, len(_ANCHORS))
MAGMA: np.ndarray = (
    np.stack([np.interp(np.arange(256) / 255.0, _POSITIONS, _ANCHORS[:, k]) for k in range(3)], axis=1)
    .round()
    .astype(np.uint8)
)  # (256, 3): index -> RGB
LINEAR_LUT: np.ndarray = np.round(np.linspace(0.0, 255.0, 4096)).astype(np.uint8)  # no gamma on the map's scale


def map_limits(percentile: Callable[[float], float]) -> tuple[float, float]:
    """The (low, high) std mapped to the colormap's ends: the map's own :data:`MAP_PERCENTILES`, from
    ``percentile(p)`` (a :class:`~emlive.viewer.render.ChannelStats`' method)."""
    lo, hi = float(percentile(MAP_PERCENTILES[0])), float(percentile(MAP_PERCENTILES[1]))
    return (lo, hi) if hi > lo else (lo, lo + max(abs(lo) * 1e-6, 1e-6))


def colorize(indices: np.ndarray) -> np.ndarray:
    """8-bit colormap indices as (H, W, 3) RGB (what the browser draws from the same table)."""
    return MAGMA[np.asarray(indices, dtype=np.uint8)]


def lut_hex() -> str:
    """:data:`MAGMA` as 1536 hex digits (RGB per index), the form the page reads it in."""
    return MAGMA.tobytes().hex()


LUT_HEX = lut_hex()
