"""Movie writers that append frames as they arrive and keep the file readable after every frame.

The format follows the suffix: ``.tif``/``.tiff`` (BigTIFF, one uncompressed page per frame), ``.mrc``/``.mrcs``
(an MRC2014 image stack) or ``.zarr`` (an OME-Zarr image grown by one frame per append, see
:mod:`emlive.core.zarrio`, which also has the store that several processes fill at once). After each
:meth:`MovieWriter.append` returns, :func:`emlive.core.readers.open_movie`
reads the file up to that frame, also when the process dies before :meth:`MovieWriter.close`:

* MRC: the frame's bytes are appended first, then the header is rewritten with the new frame count ``nz`` (and
  running min/max/mean/rms) and flushed, so the header never declares a frame whose data are not there;
* TIFF: each frame is written by tifffile as its own page (IFD and data) and the file is flushed; pages carry no
  series description, so other readers see one (T, H, W) series of equal pages.

Data reach the operating system after every frame (``flush``); a crash of the process loses nothing, a power cut
may lose what the OS had not yet written (pass ``fsync=True`` to force each frame to disk, at a cost in speed).

The pixel size is kept in the MRC voxel size (Å) and in the TIFF resolution tags (pixels per centimetre, or per
micrometre below 2.5 pm), where :func:`open_movie` finds it again.

Pixel types: what each format stores comes from the pixel-type policy (:mod:`emlive.core.pixeltypes`): TIFF every
type, MRC int8, int16, uint16, float16 and float32 (modes 0, 1, 6, 12, 2). Frames are converted to the writer's
dtype. Into an integer dtype, values are rounded to the nearest integer (half to even) and clipped to the dtype's
range (NaN/inf are refused); into a float dtype, values are cast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Self

import numpy as np

from emlive import __version__
from emlive.core.errors import InputDataError, InputFileError
from emlive.core.pixeltypes import MRC_MODES, storage_dtype, stored_dtypes

if TYPE_CHECKING:
    from emlive.core.zarrio import ZarrWriterBackend

logger = logging.getLogger(__name__)

WRITER_SUFFIXES = frozenset({".tif", ".tiff", ".mrc", ".mrcs", ".zarr"})
TIFF_DTYPES = stored_dtypes("tiff")
MRC_DTYPES = stored_dtypes("mrc")
ZARR_DTYPES = stored_dtypes("zarr")


def _names(dtypes: frozenset[np.dtype[Any]]) -> str:
    return ", ".join(sorted(str(d) for d in dtypes))


def coerce_frame(frame: np.ndarray, dtype: np.dtype[Any], where: str = "frame") -> np.ndarray:
    """``frame`` as ``dtype``: integers are rounded (half to even) and clipped to the range; NaN/inf refused."""
    arr = np.asarray(frame)
    if arr.dtype == dtype:
        return arr
    if arr.dtype.kind not in "biuf":
        raise InputDataError(f"{where}: pixel type {arr.dtype} cannot be written; pass real numbers")
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        if arr.dtype.kind == "f":
            if not np.all(np.isfinite(arr)):
                raise InputDataError(
                    f"{where}: holds NaN or inf, which a {dtype} file cannot store; replace them or write float32"
                )
            arr = np.rint(arr)
        return np.clip(arr, info.min, info.max).astype(dtype)
    return arr.astype(dtype)


class _MrcBackend:
    """An MRC2014 image stack (ISPG 0, MZ 1), little-endian, whose header follows every appended frame."""

    def __init__(self, fh: BinaryIO, frame_shape: tuple[int, int], dtype: np.dtype[Any], pixel_nm: float | None):
        from mrcfile.dtypes import HEADER_DTYPE

        self._fh = fh
        self._dtype = dtype.newbyteorder("<")
        self._frame_bytes = frame_shape[0] * frame_shape[1] * dtype.itemsize
        h = np.zeros((), dtype=HEADER_DTYPE.newbyteorder("<")).view(np.recarray)
        height, width = frame_shape
        h.nx, h.ny, h.nz = width, height, 0
        h.mode = MRC_MODES[dtype]
        h.mx, h.my, h.mz = width, height, 1
        voxel_a = 0.0 if pixel_nm is None else pixel_nm * 10.0
        h.cella.x, h.cella.y, h.cella.z = width * voxel_a, height * voxel_a, voxel_a
        h.cellb.alpha = h.cellb.beta = h.cellb.gamma = 90.0
        h.mapc, h.mapr, h.maps = 1, 2, 3
        h.dmin, h.dmax, h.dmean, h.rms = 0.0, -1.0, -2.0, -1.0  # "not yet determined" (MRC2014)
        h.ispg = 0
        h.nsymbt = 0
        h.nversion = 20140
        h.map = b"MAP "
        h.machst = np.frombuffer(bytes((0x44, 0x44, 0, 0)), dtype=np.uint8)
        h.nlabl = 1
        h.label[0] = f"emlive {__version__}: movie recorded frame by frame".encode()[:80]
        self._header = h
        self._n = 0
        self._sum = 0.0
        self._sumsq = 0.0
        self._min = np.inf
        self._max = -np.inf
        self._write_header()

    def _write_header(self) -> None:
        self._fh.seek(0)
        self._fh.write(self._header.tobytes())
        self._fh.flush()

    def write(self, frame: np.ndarray) -> None:
        data = np.ascontiguousarray(frame, dtype=self._dtype)
        self._fh.seek(1024 + self._n * self._frame_bytes)
        self._fh.write(data.tobytes())
        self._fh.flush()  # data first: the header below must never declare a frame that is not on disk yet
        values = data.astype(np.float64)
        finite = values[np.isfinite(values)]
        self._n += 1
        if finite.size:
            self._min = min(self._min, float(finite.min()))
            self._max = max(self._max, float(finite.max()))
            self._sum += float(finite.sum())
            self._sumsq += float(np.square(finite).sum())
        count = self._n * data.size
        mean = self._sum / count
        h = self._header
        h.nz = self._n
        if np.isfinite(self._min):
            h.dmin, h.dmax, h.dmean = self._min, self._max, mean
            h.rms = float(np.sqrt(max(self._sumsq / count - mean * mean, 0.0)))
        self._write_header()

    def close(self) -> None:
        self._fh.close()


class _TiffBackend:
    """A BigTIFF written one page per frame with no series description (each page complete when written)."""

    def __init__(self, path: Path, pixel_nm: float | None) -> None:
        import tifffile

        self._tw = tifffile.TiffWriter(path, bigtiff=True, mode="w")
        self._kwargs: dict[str, Any] = {
            "photometric": "minisblack",
            "contiguous": False,
            "metadata": None,
            "software": f"emlive {__version__}",
        }
        if pixel_nm is not None:
            per_cm = 1e7 / pixel_nm
            if per_cm < 4.0e9:  # the rational tag holds 32-bit numerators
                self._kwargs.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            else:
                per_um = 1e3 / pixel_nm
                self._kwargs.update(resolution=(per_um, per_um), resolutionunit="MICROMETER")

    def write(self, frame: np.ndarray) -> None:
        self._tw.write(frame, **self._kwargs)
        self._tw.filehandle.flush()

    @property
    def fileno(self) -> int:
        return int(self._tw.filehandle.fileno())

    def close(self) -> None:
        self._tw.close()


class MovieWriter:
    """Append (H, W) frames to a TIFF or MRC movie; the file stays readable after every frame (a context manager).

    ``dtype`` is the pixel type in the file (see the module docstring for conversions); ``pixel_size_nm`` is stored
    in the file's metadata. ``overwrite=False`` refuses to replace an existing file. ``fsync=True`` forces every
    frame to disk (survives a power cut, slower).
    """

    def __init__(
        self,
        path: str | Path,
        frame_shape: tuple[int, int],
        dtype: np.dtype[Any] | str | type,
        pixel_size_nm: float | None = None,
        *,
        overwrite: bool = True,
        fsync: bool = False,
    ) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in WRITER_SUFFIXES:
            raise InputFileError(
                f"{self.path}: cannot write movies with suffix {self.path.suffix or '(none)'}; supported are "
                f"{', '.join(sorted(WRITER_SUFFIXES))}"
            )
        self.format = "tiff" if suffix in (".tif", ".tiff") else "zarr" if suffix == ".zarr" else "mrc"
        try:
            shape = (int(frame_shape[0]), int(frame_shape[1]))
        except (TypeError, ValueError, IndexError) as exc:
            raise InputDataError(f"{self.path}: frame_shape {frame_shape!r} must be two integers (H, W)") from exc
        if len(frame_shape) != 2 or shape[0] < 1 or shape[1] < 1:
            raise InputDataError(f"{self.path}: frame_shape {tuple(frame_shape)} must be (H, W) with H, W >= 1")
        self.frame_shape = shape
        try:
            self.dtype = np.dtype(dtype).newbyteorder("=")
        except TypeError as exc:
            raise InputDataError(f"{self.path}: {dtype!r} is not a pixel type") from exc
        allowed = {"tiff": TIFF_DTYPES, "mrc": MRC_DTYPES, "zarr": ZARR_DTYPES}[self.format]
        if self.dtype not in allowed:
            wider = storage_dtype(self.dtype, self.format)
            hint = f" ({self.format.upper()} stores {self.dtype} losslessly as {wider})" if wider is not None else ""
            raise InputDataError(
                f"{self.path}: pixel type {self.dtype} cannot be written to {self.format.upper()}; use one of "
                f"{_names(allowed)}{hint}, or write TIFF, which stores every pixel type"
            )
        if pixel_size_nm is not None and not (np.isfinite(pixel_size_nm) and pixel_size_nm > 0):
            raise InputDataError(f"{self.path}: pixel_size_nm={pixel_size_nm} must be a finite number > 0, or None")
        self.pixel_size_nm = None if pixel_size_nm is None else float(pixel_size_nm)
        if not self.path.parent.is_dir():
            raise InputFileError(f"{self.path}: the folder {self.path.parent} does not exist; create it first")
        if self.path.exists() and not overwrite:
            raise InputFileError(f"{self.path}: the file exists; remove it or allow overwriting")
        self._fsync = fsync
        self._frames = 0
        self._closed = False
        try:
            if self.format == "mrc":
                self._fh: BinaryIO | None = self.path.open("wb")
                self._backend: _MrcBackend | _TiffBackend | ZarrWriterBackend = _MrcBackend(
                    self._fh, shape, self.dtype, self.pixel_size_nm
                )
            elif self.format == "zarr":
                from emlive.core.zarrio import ZarrWriterBackend

                self._fh = None
                self._backend = ZarrWriterBackend(self.path, shape, self.dtype, self.pixel_size_nm)
            else:
                self._fh = None
                self._backend = _TiffBackend(self.path, self.pixel_size_nm)
        except OSError as exc:
            raise InputFileError(
                f"{self.path}: cannot create the file ({exc}); check the folder's permissions"
            ) from exc
        logger.debug("writing %s: frames %s %s, pixel %s nm", self.path, shape, self.dtype, self.pixel_size_nm)

    @property
    def frames_written(self) -> int:
        """Number of frames appended so far (all of them readable from the file)."""
        return self._frames

    def append(self, frame: np.ndarray) -> None:
        """Write one (H, W) frame at the end of the movie, converting it to the writer's dtype."""
        if self._closed:
            raise InputFileError(f"{self.path}: the writer is closed; open a new one to write more frames")
        arr = np.asarray(frame)
        if arr.shape != self.frame_shape:
            raise InputDataError(
                f"frame {self._frames} for {self.path} has shape {arr.shape}; this movie's frames are "
                f"{self.frame_shape} (H, W)"
            )
        data = coerce_frame(arr, self.dtype, where=f"frame {self._frames} for {self.path}")
        try:
            self._backend.write(data)
            if self._fsync and self.format != "zarr":  # zarr writes each chunk by rename; fsync covers files
                fd = self._fh.fileno() if self._fh is not None else self._backend.fileno  # type: ignore[union-attr]
                os.fsync(fd)
        except OSError as exc:
            raise InputFileError(
                f"{self.path}: writing frame {self._frames} failed ({exc}); is the disk full?"
            ) from exc
        self._frames += 1

    def extend(self, frames: Iterable[np.ndarray]) -> None:
        """Append every frame of ``frames`` (an iterable of (H, W) arrays or a (T, H, W) array)."""
        for frame in frames:
            self.append(frame)

    def close(self) -> None:
        """Finish the file (idempotent)."""
        if not self._closed:
            self._closed = True
            self._backend.close()

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
        return f"MovieWriter({str(self.path)!r}, frames={self._frames}, shape={self.frame_shape}, dtype={self.dtype})"


