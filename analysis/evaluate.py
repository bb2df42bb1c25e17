"""Score a denoised movie: against a clean reference when there is one, else by cross-correlation SNR.

With a clean reference every frame gets the paper's PSNR and SSIM (each image min-max stretched to [0, 255]) and
the fixed-range variants (the clean movie's units, one data range for the whole movie); the noisy input, when
given, is scored the same way as the baseline. Without a reference (and always, as extra information) the
cross-correlation SNR of frames (i, i+1) (the paper's) and of frames (i, i+N) is reported: a denoiser reading an
N-frame window gives consecutive outputs that share N-1 noisy inputs, so their correlation is inflated by shared
noise, while outputs N frames apart come from disjoint inputs.

Movies are read frame by frame (at most N+1 frames of each are held), so files larger than memory work.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emlive.core.errors import ConfigError, InputDataError
from emlive.core.metrics import (
    as_float_image,
    cross_correlation_snr,
    movie_data_range,
    psnr_fixed,
    psnr_paper,
    ssim_fixed,
    ssim_paper,
)

if TYPE_CHECKING:
    from emlive.core.readers import Movie

log = logging.getLogger(__name__)

DEFAULT_OFFSET_N = 5
PREVIEW_SIZE = 256
REFERENCE_METRICS = ("psnr_paper", "ssim_paper", "psnr_fixed", "ssim_fixed")
SNR_METRICS = ("snr_consecutive", "snr_offset_n")

MovieSource = str | Path | np.ndarray


@dataclass(frozen=True)
class Stat:
    """Mean and standard deviation over the finite values of a per-frame series (inf/NaN counted apart)."""

    mean: float
    std: float
    n: int
    n_nonfinite: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        arr = np.asarray(values, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return cls(math.nan, math.nan, int(arr.size), int(arr.size))
        return cls(float(finite.mean()), float(finite.std()), int(arr.size), int(arr.size - finite.size))


@dataclass
class EvaluationReport:
    """Per-frame metrics of a denoised movie (and of the noisy input when given).

    ``reference[name][metric]`` (name "denoised" or "noisy", metric one of :data:`REFERENCE_METRICS`) holds one
    value per frame, only when a clean reference was given. ``snr[name]["snr_consecutive"][i]`` is the
    cross-correlation SNR (dB) of frames (i, i+1); ``snr[name]["snr_offset_n"][i]`` of frames (i, i+offset_n).
    ``preview`` holds a centre crop of the middle frame of each movie, for the picture (not in the JSON).
    """

    denoised: str
    clean: str | None
    noisy: str | None
    shape: tuple[int, int, int]
    offset_n: int
    data_range: float | None
    reference: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    snr: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    preview: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    preview_frame: int = 0

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    def summary(self) -> dict[str, dict[str, Stat]]:
        """Mean and std of every series: ``summary()[name][metric]``."""
        out: dict[str, dict[str, Stat]] = {}
        for table in (self.reference, self.snr):
            for name, series in table.items():
                for metric, values in series.items():
                    out.setdefault(name, {})[metric] = Stat.of(values)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Everything but the preview, as plain Python values; non-finite numbers become "inf", "-inf", "nan"."""
        return _jsonable(
            {
                "denoised": self.denoised,
                "clean": self.clean,
                "noisy": self.noisy,
                "shape": list(self.shape),
                "offset_n": self.offset_n,
                "data_range": self.data_range,
                "reference": self.reference,
                "snr": self.snr,
                "summary": {
                    name: {metric: vars(stat) for metric, stat in metrics.items()}
                    for name, metrics in self.summary().items()
                },
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        """:meth:`to_dict` as strict JSON (no NaN/Infinity literals)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        f = float(value)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    return value


def _open(source: MovieSource | Movie, role: str, stack: contextlib.ExitStack) -> tuple[Movie, str]:
    from emlive.core.readers import ArrayMovie, Movie, open_movie

    if isinstance(source, Movie):
        return source, str(source.path)
    if isinstance(source, np.ndarray):
        return ArrayMovie(source, path=f"<{role} array>"), f"<{role} array>"
    movie = stack.enter_context(open_movie(source))
    return movie, str(source)


def _check_same(a: Movie, a_name: str, b: Movie, b_name: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise InputDataError(
            f"{b_name} has shape {tuple(b.shape)} (T, H, W) but {a_name} has {tuple(a.shape)}: the movies must "
            "have the same number of frames and the same frame size; evaluate matching files (or crop/select "
            "frames so they match)"
        )


def _centre_crop(frame: np.ndarray, size: int = PREVIEW_SIZE) -> np.ndarray:
    h, w = frame.shape
    ch, cw = min(size, h), min(size, w)
    y, x = (h - ch) // 2, (w - cw) // 2
    return np.array(frame[y : y + ch, x : x + cw], dtype=np.float32)


def evaluate(
    denoised: MovieSource | Movie,
    clean: MovieSource | Movie | None = None,
    noisy: MovieSource | Movie | None = None,
    offset_n: int = DEFAULT_OFFSET_N,
    data_range: float | None = None,
) -> EvaluationReport:
    """Score ``denoised`` (a path :func:`~emlive.core.readers.open_movie` reads, a (T, H, W) array or a Movie).

    ``clean`` (reference) enables the PSNR/SSIM metrics, both as the paper defines them and with a fixed data
    range (``data_range``, default max - min of the whole clean movie; the fixed variants assume the denoised and
    clean movies are in the same units). ``noisy`` is scored alongside as the baseline. The cross-correlation SNR
    of frames (i, i+1) and (i, i+offset_n) is computed for the denoised and noisy movies.
    """
    n_off = int(offset_n)
    if n_off < 1:
        raise ConfigError(
            f"offset_n={offset_n}: it must be an integer >= 1, normally the denoiser's window length "
            f"(default {DEFAULT_OFFSET_N})"
        )
    with contextlib.ExitStack() as stack:
        den, den_name = _open(denoised, "denoised", stack)
        ref, ref_name = (None, None) if clean is None else _open(clean, "clean", stack)
        raw, raw_name = (None, None) if noisy is None else _open(noisy, "noisy", stack)
        for other, other_name in ((ref, ref_name), (raw, raw_name)):
            if other is not None and other_name is not None:
                _check_same(den, den_name, other, other_name)
        rng: float | None = None
        if ref is None and data_range is not None:
            log.warning("data_range=%s is ignored: the fixed-range metrics need a clean reference", data_range)
        if ref is not None:
            rng = movie_data_range(ref, ref_name or "clean movie") if data_range is None else float(data_range)
            if not (math.isfinite(rng) and rng > 0):
                raise ConfigError(f"data_range={data_range}: it must be a finite number > 0")
        report = EvaluationReport(
            denoised=den_name,
            clean=ref_name,
            noisy=raw_name,
            shape=(int(den.shape[0]), int(den.shape[1]), int(den.shape[2])),
            offset_n=n_off,
            data_range=rng,
        )
        movies: dict[str, Movie] = {"denoised": den}
        if raw is not None:
            movies["noisy"] = raw
        _score(report, movies, ref)
    return report


def _score(report: EvaluationReport, movies: dict[str, Movie], ref: Movie | None) -> None:
    n_frames, n_off = report.n_frames, report.offset_n
    history: dict[str, deque[np.ndarray]] = {name: deque(maxlen=n_off) for name in movies}
    for name in movies:
        report.snr[name] = {"snr_consecutive": [], "snr_offset_n": []}
        if ref is not None:
            report.reference[name] = {metric: [] for metric in REFERENCE_METRICS}
    report.preview_frame = n_frames // 2
    for t in range(n_frames):
        clean_frame = None if ref is None else as_float_image(ref[t], f"{report.clean}, frame {t}", "clean")
        if clean_frame is not None and t == report.preview_frame:
            report.preview["clean"] = _centre_crop(clean_frame)
        for name, movie in movies.items():
            label = f"{report.denoised if name == 'denoised' else report.noisy}, frame {t}"
            raw_frame = np.asarray(movie[t])  # kept as read (often integer): history costs little memory
            frame = as_float_image(raw_frame, label, name)
            if t == report.preview_frame:
                report.preview[name] = _centre_crop(frame)
            if clean_frame is not None and report.data_range is not None:
                row = report.reference[name]
                row["psnr_paper"].append(psnr_paper(clean_frame, frame, label))
                row["ssim_paper"].append(ssim_paper(clean_frame, frame, label))
                row["psnr_fixed"].append(psnr_fixed(clean_frame, frame, report.data_range, label))
                row["ssim_fixed"].append(ssim_fixed(clean_frame, frame, report.data_range, label))
            past = history[name]
            if t >= 1:
                report.snr[name]["snr_consecutive"].append(
                    cross_correlation_snr(past[-1], raw_frame, f"{label} and frame {t - 1}")
                )
            if t >= n_off:
                report.snr[name]["snr_offset_n"].append(
                    cross_correlation_snr(past[0], raw_frame, f"{label} and frame {t - n_off}")
                )
            past.append(raw_frame)
    if n_frames < 2:
        log.warning("%s has a single frame: no cross-correlation SNR can be computed", report.denoised)
    elif n_frames <= n_off:
        log.warning(
            "%s has %d frames, not more than offset_n=%d: no SNR(i, i+%d); use a smaller --offset-n",
            report.denoised,
            n_frames,
            n_off,
            n_off,
        )


def frame_table(report: EvaluationReport) -> str:
    """The per-frame metrics as a text table (one row per frame)."""
    cols: list[tuple[str, list[float], str]] = []
    for name in report.reference:
        short = "den" if name == "denoised" else "noisy"
        for metric, fmt in (("psnr_paper", ".2f"), ("ssim_paper", ".4f"), ("psnr_fixed", ".2f"), ("ssim_fixed", ".4f")):
            cols.append((f"{short}:{metric}", report.reference[name][metric], fmt))
    for name in report.snr:
        short = "den" if name == "denoised" else "noisy"
        cols.append((f"{short}:snr(i,i+1)", report.snr[name]["snr_consecutive"], ".2f"))
        cols.append((f"{short}:snr(i,i+{report.offset_n})", report.snr[name]["snr_offset_n"], ".2f"))
    width = max([12, *(len(c[0]) + 1 for c in cols)])
    lines = ["frame" + "".join(f"{title:>{width}}" for title, _, _ in cols)]
    for t in range(report.n_frames):
        cells = []
        for _, values, fmt in cols:
            cells.append(f"{values[t]:>{width}{fmt}}" if t < len(values) else f"{'-':>{width}}")
        lines.append(f"{t:>5d}" + "".join(cells))
    return "\n".join(lines)


def summary_table(report: EvaluationReport) -> str:
    """Mean ± std of every series as a text table."""
    lines = [f"{'input':<10}{'metric':<22}{'mean':>10}{'std':>10}{'n':>7}  note"]
    for name, metrics in report.summary().items():
        for metric, stat in metrics.items():
            title = metric if metric != "snr_offset_n" else f"snr_offset_{report.offset_n}"
            note = f"{stat.n_nonfinite} non-finite left out" if stat.n_nonfinite else ""
            lines.append(f"{name:<10}{title:<22}{stat.mean:>10.4f}{stat.std:>10.4f}{stat.n:>7d}  {note}")
    return "\n".join(lines)


__all__ = [
    "DEFAULT_OFFSET_N",
    "REFERENCE_METRICS",
    "SNR_METRICS",
    "EvaluationReport",
    "Stat",
    "evaluate",
    "frame_table",
    "summary_table",
]
