"""Denoising quality against the strongest peers, on held-out simulated movies with known ground truth.

Methods, all scored on the same frames with the paper's PSNR/SSIM, the fixed-range variants and the Pearson
correlation with the truth: raw, the N-frame temporal average, a Gaussian filter with the oracle-best sigma, BM3D
(the strongest classical single-frame denoiser; the data go through the generalized Anscombe transform first, with
the detector's gain, offset, read noise and charge-sharing kernel, and its sigma is oracle-tuned too) and every
model given (``-m [LABEL=]PATH[@flips|@dihedral]``, :mod:`emlive.bench.model_specs`; default: the shipped teacher
and CPU-live student) through the inference runtime, each a row of the same table. A model spec ending in
``@flips``/``@dihedral`` denoises with a geometric self-ensemble (:func:`emlive.core.ensemble.ensemble_average`),
e.g. the ensembled teacher a student was distilled from. The models denoise the scored frames only
(``seconds_per_frame`` is per scored frame, after one untimed warm-up call).

:func:`score_movie` scores ONE held-out movie; :func:`run_quality_benchmark` (one movie, today's
``emlive bench-quality``) and the dose/detector sweep of :mod:`emlive.bench.dose_sweep` both go through it.
Besides the means over the scored frames every row reports, apart, the places where the scene changes and a
multi-frame prior is weakest: the first and last frames of the movie (``edge frames``) and, on the scored frames,
the pixels whose truth changes by more than :data:`CHANGE_THRESHOLD` of the movie's data range from the previous or
the next frame (``changing pixels``), both as fixed-range PSNR.

A probabilistic model (``network.head=gaussian`` with a noise model) gives two rows from one pass: its blind
estimate (``LABEL``) and its posterior mean (``LABEL re-opened``; the sweep's trained model: ``blind`` and
``re-opened``). The re-opened row also reports the gain its variance head and noise model predict
(:func:`emlive.core.posterior.predicted_gain_db`), the gain measured against the truth over its blind row, their
ratio, the calibration of its uncertainty (the fraction of pixels whose true error lies within +-1 posterior std;
68% nominal) and the self-supervised :class:`~emlive.core.posterior.NoiseCheck` of the card's noise model, overall,
per frame and per region.

``bm3d`` is a benchmark-only dependency (the ``bench`` extra).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emlive.analysis.baselines import best_gaussian, temporal_average
from emlive.analysis.uncertainty import MovieEstimate, movie_estimate
from emlive.bench.model_specs import ModelSpec, model_labels, parse_model_specs
from emlive.core.ensemble import Ensemble, ensemble_average, ensemble_for
from emlive.core.errors import ConfigError, EmliveError
from emlive.core.metrics import pearson_r, psnr_fixed, psnr_paper, ssim_fixed, ssim_paper
from emlive.core.modelcard import ModelCard
from emlive.core.posterior import Estimate, NoiseCheck, predicted_gain_db
from emlive.core.simulate import CorrelatedNoise, SimulationConfig, detector_truth, simulate_movie
from emlive.core.windows import stack_window, window_indices
from emlive.export.estimates import card_calibration
from emlive.export.runtime import Denoiser

log = logging.getLogger(__name__)

CHANGE_THRESHOLD = 0.1  # "changing pixels": |truth_t - truth_(t+-1)| above this fraction of the data range
EDGE_FRAMES = "edge frames"
CHANGING_PIXELS = "changing pixels"


@dataclass
class ReopenStats:
    """A re-opened (posterior) row against the blind row of the same model, on the scored frames: the gain the
    model predicts from its own variance head and noise model, the gain measured against the truth (MSE ratio),
    ``ratio`` = measured / predicted, and ``calibration`` = the fraction of pixels with |truth - posterior mean| <=
    posterior std (68% nominal). ``regions``: the same four numbers on the edge frames and the changing pixels."""

    predicted_gain_db: float
    measured_gain_db: float
    ratio: float
    calibration: float
    predicted_gain_frames: list[float] = field(default_factory=list)
    measured_gain_frames: list[float] = field(default_factory=list)
    calibration_frames: list[float] = field(default_factory=list)
    regions: dict[str, dict[str, float]] = field(default_factory=dict)
    noise_check: dict[str, Any] = field(default_factory=dict)  # emlive.core.posterior.NoiseCheck, no truth needed


@dataclass
class QualityRow:
    """One method's scores: means over the scored frames, and the per-frame values."""

    method: str
    psnr: float
    ssim: float
    psnr_fixed: float
    ssim_fixed: float
    seconds_per_frame: float
    pearson: float = float("nan")
    psnr_frames: list[float] = field(default_factory=list)  # paper PSNR of each scored frame
    ssim_frames: list[float] = field(default_factory=list)
    pearson_frames: list[float] = field(default_factory=list)
    model: str | None = None  # the model file, for a model row
    ensemble: str = Ensemble.none.value
    backend: str | None = None
    key: str = ""  # the method's stable name across settings (raw, bm3d, blind, re-opened, oracle, a label, ...)
    regions: dict[str, float] = field(default_factory=dict)  # fixed-range PSNR on EDGE_FRAMES, CHANGING_PIXELS
    reopen: ReopenStats | None = None


