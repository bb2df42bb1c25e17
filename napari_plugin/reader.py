"""The napari reader: every movie :func:`emlive.core.readers.open_movie` opens, as a lazy image layer.

One reader API: this module never parses a format itself. A :class:`~emlive.core.readers.Movie` is wrapped in a
dask array of one chunk per frame (:func:`lazy_frames`), so napari reads only the frames it shows and a 10 GB
movie opens at once. The pixel size (nm) becomes the layer's scale on ``y`` and ``x`` with ``nm`` units (frames
keep scale 1, in napari's default unit); the source path and pixel size go into the layer's metadata, where the
Denoise and Train widgets read the file back (:data:`PATH_KEY`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from emlive.core.readers import SUPPORTED_SUFFIXES, Movie, is_zarr_path, open_movie

logger = logging.getLogger(__name__)

PATH_KEY = "emlive_path"  # layer.metadata key: the movie file or folder the layer was read from
PIXEL_KEY = "pixel_size_nm"  # layer.metadata key: the pixel size in nm (None when the file does not say)
AXIS_LABELS = ("t", "y", "x")

LayerData = tuple[Any, dict[str, Any], str]


class MovieFrames:
    """A NumPy-like (T, H, W) view of a :class:`Movie` for ``dask.array.from_array``: indexing reads only the
    frames it names (the first index: an int or a slice; the others: anything NumPy takes)."""

    def __init__(self, movie: Movie) -> None:
        self.movie = movie
        self.shape = movie.shape
        self.dtype = movie.dtype
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        parts = key if isinstance(key, tuple) else (key,)
        first, rest = (parts[0], parts[1:]) if parts else (slice(None), ())
        if isinstance(first, slice):
            return np.asarray(self.movie[first][(slice(None), *rest)])
        return np.asarray(self.movie.frame(int(first))[rest])


def lazy_frames(movie: Movie) -> Any:
    """``movie`` as a dask array of one chunk per frame, read on demand (a lock keeps reads one at a time)."""
    import dask.array as da  # napari depends on dask

    _, height, width = movie.shape
    meta = np.empty((0, 0, 0), dtype=movie.dtype)
    return da.from_array(MovieFrames(movie), chunks=(1, height, width), lock=True, asarray=True, meta=meta)


def layer_geometry(pixel_size_nm: float | None) -> dict[str, Any]:
    """The scale, units and axis labels of a (T, H, W) layer of this pixel size (pixels when it is unknown)."""
    px = 1.0 if pixel_size_nm is None else float(pixel_size_nm)
    unit = "pixel" if pixel_size_nm is None else "nm"
    return {"scale": (1.0, px, px), "units": ("pixel", unit, unit), "axis_labels": AXIS_LABELS}


def movie_layer(movie: Movie, name: str | None = None) -> LayerData:
    """The (data, kwargs, "image") tuple napari adds for an open movie."""
    kwargs = {
        "name": name or Path(movie.path).name,
        "metadata": {PATH_KEY: str(movie.path), PIXEL_KEY: movie.pixel_size_nm},
        **layer_geometry(movie.pixel_size_nm),
    }
    return lazy_frames(movie), kwargs, "image"


def _accepts(path: Path) -> bool:
    return is_zarr_path(path) or path.is_dir() or path.suffix.lower() in SUPPORTED_SUFFIXES


def read_movies(paths: list[str]) -> list[LayerData]:
    """One lazy image layer per path; an unreadable movie raises the reader's error (it names the file)."""
    layers = []
    for path in paths:
        movie = open_movie(path)
        logger.info("opened %r for napari", movie)
        layers.append(movie_layer(movie))
    return layers


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """The npe2 reader hook: a reader for ``path`` (a movie file, a folder of TIFFs, an OME-Zarr folder, or a list
    of them), or None when emlive does not read it (napari then asks another plugin)."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_accepts(Path(p)) for p in paths):
        return None

    def reader(arg: str | list[str]) -> list[LayerData]:
        return read_movies([arg] if isinstance(arg, str) else list(arg))

    return reader