def open_writer(
    path: str | Path,
    frame_shape: tuple[int, int],
    dtype: np.dtype[Any] | str | type,
    pixel_size_nm: float | None = None,
    *,
    overwrite: bool = True,
    fsync: bool = False,
) -> MovieWriter:
    """A :class:`MovieWriter` for ``path``; the format comes from the suffix (.tif/.tiff or .mrc/.mrcs)."""
    return MovieWriter(path, frame_shape, dtype, pixel_size_nm, overwrite=overwrite, fsync=fsync)


def write_movie(
    path: str | Path,
    frames: np.ndarray | Iterable[np.ndarray],
    pixel_size_nm: float | None = None,
    *,
    dtype: np.dtype[Any] | str | type | None = None,
    overwrite: bool = True,
) -> Path:
    """Write a whole movie ((T, H, W) or (H, W) array, or an iterable of (H, W) frames); returns the path.

    The pixel type is ``dtype`` or, by default, the first frame's.
    """
    if isinstance(frames, np.ndarray):
        stack = frames[None] if frames.ndim == 2 else frames
        if stack.ndim != 3 or 0 in stack.shape:
            raise InputDataError(f"{path}: frames of shape {frames.shape}: a movie is (T, H, W) with T, H, W >= 1")
        iterator: Iterator[np.ndarray] = iter(stack)
    else:
        iterator = iter(frames)
    try:
        first = np.asarray(next(iterator))
    except StopIteration:
        raise InputDataError(f"{path}: no frames to write; a movie needs at least one frame") from None
    if first.ndim != 2:
        raise InputDataError(f"{path}: the first frame has shape {first.shape}; frames must be (H, W)")
    with open_writer(
        path, (first.shape[0], first.shape[1]), dtype or first.dtype, pixel_size_nm, overwrite=overwrite
    ) as writer:
        writer.append(first)
        writer.extend(iterator)
    return writer.path