def anscombe(counts: np.ndarray) -> np.ndarray:
    """Variance-stabilising transform of Poisson counts (unit variance)."""
    return 2.0 * np.sqrt(np.maximum(counts, 0.0) + 3.0 / 8.0)


def inverse_anscombe(d: np.ndarray) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse (Makitalo & Foi 2011)."""
    d = np.maximum(d, 1.0)
    s = np.sqrt(1.5)
    return 0.25 * d**2 + 0.25 * s / d - 1.375 / d**2 + 0.625 * s / d**3 - 0.125


def _gat_scale(gain: float, read_noise: float, kernel_sum_of_squares: float) -> tuple[float, float]:
    """(alpha, extra): the pixel variance is ``alpha * (mean - offset) + s^2`` with ``alpha = gain * k`` and
    ``s^2 = k * read_noise^2`` (``k``: the charge-sharing kernel's sum of squares, 1 without one, as
    :func:`emlive.core.simulate.detector_truth` reports it), so ``e = (counts - offset) / alpha`` is Poisson-like
    with an extra Gaussian variance ``extra = s^2 / alpha^2``."""
    alpha = gain * kernel_sum_of_squares
    return alpha, kernel_sum_of_squares * read_noise**2 / alpha**2


def generalized_anscombe(
    counts: np.ndarray, gain: float, offset: float, read_noise: float = 0.0, kernel_sum_of_squares: float = 1.0
) -> np.ndarray:
    """Variance-stabilising transform of Poisson-Gaussian counts (Makitalo & Foi 2013): ``2 sqrt(e + 3/8 +
    extra)`` (:func:`_gat_scale`) has unit variance; for gain 1, offset 0 and no read noise it is :func:`anscombe`."""
    alpha, extra = _gat_scale(gain, read_noise, kernel_sum_of_squares)
    return anscombe((counts.astype(np.float64) - offset) / alpha + extra)


def inverse_generalized_anscombe(
    d: np.ndarray, gain: float, offset: float, read_noise: float = 0.0, kernel_sum_of_squares: float = 1.0
) -> np.ndarray:
    """Back to counts: the closed-form unbiased inverse of :func:`anscombe`, minus the extra variance, scaled."""
    alpha, extra = _gat_scale(gain, read_noise, kernel_sum_of_squares)
    return (inverse_anscombe(d) - extra) * alpha + offset


def bm3d_poisson(
    frame: np.ndarray,
    gain: float,
    offset: float,
    sigma: float,
    *,
    read_noise: float = 0.0,
    kernel_sum_of_squares: float = 1.0,
) -> np.ndarray:
    """BM3D of a Poisson(-Gaussian) frame in counts, through the :func:`generalized_anscombe` transform (gain,
    offset, read noise and the charge-sharing kernel's variance reduction). The kernel's spatial correlation itself
    is not whitened: BM3D sees white noise of the right variance, and the oracle sigma absorbs the rest."""
    try:
        import bm3d
    except ImportError as exc:
        raise EmliveError("BM3D needs the 'bm3d' package: pip install 'emlive[bench]'") from exc
    detector = (gain, offset, read_noise, kernel_sum_of_squares)
    den = bm3d.bm3d(generalized_anscombe(frame, *detector), sigma_psd=sigma)
    return inverse_generalized_anscombe(np.asarray(den), *detector).astype(np.float32)


def _masked_psnr(clean: np.ndarray, test: np.ndarray, masks: list[tuple[int, np.ndarray]], data_range: float) -> float:
    """Fixed-range PSNR over the pixels of ``masks`` ((frame, boolean mask) pairs) pooled; NaN when empty."""
    c = np.concatenate([clean[t][m] for t, m in masks]) if masks else np.empty(0)
    if c.size == 0:
        return math.nan
    x = np.concatenate([test[t][m] for t, m in masks])
    return psnr_fixed(c[None, :], x[None, :], data_range, label="masked pixels")


@dataclass
class _Frames:
    """Which frames and pixels a setting scores: ``idx`` (spread over the movie, away from its ends), ``edges``
    (the first and last frames) and ``changing`` (per scored frame, the pixels whose truth changes)."""

    idx: list[int]
    edges: list[int]
    changing: list[tuple[int, np.ndarray]]
    data_range: float

    @property
    def denoised(self) -> list[int]:
        return sorted(set(self.idx) | set(self.edges))

    def region_masks(self, shape: tuple[int, int]) -> dict[str, list[tuple[int, np.ndarray]]]:
        full = np.ones(shape, dtype=bool)
        return {EDGE_FRAMES: [(t, full) for t in self.edges], CHANGING_PIXELS: self.changing}

    @property
    def changing_fraction(self) -> float:
        return float(np.mean([m.mean() for _, m in self.changing])) if self.changing else 0.0


def scored_frames(clean: np.ndarray, eval_frames: int) -> _Frames:
    """The frames and regions scored on a clean movie (see the module doc)."""
    n = len(clean)
    idx = [int(i) for i in np.linspace(2, n - 3, eval_frames).round()]
    edges = [t for t in (0, n - 1) if t not in idx] if n > 1 else []
    data_range = float(clean.max() - clean.min())
    changing = []
    for t in idx:
        neighbours = [clean[s] for s in (t - 1, t + 1) if 0 <= s < n]
        change = np.max([np.abs(clean[t] - c) for c in neighbours], axis=0) if neighbours else np.zeros_like(clean[t])
        changing.append((t, change > CHANGE_THRESHOLD * data_range))
    return _Frames(idx, edges, changing, data_range)


def _score(method: str, clean: np.ndarray, test: np.ndarray, frames: _Frames, seconds: float) -> QualityRow:
    idx, data_range = frames.idx, frames.data_range
    psnr = [psnr_paper(clean[t], test[t]) for t in idx]
    ssim = [ssim_paper(clean[t], test[t]) for t in idx]
    pearson = [pearson_r(clean[t], test[t]) for t in idx]
    masks = frames.region_masks(clean.shape[1:])
    regions = {name: _masked_psnr(clean, test, m, data_range) for name, m in masks.items()}
    return QualityRow(
        method,
        float(np.mean(psnr)),
        float(np.mean(ssim)),
        float(np.mean([psnr_fixed(clean[t], test[t], data_range) for t in idx])),
        float(np.mean([ssim_fixed(clean[t], test[t], data_range) for t in idx])),
        seconds,
        pearson=float(np.mean(pearson)),
        psnr_frames=psnr,
        ssim_frames=ssim,
        pearson_frames=pearson,
        key=method,
        regions=regions,
    )


BASELINE_NAMES = ("raw", "5-frame average", "ground truth")
BASELINE_PREFIXES = ("gaussian (oracle sigma", "BM3D+Anscombe (")


@dataclass
class _Model:
    label: str
    spec: ModelSpec
    denoiser: Denoiser
    key: str = ""  # the row's stable name across settings; default: the label
    reopened: str | None = None  # a probabilistic model (estimate=posterior): the label of its re-opened row; the
    # model's own row is then its blind estimate (the prior mean), from the same pass


def _checked_ensemble(spec: ModelSpec, card: ModelCard) -> Ensemble:
    """The spec's self-ensemble when it suits the model (for a student: its teacher's blind spot and noise)."""
    blind_spot, noise = card.blind_spot, card.noise
    if card.teacher is not None:
        blind_spot, noise = card.teacher.blind_spot, noise or card.teacher.noise
    try:
        return ensemble_for(spec.ensemble, blind_spot, noise.kernel if noise else None)
    except EmliveError as exc:
        raise type(exc)(f"-m {spec.text!r}: {exc}") from exc


def close_models(models: list[_Model]) -> None:
    for m in models:
        m.denoiser.close()


def check_labels(labels: list[str]) -> None:
    """Refuse a model label that is the name of a baseline row."""
    for label in labels:
        if label in BASELINE_NAMES or label.startswith(BASELINE_PREFIXES):
            raise ConfigError(f"-m label {label!r} is the name of a baseline row; give the model another label")


def load_models(specs: list[ModelSpec], backend: str, threads: int | None = None) -> list[_Model]:
    """Every model loaded and labelled, its self-ensemble checked: errors come before any scoring starts."""
    loaded: list[tuple[ModelSpec, Denoiser]] = []
    try:
        for spec in specs:
            assert spec.path is not None, "bench-quality takes model files only"
            den = Denoiser.load(spec.path, backend=backend, threads=threads)
            loaded.append((spec, den))
            _checked_ensemble(spec, den.card)
        labels = model_labels(specs, [den.card.name for _, den in loaded])
        check_labels(labels)
    except EmliveError:
        for _, den in loaded:
            den.close()
        raise
    return [
        _Model(label, spec, den, label, _reopened_label(label, spec, den))
        for label, (spec, den) in zip(labels, loaded, strict=True)
    ]


def _reopened_label(label: str, spec: ModelSpec, den: Denoiser) -> str | None:
    """A probabilistic model's posterior (its runtime default) is scored as a second row beside its blind row,
    ``LABEL re-opened`` (a self-ensemble averages the default output only)."""
    if den.estimate is Estimate.posterior and spec.ensemble is Ensemble.none:
        return f"{label} re-opened"
    return None


def denoise_frames(noisy: np.ndarray, frames: list[int], denoiser: Denoiser, ensemble: Ensemble) -> np.ndarray:
    """A copy of ``noisy`` with ``frames`` denoised (each from its window, averaged over ``ensemble``)."""
    out = noisy.copy()
    for t in frames:
        window = stack_window(noisy, window_indices(t, denoiser.frames, len(noisy)))
        out[t] = ensemble_average(window, ensemble, denoiser.denoise_window)
    return out


@dataclass
class _PosteriorMovie:
    """A probabilistic model's output on some frames, raw units: the blind estimate (the prior mean), the posterior
    mean and std, and the prior and noise variances it combines (copies of the input or zeros elsewhere)."""

    blind: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    prior_var: np.ndarray
    noise_var: np.ndarray


def posterior_frames(noisy: np.ndarray, frames: list[int], denoiser: Denoiser) -> _PosteriorMovie:
    """The runtime's posterior with its uncertainty (``denoise_window(..., uncertainty=True)``) of ``frames``."""
    blind, mean = noisy.copy(), noisy.copy()
    std, prior_var, noise_var = (np.zeros_like(noisy) for _ in range(3))
    for t in frames:
        window = stack_window(noisy, window_indices(t, denoiser.frames, len(noisy)))
        post = denoiser.denoise_window(window, uncertainty=True)
        if post.noise_std is None:
            raise ConfigError(f"{denoiser.source}: the card has no noise model, so there is no posterior to score")
        blind[t], mean[t], std[t] = post.prior_mean, post.mean, post.std
        prior_var[t], noise_var[t] = np.square(post.prior_std), np.square(post.noise_std)
    return _PosteriorMovie(blind, mean, std, prior_var, noise_var)


