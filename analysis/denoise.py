"""Offline denoising of recorded movies: ``emlive denoise INPUT -o OUTPUT --model MODEL``.

A thin, streaming layer over the inference runtime (:class:`emlive.export.runtime.Denoiser`), which owns the
model, the per-frame z-score normalisation of training, the windows of the model's N frames and the
tiling of frames larger than a tile (margins of at least the network's receptive radius, so seams do not show).
This module picks the movies, names the outputs, checks everything that can be checked before the first frame is
computed, and appends every denoised frame to the output as soon as it is produced: memory stays at a few frames
whatever the length of the movie, and the output file is readable up to the last written frame at any time.

Inputs: any movie :func:`emlive.core.readers.open_movie` reads (a multi-page TIFF, a folder of single-page TIFFs,
MRC, DM3/DM4, SER, EMD, npy), or a folder of movie files (see :func:`emlive.core.readers.find_movies`), each then
denoised into the OUTPUT folder under its own stem.

Outputs keep the input's format: TIFF stays TIFF (``.tif``/``.tiff`` kept), MRC stays MRC (``.mrc``/``.mrcs``
kept), OME-Zarr stays OME-Zarr; DM3/DM4, SER, EMD and npy become TIFF (or MRC with ``fmt="mrc"``, OME-Zarr with
``fmt="zarr"``). An explicit ``.tif``/``.mrc``/``.ome.zarr`` OUTPUT name wins over the input's format. An OME-Zarr
output (:mod:`emlive.core.zarrio`) is written one chunk per frame with a completion record per frame;
``resume=True`` (``--resume``) continues an interrupted one, computing only the frames without a record.
The pixel size is kept. Pixels are float32 (the denoised values in the
input's units) by default; ``dtype="input"`` writes the input file's pixel type instead: values are rounded to
the nearest integer (half to even) and clipped to the type's range (e.g. negative values become 0 in uint16).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from emlive.analysis.uncertainty import MovieEstimate, log_movie, movie_estimate, uncertainty_paths
from emlive.core.errors import ConfigError, InputDataError, InputFileError, ModelFileError
from emlive.core.pixeltypes import storable, stored_dtypes
from emlive.core.posterior import Estimate
from emlive.core.readers import (
    DM_SUFFIXES,
    EMD_SUFFIXES,
    MRC_SUFFIXES,
    NPY_SUFFIXES,
    SER_SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_SUFFIXES,
    Movie,
    find_movies,
    is_zarr_path,
    load_gain,
    open_movie,
)
from emlive.core.writers import WRITER_SUFFIXES, open_writer
from emlive.core.zarrio import ZarrMovieStore, zarr_stem
from emlive.export.estimates import needs_variance_head

if TYPE_CHECKING:
    from emlive.export.runtime import Denoiser

logger = logging.getLogger(__name__)


class OutputFormat(StrEnum):
    """File format of the denoised movie (the value is the default suffix)."""

    TIFF = "tif"
    MRC = "mrc"
    ZARR = "ome.zarr"  # an OME-Zarr folder, written chunk by chunk (emlive.core.zarrio); resumable

    @classmethod
    def _missing_(cls, value: object) -> OutputFormat | None:
        return cls.ZARR if str(value).lower() in ("zarr", "ome-zarr", "omezarr") else None


class OutputDtype(StrEnum):
    """Pixel type of the denoised movie: float32, or the input file's own type (rounded and clipped)."""

    FLOAT32 = "float32"
    INPUT = "input"


