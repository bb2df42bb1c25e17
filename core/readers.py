"""One reader API for every movie format emlive accepts: training, offline denoising and the stream simulator.

A :class:`Movie` is a (T, H, W) stack read lazily: a frame or a crop comes from a memory map or from one
per-frame read, never from loading the whole movie. :func:`open_movie` picks the reader from the path:

* a folder of single-page TIFFs (natural order: ``frame2`` before ``frame10``) is one movie;
* ``.tif``/``.tiff``: a multi-page TIFF, one page per frame. Uncompressed pages are memory-mapped, compressed or
  tiled pages are decoded one page at a time. A file whose last page was cut short (a recording that crashed)
  reads up to its last complete page;
* ``.mrc``/``.mrcs``: MRC2014 stacks through ``mrcfile.mmap`` (read-only, strict); a 2-D MRC is one frame. The
  voxel size (Å) becomes the pixel size (nm);
* ``.dm3``/``.dm4``: Gatan DigitalMicrograph files, parsed by ``ncempy.io.dm.fileDM``; the image (not the
  thumbnail) is memory-mapped at the offset the tag tree gives. 2-D is one frame, 3-D a stack;
* ``.ser``: FEI/Thermo TIA series, parsed by ``ncempy.io.ser.fileSER``; each data element is one frame, memory
  mapped and flipped upside down exactly as ``fileSER.getDataset`` returns it. Calibrations are in metres;
* ``.emd``: Berkeley EMD v0.2 (the first ``emd_group_type = 1`` group, found with ``ncempy.io.emd.fileEMD``,
  data (T, H, W) or (H, W)) and Thermo Fisher Velox EMD (``/Data/Image/<id>/Data``, stored (H, W, T)); both read
  one frame at a time through h5py;
* ``.npy``: a (T, H, W) or (H, W) NumPy array, memory-mapped;
* ``.zarr`` (a folder, e.g. ``movie.ome.zarr``): an OME-Zarr image (NGFF 0.4/0.5), read chunk by chunk by
  :class:`emlive.core.zarrio.ZarrMovie` (the ``zarr`` extra).

A gain reference (any of those formats holding one frame, a ``.npy`` file or an array) multiplies every frame;
frames then come back as float32.

Frames that come from a memory map are read-only views: copy one before changing it.

Every movie is safe in data-loader worker processes: a process that did not open the file (a forked worker, or
one that unpickled the movie, as spawned workers do) opens its own file handles and memory maps before its first
read, so no two processes ever share a file position or an HDF5 handle. Pickling leaves handles and maps behind.
A read that fails is retried once through handles opened afresh; only a frame that fails again is reported as
damaged.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import json
import logging
import operator
import os
import re
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from emlive.core.errors import EmliveError, InputDataError, InputFileError
from emlive.core.pixeltypes import ACCEPTED_NAMES, pixel_type

logger = logging.getLogger(__name__)

TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
MRC_SUFFIXES = frozenset({".mrc", ".mrcs"})
DM_SUFFIXES = frozenset({".dm3", ".dm4"})
SER_SUFFIXES = frozenset({".ser"})
EMD_SUFFIXES = frozenset({".emd"})
NPY_SUFFIXES = frozenset({".npy"})
ZARR_SUFFIXES = frozenset({".zarr"})  # a folder: an OME-Zarr image (emlive.core.zarrio, the zarr extra)
ZARR_METADATA_FILES = ("zarr.json", ".zgroup", ".zarray", ".zattrs")  # what makes a folder a Zarr store
SUPPORTED_SUFFIXES: frozenset[str] = (
    TIFF_SUFFIXES | MRC_SUFFIXES | DM_SUFFIXES | SER_SUFFIXES | EMD_SUFFIXES | NPY_SUFFIXES
)

_SUPPORTED_TEXT = ", ".join(sorted(SUPPORTED_SUFFIXES))

# Exceptions the third-party parsers raise on a corrupt or truncated file; each becomes an InputFileError.
_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    KeyError,
    IndexError,
    TypeError,
    AssertionError,  # ncempy's DM parser asserts on the "%%%%" tag delimiter
    RuntimeError,
    struct.error,
    EOFError,
    OverflowError,
)

# Length units seen in TIFF (ImageJ), DM, EMD and Velox metadata, in nanometres.
_UNIT_TO_NM: dict[str, float] = {
    "nm": 1.0,
    "n_m": 1.0,
    "nanometer": 1.0,
    "nanometers": 1.0,
    "nanometre": 1.0,
    "nanometres": 1.0,
    "a": 0.1,
    "å": 0.1,
    "ang": 0.1,
    "angstrom": 0.1,
    "angstroms": 0.1,
    "pm": 1e-3,
    "um": 1e3,
    "u_m": 1e3,
    "µm": 1e3,
    "μm": 1e3,
    "micron": 1e3,
    "microns": 1e3,
    "micrometer": 1e3,
    "micrometre": 1e3,
    "mm": 1e6,
    "cm": 1e7,
    "m": 1e9,
}


# The base state of a Movie: what it knows about the file. Every other attribute a file reader sets is a handle, a
# memory map or derived from one: it stays behind when the movie is pickled and is opened again in a new process.
_BASE_STATE = frozenset({"path", "shape", "_raw_dtype", "pixel_size_nm", "_gain", "_closed", "_pid"})

# Serialises re-opening within a process; a fresh lock in every forked child (a lock held by another thread at the
# fork would otherwise stay held there forever).
_reopen_lock = threading.Lock()


def _fresh_reopen_lock() -> None:
    global _reopen_lock
    _reopen_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_reopen_lock)


class FrameIndexError(InputDataError, IndexError):
    """A frame index outside the movie; an ``IndexError`` too, so sequence protocols stop on it."""


def natural_sort_key(name: str | Path) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: ``frame2`` < ``frame10`` (case-insensitive, name only)."""
    text = name.name if isinstance(name, Path) else str(name)
    parts = re.split(r"(\d+)", text.lower())
    # re.split with a capturing group alternates text, digits, text, ...: odd positions are always digits.
    return (*(int(part) if i % 2 else part for i, part in enumerate(parts)), text)