def _gain_db(clean: np.ndarray, blind: np.ndarray, post: np.ndarray, masks: list[tuple[int, np.ndarray]]) -> float:
    """10 log10(MSE blind / MSE posterior) against the truth over ``masks``' pixels (pooled)."""
    eb = np.concatenate([(clean[t] - blind[t])[m] for t, m in masks]).astype(np.float64)
    ep = np.concatenate([(clean[t] - post[t])[m] for t, m in masks]).astype(np.float64)
    if eb.size == 0:
        return math.nan
    return 10.0 * math.log10(float(np.mean(eb * eb)) / max(float(np.mean(ep * ep)), 1e-30))


def _reopen_numbers(clean: np.ndarray, post: _PosteriorMovie, masks: list[tuple[int, np.ndarray]]) -> dict[str, float]:
    if not masks or not any(m.any() for _, m in masks):
        return {"predicted_gain_db": math.nan, "measured_gain_db": math.nan, "ratio": math.nan, "calibration": math.nan}
    pv = np.concatenate([post.prior_var[t][m] for t, m in masks])
    nv = np.concatenate([post.noise_var[t][m] for t, m in masks])
    err = np.concatenate([np.abs(clean[t] - post.mean[t])[m] for t, m in masks])
    std = np.concatenate([post.std[t][m] for t, m in masks])
    predicted = float(predicted_gain_db(pv, nv))
    measured = _gain_db(clean, post.blind, post.mean, masks)
    ratio = measured / predicted if predicted != 0 else math.nan
    return {
        "predicted_gain_db": predicted,
        "measured_gain_db": measured,
        "ratio": ratio,
        "calibration": float(np.mean(err <= std)),
    }