@dataclass(frozen=True)
class MovieReport:
    """What one movie's denoising did."""

    input: str
    output: str
    format: str
    dtype: str
    frames: int
    start: int
    stop: int
    height: int
    width: int
    pixel_size_nm: float | None
    seconds: float
    # a probabilistic (head=gaussian) model only (emlive.analysis.uncertainty): blind or posterior, the predicted
    # gain of the posterior (dB, mean over the frames), the noise check, the variance head's calibration measured
    # on this movie (a card's VarianceCalibration; None: the card's own was used), the uncertainty map written
    estimate: str | None = None
    predicted_gain_db: float | None = None
    noise_check: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    uncertainty: str | None = None

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    @property
    def megapixels_per_second(self) -> float:
        return self.frames_per_second * self.height * self.width / 1e6

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["frames_per_second"] = self.frames_per_second
        out["megapixels_per_second"] = self.megapixels_per_second
        return out


@dataclass
class DenoiseReport:
    """What :func:`denoise_path` did: the model, the backend and device used, and one entry per movie."""

    model: str
    backend: str
    device: str
    model_frames: int
    tile: int
    load_seconds: float
    movies: list[MovieReport] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(m.frames for m in self.movies)

    @property
    def seconds(self) -> float:
        return sum(m.seconds for m in self.movies)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    @property
    def megapixels_per_second(self) -> float:
        pixels = sum(m.frames * m.height * m.width for m in self.movies)
        return pixels / 1e6 / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "backend": self.backend,
            "device": self.device,
            "model_frames": self.model_frames,
            "tile": self.tile,
            "load_seconds": self.load_seconds,
            "frames": self.frames,
            "seconds": self.seconds,
            "frames_per_second": self.frames_per_second,
            "megapixels_per_second": self.megapixels_per_second,
            "movies": [m.to_dict() for m in self.movies],
        }


@dataclass(frozen=True)
class DenoiseJob:
    """One movie to denoise, checked by :func:`plan_jobs`: where from, where to (in which format), which pixel type,
    which frames (``start`` .. ``stop`` - 1) and the input's (T, H, W) ``shape``. The planning API that
    :mod:`emlive.analysis.batch` shares."""

    input: Path
    output: Path
    format: OutputFormat
    dtype: np.dtype[Any]
    start: int
    stop: int
    shape: tuple[int, int, int]


# --- argument parsing ------------------------------------------------------------------------------------------
def parse_frames(text: str | None) -> tuple[int | None, int | None]:
    """``"a:b"`` (either end may be empty, negatives count from the end, as a Python slice) as (start, stop)."""
    if text is None:
        return None, None
    parts = text.strip().split(":")
    rule = "give a range a:b of frames to denoise (frames a..b-1, e.g. 0:100, 10:, :50 or -20:)"
    if len(parts) != 2:
        raise ConfigError(f"--frames {text!r}: {rule}")
    bounds: list[int | None] = []
    for part in parts:
        part = part.strip()
        if not part:
            bounds.append(None)
            continue
        try:
            bounds.append(int(part))
        except ValueError:
            raise ConfigError(f"--frames {text!r}: {part!r} is not an integer; {rule}") from None
    return bounds[0], bounds[1]


def resolve_frames(frames: tuple[int | None, int | None], length: int, where: Path | str) -> tuple[int, int]:
    """The (start, stop) frame range of a movie of ``length`` frames, as a Python slice would take it; never empty."""
    start, stop, _ = slice(*frames).indices(length)
    if stop <= start:
        a, b = ("" if v is None else v for v in frames)
        raise ConfigError(
            f"{where}: --frames {a}:{b} selects no frame of this movie of {length} frames (0..{length - 1}); "
            f"choose a range inside it, e.g. 0:{length}"
        )
    return start, stop


def as_output_format(fmt: OutputFormat | str | None) -> OutputFormat | None:
    """``fmt`` ("tif", ".mrc", "zarr", any case, or an :class:`OutputFormat`) as an OutputFormat; None (keep the
    input's format) stays None; ConfigError listing the formats otherwise."""
    if fmt is None:
        return None
    try:
        return OutputFormat(str(fmt).lower().lstrip("."))
    except ValueError:
        raise ConfigError(
            f"output format {fmt!r} is not supported; use one of {', '.join(f.value for f in OutputFormat)}"
        ) from None