def unit_to_nm(value: float, unit: str | bytes | None) -> float | None:
    """A length ``value`` in ``unit`` converted to nm, or None when the unit is unknown or the value is not > 0."""
    if unit is None:
        return None
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    key = unit.strip().strip("[]()").strip().lower().replace("\\u00b5", "µ")
    factor = _UNIT_TO_NM.get(key)
    value = float(value)
    if factor is None or not np.isfinite(value) or value <= 0:
        return None
    return float(f"{value * factor:.12g}")  # drop the unit conversion's rounding noise


@contextlib.contextmanager
def _parse_errors(path: Path, what: str, extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Turn the exceptions of a third-party parser into one InputFileError naming the file and the format."""
    try:
        yield
    except EmliveError:
        raise
    except (*_PARSE_ERRORS, *extra) as exc:
        detail = str(exc) or type(exc).__name__
        raise InputFileError(
            f"{path}: cannot be read as {what} ({type(exc).__name__}: {detail}). The file is corrupt, truncated "
            f"or not a {what} file: copy or export it again."
        ) from exc


@contextlib.contextmanager
def _read_errors(path: Path, what: str, extra: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """A read from a file that opened fine failed: an InputFileError that says so, with no verdict on the file.

    :meth:`Movie._read_checked` retries once through fresh handles and only then calls the frame damaged.
    """
    try:
        yield
    except EmliveError:
        raise
    except (*_PARSE_ERRORS, *extra) as exc:
        detail = str(exc) or type(exc).__name__
        raise InputFileError(f"{path}: {what} could not be decoded ({type(exc).__name__}: {detail})") from exc


def _check_readable_file(path: Path) -> int:
    """The size of ``path`` in bytes after checking it is a non-empty regular file; raises InputFileError."""
    if not path.exists():
        raise InputFileError(f"{path}: no such file or folder; check the path")
    if not path.is_file():
        raise InputFileError(f"{path}: not a regular file; pass a movie file or a folder of single-page TIFFs")
    size = path.stat().st_size
    if size == 0:
        raise InputFileError(f"{path}: the file is empty (0 bytes); the copy or the recording failed")
    return size


def _native(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return dtype.newbyteorder("=")


def _check_pixel_dtype(path: Path, dtype: np.dtype[Any]) -> None:
    if pixel_type(dtype) is None:  # the pixel-type policy: the types the runtime denoises
        raise InputFileError(
            f"{path}: pixel type {dtype} is not supported; frames must be real integers or floats ({ACCEPTED_NAMES}; "
            "complex, RGB and packed data are not movies emlive can denoise)"
        )


class Movie(abc.ABC):
    """A (T, H, W) movie read lazily, frame by frame or crop by crop.

    Attributes: ``path`` (the file or folder), ``shape`` (T, H, W), ``dtype`` (the dtype frames come back in:
    float32 when a gain reference is applied) and ``pixel_size_nm`` (None when the file does not say).
    Frames may be read-only views into a memory map. Indices follow Python: ``-1`` is the last frame.
    """

    path: Path
    shape: tuple[int, int, int]
    pixel_size_nm: float | None

    def __init__(
        self, path: Path, shape: tuple[int, int, int], dtype: np.dtype[Any], pixel_size_nm: float | None
    ) -> None:
        self.path = path
        self.shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        self._raw_dtype = np.dtype(dtype)
        self.pixel_size_nm = pixel_size_nm
        self._gain: np.ndarray | None = None
        self._closed = False
        self._pid: int | None = os.getpid()  # the process whose handles this object holds; None: no handles

    # --- what a format implements ---------------------------------------------------------------------------
    @abc.abstractmethod
    def _read_frame(self, t: int) -> np.ndarray:
        """Raw frame ``t`` (0 <= t < T) as an (H, W) array of ``self._raw_dtype``."""

    def _read_crop(self, t: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Raw region of frame ``t``; formats that can read less than a frame override this."""
        return self._read_frame(t)[y : y + h, x : x + w]

    def _close(self) -> None:  # noqa: B027 - optional hook, formats without open handles need nothing
        """Release file handles and memory maps."""

    # Whether the reader holds file handles or maps that each process must open itself, by calling
    # ``type(self)(self.path)``: True for the file readers below. A reader that holds none (a folder of TIFFs opens
    # a file per read; an in-memory array pickles with its data) keeps False.
    _reopens: bool = False

    def _reopen(self) -> None:
        """Release the handles this object holds and open the file again, in this process.

        The file must still be what it was: the same frame count, size and pixel type.
        """
        if self._pid is not None:
            with contextlib.suppress(*_PARSE_ERRORS):
                self._close()  # a forked child closes only its own copies of the descriptors
        self._pid = None
        fresh = type(self)(self.path)  # type: ignore[call-arg]  # every reopening reader opens from its path
        if (fresh.shape, fresh._raw_dtype) != (self.shape, self._raw_dtype):
            fresh.close()
            raise InputFileError(
                f"{self.path}: the file changed after it was opened: it held {self.shape} {self._raw_dtype} "
                f"(T, H, W) frames, it now holds {fresh.shape} {fresh._raw_dtype}. Do not overwrite a movie while "
                "it is read; copy it and train on the copy"
            )
        for key, value in vars(fresh).items():
            if key not in _BASE_STATE:
                setattr(self, key, value)
        self._pid = os.getpid()

    def _own_handles(self) -> None:
        """Open this process's own handles when they were opened by another process (fork) or left behind (pickle)."""
        if not self._reopens or self._pid == os.getpid():
            return
        with _reopen_lock:
            if self._pid != os.getpid():
                logger.debug("%s: opening its own file handles in process %d", self.path, os.getpid())
                self._reopen()

    def _read_checked(self, t: int, read: Callable[..., np.ndarray], *args: int) -> np.ndarray:
        """``read(*args)`` for frame ``t``, retried once through fresh handles before the frame is called damaged.

        A handle disturbed by another reader (another process sharing the descriptor, a closed handle) makes a
        sound file look corrupt; a second failure through handles opened afresh in this process means the file
        really is damaged at that frame.
        """
        self._own_handles()
        try:
            return read(*args)
        except InputFileError as exc:
            if not self._reopens:
                raise
            first = exc
        logger.warning(
            "%s: reading frame %d failed (%s); retrying through file handles opened afresh in this process",
            self.path,
            t,
            first,
        )
        with _reopen_lock:
            self._reopen()
        try:
            data = read(*args)
        except InputFileError as exc:
            raise InputFileError(
                f"{exc}, also through file handles opened afresh in process {os.getpid()}: the file opened as a "
                f"valid movie but is damaged at frame {t}. Copy or export it again, or leave this frame out"
            ) from exc
        logger.warning(
            "%s: frame %d read correctly through fresh file handles: the file is sound, the previous handle was "
            "disturbed (shared with another process or closed)",
            self.path,
            t,
        )
        return data

    def __getstate__(self) -> dict[str, Any]:
        """The state to pickle (spawned data-loader workers): handles and memory maps stay behind.

        The receiving process opens the file itself before its first read.
        """
        if not self._reopens:
            return self.__dict__.copy()
        state = {key: value for key, value in self.__dict__.items() if key in _BASE_STATE}
        state["_pid"] = None
        return state

    # --- the public API ---------------------------------------------------------------------------------------
    @property
    def dtype(self) -> np.dtype[Any]:
        """The dtype frames come back in: float32 when a gain reference is applied, else the file's."""
        return np.dtype(np.float32) if self._gain is not None else self._raw_dtype

    @property
    def gain(self) -> np.ndarray | None:
        """The (H, W) float32 gain reference applied to every frame, or None."""
        return self._gain

    def set_gain(self, gain: str | Path | np.ndarray | None) -> None:
        """Multiply every frame by ``gain`` from now on (see :func:`load_gain`); None removes it."""
        if gain is None:
            self._gain = None
            return
        self._gain = load_gain(gain, (self.shape[1], self.shape[2]), movie_path=self.path)

    def __len__(self) -> int:
        return self.shape[0]

    def _index(self, t: int) -> int:
        try:
            i = operator.index(t)
        except TypeError as exc:
            raise InputDataError(f"frame index {t!r} of {self.path}: an index must be an integer") from exc
        n = self.shape[0]
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise FrameIndexError(
                f"frame {t} is outside {self.path}, which has T={n} frames: use 0..{n - 1} (or -{n}..-1)"
            )
        return i

    def _check_open(self) -> None:
        if self._closed:
            raise InputFileError(f"{self.path}: the movie was closed; open it again with open_movie")

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as an (H, W) array (gain applied); negative ``t`` counts from the end."""
        self._check_open()
        i = self._index(t)
        raw = self._read_checked(i, self._read_frame, i)
        if self._gain is None:
            return raw
        return np.multiply(raw, self._gain, dtype=np.float32)

    def crop(self, t: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The (h, w) region of frame ``t`` whose top-left pixel is (y, x), read without the rest when possible."""
        self._check_open()
        i = self._index(t)
        height, width = self.shape[1], self.shape[2]
        y, x, h, w = (operator.index(v) for v in (y, x, h, w))
        if h < 1 or w < 1 or y < 0 or x < 0 or y + h > height or x + w > width:
            raise InputDataError(
                f"crop y={y}, x={x}, h={h}, w={w} of {self.path}: the region must lie inside the "
                f"{height} x {width} (H x W) frame with h, w >= 1"
            )
        raw = self._read_checked(i, self._read_crop, i, y, x, h, w)
        if self._gain is None:
            return raw
        return np.multiply(raw, self._gain[y : y + h, x : x + w], dtype=np.float32)

    def __getitem__(self, idx: int | slice) -> np.ndarray:
        """``movie[t]`` is a frame, ``movie[a:b:s]`` a (k, H, W) stack (read frame by frame into a new array)."""
        if isinstance(idx, slice):
            self._check_open()
            indices = range(*idx.indices(self.shape[0]))
            out = np.empty((len(indices), self.shape[1], self.shape[2]), dtype=self.dtype)
            for k, t in enumerate(indices):
                out[k] = self.frame(t)
            return out
        return self.frame(idx)

    def __iter__(self) -> Iterator[np.ndarray]:
        for t in range(self.shape[0]):
            yield self.frame(t)

    def close(self) -> None:
        """Release the file; frames already returned stay valid."""
        if not self._closed:
            self._closed = True
            if self._pid is not None:  # an unpickled movie that never read holds no handles
                self._close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        t, h, w = self.shape
        px = "unknown" if self.pixel_size_nm is None else f"{self.pixel_size_nm:g} nm"
        return f"{type(self).__name__}({str(self.path)!r}, T={t}, H={h}, W={w}, dtype={self.dtype}, pixel={px})"


class _MappedMovie(Movie):
    """A movie whose frames are slices of one (T, H, W) array or memory map in ``self._data``.

    Frames and crops are views (no copy) unless the file's byte order differs from the machine's.
    """

    _data: np.ndarray

    def _read_frame(self, t: int) -> np.ndarray:
        view = np.asarray(self._data[t])
        return view if view.dtype.isnative else view.astype(self._raw_dtype)

    def _read_crop(self, t: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        view = np.asarray(self._data[t, y : y + h, x : x + w])
        return view if view.dtype.isnative else view.astype(self._raw_dtype)

    def _close(self) -> None:
        self._data = np.empty((0, 0, 0), dtype=self._raw_dtype)


class ArrayMovie(_MappedMovie):
    """A movie held in (or memory-mapped as) a (T, H, W) or (H, W) array; ``.npy`` files open as one."""

    def __init__(self, data: np.ndarray, path: str | Path = "<array>", pixel_size_nm: float | None = None) -> None:
        arr = np.asarray(data)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or 0 in arr.shape:
            raise InputDataError(
                f"{path}: array of shape {np.shape(data)}: a movie needs shape (T, H, W) or (H, W), none zero"
            )
        _check_pixel_dtype(Path(path), arr.dtype)
        if not arr.dtype.isnative:
            arr = arr.astype(_native(arr.dtype))
        super().__init__(Path(path), arr.shape, arr.dtype, pixel_size_nm)
        self._data = arr


class _NpyMovie(ArrayMovie):
    """A ``.npy`` file, memory-mapped; each process maps it itself."""

    _reopens = True

    def __init__(self, path: Path) -> None:
        _check_readable_file(path)
        with _parse_errors(path, "a NumPy .npy array"):
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        super().__init__(data, path)


# --- TIFF ------------------------------------------------------------------------------------------------------
class _FileMap:
    """A read-only memory map of a whole file, handing out zero-copy views at byte offsets."""

    def __init__(self, path: Path) -> None:
        self.size = path.stat().st_size
        self._map: np.memmap | None = np.memmap(path, dtype=np.uint8, mode="r")

    def view(self, offset: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        if self._map is None:
            raise ValueError("memory map closed")
        return np.ndarray(shape, dtype=dtype, buffer=self._map, offset=offset)

    def close(self) -> None:
        self._map = None


def _tiff_pixel_size(tif: Any, page: Any) -> float | None:
    """Pixel size (nm) from ImageJ metadata or the TIFF resolution tags; None when unknown.

    The resolution tags give pixels per unit. Centimetre, millimetre and micrometre units are used as they are;
    an ImageJ ``unit=`` entry qualifies a unit-less resolution. Inch resolutions are screen/print DPI and ignored.
    """
    try:
        xres, _ = page.get_resolution()
        unit_code = int(page.tags.valueof(296, default=2))
    except _PARSE_ERRORS:
        return None
    if not xres or xres <= 0 or not np.isfinite(xres):
        return None
    ij = getattr(tif, "imagej_metadata", None) or {}
    if isinstance(ij, dict) and ij.get("unit") and unit_code in (1, 2):
        return unit_to_nm(1.0 / xres, str(ij["unit"]))
    per_unit_nm = {3: 1e7, 4: 1e6, 5: 1e3}.get(unit_code)
    if per_unit_nm is None or float(xres) == 1.0:
        return None
    return float(f"{per_unit_nm / float(xres):.10g}")  # a rational tag: drop the rounding noise digits


class _TiffPageReader:
    """Where each TIFF page's data are: a memory-mapped view for uncompressed contiguous pages, else decoding."""

    def __init__(self, path: Path, tif: Any) -> None:
        self.path = path
        self._tif = tif
        self._lock = threading.Lock()
        self._byteorder = tif.byteorder
        self._map: _FileMap | None = None
        self._offsets: list[int | None] = []

    def scan(self) -> tuple[tuple[int, int], np.dtype[Any], int]:
        """Check every page against the first; returns ((H, W), dtype, number of complete pages)."""
        pages = self._tif.pages
        n = len(pages)
        if n == 0:
            raise InputFileError(f"{self.path}: the TIFF holds no image pages")
        first = pages[0]
        shape, dtype = self._page_layout(first, 0)
        size = self.path.stat().st_size
        for i in range(n):
            page = pages[i] if i else first
            if self._page_layout(page, i) != (shape, dtype):
                raise InputFileError(
                    f"{self.path}: page {i} is {page.shape} {page.dtype}, page 0 is {shape} {dtype}: every page "
                    "of a movie must have the frame size and pixel type of the first"
                )
            end = max(int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts, strict=False))
            if end > size:
                if i == n - 1 and i > 0:
                    logger.warning(
                        "%s: the last page (%d) is incomplete (data end at byte %d, file has %d): the recording "
                        "was cut short; reading the %d complete pages",
                        self.path,
                        i,
                        end,
                        size,
                        i,
                    )
                    n = i
                    break
                raise InputFileError(
                    f"{self.path}: page {i} needs bytes up to {end} but the file has {size}: the file is truncated"
                )
            contiguous = page.is_contiguous and int(page.fillorder) == 1 and len(page.dataoffsets) >= 1
            self._offsets.append(int(page.dataoffsets[0]) if contiguous else None)
        if any(o is not None for o in self._offsets):
            self._map = _FileMap(self.path)
        return shape, dtype, n

    def _page_layout(self, page: Any, index: int) -> tuple[tuple[int, int], np.dtype[Any]]:
        shape = tuple(int(s) for s in page.shape)
        if len(shape) != 2:
            short = len(shape) == 3 and (shape[0] in (3, 4) or shape[-1] in (3, 4))
            hint = (
                " (a stack of 3 or 4 frames saved by tifffile.imwrite becomes one colour page: save it with "
                "tifffile.imwrite(path, movie, photometric='minisblack'))"
                if short
                else ""
            )
            raise InputFileError(
                f"{self.path}: page {index} has shape {shape}; emlive reads single-channel (grey) frames only: "
                f"save the movie as one grey page per frame{hint}"
            )
        if page.dtype is None:
            raise InputFileError(f"{self.path}: page {index} has a pixel format numpy cannot hold")
        dtype = np.dtype(page.dtype)
        _check_pixel_dtype(self.path, dtype)
        return (shape[0], shape[1]), _native(dtype)

    def frame(self, t: int, shape: tuple[int, int], dtype: np.dtype[Any]) -> np.ndarray:
        offset = self._offsets[t]
        if offset is not None and self._map is not None:
            view = self._map.view(offset, shape, dtype.newbyteorder(self._byteorder))
            return view if view.dtype.isnative else view.astype(dtype)
        with self._lock, _read_errors(self.path, f"TIFF page {t}", (zlib.error,)):
            return np.asarray(self._tif.pages[t].asarray(), dtype=dtype).reshape(shape)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        with contextlib.suppress(OSError):
            self._tif.close()


class _TiffMovie(Movie):
    """A multi-page (or single-page) TIFF: one page per frame."""

    _reopens = True

    def __init__(self, path: Path) -> None:
        import tifffile

        _check_readable_file(path)
        with _parse_errors(path, "a TIFF"):
            tif = tifffile.TiffFile(path)
        try:
            with _parse_errors(path, "a TIFF"):
                self._series_map = self._contiguous_series(tif)
                if self._series_map is not None:
                    shape3 = self._series_map.shape
                    dtype = _native(self._series_map.dtype)
                    frame_shape = (int(shape3[1]), int(shape3[2]))
                    n = int(shape3[0])
                    self._pages: _TiffPageReader | None = None
                else:
                    self._pages = _TiffPageReader(path, tif)
                    frame_shape, dtype, n = self._pages.scan()
                pixel = _tiff_pixel_size(tif, tif.pages[0])
        except BaseException:
            tif.close()
            raise
        self._tif = tif
        super().__init__(path, (n, *frame_shape), dtype, pixel)
        self._frame_shape = frame_shape

    @staticmethod
    def _contiguous_series(tif: Any) -> np.ndarray | None:
        """A memmap of series 0 when the file stores more frames than IFDs (ImageJ > 4 GB, tifffile contiguous).

        Such files keep all frames in one block after the first page; when the block is cut short (a recording that
        crashed before writing its last IFDs), the complete frames are read.
        """
        if len(tif.pages) != 1 or not tif.series or int(tif.pages[0].samplesperpixel) != 1:
            return None
        series = tif.series[0]
        shape = tuple(int(s) for s in series.shape)
        path = Path(tif.filehandle.path)
        if len(shape) != 3 or shape[0] <= 1:
            return None
        offset = series.dataoffset
        if offset is None:
            raise InputFileError(
                f"{path}: {shape[0]} frames are stored behind one compressed or tiled TIFF page, which cannot be read "
                "frame by frame; re-save the movie as one page per frame"
            )
        dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        _check_pixel_dtype(path, dtype)
        frame_bytes = shape[1] * shape[2] * dtype.itemsize
        size = path.stat().st_size
        complete = max(size - int(offset), 0) // frame_bytes
        if complete < shape[0]:
            if complete == 0:
                raise InputFileError(
                    f"{path}: the TIFF declares {shape[0]} frames but holds none completely ({size} bytes): it is "
                    "truncated"
                )
            logger.warning(
                "%s: the TIFF declares %d frames but holds %d complete ones (a recording cut short?); reading those",
                path,
                shape[0],
                complete,
            )
        n = min(shape[0], complete)
        return np.memmap(path, dtype=dtype, mode="r", offset=int(offset), shape=(n, shape[1], shape[2]))

    def _read_frame(self, t: int) -> np.ndarray:
        if self._series_map is not None:
            view = np.asarray(self._series_map[t])
            return view if view.dtype.isnative else view.astype(self._raw_dtype)
        assert self._pages is not None  # internal invariant: one of the two layouts is set in __init__
        return self._pages.frame(t, self._frame_shape, self._raw_dtype)

    def _close(self) -> None:
        if self._pages is not None:
            self._pages.close()
        else:
            with contextlib.suppress(OSError):
                self._tif.close()
        self._series_map = None


class _TiffFolderMovie(Movie):
    """A folder of single-page TIFFs, one per frame, in natural order of their names."""

    def __init__(self, folder: Path) -> None:
        files = _tiff_files(folder)
        if not files:
            raise InputFileError(
                f"{folder}: the folder holds no .tif/.tiff files; a folder movie is a folder of single-page TIFFs "
                f"(other formats, {_SUPPORTED_TEXT}, are opened file by file)"
            )
        self._files = files
        first, pixel = self._read_file(0, with_pixel=True)
        super().__init__(folder, (len(files), *first.shape), first.dtype, pixel)

    def _read_file(self, t: int, with_pixel: bool = False) -> tuple[np.ndarray, float | None]:
        import tifffile

        path = self._files[t]
        _check_readable_file(path)
        with _parse_errors(path, "a TIFF"), tifffile.TiffFile(path) as tif:
            if len(tif.pages) != 1:
                raise InputFileError(
                    f"{path}: has {len(tif.pages)} pages, but the folder {path.parent} is read as a movie of "
                    "single-page TIFFs; pass the multi-page files themselves instead of the folder"
                )
            reader = _TiffPageReader(path, tif)
            (shape, dtype, _) = reader.scan()
            pixel = _tiff_pixel_size(tif, tif.pages[0]) if with_pixel else None
            frame = reader.frame(0, shape, dtype)  # a view keeps its memory map alive after the file closes
            reader.close()
        if t and (frame.shape != self.shape[1:] or frame.dtype != self._raw_dtype):
            raise InputFileError(
                f"{path}: frame {t} is {frame.shape} {frame.dtype} but the folder's first frame "
                f"({self._files[0].name}) is {self.shape[1:]} {self._raw_dtype}: all frames must match"
            )
        return frame, pixel

    def _read_frame(self, t: int) -> np.ndarray:
        return self._read_file(t)[0]

    @property
    def files(self) -> list[Path]:
        """The frame files, in frame order."""
        return list(self._files)


def _tiff_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES and p.is_file()]
    files = [p for p in files if not p.name.startswith(".")]
    return sorted(files, key=natural_sort_key)


# --- MRC -------------------------------------------------------------------------------------------------------
_MRC_HEADER_BYTES = 1024


def _check_mrc_header(path: Path, size: int) -> None:
    """Check the header's map ID, byte order and declared data size ourselves, for messages that say what broke."""
    import mrcfile.utils
    from mrcfile.dtypes import HEADER_DTYPE

    if size < _MRC_HEADER_BYTES:
        raise InputFileError(
            f"{path}: the file has {size} bytes but an MRC file starts with a {_MRC_HEADER_BYTES}-byte header: "
            "it is truncated or not an MRC file"
        )
    with path.open("rb") as fh:
        raw = fh.read(_MRC_HEADER_BYTES)
    if raw[208:211] != b"MAP":
        raise InputFileError(
            f"{path}: expected an MRC header with 'MAP' at byte 208, found {raw[208:212]!r}: the file is not an "
            "MRC file or its header is corrupt"
        )
    try:
        order = mrcfile.utils.byte_order_from_machine_stamp(bytearray(raw[212:216]))
    except ValueError:
        order = "<"  # mrcfile reports the bad stamp itself below
    header = np.frombuffer(raw, dtype=HEADER_DTYPE.newbyteorder(order)).reshape(()).view(np.recarray)
    try:
        dtype = mrcfile.utils.dtype_from_mode(int(header.mode))
    except ValueError as exc:
        raise InputFileError(
            f"{path}: MRC mode {int(header.mode)} is not supported (modes 0, 1, 2, 6 and 12 are): {exc}"
        ) from exc
    nx, ny, nz, nsym = int(header.nx), int(header.ny), int(header.nz), int(header.nsymbt)
    if nx < 1 or ny < 1 or nz < 1 or nsym < 0:
        raise InputFileError(
            f"{path}: the MRC header declares nx={nx}, ny={ny}, nz={nz} (extended header {nsym} bytes): a movie "
            "needs at least one frame of at least 1 x 1 pixels"
        )
    need = nx * ny * nz * dtype.itemsize
    have = size - _MRC_HEADER_BYTES - nsym
    if have < need:
        raise InputFileError(
            f"{path}: the MRC header declares {nz} frames of {ny} x {nx} {dtype} ({need} bytes after the header), "
            f"but the file holds only {max(have, 0)}: the file is truncated (an interrupted copy?)"
        )


class _MrcMovie(_MappedMovie):
    _reopens = True

    def __init__(self, path: Path) -> None:
        import mrcfile

        size = _check_readable_file(path)
        _check_mrc_header(path, size)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _parse_errors(path, "an MRC file"):
                mrc = mrcfile.mmap(path, mode="r", permissive=False)
        for warning in caught:
            logger.warning("%s: %s", path, warning.message)
        data = mrc.data
        if data is None or data.ndim not in (2, 3):
            shape = None if data is None else data.shape
            mrc.close()
            raise InputFileError(
                f"{path}: MRC data of shape {shape} is not a movie; expected a 2-D image or a 3-D stack of frames"
            )
        _check_pixel_dtype(path, data.dtype)
        self._mrc = mrc
        self._data = data if data.ndim == 3 else data[None]
        voxel = mrc.voxel_size
        pixel = unit_to_nm(float(f"{float(voxel.x):.7g}"), "Å")  # float32 in the header: drop its noise digits
        if pixel is not None and not np.isclose(float(voxel.x), float(voxel.y), rtol=1e-4):
            logger.warning("%s: voxel size x=%g Å differs from y=%g Å; using x", path, voxel.x, voxel.y)
        super().__init__(path, self._data.shape, _native(data.dtype), pixel)

    def _close(self) -> None:
        super()._close()
        self._mrc.close()


# --- DM3 / DM4 -------------------------------------------------------------------------------------------------
_DM_DTYPES: dict[int, str] = {1: "<i2", 2: "<f4", 6: "<u1", 7: "<i4", 9: "<i1", 10: "<u2", 11: "<u4", 12: "<f8"}


DM_EXTRA_HINT = "pip install 'emlive[dm]' (ncempy, with matplotlib and hdf5plugin)"


def _ncempy_io(module: str, path: Path) -> Any:
    """``ncempy.io.<module>`` (the DM/SER/EMD parsers of the ``dm`` extra), or a clear error naming the extra."""
    try:
        return importlib.import_module(f"ncempy.io.{module}")
    except ImportError as exc:
        raise InputFileError(
            f"{path}: reading {path.suffix} files needs ncempy, which is not installed ({exc}); {DM_EXTRA_HINT}"
        ) from exc


class _DmMovie(_MappedMovie):
    """A DigitalMicrograph DM3/DM4 file: the tag tree is parsed by ncempy, the image data memory-mapped."""

    _reopens = True

    def __init__(self, path: Path) -> None:
        dm = _ncempy_io("dm", path)

        size = _check_readable_file(path)
        with path.open("rb") as fh:
            version = int.from_bytes(fh.read(4), "big")
        if version not in (3, 4):
            raise InputFileError(
                f"{path}: expected a DigitalMicrograph header starting with version 3 or 4 (big-endian), found "
                f"{version}: the file is not a DM3/DM4 file or is corrupt"
            )
        with _parse_errors(path, "a DM3/DM4 file"), dm.fileDM(path, on_memory=False) as parsed:
            layout = self._layout(path, parsed)
        index, shape, dtype, offset, pixel = layout
        need = offset + int(np.prod(shape)) * dtype.itemsize
        if need > size:
            raise InputFileError(
                f"{path}: the image data need bytes up to {need} but the file has {size}: the file is truncated"
            )
        self._data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        logger.debug("%s: DM image %d, shape %s, %s at byte %d", path, index, shape, dtype, offset)
        super().__init__(path, shape, _native(dtype), pixel)

    @staticmethod
    def _layout(path: Path, f: Any) -> tuple[int, tuple[int, int, int], np.dtype[Any], int, float | None]:
        n = min(len(f.dataType), len(f.dataOffset), len(f.xSize), len(f.dataShape))
        candidates = [i for i in range(n) if int(f.dataType[i]) != 23 and int(f.dataShape[i]) >= 2]
        if not candidates:
            raise InputFileError(f"{path}: the DM file holds no image (only thumbnails, spectra or tags)")
        if len(candidates) > 1:
            logger.info("%s: holds %d images; reading the first", path, len(candidates))
        i = candidates[0]
        if int(f.dataShape[i]) > 3:
            raise InputFileError(
                f"{path}: the DM image is {int(f.dataShape[i])}-D (4D-STEM?); emlive reads 2-D images and 3-D stacks"
            )
        code = int(f.dataType[i])
        if code not in _DM_DTYPES:
            raise InputFileError(
                f"{path}: DM data type {code} is not supported; supported are integer and real float images "
                f"(DM types {sorted(_DM_DTYPES)})"
            )
        dtype = np.dtype(_DM_DTYPES[code])
        shape = (int(f.zSize[i]), int(f.ySize[i]), int(f.xSize[i]))
        if int(f.dataSize[i]) != int(np.prod(shape)) * dtype.itemsize:
            raise InputFileError(
                f"{path}: the DM image declares {shape} {dtype} but its data block holds {int(f.dataSize[i])} "
                "bytes: the file is corrupt"
            )
        first_scale = sum(int(d) for d in f.dataShape[:i])
        pixel = None
        if first_scale < min(len(f.scale), len(f.scaleUnit)):
            scale = float(f"{float(f.scale[first_scale]):.7g}")  # a float32 tag: drop its noise digits
            pixel = unit_to_nm(scale, str(f.scaleUnit[first_scale]))
        return i, shape, dtype, int(f.dataOffset[i]), pixel


# --- SER -------------------------------------------------------------------------------------------------------
# One TIA data element of a 2-D series: two calibrations (offset, delta, element), the data type, the array shape.
_SER_ELEMENT = np.dtype(
    [
        ("offset_x", "<f8"), ("delta_x", "<f8"), ("element_x", "<i4"),
        ("offset_y", "<f8"), ("delta_y", "<f8"), ("element_y", "<i4"),
        ("data_type", "<i2"), ("nx", "<i4"), ("ny", "<i4"),
    ]
)  # fmt: skip
_SER_DTYPES: dict[int, str] = {1: "<u1", 2: "<u2", 3: "<u4", 4: "<i1", 5: "<i2", 6: "<i4", 7: "<f4", 8: "<f8"}


class _SerMovie(Movie):
    """A TIA series (.ser): the header by ncempy, each 2-D data element memory-mapped and flipped upside down
    (TIA stores rows bottom-up; this matches ``ncempy.io.ser.fileSER.getDataset``)."""

    _reopens = True

    def __init__(self, path: Path) -> None:
        ser = _ncempy_io("ser", path)

        size = _check_readable_file(path)
        with _parse_errors(path, "a TIA SER file", (ser.NotSERError,)), ser.fileSER(path) as parsed:
            head = dict(parsed.head)
        if int(head["DataTypeID"]) != 0x4122:
            raise InputFileError(f"{path}: the SER file holds 1-D spectra, not images; emlive reads image series")
        offsets = [int(o) for o in head["DataOffsetArray"]]
        if not offsets:
            raise InputFileError(f"{path}: the SER file holds no valid data elements (an aborted acquisition?)")
        self._map = _FileMap(path)
        elements = []
        for t, off in enumerate(offsets):
            if off <= 0 or off + _SER_ELEMENT.itemsize > size:
                raise InputFileError(
                    f"{path}: data element {t} starts at byte {off}, outside the {size}-byte file: it is truncated"
                )
            elements.append(self._map.view(off, (), _SER_ELEMENT)[()])
        first = elements[0]
        code = int(first["data_type"])
        if code not in _SER_DTYPES:
            raise InputFileError(f"{path}: SER data type {code} is not supported (complex or unknown)")
        dtype = np.dtype(_SER_DTYPES[code])
        nx, ny = int(first["nx"]), int(first["ny"])
        for t, el in enumerate(elements):
            if (int(el["data_type"]), int(el["nx"]), int(el["ny"])) != (code, nx, ny):
                raise InputFileError(
                    f"{path}: data element {t} is {int(el['ny'])} x {int(el['nx'])} of type {int(el['data_type'])}, "
                    f"element 0 is {ny} x {nx} of type {code}: all frames of a series must match"
                )
            end = offsets[t] + _SER_ELEMENT.itemsize + nx * ny * dtype.itemsize
            if end > size:
                raise InputFileError(
                    f"{path}: frame {t} needs bytes up to {end} but the file has {size}: the file is truncated"
                )
        self._data_offsets = [off + _SER_ELEMENT.itemsize for off in offsets]
        self._file_dtype = dtype
        pixel = unit_to_nm(float(first["delta_x"]), "m")  # TIA image calibrations are in metres
        super().__init__(path, (len(offsets), ny, nx), _native(dtype), pixel)

    def _read_frame(self, t: int) -> np.ndarray:
        _, h, w = self.shape
        return self._map.view(self._data_offsets[t], (h, w), self._file_dtype)[::-1]

    def _close(self) -> None:
        self._map.close()


# --- EMD (Berkeley and Velox) ----------------------------------------------------------------------------------
class _EmdMovie(Movie):
    """An EMD (HDF5) file: Berkeley EMD v0.2 or Velox; frames are read one at a time through h5py."""

    _reopens = True

    def __init__(self, path: Path) -> None:
        import h5py

        _check_readable_file(path)
        if not h5py.is_hdf5(path):
            raise InputFileError(
                f"{path}: expected an HDF5 signature (EMD files are HDF5), found none: the file is not an EMD file "
                "or is corrupt"
            )
        self._lock = threading.Lock()
        with _parse_errors(path, "an HDF5/EMD file"):
            self._h5 = h5py.File(path, "r")
        try:
            if "Data/Image" in self._h5:
                self._velox = True
                dset, pixel = self._open_velox(path)
            else:
                self._velox = False
                dset, pixel = self._open_berkeley(path)
        except BaseException:
            self._h5.close()
            raise
        self._dset = dset
        dtype = np.dtype(dset.dtype)
        _check_pixel_dtype(path, dtype)
        if dset.ndim == 2:
            shape = (1, int(dset.shape[0]), int(dset.shape[1]))
        elif self._velox:
            shape = (int(dset.shape[2]), int(dset.shape[0]), int(dset.shape[1]))
        else:
            shape = (int(dset.shape[0]), int(dset.shape[1]), int(dset.shape[2]))
        if 0 in shape:
            self._h5.close()
            raise InputFileError(f"{path}: the EMD dataset {dset.name} has shape {dset.shape}: it holds no frames")
        super().__init__(path, shape, _native(dtype), pixel)

    def _open_berkeley(self, path: Path) -> tuple[Any, float | None]:
        emd = _ncempy_io("emd", path)

        extra = (emd.NoEmdDataSets, emd.UnsupportedEmdVersion)
        with _parse_errors(path, "a Berkeley EMD file", extra), emd.fileEMD(path, readonly=True) as parsed:
            groups = [g.name for g in parsed.list_emds if g["data"].ndim in (2, 3)]
            if not groups:
                raise InputFileError(
                    f"{path}: no EMD data group holds a 2-D image or a 3-D stack (groups: "
                    f"{[g.name for g in parsed.list_emds]})"
                )
            if len(groups) > 1:
                logger.info("%s: holds %d EMD data groups; reading %s", path, len(groups), groups[0])
            dims = parsed.get_emddims(parsed.file_hdl[groups[0]])
        pixel = None
        vector, _, units = dims[-1]  # the last axis is x
        if len(vector) > 1:
            pixel = unit_to_nm(abs(float(vector[1]) - float(vector[0])), str(units))
        return self._h5[groups[0]]["data"], pixel

    def _open_velox(self, path: Path) -> tuple[Any, float | None]:
        with _parse_errors(path, "a Velox EMD file"):
            images = self._h5["Data/Image"]
            names = [name for name in images if "Data" in images[name]]
            if not names:
                raise InputFileError(f"{path}: the Velox file has no image data group under /Data/Image")
            if len(names) > 1:
                logger.info("%s: holds %d Velox image groups; reading %s", path, len(names), names[0])
            group = images[names[0]]
            dset = group["Data"]
            if dset.ndim not in (2, 3):
                raise InputFileError(f"{path}: the Velox image data have shape {dset.shape}; expected (H, W, T)")
            pixel = None
            if "Metadata" in group:
                raw = np.asarray(group["Metadata"][:, 0], dtype=np.uint8)
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    meta = json.loads(raw[raw > 0].tobytes().decode("utf-8", "ignore"))
                    result = meta["BinaryResult"]
                    pixel = unit_to_nm(float(result["PixelSize"]["width"]), str(result.get("PixelUnitX", "m")))
        return dset, pixel

    def _read_crop(self, t: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        with self._lock, _read_errors(self.path, f"frame {t} of the EMD dataset"):
            if self._dset.ndim == 2:
                data = self._dset[y : y + h, x : x + w]
            elif self._velox:
                data = self._dset[y : y + h, x : x + w, t]
            else:
                data = self._dset[t, y : y + h, x : x + w]
        return np.asarray(data, dtype=self._raw_dtype)

    def _read_frame(self, t: int) -> np.ndarray:
        return self._read_crop(t, 0, 0, self.shape[1], self.shape[2])

    def _close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._h5.close()


# --- entry points ----------------------------------------------------------------------------------------------
def _open_file(path: Path) -> Movie:
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return _TiffMovie(path)
    if suffix in MRC_SUFFIXES:
        return _MrcMovie(path)
    if suffix in DM_SUFFIXES:
        return _DmMovie(path)
    if suffix in SER_SUFFIXES:
        return _SerMovie(path)
    if suffix in EMD_SUFFIXES:
        return _EmdMovie(path)
    if suffix in NPY_SUFFIXES:
        return _NpyMovie(path)
    raise InputFileError(
        f"{path}: the suffix {path.suffix or '(none)'} is not a supported movie format; supported are "
        f"{_SUPPORTED_TEXT}, or a folder of single-page TIFFs. Convert the file (e.g. to TIFF or MRC) first."
    )


def is_zarr_path(path: str | Path) -> bool:
    """True for a ``.zarr`` path, or a folder holding Zarr metadata (:data:`ZARR_METADATA_FILES`)."""
    path = Path(path)
    return path.suffix.lower() in ZARR_SUFFIXES or (
        path.is_dir() and any((path / name).is_file() for name in ZARR_METADATA_FILES)
    )


def _open_zarr(path: Path) -> Movie:
    from emlive.core.zarrio import ZarrMovie  # the zarr extra, imported only for OME-Zarr paths

    return ZarrMovie(path)


def open_movie(path: str | Path, gain: str | Path | np.ndarray | None = None) -> Movie:
    """Open a movie file, or a folder of single-page TIFFs, for lazy reading; optionally apply a gain reference.

    Raises InputFileError when the path is missing, empty, unsupported, corrupt or truncated, and when the gain
    reference does not fit the movie.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such file or folder; check the path")
    movie = _open_zarr(p) if is_zarr_path(p) else _TiffFolderMovie(p) if p.is_dir() else _open_file(p)
    if gain is not None:
        try:
            movie.set_gain(gain)
        except BaseException:
            movie.close()
            raise
    return movie


def load_gain(
    gain: str | Path | np.ndarray,
    frame_shape: tuple[int, int] | None = None,
    *,
    movie_path: str | Path | None = None,
) -> np.ndarray:
    """A gain reference as an (H, W) float32 array, checked to be finite and > 0 everywhere.

    ``gain`` is an array, a ``.npy`` file or any movie file holding one frame. With ``frame_shape`` the gain must
    match it; ``movie_path`` only names the movie in messages.
    """
    if isinstance(gain, np.ndarray):
        source = "the gain array"
        data = np.asarray(gain)
    else:
        gpath = Path(gain)
        source = f"gain reference {gpath}"
        with open_movie(gpath) as gmovie:
            if len(gmovie) != 1:
                raise InputFileError(
                    f"{gpath}: a gain reference must hold one frame, this file holds {len(gmovie)} "
                    f"(shape {gmovie.shape}); pass the averaged gain image"
                )
            data = np.array(gmovie.frame(0))
    if data.ndim == 3 and data.shape[0] == 1:
        data = data[0]
    target = f" of movie {movie_path}" if movie_path is not None else ""
    if data.ndim != 2:
        raise InputFileError(f"{source} has shape {data.shape}: a gain reference must be one (H, W) image")
    if frame_shape is not None and tuple(data.shape) != tuple(frame_shape):
        hint = ""
        if tuple(data.shape) == tuple(frame_shape)[::-1]:
            hint = " It looks transposed/rotated by 90 degrees: rotate it to the movie's orientation."
        raise InputFileError(
            f"{source} has shape {tuple(data.shape)} (H, W) but the frames{target} are {tuple(frame_shape)}: the "
            f"gain reference must be recorded with the same camera size and binning.{hint}"
        )
    if data.dtype.kind not in "uif":
        raise InputFileError(f"{source} has pixel type {data.dtype}; a gain reference must be real numbers")
    out = np.asarray(data, dtype=np.float32)
    bad = ~(np.isfinite(out) & (out > 0))
    if bad.any():
        y, x = np.argwhere(bad)[0]
        raise InputFileError(
            f"{source}: {int(bad.sum())} pixels are not finite and > 0 (first at y={y}, x={x}, value "
            f"{out[y, x]}); a gain reference multiplies every pixel: replace those pixels (e.g. by the median)"
        )
    out.flags.writeable = False
    return out


def find_movies(path: str | Path) -> list[Path]:
    """The movies at ``path``, each a path :func:`open_movie` accepts.

    A file gives ``[file]``. A folder gives: the folder itself when it holds two or more single-page TIFFs (one
    movie of them, see :func:`open_movie`), then each other movie file (multi-page TIFF, MRC, DM3/DM4, SER, EMD,
    npy, OME-Zarr folders; a lone single-page TIFF is a one-frame movie) in natural order. Other sub-folders are
    not searched.
    """
    p = Path(path)
    if not p.exists():
        raise InputFileError(f"{p}: no such file or folder; check the path")
    if is_zarr_path(p):
        return [p]
    if p.is_file():
        if p.suffix.lower() not in SUPPORTED_SUFFIXES:
            raise InputFileError(
                f"{p}: the suffix {p.suffix or '(none)'} is not a supported movie format; supported are "
                f"{_SUPPORTED_TEXT}"
            )
        return [p]
    import tifffile

    files = sorted(
        (f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")),
        key=natural_sort_key,
    )
    singles: list[Path] = []
    others: list[Path] = [f for f in p.iterdir() if f.is_dir() and is_zarr_path(f)]  # OME-Zarr images are folders
    for f in files:
        suffix = f.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            logger.debug("%s: skipped, not a movie format", f)
            continue
        if suffix in TIFF_SUFFIXES:
            _check_readable_file(f)
            with _parse_errors(f, "a TIFF"), tifffile.TiffFile(f) as tif:
                n_pages = len(tif.pages)
            (singles if n_pages == 1 else others).append(f)
        else:
            others.append(f)
    found: list[Path] = [p] if len(singles) >= 2 else []
    found += sorted(others + (singles if len(singles) == 1 else []), key=natural_sort_key)
    if not found:
        raise InputFileError(
            f"{p}: the folder holds no movie files; supported are {_SUPPORTED_TEXT} files or single-page TIFFs "
            "(sub-folders are not searched)"
        )
    return found