def reopen_stats(clean: np.ndarray, post: _PosteriorMovie, frames: _Frames) -> ReopenStats:
    """The re-opened row's predicted vs measured gain and calibration, overall, per frame and per region."""
    full = np.ones(clean.shape[1:], dtype=bool)
    per_frame = [_reopen_numbers(clean, post, [(t, full)]) for t in frames.idx]
    overall = _reopen_numbers(clean, post, [(t, full) for t in frames.idx])
    regions = {
        name: _reopen_numbers(clean, post, masks) for name, masks in frames.region_masks(clean.shape[1:]).items()
    }
    return ReopenStats(
        overall["predicted_gain_db"],
        overall["measured_gain_db"],
        overall["ratio"],
        overall["calibration"],
        predicted_gain_frames=[f["predicted_gain_db"] for f in per_frame],
        measured_gain_frames=[f["measured_gain_db"] for f in per_frame],
        calibration_frames=[f["calibration"] for f in per_frame],
        regions=regions,
    )


def _bm3d_row(
    noisy: np.ndarray, clean: np.ndarray, frames: _Frames, sim: SimulationConfig
) -> tuple[str, np.ndarray, float]:
    """BM3D with the oracle-best of three sigmas (chosen on the scored frames), then the edge frames at that sigma."""
    truth = detector_truth(sim)
    kw = {"read_noise": sim.read_noise, "kernel_sum_of_squares": truth["kernel_sum_of_squares"]}
    best: tuple[float, np.ndarray, float, float] | None = None
    for mult in (0.75, 1.0, 1.5):
        t0 = time.perf_counter()
        movie = noisy.copy()
        for i, t in enumerate(frames.idx):
            movie[t] = bm3d_poisson(noisy[t], sim.gain, sim.offset, mult, **kw)
            log.info("bm3d sigma %.2f: frame %d/%d", mult, i + 1, len(frames.idx))
        per_frame = (time.perf_counter() - t0) / len(frames.idx)
        score = float(np.mean([psnr_paper(clean[t], movie[t]) for t in frames.idx]))
        if best is None or score > best[0]:
            best = (score, movie, mult, per_frame)
    assert best is not None
    _, movie, mult, per_frame = best
    for t in frames.edges:
        movie[t] = bm3d_poisson(noisy[t], sim.gain, sim.offset, mult, **kw)
    return f"BM3D+Anscombe (oracle sigma {mult:g})", movie, per_frame


