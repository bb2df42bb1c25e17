"""Tile plans: cores partition the frame, tiles are aligned to the pooling factor and keep their margins."""

from __future__ import annotations

import itertools

import pytest

from emlive.core.errors import ConfigError
from emlive.core.network import NetworkConfig, receptive_radius
from emlive.export.tiling import axis_spans, check_tile, plan_tiles, tile_margin, tiled_pixels


@pytest.mark.parametrize("length", [1, 7, 56, 57, 100, 131, 150, 240, 241, 1000, 2048, 4099])
@pytest.mark.parametrize(("tile", "margin", "align"), [(56, 20, 2), (256, 112, 8), (1024, 112, 8)])
def test_spans_partition_the_axis_with_margins(length: int, tile: int, margin: int, align: int) -> None:
    spans = axis_spans(length, tile, margin)
    assert spans[0].core_start == 0 and spans[-1].core_stop == length
    for a, b in itertools.pairwise(spans):
        assert a.core_stop == b.core_start
    for s in spans:
        assert 0 <= s.start <= s.core_start < s.core_stop <= s.stop <= length
        assert s.stop - s.start <= tile
        assert s.start % align == 0
        assert s.start == 0 or s.core_start - s.start >= margin
        assert s.stop == length or s.stop - s.core_stop >= margin


def test_margin_covers_the_receptive_radius_and_tile_rules() -> None:
    cfg = NetworkConfig()
    assert tile_margin(cfg) == 112 >= receptive_radius(cfg)
    assert check_tile(1024, cfg) == 1024
    with pytest.raises(ConfigError, match=r"tile=1001: .*multiple of 8.*use tile=1008"):
        check_tile(1001, cfg)
    with pytest.raises(ConfigError, match=r"tile=128: .*at least 232 px.*use tile=232"):
        check_tile(128, cfg)
    assert len(plan_tiles(512, 512, 1024, cfg)) == 1
    assert len(plan_tiles(2048, 2048, 1024, cfg)) == 9
    assert tiled_pixels(2048, 2048, 1024, cfg) == (1024 + 1024 + 448) ** 2
