"""The one pixel-type policy: which pixel types emlive takes, how each is normalised for the network, which are
checked for NaN/inf, and what each movie format stores without loss.

Every part asks this module: the wire protocol (its ``dtype`` field carries exactly the *wire* types below), the
inference runtime (live and offline, so both give the same answer for every type), the movie writers, the
recorder of the live service and the DECTRIS decoder.

======== ==== ================== ============ ============================ ====
type     wire normalised in      NaN/inf check MRC (lossless)               TIFF
======== ==== ================== ============ ============================ ====
uint8    yes  float32 (exact)    no           uint16 (mode 6, widened)     yes
int8     yes  float32 (exact)    no           int8 (mode 0)                yes
uint16   yes  float32 (exact)    no           uint16 (mode 6)              yes
int16    yes  float32 (exact)    no           int16 (mode 1)               yes
float16  yes  float32 (exact)    yes          float16 (mode 12)            yes
float32  yes  float32            yes          float32 (mode 2)             yes
uint32   yes  float64, then f32  no           none: recorded as TIFF       yes
int32    yes  float64, then f32  no           none: recorded as TIFF       yes
float64  yes  float64, then f32  yes          none: recorded as TIFF       yes
int64    no   float64, then f32  no           none                         yes
uint64   no   float64, then f32  no           none                         yes
======== ==== ================== ============ ============================ ====

Both byte orders of every type are accepted (the protocol's ``byte_order``; big-endian files). ``int64`` and
``uint64`` never travel on the wire but files hold them (a ``.npy`` of Python integers is int64), so offline
denoising takes them too.

*Normalised in*: the network sees float32 z-scores (frame minus its mean, over its standard deviation). Types
whose every value is a float32 (<= 16-bit integers, float16, float32) are converted to float32 and normalised in
float32, as in training. Wider types (32/64-bit integers, float64) are normalised in float64 and only the z-scores
are rounded to float32: a uint32 frame of values near 3e9 with a spread of 50 counts keeps its spread (float32
would round the values to multiples of 256 first). The statistics are always float64, and frames with huge finite
values (float64 up to 1.8e308) are scaled by a power of two before summing, so they never overflow
(:func:`emlive.core.normalize.frame_stats`).

*MRC (lossless)*: the dtype an MRC2014 file stores the type in, without losing a value; MRC has modes for int8 (0),
int16 (1), float32 (2), uint16 (6) and float16 (12) only. uint8 is widened to uint16 (as mrcfile does). 32-bit
integers and float64 have no lossless MRC mode (float32 holds integers exactly only up to 2**24), so a recording
of them to ``.mrc`` switches to TIFF for that acquisition, with a logged warning, instead of losing data or
stopping (:mod:`emlive.stream.recording`). TIFF and OME-Zarr store every type as itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from emlive.core.errors import EmliveError, InputDataError

Format = Literal["tiff", "mrc", "zarr"]
FORMATS: tuple[Format, ...] = ("tiff", "mrc", "zarr")


@dataclass(frozen=True)
class PixelType:
    """One row of the policy table (see the module docstring)."""

    name: str
    wire: bool  # carried by the emlive/1 protocol
    exact_float32: bool  # every value is exactly a float32: normalised in float32, else in float64
    mrc: str | None  # the dtype an MRC file stores it in without loss; None: MRC cannot

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.name)

    @property
    def finite_checked(self) -> bool:
        """Float types can hold NaN/inf: frames of them are checked (integers cannot)."""
        return self.dtype.kind == "f"


PIXEL_TYPES: dict[str, PixelType] = {
    t.name: t
    for t in (
        PixelType("uint8", wire=True, exact_float32=True, mrc="uint16"),
        PixelType("int8", wire=True, exact_float32=True, mrc="int8"),
        PixelType("uint16", wire=True, exact_float32=True, mrc="uint16"),
        PixelType("int16", wire=True, exact_float32=True, mrc="int16"),
        PixelType("uint32", wire=True, exact_float32=False, mrc=None),
        PixelType("int32", wire=True, exact_float32=False, mrc=None),
        PixelType("float16", wire=True, exact_float32=True, mrc="float16"),
        PixelType("float32", wire=True, exact_float32=True, mrc="float32"),
        PixelType("float64", wire=True, exact_float32=False, mrc=None),
        PixelType("int64", wire=False, exact_float32=False, mrc=None),
        PixelType("uint64", wire=False, exact_float32=False, mrc=None),
    )
}
WIRE_DTYPES: dict[str, np.dtype[Any]] = {name: t.dtype for name, t in PIXEL_TYPES.items() if t.wire}
MRC_MODES: dict[np.dtype[Any], int] = {
    np.dtype("int8"): 0,
    np.dtype("int16"): 1,
    np.dtype("float32"): 2,
    np.dtype("uint16"): 6,
    np.dtype("float16"): 12,
}
ACCEPTED_NAMES = ", ".join(PIXEL_TYPES)
WIRE_NAMES = ", ".join(WIRE_DTYPES)


def _native(dtype: Any) -> np.dtype[Any]:
    return np.dtype(dtype).newbyteorder("=")


_LOOKED_UP: dict[np.dtype[Any], PixelType | None] = {}  # the per-frame look-up, memoised per dtype


def pixel_type(dtype: Any) -> PixelType | None:
    """The policy row of ``dtype`` (either byte order), or None when emlive does not take that type."""
    if isinstance(dtype, np.dtype):
        if dtype not in _LOOKED_UP:
            if len(_LOOKED_UP) >= 64:  # bounded: odd dtypes from files cannot grow it
                _LOOKED_UP.clear()
            _LOOKED_UP[dtype] = _pixel_type(dtype)
        return _LOOKED_UP[dtype]
    return _pixel_type(dtype)


def _pixel_type(dtype: Any) -> PixelType | None:
    try:
        native = _native(dtype)
    except TypeError:
        return None
    found = PIXEL_TYPES.get(native.name)
    return found if found is not None and found.dtype == native else None


def check_pixel_type(dtype: Any, what: str, error: type[EmliveError] = InputDataError) -> PixelType:
    """The policy row of ``dtype``; ``error`` naming ``what``, the value, the rule and the fix when it has none."""
    found = pixel_type(dtype)
    if found is None:
        try:
            shown = str(np.dtype(dtype))
        except TypeError:
            shown = repr(dtype)
        raise error(
            f"{what} has dtype {shown}: supported pixel types are {ACCEPTED_NAMES} (either byte order); "
            "convert it first, e.g. with .astype(np.float32)"
        )
    return found


def normalised_in(dtype: Any) -> np.dtype[Any]:
    """float32 for the types whose every value is a float32, float64 for the wider ones (see the table)."""
    found = pixel_type(dtype)
    return np.dtype(np.float32 if found is not None and found.exact_float32 else np.float64)


def _format(fmt: str) -> Format:
    name = fmt.lower().lstrip(".")
    if name in ("tif", "tiff"):
        return "tiff"
    if name in ("mrc", "mrcs"):
        return "mrc"
    if name in ("zarr", "ome.zarr"):
        return "zarr"
    raise InputDataError(
        f"movie format {fmt!r} is not one emlive writes; use tiff (.tif/.tiff), mrc (.mrc/.mrcs) or zarr (.zarr)"
    )


def storage_dtype(dtype: Any, fmt: str) -> np.dtype[Any] | None:
    """The dtype in which ``fmt`` ("tiff"/"mrc", or a suffix) stores frames of ``dtype`` without losing a value
    (``dtype`` itself, or a wider type); None when that format cannot (then record as TIFF)."""
    found = pixel_type(dtype)
    if found is None:
        return None
    if _format(fmt) in ("tiff", "zarr"):  # both store every type as itself
        return found.dtype
    return None if found.mrc is None else np.dtype(found.mrc)


def storable(dtype: Any, fmt: str) -> bool:
    """True when ``fmt`` stores ``dtype`` as itself (a writer of that format accepts it)."""
    found = pixel_type(dtype)
    stored = None if found is None else storage_dtype(dtype, fmt)
    return found is not None and stored is not None and stored == found.dtype  # (np.dtype(None) is float64)


def stored_dtypes(fmt: str) -> frozenset[np.dtype[Any]]:
    """Every dtype ``fmt`` stores as itself."""
    return frozenset(t.dtype for t in PIXEL_TYPES.values() if storable(t.dtype, fmt))


def lossless_format(dtype: Any, fmt: str) -> Format:
    """``fmt`` when it stores ``dtype`` without loss, else "tiff" (which stores every type)."""
    return _format(fmt) if storage_dtype(dtype, fmt) is not None else "tiff"
