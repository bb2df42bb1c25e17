"""Batch denoising on a cluster: ``emlive denoise INPUT [INPUT ...] -o OUTDIR --cluster SPEC`` or ``--shard i/N``.

The movies are cut into shards (whole movies, or frame ranges of ``--shard-frames`` frames: a movie of fewer than
``2 * K`` frames is one shard). Each shard is one task: it denoises its frame range with
:meth:`emlive.export.runtime.Denoiser.denoise_movie` (the runtime reads the mirrored-window margins around the
range itself, so a range gives exactly the frames of a whole run) and writes them, as float32, to a part file
under ``OUTDIR/.emlive-batch/`` (written under a temporary name, fsynced, renamed when complete). When every part
of a movie is there, the movie is assembled from its parts by the same writer the single-process path uses, so the
output is bit-identical to ``emlive denoise`` without ``--cluster`` (same files, same bytes); then its parts are
removed. Each :class:`OutputKind` (:data:`SHARD_WRITERS`, one per format) has its "write shard frames", "is a
recorded shard intact", "assemble" and "is a recorded movie intact" functions: OME-Zarr shards write their chunks
in place (:class:`emlive.core.zarrio.ZarrMovieStore`, created by the first shard under a lock, with the
single-process path's metadata) and assembling only marks the store complete; no parts.

Engines, never a home-made scheduler: ``--cluster`` runs the tasks on Dask distributed (``local:N``: a
LocalCluster of N worker processes with one thread each; ``tcp://HOST:PORT``: a running scheduler; ``slurm:N`` /
``pbs:N``: N workers through dask-jobqueue, configured by its jobqueue.yaml). The model goes to the tasks as its
path only: each worker process loads it once (a per-process cache keyed by path, backend, tile and threads) and
reuses it for every task it runs. ``--shard i/N`` (plain SLURM array jobs) runs, in this process, the shards whose
index % N == i; every array task shares the manifest, and the one that completes a movie's last part assembles it.

The manifest ``OUTDIR/emlive-manifest.jsonl`` is append-only (one JSON object a line, written with one
``write`` under an exclusive lock and fsynced, so a killed job leaves at most a torn last line, which is ignored):
the job's identity (inputs with size and modification time, the model path and its SHA-256, backend, tile, pixel
type, format, gain, frame range, shard size, emlive version), then one line per finished shard (its part's size
and BLAKE2b hash) and per assembled movie. A re-run of the same job skips the shards whose part is there with the
recorded size and hash, and the movies already assembled; a re-run with another model or other options is refused
(``--overwrite`` starts the job afresh). Parts live on the output folder, so workers and the client need a shared
file system (as on any cluster).

A probabilistic (``network.head=gaussian``) model gives each movie the estimate single-process ``emlive denoise``
gives it: the noise check (:func:`emlive.analysis.uncertainty.movie_estimate`, on the movie's whole frame range) is
run by the worker that denoises the movie's first shard it gets, cached per (model, gain, movie, range) in that
process, and decides posterior or blind (``--estimate`` forces one: the check then only warns); the variance
head's calibration measured on the movie (after a passed check) is cached with the decision and used by each of
its shards. Both are deterministic (same frames, same engine), so every shard, worker, array task and re-run
decides and calibrates the same; each shard's estimate is recorded in the manifest and a movie whose shards
disagree is refused before it is assembled.

``--uncertainty PATH`` (such a model only: a model without a variance head is refused before any work, with the
single-process message, :func:`emlive.export.estimates.needs_variance_head` on the card the driver reads) gives each
movie the uncertainty map single-process ``emlive denoise`` writes, bit for bit: the same names
(:func:`emlive.analysis.uncertainty.uncertainty_paths`: a folder gets each map under its movie's output name, a
file suffix is for one movie only; TIFF and MRC outputs), the std of each output frame in the movie's estimate.
Each shard writes its map part (float32) beside its denoised part, both from one pass of the runtime; the map
part's size and BLAKE2b hash are recorded on the shard's manifest line, a re-run redoes a shard whose map part is
missing or changed, and the movie's line records its map. The map is assembled with the movie, by the same writer
as the single-process map. PATH is part of the job's identity (another PATH, or none, is another job).

Dask is imported only here, and only when a cluster is asked for: the rest of emlive never imports it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emlive import __version__
from emlive.analysis.denoise import (
    DenoiseJob,
    OutputDtype,
    OutputFormat,
    as_output_dtype,
    as_output_format,
    load_denoiser,
    parse_frames,
    plan_jobs,
)
from emlive.analysis.uncertainty import movie_estimate, uncertainty_paths
from emlive.core.errors import ConfigError, InputFileError
from emlive.core.posterior import Estimate, PriorCalibration
from emlive.core.readers import Movie, load_gain, open_movie
from emlive.core.writers import open_writer
from emlive.export.estimates import needs_variance_head

if TYPE_CHECKING:
    from emlive.export.runtime import Denoiser

logger = logging.getLogger(__name__)

MANIFEST_NAME = "emlive-manifest.jsonl"
PARTS_DIR = ".emlive-batch"
DEFAULT_SHARD_FRAMES = 128
PART_DTYPE = np.dtype("<f4")  # what the runtime yields; the writer converts to the output's pixel type


# --- the --cluster and --shard grammars (one place each) ---------------------------------------------------------
class ClusterKind(StrEnum):
    """Where ``--cluster`` runs the tasks."""

    LOCAL = "local"
    ADDRESS = "address"
    SLURM = "slurm"
    PBS = "pbs"


CLUSTER_GRAMMAR = (
    "local:N (N worker processes on this machine), tcp://HOST:PORT (a running dask scheduler), or slurm:N / pbs:N "
    "(N workers through dask-jobqueue), e.g. --cluster local:4"
)
_ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx|ws|wss)://\S+$")


@dataclass(frozen=True)
class ClusterSpec:
    """A parsed ``--cluster`` value."""

    kind: ClusterKind
    workers: int = 0  # local, slurm, pbs
    address: str | None = None  # a scheduler address

    @classmethod
    def parse(cls, text: str) -> ClusterSpec:
        """``local:N``, ``slurm:N``, ``pbs:N`` (N >= 1) or a scheduler address; ConfigError naming the grammar."""
        value = text.strip()
        if _ADDRESS.match(value):
            return cls(ClusterKind.ADDRESS, address=value)
        name, sep, count = value.partition(":")
        kinds = {k.value: k for k in ClusterKind if k is not ClusterKind.ADDRESS}
        if not sep or name.lower() not in kinds:
            raise ConfigError(f"--cluster {text!r} is not a cluster; use {CLUSTER_GRAMMAR}")
        try:
            workers = int(count)
        except ValueError:
            raise ConfigError(
                f"--cluster {text!r}: {count!r} is not a number of workers; use {CLUSTER_GRAMMAR}"
            ) from None
        if workers < 1:
            raise ConfigError(f"--cluster {text!r}: needs at least 1 worker; use {CLUSTER_GRAMMAR}")
        return cls(kinds[name.lower()], workers=workers)


@dataclass(frozen=True)
class ShardSpec:
    """A parsed ``--shard i/N``: this process runs the shards whose index % N == i (0 <= i < N)."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        rule = "use --shard i/N with 0 <= i < N, e.g. --shard $SLURM_ARRAY_TASK_ID/8 in an array job of 8 tasks (0-7)"
        a, sep, b = text.strip().partition("/")
        try:
            index, count = int(a), int(b)
        except ValueError:
            raise ConfigError(f"--shard {text!r} is not i/N; {rule}") from None
        if not sep or count < 1 or not 0 <= index < count:
            raise ConfigError(f"--shard {text!r}: {index} is not in 0..{count - 1}; {rule}")
        return cls(index, count)

    def takes(self, shard_index: int) -> bool:
        return shard_index % self.count == self.index