def _baselines(
    noisy: np.ndarray, clean: np.ndarray, frames: _Frames, sim: SimulationConfig, bm3d: bool
) -> list[tuple[str, str, np.ndarray, float]]:
    """(key, method, movie, seconds per frame) of raw, the 5-frame average, the oracle Gaussian and BM3D."""
    n = len(noisy)
    out: list[tuple[str, str, np.ndarray, float]] = [("raw", "raw", noisy, 0.0)]
    t0 = time.perf_counter()
    avg = temporal_average(noisy, 5)
    out.append(("5-frame average", "5-frame average", avg, (time.perf_counter() - t0) / n))
    t0 = time.perf_counter()
    sigma, gauss = best_gaussian(noisy, clean, psnr_paper, frames=frames.idx)
    out.append(("gaussian", f"gaussian (oracle sigma {sigma:g})", gauss, (time.perf_counter() - t0) / n))
    if bm3d:
        out.append(("BM3D", *_bm3d_row(noisy, clean, frames, sim)))
    return out


@dataclass
class SettingResult:
    """One held-out movie scored: its simulation, the frames scored, the rows and the models."""

    simulation: SimulationConfig
    frames: _Frames
    rows: list[QualityRow]
    models: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {
            "simulation": self.simulation.model_dump(mode="json"),
            "models": self.models,
            "frames_scored": self.frames.idx,
            "edge_frames": self.frames.edges,
            "change_threshold": CHANGE_THRESHOLD,
            "changing_fraction": self.frames.changing_fraction,
            "rows": [asdict(r) for r in self.rows],
        }