def as_output_dtype(dtype: OutputDtype | str) -> OutputDtype:
    """``dtype`` ("float32" or "input", any case, or an :class:`OutputDtype`) as an OutputDtype; ConfigError naming
    the two choices otherwise."""
    try:
        return OutputDtype(str(dtype).lower())
    except ValueError:
        raise ConfigError(
            f"output pixel type {dtype!r} is not supported; use float32 (default) or input (the input file's type, "
            "rounded and clipped)"
        ) from None


# --- planning: which movie goes where --------------------------------------------------------------------------
def _format_of_file(path: Path) -> OutputFormat:
    suffix = path.suffix.lower()
    if suffix in ZARR_SUFFIXES:
        return OutputFormat.ZARR
    return OutputFormat.MRC if suffix in MRC_SUFFIXES else OutputFormat.TIFF


def _default_name(movie_path: Path, fmt: OutputFormat | None) -> tuple[str, OutputFormat]:
    """Output file name (in a folder) for a movie: same stem; the input's suffix when the format is kept."""
    suffix = movie_path.suffix.lower()
    if is_zarr_path(movie_path):  # an OME-Zarr input stays OME-Zarr unless asked otherwise
        zarr_fmt = fmt or OutputFormat.ZARR
        return zarr_stem(movie_path) + "." + zarr_fmt.value, zarr_fmt
    if movie_path.is_dir():
        return movie_path.name + "." + (fmt or OutputFormat.TIFF).value, fmt or OutputFormat.TIFF
    own = OutputFormat.MRC if suffix in MRC_SUFFIXES else OutputFormat.TIFF if suffix in TIFF_SUFFIXES else None
    if own is not None and (fmt is None or fmt == own):
        return movie_path.stem + movie_path.suffix, own  # keeps .tiff/.mrcs as the input spelled them
    chosen = fmt or OutputFormat.TIFF  # DM3/DM4, SER, EMD and npy become TIFF unless asked otherwise
    return movie_path.stem + "." + chosen.value, chosen


def _output_is_file(output: Path) -> bool:
    """True when OUTPUT names a movie file, False when it names a folder; raises on an unsupported suffix."""
    suffix = output.suffix.lower()
    if suffix in ZARR_SUFFIXES:  # an OME-Zarr output is a folder, existing (resume, overwrite) or not
        return True
    if output.is_dir():
        return False
    if suffix in WRITER_SUFFIXES:
        return True
    if not suffix:
        return False
    readable = DM_SUFFIXES | SER_SUFFIXES | EMD_SUFFIXES | NPY_SUFFIXES
    what = "emlive reads but does not write" if suffix in readable else "is not a movie format emlive writes"
    raise InputFileError(
        f"{output}: the output suffix {output.suffix} {what}; name the output .tif/.tiff (TIFF), .mrc/.mrcs "
        "(MRC) or .ome.zarr (OME-Zarr), or give a folder (an existing one, or a name without a suffix)"
    )


def _check_dtype(job_input: Path, dtype: np.dtype[Any], fmt: OutputFormat) -> None:
    """ConfigError naming the fix when ``fmt`` cannot store ``dtype`` as itself (the pixel-type policy)."""
    if not storable(dtype, fmt.value):
        other = OutputFormat.MRC if fmt == OutputFormat.TIFF else OutputFormat.TIFF
        alt = f" or --format {other.value}" if storable(dtype, other.value) else ""
        raise ConfigError(
            f"{job_input}: --dtype input would write pixel type {dtype}, which {fmt.name} cannot store (allowed: "
            f"{', '.join(sorted(str(d) for d in stored_dtypes(fmt.value)))}); use --dtype float32{alt}"
        )


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