# --- options, shards, results ------------------------------------------------------------------------------------
class BatchOptions(BaseModel):
    """What a batch job does besides its inputs and output folder (checked; unknown keys rejected)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = "auto"
    tile: int | None = Field(default=None, ge=1)
    threads: int | None = Field(default=None, ge=1)
    dtype: OutputDtype = OutputDtype.FLOAT32
    fmt: OutputFormat | None = None
    frames: tuple[int | None, int | None] = (None, None)
    shard_frames: int = Field(default=DEFAULT_SHARD_FRAMES, ge=1, le=1_000_000)
    estimate: Estimate | None = None  # --estimate: forced (the noise check then only warns); None: per movie
    uncertainty: Path | None = None  # --uncertainty: a file (one movie) or a folder for the maps
    overwrite: bool = False
    progress: bool = True


@dataclass(frozen=True)
class ModelRef:
    """What a worker needs to load the model itself: its path and how to run it (never the model)."""

    path: str
    backend: str = "auto"
    tile: int | None = None
    threads: int | None = None


@dataclass(frozen=True)
class Shard:
    """One task: frames ``start..stop-1`` of one movie, written to ``part``."""

    index: int
    key: str
    movie: int
    input: str
    part: str
    start: int
    stop: int
    height: int
    width: int
    output: str = ""  # the movie's output, its pixel type and its whole frame range (chunked formats write there)
    dtype: str = "float32"
    first: int = 0
    last: int = 0
    map_part: str = ""  # --uncertainty: the part of the movie's uncertainty map (empty: no map)

    @property
    def frames(self) -> int:
        return self.stop - self.start

    @property
    def part_paths(self) -> tuple[str, ...]:
        """The files this shard writes, in the order of :func:`write_parts`: its denoised frames, then its map's."""
        return (self.part, self.map_part) if self.map_part else (self.part,)

    @property
    def part_bytes(self) -> int:
        return self.frames * self.height * self.width * PART_DTYPE.itemsize


@dataclass(frozen=True)
class PartResult:
    """What a finished shard task returns (and the manifest records)."""

    key: str
    movie: int
    bytes: int
    blake2b: str
    frames: int
    seconds: float
    worker: str
    estimate: str | None = None  # the movie's estimate for a probabilistic model (the same for all its shards)
    map_bytes: int | None = None  # --uncertainty: the map part's size and hash
    map_blake2b: str | None = None


@dataclass
class BatchReport:
    """What :func:`denoise_batch` did: which shards ran, which were skipped, which movies were written."""

    shards: int
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    maps: list[str] = field(default_factory=list)  # --uncertainty: the maps written with those movies
    frames: int = 0
    seconds: float = 0.0  # wall time of the job, first task submitted to last movie written
    busy_seconds: float = 0.0  # the shard tasks' own time, summed over the workers
    workers: dict[str, int] = field(default_factory=dict)  # worker -> shards it ran
    estimates: dict[str, str] = field(default_factory=dict)  # output -> estimate (probabilistic models only)

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "frames_per_second": self.frames_per_second}


# --- the per-worker model cache (a worker process loads each model once) -----------------------------------------
_DENOISERS: dict[ModelRef, Denoiser] = {}
_CACHE_LOCK = threading.Lock()
_ENGINE_LOCKS: dict[ModelRef, threading.Lock] = {}  # a Denoiser is not thread-safe: one task at a time uses it
_GAINS: dict[str, np.ndarray] = {}
_ESTIMATES: dict[tuple[Any, ...], tuple[Estimate | None, PriorCalibration | None]] = {}
"""(model, movie, range, gain, --estimate) -> the movie's decision and the variance head's calibration it uses"""
LOADS: dict[ModelRef, int] = {}  # how many times this process loaded each model (tests, logs)


def worker_denoiser(ref: ModelRef) -> Denoiser:
    """The :class:`Denoiser` for ``ref`` in this process, loaded from its path on first use."""
    with _CACHE_LOCK:
        denoiser = _DENOISERS.get(ref)
        if denoiser is None:
            denoiser = load_denoiser(ref.path, ref.backend, tile=ref.tile, threads=ref.threads)
            _DENOISERS[ref] = denoiser
            _ENGINE_LOCKS[ref] = threading.Lock()
            LOADS[ref] = LOADS.get(ref, 0) + 1
            logger.info("process %d loaded %s (%s on %s)", os.getpid(), ref.path, denoiser.backend, denoiser.device)
    return denoiser