def _model_rows(
    m: _Model, noisy: np.ndarray, clean: np.ndarray, frames: _Frames
) -> list[tuple[QualityRow, np.ndarray]]:
    """The model's row (and for a probabilistic one its re-opened row, from the same pass) with its movie."""
    todo = frames.denoised
    denoise_frames(noisy, todo[:1], m.denoiser, Ensemble.none)  # untimed warm-up (session, first shape)
    t0 = time.perf_counter()
    if m.reopened is None:
        found = [(m.label, m.key, denoise_frames(noisy, todo, m.denoiser, m.spec.ensemble))]
    else:
        post = posterior_frames(noisy, todo, m.denoiser)  # the card's calibration of the variance head
        default = f"{m.reopened}{DEFAULT_SUFFIX}"  # what `emlive denoise` gives by default
        decided, own = default_output(noisy, todo, m.denoiser)
        reopens = decided.estimate is Estimate.posterior
        found = [(m.label, m.key, post.blind), (m.reopened, m.reopened, post.mean),
                 (default, default, own.mean if reopens else post.blind)]  # fmt: skip
    seconds = (time.perf_counter() - t0) / len(todo)
    out = []
    for label, key, movie in found:
        row = _score(label, clean, movie, frames, seconds)
        row.model, row.ensemble, row.backend = str(m.spec.path), m.spec.ensemble.value, m.denoiser.backend
        row.key = key or label
        out.append((row, movie))
    if m.reopened is not None:
        out[1][0].reopen = reopen_stats(clean, post, frames)
        out[1][0].reopen.noise_check = _noise_check(noisy, post, frames.idx, m.denoiser).to_dict()
        if reopens:  # the default's gains and calibration; its check is the one that decided
            out[2][0].reopen = reopen_stats(clean, own, frames)
            out[2][0].reopen.noise_check = {} if decided.check is None else decided.check.to_dict()
    return out