def plan_jobs(
    input_path: Path,
    output: Path,
    fmt: OutputFormat | None,
    dtype: OutputDtype,
    frames: tuple[int | None, int | None],
    overwrite: bool,
    gain: np.ndarray | None,
    resume: bool = False,
) -> list[DenoiseJob]:
    """Every (movie, output) pair of ``input_path`` (a movie or a folder of movies) into ``output`` (a file or a
    folder), checked before any frame is denoised: names, formats, pixel types, frame ranges, existing outputs
    (``overwrite``/``resume``) and the ``gain`` image's shape. Raises EmliveError on the first problem."""
    if not input_path.exists():
        raise InputFileError(f"{input_path}: no such file or folder; check the INPUT path")
    movies = find_movies(input_path)
    folder_mode = input_path.is_dir() and movies != [input_path]
    output_is_file = _output_is_file(output)
    targets: list[tuple[Path, Path, OutputFormat]] = []
    if folder_mode:
        if output_is_file:
            raise InputFileError(
                f"{output}: INPUT {input_path} is a folder of {len(movies)} movie(s), so OUTPUT must be a folder "
                f"(each movie is written into it under its own name); drop the {output.suffix} suffix"
            )
        if output.resolve() == input_path.resolve():
            raise InputFileError(
                f"{output}: OUTPUT is the INPUT folder; write the denoised movies into a separate folder"
            )
        for movie_path in movies:
            name, chosen = _default_name(movie_path, fmt)
            targets.append((movie_path, output / name, chosen))
    elif output_is_file:
        chosen = _format_of_file(output)
        if fmt is not None and fmt != chosen:
            raise ConfigError(
                f"{output}: --format {fmt.value} contradicts the output suffix {output.suffix}; drop --format or "
                f"name the output .{fmt.value}"
            )
        targets.append((movies[0], output, chosen))
    else:
        name, chosen = _default_name(movies[0], fmt)
        targets.append((movies[0], output / name, chosen))

    seen: dict[Path, Path] = {}
    jobs: list[DenoiseJob] = []
    for movie_path, out_path, chosen in targets:
        key = out_path.resolve()
        if key in seen:
            raise InputFileError(
                f"{out_path}: both {seen[key]} and {movie_path} would be written here (same stem); rename one of "
                "them or denoise them separately"
            )
        seen[key] = movie_path
        if key == movie_path.resolve() or (movie_path.is_dir() and _inside(out_path, movie_path)):
            raise InputFileError(
                f"{out_path}: the output would replace or sit inside its own input {movie_path}; choose another OUTPUT"
            )
        _check_existing(out_path, chosen, overwrite, resume)
        with open_movie(movie_path) as movie:
            shape = movie.shape
            file_dtype = movie.dtype  # before any gain: --dtype input means the file's own type
            if gain is not None:
                movie.set_gain(gain)  # checks the gain's shape against this movie's frames
        out_dtype = np.dtype(np.float32) if dtype == OutputDtype.FLOAT32 else file_dtype
        _check_dtype(movie_path, out_dtype, chosen)
        start, stop = resolve_frames(frames, shape[0], movie_path)
        jobs.append(DenoiseJob(movie_path, out_path, chosen, out_dtype, start, stop, shape))
    return jobs


def _check_existing(out_path: Path, fmt: OutputFormat, overwrite: bool, resume: bool) -> None:
    """Refuse an output in the way: a folder where a file goes, an existing output without --overwrite/--resume."""
    if resume and fmt != OutputFormat.ZARR:
        raise ConfigError(
            f"{out_path}: --resume continues OME-Zarr outputs only (they record each complete frame); TIFF and "
            "MRC outputs are written from the start: drop --resume, or write -o NAME.ome.zarr / --format zarr"
        )
    if out_path.is_dir() and fmt != OutputFormat.ZARR:
        raise InputFileError(f"{out_path}: a folder is in the way of the output file; remove or rename it")
    if out_path.exists() and not (overwrite or resume):
        fix = " or --resume to finish an interrupted run (complete frames are kept)" if fmt == OutputFormat.ZARR else ""
        raise InputFileError(
            f"{out_path}: the output exists; pass --overwrite to replace it{fix}, or choose another OUTPUT"
        )