def warm_up(ref: ModelRef) -> str:
    """Load the model in this process now (``client.run(warm_up, ref)`` on every worker); returns its engine."""
    denoiser = worker_denoiser(ref)
    return f"{denoiser.backend} on {denoiser.device}"


def model_loads() -> dict[str, int]:
    """Loads per model path in this process (run on every worker by the tests: one load per worker)."""
    return {ref.path: n for ref, n in LOADS.items()}


def _worker_gain(path: str | None) -> np.ndarray | None:
    if path is None:
        return None
    if path not in _GAINS:
        _GAINS[path] = load_gain(path)
    return _GAINS[path]


# --- output kinds: write a shard's frames, assemble a movie ------------------------------------------------------
def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


class _PartFile:
    """One part file being written: under a temporary name, hashed (BLAKE2b) as it goes, renamed when complete."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp = path, _tmp_name(path)
        self.digest = hashlib.blake2b(digest_size=20)
        self.size = 0
        self._fh = self.tmp.open("wb")

    def append(self, where: str, t: int, frame: np.ndarray) -> None:
        if frame.dtype != np.float32:
            raise RuntimeError(f"{where}: the runtime gave frame {t} as {frame.dtype}, not float32: a bug")
        data = np.ascontiguousarray(frame, dtype=PART_DTYPE).tobytes()
        self._fh.write(data)
        self.digest.update(data)
        self.size += len(data)

    def commit(self, shard: Shard) -> tuple[int, str]:
        """fsync, check the size, rename to the part's name; (bytes, blake2b)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        if self.size != shard.part_bytes:
            raise RuntimeError(
                f"{shard.input}: shard {shard.key} gave {self.size} bytes for {self.path.name}, {shard.part_bytes} "
                "expected: a bug"
            )
        os.replace(self.tmp, self.path)
        _fsync_dir(self.path.parent)
        return self.size, self.digest.hexdigest()

    def discard(self) -> None:
        self._fh.close()
        self.tmp.unlink(missing_ok=True)


def write_parts(shard: Shard, frames: Iterable[tuple[int, Sequence[np.ndarray]]]) -> list[tuple[int, str]]:
    """Write a shard's float32 frames to its part files (:attr:`Shard.part_paths`: each ``(t, planes)`` gives one
    frame to each, the denoised frame and, with a map, its std); each is written under a temporary name, fsynced and
    renamed when complete (all or none). Returns (bytes, blake2b) per file."""
    files = [_PartFile(Path(p)) for p in shard.part_paths]
    try:
        for t, planes in frames:
            for part, plane in zip(files, planes, strict=True):
                part.append(shard.input, t, plane)
        return [part.commit(shard) for part in files]
    except BaseException:
        for part in files:
            part.discard()
        raise


def part_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class MovieTarget:
    """One movie's output: where, in which pixel type, from which parts (in frame order); with --uncertainty, its
    map (float32) and the map's parts."""

    output: str
    dtype: str
    pixel_size_nm: float | None
    height: int
    width: int
    parts: tuple[tuple[str, int], ...]  # (part path, frames)
    map_output: str | None = None
    map_parts: tuple[tuple[str, int], ...] = ()

    def files(self) -> list[tuple[Path, str, tuple[tuple[str, int], ...]]]:
        """(file, pixel type, parts) of what is assembled: the map first, then the movie (whose record says all
        is written)."""
        movie = (Path(self.output), self.dtype, self.parts)
        return [movie] if self.map_output is None else [(Path(self.map_output), "float32", self.map_parts), movie]


def _assembling_name(out: Path, folder: Path) -> Path:
    """A temporary name in ``folder`` for assembling ``out`` (its suffix kept: the writer's format)."""
    return folder / f".{out.stem}.assembling-{os.getpid()}-{uuid.uuid4().hex[:8]}{out.suffix}"


def assemble_file(target: MovieTarget) -> str:
    """Write the movie, and its map, from their parts with the single-process path's writers: each into a temporary
    file (the movie's in the parts folder, the map's beside it: no rename across file systems), fsynced, renamed."""
    shape = (target.height, target.width)
    for out, dtype, parts in target.files():
        tmp = _assembling_name(out, Path(parts[0][0]).parent if out == Path(target.output) else out.parent)
        with open_writer(tmp, shape, dtype, target.pixel_size_nm) as writer:
            for part, frames in parts:
                data = np.memmap(part, dtype=PART_DTYPE, mode="r", shape=(frames, *shape))
                for frame in data:
                    writer.append(np.asarray(frame, dtype=np.float32))
                del data
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, out)
        _fsync_dir(out.parent)
    return target.output


def _file_shard(shard: Shard, movie: Movie, denoiser: Denoiser, estimate: Estimate | None) -> list[tuple[int, str]]:
    if not shard.map_part:
        plain = denoiser.denoise_movie(movie, shard.start, shard.stop, estimate=estimate)
        return write_parts(shard, ((t, (frame,)) for t, frame in plain))
    # one pass gives the frame and its std (emlive.analysis.uncertainty.MovieEstimate.frames writes the same)
    found = denoiser.denoise_movie(movie, shard.start, shard.stop, uncertainty=True, estimate=estimate)
    return write_parts(shard, ((t, (d.mean, d.std)) for t, d in found))


def _intact(path: str, expected: int, record_bytes: Any, record_hash: Any) -> bool:
    part = Path(path)
    if not part.is_file() or part.stat().st_size != expected or record_bytes != expected:
        return False
    return part_digest(part) == record_hash


def _valid_part(shard: Shard, record: dict[str, Any]) -> bool:
    """The shard's part, and its map part, are on disk with the recorded size and hash."""
    if not _intact(shard.part, shard.part_bytes, record.get("bytes"), record.get("blake2b")):
        return False
    return not shard.map_part or _intact(shard.map_part, shard.part_bytes, record.get("map_bytes"),
                                         record.get("map_blake2b"))  # fmt: skip


def _valid_file(output: str, record: dict[str, Any]) -> bool:
    """The movie, and its map when it has one, are on disk with the recorded sizes."""
    files = [(output, record.get("bytes"))]
    if record.get("map") is not None:
        files.append((record["map"], record.get("map_bytes")))
    return all(Path(path).is_file() and Path(path).stat().st_size == size for path, size in files)


