"""``emlive denoise`` with a probabilistic (``network.head=gaussian``) model: which estimate each movie gets, the
uncertainty map beside the movie, the predicted gain and the noise check.

* **The estimate per movie.** The runtime's default for such a model is the posterior mean (re-opened blind spot,
  :mod:`emlive.export.estimates`). Before a movie is denoised, the noise model of the card is checked on its own
  data (:class:`emlive.core.posterior.NoiseCheck`: in the blind spot, the residual of the blind estimate must have
  the variance the variance head and the noise model predict) on up to ``CHECK_FRAMES`` frames spread over the
  range; a failed check warns loudly and the movie falls back to the blind output, unless ``--estimate
  posterior`` was given (then it only warns).
* **The predicted gain** of the posterior over the blind output (:func:`emlive.core.posterior.predicted_gain_db`,
  from the variance head and the noise model) is measured on every denoised frame and logged per movie (mean over
  the frames), with the noise check's result; both go into the movie's report.
* **The uncertainty map** (``--uncertainty PATH``): per frame, the std of the output in the input's units (the
  posterior's, or the prior's for the blind estimate), float32, written as the movie is (same format, one frame
  per denoised frame). PATH is a file for one movie (its suffix must give the output's format) or a folder (each
  movie's map under the name of its output). OME-Zarr outputs are refused for now (a clear error).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emlive.core.errors import ConfigError, InputFileError
from emlive.core.modelcard import VarianceCalibration
from emlive.core.posterior import CHECK_FRAMES, Estimate, NoiseCheck, decide_estimate, predicted_gain_db
from emlive.core.readers import MRC_SUFFIXES, ZARR_SUFFIXES, Movie
from emlive.core.writers import WRITER_SUFFIXES, MovieWriter, open_writer
from emlive.export.calibration import measure_calibration, movie_block
from emlive.export.estimates import card_calibration

if TYPE_CHECKING:
    from emlive.export.estimates import Denoised
    from emlive.export.runtime import Denoiser

logger = logging.getLogger(__name__)


def _format_name(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in ZARR_SUFFIXES:
        return "OME-Zarr"
    return "MRC" if suffix in MRC_SUFFIXES else "TIFF"


def uncertainty_paths(
    outputs: list[tuple[Path, Path]], path: Path, *, overwrite: bool, resume: bool = False
) -> list[Path]:
    """Where each movie's uncertainty map goes, for ``(input, output)`` pairs; checked before any frame is computed.

    A PATH with a movie suffix is one file (one movie only, the output's format); anything else is a folder that
    gets each map under its output's name."""
    is_file = path.suffix.lower() in WRITER_SUFFIXES or path.suffix.lower() in ZARR_SUFFIXES
    if is_file and len(outputs) != 1:
        raise ConfigError(
            f"--uncertainty {path}: {len(outputs)} movies are denoised, so the uncertainty maps need a folder (each "
            f"written under its movie's output name); drop the {path.suffix} suffix"
        )
    targets = [path if is_file else path / out.name for _, out in outputs]
    for (movie_path, out), target in zip(outputs, targets, strict=True):
        _check_target(movie_path, out, target, overwrite=overwrite, resume=resume)
    return targets


def _check_target(movie_path: Path, out: Path, target: Path, *, overwrite: bool, resume: bool) -> None:
    if out.suffix.lower() in ZARR_SUFFIXES or target.suffix.lower() in ZARR_SUFFIXES or resume:
        raise ConfigError(
            f"--uncertainty {target}: the uncertainty map is written for TIFF and MRC outputs only (not OME-Zarr, "
            "not --resume); write the denoised movie as .tif or .mrc (--format tif), or drop --uncertainty"
        )
    if _format_name(target) != _format_name(out):
        raise ConfigError(
            f"--uncertainty {target}: the map is written in the denoised movie's format ({_format_name(out)}, "
            f"{out.name}); name it {target.with_suffix(out.suffix).name}"
        )
    if target.resolve() in (out.resolve(), movie_path.resolve()):
        raise InputFileError(
            f"--uncertainty {target}: the same file as the {'output' if target.resolve() == out.resolve() else 'input'}"
            "; give the uncertainty map its own name"
        )
    if target.is_dir():
        raise InputFileError(f"--uncertainty {target}: a folder is in the way of the file; remove or rename it")
    if target.exists() and not overwrite:
        raise InputFileError(f"--uncertainty {target}: the file exists; pass --overwrite to replace it")


@dataclass
class MovieEstimate:
    """What a probabilistic model gives one movie: the estimate, the noise check, the predicted gains per frame,
    and the uncertainty map's path (None: not written)."""

    estimate: Estimate
    check: NoiseCheck | None = None
    uncertainty: Path | None = None
    gains_db: list[float] = field(default_factory=list)
    calibration: VarianceCalibration | None = None  # measured on this movie (None: the card's)

    @property
    def predicted_gain_db(self) -> float | None:
        return float(np.mean(self.gains_db)) if self.gains_db else None

    def report(self) -> dict[str, Any]:
        """The fields of the movie's report."""
        return {
            "estimate": self.estimate.value,
            "predicted_gain_db": self.predicted_gain_db,
            "noise_check": None if self.check is None else self.check.to_dict(),
            "calibration": None if self.calibration is None else self.calibration.model_dump(mode="json"),
            "uncertainty": None if self.uncertainty is None else str(self.uncertainty),
        }

    def writer(self, shape: tuple[int, int], pixel_size_nm: float | None, overwrite: bool) -> Any:
        """The uncertainty map's writer (float32), or a null context without one."""
        if self.uncertainty is None:
            return contextlib.nullcontext()
        try:
            self.uncertainty.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputFileError(
                f"--uncertainty {self.uncertainty}: cannot create the folder {self.uncertainty.parent} ({exc}); "
                "choose another PATH"
            ) from exc
        return open_writer(self.uncertainty, shape, np.float32, pixel_size_nm, overwrite=overwrite)

    def frames(self, results: Iterator[tuple[int, Denoised]], std: MovieWriter | None) -> Iterator[tuple[int, Any]]:
        """``(t, frame)`` of the runtime's results, writing each std to ``std`` and measuring the predicted gain."""
        for t, found in results:
            if std is not None:
                std.append(found.std)
            if found.noise_std is not None:
                prior_var = np.square(found.prior_std, dtype=np.float64)
                self.gains_db.append(predicted_gain_db(prior_var, np.square(found.noise_std, dtype=np.float64)))
            yield t, found.mean


def movie_estimate(
    movie: Movie | np.ndarray,
    denoiser: Denoiser,
    start: int,
    stop: int,
    estimate: Estimate,
    *,
    forced: bool,
    uncertainty: Path | None,
) -> MovieEstimate | None:
    """The estimate of one movie for a probabilistic model (None for a plain model: nothing changes), starting from
    ``estimate`` (checked by the denoiser). With a noise model the check runs first on up to CHECK_FRAMES frames,
    with the card's calibration of the variance head; a failure warns and turns the posterior into the blind output
    unless the estimate was given (``forced``). Then (a passed check, the posterior) the variance head is calibrated
    on this movie (:func:`emlive.export.calibration.measure_calibration` on the middle frames of ``start..stop-1``)
    and ``denoiser`` holds that calibration until the next movie's estimate; otherwise it holds its card's. The
    check comes first so that a wrong noise model is caught rather than absorbed into the scales."""
    if denoiser.channels < 2:
        return None
    denoiser.calibration = card_calibration(denoiser.card)  # each movie starts from the card's
    chosen = MovieEstimate(estimate, uncertainty=uncertainty)
    if denoiser.noise is None:
        return chosen
    chosen.check = check = noise_check(movie, denoiser, start, stop)
    where = (movie.path.name or str(movie.path)) if isinstance(movie, Movie) else "the movie"
    if check.ok:
        logger.info("%s: %s", where, check.message)
        if estimate is Estimate.posterior:
            table, frames = measure_calibration(denoiser, [movie_block(movie, start, stop)], where)
            denoiser.calibration = table
            chosen.calibration = table.to_card(frames, where)
        return chosen
    logger.warning("%s: NOISE MODEL CHECK FAILED: %s", where, check.message)
    chosen.estimate = decide_estimate(estimate, check, forced=forced)
    if chosen.estimate is not estimate:
        logger.warning("%s: falling back to the blind output for this movie (--estimate posterior forces it)", where)
    return chosen


def noise_check(movie: Movie | np.ndarray, denoiser: Denoiser, start: int, stop: int) -> NoiseCheck:
    """The :class:`NoiseCheck` of the card's noise model on up to CHECK_FRAMES frames of ``start..stop-1`` of a
    movie (or a (T, H, W) array: the benchmarks score what a user gets by default)."""
    assert denoiser.noise is not None
    picks = sorted({int(t) for t in np.linspace(start, stop - 1, min(CHECK_FRAMES, stop - start))})
    read = movie.frame if isinstance(movie, Movie) else movie.__getitem__
    mu, log_var, observed = [], [], []
    for t in picks:
        _, found = next(denoiser.denoise_movie(movie, t, t + 1, uncertainty=True, estimate=Estimate.blind))
        mu.append(found.prior_mean)
        log_var.append(2.0 * np.log(found.prior_std.astype(np.float64)))
        observed.append(np.asarray(read(t), dtype=np.float32))
    return NoiseCheck.measure(np.stack(mu), np.stack(log_var), np.stack(observed), denoiser.noise)


def log_movie(where: str, found: MovieEstimate) -> None:
    """One line per movie: the estimate, the predicted gain, the noise check's ratio, the calibration."""
    gain, check, table = found.predicted_gain_db, found.check, found.calibration
    scales = None if table is None else np.exp(table.log_scale)
    logger.info(
        "%s: %s estimate; predicted gain of the posterior over the blind output %s; noise check ratio %s; %s%s",
        where,
        found.estimate.value,
        "n/a (no noise model)" if gain is None else f"{gain:+.2f} dB",
        "n/a" if check is None else f"{check.ratio:.3f} +- {check.se:.3f}",
        "the card's variance-head calibration"
        if scales is None or table is None
        else f"variance head calibrated on {table.frames} frames of this movie "
        f"(x {scales.min():.2f} .. {scales.max():.2f})",
        "" if found.uncertainty is None else f"; uncertainty map {found.uncertainty}",
    )