# --- running ---------------------------------------------------------------------------------------------------
def load_denoiser(
    model: str | Path,
    backend: str = "auto",
    *,
    tile: int | None = None,
    threads: int | None = None,
    estimate: str | None = None,
) -> Denoiser:
    """The runtime's :class:`Denoiser` for ``model`` (ModelFileError naming the file when it is missing or bad;
    ``estimate``: blind or posterior, default the model's, see :mod:`emlive.export.estimates`)."""
    from emlive.export.runtime import Denoiser

    path = Path(model)
    if not path.exists():
        raise ModelFileError(
            f"{path}: no such model file; pass --model with a checkpoint (.ckpt/.pt) from `emlive train` or an "
            "exported model (.onnx, .engine)"
        )
    if path.is_dir():
        raise ModelFileError(f"{path}: is a folder; pass --model with the model file itself (.ckpt/.pt/.onnx/.engine)")
    return Denoiser.load(path, backend, threads=threads, tile=tile, estimate=estimate)


class FrameObserver(Protocol):
    """Sees each denoised frame as the runtime yields it (``emlive denoise --preview``: emlive.analysis.preview);
    it reads any raw frame it wants from ``movie`` itself, so nothing here holds more frames."""

    def begin(self, movie: Movie, start: int, stop: int) -> None: ...

    def frame(self, t: int, denoised: np.ndarray) -> None: ...


def _progress(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit="frame", disable=None if enabled else True, leave=False, dynamic_ncols=True
    )


def denoise_to_file(
    movie: Movie,
    output: str | Path,
    denoiser: Denoiser,
    *,
    dtype: np.dtype[Any] | str | type = np.float32,
    start: int = 0,
    stop: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    observer: FrameObserver | None = None,
    probabilistic: MovieEstimate | None = None,
) -> MovieReport:
    """Denoise frames ``start..stop-1`` of an open ``movie`` into ``output`` (.tif/.tiff/.mrc/.mrcs/.zarr), frame by
    frame. ``probabilistic`` (a head=gaussian model, :mod:`emlive.analysis.uncertainty`): the movie's estimate,
    its uncertainty map (written beside, frame by frame) and the predicted gain measured on every frame.

    Each denoised frame is appended to the file as soon as the runtime yields it; nothing holds more than the
    runtime's window of frames. The pixel size is kept. ``dtype`` is the output's pixel type (integers: rounded,
    clipped). Returns the timing (reading, denoising and writing together). A ``.zarr`` output is an OME-Zarr
    image written chunk by chunk (:func:`denoise_to_zarr`; ``resume`` continues an interrupted one).
    """
    out = Path(output)
    n, height, width = movie.shape
    stop = n if stop is None else stop
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputFileError(f"{out}: cannot create the folder {out.parent} ({exc}); choose another OUTPUT") from exc
    if out.suffix.lower() in ZARR_SUFFIXES:
        return denoise_to_zarr(
            movie, out, denoiser, dtype=dtype, start=start, stop=stop, overwrite=overwrite, resume=resume,
            progress=progress, observer=observer,
            estimate=None if probabilistic is None else probabilistic.estimate,
        )  # fmt: skip
    if resume:
        raise ConfigError(f"{out}: resume=True continues OME-Zarr outputs only; write {out.stem}.ome.zarr")
    frames = stop - start
    name = movie.path.name or str(movie.path)
    began = time.perf_counter()
    written = 0
    if observer is not None:
        observer.begin(movie, start, stop)
    std_writer = contextlib.nullcontext() if probabilistic is None else probabilistic.writer(
        (height, width), movie.pixel_size_nm, overwrite
    )
    with (
        open_writer(out, (height, width), dtype, movie.pixel_size_nm, overwrite=overwrite) as writer,
        std_writer as std,
        _progress(frames, name, progress) as bar,
    ):
        try:
            # every pixel type a reader returns is one the runtime takes (emlive.core.pixeltypes)
            results: Iterator[tuple[int, np.ndarray]] = (
                denoiser.denoise_movie(movie, start, stop)
                if probabilistic is None
                else probabilistic.frames(
                    denoiser.denoise_movie(movie, start, stop, uncertainty=True, estimate=probabilistic.estimate), std
                )
            )
            for t, frame in results:
                writer.append(frame)
                if observer is not None:
                    observer.frame(t, frame)
                written += 1
                bar.update(1)
                elapsed = time.perf_counter() - began
                if elapsed > 0:
                    bar.set_postfix_str(f"{written * height * width / 1e6 / elapsed:.2f} MP/s", refresh=False)
                logger.debug("frame %d written (%d/%d)", t, written, frames)
        except InputDataError as exc:  # the runtime's message names the frame; add the movie
            logger.error("%s: stopped after %d of %d frames; the file holds those frames only", out, written, frames)
            raise InputDataError(f"{movie.path}: {exc}") from exc
        except BaseException:
            if written < frames:
                logger.error(
                    "%s: stopped after %d of %d frames; the file holds those frames only", out, written, frames
                )
            raise
    seconds = time.perf_counter() - began
    if written != frames:
        raise RuntimeError(
            f"{out}: the runtime produced {written} frames for the range {start}:{stop} ({frames} expected); the "
            "output is incomplete: this is a bug, please report it"
        )
    return MovieReport(
        input=str(movie.path),
        output=str(out),
        format=OutputFormat.MRC.value if out.suffix.lower() in MRC_SUFFIXES else OutputFormat.TIFF.value,
        dtype=str(writer.dtype),
        frames=frames,
        start=start,
        stop=stop,
        height=height,
        width=width,
        pixel_size_nm=movie.pixel_size_nm,
        seconds=seconds,
    )