def _zarr_shard(shard: Shard, movie: Movie, denoiser: Denoiser, estimate: Estimate | None) -> list[tuple[int, str]]:
    """Write a shard's frames straight into the movie's OME-Zarr store (created by the first shard, under a lock)."""
    from emlive.analysis.denoise import open_zarr_output
    from emlive.core.zarrio import ZarrMovieStore

    out = Path(shard.output)
    fd = os.open(Path(shard.part).parent / f"{shard.movie:04d}.create.lock", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one creator; the others open what it made
        if out.exists():
            store = ZarrMovieStore.open(out)
        else:
            store = open_zarr_output(out, movie, denoiser, np.dtype(shard.dtype), shard.first, shard.last)
    finally:
        os.close(fd)
    for t, frame in denoiser.denoise_movie(movie, shard.start, shard.stop, estimate=estimate):
        store.write_frame(t - shard.first, frame)
    return [(shard.frames * shard.height * shard.width * store.dtype.itemsize, "zarr")]


def _zarr_shard_done(shard: Shard, record: dict[str, Any]) -> bool:
    from emlive.core.zarrio import ZarrMovieStore

    if not Path(shard.output).is_dir():
        return False
    done = ZarrMovieStore.open(shard.output).complete_frames()
    return bool(done[shard.start - shard.first : shard.stop - shard.first].all())


def _zarr_finish(target: MovieTarget) -> str:
    from emlive.core.zarrio import ZarrMovieStore

    if not ZarrMovieStore.open(target.output).finish():
        raise RuntimeError(f"{target.output}: frames are missing after every shard finished: this is a bug")
    return target.output


def _zarr_finished(output: str, record: dict[str, Any]) -> bool:
    from emlive.core.zarrio import ZarrMovieStore

    return Path(output).is_dir() and bool(ZarrMovieStore.open(output).attributes.get("complete"))


@dataclass(frozen=True)
class OutputKind:
    """How one output format gets a shard's frames and becomes a movie (the seam for each format)."""

    # on a worker: (bytes, hash) of each file written (Shard.part_paths)
    write_shard: Callable[[Shard, Movie, Denoiser, Estimate | None], list[tuple[int, str]]]
    shard_done: Callable[[Shard, dict[str, Any]], bool]  # is a recorded shard intact on disk (resume)?
    assemble: Callable[[MovieTarget], str]  # once every shard is done
    finished: Callable[[str, dict[str, Any]], bool]  # is a recorded movie intact on disk (resume)?


_FILE = OutputKind(_file_shard, _valid_part, assemble_file, _valid_file)  # part files, then one writer
# One entry per format. OME-Zarr: the shards write their chunks in place; assembling marks the store complete.
SHARD_WRITERS: dict[str, OutputKind] = {
    OutputFormat.TIFF.value: _FILE,
    OutputFormat.MRC.value: _FILE,
    OutputFormat.ZARR.value: OutputKind(_zarr_shard, _zarr_shard_done, _zarr_finish, _zarr_finished),
}


def _kind(fmt: str) -> OutputKind:
    try:
        return SHARD_WRITERS[fmt]
    except KeyError:
        raise ConfigError(
            f"output format {fmt!r} cannot be written by a batch job (--cluster/--shard/several inputs) yet; use "
            f"--format {' or --format '.join(SHARD_WRITERS)}, or denoise each movie on its own"
        ) from None


# --- the tasks (run on the workers; arguments are paths and numbers only) ----------------------------------------
def run_shard(
    shard: Shard, model: ModelRef, gain: str | None, fmt: str, estimate: Estimate | None = None
) -> PartResult:
    """Denoise one shard's frame range into its part (the model and gain come from this process's cache) with the
    movie's estimate (:func:`movie_decision`; ``estimate``: the one --estimate forces)."""
    began = time.perf_counter()
    denoiser = worker_denoiser(model)
    with _ENGINE_LOCKS[model], open_movie(shard.input) as movie:  # a worker with several threads: one at a time
        gain_image = _worker_gain(gain)
        if gain_image is not None:
            movie.set_gain(gain_image)
        chosen = movie_decision(shard, movie, denoiser, (model, gain), estimate)
        (size, digest), *of_map = _kind(fmt).write_shard(shard, movie, denoiser, chosen)
    seconds = time.perf_counter() - began
    worker = f"{os.uname().nodename}:{os.getpid()}"
    logger.info("shard %s (%d frames) done in %.2f s on %s", shard.key, shard.frames, seconds, worker)
    map_size, map_digest = of_map[0] if of_map else (None, None)
    return PartResult(shard.key, shard.movie, size, digest, shard.frames, seconds, worker,
                      None if chosen is None else chosen.value, map_size, map_digest)  # fmt: skip


def movie_decision(
    shard: Shard, movie: Movie, denoiser: Denoiser, engine: tuple[ModelRef, str | None], requested: Estimate | None
) -> Estimate | None:
    """The estimate of the shard's movie, decided as single-process ``emlive denoise`` decides it: by
    :func:`emlive.analysis.uncertainty.movie_estimate` (the noise check on the movie's whole frame range
    ``first..last``, not the shard's: deterministic, so every shard, worker, array task and re-run decides the
    same), once per (model, gain, movie file, range, --estimate) in this process. None for a plain model.

    Decided on the worker rather than by the driver: the driver never loads the model (it may have no GPU), and a
    re-run recomputes the same decision, so a resume needs nothing recorded; each shard's decision still goes to
    the manifest, and a movie whose shards disagree is refused before it is assembled (:func:`_check_estimates`).
    """
    st = os.stat(shard.input)
    key = (*engine, shard.input, st.st_size, st.st_mtime_ns, shard.first, shard.last, requested)
    if key not in _ESTIMATES:
        chosen = denoiser.check_estimate(requested)
        found = movie_estimate(
            movie, denoiser, shard.first, shard.last, chosen, forced=requested is not None, uncertainty=None
        )
        _ESTIMATES[key] = (None if found is None else found.estimate, denoiser.calibration)
    decided, denoiser.calibration = _ESTIMATES[key]  # the movie's own calibration (measured on its whole range)
    return decided


def assemble_movie(target: MovieTarget, fmt: str) -> str:
    """Assemble one movie from its parts (the driver removes them once the manifest records the movie)."""
    return _kind(fmt).assemble(target)


def remove_parts(target: MovieTarget) -> None:
    """Remove a movie's parts (and its map's) and the temp files a killed task or assembly left."""
    for part, _ in (*target.parts, *target.map_parts):
        for leftover in Path(part).parent.glob(Path(part).name + "*"):
            leftover.unlink(missing_ok=True)
    for out, _, parts in target.files():
        for folder in {out.parent, Path(parts[0][0]).parent}:
            for leftover in folder.glob(f".{out.stem}.assembling-*{out.suffix}"):
                leftover.unlink(missing_ok=True)


# --- the manifest ------------------------------------------------------------------------------------------------
class Manifest:
    """``OUTDIR/emlive-manifest.jsonl``: the job's identity, then one line per finished shard or movie."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                logger.warning("%s: line %d is torn (a killed job); ignored", self.path, n)
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, sort_keys=True) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock

    def identity(self) -> dict[str, Any] | None:
        for record in self.records():
            if record.get("kind") == "job":
                return dict(record["identity"])
        return None

    def done(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """(finished shards by key, assembled movies by output path), as recorded."""
        shards: dict[str, dict[str, Any]] = {}
        movies: dict[str, dict[str, Any]] = {}
        for record in self.records():
            if record.get("kind") == "shard":
                shards[record["key"]] = record
            elif record.get("kind") == "movie":
                movies[record["output"]] = record
        return shards, movies


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _stat(path: Path) -> dict[str, Any]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        return {"size": sum(p.stat().st_size for p in files), "mtime_ns": max((p.stat().st_mtime_ns for p in files),
                                                                               default=0), "files": len(files)}
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def job_identity(
    jobs: Sequence[DenoiseJob], model: Path, gain: Path | None, options: BatchOptions, frames_text: str
) -> dict[str, Any]:
    """Everything that decides the output's bytes (threads do not: the engines give the same bits); the
    uncertainty PATH only when given (a job without maps keeps the identity it always had)."""
    maps = {} if options.uncertainty is None else {"uncertainty": str(options.uncertainty.resolve())}
    return {
        "emlive": __version__,
        "model": {"path": str(model.resolve()), "sha256": _file_sha256(model)},
        "backend": options.backend,
        "tile": options.tile,
        "dtype": options.dtype.value,
        "format": None if options.fmt is None else options.fmt.value,
        "gain": None if gain is None else {"path": str(gain.resolve()), "sha256": _file_sha256(gain)},
        "frames": frames_text,
        "shard_frames": options.shard_frames,
        "estimate": None if options.estimate is None else options.estimate.value,
        **maps,
        "movies": [
            {"input": str(j.input.resolve()), **_stat(j.input), "output": str(j.output.resolve()), "start": j.start,
             "stop": j.stop, "format": j.format.value, "dtype": str(j.dtype)}
            for j in jobs
        ],
    }  # fmt: skip


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


# --- planning ----------------------------------------------------------------------------------------------------
def plan_inputs(
    inputs: Sequence[Path], outdir: Path, fmt: OutputFormat | None, dtype: OutputDtype,
    frames: tuple[int | None, int | None], gain: np.ndarray | None,
) -> list[DenoiseJob]:  # fmt: skip
    """Every movie of every input, each to ``outdir/<its name>``; refuses two inputs writing one output."""
    if outdir.suffix and not outdir.is_dir():
        raise InputFileError(
            f"{outdir}: a batch job writes into a folder (each movie under its own name, plus the manifest "
            f"{MANIFEST_NAME}); give -o a folder name without the {outdir.suffix} suffix"
        )
    jobs: list[DenoiseJob] = []
    seen: dict[Path, Path] = {}
    for path in inputs:
        for job in plan_jobs(Path(path), outdir, fmt, dtype, frames, True, gain):
            _kind(job.format.value)  # a format batch jobs cannot write yet is refused before any work
            key = job.output.resolve()
            if key in seen:
                raise InputFileError(
                    f"{job.output}: both {seen[key]} and {job.input} would be written here (same name); rename one "
                    "of them or denoise them into different folders"
                )
            seen[key] = job.input
            jobs.append(job)
    return jobs


def split_jobs(jobs: Sequence[DenoiseJob], shard_frames: int, parts_dir: Path, with_maps: bool = False) -> list[Shard]:
    """Cut every movie into ranges of ``shard_frames`` to ``2 * shard_frames - 1`` frames (whole when shorter);
    ``with_maps``: each shard also writes a map part (--uncertainty)."""
    shards: list[Shard] = []
    for m, job in enumerate(jobs):
        n = job.stop - job.start
        count = max(1, n // shard_frames)
        bounds = [job.start + (n * i) // count for i in range(count + 1)]
        for a, b in itertools.pairwise(bounds):
            key = f"{m:04d}:{a}-{b}"
            part = parts_dir / f"{m:04d}-{job.output.name}.{a:09d}-{b:09d}.part"
            map_part = part.with_suffix(".std.part") if with_maps else ""
            shards.append(Shard(len(shards), key, m, str(job.input), str(part), a, b, job.shape[1], job.shape[2],
                                str(job.output), str(job.dtype), job.start, job.stop, str(map_part)))  # fmt: skip
    return shards


def _target(
    job: DenoiseJob, shards: Sequence[Shard], pixel_size_nm: float | None, map_output: Path | None
) -> MovieTarget:
    return MovieTarget(
        str(job.output), str(job.dtype), pixel_size_nm, job.shape[1], job.shape[2],
        tuple((s.part, s.frames) for s in shards), None if map_output is None else str(map_output),
        tuple((s.map_part, s.frames) for s in shards if s.map_part),
    )  # fmt: skip


# --- running -----------------------------------------------------------------------------------------------------
@dataclass
class _State:
    """The driver's view of the job while it runs."""

    jobs: list[DenoiseJob]
    shards: list[Shard]
    targets: list[MovieTarget]
    manifest: Manifest
    fmt_of: list[str]
    done: set[str] = field(default_factory=set)
    assembled: set[str] = field(default_factory=set)
    by_movie: dict[int, list[Shard]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for s in self.shards:
            self.by_movie.setdefault(s.movie, []).append(s)

    def movie_shards(self, m: int) -> list[Shard]:
        return self.by_movie.get(m, [])

    def complete(self, m: int) -> bool:
        return all(s.key in self.done for s in self.movie_shards(m)) and self.targets[m].output not in self.assembled


def _recorded(state: _State) -> None:
    """Fill ``state.done`` / ``state.assembled`` from the manifest, keeping only what is on disk intact."""
    shards, movies = state.manifest.done()
    kinds = {t.output: _kind(fmt) for t, fmt in zip(state.targets, state.fmt_of, strict=True)}
    state.assembled = {o for o, r in movies.items() if o in kinds and kinds[o].finished(o, r)}
    finished = {t.output for t in state.targets if t.output in state.assembled}
    for shard in state.shards:
        if shard.key in state.done:
            continue  # checked before (parts are hashed once)
        whole = state.targets[shard.movie].output in finished
        kind = _kind(state.fmt_of[shard.movie])
        if whole or (shard.key in shards and kind.shard_done(shard, shards[shard.key])):
            state.done.add(shard.key)


def _check_outputs(targets: Sequence[MovieTarget], overwrite: bool) -> None:
    """A new job: refuse outputs and maps in the way (or, with --overwrite, remove the stores that would be
    reopened)."""
    for target in targets:
        for out, _, _ in target.files():
            if not out.exists():
                continue
            if not overwrite:
                raise InputFileError(
                    f"{out}: the {'uncertainty map' if str(out) == target.map_output else 'output'} exists and this "
                    "folder's manifest did not write it; pass --overwrite to replace it, or choose another output "
                    "folder"
                )
            if out.is_dir():  # an OME-Zarr store: the shards would reopen it (files are replaced when assembled)
                shutil.rmtree(out)


def _open_manifest(
    outdir: Path, identity: dict[str, Any], overwrite: bool, shard: ShardSpec | None
) -> tuple[Manifest, bool]:
    """The folder's manifest, and whether the job is new there (its identity line not yet written)."""
    manifest = Manifest(outdir / MANIFEST_NAME)
    old = manifest.identity()
    if old is not None and old != identity:
        if not overwrite:
            raise ConfigError(
                f"{manifest.path}: this folder holds a job with other settings (differs in: "
                f"{', '.join(_differences(old, identity))}); pass --overwrite to start this job afresh there, or "
                "choose another output folder"
            )
        if shard is not None:
            raise ConfigError(
                f"{manifest.path}: --overwrite with --shard would let every array task wipe the others' work; remove "
                f"{manifest.path} and {outdir / PARTS_DIR} once, then start the array job without --overwrite"
            )
        logger.warning("%s: other settings, --overwrite: starting the job afresh", manifest.path)
        manifest.path.unlink()
        shutil.rmtree(outdir / PARTS_DIR, ignore_errors=True)
        old = None
    (outdir / PARTS_DIR).mkdir(parents=True, exist_ok=True)
    return manifest, old is None


def _pixel_size(job: DenoiseJob) -> float | None:
    with open_movie(job.input) as movie:
        return movie.pixel_size_nm


def _prepare(
    inputs: Sequence[str | Path], outdir: Path, model: Path, options: BatchOptions, gain: Path | None,
    frames_text: str, shard: ShardSpec | None,
) -> _State:  # fmt: skip
    if not model.is_file():
        load_denoiser(model)  # raises the single-process path's ModelFileError naming the file
    gain_image = None
    if gain is not None:
        if not gain.exists():
            raise InputFileError(f"{gain}: no such gain reference; check the --gain path")
        gain_image = load_gain(gain)
    jobs = plan_inputs([Path(p) for p in inputs], outdir, options.fmt, options.dtype, options.frames, gain_image)
    maps = _map_paths(jobs, model, options.uncertainty)
    outdir.mkdir(parents=True, exist_ok=True)
    identity = job_identity(jobs, model, gain, options, frames_text)
    manifest, new = _open_manifest(outdir, identity, options.overwrite, shard)
    shards = split_jobs(jobs, options.shard_frames, outdir / PARTS_DIR, with_maps=options.uncertainty is not None)
    targets = [_target(j, [s for s in shards if s.movie == m], _pixel_size(j), maps[m]) for m, j in enumerate(jobs)]
    if new:
        _check_outputs(targets, options.overwrite)
        manifest.append({"kind": "job", "identity": identity, "time": time.time()})
    state = _State(jobs, shards, targets, manifest, [j.format.value for j in jobs])
    _recorded(state)
    return state


def _map_paths(jobs: Sequence[DenoiseJob], model: Path, uncertainty: Path | None) -> list[Path | None]:
    """Each movie's uncertainty map (None without --uncertainty), named and checked by the single-process rule
    (:func:`emlive.analysis.uncertainty.uncertainty_paths`; existing maps are refused with the outputs, by
    :func:`_check_outputs`, as a resumed job has written them), and the model's variance head: refused before any
    work, with the single-process message, from the card alone (the driver builds no engine)."""
    if uncertainty is None:
        return [None] * len(jobs)
    found = uncertainty_paths([(j.input, j.output) for j in jobs], uncertainty, overwrite=True)
    from emlive.export.runtime import read_card

    needs_variance_head(read_card(model), str(model))
    for path in found:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputFileError(
                f"--uncertainty {path}: cannot create the folder {path.parent} ({exc}); choose another PATH"
            ) from exc
    return [*found]


def _record_part(state: _State, result: PartResult) -> None:
    state.manifest.append({"kind": "shard", **asdict(result)})
    state.done.add(result.key)


def _file_size(path: str) -> int:
    return Path(path).stat().st_size if Path(path).is_file() else 0  # a store is a folder


def _record_movie(state: _State, m: int) -> None:
    target = state.targets[m]
    record: dict[str, Any] = {"kind": "movie", "output": target.output, "bytes": _file_size(target.output)}
    if target.map_output is not None:
        record |= {"map": target.map_output, "map_bytes": _file_size(target.map_output)}
    state.manifest.append(record)
    state.assembled.add(target.output)


class _Executor:
    """Runs shard and assembly tasks, yielding results as they complete (in this process, or on Dask)."""

    def submit_shard(self, shard: Shard) -> None:
        raise NotImplementedError

    def submit_assembly(self, m: int) -> None:
        raise NotImplementedError

    def results(self) -> Iterator[PartResult | tuple[int, str]]:
        raise NotImplementedError


class _InProcess(_Executor):
    def __init__(self, state: _State, model: ModelRef, gain: str | None, estimate: Estimate | None) -> None:
        self._state, self._model, self._gain, self._estimate = state, model, gain, estimate
        self._queue: list[tuple[str, Any]] = []

    def submit_shard(self, shard: Shard) -> None:
        self._queue.append(("shard", shard))

    def submit_assembly(self, m: int) -> None:
        self._queue.append(("movie", m))

    def results(self) -> Iterator[PartResult | tuple[int, str]]:
        while self._queue:
            what, item = self._queue.pop(0)
            if what == "shard":
                yield run_shard(item, self._model, self._gain, self._state.fmt_of[item.movie], self._estimate)
            else:
                yield item, assemble_movie(self._state.targets[item], self._state.fmt_of[item])


class _OnDask(_Executor):
    def __init__(
        self, client: Any, state: _State, model: ModelRef, gain: str | None, estimate: Estimate | None
    ) -> None:
        from dask.distributed import as_completed

        self._client, self._state, self._model, self._gain, self._estimate = client, state, model, gain, estimate
        self._ac = as_completed([], with_results=True)
        self._token = uuid.uuid4().hex[:8]
        self._movie_of: dict[str, int] = {}

    def submit_shard(self, shard: Shard) -> None:
        fmt = self._state.fmt_of[shard.movie]
        future = self._client.submit(run_shard, shard, self._model, self._gain, fmt, self._estimate,
                                     key=f"emlive-shard-{shard.key}-{self._token}", pure=False)  # fmt: skip
        self._ac.add(future)

    def submit_assembly(self, m: int) -> None:
        key = f"emlive-movie-{m:04d}-{self._token}"
        self._movie_of[key] = m
        future = self._client.submit(assemble_movie, self._state.targets[m], self._state.fmt_of[m], key=key,
                                     pure=False)  # fmt: skip
        self._ac.add(future)

    def results(self) -> Iterator[PartResult | tuple[int, str]]:
        for future, result in self._ac:
            yield result if isinstance(result, PartResult) else (self._movie_of[future.key], result)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="batch", unit="frame", disable=None if enabled else True, dynamic_ncols=True)


def _run(state: _State, executor: _Executor, todo: list[Shard], shard: ShardSpec | None, report: BatchReport,
         progress: bool) -> None:  # fmt: skip
    began = time.perf_counter()
    pending_movies: set[int] = set()
    for m in _newly_complete(state, shard, pending_movies):  # all parts there, not assembled (a killed job)
        _check_estimates(state, m, report)
        executor.submit_assembly(m)
    for s in todo:
        executor.submit_shard(s)
    with _progress(sum(s.frames for s in todo), progress) as bar:
        for result in executor.results():
            if isinstance(result, PartResult):
                _record_part(state, result)
                report.ran.append(result.key)
                report.frames += result.frames
                report.busy_seconds += result.seconds
                report.workers[result.worker] = report.workers.get(result.worker, 0) + 1
                bar.update(result.frames)
                for m in _newly_complete(state, shard, pending_movies, result.movie):
                    _check_estimates(state, m, report)
                    executor.submit_assembly(m)
            else:
                m, output = result
                _record_movie(state, m)
                remove_parts(state.targets[m])
                report.outputs.append(output)
                map_output = state.targets[m].map_output
                if map_output is not None:
                    report.maps.append(map_output)
                logger.info("assembled %s%s", output, "" if map_output is None else f" and its map {map_output}")
    report.seconds = time.perf_counter() - began


def _check_estimates(state: _State, m: int, report: BatchReport) -> None:
    """Every shard of movie ``m`` used the same estimate (as recorded in the manifest), else RuntimeError: a movie
    mixing the posterior and the blind output would differ from any single-process run."""
    records, _ = state.manifest.done()
    keys = [s.key for s in state.movie_shards(m)]
    found = {records[k].get("estimate") for k in keys if k in records}
    output = state.targets[m].output
    if len(found) > 1:
        raise RuntimeError(
            f"{output}: its shards were denoised with different estimates ({', '.join(sorted(map(str, found)))}): "
            "the noise check decided differently on different workers (engines giving different numbers?); rerun "
            "with --estimate blind or --estimate posterior to force one, with --overwrite"
        )
    (decided,) = found or {None}
    if decided is not None:
        report.estimates[output] = decided
        logger.info("%s: %s estimate (the movie's noise check, as a single-process run decides it)", output, decided)


def _newly_complete(state: _State, shard: ShardSpec | None, pending: set[int], movie: int | None = None) -> list[int]:
    """Movies whose every part is now done (with --shard: also by the other array tasks, read from the manifest);
    ``movie``: only that one can have changed (this process's own result)."""
    if shard is not None:
        _recorded(state)
        movie = None
    candidates = range(len(state.jobs)) if movie is None else [movie]
    out = [m for m in candidates if m not in pending and state.complete(m)]
    if shard is not None:
        out = [m for m in out if _claim(state, m)]
    pending.update(out)
    return out


_CLAIMS: list[int] = []  # lock file descriptors this process holds (released when it exits)


def _claim(state: _State, m: int) -> bool:
    """With --shard: only one array task assembles a movie (a lock the OS releases if the task dies)."""
    lock = Path(state.targets[m].parts[0][0]).parent / f"{m:04d}.assemble.lock"
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    _CLAIMS.append(fd)
    _recorded(state)
    return state.complete(m)


def _release_claims() -> None:
    while _CLAIMS:
        os.close(_CLAIMS.pop())


# Dask's defaults suit interactive work; a shard task runs for seconds to minutes on every core it is given, so the
# workers this job starts drop the per-10 ms statistical profiler and poll their health less often. Idle, a local:2
# cluster then costs about 0.02 CPU-s/s instead of 0.17 (8% of a 2-core machine, taken from the shards):
# ``python -m emlive.bench.cluster_bench --overhead 20``.
WORKER_TUNING: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "5s",
    "distributed.admin.system-monitor.disk": False,
    "distributed.worker.memory.monitor-interval": "1s",
}


