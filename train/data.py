"""Training data: random crops of N-frame windows from noisy movies, read lazily through the shared readers.

Frames are normalised with whole-frame statistics (as at inference), then cropped and augmented with operations
that keep every noisy pixel exactly once: crops, flips, 90-degree rotations, frame-order reversal, integer
binning. No resizing (method.md explains why a resize breaks the blind spot).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from emlive.core.errors import InputDataError
from emlive.core.normalize import EPS
from emlive.core.readers import Movie, find_movies, open_movie
from emlive.core.windows import window_indices
from emlive.train.config import AugmentConfig

log = logging.getLogger(__name__)

STATS_SAMPLE = 512  # frame statistics come from a strided grid of about this many rows x columns


@dataclass
class MovieSource:
    """One movie with the per-frame statistics used to normalise it and the frame range this split uses."""

    movie: Movie
    mean: np.ndarray
    std: np.ndarray
    first: int
    last: int  # exclusive
    bin: int = 1

    @property
    def height(self) -> int:
        return self.movie.shape[1] // self.bin

    @property
    def width(self) -> int:
        return self.movie.shape[2] // self.bin

    def window(self, t: int, y: int, x: int, size: int, n_frames: int) -> np.ndarray:
        """The z-scored (N, size, size) crop of the window centred on frame t (binned pixels); see :meth:`region`."""
        return self.region(t, y, x, (size, size), n_frames)

    def binned_crop(self, movie: Movie, t: int, y: int, x: int, shape: tuple[int, int]) -> np.ndarray:
        """Float32 (h, w) crop at (y, x) of frame t of ``movie`` (this movie, or its clean twin), in binned pixels."""
        b = self.bin
        h, w = shape
        crop = np.asarray(movie.crop(t, y * b, x * b, h * b, w * b), dtype=np.float32)
        return crop.reshape(h, b, w, b).sum(axis=(1, 3)) if b > 1 else crop

    def normalized_crop(self, movie: Movie, t: int, y: int, x: int, shape: tuple[int, int]) -> np.ndarray:
        """:meth:`binned_crop` in the network's units for frame t: z-scored with THIS movie's frame-t statistics
        (a clean twin's crop lands where the network's output for the noisy frame does)."""
        return ((self.binned_crop(movie, t, y, x, shape) - self.mean[t]) / self.std[t]).astype(np.float32)

    def region(self, t: int, y: int, x: int, shape: tuple[int, int], n_frames: int) -> np.ndarray:
        """The z-scored (N, h, w) crop of the window centred on frame t (binned pixels).

        The window is :func:`emlive.core.windows.window_indices` within this split's frames: no neighbour slot
        holds frame t (its noise would reach the input past the blind spot and reward copying); an empty slot
        (a single-frame split) is zeros, the frame mean in normalised units.
        """
        out = np.zeros((n_frames, *shape), dtype=np.float32)
        for i, idx in enumerate(window_indices(t - self.first, n_frames, self.last - self.first)):
            if idx is None:
                continue
            out[i] = self.normalized_crop(self.movie, idx + self.first, y, x, shape)
        return out


def frame_statistics(movie: Movie, bin_factor: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame mean and std (of binned pixels) from a strided grid; NaN/inf frames are an error."""
    t, h, w = movie.shape
    step = max(1, min(h, w) // STATS_SAMPLE)
    means = np.empty(t, dtype=np.float64)
    stds = np.empty(t, dtype=np.float64)
    for i in range(t):
        frame = np.asarray(movie.frame(i), dtype=np.float64)
        if bin_factor > 1:
            hh, ww = (h // bin_factor) * bin_factor, (w // bin_factor) * bin_factor
            frame = frame[:hh, :ww].reshape(hh // bin_factor, bin_factor, ww // bin_factor, bin_factor).sum((1, 3))
        sample = frame[::step, ::step]
        if not np.all(np.isfinite(sample)):
            raise InputDataError(f"{movie.path}: frame {i} contains NaN or inf values; fix or drop that frame")
        means[i] = sample.mean()
        stds[i] = max(float(sample.std()), EPS)
    return means, stds


def open_sources(
    path: Path, gain: Path | None, n_frames: int, split: tuple[float, float], bin_factor: int, min_size: int
) -> list[MovieSource]:
    """Open every movie under ``path`` and keep the fraction ``split`` = (start, stop) of its frames."""
    sources = []
    for file in find_movies(path):
        movie = open_movie(file, gain=gain)
        t, h, w = movie.shape
        if min(h, w) // bin_factor < min_size:
            raise InputDataError(
                f"{file}: frames of {h}x{w} (binned by {bin_factor}) are smaller than the {min_size} px crop; "
                "lower data.crop_size or data.bin"
            )
        first, last = round(split[0] * t), round(split[1] * t)
        if last - first < 1:
            continue
        mean, std = frame_statistics(movie, bin_factor)
        sources.append(MovieSource(movie, mean, std, first, last, bin_factor))
        log.info("%s: %d frames of %dx%d %s, using frames %d..%d", file, t, h, w, movie.dtype, first, last - 1)
    if not sources:
        raise InputDataError(f"{path}: no frames to use (split {split}); check data paths and val_fraction")
    return sources


def open_clean_twins(clean: Path, sources: list[MovieSource]) -> list[Movie]:
    """The clean movies of ``clean`` (``data.clean``), one per noisy source in the same order, of the same shape."""
    movies = [open_movie(p) for p in find_movies(clean)]
    if len(movies) != len(sources):
        raise InputDataError(
            f"data.clean={clean}: {len(movies)} clean movies for {len(sources)} noisy movies; give one clean movie "
            "per noisy movie"
        )
    for movie, src in zip(movies, sources, strict=True):
        if movie.shape != src.movie.shape:
            raise InputDataError(
                f"data.clean {movie.path}: shape {list(movie.shape)} differs from the noisy movie {src.movie.path}'s "
                f"{list(src.movie.shape)}; give the clean movie of the same acquisition"
            )
    return movies


class WindowCrops(Dataset[tuple[torch.Tensor, ...]]):
    """Random (or, for validation, fixed) crops of N-frame windows; item = (input window, noisy center target), and
    with ``stats`` the center frame's normalisation (mean, std) as a third float32 tensor of 2 (what the Gaussian
    NLL needs to know the noise variance of a z-scored pixel: it travels with the batch, through loader workers
    and DDP alike).

    With ``clean`` (one clean twin per source: the supervised oracle, ``targets=clean``) the target is the clean
    crop of the same frame and place instead, z-scored with the noisy frame's statistics and flipped/rotated with
    the window; frame reversal and extra noise touch the input only, as for the noisy target.

    Sample ``index`` is a pure function of (seed, epoch, index): under DDP, Lightning's DistributedSampler hands
    each process a disjoint share of the indices, so processes draw different crops and a run is reproducible
    for a given number of processes. ``record``, when set, gets one CSV line per crop drawn (output.log_crops).
    """

    def __init__(
        self,
        sources: list[MovieSource],
        n_frames: int,
        crop_size: int,
        length: int,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        fixed: bool = False,
        clean: list[Movie] | None = None,
        stats: bool = False,
    ) -> None:
        self.sources = sources
        self.clean = clean
        self.stats = stats
        self.n_frames = n_frames
        self.crop_size = crop_size
        self.length = length
        self.augment = augment
        self.seed = seed
        self.fixed = fixed
        weights = np.array([s.last - s.first for s in sources], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.epoch = 0
        self.record: Path | None = None

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def start_record(self, path: Path) -> None:
        """Record every crop drawn from now on as ``epoch,index,source,frame,y,x`` lines in ``path`` (appended)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            path.write_text("epoch,index,source,frame,y,x\n")
        self.record = path

    def locate(self, index: int) -> tuple[np.random.Generator, int, int, int, int, int]:
        """(rng, source index, center frame, y, x, crop size) of sample ``index``."""
        rng = np.random.default_rng(
            (self.seed, index) if self.fixed else (self.seed, self.epoch, index, torch.initial_seed() % 2**31)
        )
        src_i = int(rng.choice(len(self.sources), p=self.weights))
        src = self.sources[src_i]
        size = min(self.crop_size, src.height, src.width)
        t = int(rng.integers(src.first, src.last))
        y = int(rng.integers(0, src.height - size + 1))
        x = int(rng.integers(0, src.width - size + 1))
        return rng, src_i, t, y, x, size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        rng, src_i, t, y, x, size = self.locate(index)
        if self.record is not None:
            with self.record.open("a") as f:  # one short line per write: appends from loader workers stay whole
                f.write(f"{self.epoch},{index},{src_i},{t},{y},{x}\n")
        src = self.sources[src_i]
        window = src.window(t, y, x, size, self.n_frames)
        if self.clean is None:
            target = window[self.n_frames // 2].copy()
        else:
            target = src.normalized_crop(self.clean[src_i], t, y, x, (size, size))
        if self.augment is not None:
            window, target = self._augment(window, target, rng)
        item = crop_tensors(window, target)
        if self.stats:
            return (*item, frame_stats_tensor(src, t))
        return item

    def _augment(
        self, window: np.ndarray, target: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        aug = self.augment
        assert aug is not None
        if aug.flips:
            if rng.random() < 0.5:
                window, target = window[:, :, ::-1], target[:, ::-1]
            if rng.random() < 0.5:
                window, target = window[:, ::-1, :], target[::-1, :]
        if aug.rot90:
            k = int(rng.integers(0, 4))
            window, target = np.rot90(window, k, axes=(1, 2)), np.rot90(target, k)
        if aug.reverse_frames and rng.random() < 0.5:
            window = window[::-1]
        if aug.extra_noise_probability > 0 and rng.random() < aug.extra_noise_probability:
            sigma = rng.uniform(*aug.extra_noise_sigma)
            window = window + rng.normal(0.0, sigma, size=window.shape).astype(np.float32)
        return window, target


class CleanWindows(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Validation with ground truth: fixed crops with the clean center frame and its frame statistics."""

    def __init__(self, noisy: list[MovieSource], clean: list[Movie], n_frames: int, crop_size: int, count: int):
        self.inner = WindowCrops(noisy, n_frames, crop_size, count, None, seed=1234, fixed=True)
        self.clean = clean

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        _, src_i, t, y, x, size = self.inner.locate(index)
        src = self.inner.sources[src_i]
        window = src.window(t, y, x, size, self.inner.n_frames)
        clean = np.array(src.binned_crop(self.clean[src_i], t, y, x, (size, size)))  # owned: collated later
        return torch.from_numpy(window), torch.from_numpy(clean[None]), frame_stats_tensor(src, t)


def crop_tensors(window: np.ndarray, target: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A training pair as tensors: the (N, H, W) window and the (1, H, W) target, copied where a flip left a
    negative stride. NumPy calls a reversed length-1 axis contiguous (a 1-frame window with reverse_frames), so
    ``np.ascontiguousarray`` keeps its negative stride, which ``torch.from_numpy`` refuses."""
    return _tensor(window), _tensor(target[None])


def _tensor(array: np.ndarray) -> torch.Tensor:
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if min(array.strides, default=0) >= 0 else array.copy())


def frame_stats_tensor(source: MovieSource, t: int) -> torch.Tensor:
    """(mean, std) of frame t of ``source``, the normalisation of its z-scores, as a float32 tensor of 2."""
    return torch.tensor([source.mean[t], source.std[t]], dtype=torch.float32)