def _zarr_attributes(movie: Movie, denoiser: Denoiser, start: int, stop: int) -> dict[str, Any]:
    """What an OME-Zarr output records of its making: the source, its frames, the model and its card."""
    card = denoiser.card.model_dump(mode="json")
    return {
        "source": str(movie.path),
        "source_frames": [start, stop],
        "model": str(getattr(denoiser, "source", "")),
        "model_card": json.loads(json.dumps(card)),
    }


def open_zarr_output(
    out: Path,
    movie: Movie,
    denoiser: Denoiser,
    dtype: np.dtype[Any],
    start: int,
    stop: int,
    *,
    overwrite: bool = False,
    resume: bool = False,
) -> ZarrMovieStore:
    """The OME-Zarr store for frames ``start..stop-1`` of ``movie``: created, or (``resume``, when it exists)
    reopened after checking it was made from the same frames, shape, pixel type and model card."""
    shape = (stop - start, movie.shape[1], movie.shape[2])
    attributes = _zarr_attributes(movie, denoiser, start, stop)
    if not (resume and out.exists()):
        return ZarrMovieStore.create(
            out, shape, dtype, movie.pixel_size_nm, attributes=attributes, overwrite=overwrite
        )
    store = ZarrMovieStore.open(out)
    old = store.attributes
    checks = [
        ("frames (T, H, W)", list(store.shape), list(shape)),
        ("pixel type", str(store.dtype), str(np.dtype(dtype))),
        ("input frames [start, stop)", old.get("source_frames"), attributes["source_frames"]),
        ("model card", old.get("model_card"), attributes["model_card"]),
    ]
    for what, before, now in checks:
        if before != now:
            raise ConfigError(
                f"{out}: cannot resume: the store was written with {what} {before}, this run gives {now}; run the "
                "same command as before (input, --frames, --dtype, --model), or pass --overwrite to start again"
            )
    if old.get("source") != attributes["source"]:
        logger.info("%s: resuming a store made from %s with %s", out, old.get("source"), movie.path)
    return store


