"""Unit tests of the viewer's frame preparation (no browser, no sockets)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tifffile
from PIL import Image

from emlive.core.errors import ConfigError
from emlive.viewer.render import (
    HIST_BINS,
    Contrast,
    FramePair,
    _sample,
    bin_factor,
    block_mean,
    channel_stats,
    make_channel,
    pair_png,
    pair_tiff,
    render_pair,
)
from emlive.viewer.server import ViewerServer, is_loopback_host

pytestmark = pytest.mark.timeout(30)


def _pair(shape: tuple[int, int] = (40, 60), factor: int = 1) -> FramePair:
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 1000, shape).astype(np.uint16)
    den = raw.astype(np.float32) / 3
    return FramePair(
        "a",
        7,
        1.0,
        factor,
        1.0,
        raw=make_channel("raw", {"dtype": "uint16"}, raw, factor),
        denoised=make_channel("denoised", {"dtype": "float32"}, den, factor),
    )


def test_block_mean_bins_and_crops() -> None:
    frame = np.arange(5 * 7, dtype=np.float32).reshape(5, 7)
    out = block_mean(frame, 2)
    assert out.shape == (2, 3)
    assert out[0, 0] == pytest.approx(frame[:2, :2].mean())
    assert bin_factor((4096, 4096), 1024) == 4
    assert bin_factor((1000, 900), 1024) == 1
    with pytest.raises(ConfigError, match="max size 0"):
        bin_factor((10, 10), 0)


@pytest.mark.parametrize(
    ("shape", "dtype"), [((512, 512), np.uint16), ((300, 700), np.float32), ((64, 64), np.float32), ((5, 3), np.int32)]
)
def test_channel_stats_equal_numpy_percentiles_and_histogram(shape: tuple[int, int], dtype: type) -> None:
    """One sort gives what np.percentile (linear) and np.histogram (last bin closed) give, constant frames too
    (up to values on a bin edge)."""
    rng = np.random.default_rng(3)
    frame = (rng.poisson(5, shape) if dtype is not np.float32 else rng.random(shape)).astype(dtype)
    if shape == (64, 64):
        frame[:] = 3.0
    display = block_mean(frame, 1)
    stats = channel_stats(display)
    sample = _sample(display)
    expected = np.percentile(sample, np.arange(101))
    lo, hi = float(expected[0]), float(expected[100])
    hi = hi if hi > lo else lo + 1.0
    hist, _ = np.histogram(sample, bins=HIST_BINS, range=(lo, hi))
    np.testing.assert_allclose(stats.percentiles, expected, rtol=1e-12, atol=1e-9)
    assert (stats.lo, stats.hi) == (lo, hi)
    assert stats.hist.sum() == hist.sum() == sample.size
    assert np.abs(stats.hist - hist).max() <= 2  # a value on a bin edge may fall on either side (float rounding)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_frame_with_nan_or_inf_is_refused_by_name(bad: float) -> None:
    """As with np.percentile/np.histogram before: the source logs and skips such a frame (no NaN limits sent)."""
    frame = np.ones((64, 64), np.float32)
    frame[0, 0] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        channel_stats(frame)


def test_contrast_validation_names_the_value() -> None:
    c = Contrast()
    with pytest.raises(ConfigError, match=r"gamma 100\.0"):
        c.update({"gamma": 100})
    with pytest.raises(ConfigError, match="contrast mode 'x'"):
        c.update({"mode": "x"})
    with pytest.raises(ConfigError, match="percentiles"):
        c.update({"plow": 50, "phigh": 10})
    with pytest.raises(ConfigError, match="vmin"):
        c.update({"vmin": "nan"})


def test_render_raw8_manual_and_frozen() -> None:
    pair = _pair()
    c = Contrast()
    c.update({"mode": "manual", "vmin": 0, "vmax": 1000})
    meta, parts = render_pair(pair, c)
    assert [ch["kind"] for ch in meta["channels"]] == ["raw", "denoised"]
    assert [len(p) for p in parts] == [40 * 60, 40 * 60]
    raw8 = np.frombuffer(parts[0], np.uint8).reshape(40, 60)
    expected = np.round(np.asarray(pair.raw.full, np.float64) / 1000 * 255)  # type: ignore[union-attr]
    assert np.abs(raw8.astype(int) - expected).max() <= 1
    c.update({"mode": "frozen"})
    first, _ = render_pair(pair, c)
    brighter = FramePair("a", 8, 1.0, 1, 1.0, denoised=make_channel("denoised", {}, np.full((40, 60), 5e3), 1))
    second, _ = render_pair(brighter, c)
    assert second["channels"][0]["max"] == first["channels"][1]["max"]  # frozen limits kept


def test_binned_display_and_codecs() -> None:
    pair = _pair((64, 96), factor=2)
    c = Contrast()
    meta, parts = render_pair(pair, c)
    assert (meta["channels"][0]["width"], meta["channels"][0]["height"]) == (48, 32)
    for codec, fmt in (("jpeg", "JPEG"), ("png", "PNG")):
        c.update({"codec": codec})
        _, parts = render_pair(pair, c)
        assert Image.open(io.BytesIO(parts[0])).format == fmt


def test_save_formats() -> None:
    pair = _pair()
    stack = tifffile.imread(io.BytesIO(pair_tiff(pair)))
    assert stack.shape == (2, 40, 60) and stack.dtype == np.float32
    np.testing.assert_array_equal(stack[0], pair.raw.full)  # type: ignore[union-attr]
    image = Image.open(io.BytesIO(pair_png(pair, Contrast())))
    assert image.size == (2 * 60 + 8, 40)


def test_token_only_when_exposed() -> None:
    assert ViewerServer("tcp://127.0.0.1:1").token is None
    assert ViewerServer("tcp://127.0.0.1:1", host="0.0.0.0").token
    assert is_loopback_host("127.0.0.1") and is_loopback_host("localhost") and not is_loopback_host("0.0.0.0")
    with pytest.raises(ConfigError, match="source 'localhost:5556'"):
        ViewerServer("localhost:5556")
