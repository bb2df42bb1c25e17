"""The pixel-type policy: one table used by the protocol, the runtime, the writers and the recorder; lossless
storage per format; normalisation that keeps the precision of wide types and never overflows on huge values."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from emlive.core.errors import ConfigError, InputDataError
from emlive.core.normalize import FLOAT32_MAX, denormalize, frame_stats, normalize_into, zscore
from emlive.core.pixeltypes import (
    PIXEL_TYPES,
    WIRE_DTYPES,
    check_pixel_type,
    lossless_format,
    normalised_in,
    pixel_type,
    storable,
    storage_dtype,
)
from emlive.core.protocol import DTYPES, ProtocolError, decode, encode_frame, parse_header

ALL = [np.dtype(name) for name in PIXEL_TYPES]
WIRE = list(WIRE_DTYPES.values())


def _extremes(dtype: np.dtype[Any]) -> np.ndarray:
    """The values of ``dtype`` hardest to store: its limits, and for floats its tiniest and a random spread."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, info.min + 1, info.max - 1, 0, 2**24 + 1 if info.max > 2**24 else 1]
        return np.array(values, dtype=dtype).reshape(2, 3)
    finfo = np.finfo(dtype)
    rng = np.random.default_rng(0)
    values = [finfo.max, -finfo.max, finfo.tiny, finfo.smallest_subnormal, 1 / 3, rng.standard_normal() * 1e3]
    return np.array(values, dtype=dtype).reshape(2, 3)


