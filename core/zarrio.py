"""OME-Zarr movies: a lazy reader, and a store written chunk by chunk that several processes can fill at once.

Needs the ``zarr`` extra (``pip install 'emlive[zarr]'``: zarr-python 3 and ome-zarr-py); both are imported only
when an OME-Zarr path is opened, and a missing extra is reported with the install line.

**Reading** (:class:`ZarrMovie`, what :func:`emlive.core.readers.open_movie` returns for a ``.zarr`` folder): the
first resolution level (``datasets[0]``) of the first multiscale image of an OME-NGFF v0.4 (Zarr v2) or v0.5 (Zarr
v3) group. A movie has axes ``t, y, x``; ``c`` and ``z`` axes of size 1 (``t, c, y, x``, ``t, z, y, x``,
``t, c, z, y, x``) are squeezed away, and a store without a ``t`` axis whose other axes are all size 1 is one
frame. Anything else (a ``c`` or ``z`` axis longer than 1, ``y, x`` not last, unknown axis names) is refused with
the axes found and the layout expected. Frames are read from their chunks, one frame (or one crop) at a time. The
pixel size is the ``x`` scale of the level's (and the multiscale's) ``coordinateTransformations`` in the ``x``
axis's unit, converted to nm; no unit leaves it unknown. Every pixel type of :mod:`emlive.core.pixeltypes`.

**Writing** (:class:`ZarrMovieStore`; ``.zarr`` outputs of :func:`emlive.core.writers.open_writer` and of
``emlive denoise``): an OME-Zarr image with one array ``0`` of shape (T, H, W) and axes ``t`` (type time, scale 1:
the frame index), ``y``, ``x`` (type space, unit nanometer, scale = the pixel size; scale 1 and no unit when the
pixel size is unknown). NGFF 0.5 (Zarr v3, the default) or 0.4 (Zarr v2, for older viewers); the metadata are
written by ome-zarr-py and read back by its reader (napari-ome-zarr). The pixel type is stored as itself (every
type of the policy).

*Chunks*: one frame per chunk, ``(1, H, W)``; frames larger than :data:`MAX_CHUNK_EDGE` pixels on a side are cut
into tiles of at most ``MAX_CHUNK_EDGE`` x ``MAX_CHUNK_EDGE`` (16 MiB of float32), so a chunk never needs more
than one frame in memory and a frame is rewritten on its own. Compression is zarr's default (zstd), lossless.

*Completion record*: a second array, ``emlive_done`` (shape (T,), uint8, one element per chunk), holds 1 for each
frame whose chunks are all written; a frame's record is written only after its last chunk is, so a frame whose
writer died half-way (a chunk cut short, a tile missing) has no record and is written again on resume: a chunk is
never trusted without its record. Each frame's record is its own chunk file, so writers of different frames never
touch the same file. NGFF readers ignore the extra array (it is not in ``datasets``).

The store API, for one process or many (cluster shards)::

    store = ZarrMovieStore.create(path, (T, H, W), dtype, pixel_size_nm, attributes={...})  # once
    store = ZarrMovieStore.open(path)           # in each worker process: never creates, never changes metadata
    store.write_frames(a, frames)               # frames a, a+1, ... (an iterable of (H, W) or a (n, H, W) array)
    store.complete_frames()                     # (T,) bool: the frames whose record is written
    store.missing_ranges()                      # [(a, b), ...]: the runs of frames still to write
    store.finish()                              # once, by the coordinator: True and attrs["emlive"]["complete"]
                                                # set when every frame is complete

Writers of disjoint frame ranges may run in any number of processes at once; two writers of the same frame write
the same bytes only if they compute the same frame. Only :meth:`ZarrMovieStore.create` and
:meth:`ZarrMovieStore.finish` change the group's attributes: call them from one process.
"""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, Self

import numpy as np

from emlive import __version__
from emlive.core.errors import ConfigError, InputDataError, InputFileError
from emlive.core.pixeltypes import ACCEPTED_NAMES, pixel_type
from emlive.core.readers import (
    ZARR_METADATA_FILES,
    Movie,
    _check_pixel_dtype,
    _parse_errors,
    _read_errors,
    unit_to_nm,
)

logger = logging.getLogger(__name__)