def denoise_to_zarr(
    movie: Movie,
    output: str | Path,
    denoiser: Denoiser,
    *,
    dtype: np.dtype[Any] | str | type = np.float32,
    start: int = 0,
    stop: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    observer: FrameObserver | None = None,
    estimate: Estimate | None = None,
) -> MovieReport:
    """Denoise frames ``start..stop-1`` into an OME-Zarr store, one chunk (frame) at a time as the runtime yields
    them (``estimate``: the denoiser's unless given). With ``resume`` an existing store of the same job keeps its
    complete frames and only the missing ones are computed (each missing run with its own window margins, so the
    result equals a clean run bit for bit)."""
    out = Path(output)
    n, height, width = movie.shape
    stop = n if stop is None else stop
    out_dtype = np.dtype(dtype)
    store = open_zarr_output(
        out, movie, denoiser, out_dtype, start, stop, overwrite=overwrite, resume=resume
    )
    ranges = store.missing_ranges()
    todo = sum(b - a for a, b in ranges)
    if todo < stop - start:
        logger.info("%s: resuming: %d of %d frames complete, writing %d", out, stop - start - todo, stop - start, todo)
    began = time.perf_counter()
    written = 0
    if observer is not None:
        observer.begin(movie, start, stop)
    with _progress(todo, movie.path.name or str(movie.path), progress) as bar:
        try:
            for a, b in ranges:
                for t, frame in denoiser.denoise_movie(movie, start + a, start + b, estimate=estimate):
                    store.write_frame(t - start, frame)
                    if observer is not None:
                        observer.frame(t, frame)
                    written += 1
                    bar.update(1)
        except InputDataError as exc:
            raise InputDataError(f"{movie.path}: {exc}") from exc
        finally:
            if written < todo:
                logger.error("%s: stopped after %d of %d frames; --resume writes only the rest", out, written, todo)
    if not store.finish():
        raise RuntimeError(f"{out}: frames {store.missing_ranges()} are still missing after the run: this is a bug")
    return MovieReport(
        input=str(movie.path), output=str(out), format=OutputFormat.ZARR.value, dtype=str(out_dtype),
        frames=written, start=start, stop=stop, height=height, width=width, pixel_size_nm=movie.pixel_size_nm,
        seconds=time.perf_counter() - began,
    )  # fmt: skip