def tuning_exports() -> list[str]:
    """:data:`WORKER_TUNING` as the ``export DASK_...=...`` lines of a batch job script (Dask's own env syntax)."""
    lines = []
    for key, value in WORKER_TUNING.items():
        name = "DASK_" + "__".join(part.upper().replace("-", "_") for part in key.split("."))
        lines.append(f"export {name}={value!r}" if isinstance(value, str) else f"export {name}={value}")
    return lines


@contextlib.contextmanager
def open_client(spec: ClusterSpec, *, tuned: bool = True) -> Iterator[Any]:
    """A dask ``Client`` for ``spec`` (the cluster it starts is closed on exit; ``tuned``: its workers get
    :data:`WORKER_TUNING`, False only to measure what it saves)."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError(
            "--cluster needs Dask distributed: pip install 'emlive[cluster]' (dask[distributed], dask-jobqueue)"
        ) from None
    if spec.kind is ClusterKind.ADDRESS:
        with Client(spec.address) as client:
            yield client
        return
    import dask

    with dask.config.set(WORKER_TUNING if tuned else {}):  # the workers this job starts get it (via their Nanny)
        if spec.kind is ClusterKind.LOCAL:
            cluster: Any = LocalCluster(
                n_workers=spec.workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
        else:
            cluster = _jobqueue_cluster(spec, tuned)
        with cluster, Client(cluster) as client:
            yield client


def _jobqueue_cluster(spec: ClusterSpec, tuned: bool = True) -> Any:
    try:
        import dask_jobqueue
    except ImportError:
        raise ConfigError(
            f"--cluster {spec.kind.value}:{spec.workers} needs dask-jobqueue: pip install 'emlive[cluster]'"
        ) from None
    import dask

    make = dask_jobqueue.SLURMCluster if spec.kind is ClusterKind.SLURM else dask_jobqueue.PBSCluster
    prologue = list(dask.config.get(f"jobqueue.{spec.kind.value}.job-script-prologue", None) or [])
    # queue, cores, memory, walltime: from ~/.config/dask/jobqueue.yaml (docs/cluster/); the job's own prologue
    # first, then the worker tuning as environment variables (a batch job's worker reads no config of ours)
    cluster = make(job_script_prologue=prologue + (tuning_exports() if tuned else []))
    cluster.scale(n=spec.workers)
    return cluster


def default_threads(spec: ClusterSpec | None, threads: int | None) -> int | None:
    """Threads per engine: --threads, else the cores split between local workers, else the runtime's default."""
    if threads is not None or spec is None or spec.kind is not ClusterKind.LOCAL:
        return threads
    return max(1, (os.cpu_count() or 1) // spec.workers)


def denoise_batch(
    inputs: Sequence[str | Path],
    outdir: str | Path,
    model: str | Path,
    *,
    cluster: ClusterSpec | str | None = None,
    client: Any = None,
    shard: ShardSpec | str | None = None,
    gain: str | Path | None = None,
    frames: str | None = None,
    **options: Any,
) -> BatchReport:
    """Denoise ``inputs`` into the folder ``outdir`` as shards (see the module docstring); resumable.

    ``cluster``: a :class:`ClusterSpec` or its text (``local:N``, an address, ``slurm:N``, ``pbs:N``); ``client``: a
    running dask Client instead; neither: the shards run in this process. ``shard``: only the shards whose index %
    N == i. ``options``: the fields of :class:`BatchOptions` (backend, tile, threads, dtype, fmt, shard_frames,
    estimate, uncertainty, overwrite, progress). Outputs, and uncertainty maps, equal
    :func:`emlive.analysis.denoise.denoise_path`'s bit for bit.
    """
    spec = ClusterSpec.parse(cluster) if isinstance(cluster, str) else cluster
    part = ShardSpec.parse(shard) if isinstance(shard, str) else shard
    if "fmt" in options:
        options["fmt"] = as_output_format(options["fmt"])
    if "dtype" in options:
        options["dtype"] = as_output_dtype(options["dtype"])
    try:
        opts = BatchOptions(frames=parse_frames(frames), **options)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(
            f"batch options {sorted(options)}: {problems}; see BatchOptions for the names and bounds"
        ) from None
    out = Path(outdir)
    state = _prepare(inputs, out, Path(model), opts, None if gain is None else Path(gain), frames or ":", part)
    mine = [s for s in state.shards if part is None or part.takes(s.index)]
    todo = [s for s in mine if s.key not in state.done]
    report = BatchReport(shards=len(state.shards), skipped=[s.key for s in mine if s.key in state.done])
    logger.info("%s: %d shard(s) in all, %d for this process, %d already done, %d to run",
                out, len(state.shards), len(mine), len(report.skipped), len(todo))  # fmt: skip
    ref = ModelRef(str(Path(model).resolve()), opts.backend, opts.tile, default_threads(spec, opts.threads))
    gain_path = None if gain is None else str(Path(gain).resolve())
    forced = opts.estimate
    try:
        if client is not None:
            _run(state, _OnDask(client, state, ref, gain_path, forced), todo, part, report, opts.progress)
        elif spec is not None:
            with open_client(spec) as own:
                _run(state, _OnDask(own, state, ref, gain_path, forced), todo, part, report, opts.progress)
        else:
            _run(state, _InProcess(state, ref, gain_path, forced), todo, part, report, opts.progress)
    finally:
        _release_claims()
    return report


__all__ = [
    "CLUSTER_GRAMMAR",
    "BatchOptions",
    "BatchReport",
    "ClusterKind",
    "ClusterSpec",
    "ModelRef",
    "ShardSpec",
    "denoise_batch",
    "model_loads",
    "open_client",
]