DEFAULT_SUFFIX = " (default: calibrated on the movie, with fallback)"


def default_output(
    noisy: np.ndarray, frames: list[int], denoiser: Denoiser
) -> tuple[MovieEstimate, _PosteriorMovie]:
    """What a user gets by default from ``emlive denoise`` on this movie
    (:func:`emlive.analysis.uncertainty.movie_estimate`: the posterior when the movie's noise check passes, else
    the blind output), and the posterior of ``frames`` with the variance head calibrated on this movie (the card's
    calibration when the check failed). The denoiser holds its card's calibration again after."""
    found = movie_estimate(noisy, denoiser, 0, len(noisy), Estimate.posterior, forced=False, uncertainty=None)
    assert found is not None  # a probabilistic model
    try:
        own = posterior_frames(noisy, frames, denoiser)
    finally:
        denoiser.calibration = card_calibration(denoiser.card)
    check = "no noise check" if found.check is None else found.check.message
    log.info("%s: the default output is the %s estimate (%s)", denoiser.source, found.estimate.value, check)
    return found, own


def _noise_check(noisy: np.ndarray, post: _PosteriorMovie, idx: list[int], denoiser: Denoiser) -> NoiseCheck:
    """The self-supervised check of the card's noise model and the variance head on the scored frames."""
    assert denoiser.noise is not None  # posterior_frames refused a card without one
    log_var = np.log(np.maximum(post.prior_var[idx].astype(np.float64), 1e-30))
    return NoiseCheck.measure(post.blind[idx], log_var, noisy[idx], denoiser.noise)


def score_movie(
    sim: SimulationConfig,
    models: list[_Model],
    eval_frames: int,
    bm3d: bool,
    png: Path | None = None,
) -> SettingResult:
    """Score the baselines and every model on ``eval_frames`` frames spread over the held-out movie of ``sim``
    (plus its edge frames and changing pixels); draws the per-setting picture into ``png``."""
    noisy_raw, clean = simulate_movie(sim)
    noisy = noisy_raw.astype(np.float32)
    frames = scored_frames(clean, eval_frames)
    rows: list[QualityRow] = []
    results: dict[str, np.ndarray] = {}

    def add(row: QualityRow, movie: np.ndarray) -> None:
        rows.append(row)
        results[row.method] = movie
        log.info("%-28s PSNR %.2f dB, r %.4f", row.method, row.psnr, row.pearson)

    for key, name, movie, seconds in _baselines(noisy, clean, frames, sim, bm3d):
        row = _score(name, clean, movie, frames, seconds)
        row.key = key
        add(row, movie)
    for m in models:
        for row, movie in _model_rows(m, noisy, clean, frames):
            add(row, movie)
    if png is not None:
        _plot(png, noisy, clean, results, frames.idx, rows)
    cards = [json.loads(m.denoiser.card.to_json()) for m in models]
    described = [
        {"label": m.label, "key": m.key, "path": str(m.spec.path), "ensemble": m.spec.ensemble.value, "card": card}
        for m, card in zip(models, cards, strict=True)
    ]
    return SettingResult(sim, frames, rows, described)