def denoise_path(
    input: str | Path,
    output: str | Path,
    model: str | Path | Denoiser,
    *,
    backend: str = "auto",
    tile: int | None = None,
    dtype: OutputDtype | str = OutputDtype.FLOAT32,
    fmt: OutputFormat | str | None = None,
    gain: str | Path | None = None,
    frames: str | Sequence[int | None] | None = None,
    threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    resume: bool = False,
    observer: FrameObserver | None = None,
    estimate: Estimate | str | None = None,
    uncertainty: str | Path | None = None,
) -> DenoiseReport:
    """Denoise a movie, or every movie of a folder, with a trained model; returns what was done and how fast.

    ``input``: a movie file, a folder of single-page TIFFs, or a folder of movie files. ``output``: a movie file
    (.tif/.tiff/.mrc/.mrcs) or a folder (then named after the input's stem; a folder INPUT needs a folder). ``model``:
    a checkpoint (.ckpt/.pt), an exported model (.onnx; .engine on a GPU) or a loaded ``Denoiser`` (``backend``,
    ``tile`` and ``threads`` then do not apply). ``dtype``: "float32" or "input" (the input file's type, rounded
    and clipped). ``fmt``: "tif" or "mrc" instead of the input's format. ``gain``: a gain reference multiplying
    every raw frame. ``frames``: "a:b" or (a, b), frames a..b-1 of each movie (the windows still read the frames
    around them). ``resume``: an existing OME-Zarr output of the same job keeps its complete frames and only the
    missing ones are computed. ``observer`` sees every denoised frame (``--preview``). ``estimate``: blind or
    posterior for a probabilistic (head=gaussian) model (default: the posterior where the card has a noise model;
    given, a failed noise check only warns), ``uncertainty``: a file or folder for the std maps
    (:mod:`emlive.analysis.uncertainty`). Everything is checked before the first frame is computed; errors are
    EmliveError subclasses.
    """
    input_path = Path(input)
    out_path = Path(output)
    out_fmt = as_output_format(fmt)
    out_dtype = as_output_dtype(dtype)
    if frames is None or isinstance(frames, str):
        frame_range = parse_frames(frames)
    else:
        if len(frames) != 2:
            raise ConfigError(f"frames={frames!r}: give (start, stop), e.g. (0, 100), or the text 'a:b'")
        frame_range = (frames[0], frames[1])
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads}: use at least 1 thread, or leave it out to use every core")
    gain_image = None
    if gain is not None:
        if not Path(gain).exists():
            raise InputFileError(f"{gain}: no such gain reference; check the --gain path")
        gain_image = load_gain(gain)
    jobs = plan_jobs(input_path, out_path, out_fmt, out_dtype, frame_range, overwrite, gain_image, resume=resume)

    std_paths: list[Path | None] = [None] * len(jobs)
    if uncertainty is not None:
        std_paths = [*uncertainty_paths([(j.input, j.output) for j in jobs], Path(uncertainty), overwrite=overwrite,
                                        resume=resume)]  # fmt: skip
    began = time.perf_counter()
    if isinstance(model, str | Path):
        denoiser = load_denoiser(model, backend, tile=tile, threads=threads, estimate=estimate)
        model_name = str(model)
    else:
        denoiser = model
        model_name = str(getattr(model, "source", type(model).__name__))
    load_seconds = time.perf_counter() - began
    chosen = denoiser.check_estimate(estimate)  # the model's default unless given (ConfigError naming the fix)
    if uncertainty is not None:
        needs_variance_head(denoiser.card, model_name)
    logger.info(
        "model %s: %d-frame windows, backend %s on %s, tile %d px (loaded in %.2f s)",
        model_name, denoiser.frames, denoiser.backend, denoiser.device, denoiser.tile, load_seconds,
    )  # fmt: skip
    report = DenoiseReport(
        model=model_name,
        backend=str(denoiser.backend),
        device=str(denoiser.device),
        model_frames=int(denoiser.frames),
        tile=int(denoiser.tile),
        load_seconds=load_seconds,
    )
    for job, std_path in zip(jobs, std_paths, strict=True):
        with open_movie(job.input) as movie:
            if gain_image is not None:
                movie.set_gain(gain_image)
            probabilistic = movie_estimate(
                movie, denoiser, job.start, job.stop, chosen, forced=estimate is not None, uncertainty=std_path
            )
            t, h, w = movie.shape
            if t < denoiser.frames:
                logger.info(
                    "%s: %d frame(s), fewer than the model's %d: windows repeat the other frames (never the center)",
                    job.input, t, denoiser.frames,
                )  # fmt: skip
            logger.info(
                "denoising %s (frames %d..%d of %d, %d x %d %s, pixel %s nm) -> %s (%s, %s)",
                job.input, job.start, job.stop - 1, t, h, w, movie.dtype,
                "unknown" if movie.pixel_size_nm is None else f"{movie.pixel_size_nm:g}",
                job.output, job.format.name, job.dtype,
            )  # fmt: skip
            result = denoise_to_file(
                movie,
                job.output,
                denoiser,
                dtype=job.dtype,
                start=job.start,
                stop=job.stop,
                overwrite=overwrite,
                progress=progress,
                resume=resume,
                observer=observer,
                probabilistic=probabilistic,
            )
        logger.info(
            "wrote %s: %d frames in %.2f s (%.2f frames/s, %.2f MP/s)",
            result.output, result.frames, result.seconds, result.frames_per_second, result.megapixels_per_second,
        )  # fmt: skip
        if probabilistic is not None:
            log_movie(result.output, probabilistic)
            result = replace(result, **probabilistic.report())
        report.movies.append(result)
    return report