@pytest.mark.timeout(10)
def test_the_protocol_carries_exactly_the_wire_types_of_the_table() -> None:
    assert DTYPES is WIRE_DTYPES
    assert set(DTYPES) == {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float16", "float32", "float64"}
    base = {"protocol": "emlive/1", "type": "frame", "acquisition": "a", "index": 0, "timestamp": 0.0, "shape": [2, 3]}
    for name, dtype in DTYPES.items():
        for order in ("<", ">") if dtype.itemsize > 1 else ("|",):
            assert parse_header({**base, "dtype": name, "byte_order": order}).dtype == name
    with pytest.raises(ProtocolError, match="int64"):
        parse_header({**base, "dtype": "int64", "byte_order": "<"})  # file-only: never on the wire


@pytest.mark.timeout(10)
@pytest.mark.parametrize("dtype", WIRE, ids=str)
def test_floats_are_finite_checked_on_the_wire_integers_not(dtype: np.dtype[Any]) -> None:
    frame = _extremes(dtype)
    assert pixel_type(dtype) is not None and pixel_type(dtype).finite_checked == (dtype.kind == "f")  # type: ignore[union-attr]
    msg = decode(encode_frame(frame.astype(dtype.newbyteorder("S")), "a", 0))  # the other byte order
    assert msg.data is not None
    np.testing.assert_array_equal(msg.data, frame)
    if dtype.kind == "f":
        bad = frame.copy()
        bad[0, 0] = np.nan
        with pytest.raises(ProtocolError, match="NaN or inf"):
            decode(encode_frame(bad, "a", 0))


@pytest.mark.timeout(10)
def test_check_pixel_type_names_the_value_the_rule_and_the_fix() -> None:
    for dtype in ALL:
        assert check_pixel_type(dtype, "x").dtype == dtype
        assert check_pixel_type(dtype.newbyteorder("S"), "x").dtype == dtype
    with pytest.raises(InputDataError, match=r"frame 3 has dtype complex64: supported pixel types are uint8, .*astype"):
        check_pixel_type(np.complex64, "frame 3")
    with pytest.raises(ConfigError, match=r"has dtype bool"):
        check_pixel_type(np.bool_, "frame", ConfigError)
    assert pixel_type("not a type") is None


@pytest.mark.timeout(10)
@pytest.mark.parametrize("fmt", ["tiff", "mrc"])
@pytest.mark.parametrize("dtype", ALL, ids=str)
def test_storage_dtype_keeps_every_value_or_says_none(dtype: np.dtype[Any], fmt: str) -> None:
    values = _extremes(dtype)
    stored = storage_dtype(dtype, fmt)
    if fmt == "tiff":
        assert stored == dtype and storable(dtype, "tif")  # TIFF stores every type as itself
    if stored is None:
        assert fmt == "mrc" and dtype.name in ("uint32", "int32", "float64", "int64", "uint64")
        assert lossless_format(dtype, ".mrc") == "tiff"
        # float32, MRC's widest mode, would lose values of this type: that is why it is refused
        with np.errstate(over="ignore", invalid="ignore"):
            assert not np.array_equal(values.astype(np.float32).astype(dtype), values)
        return
    assert lossless_format(dtype, fmt) == fmt
    assert storable(dtype, fmt) == (stored == dtype)
    assert storable(dtype.newbyteorder("S"), fmt) == storable(dtype, fmt)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(values.astype(stored).astype(dtype), values)


@pytest.mark.timeout(10)
def test_mrc_keeps_the_types_it_has_modes_for() -> None:
    assert {d.name for d in ALL if storable(d, "mrc")} == {"int8", "int16", "uint16", "float16", "float32"}
    assert storage_dtype(np.uint8, "mrc") == np.uint16  # no unsigned 8-bit mode: widened, losslessly
    assert storage_dtype(">u2", ".mrcs") == np.uint16


@pytest.mark.timeout(10)
def test_wide_types_are_normalised_in_float64_and_keep_their_spread() -> None:
    rng = np.random.default_rng(1)
    counts = rng.poisson(20.0, size=(64, 64))
    frame = (3_000_000_000 + counts).astype(np.uint32)  # float32 holds these only to a multiple of 256
    assert normalised_in(frame.dtype) == np.float64 and normalised_in(np.uint16) == np.float32
    mean, std = frame_stats(frame)
    out = np.empty(frame.shape, np.float32)
    normalize_into(frame, float(mean), float(std), out)
    exact = (counts - counts.mean()) / counts.std()
    np.testing.assert_allclose(out, exact, rtol=0, atol=1e-5)  # float32 arithmetic: errors of about 6 z-units
    # small types keep the float32 arithmetic of training (zscore), bit for bit
    small = counts.astype(np.uint16)
    m, s = frame_stats(small)
    normalize_into(small, float(m), float(s), out)
    np.testing.assert_array_equal(out, (small.astype(np.float32) - np.float32(m)) / np.float32(s))
    np.testing.assert_array_equal(zscore(small[None])[0][0], out)


@pytest.mark.timeout(10)
def test_huge_finite_values_have_finite_statistics_and_z_scores() -> None:
    rng = np.random.default_rng(2)
    base = rng.normal(5.0, 2.0, size=(32, 32))
    for scale in (2.0**1000, 2.0**1020, -(2.0**1020)):
        frame = base * scale  # the float64 sum or the squares overflow
        mean, std = frame_stats(frame)
        assert np.isfinite(mean) and np.isfinite(std)
        assert mean == pytest.approx(base.mean() * scale, rel=1e-12) and std == pytest.approx(base.std() * abs(scale))
        out = np.empty(frame.shape, np.float32)
        normalize_into(frame, float(mean), float(std), out)
        np.testing.assert_allclose(out, np.sign(scale) * (base - base.mean()) / base.std(), atol=1e-5)
    nan = base.copy()
    nan[3, 3] = np.nan
    with pytest.raises(InputDataError, match="NaN or inf"):
        frame_stats(nan)


@pytest.mark.timeout(10)
def test_denormalize_refuses_results_beyond_float32_naming_the_range() -> None:
    z = np.linspace(-3, 3, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(denormalize(z, 100.0, 10.0), z * np.float32(10.0) + np.float32(100.0))
    near = denormalize(z, 1e37, 1e36)  # near the top of the float32 range: computed in float64, still fits
    np.testing.assert_allclose(near, z.astype(np.float64) * 1e36 + 1e37, rtol=1e-6)
    with pytest.raises(InputDataError, match=r"frame 7 \(mean 1e\+300, std 1e\+299\): .*reach .*3.4e\+38.*multiply"):
        denormalize(z, 1e300, 1e299, "frame 7")
    assert float(np.finfo(np.float32).max) == FLOAT32_MAX