def run_quality_benchmark(
    models: list[ModelSpec] | None,
    out: Path,
    size: int = 512,
    frames: int = 64,
    dose: float = 5.0,
    correlated: CorrelatedNoise = CorrelatedNoise.NONE,
    eval_frames: int = 8,
    bm3d: bool = True,
    seed: int = 1001,
    backend: str = "auto",
    threads: int | None = None,
) -> list[QualityRow]:
    """Score every method and model on ``eval_frames`` frames spread over a fresh simulated movie (seed unseen in
    training); writes quality.json (per-frame values too), quality.png and quality.md in ``out``."""
    loaded = load_models(models if models is not None else parse_model_specs(None), backend, threads)
    out.mkdir(parents=True, exist_ok=True)
    sim = SimulationConfig(height=size, width=size, frames=frames, dose=dose, correlated_noise=correlated, seed=seed)
    try:
        result = score_movie(sim, loaded, eval_frames, bm3d, out / "quality.png")
    finally:
        close_models(loaded)
    summary = result.to_json()
    summary["model"] = result.models[0]["path"] if result.models else None  # the first model (single-model fields)
    summary["card"] = result.models[0]["card"] if result.models else None
    (out / "quality.json").write_text(json.dumps(summary, indent=2))
    (out / "quality.md").write_text("\n".join(markdown_table(result.rows)) + "\n")
    return result.rows


def _plot(
    path: Path,
    noisy: np.ndarray,
    clean: np.ndarray,
    results: dict[str, np.ndarray],
    idx: list[int],
    rows: list[QualityRow],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = idx[len(idx) // 2]
    names = [*results.keys(), "ground truth"]
    images = [*[m[t] for m in results.values()], clean[t]]
    h, w = clean.shape[1:]
    c = min(192, h, w)
    y0, x0 = (h - c) // 2, (w - c) // 2
    lo, hi = np.percentile(clean[t], [0.5, 99.5])
    fig, axes = plt.subplots(2, (len(names) + 1) // 2 + 1, figsize=(4 * ((len(names) + 1) // 2 + 1), 8))
    flat = axes.ravel()
    by_name = {r.method: r for r in rows}
    for ax, name, img in zip(flat, names, images, strict=False):
        ax.imshow(img[y0 : y0 + c, x0 : x0 + c], cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        row = by_name.get(name)
        ax.set_title(f"{name}\n{row.psnr:.2f} dB, r {row.pearson:.3f}" if row else name, fontsize=9)
        ax.axis("off")
    ax = flat[-1]
    ax.axis("on")
    for r in rows:  # every method's per-frame curve
        ax.plot(idx, r.psnr_frames, marker="o", label=r.method)
    ax.set_xlabel("frame")
    ax.set_ylabel("PSNR [dB] (paper definition)")
    ax.legend(fontsize=7)
    for extra in flat[len(names) : -1]:
        extra.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_table(rows: list[QualityRow]) -> list[str]:
    """The rows as aligned text lines (the CLI echoes them)."""
    width = max([40, *(len(r.method) for r in rows)])
    head = f"{'method':<{width}} {'PSNR':>7} {'SSIM':>7} {'PSNRfix':>8} {'SSIMfix':>8} {'r':>7} {'s/frame':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.method:<{width}} {r.psnr:>7.2f} {r.ssim:>7.4f} {r.psnr_fixed:>8.2f} {r.ssim_fixed:>8.4f} "
            f"{r.pearson:>7.4f} {r.seconds_per_frame:>8.3f}"
        )
    return lines


def markdown_table(rows: list[QualityRow]) -> list[str]:
    """The rows of one setting as a markdown table (paper PSNR/SSIM, fixed-range PSNR, r, and the regions)."""
    lines = [
        f"| method | PSNR | SSIM | PSNR fixed | r | PSNR fixed, {EDGE_FRAMES} | PSNR fixed, {CHANGING_PIXELS} |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        edge, changing = r.regions.get(EDGE_FRAMES, math.nan), r.regions.get(CHANGING_PIXELS, math.nan)
        lines.append(
            f"| {r.method} | {r.psnr:.2f} | {r.ssim:.4f} | {r.psnr_fixed:.2f} | {r.pearson:.4f} | {edge:.2f} | "
            f"{changing:.2f} |"
        )
    return lines