NGFF_VERSIONS = ("0.4", "0.5")
DEFAULT_NGFF = "0.5"
MAX_CHUNK_EDGE = 2048
DATA_PATH = "0"
DONE_PATH = "emlive_done"
ATTRS_KEY = "emlive"
EXTRA_HINT = "pip install 'emlive[zarr]' (zarr-python 3 and ome-zarr)"

# NGFF unit names (UDUNITS-2) of length, in nm
_NGFF_NM: dict[str, float] = {
    "angstrom": 0.1,
    "picometer": 1e-3,
    "nanometer": 1.0,
    "micrometer": 1e3,
    "millimeter": 1e6,
    "centimeter": 1e7,
    "meter": 1e9,
}
_SQUEEZABLE = ("c", "z")


def require_zarr() -> ModuleType:
    """The ``zarr`` module; a ConfigError naming the extra when it is not installed."""
    try:
        import zarr
    except ImportError as exc:
        raise ConfigError(
            f"OME-Zarr input and output need the zarr extra ({exc.name} is missing): {EXTRA_HINT}"
        ) from exc
    return zarr


def holds_zarr_metadata(path: Path) -> bool:
    """True when the folder holds Zarr group or array metadata (only such a folder is ever replaced)."""
    return any((path / name).is_file() for name in ZARR_METADATA_FILES)


def zarr_stem(path: Path) -> str:
    """The movie's name without ``.zarr`` / ``.ome.zarr``."""
    name = path.name
    for suffix in (".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# --- metadata ----------------------------------------------------------------------------------------------------
def _multiscale(path: Path, attrs: dict[str, Any]) -> dict[str, Any]:
    """The first multiscale image of NGFF v0.5 (``attrs["ome"]``) or v0.4 (``attrs``) metadata."""
    ome = attrs.get("ome")
    found = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    if not isinstance(found, list) or not found or not isinstance(found[0], dict) or not found[0].get("datasets"):
        raise InputFileError(
            f"{path}: the Zarr group has no OME-NGFF 'multiscales' image metadata (attributes: {sorted(attrs)}); "
            "emlive reads OME-Zarr images (NGFF 0.4/0.5): write the movie with ome-zarr or `emlive denoise -o "
            "x.ome.zarr`, or convert it to TIFF/MRC"
        )
    if len(found) > 1:
        logger.info("%s: holds %d multiscale images; reading the first", path, len(found))
    return found[0]


def _axes(path: Path, multiscale: dict[str, Any], ndim: int) -> list[dict[str, Any]]:
    raw = multiscale.get("axes")
    if raw is None:  # NGFF <= 0.3: axes implied
        raw = ["t", "c", "z", "y", "x"][-ndim:]
    axes = [a if isinstance(a, dict) else {"name": str(a)} for a in raw]
    if len(axes) != ndim:
        raise InputFileError(
            f"{path}: the metadata name {len(axes)} axes ({[a.get('name') for a in axes]}) but the array has "
            f"{ndim} dimensions: the store is inconsistent; write it again"
        )
    return axes


def _scale(multiscale: dict[str, Any], dataset: dict[str, Any], ndim: int) -> list[float]:
    """The product of the dataset's and the multiscale's scale transformations (1 where none)."""
    scale = np.ones(ndim)
    for transforms in (dataset.get("coordinateTransformations"), multiscale.get("coordinateTransformations")):
        for tr in transforms or []:
            if isinstance(tr, dict) and tr.get("type") == "scale" and len(tr.get("scale", [])) == ndim:
                scale = scale * np.asarray(tr["scale"], dtype=float)
    return [float(v) for v in scale]


def _length_to_nm(value: float, unit: str | None) -> float | None:
    if unit is None:
        return None
    factor = _NGFF_NM.get(str(unit).strip().lower())
    if factor is None:
        return unit_to_nm(value, str(unit))  # abbreviations: nm, um, Å, ...
    return unit_to_nm(value * factor, "nm")


def _layout(path: Path, names: list[str], shape: tuple[int, ...]) -> tuple[int | None, int, int]:
    """Positions of (t, y, x) in the array; refuses any layout that is not a (T, H, W) movie."""
    expected = (
        "a movie is (t, y, x); (t, c, y, x), (t, z, y, x) and (t, c, z, y, x) are read when c and z have size 1"
    )
    found = ", ".join(f"{n}={s}" for n, s in zip(names, shape, strict=True))
    if len(set(names)) != len(names) or names[-2:] != ["y", "x"]:
        raise InputFileError(f"{path}: OME-Zarr axes ({found}) are not a movie: {expected}, with y, x last")
    for name, size in zip(names[:-2], shape[:-2], strict=True):
        if name == "t":
            continue
        if name not in _SQUEEZABLE:
            raise InputFileError(f"{path}: OME-Zarr axis {name!r} ({found}) is not one emlive reads: {expected}")
        if size != 1:
            raise InputFileError(
                f"{path}: OME-Zarr axes ({found}): the {name} axis has {size} entries; {expected}. Save one "
                f"{'channel' if name == 'c' else 'plane'} per store, or convert the stack"
            )
    t_axis = names.index("t") if "t" in names else None
    return t_axis, len(names) - 2, len(names) - 1


def _open_group(zarr: ModuleType, path: Path, mode: str) -> Any:
    with _parse_errors(path, "an OME-Zarr image", (json.JSONDecodeError,)):
        try:
            return zarr.open_group(str(path), mode=mode)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError) as exc:
            raise InputFileError(
                f"{path}: not a Zarr group ({type(exc).__name__}); an OME-Zarr image is a folder holding zarr.json "
                "(NGFF 0.5) or .zgroup/.zattrs (NGFF 0.4)"
            ) from exc


