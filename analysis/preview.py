"""``emlive denoise --preview``: a before/after picture (PNG) or movie (MP4) of a denoised movie.

:class:`MoviePreview` is the denoiser's frame observer (emlive.analysis.denoise.FrameObserver): it keeps only the
few frames it shows (the first, middle and last of the range, raw and denoised) and, for an MP4, passes each raw |
denoised pair to the encoder as the runtime yields it, so the movie is never held in memory. The PNG needs
matplotlib (the ``train`` extra); the MP4 needs imageio-ffmpeg (the ``preview`` extra, which bundles its own ffmpeg).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from emlive.core.errors import ConfigError, InputFileError
from emlive.core.readers import Movie

log = logging.getLogger(__name__)

PREVIEW_SUFFIXES = (".png", ".mp4")
MP4_MAX_WIDTH = 1920  # raw | denoised side by side; larger frames are binned by an integer factor
MP4_FPS = 10
MP4_BLOCK = 16  # the H.264 macro block: the encoded size is padded to a multiple of it


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        log.debug("%s cannot be imported: %s", name, exc)
        return False
    return True


def check_preview(path: Path) -> None:
    """Refuse, before any frame is computed, a preview the installed packages cannot write."""
    suffix = path.suffix.lower()
    if suffix not in PREVIEW_SUFFIXES:
        raise ConfigError(f"--preview {path}: unknown picture type {suffix or '(none)'}; name a .png or an .mp4 file")
    if suffix == ".png" and not _importable("matplotlib"):
        raise ConfigError("--preview needs matplotlib: pip install 'emlive[train]' or matplotlib")
    if suffix == ".mp4" and not _importable("imageio_ffmpeg"):
        raise ConfigError(
            f"--preview {path}: an MP4 preview needs imageio-ffmpeg (it bundles ffmpeg): pip install "
            "'emlive[preview]', or write a .png preview"
        )


def preview_frames(start: int, stop: int) -> list[int]:
    """The frames a PNG preview shows: the first, middle and last of ``start..stop-1`` (fewer for short ranges)."""
    return sorted({start, (start + stop - 1) // 2, stop - 1})


def _to_gray8(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (np.asarray(image, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(scaled, 0.0, 255.0).astype(np.uint8)


def _bin(image: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return image
    h, w = image.shape[0] // factor * factor, image.shape[1] // factor * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


class _Mp4Writer:
    """Raw | denoised side by side, every frame, one grey scale for the whole movie (the first denoised frame's 1st
    and 99th percentiles: brightness changes over the movie stay visible)."""

    def __init__(self, path: Path, height: int, width: int) -> None:
        import imageio_ffmpeg

        self.path = path
        self.factor = max(1, -(-2 * width // MP4_MAX_WIDTH))
        h, w = height // self.factor, width // self.factor
        self.size = (-(-2 * w // MP4_BLOCK) * MP4_BLOCK, -(-h // MP4_BLOCK) * MP4_BLOCK)  # (width, height)
        self.limits: tuple[float, float] | None = None
        self.frames = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputFileError(f"{path}: cannot create the folder ({exc}); choose another --preview path") from exc
        self._gen: Generator[None, Any, None] = imageio_ffmpeg.write_frames(
            str(path), self.size, pix_fmt_in="gray", fps=MP4_FPS, macro_block_size=1, ffmpeg_log_level="error"
        )
        self._gen.send(None)

    def add(self, raw: np.ndarray, denoised: np.ndarray) -> None:
        if self.limits is None:
            from emlive.analysis.plots import display_limits

            self.limits = display_limits(denoised)
        canvas = np.zeros((self.size[1], self.size[0]), np.uint8)
        left, right = (_to_gray8(_bin(image, self.factor), *self.limits) for image in (raw, denoised))
        h, w = left.shape
        canvas[:h, :w] = left
        canvas[:h, w : 2 * w] = right
        self._gen.send(canvas)
        self.frames += 1

    def close(self) -> None:
        self._gen.close()
        log.info("wrote %s (%d frames, %d x %d, raw | denoised)", self.path, self.frames, *self.size)


class MoviePreview:
    """The frame observer behind ``--preview``: use as a context manager around ``denoise_path(...,
    observer=preview)``; the PNG is drawn (or the MP4 closed) on a clean exit. Only the first movie of a job is
    previewed."""

    def __init__(self, path: Path) -> None:
        check_preview(path)
        self.path = path
        self.movie: Movie | None = None
        self.picks: list[int] = []
        self.pairs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._mp4: _Mp4Writer | None = None
        self._other_movie = False

    def begin(self, movie: Movie, start: int, stop: int) -> None:
        if self.movie is not None:
            self._other_movie = True
            log.info("--preview shows %s only; %s is not in it", self.movie.path, movie.path)
            return
        self.movie = movie
        self.picks = preview_frames(start, stop)
        self.title = f"{movie.path.name or movie.path}: raw | denoised, frames {start}..{stop - 1}"
        self.pixel_size_nm = movie.pixel_size_nm
        if self.path.suffix.lower() == ".mp4":
            _, height, width = movie.shape
            self._mp4 = _Mp4Writer(self.path, height, width)

    def frame(self, t: int, denoised: np.ndarray) -> None:
        if self.movie is None or self._other_movie:
            return
        if self._mp4 is not None:
            self._mp4.add(self.movie.frame(t), denoised)
        elif t in self.picks:
            self.pairs[t] = (np.array(self.movie.frame(t), dtype=np.float32), np.array(denoised, dtype=np.float32))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._mp4 is not None:
            self._mp4.close()
            return
        if exc_type is None:
            self.write_png()

    def write_png(self) -> Path:
        from emlive.analysis.plots import plot_preview

        if not self.pairs:
            raise ConfigError(f"--preview {self.path}: no frame was denoised (empty --frames range?); nothing to show")
        pairs = [(t, *self.pairs[t]) for t in sorted(self.pairs)]
        return plot_preview(pairs, self.path, self.title, self.pixel_size_nm)