# --- reading -----------------------------------------------------------------------------------------------------
class ZarrMovie(Movie):
    """A (T, H, W) movie read from an OME-Zarr image, one frame or crop at a time from its chunks."""

    _reopens = True

    def __init__(self, path: Path) -> None:
        zarr = require_zarr()
        group = _open_group(zarr, path, "r")
        attrs = dict(group.attrs)
        multiscale = _multiscale(path, attrs)
        dataset = multiscale["datasets"][0]
        with _parse_errors(path, "an OME-Zarr image"):
            array = group[str(dataset["path"])]
        shape = tuple(int(s) for s in array.shape)
        axes = _axes(path, multiscale, len(shape))
        names = [str(a.get("name", "")).lower() for a in axes]
        t_axis, y_axis, x_axis = _layout(path, names, shape)
        dtype = np.dtype(array.dtype)
        _check_pixel_dtype(path, dtype)
        frames = shape[t_axis] if t_axis is not None else 1
        if 0 in (frames, shape[y_axis], shape[x_axis]):
            raise InputFileError(f"{path}: the OME-Zarr array has shape {shape}: it holds no frames")
        scale = _scale(multiscale, dataset, len(shape))
        pixel = _length_to_nm(scale[x_axis], axes[x_axis].get("unit"))
        self._array = array
        self._ndim = len(shape)
        self._t_axis = t_axis
        own = attrs.get(ATTRS_KEY)
        if isinstance(own, dict) and own.get("complete") is False:
            logger.warning(
                "%s: emlive's record says the store is not complete: frames never written read as %s",
                path, array.fill_value,
            )  # fmt: skip
        super().__init__(path, (frames, shape[y_axis], shape[x_axis]), dtype.newbyteorder("="), pixel)

    def _key(self, t: int, ys: slice, xs: slice) -> tuple[int | slice, ...]:
        key: list[int | slice] = [0] * (self._ndim - 2) + [ys, xs]
        if self._t_axis is not None:
            key[self._t_axis] = t
        return tuple(key)

    def _read_crop(self, t: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        with _read_errors(self.path, f"frame {t} of the OME-Zarr array"):
            data = self._array[self._key(t, slice(y, y + h), slice(x, x + w))]
        return np.asarray(data, dtype=self._raw_dtype)

    def _read_frame(self, t: int) -> np.ndarray:
        return self._read_crop(t, 0, 0, self.shape[1], self.shape[2])


# --- writing -----------------------------------------------------------------------------------------------------
def chunk_shape(height: int, width: int) -> tuple[int, int, int]:
    """The chunk of a (T, H, W) store: one frame, cut into tiles of at most MAX_CHUNK_EDGE on a side."""
    return 1, min(height, MAX_CHUNK_EDGE), min(width, MAX_CHUNK_EDGE)


def _ngff_axes(pixel_size_nm: float | None) -> list[dict[str, str]]:
    space = {"type": "space"} if pixel_size_nm is None else {"type": "space", "unit": "nanometer"}
    return [{"name": "t", "type": "time"}, {"name": "y", **space}, {"name": "x", **space}]


def _ome_format(version: str) -> Any:
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV04() if version == "0.4" else FormatV05()


def _check_new(path: Path, shape: tuple[int, int, int], dtype: np.dtype[Any], pixel: float | None, ngff: str) -> None:
    if len(shape) != 3 or min(shape) < 0 or shape[1] < 1 or shape[2] < 1:
        raise InputDataError(f"{path}: shape {shape} must be (T, H, W) with T >= 0 and H, W >= 1")
    if pixel_type(dtype) is None:
        raise InputDataError(f"{path}: pixel type {dtype} cannot be written; use one of {ACCEPTED_NAMES}")
    if pixel is not None and not (np.isfinite(pixel) and pixel > 0):
        raise InputDataError(f"{path}: pixel_size_nm={pixel} must be a finite number > 0, or None")
    if ngff not in NGFF_VERSIONS:
        raise ConfigError(f"{path}: OME-NGFF version {ngff!r} is not written; use one of {', '.join(NGFF_VERSIONS)}")


def _clear(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    if not overwrite:
        raise InputFileError(f"{path}: exists; remove it, allow overwriting, or open it to resume")
    if path.is_dir() and not holds_zarr_metadata(path):
        raise InputFileError(f"{path}: a folder that is not a Zarr store is in the way; remove or rename it")
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()


class ZarrMovieStore:
    """An OME-Zarr (T, H, W) movie written frame by frame, from one process or many (see the module docstring)."""

    def __init__(self, path: Path, group: Any, array: Any, done: Any) -> None:
        self.path = path
        self._group = group
        self._array = array
        self._done = done

    @classmethod
    def create(
        cls,
        path: str | Path,
        shape: tuple[int, int, int],
        dtype: np.dtype[Any] | str | type,
        pixel_size_nm: float | None = None,
        *,
        attributes: dict[str, Any] | None = None,
        ngff_version: str = DEFAULT_NGFF,
        overwrite: bool = False,
    ) -> Self:
        """Create the store (metadata, empty arrays; no frame is written). ``attributes`` (JSON) go under
        ``attrs["emlive"]`` with emlive's version, the pixel size and ``complete: false``."""
        zarr = require_zarr()
        p = Path(path)
        dt = np.dtype(dtype).newbyteorder("=")
        shp = (int(shape[0]), int(shape[1]), int(shape[2]))
        _check_new(p, shp, dt, pixel_size_nm, ngff_version)
        _clear(p, overwrite)
        fmt = _ome_format(ngff_version)
        try:
            group = zarr.open_group(str(p), mode="w-", zarr_format=fmt.zarr_format)
            v3 = {"dimension_names": ["t", "y", "x"]} if fmt.zarr_format == 3 else {}
            array = group.create_array(
                DATA_PATH, shape=shp, chunks=chunk_shape(shp[1], shp[2]), dtype=dt, fill_value=0, **v3
            )
            done = group.create_array(DONE_PATH, shape=(shp[0],), chunks=(1,), dtype="uint8", fill_value=0)
        except OSError as exc:
            raise InputFileError(f"{p}: cannot create the store ({exc}); check the folder and the free space") from exc
        _write_metadata(group, fmt, pixel_size_nm, p)
        own = {
            "emlive_version": __version__,
            "pixel_size_nm": pixel_size_nm,
            "chunks": list(chunk_shape(shp[1], shp[2])),
            "completion_record": DONE_PATH,
            "complete": False,
            **(attributes or {}),
        }
        group.attrs[ATTRS_KEY] = json.loads(json.dumps(own))  # JSON only: fails here, not in a worker
        logger.debug("created %s: %s %s, pixel %s nm, NGFF %s", p, shp, dt, pixel_size_nm, ngff_version)
        return cls(p, group, array, done)

    @classmethod
    def open(cls, path: str | Path) -> Self:
        """Open an existing store for writing frames (any process); never changes its metadata."""
        zarr = require_zarr()
        p = Path(path)
        if not p.is_dir():
            raise InputFileError(f"{p}: no such OME-Zarr store; create it first (ZarrMovieStore.create)")
        group = _open_group(zarr, p, "r+")
        if ATTRS_KEY not in group.attrs or DONE_PATH not in group:
            raise InputFileError(
                f"{p}: not a store written by emlive (no {ATTRS_KEY!r} attributes or {DONE_PATH!r} record); "
                "emlive resumes only its own stores: remove it or write elsewhere"
            )
        return cls(p, group, group[DATA_PATH], group[DONE_PATH])

    @property
    def shape(self) -> tuple[int, int, int]:
        s = self._array.shape
        return int(s[0]), int(s[1]), int(s[2])

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self._array.dtype)

    @property
    def attributes(self) -> dict[str, Any]:
        """``attrs["emlive"]``: what :meth:`create` stored (model card, source, ...)."""
        return dict(self._group.attrs.get(ATTRS_KEY, {}))

    def write_frame(self, t: int, frame: np.ndarray) -> None:
        """Write frame ``t`` (converted as :func:`emlive.core.writers.coerce_frame` does), then its record."""
        from emlive.core.writers import coerce_frame

        n, h, w = self.shape
        if not 0 <= t < n:
            raise InputDataError(f"{self.path}: frame {t} is outside the store's {n} frames (0..{n - 1})")
        arr = np.asarray(frame)
        if arr.shape != (h, w):
            raise InputDataError(f"frame {t} for {self.path} has shape {arr.shape}; the store's frames are {(h, w)}")
        data = coerce_frame(arr, self.dtype, where=f"frame {t} for {self.path}")
        try:
            self._array[t] = data
            self._done[t] = 1  # after every chunk of the frame: the record never names a frame not on disk
        except OSError as exc:
            raise InputFileError(f"{self.path}: writing frame {t} failed ({exc}); is the disk full?") from exc

    def write_frames(self, start: int, frames: Iterable[np.ndarray]) -> int:
        """Write ``frames`` as frames ``start``, ``start + 1``, ...; returns how many were written."""
        count = 0
        for i, frame in enumerate(frames):
            self.write_frame(start + i, frame)
            count += 1
        return count

    def append(self, frame: np.ndarray) -> int:
        """Grow the store by one frame and write it (a single writer of unknown length); returns its index."""
        n, h, w = self.shape
        self._array.resize((n + 1, h, w))
        self._done.resize((n + 1,))
        self.write_frame(n, frame)
        return n

    def complete_frames(self) -> np.ndarray:
        """(T,) bool: True for every frame whose completion record is written."""
        return np.asarray(self._done[:]) == 1

    def missing_ranges(self) -> list[tuple[int, int]]:
        """The runs [a, b) of frames without a completion record, in order."""
        missing = np.flatnonzero(~self.complete_frames())
        if missing.size == 0:
            return []
        breaks = np.flatnonzero(np.diff(missing) > 1)
        starts = np.concatenate(([missing[0]], missing[breaks + 1]))
        stops = np.concatenate((missing[breaks], [missing[-1]])) + 1
        return [(int(a), int(b)) for a, b in zip(starts, stops, strict=True)]

    def finish(self) -> bool:
        """Mark the store complete when every frame is (one process only); returns whether it is."""
        done = bool(self.complete_frames().all())
        if done:
            own = self.attributes
            own["complete"] = True
            self._group.attrs[ATTRS_KEY] = own
        return done


def _write_metadata(group: Any, fmt: Any, pixel_size_nm: float | None, path: Path) -> None:
    with warnings.catch_warnings():  # ome-zarr's module deprecates its own Scaler default at import; not used here
        warnings.simplefilter("ignore", DeprecationWarning)
        from ome_zarr.writer import write_multiscales_metadata

    space = 1.0 if pixel_size_nm is None else float(pixel_size_nm)
    datasets = [{"path": DATA_PATH, "coordinateTransformations": [{"type": "scale", "scale": [1.0, space, space]}]}]
    name = zarr_stem(path)
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=_ngff_axes(pixel_size_nm), name=name)


class ZarrWriterBackend:
    """The :class:`emlive.core.writers.MovieWriter` backend for ``.zarr``: a store grown by one frame per append."""

    def __init__(self, path: Path, frame_shape: tuple[int, int], dtype: np.dtype[Any], pixel_nm: float | None) -> None:
        self._store = ZarrMovieStore.create(path, (0, *frame_shape), dtype, pixel_nm, overwrite=True)

    def write(self, frame: np.ndarray) -> None:
        self._store.append(frame)

    def close(self) -> None:
        self._store.finish()
